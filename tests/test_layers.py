"""Per-layer analyses against their references: CKA identities, sklearn's
logistic regression and kNN classifier, and the cached analyses on real extraction."""
import numpy as np
import pytest
import torch

from core.analysis import layers as L


@pytest.fixture
def blobs():
    """Three Gaussian classes in 20-d, train 300 / test 150."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 20))
    y = rng.integers(0, 3, 450)
    X = centres[y] + rng.normal(0, 1.0, (450, 20)) * rng.uniform(0.5, 5, 20)  # uneven scales: standardising matters
    return X[:300], y[:300], X[300:], y[300:]


def test_cka_identities():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 32)) @ rng.normal(size=(32, 32))
    assert L.linear_cka(X, X) == pytest.approx(1.0, abs=1e-9)
    Q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    assert L.linear_cka(X, 3.7 * X @ Q + 5.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    noise = rng.normal(size=(2000, 32))
    assert L.linear_cka(X, noise) < 0.05
    # a partial change sits in between
    mixed = np.hstack([X[:, :16], noise[:, :16]])
    assert 0.2 < L.linear_cka(X, mixed) < 0.9
    with pytest.raises(L.UserError, match="same galaxies"):
        L.linear_cka(X, X[:10])


def test_probe_matches_sklearn_logistic_regression(blobs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = blobs
    A, B = L.standardise(Xtr, Xte)
    ref = LogisticRegression(C=0.5, max_iter=5000, tol=1e-10).fit(A, ytr)
    W, b = L.fit_logistic(A, ytr, C=0.5)
    np.testing.assert_allclose(W.T, ref.coef_, atol=2e-3)
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=2e-3)
    probe = L.linear_probe(Xtr, ytr, Xte, yte, C=0.5)
    assert (probe["pred"] == ref.predict(B)).mean() == 1.0
    assert probe["macro_f1"] == pytest.approx(f1_score(yte, ref.predict(B), average="macro"), abs=1e-12)
    assert 0.5 < probe["macro_f1"] < 1.0


def test_knn_accuracy_matches_sklearn(blobs):
    from sklearn.neighbors import KNeighborsClassifier

    Xtr, ytr, Xte, yte = blobs
    ref = KNeighborsClassifier(10, metric="cosine", algorithm="brute").fit(Xtr, ytr).score(Xte, yte)
    assert L.knn_accuracy(Xtr, ytr, Xte, yte, k=10) == pytest.approx(ref, abs=1 / len(yte))


def test_reading_names_the_changed_blocks_and_the_early_separable_one():
    scores = [{"layer": i, "macro_f1": f} for i, f in zip(range(1, 13), [.2, .3, .4, .5, .55, .61, .62, .62, .63,
                                                                           .63, .62, .63])]
    cka = [{"layer": i, "cka": c} for i, c in zip(range(1, 13), [.99, .99, .98, .97, .96, .95, .93, .9, .6, .5,
                                                                  .4, .3])]
    text = L.reading(scores, cka)
    assert text.startswith("Finetuning changed blocks 9-12 most (CKA with the generic features 0.30 at block 12")
    assert "Block 6 is already as separable as the last (probe macro F1 0.61 vs 0.63)." in text
    flat = L.reading([{"layer": 1, "macro_f1": .2}, {"layer": 2, "macro_f1": .6}],
                     [{"layer": 1, "cka": .99}, {"layer": 2, "cka": .98}], unit="stage")
    assert flat == ("Finetuning barely changed the features (CKA with the generic features ≥ 0.98 at every "
                    "stage). Separability grows up to the last stage (probe macro F1 0.60).")


def test_cached_analyses_on_extracted_layers(tmp_path, checkpoints, monkeypatch):
    import core.extract.features as features

    torch.set_num_threads(1)
    data = "synthetic:galaxy10?n=120&size=32&seed=5&balance=uniform"
    runs = {}
    for name in ("dinov2", "vit"):
        path, _, _ = features.extract(data, f"dir:{checkpoints[name]}", cache=tmp_path, progress=False,
                                      layers="all", log=lambda *_: None)
        runs[name] = path.stem
    assert L.cached_scores(runs["dinov2"], tmp_path) is None
    s = L.layer_scores(runs["dinov2"], tmp_path, progress=False)
    assert s["test"] > 10 and s["train"] > 50 and s["unit"] == "block"
    assert [(r["layer"], r["kind"]) for r in s["scores"]] == [(1, "cls"), (1, "mean"), (2, "cls"), (2, "mean")]
    assert all(0 <= r["knn_accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 for r in s["scores"])
    assert L.cached_scores(runs["dinov2"], tmp_path) == s  # cached
    same = L.layer_cka(runs["dinov2"], runs["dinov2"], tmp_path, progress=False)
    assert all(r["cka"] == pytest.approx(1.0) for r in same["cka"]) and same["points"] == 120
    other = L.layer_cka(runs["dinov2"], runs["vit"], tmp_path, progress=False)  # another network
    assert all(r["cka"] < 0.999 for r in other["cka"])
    assert L.cached_cka(runs["dinov2"], runs["vit"], tmp_path) == other
    with pytest.raises(L.UserError, match="--layers all"):
        L.layer_scores("0123456789abcdef", tmp_path)

    # the same blocks under another checkpoint (as a head-only run has its generic base's): scores
    # are taken over, not fitted again; the ViT run's blocks differ, so its scores are its own
    import json
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(checkpoints["dinov2"], twin)
    config = json.loads((twin / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b"},
                                                  "label2id": {"a": 0, "b": 1}}))
    path, _, _ = features.extract(data, f"dir:{twin}", cache=tmp_path, progress=False, layers="all",
                                  log=lambda *_: None)
    assert path.stem != runs["dinov2"]
    fitted = []
    real_probe = L.linear_probe
    monkeypatch.setattr(L, "linear_probe", lambda *a, **k: fitted.append(1) or real_probe(*a, **k))
    t = L.layer_scores(path.stem, tmp_path, progress=False)
    assert fitted == [] and t["same_blocks_as"] == runs["dinov2"] and t["features_run"] == path.stem
    assert t["scores"] == s["scores"]
    v = L.layer_scores(runs["vit"], tmp_path, progress=False)
    assert len(fitted) == len(v["scores"]) > 0 and "same_blocks_as" not in v
