"""A nearest-neighbour index per features run: built once, cached beside the run.

faiss IVF-PQ (faiss-cpu): the features are split into ``nlist`` cells (k-means)
and each galaxy is stored as ``m`` one-byte product-quantiser codes plus its
8-byte id: 104 bytes per galaxy at 768-d (``m`` = 96), against 1,536 for the
float16 features. A search visits ``nprobe`` cells, keeps ``rerank``
candidates by their coded distance, and re-ranks them exactly from the
features (an in-memory matrix, or rows read from the run's parquet). Chosen by
measurement against hnswlib and usearch (docs/BENCHMARKS.md, "Survey scale"):
those graphs keep the vectors themselves (>= 768 bytes per galaxy even in int8).

Built by streaming the run's ``embedding`` column in record batches (the
features are never loaded whole): pass 1 samples training rows and query
rows, pass 2 adds every row to the index and, for the sampled queries, keeps
the exact top 10 in the same pass; recall@10 of the index against that exact
search is recorded with the index (``recall_at_10``) with the build time and
peak memory.

Files: ``<cache>/indexes/<key>.faiss`` and ``<key>.json`` (parameters, recall,
the index file's size and SHA-256). The key holds the run's key and its
fingerprint (rows, bytes, created), so a re-extracted run gets a new index.
The JSON is written last, atomically: it is the commit mark. An index file
whose checksum disagrees with its JSON is never read (faiss may crash on a
damaged file): it is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.store import cache as store
from core.store.compute import get_or_compute
from core.store.embeddings import embedding_matrix

INDEX_VERSION = 1
LIBRARY = "faiss-cpu IVF-PQ"
RECALL_QUERIES = 1000
RECALL_K = 10
METRICS = ("cosine", "euclidean")


def _faiss():
    import faiss  # imported when an index is used: it costs ~0.3 s

    return faiss


def default_params(n: int, dim: int) -> dict:
    """IVF-PQ parameters for ``n`` rows of ``dim`` features: ~4 sqrt(n) cells (each
    trained on >= 39 points), one code byte per 8 dimensions, 8-bit codes (fewer bits
    when there are too few rows to train 256 centroids)."""
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39, 65536)))
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = int(max(1, min(8, np.floor(np.log2(max(2, n // 39))))))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, 32), "rerank": 100}


# ---------------------------------------------------------------- reading a run in batches


def run_fingerprint(run: dict) -> dict:
    """What identifies one version of a run's rows: a re-extracted run differs (its
    provenance's creation time, size, and the file's (a sharded run's manifest's) mtime)."""
    path = Path(run["path"])
    stamp = path / "_manifest.json" if path.is_dir() else path
    mtime = stamp.stat().st_mtime_ns if stamp.exists() else None
    return {**{k: run.get(k) for k in ("rows", "bytes", "created", "dim")}, "mtime_ns": mtime}


def iter_embeddings(path, batch_rows: int = 16384):
    """(start row, (b, d) float32) batches of a features run, in row order, streamed."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        from core.store import shards

        batches = shards.dataset(path).to_batches(columns=["embedding"], batch_size=batch_rows)
    else:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["embedding"])
    start = 0
    for b in batches:
        if b.num_rows:
            X = embedding_matrix(b.column(0))
            yield start, X
            start += len(X)


class ParquetRows:
    """Rows of a features run by position (for re-ranking without the whole matrix):
    reads only the row groups that hold them."""

    def __init__(self, path):
        import pyarrow.parquet as pq

        path = Path(path)
        files = []
        if path.is_dir():
            from core.store import shards

            files = shards.parts(path)
        else:
            files = [path]
        self.groups = []  # (file, group, first row, rows)
        start = 0
        for f in files:
            md = pq.read_metadata(f)
            for g in range(md.num_row_groups):
                rows = md.row_group(g).num_rows
                self.groups.append((f, g, start, rows))
                start += rows
        self.starts = np.array([g[2] for g in self.groups] + [start])

    def __call__(self, positions) -> np.ndarray:
        import pyarrow.parquet as pq

        positions = np.asarray(positions, np.int64)
        out = None
        which = np.searchsorted(self.starts, positions, side="right") - 1
        for g in np.unique(which):
            f, group, first, _ = self.groups[g]
            sel = which == g
            X = embedding_matrix(pq.ParquetFile(f).read_row_group(group, columns=["embedding"]).column(0))
            if out is None:
                out = np.empty((len(positions), X.shape[1]), np.float32)
            out[sel] = X[positions[sel] - first]
        return out if out is not None else np.zeros((0, 0), np.float32)


def _unit(X) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _prepare(X, metric: str) -> np.ndarray:
    return np.ascontiguousarray(_unit(X) if metric == "cosine" else X, dtype=np.float32)


