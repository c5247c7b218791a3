"""The README's main job: `python -m core demo` builds a working cache offline."""
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.store import cache as store
from tests.conftest import REPO, subprocess_timeout


def _results(cache):
    runs = store.list_runs(cache)
    feats = {(r["dataset"].split(":")[0], r["model"]): r for r in runs if r["kind"] == "features"}
    return runs, feats


def test_demo_builds_everything_the_dashboard_needs(demo_cache):
    cache, out = demo_cache["cache"], demo_cache["stdout"]
    runs, feats = _results(cache)
    synthetic = {m: r for (src, m), r in feats.items() if src == "synthetic"}
    assert set(synthetic) == {"demo:generic", "demo:head", "demo:full"}
    assert {r["mode"] for r in synthetic.values()} == {"generic", "head", "full"}
    assert synthetic["demo:full"]["rows"] == 3000 and synthetic["demo:full"]["dim"] == 128
    assert not synthetic["demo:generic"]["has_head"] and synthetic["demo:full"]["has_head"]
    # the 60 real photos went through the same checkpoints
    from tests.conftest import EXAMPLES

    if (EXAMPLES / "labels.csv").is_file():
        real = {m: r for (src, m), r in feats.items() if src == "folder"}
        assert set(real) == set(synthetic) and all(r["rows"] == 60 for r in real.values())
    # synthetic parameters ride along as metadata a map can be coloured by
    cols = pq.read_schema(synthetic["demo:full"]["path"]).names
    assert "meta_pitch_angle_deg" in cols and "meta_axis_ratio" in cols

    evals = {r["features_run"]: r for r in runs if r["kind"] == "evaluation"}
    f1_full = evals[synthetic["demo:full"]["key"]]["macro_f1"]
    f1_head = evals[synthetic["demo:head"]["key"]]["macro_f1"]
    # The demo's given labels carry volunteer-like noise (core.data.synthetic: 228 of 3,000 swapped, 7.0% of the
    # test split; the truth in meta_true_label), so the full finetune is also judged against the true classes.
    # Measured on a fresh build (2 threads, bf16 on this CPU; docs/BENCHMARKS.md): against the given labels head
    # 0.665, full 0.773, generic kNN 0.692 (0.687 on the test split); against the true classes full 0.831, head
    # 0.714. The bounds leave room for float noise from other thread counts.
    from core.analysis.evaluation import classification_report

    t = pq.read_table(synthetic["demo:full"]["path"], columns=["split", "pred", "meta_true_label"]).to_pandas()
    t = t[t["split"] == "test"]
    f1_true = classification_report(t["meta_true_label"].to_numpy(), t["pred"].to_numpy(),
                                    synthetic["demo:full"]["class_names"])["macro_f1"]
    assert f1_true >= 0.80, f1_true  # the full finetune genuinely learns the true classes
    assert f1_full >= 0.72, f1_full
    assert f1_head >= 0.60, f1_head  # the self-supervised generic features already carry the classes
    # full - head: 0.108 measured (the paper's DINOv2: 0.25); label noise caps both F1s, so the bound is 0.07
    assert 0.07 <= f1_full - f1_head <= 0.35, (f1_full, f1_head)
    summary = json.loads((cache / "evaluations" / "summary.json").read_text())
    assert any(abs(row["delta_f1"] - (f1_full - f1_head)) < 1e-9 for row in summary["delta_f1"])

    maps = [r for r in runs if r["kind"] == "projection"]
    tsne = {r["features_run"]: r for r in maps if r["method"] == "tsne"}
    g, f = tsne[synthetic["demo:generic"]["key"]], tsne[synthetic["demo:full"]["key"]]
    assert f["aligned_to"] == synthetic["demo:generic"]["key"] and g["aligned_to"] is None
    assert g["feature_quality"]["knn_accuracy"] >= 0.66, g["feature_quality"]  # generic already groups galaxies
    assert g["feature_quality"]["test_knn_accuracy"] >= 0.65, g["feature_quality"]  # on the test split too
    # head-only training leaves the backbone as it was: its map is the generic map itself
    h = tsne[synthetic["demo:head"]["key"]]
    assert h["same_features_as"] == synthetic["demo:generic"]["key"], h
    # generic and full maps differ visibly: classes separate after finetuning
    assert f["feature_quality"]["silhouette"] > g["feature_quality"]["silhouette"] + 0.1
    assert f["feature_quality"]["knn_accuracy"] > g["feature_quality"]["knn_accuracy"] + 0.1
    assert {r["method"] for r in maps} >= {"tsne", "pca"}
    # the numbers are printed for the user, and nothing failed
    assert "demo:full" in out and f"{f1_full:.3f}" in out
    assert "Traceback" not in demo_cache["stderr"]


