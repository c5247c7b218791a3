"""The Streamlit app through AppTest: every view and control, against a fixture
cache with a generic run (no head), head-only and full runs, and a second
dataset with a generic run only."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import streamlit  # noqa: F401,E402  (required: a broken install fails here)
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIGHT, LOOSE = "Unbarred Tight Spiral", "Unbarred Loose Spiral"


@pytest.fixture(scope="module")
def cache(dashboard_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(dashboard_cache))
        yield dashboard_cache


def run_app(query: dict | None = None, state: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    """No exception, no error box, no traceback text anywhere on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert "Traceback" not in " ".join(str(m.value) for m in at.markdown)
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [h.value for h in at.subheader] + [w.value for w in at.warning] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def legend(spec: dict) -> list[str]:
    return [t["name"] for t in spec["data"] if t.get("showlegend") is not False]


def plotted_rows(trace: dict) -> list[int]:
    """Dataset rows of a scattergl trace: the first customdata column, sent as a typed array."""
    import base64

    import numpy as np

    custom = trace["customdata"]
    shape = [int(n) for n in custom["shape"].split(",")]
    return np.frombuffer(base64.b64decode(custom["bdata"]), custom["dtype"]).reshape(shape)[:, 0].astype(int).tolist()


def gallery_ids(at: AppTest, columns: int) -> list[str]:
    """Galaxy ids under a gallery's thumbnails in the order shown (left to right, then down).
    Streamlit lists elements column by column; galaxy ``j`` sits in column ``j % columns``."""
    ids = iter([c.value.split("**")[1] for c in at.caption if str(c.value).startswith("**")])
    n = sum(1 for c in at.caption if str(c.value).startswith("**"))
    shown = [""] * n
    for col in range(columns):
        for j in range(col, n, columns):
            shown[j] = next(ids)
    return shown


def full_run_frame(cache):
    """The demo:full features run of dataset "galaxies" as core wrote it (row, id, label, pred, confidence)."""
    from core.store import cache as store

    run = next(r for r in store.list_runs(cache) if r.get("model") == "demo:full")
    frame = store.read_table(run["path"], columns=["row", "id", "label", "pred", "confidence"]).to_pandas()
    frame.attrs["class_names"] = run["class_names"]
    return frame


def dataset_ref(cache, label: str = "galaxies") -> str:
    from core.store.cache import list_runs
    from dashboard.data import Catalog

    return Catalog.from_runs(list_runs(cache)).datasets()[label]


def view(at: AppTest, name: str) -> AppTest:
    at.session_state["view"] = name
    return ok(at.run())


def test_first_load_shows_the_full_finetune_tsne_map(cache):
    at = run_app()
    assert [t.label for t in at.tabs] == ["Map", "Confusion", "Failures", "Compare", "Neighbours", "Find", "Unusual",
                                         "Layers"]
    assert at.selectbox(key="dataset").value == "galaxies"
    assert at.selectbox(key="model").value == "DINOv2 · small"
    assert at.radio(key="mode").value == "full" and at.radio(key="mode").options == ["generic", "head", "full"]
    assert at.radio(key="projection").value == "tsne"
    assert at.selectbox(key="colour").value == "true class"
    (spec,) = charts(at)
    assert {t["type"] for t in spec["data"]} == {"scattergl"}
    assert all("bdata" in t["customdata"] and isinstance(t["marker"]["color"], str) for t in spec["data"])
    assert legend(spec)[0].startswith("Disturbed") and len(legend(spec)) == 10
    assert "full finetune" in texts(at) and "macro F1" in texts(at)
    assert {m.label for m in at.metric} >= {"kNN preservation", "trustworthiness", "galaxies"}
    assert "Drag a box or a lasso" in texts(at)


@pytest.mark.slow
def test_mode_switch_generic_then_head(cache):
    at = run_app()
    at.radio(key="mode").set_value("generic")
    ok(at.run())
    assert "randomly initialised" in texts(at)
    assert at.selectbox(key="colour").options == ["true class", "redshift", "pitch_angle", "outlier score (kNN)",
                                                  "outlier score (forest)"]
    assert "demo:generic" in texts(at)
    at.radio(key="mode").set_value("head")
    ok(at.run())
    assert "head-only finetune" in texts(at) and "predicted class" in at.selectbox(key="colour").options