# ---------------------------------------------------------------- the index


class KnnIndex:
    """A loaded index: ``search(queries, k, rows=...)`` -> (positions, distances).

    Distances: squared euclidean for "euclidean", cosine distance (1 - cos) for
    "cosine", both recomputed exactly on the re-ranked candidates."""

    def __init__(self, index, meta: dict, path: Path | None = None):
        self.index, self.meta, self.path = index, meta, path
        self.metric = meta["metric"]
        self.index.nprobe = int(meta["params"]["nprobe"])

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def candidates(self, Q: np.ndarray, c: int) -> np.ndarray:
        _, I = self.index.search(_prepare(Q, self.metric), int(min(c, self.ntotal)))
        return I

    def search(self, queries, k: int, rows=None, exclude=None, rerank: int | None = None):
        """``k`` nearest rows to each query (m, d). ``rows``: an (n, d) matrix or a
        callable positions -> (len, d) matrix for the exact re-rank; ``exclude``: one
        position per query to leave out (the query's own row), or None."""
        if rows is None:
            raise ValueError("the index re-ranks from the features: pass rows (a matrix or ParquetRows)")
        Q = _prepare(np.atleast_2d(queries), self.metric)
        k = int(k)
        c = max(k + 1, int(rerank or self.meta["params"]["rerank"]))
        idx = np.full((len(Q), k), -1, np.int64)
        dist = np.full((len(Q), k), np.inf, np.float32)
        own = None if exclude is None else np.asarray(exclude, np.int64).reshape(-1)
        for s in range(0, len(Q), 256):
            q = Q[s:s + 256]
            cand = self.candidates(q, c)
            bad = cand < 0
            if own is not None:
                bad |= cand == own[s:s + 256, None]
            cand = np.where(bad, 0, cand)
            if isinstance(rows, np.ndarray):
                V = _prepare(rows[cand.ravel()], self.metric).reshape(*cand.shape, -1)
            else:
                flat, inv = np.unique(cand, return_inverse=True)
                V = _prepare(rows(flat), self.metric)[inv.reshape(-1)].reshape(*cand.shape, -1)
            d = np.einsum("mcd,mcd->mc", V, V) - 2 * np.einsum("mcd,md->mc", V, q) + np.einsum("md,md->m", q, q)[:, None]
            d = np.maximum(d, 0).astype(np.float32)
            d[bad] = np.inf
            o = np.argsort(d, axis=1, kind="stable")[:, :k]
            idx[s:s + 256, :o.shape[1]] = np.take_along_axis(cand, o, 1)
            dist[s:s + 256, :o.shape[1]] = np.take_along_axis(d, o, 1)
        idx[~np.isfinite(dist)] = -1
        if self.metric == "cosine":
            dist = dist / 2  # |a-b|^2 / 2 = 1 - cos on unit vectors
        return idx, dist


def index_paths(run: dict, metric: str = "cosine", cache=None, **params) -> tuple[Path, Path, str]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    key = store.key_of("knn-index", INDEX_VERSION, run["key"], run_fingerprint(run), metric, params or None)
    folder = store.cache_dir(cache) / "indexes"
    return folder / f"{key}.faiss", folder / f"{key}.json", key


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_index(path) -> str | None:
    """None when an index file matches the checksum its JSON recorded, else why not."""
    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except Exception as e:
        return f"no readable JSON beside it ({type(e).__name__})"
    if not path.exists():
        return "index file missing"
    if meta.get("bytes") != path.stat().st_size or meta.get("sha256") != _sha256(path):
        return "checksum mismatch"
    return None


def cached_index(run: dict, metric: str = "cosine", cache=None, **params) -> KnnIndex | None:
    """The run's index when cached and intact (checksum matches its JSON), else None."""
    path, meta_path, _ = index_paths(run, metric, cache, **params)
    if verify_index(path) is not None:  # never hand faiss a damaged file
        return None
    try:
        meta = json.loads(meta_path.read_text())
        index = _faiss().read_index(str(path))
    except Exception:
        return None
    if index.ntotal != meta.get("rows"):
        return None
    return KnnIndex(index, meta, path)


def get_index(run: dict, metric: str = "cosine", cache=None, progress: bool = False, **params) -> KnnIndex:
    """The run's index, built and cached on a miss (under a file lock: two identical
    requests build once); a damaged index file is rebuilt."""
    hit = cached_index(run, metric, cache, **params)
    if hit is not None:
        return hit
    path, meta_path, key = index_paths(run, metric, cache, **params)

    def compute():
        index, meta = build_index(run["path"], metric, progress=progress, **params)
        meta.update(kind="knn-index", key=key, features_run=run["key"], run=run_fingerprint(run),
                    dataset=run.get("dataset"), model=run.get("model"))
        faiss = _faiss()
        with store.atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        meta.update(bytes=path.stat().st_size, sha256=_sha256(path),
                    bytes_per_galaxy=round(path.stat().st_size / max(1, index.ntotal), 1))
        store.write_json(meta_path, meta)  # last: the commit mark
        return KnnIndex(index, meta, path)

    return get_or_compute(meta_path, lambda _: cached_index(run, metric, cache, **params), compute)[0]


