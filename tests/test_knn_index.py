"""The kNN entry point and the per-run index: exact search agrees with scikit-learn,
an index is built once with its recall recorded, rebuilt when the run changes or its
file is damaged, listed by `ls`, and the consumers say whether they searched
exactly or through the index."""
import argparse
import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core.analysis import knn, knn_index, layers
from core.analysis import outliers as anomaly
from core.analysis.evaluation import knn_neighbours
from core.analysis.maps.store import features_run
from core.cli import ls
from core.store import cache as store
from tests.projection_fixtures import write_features


def low_rank(n=3000, d=32, seed=0):
    """Clustered features of low intrinsic dimension (as real embeddings are)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d)) * 3
    W = rng.normal(size=(5, 4, d))
    lab = rng.integers(5, size=n)
    z = rng.normal(size=(n, 4))
    X = centres[lab] + np.einsum("nl,nld->nd", z, W[lab]) + 0.05 * rng.normal(size=(n, d))
    return X.astype(np.float32), lab


@pytest.mark.parametrize("n,k", [(700, 10), (2100, 5)])
def test_exact_knn_finds_what_sklearn_finds(n, k):
    X, _ = low_rank(n, 24)
    idx, d2 = knn.knn(X, k, device="cpu")
    ref_d, ref_i = NearestNeighbors(n_neighbors=k).fit(X.astype(np.float64)).kneighbors()
    assert (idx == ref_i).mean() > 0.999  # ties aside
    np.testing.assert_allclose(d2, ref_d ** 2, rtol=1e-4, atol=1e-4)
    Q = X[:50] + 0.1
    idx, d2 = knn.knn(X, k, queries=Q, device="cpu")
    ref_d, ref_i = NearestNeighbors(n_neighbors=k).fit(X.astype(np.float64)).kneighbors(Q)
    assert (idx == ref_i).mean() > 0.999


def test_entry_point_is_exact_below_the_threshold_and_says_so():
    X, _ = low_rank(400, 16)
    idx, dist, how = knn.neighbours(X, 5, metric="cosine")
    assert how["search"] == "exact"
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = U @ U.T
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(dist[:, 0], 1 - cos.max(1), atol=1e-5)
    assert (idx[:, 0] == cos.argmax(1)).all()


@pytest.fixture
def run(tmp_path):
    X, lab = low_rank()
    key = write_features(tmp_path, X, lab)
    return features_run(key, tmp_path), X, tmp_path


def test_index_built_once_with_recall_recorded_and_listed(run, monkeypatch):
    r, X, cache = run
    built = []
    real = knn_index.build_index
    monkeypatch.setattr(knn_index, "build_index", lambda *a, **kw: built.append(1) or real(*a, **kw))
    index = knn_index.get_index(r, "cosine", cache)
    meta = index.meta
    assert meta["rows"] == len(X) and meta["recall_queries"] == 1000 and meta["features_run"] == r["key"]
    assert 0.9 <= meta["recall_at_10"] <= 1.0  # measured against exact search, not assumed
    assert meta["recall_at_10"] >= meta["recall_at_10_without_rerank"]
    assert meta["peak_rss_mb"] > 0 and meta["seconds"]["total"] > 0
    again = knn_index.get_index(r, "cosine", cache)
    assert len(built) == 1 and again.meta["sha256"] == meta["sha256"]
    listed = [e for e in store.list_runs(cache) if e["kind"] == "knn-index"]
    assert len(listed) == 1 and listed[0]["recall_at_10"] == meta["recall_at_10"]
    assert not list((cache / "indexes").glob(".*tmp*"))
    # the recorded recall is what a user gets: recall of the entry point's answers on fresh queries
    rows = np.random.default_rng(7).choice(len(X), 200, replace=False)
    got, _, how = knn.neighbours(X, 10, queries=X[rows], metric="cosine", index=index, exclude=rows, exact_below=1)
    want, _, _ = knn.neighbours(X, 10, queries=X[rows], metric="cosine", exclude=rows)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert how["search"] == "index" and recall >= meta["recall_at_10"] - 0.05


def test_index_rebuilt_when_the_run_changes(run):
    r, X, cache = run
    first = knn_index.get_index(r, "cosine", cache)
    X2 = X.copy()
    X2[:10] += 5
    write_features(cache, X2, np.zeros(len(X2), np.int64))  # same key, new rows
    r2 = features_run(r["key"], cache)
    assert knn_index.cached_index(r2, "cosine", cache) is None
    second = knn_index.get_index(r2, "cosine", cache)
    assert second.meta["key"] != first.meta["key"] and second.meta["run"] != first.meta["run"]
    assert {e["key"] for e in store.list_runs(cache) if e["kind"] == "knn-index"} >= {second.meta["key"]}


def test_damaged_index_file_is_rebuilt_never_read(run, monkeypatch, capsys):
    r, X, cache = run
    index = knn_index.get_index(r, "cosine", cache)
    path = index.path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert knn_index.verify_index(path) == "checksum mismatch"
    assert ls.run(argparse.Namespace(cache=str(cache), json=False, verify=True)) == 1  # `ls --verify` says so
    assert "checksum mismatch); the next search rebuilds it" in capsys.readouterr().err
    read = []
    real = knn_index._faiss
    monkeypatch.setattr(knn_index, "_faiss", lambda: read.append(1) or real())
    assert knn_index.cached_index(r, "cosine", cache) is None and not read  # faiss never saw it
    rebuilt = knn_index.get_index(r, "cosine", cache)
    assert knn_index.verify_index(path) is None and rebuilt.meta["sha256"] != json.dumps(None)
    path.with_suffix(".json").write_text("{")  # a damaged JSON: rebuilt too
    assert knn_index.cached_index(r, "cosine", cache) is None
    assert knn_index.get_index(r, "cosine", cache).ntotal == len(X)


def test_consumers_go_through_the_entry_point(run, monkeypatch):
    r, X, cache = run
    # outlier scores: exact below the threshold, the index at and above it; provenance says which
    _, prov = anomaly.get_anomalies(r["key"], cache, k=5)
    assert prov["search"]["search"] == "exact"
    monkeypatch.setattr(knn, "EXACT_BELOW", 1000)
    df, prov = anomaly.get_anomalies(r["key"], cache, k=7)
    assert prov["search"]["search"] == "index" and prov["search"]["recall_at_10"] >= 0.9
    exact = anomaly.knn_distance(X, 7)
    top = lambda s: set(np.argsort(-np.asarray(s))[:30].tolist())  # noqa: E731
    assert len(top(df["knn"]) & top(exact)) >= 25
    # the Neighbours view's search
    index = knn_index.get_index(r, "euclidean", cache)
    how = {}
    idx, dist = knn_neighbours(X, 3, 8, "euclidean", index=index, search=how)
    ref = np.sqrt(((X - X[3]) ** 2).sum(1))
    ref[3] = np.inf
    assert how["search"] == "index" and 3 not in idx and len(set(idx) & set(np.argsort(ref)[:8])) >= 7
    np.testing.assert_allclose(dist, ref[idx], rtol=1e-4)
    how = {}
    knn_neighbours(X[:500], 3, 8, "euclidean", index=None, search=how)
    assert how["search"] == "exact"
    # kNN accuracy of the layer probes
    calls = []
    real = layers.neighbours
    monkeypatch.setattr(layers, "neighbours", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    _, lab = low_rank()
    acc = layers.knn_accuracy(X[:2000], lab[:2000], X[2000:], lab[2000:])
    assert calls and calls[0]["metric"] == "cosine" and acc > 0.9
