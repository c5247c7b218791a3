"""Survey scale without the survey: a run written as a 10M-galaxy rehearsal is (sharded,
float16, streamed), its index lays the features out for the exact re-rank, and
everything that needs neighbours or outlier scores answers from the index without
loading the features whole."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from core.analysis import knn, knn_index
from core.analysis import outliers as anomaly
from core.analysis.evaluation import knn_neighbours
from core.analysis.maps.store import features_run
from core.cli.main import main
from core.store import cache as store
from core.store import shards
from core.store.embeddings import read_embeddings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """2,500 galaxies x 128-d written as make_big_run writes 10M: float16 class manifolds in
    parts of 1,000 rows, only the first 1,000 rows held (the PCA fitted on them and applied
    part by part, map quality scored within them)."""
    import make_big_run as mbr

    cache = tmp_path_factory.mktemp("survey") / "cache"
    keep = mbr.HOLD_ALL_BYTES, mbr.HOLD
    mbr.HOLD_ALL_BYTES, mbr.HOLD = 0, 1000
    try:
        run = mbr.make(cache, rows=2500, dim=128, sample=50, shard_rows=1000)
    finally:
        mbr.HOLD_ALL_BYTES, mbr.HOLD = keep
    return cache, features_run(run["key"], cache)


def test_a_survey_run_is_sharded_float16_and_streamed(survey):
    cache, run = survey
    assert Path(run["path"]).is_dir() and len(shards.parts(run["path"])) == 3 and run["rows"] == 2500
    assert run["dtype"] == "float16" and "manifold" in run["synthetic"]
    assert store.read_schema(run["path"]).field("embedding").type.value_type == pa.float16()
    X = read_embeddings(run["path"])
    assert X.shape == (2500, 128) and np.isfinite(X).all()
    maps = {r["method"]: r for r in store.list_runs(cache) if r["kind"] == "projection"}
    assert set(maps) == {"tsne", "pca"}
    assert maps["pca"]["fitted_rows"] == 1000 and maps["pca"]["quality"]["quality_sample_rows"] == 1000
    # the streamed PCA is the PCA of the first part, applied to every row
    from sklearn.decomposition import PCA

    xy = store.read_table(maps["pca"]["path"], columns=["x", "y"]).to_pandas().to_numpy()
    want = PCA(n_components=2, random_state=42).fit(X[:1000]).transform(X)
    np.testing.assert_allclose(np.abs(xy), np.abs(want), rtol=1e-3, atol=1e-3)
    # manifolds, not isotropic noise: most of a galaxy's 10 nearest share its class
    lab = store.read_table(run["path"], columns=["label"]).column("label").to_numpy()
    idx, _, _ = knn.neighbours(X[:1000], 10, metric="cosine")
    assert (lab[:1000][idx] == lab[:1000, None]).mean() > 0.6


def test_the_index_verb_builds_once_and_the_vectors_are_the_features(survey, capsys):
    cache, run = survey
    assert main(["index", "--run", run["key"], "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("built: faiss-cpu IVF-PQ cosine index") and "re-rank vectors" in out and "(float16)" in out
    assert main(["index", "--run", run["key"], "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.startswith("cached: ")
    index = knn_index.cached_index(run, "cosine", cache)
    V = index.vectors
    assert isinstance(V, np.memmap) and V.dtype == np.float16 and V.shape == (2500, 128)
    np.testing.assert_array_equal(np.asarray(V, np.float32), read_embeddings(run["path"]))
    meta = index.meta
    ladder = {int(k): v for k, v in meta["recall_by_nprobe"].items()}
    assert meta["params"]["nprobe"] == max(ladder) and meta["recall_at_10"] == ladder[max(ladder)]
    assert all(v < knn_index.RECALL_TARGET for k, v in ladder.items() if k < max(ladder))  # the fewest cells
    # the euclidean index shares the same vectors file
    knn_index.get_index(run, "euclidean", cache)
    assert len(list((cache / "indexes").glob("*.vectors.npy"))) == 1
    ls_out = main(["ls", "--cache", str(cache)]) == 0 and capsys.readouterr().out
    assert len(re.findall(r"index of \w+, recall@10 [0-9.]+ \(1000 queries\); re-rank vectors 625\.\d KB \(float16\)",
                          ls_out)) == 2  # 2,500 x 128 x 2 bytes, listed with each index


def test_neighbours_and_outlier_scores_never_load_the_features(survey, monkeypatch):
    cache, run = survey
    index = knn_index.get_index(run, "cosine", cache)
    X = read_embeddings(run["path"])
    monkeypatch.setattr(knn, "EXACT_BELOW", 100)

    def whole(*a, **kw):
        raise AssertionError("the features were read whole")

    import core.analysis.maps.store as mapstore

    monkeypatch.setattr(mapstore, "load_features", whole)
    # Neighbours: the query row and the candidates are read from the memory-mapped vectors
    how = {}
    idx, dist = knn_neighbours(index.vectors, 7, 8, "cosine", index=index, search=how)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = U @ U[7]
    cos[7] = -np.inf
    assert how["search"] == "index" and len(set(idx) & set(np.argsort(-cos)[:8])) >= 7
    np.testing.assert_allclose(dist, 1 - cos[idx], atol=1e-5)
    # outlier scores of every galaxy, from the index, in batches
    df, prov = anomaly.get_anomalies(run["key"], cache, k=10)
    assert prov["search"]["search"] == "index" and prov["search"]["iforest_fit_rows"] == 2500 and len(df) == 2500
    _, d, _ = knn.neighbours(X, 10, metric="cosine", exact_below=1 << 40)
    exact = d.mean(1)
    top = lambda s: set(np.argsort(-np.asarray(s))[:25].tolist())  # noqa: E731
    assert len(top(df["knn"]) & top(exact)) >= 22  # the top 1%


def test_damaged_vectors_are_never_used_named_and_rebuilt(survey, tmp_path):
    import shutil

    src, run = survey
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    run = features_run(run["key"], cache)
    index = knn_index.get_index(run, "cosine", cache)
    vfile = index.path.parent / index.meta["vectors"]["file"]
    size = vfile.stat().st_size
    raw = bytearray(vfile.read_bytes())
    raw[size // 2] ^= 0xFF  # same size, one byte changed: the sampled checksum sees it (a file this small is all sampled)
    vfile.write_bytes(bytes(raw))
    assert knn_index.cached_index(run, "cosine", cache) is None
    with open(vfile, "r+b") as fh:  # truncated: named by list_damaged (and `ls`)
        fh.truncate(size - 4096)
    why = [d["damaged"] for d in store.list_damaged(cache) if d["kind"] == "knn-index"]
    assert why and "re-rank vectors" in why[0] and "truncated" in why[0]
    rebuilt = knn_index.get_index(run, "cosine", cache)
    assert vfile.stat().st_size == size and rebuilt.vectors.shape == (2500, 128)
    np.testing.assert_array_equal(np.asarray(rebuilt.vectors, np.float32), read_embeddings(run["path"]))
    assert not [d for d in store.list_damaged(cache) if d["kind"] == "knn-index"]


def test_find_by_image_at_scale_reads_only_the_answers_rows(survey, monkeypatch):
    """Find by image: exact below the threshold (most and least similar), from the index above
    it (the most similar only, with the same similarities)."""
    from dashboard.astro import most_similar

    cache, run = survey
    X = read_embeddings(run["path"])
    q = X[11] + 0.01
    norms = np.linalg.norm(X, axis=1)
    top, bottom, sim, how = most_similar(X, norms, q, 8)
    assert how["search"] == "exact" and len(bottom) == 8 and top[0] == 11
    monkeypatch.setattr(knn, "EXACT_BELOW", 100)
    index = knn_index.get_index(run, "cosine", cache)
    top_i, bottom_i, sim_i, how_i = most_similar(index.vectors, None, q, 8, index)
    assert how_i["search"] == "index" and bottom_i is None and top_i[0] == 11
    assert len(set(top_i) & set(top)) >= 7
    for p in set(top_i) & set(top):
        assert abs(sim_i[p] - sim[p]) < 1e-5