def test_demo_checkpoints_read_by_plain_transformers_and_their_own_processor(demo_cache):
    """What a user gets from the demo's folders with transformers alone (AutoModelForImageClassification
    and AutoImageProcessor, not our code): the predictions and CLS features the demo stored."""
    import torch
    import transformers as tf

    from core.data.sources import open_dataset

    cache = demo_cache["cache"]
    _, feats = _results(cache)
    rows = np.arange(0, 3000, 50)
    images = list(open_dataset("synthetic:galaxy10?n=3000&size=64&seed=42").batch(rows))
    for name in ("head", "full"):
        folder = cache / "checkpoints" / "demo" / name
        model = tf.AutoModelForImageClassification.from_pretrained(folder).eval()
        pixels = tf.AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
        assert pixels.shape == (len(rows), 3, 64, 64)  # the 64-px galaxy, not padded to a 224-px crop
        with torch.no_grad():
            out = model(pixel_values=pixels)
            cls = model.base_model(pixel_values=pixels).last_hidden_state[:, 0]  # after the final LayerNorm
        table = pq.read_table(feats[("synthetic", f"demo:{name}")]["path"],
                              columns=["row", "probs", "embedding"]).to_pandas().set_index("row").loc[rows]
        probs = np.stack(table["probs"].to_numpy())
        # PIL vs torch resampling is not in play (64 px in, 64 px out): float noise only
        np.testing.assert_allclose(out.logits.softmax(-1).numpy(), probs, atol=1e-3)
        np.testing.assert_allclose(cls.numpy(), np.stack(table["embedding"].to_numpy()), atol=1e-3)


def test_second_demo_run_is_a_cache_hit(demo_cache):
    from tests.test_imports import HEAVY

    before = {p: p.stat().st_mtime_ns for p in demo_cache["cache"].rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "core", "demo", "--cache", str(demo_cache["cache"])],
                       cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr[-2000:]
    from tests.conftest import EXAMPLES

    # the synthetic runs, their maps and evaluations; with the 60 real photos beside the repository, theirs too
    assert r.stdout.count("cached") >= (8 if (EXAMPLES / "labels.csv").is_file() else 5) and "images in" not in r.stdout
    after = {p: p.stat().st_mtime_ns for p in demo_cache["cache"].rglob("*") if p.is_file()}
    changed = [p.name for p in before if after.get(p) != before[p]]
    assert changed in ([], ["summary.json"]), changed  # nothing recomputed
    # and it cost nothing: no torch, no map or learning library imported (`-X importtime` lists every import)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "core" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_dashboard_first_view_on_the_demo_computes_and_imports_nothing_heavy(demo_cache):
    """The demo builds what the first view shows (maps, outlier scores...): a new session only
    reads the cache, without torch or the map libraries."""
    import os

    from tests.test_imports import heavy_modules_after

    before = {p: p.stat().st_mtime_ns for p in demo_cache["cache"].rglob("*") if p.is_file()}
    heavy = heavy_modules_after(
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(REPO / 'dashboard' / 'app.py')!r}, default_timeout=300).run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "assert any('t-SNE map quality' in str(m.value) for m in at.markdown), 'no map on the first view'",
        env={**os.environ, "EXPLORER_CACHE": str(demo_cache["cache"])})
    assert heavy == []
    after = {p: p.stat().st_mtime_ns for p in demo_cache["cache"].rglob("*") if p.is_file()}
    assert [p for p in after if p not in before or after[p] != before[p]] == []  # nothing computed


