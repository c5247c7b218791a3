"""Modes mean what they say, evaluations state their split and leakage, ΔF1 pairs
like with like, and references match however the user spells them."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.store import cache as store
from core.analysis import evaluation as ev
from core.__main__ import main
from core.errors import UserError
from core.models.modes import leakage, resolve_mode, training_data
from tests.checkpoint_fixtures import make_checkpoint
from tests.test_sources import write_galaxy10_h5

torch.set_num_threads(1)
GALAXY = ["Disturbed", "Merging", "Round Smooth"]


def test_a_head_over_other_classes_is_generic_and_cannot_claim_a_galaxy_mode():
    imagenet = {"has_head": True, "id2label": {str(i): f"imagenet class {i}" for i in range(1000)}}
    assert resolve_mode(None, imagenet, GALAXY) == "generic"
    cifar3 = {"has_head": True, "id2label": {"0": "airplane", "1": "automobile", "2": "bird"}}
    assert resolve_mode(None, cifar3, GALAXY) == "generic"  # same count, other classes
    with pytest.raises(UserError, match="not the dataset's 3.*--mode generic"):
        resolve_mode("full", imagenet, GALAXY)
    assert resolve_mode(None, {"has_head": True, "id2label": {"0": "merging", "1": "disturbed", "2": "round smooth"}},
                        GALAXY) == "full"
    assert resolve_mode(None, {"has_head": True, "id2label": {str(i): f"LABEL_{i}" for i in range(3)}}, GALAXY) == "full"
    assert resolve_mode(None, {"has_head": True, "id2label": None, "mode": "head"}, GALAXY) == "head"  # recorded
    assert resolve_mode(None, {"has_head": False}, GALAXY) == "generic"


def _foreign_head_checkpoint(root):
    """A 10-class head whose labels are not Galaxy10's (e.g. CIFAR-10's)."""
    path = make_checkpoint(root, "vit", num_labels=10)
    cfg = json.loads((path / "config.json").read_text())
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
    cfg["label2id"] = {n: i for i, n in enumerate(names)}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_generic_checkpoint_with_a_head_is_extracted_but_never_scored(tmp_path, capsys):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=30)
    ckpt = _foreign_head_checkpoint(tmp_path)
    cache = str(tmp_path / "cache")
    assert main(["extract", "--dataset", f"h5:{h5}", "--model", f"dir:{ckpt}", "--cache", cache]) == 0
    (run,) = [r for r in store.list_runs(cache) if r["kind"] == "features"]
    assert run["mode"] == "generic" and run["has_head"] and run["trained_on"] is None
    assert main(["evaluate", "--cache", cache]) == 0
    assert not [r for r in store.list_runs(cache) if r["kind"] == "evaluation"]
    capsys.readouterr()
    assert main(["evaluate", "--run", run["key"], "--cache", cache]) == 2
    err = capsys.readouterr().err
    assert "generic" in err and "not scored" in err and err.count("\n") == 1
    assert main(["extract", "--dataset", f"h5:{h5}", "--model", f"dir:{ckpt}", "--mode", "full",
                 "--cache", cache]) == 2


@pytest.mark.slow
def test_external_finetunes_pair_with_their_base_and_state_their_leakage(tmp_path, capsys):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=40)
    cache = str(tmp_path / "cache")
    head = make_checkpoint(tmp_path / "a", "vit", num_labels=10, seed=1)
    full = make_checkpoint(tmp_path / "b", "vit", num_labels=10, seed=2)
    for path, mode in ((head, "head"), (full, "full")):
        assert main(["extract", "--dataset", f"h5:{h5}", "--model", f"dir:{path}", "--mode", mode,
                     "--base-model", "hf:google/vit-base-patch16-224-in21k", "--cache", cache]) == 0
    assert main(["evaluate", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "training images in this split: unknown" in out
    summary = json.loads((store.cache_dir(cache) / "evaluations" / "summary.json").read_text())
    (row,) = summary["delta_f1"]
    assert row["base_model"] == "hf:google/vit-base-patch16-224-in21k" and row["split"] == "test"
    assert row["size"] == "base"
    assert {r["leakage"]["status"] for r in summary["runs"]} == {"unknown"}


def test_delta_f1_pairs_only_the_same_dataset_and_split():
    runs = [{"mode": "full", "macro_f1": 0.9, "model": "dir:/f", "base_model": "hf:b/vit-base", "dataset": "d",
             "split": "test"},
            {"mode": "head", "macro_f1": 0.5, "model": "dir:/h", "base_model": "hf:b/vit-base", "dataset": "d",
             "split": "all"},
            {"mode": "head", "macro_f1": 0.6, "model": "dir:/h2", "base_model": "hf:b/vit-base", "dataset": "e",
             "split": "test"}]
    assert ev.delta_f1_table(runs).empty
    runs.append({**runs[1], "split": "test", "macro_f1": 0.4})
    table = ev.delta_f1_table(runs)
    assert len(table) == 1 and table["delta_f1"].iloc[0] == pytest.approx(0.5) and table["split"].iloc[0] == "test"


def test_leakage_statements():
    trained = {"dataset": "h5:/g.h5", "dataset_fingerprint": "abc", "split": "train"}
    run = {"dataset": "h5:/g.h5", "dataset_fingerprint": "abc", "trained_on": trained}
    assert leakage(run, ["test"] * 5) == {"status": "disjoint", "overlapping": 0,
                                          "text": "known disjoint: trained on the train split of this dataset"}
    assert leakage(run, ["test", "train", "train"])["overlapping"] == 2
    other = leakage({**run, "dataset": "hf:matthieulel/galaxy10_decals", "dataset_fingerprint": "zzz"}, ["test"])
    assert other["status"] == "unknown" and "h5:/g.h5" in other["text"]
    assert leakage({"dataset": "x"}, ["test"])["status"] == "unknown"
    # the paper's published finetunes: trained on the HF dataset's train split (model cards)
    paper = training_data("hf:matthieulel/dinov2-base-imagenet1k-1-layer-finetuned-galaxy10-decals", {})
    assert leakage({"dataset": "hf:matthieulel/galaxy10_decals", "trained_on": paper}, ["test"])["status"] == "disjoint"
    assert training_data("hf:facebook/dinov2-base", {}) is None


@pytest.mark.slow
def test_references_match_however_they_are_spelled(tmp_path, monkeypatch):
    """`project --dataset synthetic:galaxy10 --model demo:full` (the verb's own example)
    finds the run the cache recorded under the canonical spellings."""
    cache = tmp_path / "cache"
    demo = store.cache_dir(cache) / "checkpoints" / "demo" / "full"
    shutil.copytree(make_checkpoint(tmp_path, "vit", num_labels=10), demo)
    small = "synthetic:galaxy10?size=16&n=60"
    assert main(["extract", "--dataset", small, "--model", "demo:full", "--cache", str(cache)]) == 0
    (run,) = [r for r in store.list_runs(cache) if r["kind"] == "features"]
    assert run["dataset"] == "synthetic:galaxy10?n=60&size=16&seed=42&balance=galaxy10&test_fraction=0.2"
    assert main(["project", "--dataset", "synthetic:galaxy10?n=60&size=16", "--model", "demo:full",
                 "--method", "pca", "--cache", str(cache)]) == 0
    assert main(["evaluate", "--dataset", "synthetic:galaxy10?seed=42&n=60&size=16", "--cache", str(cache)]) == 0
    assert [r for r in store.list_runs(cache) if r["kind"] == "evaluation"]
    # a dir: checkpoint named by a relative path matches its absolute record
    monkeypatch.chdir(tmp_path)
    other = make_checkpoint(tmp_path / "rel", "vit")
    assert main(["extract", "--dataset", small, "--model", f"dir:{other.relative_to(tmp_path)}",
                 "--cache", str(cache)]) == 0
    assert main(["project", "--dataset", small, "--model", f"dir:{other.relative_to(tmp_path)}",
                 "--method", "pca", "--cache", str(cache)]) == 0


def test_dashboard_shows_no_scores_for_a_generic_run_with_a_head():
    import pandas as pd

    from dashboard.rundata import build_run_data

    table = pd.DataFrame({"row": [0, 1], "id": ["a", "b"], "split": ["test", "test"], "label": [0, 1],
                          "pred": [1, 1], "confidence": [0.9, 0.8]})
    run = {"class_names": GALAXY, "has_head": True, "id2label": {"0": "a", "1": "b", "2": "c"}, "mode": "generic"}
    data = build_run_data(run, table)
    assert not data.has_predictions and "not scored" in data.no_predictions_reason
    assert "predicted" not in data.frame.columns
    tuned = build_run_data({**run, "mode": "full", "id2label": None}, table)
    assert tuned.has_predictions and tuned.frame["correct"].tolist() == [False, True]


def test_h5_takes_the_paper_split_from_the_hf_dataset(tmp_path, monkeypatch):
    """`h5:FILE?split_from=hf:DIR`: the same galaxies, matched by pixels (re-encoded
    with small differences), get the HF dataset's split, not the h5 seeded split."""
    import datasets
    import h5py
    import numpy as np
    from PIL import Image

    from core.data.sources import open_dataset
    from core.data.base import SourceError

    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=40)
    with h5py.File(h5) as f:
        images, labels = f["images"][:], f["ans"][:]
    rng = np.random.default_rng(3)
    order = rng.permutation(40)
    test_rows = set(order[:9].tolist())  # the HF split: rows in a shuffled order, 9 in test
    noisy = np.clip(images.astype(int) + rng.integers(-2, 3, images.shape), 0, 255).astype(np.uint8)

    def part(rows):
        return datasets.Dataset.from_dict({"image": [Image.fromarray(noisy[i]) for i in rows],
                                           "label": [int(labels[i]) for i in rows]})

    datasets.DatasetDict({"train": part([i for i in order if i not in test_rows]),
                          "test": part(sorted(test_rows))}).save_to_disk(tmp_path / "hf")
    own = open_dataset(f"h5:{h5}")
    paper = open_dataset(f"h5:{h5}?split_from=hf:{tmp_path / 'hf'}")
    assert set(np.flatnonzero(paper.splits == "test").tolist()) == test_rows
    assert set(np.flatnonzero(own.splits == "test").tolist()) != test_rows
    assert paper.fingerprint != own.fingerprint
    assert list((tmp_path / "cache" / "splits").glob("*.npy"))  # the next open reads the match
    other = write_galaxy10_h5(tmp_path / "other.h5", n=40, seed=7)
    with pytest.raises(SourceError, match="no match"):
        open_dataset(f"h5:{other}?split_from=hf:{tmp_path / 'hf'}")
