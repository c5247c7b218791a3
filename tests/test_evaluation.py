import json

import numpy as np
import pandas as pd
import pytest

from core.store import cache as store
from core.__main__ import main
from core.data.base import GALAXY10_CLASSES
from core.analysis.evaluation import (
    classification_report,
    confusion_matrix,
    delta_f1_table,
    format_table,
    knn_neighbours,
    scores_from_confusion,
    top_mistakes,
)
from tests.evaluation_fixtures import features_table, write_features

# PAPER.md: confusion matrix of the finetuned DINOv2-base on the Galaxy10 DECaLS test split
PAPER_CM = np.array([
    [57, 2, 7, 11, 2, 5, 2, 20, 3, 0],
    [2, 172, 2, 2, 0, 1, 0, 4, 1, 1],
    [0, 1, 240, 1, 0, 1, 6, 1, 0, 0],
    [3, 4, 1, 187, 1, 0, 2, 0, 0, 0],
    [3, 0, 1, 1, 21, 0, 0, 0, 1, 1],
    [3, 4, 1, 1, 1, 195, 5, 6, 1, 0],
    [3, 1, 7, 7, 0, 4, 137, 19, 1, 0],
    [19, 5, 2, 2, 0, 5, 28, 209, 2, 1],
    [0, 1, 0, 0, 0, 2, 4, 2, 145, 3],
    [1, 1, 0, 0, 0, 1, 1, 0, 3, 171],
])
PAPER_F1 = [0.57, 0.91, 0.94, 0.91, 0.79, 0.90, 0.75, 0.78, 0.92, 0.96]


def _expand(cm):
    """labels, preds that produce confusion matrix ``cm``."""
    t, p = np.nonzero(cm)
    reps = cm[t, p]
    return np.repeat(t, reps), np.repeat(p, reps)


def test_paper_confusion_matrix_gives_paper_scores():
    s = scores_from_confusion(PAPER_CM, GALAXY10_CLASSES)
    assert np.round(s["per_class"]["f1"].to_numpy(), 2).tolist() == PAPER_F1
    assert round(s["accuracy"], 3) == 0.865
    assert s["n"] == 1774
    assert s["per_class"]["support"].tolist() == PAPER_CM.sum(1).tolist()


def test_report_from_labels_matches_matrix_and_sklearn():
    from sklearn.metrics import f1_score

    labels, preds = _expand(PAPER_CM)
    rep = classification_report(labels, preds, GALAXY10_CLASSES)
    assert (rep["confusion"] == PAPER_CM).all()
    assert rep["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert rep["weighted_f1"] == pytest.approx(f1_score(labels, preds, average="weighted"))


def test_confusion_ignores_unlabelled_and_macro_skips_absent_classes():
    cm = confusion_matrix([0, 1, -1, 1], [0, 1, 2, 0], 3)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    s = scores_from_confusion(cm)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # class 2 never occurs: not a zero


def test_top_mistakes_most_confident_first():
    df = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f"],
        "label": [0, 1, 1, 0, -1, 2],
        "pred": [1, 1, 0, 2, 0, 0],
        "confidence": [0.6, 0.99, 0.9, 0.9, 0.99, 0.3],
    })
    out = top_mistakes(df, k=3, class_names=["x", "y", "z"])
    assert out["id"].tolist() == ["c", "d", "a"]  # tie c/d keeps table order; e unlabelled, b right
    assert out[["true", "pred"]].values.tolist() == [["y", "x"], ["x", "z"], ["x", "y"]]


def _ev(model, mode, f1, family, base=None, dataset="synthetic:galaxy10"):
    return {"model": model, "mode": mode, "macro_f1": f1, "family": family, "base_model": base,
            "dataset": dataset, "features_run": f"{model}-{mode}"}


def test_delta_f1_table_matches_head_and_full_by_base_model():
    evs = [
        _ev("dir:vit-full", "full", 0.8559, "vit", "hf:google/vit-base-patch16-384"),
        _ev("dir:vit-head", "head", 0.5673, "vit", "hf:google/vit-base-patch16-384"),
        _ev("dir:dino-full", "full", 0.8540, "dinov2", "hf:facebook/dinov2-base"),
        _ev("dir:dino-head-lin", "head", 0.6081, "dinov2", "hf:facebook/dinov2-base"),
        _ev("dir:dino-head-mlp", "head", 0.5500, "dinov2", "hf:facebook/dinov2-base"),  # worse head: not used
        _ev("dir:dino-s-head", "head", 0.5, "dinov2", "hf:facebook/dinov2-small"),  # no full run: no row
        _ev("hf:facebook/dinov2-base", "generic", None, "dinov2"),
    ]
    t = delta_f1_table(evs)
    assert t["base_model"].tolist() == ["hf:facebook/dinov2-base", "hf:google/vit-base-patch16-384"]
    assert t["size"].tolist() == ["base", "base"]
    assert np.round(t["delta_f1"] * 100, 2).tolist() == [24.59, 28.86]
    assert t["head_run"].tolist()[0] == "dir:dino-head-lin-head"
    assert "24.590" in format_table(t.assign(delta_f1=t["delta_f1"] * 100))