def test_dashboard_places_the_real_photos_in_the_demo_map(demo_cache, monkeypatch):
    """On the demo, the synthetic map can show the real DECaLS photos (same checkpoint) as stars."""
    import json as _json

    from streamlit.testing.v1 import AppTest

    from tests.conftest import EXAMPLES

    if not (EXAMPLES / "labels.csv").is_file():
        import pytest

        pytest.skip(f"real DECaLS examples not found at {EXAMPLES}")
    monkeypatch.setenv("EXPLORER_CACHE", str(demo_cache["cache"]))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120).run()
    assert not at.exception
    at.toggle(key="place_other").set_value(True).run()
    assert not at.exception and not at.error
    assert any("Stars: 60 galaxies" in c.value for c in at.caption)
    fig = _json.loads(at.get("plotly_chart")[0].proto.spec)
    stars = [t for t in fig["data"] if t.get("marker", {}).get("symbol") == "star"]
    assert len(stars) == 1 and "true:" in stars[0]["hovertext"][0]


@pytest.mark.slow
def test_generic_model_was_pretrained_without_labels_on_other_galaxies():
    """The shipped demo:generic weights: DINO, labels unused, on a synthetic set sharing no image with the demo's."""
    import hashlib

    from core.data.sources import open_dataset
    from core.cli.demo import DATASET, GENERIC_WEIGHTS

    prov = json.loads((GENERIC_WEIGHTS / "explorer.json").read_text())
    assert prov["labels_used"] is False and prov["method"].startswith("DINO") and prov["mode"] == "generic"
    assert (GENERIC_WEIGHTS / "model.safetensors").stat().st_size < 8 << 20  # a few MB in git
    assert "python -m core pretrain" in (GENERIC_WEIGHTS / "COMMAND.md").read_text()
    pretrain_set, demo_set = open_dataset(prov["dataset"]), open_dataset(DATASET)
    assert pretrain_set.fingerprint == prov["dataset_fingerprint"]

    def digests(ds):
        out = set()
        for _, batch in ds.iter_batches(ds.rows(), 500):
            out.update(hashlib.sha1(img.tobytes()).hexdigest() for img in batch)
        return out

    seen = digests(pretrain_set)
    assert len(seen) == len(pretrain_set)  # all distinct, so the check below is about images, not hashes
    assert not seen & digests(demo_set), "a demo galaxy was in the pretraining set"


def test_class_knn_change_puts_what_finetuning_separated_on_top():
    from core.analysis.maps.quality import class_knn_change, feature_space_quality

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    before = rng.normal(size=(120, 4))  # nothing separated
    after = before.copy()
    after[labels == 1] += 10  # finetuning pulled class 1 out; 0 and 2 stay mixed
    table = class_knn_change(feature_space_quality(before, labels, ["a", "b", "c"]),
                             feature_space_quality(after, labels, ["a", "b", "c"]))
    assert list(table.columns) == ["class", "n", "generic kNN", "finetuned kNN", "change"]
    assert table["class"].iloc[0] == "b" and table["finetuned kNN"].iloc[0] == 1.0
    assert table["change"].iloc[0] > 0.4 and table["n"].tolist() == [40, 40, 40]


def test_compare_view_shows_per_class_knn_generic_vs_finetuned(demo_cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EXPLORER_CACHE", str(demo_cache["cache"]))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180).run()
    at.session_state["view"] = "Compare"
    at.run()
    assert not at.exception and not at.error
    assert any("Which classes finetuning separated" in m.value for m in at.markdown)
    tables = [d.value for d in at.dataframe if "finetuned kNN" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert len(table) == 10 and {"generic kNN", "finetuned kNN", "change"} <= set(table.columns)
    assert table["change"].is_monotonic_decreasing
    assert any("self-supervised" in c.value for c in at.caption)  # says what the generic model is