@pytest.mark.slow
def test_projection_switch_pca_and_uncached_umap(cache):
    at = run_app()
    at.radio(key="projection").set_value("pca")
    ok(at.run())
    assert len(charts(at)) == 1 and "PCA map quality" in texts(at)
    at.radio(key="projection").set_value("umap")
    ok(at.run())
    assert "No UMAP map is cached for this run yet" in texts(at) and not charts(at)


@pytest.mark.slow
@pytest.mark.parametrize("colour", ["predicted class", "correct / wrong", "confidence", "redshift", "pitch_angle"])
def test_colour_by(cache, colour):
    at = run_app()
    at.selectbox(key="colour").select(colour)
    ok(at.run())
    (spec,) = charts(at)
    if colour in ("confidence", "redshift", "pitch_angle"):
        assert not legend(spec) and all("bdata" in t["marker"]["color"] for t in spec["data"])
        assert sum(bool(t["marker"].get("showscale")) for t in spec["data"]) == 1
    elif colour == "correct / wrong":
        assert [name.split(" (")[0] for name in legend(spec)] == ["correct", "wrong"]
    else:
        assert len(legend(spec)) == 10


@pytest.mark.slow
def test_class_highlight_keeps_the_rest_in_grey(cache):
    at = run_app()
    at.multiselect(key="highlight").select("Disturbed")
    ok(at.run())
    names = legend(charts(at)[0])
    assert names[0].startswith("other classes") and names[1].startswith("Disturbed") and len(names) == 2


def test_map_selection_gallery_counts_csv_and_clear(cache):
    at = run_app()
    at.session_state["picked"] = {"dataset": dataset_ref(cache), "rows": list(range(40))}
    ok(at.run())
    assert "Selected galaxies: 40" in texts(at) and "First 24 of 40, most confident first" in texts(at)
    picked = full_run_frame(cache).set_index("row").loc[range(40)]
    expected = picked.sort_values("confidence", ascending=False, kind="stable")["id"].tolist()[:24]
    assert at.get("download_button") and gallery_ids(at, columns=6) == expected
    (counts,) = [df.value for df in at.dataframe if "true" in df.value.columns]
    names = full_run_frame(cache).attrs["class_names"]
    true_counts = {names[c]: n for c, n in picked["label"].value_counts().items()}
    assert {c: n for c, n in counts["true"].items() if n} == true_counts
    assert legend(charts(at)[0])[-1] == "selected (40)"
    at.button(key="map-clear").click()
    ok(at.run())
    assert "Selected galaxies" not in texts(at)


def test_confusion_cell_from_the_controls(cache):
    at = view(run_app(), "Confusion")
    specs = charts(at)
    assert specs[0]["data"][0]["type"] == "heatmap" and specs[0]["data"][1]["customdata"][0] == [0, 0]
    assert "Per-class scores (test split)" in texts(at) and "ΔF1" in texts(at)
    assert len(at.dataframe) == 2  # per-class scores and the ΔF1 table
    at.selectbox(key="cell_true").select(TIGHT)
    at.selectbox(key="cell_pred").select(LOOSE)
    ok(at.run())
    assert f"of class {TIGHT} predicted as {LOOSE}" in texts(at) and "Misclassified" in texts(at)
    assert "most confident first" in texts(at)
    at.selectbox(key="cell_true").select("Merging")
    at.selectbox(key="cell_pred").select("Merging")
    ok(at.run())
    assert "Correctly classified" in texts(at) and at.get("image")  # the gallery
    shown = int(next(h.value for h in at.subheader if "of class Merging" in h.value).split()[0].replace(",", ""))
    assert shown > 0 and len(at.get("image")) == min(24, shown)
    assert charts(at)[1]["data"][-1]["name"] == f"cell Merging → Merging ({shown})"  # ringed on the map
    at.toggle(key="cm_norm").set_value(True)
    at.radio(key="cell_split").set_value("all")
    ok(at.run())
    assert "%" in json.dumps(charts(at)[0]["data"][0]["text"]) and "Per-class scores (all galaxies)" in texts(at)
    # the chosen cell stays highlighted on the Map view too
    at = view(at, "Map")
    assert any(t["name"].startswith("cell Merging → Merging") for t in charts(at)[0]["data"])