def test_knn_neighbours_matches_brute_force():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16)).astype(np.float32)
    idx, dist = knn_neighbours(X, 5, k=7, metric="euclidean")
    brute = np.linalg.norm(X - X[5], axis=1)
    brute[5] = np.inf
    assert idx.tolist() == np.argsort(brute)[:7].tolist()
    assert np.allclose(dist, np.sort(brute)[:7], atol=1e-4)
    idx, dist = knn_neighbours(X, [3, 4], k=4, metric="cosine")
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = 1 - Xn @ Xn[3]
    cos[3] = np.inf
    assert idx.shape == (2, 4) and idx[0].tolist() == np.argsort(cos)[:4].tolist()
    assert np.all(np.diff(dist, axis=1) >= 0)


def _paper_run(tmp_path, mode, model, base, rng_seed=0):
    labels, preds = _expand(PAPER_CM)
    rng = np.random.default_rng(rng_seed)
    # the test rows reproduce the paper's matrix; extra train rows are all wrong and must be ignored
    n_train = 50
    labels = np.concatenate([labels, np.zeros(n_train, int)])
    preds = np.concatenate([preds, np.ones(n_train, int)])
    splits = ["test"] * (len(labels) - n_train) + ["train"] * n_train
    conf = rng.uniform(0.3, 0.98, len(labels))
    t = features_table(labels, preds, conf, splits, n_classes=10)
    return write_features(tmp_path, t, GALAXY10_CLASSES, model=model, mode=mode, base_model=base,
                          key=store.key_of(model))


def test_evaluate_verb_end_to_end(tmp_path, capsys):
    full = _paper_run(tmp_path, "full", "dir:dino-full", "hf:facebook/dinov2-base")
    # the head-only run: predicts only class 2 on its test rows
    labels, _ = _expand(PAPER_CM)
    t = features_table(labels, np.full(len(labels), 2), np.full(len(labels), 0.5), ["test"] * len(labels), n_classes=10)
    head = write_features(tmp_path, t, GALAXY10_CLASSES, model="dir:dino-head", mode="head",
                          base_model="hf:facebook/dinov2-base", key="headrun")
    # a generic checkpoint without a head is not evaluated
    t0 = features_table(labels, labels, np.ones(len(labels)), ["test"] * len(labels), n_classes=10).drop(
        ["pred", "confidence", "probs"])
    write_features(tmp_path, t0, GALAXY10_CLASSES, model="hf:facebook/dinov2-base", mode="generic", key="generic")

    assert main(["evaluate", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "split test (1774 galaxies): accuracy 0.865" in out
    assert "Unbarred Tight Spiral" in out and "ΔF1" in out

    ev = json.loads((tmp_path / "evaluations" / f"{full['key']}.json").read_text())
    assert ev["split"] == "test" and ev["rows"] == 1774
    assert round(ev["accuracy"], 3) == 0.865
    assert [round(c["f1"], 2) for c in ev["per_class"]] == PAPER_F1
    assert ev["confusion"] == PAPER_CM.tolist()
    conf = [m["confidence"] for m in ev["top_mistakes"]]
    assert len(conf) == 20 and conf == sorted(conf, reverse=True)
    assert {"features_run", "dataset", "model", "mode", "class_names", "macro_f1", "weighted_f1"} <= set(ev)

    summary = json.loads((tmp_path / "evaluations" / "summary.json").read_text())
    (row,) = summary["delta_f1"]
    assert row["base_model"] == "hf:facebook/dinov2-base" and row["head_run"] == head["key"]
    assert row["delta_f1"] == pytest.approx(ev["macro_f1"] - row["f1_head"])
    assert len(summary["runs"]) == 2

    listed = [r for r in store.list_runs(tmp_path) if r["kind"] == "evaluation"]
    assert sorted(r["key"] for r in listed) == sorted([full["key"], head["key"]])
    assert all(r["features_run"] == r["key"] for r in listed)


def test_evaluate_verb_user_errors(tmp_path, capsys):
    assert main(["evaluate", "--cache", str(tmp_path), "--run", "nope"]) == 2
    assert "no features run 'nope'" in capsys.readouterr().err
    labels, preds = _expand(PAPER_CM)
    t = features_table(labels, preds % 3, np.ones(len(labels)), ["test"] * len(labels), n_classes=3)
    write_features(tmp_path, t, GALAXY10_CLASSES, model="hf:google/vit-base-patch16-224", mode="generic",
                   id2label={str(i): f"imagenet{i}" for i in range(3)}, key="imagenet")
    assert main(["evaluate", "--cache", str(tmp_path), "--run", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "is generic" in err and "not scored" in err  # an ImageNet head is never scored on galaxy labels