def build_index(features_path, metric: str = "cosine", progress: bool = False, seed: int = 0,
                recall_queries: int = RECALL_QUERIES, **params):
    """(faiss index, meta) of a features run, streamed in batches (see the module doc)."""
    faiss = _faiss()
    t0 = time.perf_counter()
    rss0 = _peak_rss_mb()
    rng = np.random.default_rng(seed)
    # pass 1: the row count, a training sample and the recall queries
    n = 0
    dim = 0
    for _, X in iter_embeddings(features_path):
        n += len(X)
        dim = X.shape[1]
    if n < 2:
        raise UserError(f"an index needs at least 2 galaxies; {features_path} has {n}")
    p = {**default_params(n, dim), **{k: v for k, v in params.items() if v is not None}}
    n_train = min(n, max(256 * 39 if p["nbits"] == 8 else 0, 64 * p["nlist"], 20_000))
    train_rows = np.sort(rng.choice(n, n_train, replace=False))
    query_rows = np.sort(rng.choice(n, min(n, recall_queries), replace=False))
    train = np.empty((n_train, dim), np.float32)
    Q = np.empty((len(query_rows), dim), np.float32)
    for start, X in iter_embeddings(features_path):
        for want, out in ((train_rows, train), (query_rows, Q)):
            a, b = np.searchsorted(want, [start, start + len(X)])
            out[a:b] = X[want[a:b] - start]
    train, Q = _prepare(train, metric), _prepare(Q, metric)
    quantiser = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantiser, dim, int(p["nlist"]), int(p["m"]), int(p["nbits"]))
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    # pass 2: add every row; the exact top RECALL_K of the sampled queries in the same pass
    kq = min(RECALL_K, n - 1)
    best_i = np.full((len(Q), kq), -1, np.int64)
    best_d = np.full((len(Q), kq), np.inf, np.float32)
    q_norms = np.einsum("ij,ij->i", Q, Q)
    for start, X in iter_embeddings(features_path):
        X = _prepare(X, metric)
        index.add(X)
        D = q_norms[:, None] + np.einsum("ij,ij->i", X, X)[None, :] - 2 * (Q @ X.T)
        own = (query_rows >= start) & (query_rows < start + len(X))
        D[np.flatnonzero(own), query_rows[own] - start] = np.inf
        kb = min(kq, D.shape[1])
        part = np.argpartition(D, kb - 1, axis=1)[:, :kb]  # this batch's best, then merged with the best so far
        cat_d = np.hstack([best_d, np.take_along_axis(D, part, 1)])
        cat_i = np.hstack([best_i, part + start])
        o = np.argpartition(cat_d, kq - 1, axis=1)[:, :kq]
        best_d, best_i = np.take_along_axis(cat_d, o, 1), np.take_along_axis(cat_i, o, 1)
        if progress:
            print(f"\rindex: {start + len(X):,} / {n:,} galaxies", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    t_build = time.perf_counter() - t0
    # recall@10 of the index (with its exact re-rank) against the exact search
    kidx = KnnIndex(index, {"metric": metric, "params": p})
    cand = kidx.candidates(Q, int(p["rerank"]) + 1)
    found = 0
    coded = 0
    for r in range(len(Q)):
        c = cand[r][(cand[r] >= 0) & (cand[r] != query_rows[r])]
        coded += len(np.intersect1d(c[:kq], best_i[r]))
        found += len(np.intersect1d(c, best_i[r]))  # re-ranked exactly, the true ones among c come first
    t_total = time.perf_counter() - t0
    meta = {"version": INDEX_VERSION, "library": LIBRARY, "faiss": faiss.__version__, "metric": metric,
            "rows": int(index.ntotal), "dim": int(dim), "params": p,
            "recall_at_10": round(found / (len(Q) * kq), 4), "recall_at_10_without_rerank": round(coded / (len(Q) * kq), 4),
            "recall_queries": int(len(Q)), "recall_seed": seed,
            "seconds": {"train": round(t_train, 2), "add": round(t_build - t_train, 2), "total": round(t_total, 2)},
            "peak_rss_mb": _peak_rss_mb(), "peak_rss_mb_before": rss0,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return index, meta


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)