@pytest.mark.slow
def test_confusion_hidden_without_a_head(cache):
    at = view(run_app(query={"mode": "generic"}), "Confusion")
    assert "no classification head" in texts(at) and not charts(at)


@pytest.mark.slow
def test_compare_side_by_side_and_linked(cache):
    at = view(run_app(), "Compare")
    specs = charts(at)
    assert len(specs) == 2 and "generic · demo:generic" in texts(at) and "full finetune · demo:full" in texts(at)
    assert "randomly initialised stand-in" in texts(at)
    at.session_state["picked"] = {"dataset": dataset_ref(cache), "rows": [1, 2, 3]}
    ok(at.run())
    assert all(s["data"][-1]["name"] == "selected (3)" for s in charts(at))  # ringed in both maps


@pytest.mark.slow
def test_neighbours_from_a_gallery_button_by_id_k_and_metric(cache):
    at = view(run_app(), "Neighbours")
    assert "Try one of these" in texts(at)
    at.button(key="suggest-nb-0").click()
    ok(at.run())
    assert at.session_state["view"] == "Neighbours" and at.text_input(key="galaxy").value
    assert texts(at).count("of 8 neighbours share its class") == 2  # generic and finetuned spaces
    at.slider(key="k").set_value(5)
    at.radio(key="metric").set_value("euclidean")
    ok(at.run())
    assert "of 5 neighbours" in texts(at) and "euclidean distance" in texts(at)
    at.text_input(key="galaxy").input("no-such-galaxy")
    ok(at.run())
    assert "No galaxy with id 'no-such-galaxy'" in texts(at)


@pytest.mark.slow
def test_gallery_neighbours_button_opens_the_neighbours_view(cache):
    at = view(run_app(query={"cell_true": "Round Smooth", "cell_pred": "Round Smooth"}), "Confusion")
    at.button(key="cell-nb-0").click()
    ok(at.run())
    assert at.session_state["view"] == "Neighbours" and "neighbours share its class" in texts(at)


@pytest.mark.slow
def test_link_restores_the_view(cache):
    at = run_app(query={"mode": "head", "projection": "PCA", "highlight": ["Disturbed", "Merging"],
                        "cell_true": TIGHT, "cell_pred": LOOSE, "view": "Confusion", "colour": "confidence"})
    assert at.radio(key="mode").value == "head" and at.radio(key="projection").value == "pca"
    assert at.multiselect(key="highlight").value == ["Disturbed", "Merging"]
    assert at.selectbox(key="colour").value == "confidence"
    assert f"of class {TIGHT} predicted as {LOOSE}" in texts(at)
    # values that are not among the options are ignored, never used as paths
    at = run_app(query={"dataset": "/etc/passwd", "mode": "../../x", "view": "Map"})
    assert at.selectbox(key="dataset").value == "galaxies" and at.radio(key="mode").value == "full"


@pytest.mark.slow
def test_second_dataset_generic_only_with_placeholder_thumbnails(cache):
    at = run_app()
    at.selectbox(key="dataset").select("other-galaxies")
    ok(at.run())
    assert at.radio(key="mode").options == ["generic"] and "hf:facebook/dinov2-small" in texts(at)
    assert "randomly initialised" not in texts(at)
    at = view(at, "Compare")
    assert "Nothing to compare" in texts(at)
    at = view(at, "Neighbours")
    assert "grey placeholders" in texts(at)


