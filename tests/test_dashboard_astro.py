"""Astronomers' features in the app (AppTest): positions on hover and cards, survey links,
CSV columns, Find by id / position / uploaded image, outlier scores and the Unusual gallery.

The whole path runs for real: an h5 file in the astroNN layout with ra/dec/redshift ->
`extract` with tiny random checkpoints -> maps -> outlier scores -> the app. A synthetic
run through the same checkpoint has no positions: the sky features must be absent there."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

import streamlit  # noqa: F401,E402  (required: a broken install fails here)
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.test_dashboard import APP, ok, texts  # noqa: E402

RA7, DEC7, Z7 = 150.1196, 2.2058, 0.043  # galaxy g10-00007


@pytest.fixture(scope="module")
def sky_cache(tmp_path_factory, checkpoints):
    import h5py

    from core.analysis.maps import store as mapstore
    from core.extract.features import extract
    from tests.test_sources import write_galaxy10_h5

    root = tmp_path_factory.mktemp("sky")
    h5 = write_galaxy10_h5(root / "Galaxy10_DECals.h5", n=60, size=32)
    with h5py.File(h5, "r+") as f:
        f["ra"][7], f["dec"][7], f["redshift"][7] = RA7, DEC7, Z7
        images = f["images"][:]
    cache = root / "cache"
    quiet = dict(cache=cache, progress=False, log=lambda *a: None)
    _, generic, _ = extract(f"h5:{h5}", f"dir:{checkpoints['dinov2']}", mode="generic", **quiet)
    _, full, _ = extract(f"h5:{h5}", f"dir:{checkpoints['dinov2-head']}", mode="full", **quiet)
    extract("synthetic:galaxy10?n=40&size=32", f"dir:{checkpoints['dinov2']}", mode="generic", **quiet)
    extract(f"h5:{h5}", f"dir:{checkpoints['vit']}", mode="generic", **quiet)  # another encoder, same galaxies
    runs = {r["mode"] + ("-synthetic" if r["dataset"].startswith("synthetic") else "") + f"-{r['family']}": r
            for r in __import__("core.store.cache", fromlist=["x"]).list_runs(cache) if r["kind"] == "features"}
    runs = {k.replace("-dinov2", ""): v for k, v in runs.items()}
    for key in ("generic", "generic-synthetic"):
        mapstore.get_projection(runs[key]["key"], "tsne", cache=cache, progress=False)
    mapstore.get_projection(runs["full"]["key"], "tsne", cache=cache, align_to=runs["generic"]["key"], progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        yield {"cache": cache, "runs": runs, "images": images}


def app(query=None, state=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in {"model": "DINOv2 · hidden 32", **(query or {})}.items():  # the ViT run is a second model
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    return ok(at.run())


def captions(at) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_hover_shows_degrees_sexagesimal_and_redshift(sky_cache):
    at = app()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = [t for t in spec["data"] if t.get("type") == "scattergl" and "hovertemplate" in t]
    assert all("RA %{customdata[2]:.5f}° Dec %{customdata[3]:+.5f}°<br>%{hovertext}<br>z %{customdata[4]:.4f}"
               in t["hovertemplate"] for t in traces)
    found = [(t, i) for t in traces for i, text in enumerate(t["text"]) if text == "g10-00007"]
    assert found, "galaxy 7 is on the map"
    t, i = found[0]
    assert t["hovertext"][i] == "10h00m28.70s +02d12m20.9s"
    custom = t["customdata"]
    if isinstance(custom, dict):  # a typed array: {dtype, bdata, shape}
        import base64

        custom = np.frombuffer(base64.b64decode(custom["bdata"]), custom["dtype"]).reshape(
            [int(s) for s in str(custom["shape"]).split(",")])
    assert np.allclose(np.asarray(custom)[i][2:5], [RA7, DEC7, Z7], atol=1e-4)


@pytest.mark.slow
def test_cards_show_position_redshift_and_links_with_the_chosen_layer(sky_cache):
    at = app(state={"view": "Neighbours", "galaxy": "g10-00007"})
    text = captions(at)
    assert "RA 150.11960° Dec +2.20580°" in text and "10h00m28.70s +02d12m20.9s" in text and "z = 0.0430" in text
    assert "[Legacy Surveys](https://www.legacysurvey.org/viewer?ra=150.11960&dec=2.20580&layer=ls-dr10&zoom=14)" in text
    assert "https://simbad.cds.unistra.fr/simbad/sim-coo?Coord=150.11960+%2B2.20580" in text
    assert text.count("RA ") >= 9  # the galaxy and its neighbours in each space all carry positions
    md = "\n".join(str(m.value) for m in at.markdown)  # three spaces on one screen: DINOv2 generic, full, ViT
    assert "**generic** · DINOv2" in md and "**full finetune** · DINOv2" in md and "**generic** · ViT" in md
    at.selectbox(key="survey_layer").set_value("ls-dr9")
    text = captions(ok(at.run()))
    assert "layer=ls-dr9" in text and "layer=ls-dr10&" not in text
    shared = app(query={"survey_layer": "ls-dr9"}, state={"view": "Neighbours", "galaxy": "g10-00007"})
    assert "layer=ls-dr9" in captions(shared)  # the layer travels in a shared link


@pytest.mark.slow
def test_selection_csv_carries_ra_dec_redshift_and_link(sky_cache):
    import pandas as pd

    from dashboard.data import read_run, selection_csv

    data = read_run(sky_cache["runs"]["full"])
    pos = data.positions([7, 3])
    df = pd.read_csv(io.BytesIO(selection_csv(data, pos, layer="ls-dr9")))
    assert list(df.columns[-6:]) == ["ra", "dec", "ra_dec_sexagesimal", "redshift", "legacy_survey_url", "simbad_url"]
    row = df[df["id"] == "g10-00007"].iloc[0]
    assert (row["ra"], row["dec"], row["redshift"]) == pytest.approx((RA7, DEC7, Z7))
    assert row["legacy_survey_url"].endswith("ra=150.11960&dec=2.20580&layer=ls-dr9&zoom=14")


@pytest.mark.slow
def test_find_by_id_and_by_position_with_separation_and_warning(sky_cache):
    at = app(state={"view": "Find", "find_by": "id", "find_id": "00007"})
    assert "**g10-00007**" in captions(at)
    near = f"{RA7 + 3 / 3600 / np.cos(np.radians(DEC7)):.6f} {DEC7 + 4 / 3600:+.6f}"  # 5" away
    at = app(state={"view": "Find", "find_by": "position", "find_pos": near})
    assert at.success and "g10-00007, 5.0″ away" in at.success[0].value
    assert not at.warning and "separation 5.0″" in captions(at)
    at = app(state={"view": "Find", "find_by": "position", "find_pos": "10:00:28.704 +02:13:20.88"})  # 1 arcmin north
    assert at.warning and "60.0″ away, beyond 20″" in at.warning[0].value
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["view"], at.session_state["find_by"], at.session_state["find_pos"] = "Find", "position", "10 95"
    at.run()
    assert not at.exception and [e.value for e in at.error] == ["Dec 95 is outside [-90, 90] degrees"]


@pytest.mark.slow
def test_upload_finds_the_same_galaxy_in_both_spaces(sky_cache):
    at = app(state={"view": "Find", "find_by": "image"})
    name = "`mine` *7* $x$.png"  # shown as typed, not as code, italics and maths
    at.file_uploader(key="find_upload").set_value((name, png(sky_cache["images"][7]), "image/png"))
    at = ok(at.run())
    assert any(t.value.startswith(name + " · ") for t in at.text)
    assert not any("mine" in str(m.value) for m in [*at.markdown, *at.caption])
    assert any("at most 2 uploads are worked on at once" in str(c.value) for c in at.caption)
    md = texts(at)
    assert "**generic** · DINOv2" in md and "**full finetune** · DINOv2" in md and "**generic** · ViT" in md
    first_cards = [c.value for c in at.caption if "similarity" in str(c.value) and "**g10-" in str(c.value)]
    assert len(first_cards) >= 3
    # itself, with similarity 1, in each of the three spaces (DINOv2 generic, full, and ViT on one screen)
    assert sum("**g10-00007**" in c and "**similarity 1.0000**" in c for c in first_cards) == 3
    assert any("Least similar" in e.label for e in at.expander)
    at.file_uploader(key="find_upload").set_value(("*broken*.png", b"not an image", "image/png"))
    at.run()
    assert not at.exception and at.error and "not an image this app can read" in at.error[0].value
    assert at.error[0].value.startswith("\\*broken\\*\\.png is not")  # escaped: no italics


@pytest.mark.slow
def test_unusual_gallery_ranks_by_score_and_colour_by_score(sky_cache):
    from core.analysis import outliers as anomaly

    run = sky_cache["runs"]["full"]
    at = app(state={"view": "Unusual"})
    assert [s.value for s in at.subheader] == ["Most unusual first"]
    df, _ = anomaly.get_anomalies(run["key"], sky_cache["cache"])
    mean = (df["knn"] + df["iforest"]) / 2
    weirdest = df["id"].iloc[int(np.argmax(mean))]
    cards = [str(c.value) for c in at.caption if "**outlier score " in str(c.value)]
    assert cards[0].startswith(f"**{weirdest}**") and f"**outlier score {mean.max():.2f}**" in cards[0]
    shown = [float(c.split("**outlier score ")[1].split("**")[0]) for c in cards]
    # cards fill 8 columns left to right, AppTest lists them column by column: compare as sets
    assert sorted(shown, reverse=True) == [round(v, 2) for v in sorted(mean, reverse=True)[:16]]
    generic = app(query={"mode": "generic"}, state={"view": "Unusual"})  # same checkpoint as the synthetic run
    assert "**40 galaxies of galaxy10 (synthetic)**, scored against these 60" in texts(generic)
    colours = at.selectbox(key="colour").options
    assert "outlier score (kNN)" in colours and "outlier score (forest)" in colours
    at = app(query={"colour": "outlier score (kNN)"})
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t.get("marker", {}).get("showscale") for t in spec["data"])


@pytest.mark.slow
def test_no_positions_means_no_sky_features(sky_cache):
    at = app(query={"dataset": "galaxy10 (synthetic)"}, state={"view": "Find", "find_by": "position"})
    assert "has no sky positions" in texts(at)
    assert not [s for s in at.selectbox if s.key == "survey_layer"]
    at = app(query={"dataset": "galaxy10 (synthetic)"})
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert not any("RA " in t.get("hovertemplate", "") for t in spec["data"])
    at = app(query={"dataset": "galaxy10 (synthetic)"}, state={"view": "Unusual"})
    assert "RA " not in captions(at) and [s.value for s in at.subheader] == ["Most unusual first"]
