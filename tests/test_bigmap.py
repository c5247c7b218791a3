"""The large map: its binary columns, selection geometry, and the dashboard's
server side at a million galaxies (AppTest), written by bench/make_big_run.py
through core's own cache writers."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.data.base import GALAXY10_CLASSES
from dashboard import data as D
from dashboard import pointcloud as PC

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from core.store import cache as store
    from tests.dashboard_fixtures import build_cache

    cache = build_cache(tmp_path_factory.mktemp("small"), n=400, images=False, second_dataset=False, layout_maps=True)
    runs = store.list_runs(cache)
    full = next(r for r in runs if r.get("mode") == "full")
    proj = next(r for r in runs if r["kind"] == "projection" and r["features_run"] == full["key"]
                and r["method"] == "tsne")
    data = D.read_run(full)
    return data, D.read_projection(data, proj)


def test_point_columns_are_11_bytes_per_galaxy_and_decode_to_the_run(small_run):
    data, xy = small_run
    blob = PC.point_columns(data, xy)
    n = data.n
    assert len(blob) == PC.BYTES_PER_POINT * n == 11 * n
    x = np.frombuffer(blob, np.float32, n, 0)
    y = np.frombuffer(blob, np.float32, n, 4 * n)
    label, pred, conf = (np.frombuffer(blob, np.uint8, n, k * n) for k in (8, 9, 10))
    np.testing.assert_array_equal(x, xy.x)
    np.testing.assert_array_equal(y, xy.y)
    np.testing.assert_array_equal(label.astype(int) - 1, data.frame["label"].to_numpy())
    np.testing.assert_array_equal(pred.astype(int) - 1, data.frame["pred"].to_numpy())
    np.testing.assert_allclose(conf / 250, data.frame["confidence"].to_numpy(), atol=0.5 / 250 + 1e-6)


def test_colour_column_names_every_galaxy_by_its_class_or_value(small_run):
    data, _ = small_run
    blob, spec = PC.colour_column(data, "true class")
    codes = np.frombuffer(blob, np.uint8)
    assert spec["kind"] == "category" and len(codes) == data.n
    names = [name for name, _, _ in spec["legend"]]
    shown = [spec["legend"][names.index(t)] for t in data.frame["true"]]
    assert all(spec["palette"][c] == colour for c, (_, colour, _) in zip(codes, shown))
    assert sum(count for _, _, count in spec["legend"]) == data.n
    counts = {name: count for name, count in data.frame["true"].value_counts().items() if count}
    assert dict((name, count) for name, _, count in spec["legend"]) == counts

    blob, spec = PC.colour_column(data, "redshift")
    codes = np.frombuffer(blob, np.uint8).astype(int)
    z = data.frame["meta_redshift"].to_numpy()
    assert spec["kind"] == "numeric" and spec["lo"] == pytest.approx(z.min()) and spec["hi"] == pytest.approx(z.max())
    assert codes[z.argmin()] == 0 and codes[z.argmax()] == 254 and len(spec["palette"]) == 255
    order = np.argsort(z, kind="stable")
    assert (np.diff(codes[order]) >= 0).all()  # a larger redshift never gets an earlier colour


def test_positions_in_polygon_match_a_direct_count():
    rng = np.random.default_rng(1)
    xy = D.MapXY(rng.uniform(-10, 10, 20000).astype(np.float32), rng.uniform(-10, 10, 20000).astype(np.float32), {})
    xy.x[:5] = np.nan  # galaxies the map lacks are never selected
    box = PC.positions_in_polygon(xy, [[-2, -3], [4, -3], [4, 5], [-2, 5]])
    expected = np.flatnonzero((xy.x > -2) & (xy.x < 4) & (xy.y > -3) & (xy.y < 5))
    np.testing.assert_array_equal(box, expected)
    # a concave lasso: an L shape = two rectangles
    ell = PC.positions_in_polygon(xy, [[0, 0], [6, 0], [6, 2], [2, 2], [2, 6], [0, 6]])
    in_l = ((xy.x > 0) & (xy.x < 6) & (xy.y > 0) & (xy.y < 2)) | ((xy.x > 0) & (xy.x < 2) & (xy.y > 0) & (xy.y < 6))
    np.testing.assert_array_equal(ell, np.flatnonzero(in_l))
    assert len(PC.positions_in_polygon(xy, [[0, 0], [1, 1]])) == 0
    assert len(PC.positions_in_polygon(xy, "not a polygon")) == 0


# ---------------------------------------------------------------- a million galaxies, server side

N = 1_000_000


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """A 1M-galaxy run written by bench/make_big_run.py (4-d features, no quality scoring: ~20 s)."""
    import make_big_run

    cache = tmp_path_factory.mktemp("million") / "cache"
    run = make_big_run.make(cache, rows=N, dim=4, pca=False, sample=0)
    proj = pq.read_table(next((cache / "projections").glob("*.parquet")), columns=["row", "x", "y"]).to_pandas()
    meta = pq.read_table(run["path"], columns=["row", "id", "label", "pred", "split"]).to_pandas()
    return cache, proj.merge(meta, on="row")


@pytest.fixture
def served(monkeypatch) -> dict:
    """{media URL: bytes} of every file the large map serves to the browser."""
    import dashboard.components.bigmap as component

    files, original = {}, component.media_url

    def recording(blob, name):
        url = original(blob, name)
        files[url] = bytes(blob)
        return url

    monkeypatch.setattr(component, "media_url", recording)
    return files


def _map_args(at) -> dict:
    found = [el for el in at.get("component_instance") if "galaxy_map" in el.proto.component_name]
    assert len(found) == 1, "the large map is not on the page"
    return json.loads(found[0].proto.json_args)


@pytest.mark.slow
def test_million_galaxy_map_page_reruns_without_resending_the_points(million, served, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cache, table = million
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=600).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    args = _map_args(at)
    assert args["n"] == N and args["highlight"] == [] and "/media/" in args["points_url"]
    points, colour = served[args["points_url"]], served[args["colour_url"]]
    assert len(points) == 11 * N and len(colour) == N  # 12 bytes per galaxy on the wire
    labels = np.frombuffer(points, np.uint8, N, 8 * N).astype(int) - 1
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(table["label"], minlength=10))
    assert any("1,000,000 galaxies drawn with WebGL from 12,000,000 bytes (12 per galaxy)" in c.value for c in at.caption)

    at.multiselect(key="highlight").set_value(["Disturbed"])
    t = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - t
    after = _map_args(at)
    assert after["highlight"] == [1]  # Disturbed is class 0, sent as index + 1
    # the same content, the same URL: the browser keeps the million points it has
    assert after["points_url"] == args["points_url"] and after["colour_url"] == args["colour_url"]
    found = [el for el in at.get("component_instance") if "galaxy_map" in el.proto.component_name]
    assert len(found[0].proto.json_args) < 20_000  # arguments only, never the points
    print(f"highlight rerun at 1M galaxies: {rerun:.2f} s")

    at.selectbox(key="colour").set_value("redshift").run()  # a new colour column, the same points
    coloured = _map_args(at)
    assert coloured["colour"]["kind"] == "numeric" and coloured["colour"]["label"] == "redshift"
    assert coloured["points_url"] == args["points_url"] and coloured["colour_url"] != args["colour_url"]
    assert len(served[coloured["colour_url"]]) == N


def _views_script():
    """The Map view driven by a map event in session state (what the component's callback gets)."""
    import os
    from pathlib import Path

    import streamlit as st

    from dashboard.views.bigmap import handle_event
    from dashboard.views.common import load_catalog
    from dashboard.views.map import map_view
    from dashboard.views.sidebar import sidebar

    cache = Path(os.environ["EXPLORER_CACHE"])
    ctx = sidebar(cache, load_catalog(cache))
    if st.session_state.get("event"):
        handle_event(st.session_state.pop("event"), ctx)
    map_view(ctx)


@pytest.mark.slow
def test_million_galaxy_box_click_and_hover_reach_the_gallery(million, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cache, table = million
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    at = AppTest.from_function(_views_script, default_timeout=600).run()
    assert not at.exception, [e.value for e in at.exception]

    x0, x1, y0, y1 = 38.0, 60.0, 25.0, 46.0  # around the Merging island (bench/make_big_run.island_layout)
    at.session_state["event"] = {"event": "select", "shape": "box",
                                 "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "seq": 1}
    at.run()
    inside = table[(table.x > x0) & (table.x < x1) & (table.y > y0) & (table.y < y1)]
    assert len(inside) > 1000
    assert [h.value for h in at.subheader] == [f"Selected galaxies: {len(inside):,}"]
    counts = at.dataframe[-1].value
    assert int(counts["true"].sum()) == len(inside)
    assert counts["true"].idxmax() == GALAXY10_CLASSES[int(inside["label"].mode()[0])] == "Merging"
    rings = _map_args(at)["rings"]
    assert [r["name"] for r in rings] == [f"selected ({len(inside):,})"] and rings[0]["selection"]
    assert [b.label for b in at.get("download_button")] == ["Download selection (CSV)", "Export this view (HTML)"]
    cards = [c.value for c in at.caption if c.value.startswith("**J")]  # the gallery: id, true class, prediction
    assert len(cards) == 24 and all(c.split("**")[1] in set(inside["id"]) and "true:" in c for c in cards)

    at.session_state["event"] = {"event": "click", "pos": 123_456, "seq": 2}
    at.run()
    assert [h.value for h in at.subheader] == ["Selected galaxies: 1"]
    assert any("J0123456" in c.value for c in at.caption)  # its gallery card

    at.session_state["event"] = {"event": "hover", "pos": 654_321, "seq": 3}
    at.run()
    hover = _map_args(at)["hover"]
    assert hover["pos"] == 654_321 and hover["id"] == "J0654321"
    assert hover["lines"][0].startswith("RA ") and "Dec" in hover["lines"][0]  # sky position, as on its card
    assert hover["thumb"].startswith("data:image/png;base64,")

    at.session_state["event"] = {"event": "click", "pos": N + 5, "seq": 4}  # out of range: ignored
    at.run()
    assert not at.exception and [h.value for h in at.subheader] == ["Selected galaxies: 1"]

    # a confusion cell chosen in the Confusion view: its galaxies of the test split ringed on the map
    at.session_state["cell_true"], at.session_state["cell_pred"] = "Unbarred Tight Spiral", "Unbarred Loose Spiral"
    at.run()
    cell = ((table["label"] == 6) & (table["pred"] == 7) & (table["split"] == "test")).sum()
    names = [r["name"] for r in _map_args(at)["rings"]]
    assert names == [f"cell Unbarred Tight Spiral → Unbarred Loose Spiral ({cell:,})", "selected (1)"]


def test_compare_view_draws_both_large_maps(tmp_path, monkeypatch):
    """Compare (generic | finetuned) above the threshold: two WebGL maps, one per run, both ringing a selection."""
    from streamlit.testing.v1 import AppTest

    import dashboard.views.bigmap as bigmap
    from tests.dashboard_fixtures import build_cache

    monkeypatch.setattr(bigmap, "BIG_MAP_POINTS", 100)
    monkeypatch.setenv("EXPLORER_CACHE", str(build_cache(tmp_path, n=300, images=False, second_dataset=False,
                                                         layout_maps=True)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["view"] = "Compare"
    at.session_state["picked"] = {"dataset": f"folder:{tmp_path / 'no-images-here'}", "rows": [1, 2, 3]}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    maps = [json.loads(el.proto.json_args) for el in at.get("component_instance")
            if "galaxy_map" in el.proto.component_name]
    assert len(maps) == 2 and maps[0]["points_url"] != maps[1]["points_url"] and all(m["n"] == 300 for m in maps)
    assert all([r["name"] for r in m["rings"]] == ["selected (3)"] for m in maps)


def test_real_photos_become_stars_on_the_large_map(demo_cache, monkeypatch):
    """The demo's 60 real DECaLS photos, placed into the map, as stars with hover text."""
    from streamlit.testing.v1 import AppTest

    import dashboard.views.bigmap as bigmap
    from tests.conftest import EXAMPLES

    if not (EXAMPLES / "labels.csv").is_file():
        pytest.skip(f"real DECaLS examples not found at {EXAMPLES} (the demo placed no photos)")

    monkeypatch.setattr(bigmap, "BIG_MAP_POINTS", 0)  # the demo's map is small: force the large-map path
    monkeypatch.setenv("EXPLORER_CACHE", str(demo_cache["cache"]))
    at = AppTest.from_file(APP, default_timeout=600).run()
    assert not at.exception and _map_args(at)["stars"] is None
    toggle = at.toggle(key="place_other")
    toggle.set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    stars = _map_args(at)["stars"]
    assert len(stars["x"]) == len(stars["y"]) == len(stars["text"]) > 0
    assert all(np.isfinite(stars["x"])) and all("true:" in t for t in stars["text"])
    assert any("Stars:" in c.value and "placed in this map" in c.value for c in at.caption)


def test_failures_view_rings_a_slice_on_the_large_map(tmp_path, monkeypatch):
    """Failures above the threshold: the chosen failure slice is ringed on the WebGL map, exactly its galaxies."""
    from streamlit.testing.v1 import AppTest

    import dashboard.views.bigmap as bigmap
    from core.analysis.slices import failure_slices
    from core.store import cache as store
    from tests.dashboard_fixtures import build_cache

    monkeypatch.setattr(bigmap, "BIG_MAP_POINTS", 100)
    cache = build_cache(tmp_path, n=300, images=False, second_dataset=False, layout_maps=True)
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["view"] = "Failures"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("plotly_chart") or all("slice" not in el.proto.spec for el in at.get("plotly_chart"))
    full = next(r for r in store.list_runs(cache) if r["kind"] == "features" and r.get("mode") == "full")
    proj = next(r for r in store.list_runs(cache) if r["kind"] == "projection" and r["features_run"] == full["key"]
                and r["method"] == "tsne")
    found = failure_slices(full["key"], cache, map_key=proj["key"])
    assert found, "the fixture's full run has failure slices"
    rings = _map_args(at)["rings"]
    assert [r["name"] for r in rings] == [f"slice ({found[0]['n']:,})"]
