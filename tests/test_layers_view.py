"""The Layers view and the attention overlays, through Streamlit's AppTest:
a fixture cache whose finetuned run changes its last two blocks, and the real demo."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamlit  # noqa: F401,E402  (required: a broken install fails here)
from streamlit.testing.v1 import AppTest  # noqa: E402

from core.store import cache as store  # noqa: E402
from tests.test_dashboard import APP, charts, ok, texts  # noqa: E402


def _fixed16(a):
    return pa.FixedSizeListArray.from_arrays(pa.array(a.astype(np.float16).reshape(-1)), a.shape[1])


def write_layers(cache, run: dict, blocks: list[np.ndarray]) -> None:
    """A per-layer file in the extractor's format for a fixture features run."""
    n = len(blocks[0])
    base = pq.read_table(run["path"], columns=["row", "id", "split", "label"])
    cols = {c: base.column(c) for c in base.column_names}
    for i, X in enumerate(blocks, 1):
        cols[f"layer{i:02d}_cls"] = _fixed16(X)
        cols[f"layer{i:02d}_mean"] = _fixed16(X[:, ::-1].copy())
    prov = dict(kind="layers", features_run=run["key"], layers=list(range(1, len(blocks) + 1)), kinds=["cls", "mean"],
                unit="block", dtype="float16", dataset=run["dataset"], model=run["model"], mode=run["mode"],
                family="dinov2", split="all", rows=n)
    store.write_parquet(cache / "layers" / f"{run['key']}.parquet", pa.table(cols), prov)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from tests.dashboard_fixtures import build_cache

    cache = build_cache(tmp_path_factory.mktemp("layers-app"), n=300, second_dataset=False)
    runs = {r["mode"]: r for r in store.list_runs(cache) if r["kind"] == "features"}
    labels = pq.read_table(runs["generic"]["path"], columns=["label"])["label"].to_numpy()
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (10, 24))
    # generic: class signal grows with depth; full: blocks 3-4 rotated and sharpened, 1-2 untouched
    generic = [centres[labels] * s + rng.normal(0, 1, (len(labels), 24)) for s in (0.1, 0.4, 0.8, 1.0)]
    Q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    full = generic[:2] + [np.tanh(centres[labels] * 3 + rng.normal(0, 0.5, (len(labels), 24))) @ Q for _ in range(2)]
    write_layers(cache, runs["generic"], generic)
    write_layers(cache, runs["head"], generic)
    write_layers(cache, runs["full"], full)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_CACHE", str(cache))
        yield cache


@pytest.mark.slow
def test_layers_view_curves_cka_and_reading(cache):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["view"] = "Layers"
    at = ok(at.run())
    text = texts(at)
    assert "Finetuning changed blocks 3-4 most" in text, text
    specs = charts(at)
    curves = next(s for s in specs if "separable" in s["layout"]["title"]["text"])
    names = [t["name"] for t in curves["data"]]
    assert "generic: probe macro F1" in names and "full finetune: kNN accuracy" in names
    cka = next(s for s in specs if "CKA" in s["layout"]["title"]["text"])
    by = {t["name"]: t["y"] for t in cka["data"]}
    assert np.allclose(by["generic vs head-only"], 1, atol=1e-3)  # head-only leaves the blocks alone
    full = by["generic vs full finetune"]
    assert min(full[:2]) > 0.99 and max(full[2:]) < 0.8
    # the scores were cached by core beside the per-layer features
    assert len(list((cache / "layers").glob("analysis-*.json"))) == 5


@pytest.mark.slow
def test_layers_view_explains_how_to_get_per_layer_features(cache, tmp_path, monkeypatch):
    from tests.dashboard_fixtures import build_cache

    bare = build_cache(tmp_path, n=60, second_dataset=False, images=False)
    monkeypatch.setenv("EXPLORER_CACHE", str(bare))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["view"] = "Layers"
    at = ok(at.run())
    assert "No per-layer features cached" in texts(at)
    assert any("--layers all" in c.value for c in at.code)


def test_demo_layers_view_and_attention_overlays(demo_cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(demo_cache["cache"]))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["view"] = "Layers"
    at = ok(at.run())
    text = texts(at)
    assert "Reading:" in text and "block" in text
    assert len(charts(at)) == 2
    assert "random-init stand-in" not in text  # the shipped generic model is self-supervised
    assert "pretrained with DINO on synthetic galaxies without labels" in text
    # Neighbours: the focus galaxy's attention for the generic and the full checkpoint, on the model's crop
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["view"] = "Neighbours"
    at.query_params["galaxy"] = "syn-000007"
    at = ok(at.run())
    text = texts(at)
    assert "Where the models look" in text
    assert "No attention map" not in text  # both demo checkpoints have a CLS token: both maps drawn
    # the demo's generic model is pretrained (self-supervised), and the page says so, not "random"
    assert "Self-supervised demo model (DINO on synthetic galaxies, no labels)" in text
    assert "Random-init stand-in" not in text
    assert len(list((demo_cache["cache"] / "attention").glob("*.npz"))) == 2  # generic + full, cached


def test_demo_confusion_cell_shows_attention_behind_a_toggle(demo_cache, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(demo_cache["cache"]))
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(view="Confusion", cell_true="Unbarred Tight Spiral", cell_pred="Unbarred Loose Spiral")
    at = ok(at.run())
    assert "Where the models look" not in texts(at)  # off until asked: the page stays quick
    at.toggle(key="cell_attention").set_value(True)
    at = ok(at.run())
    chosen = at.selectbox(key="cell_attention_galaxy").value
    assert chosen.startswith("syn-")
    assert "Where the models look" in texts(at) and "No attention map" not in texts(at)