def test_empty_cache_explains_the_demo(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    at = run_app()
    assert "python -m core demo" in texts(at) and "No cached runs" in texts(at)


@pytest.mark.slow
def test_cache_from_the_command_line(cache, monkeypatch):
    monkeypatch.delenv("EXPLORER_CACHE")
    monkeypatch.setattr(sys, "argv", ["app.py", "--cache", str(cache)])
    at = run_app()
    assert at.selectbox(key="dataset").value == "galaxies"


def test_a_failing_view_is_one_line_not_a_traceback():
    def app():
        from dashboard.views.common import guarded

        def broken():
            raise RuntimeError("disk on fire\nsecond line")

        guarded(broken)

    at = AppTest.from_function(app).run()
    assert not at.exception
    assert len(at.error) == 1 and "RuntimeError: disk on fire)" in at.error[0].value
    assert "second line" not in at.error[0].value


def test_config_binds_localhost_with_xsrf_on():
    import tomllib

    cfg = tomllib.loads((Path(APP).parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1" and cfg["server"]["enableXsrfProtection"] is True
    assert cfg["browser"]["gatherUsageStats"] is False
    # and Streamlit itself reads them from where `make serve` starts it (the repository root)
    from streamlit import config

    cwd = os.getcwd()
    try:
        os.chdir(Path(APP).parents[1])
        config.get_config_options(force_reparse=True)
        assert config.get_option("server.address") == "127.0.0.1"
        assert config.get_option("server.enableXsrfProtection") is True
        assert config.get_option("browser.gatherUsageStats") is False
        assert config.get_option("client.showErrorDetails") == "none"  # a short message, never a traceback
    finally:
        os.chdir(cwd)
        config.get_config_options(force_reparse=True)


@pytest.mark.slow
def test_real_photos_extracted_by_core(tmp_path, monkeypatch, checkpoints, examples_dir):
    """The contract end to end: features that `core` extracted from the 60 real DECaLS
    photos (a tiny random checkpoint without and one with a head), a map written per
    CONTRACTS.md, real thumbnails in the galleries."""
    import numpy as np
    import pyarrow as pa

    from core.store import cache as store
    from core.extract.features import extract

    cache = tmp_path / "cache"
    ref = f"folder:{examples_dir}"
    runs = {}
    for mode, name in (("generic", "dinov2"), ("full", "dinov2-head")):
        path, prov, _ = extract(ref, f"dir:{checkpoints[name]}", mode=mode, cache=cache, progress=False,
                                device="cpu", log=lambda *_: None)
        runs[mode] = {**prov, "key": path.stem, "path": path}
        table = store.read_table(path, columns=["row", "id", "embedding"])
        X = np.asarray(table.column("embedding").to_pylist(), np.float32)
        Xc = X - X.mean(0)
        xy = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T
        store.write_parquet(store.path_for(cache, "projections", store.key_of(path.stem, "pca")), pa.table({
            "row": table.column("row"), "id": table.column("id"),
            "x": pa.array(xy[:, 0], pa.float32()), "y": pa.array(xy[:, 1], pa.float32())}),
            {"kind": "projection", "features_run": path.stem, "method": "pca", "params": {}, "aligned_to": None,
             "rows": len(xy), "quality": {"trustworthiness": 0.5}})
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    at = run_app(query={"projection": "PCA"})
    assert at.radio(key="mode").options == ["generic", "full"] and "60 galaxies" in texts(at)
    assert sorted(r for t in charts(at)[0]["data"] for r in plotted_rows(t)) == list(range(60))  # each photo once

    # the fullest confusion cell, from the features core wrote (every photo is in the "test" split)
    frame = store.read_table(runs["full"]["path"], columns=["id", "label", "pred", "confidence"]).to_pandas()
    (true, pred), n = frame.groupby(["label", "pred"]).size().idxmax(), frame.groupby(["label", "pred"]).size().max()
    cell = frame[(frame["label"] == true) & (frame["pred"] == pred)].sort_values("confidence", ascending=False,
                                                                                kind="stable")
    names = runs["full"]["class_names"]
    at = view(at, "Confusion")
    at.selectbox(key="cell_true").select(names[true])
    at.selectbox(key="cell_pred").select(names[pred])
    ok(at.run())
    assert f"{n} galaxies of class {names[true]} predicted as {names[pred]}" in texts(at)
    assert gallery_ids(at, columns=8) == cell["id"].tolist()[:24]  # the cell's galaxies, most confident first
    assert charts(at)[1]["data"][-1]["name"] == f"cell {names[true]} → {names[pred]} ({n})"  # ringed on the map
    at = view(at, "Neighbours")
    at.button(key="suggest-nb-0").click()
    ok(at.run())
    assert texts(at).count("neighbours share its class") >= 2 and "grey placeholders" not in texts(at)
    assert len(at.get("image")) >= 9  # the galaxy and its 8 neighbours, from the real photos


def test_uncached_map_is_computed_and_cached_by_core(cache):
    """An uncached map has a Compute button; core.analysis.maps.store computes it (aligned to the
    generic run's map), caches it where `ls` lists it, and the page draws it."""
    from core.store import cache as store

    def pca_maps():
        return [r for r in store.list_runs(cache) if r["kind"] == "projection" and r["method"] == "pca"]

    head, generic = (next(r for r in store.list_runs(cache) if r.get("model") == f"demo:{m}" and
                          r["dataset"] == dataset_ref(cache)) for m in ("head", "generic"))
    before = {r["key"] for r in pca_maps()}
    at = run_app(query={"mode": "head", "projection": "PCA"})
    assert "No PCA map is cached" in texts(at) and not charts(at)
    at.button(key="compute-map").click()
    ok(at.run())
    try:
        (new,) = [r for r in pca_maps() if r["key"] not in before]
        assert new["features_run"] == head["key"] and new["aligned_to"] == generic["key"]
        assert "PCA map quality" in texts(at) and "No PCA map is cached" not in texts(at)
        trust = f"{new['quality']['trustworthiness']:.2f}"
        assert any(m.label == "trustworthiness" and m.value == trust for m in at.metric)
        (spec,) = charts(at)
        assert sorted(r for t in spec["data"] for r in plotted_rows(t)) == list(range(head["rows"]))
    finally:  # leave the shared fixture as it was
        for r in pca_maps():
            if r["key"] not in before:
                Path(r["path"]).unlink()


ZOOBOT = "timm:hf_hub:mwalmsley/zoobot-encoder-convnext_nano"


@pytest.fixture
def cache_copy(dashboard_cache, tmp_path, monkeypatch):
    """A copy of the dashboard cache without outlier scores (other tests' first views cache them), for the app."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(dashboard_cache, cache, ignore=shutil.ignore_patterns("anomalies"))
    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    return cache


@pytest.fixture
def three_runs(cache_copy):
    """The dashboard cache plus a galaxy-native encoder's generic run on the same galaxies
    (a `timm:` ConvNeXt's pooled 640-d features: some class structure, less than the full finetune's),
    its t-SNE map computed by core."""
    import numpy as np

    from core.store import cache as store
    from core.analysis.maps import store as mapstore
    from tests.features_fixtures import write_features

    cache = cache_copy
    generic = next(r for r in store.list_runs(cache) if r.get("model") == "demo:generic")
    frame = store.read_table(generic["path"], columns=["row", "id", "split", "label"]).to_pandas()
    rng = np.random.default_rng(3)
    labels = frame["label"].to_numpy()
    centres = rng.normal(0, 1, (len(generic["class_names"]), 640))
    emb = 1.0 * centres[labels] + rng.normal(0, 1.0, (len(labels), 640))
    run = write_features(cache, {"row": frame["row"], "id": frame["id"], "split": frame["split"], "label": labels,
                                 "embedding": emb}, dataset=generic["dataset"], model=ZOOBOT, family="convnext_nano",
                         size="nano", mode="generic", pooling="pooler", class_names=generic["class_names"])
    _, prov = mapstore.get_projection(run["key"], "tsne", cache, progress=False)
    return {"cache": cache, "run": run, "map": prov}


@pytest.mark.slow
def test_compare_three_runs_side_by_side(three_runs):
    """Generic, finetuned and a galaxy-native encoder on one screen: three maps, titles, numbers, kNN table."""
    at = view(run_app(), "Compare")
    assert len(charts(at)) == 2 and at.selectbox(key="cmp_third").value == "none"  # the default stays two maps
    label = next(o for o in at.selectbox(key="cmp_third").options if ZOOBOT in o)
    assert label == f"convnext_nano · nano · generic · {ZOOBOT}"
    at.selectbox(key="cmp_third").select(label)
    ok(at.run())
    specs = charts(at)
    assert len(specs) == 3
    titles = [m.value for m in at.markdown if str(m.value).startswith("**") and str(m.value).endswith("**")]
    assert titles[0] == "**generic · demo:generic**"
    assert titles[1].startswith("**full finetune · demo:full · macro F1 ")
    assert titles[2] == f"**generic · {ZOOBOT} (convnext_nano · nano)**"
    fq, q = three_runs["map"]["feature_quality"], three_runs["map"]["quality"]
    quality = [c.value for c in at.caption if "feature kNN accuracy" in str(c.value)]
    assert len(quality) == 3
    assert quality[2] == (f"kNN preservation {q['knn_preservation']:.2f} · trustworthiness {q['trustworthiness']:.2f}"
                          f" · feature kNN accuracy {fq['knn_accuracy']:.2f} · silhouette {fq['silhouette']:.2f}")
    table = next(d.value for d in at.dataframe if "finetuned kNN" in d.value.columns)
    assert list(table.columns) == ["class", "n", "generic kNN", "finetuned kNN", "convnext_nano · nano kNN", "change"]
    expected = {r["class"]: r["knn_accuracy"] for r in fq["per_class"]}
    assert table.set_index("class")["convnext_nano · nano kNN"].to_dict() == pytest.approx(expected)
    assert "`convnext_nano · nano kNN`: the third run's" in texts(at)
    # a selection is ringed in all three maps; the choice is kept in the URL
    at.session_state["picked"] = {"dataset": dataset_ref(three_runs["cache"]), "rows": [1, 2, 3]}
    ok(at.run())
    assert [s["data"][-1]["name"] for s in charts(at)] == ["selected (3)"] * 3
    linked = run_app(query={"view": "Compare", "cmp_third": label})  # a copied link reopens all three
    assert len(charts(linked)) == 3 and linked.selectbox(key="cmp_third").value == label
    # choosing the encoder itself in the sidebar: nothing to compare, and how to see it beside the others
    at.selectbox(key="model").select("convnext_nano · nano")
    ok(at.run())
    assert "Nothing to compare" in texts(at) and "add this run as the third map" in texts(at)


@pytest.mark.slow
def test_large_run_says_how_to_get_its_outlier_scores(cache_copy, monkeypatch, capsys):
    """Above the on-first-view limit the Unusual view says scores come on request and gives the command,
    with this cache; running that command makes the gallery and the Colour-by options appear."""
    import shlex

    import dashboard.views.unusual as unusual
    from core.__main__ import main
    from core.store.cache import list_runs

    monkeypatch.setattr(unusual, "AUTO_MAX", 100)  # the fixture's 300 galaxies count as a large run
    at = view(run_app(), "Unusual")
    assert "Runs of more than 100 galaxies are scored only on request: score these 300 once" in texts(at)
    key = next(r["key"] for r in list_runs(cache_copy) if r.get("model") == "demo:full")
    command = f"python -m core anomalies --run {key} --cache {cache_copy}"
    assert [c.value for c in at.code] == [command]
    assert "outlier score (kNN)" not in at.selectbox(key="colour").options and "Most unusual first" not in texts(at)
    assert main(shlex.split(command)[3:]) == 0 and "weirdest" in capsys.readouterr().out
    at = view(run_app(), "Unusual")
    assert "Most unusual first" in texts(at) and "scored only on request" not in texts(at)
    assert "outlier score (kNN)" in at.selectbox(key="colour").options


def test_a_run_scored_from_its_index_says_how_long_and_where(cache_copy, monkeypatch):
    """At survey scale the Unusual view says the scores come from the run's index, and how long that takes."""
    import dashboard.views.unusual as unusual
    from core.analysis import knn

    monkeypatch.setattr(unusual, "AUTO_MAX", 100)
    monkeypatch.setattr(knn, "EXACT_BELOW", 200)  # the fixture's 300 galaxies count as a survey
    monkeypatch.setattr(unusual, "INDEX_SCORES_PER_SECOND", 0.05)  # 300 galaxies: 100 minutes
    at = view(run_app(), "Unusual")
    assert ("These 300 are scored from the run's neighbour index, every galaxy a query: about 1.7 hours on two "
            "CPU cores, so run this command in a terminal") in texts(at)
    assert [c.value for c in at.code][0].startswith("python -m core anomalies --run ")


@pytest.mark.slow
def test_neighbours_answer_from_the_run_index_above_the_threshold(cache_copy, monkeypatch):
    from core.analysis import knn

    monkeypatch.setattr(knn, "EXACT_BELOW", 50)  # these runs are small: make them "large"

    def whole(*a, **kw):
        raise AssertionError("a run with an index is never loaded whole")

    from dashboard import data as D

    monkeypatch.setattr(D, "read_embeddings", whole)  # the rows come from the index's memory-mapped vectors
    at = view(run_app(), "Neighbours")
    at.button(key="suggest-nb-0").click()
    ok(at.run())
    assert texts(at).count("of 8 neighbours share its class") == 2
    assert texts(at).count("from the run's index (faiss-cpu IVF-PQ, recall@10") == 2
    from core.store import cache as store

    assert any(e["kind"] == "knn-index" for e in store.list_runs(cache_copy))
