"""A nearest-neighbour index per features run: built once, cached beside the run.

faiss IVF-PQ (faiss-cpu): the features are split into ``nlist`` cells (k-means)
and each galaxy is stored as ``m`` one-byte product-quantiser codes plus its
8-byte id: 104 bytes per galaxy at 768-d (``m`` = 96), against 1,536 for the
float16 features. A search visits ``nprobe`` cells, keeps ``rerank``
candidates by their coded distance, and re-ranks them exactly from the
features (an in-memory matrix, or rows read from the run's parquet). Chosen by
measurement against hnswlib and usearch (docs/BENCHMARKS.md, "Survey scale"):
those graphs keep the vectors themselves (>= 768 bytes per galaxy even in int8).

The exact re-rank reads candidates' features by position. Parquet cannot be
read by row fast enough (a row group is decoded whole), so the build also lays
the run's features out once as a flat ``.npy`` beside the index, in the run's
own dtype (float16 for a float16 run), memory-mapped when searched: the
dashboard then answers Neighbours and Find without holding the features
(``KnnIndex.vectors``), and both metrics' indexes share it. That file is the
features again (1,536 bytes per galaxy at 768-d float16), not part of the
index's bytes per galaxy; its size and a checksum of 64 sampled 1 MB blocks are
checked whenever it is opened.

Built by streaming the run's ``embedding`` column in record batches (the
features are never loaded whole): pass 1 samples training rows and query
rows, pass 2 adds every row to the index and, for the sampled queries, keeps
the exact top 10 in the same pass; recall@10 of the index against that exact
search is recorded with the index (``recall_at_10``) with the build time and
peak memory.

Files: ``<cache>/indexes/<key>.faiss`` and ``<key>.json`` (parameters, recall,
the index file's size and SHA-256), and ``<vkey>.vectors.npy`` (+ ``.vectors.json``). Both keys
hold the run's key and its fingerprint (rows, bytes, created), so a re-extracted run gets a new index.
The JSON is written last, atomically: it is the commit mark. An index file
whose checksum disagrees with its JSON is never read (faiss may crash on a
damaged file): it is rebuilt.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
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

INDEX_VERSION = 2  # 2: the re-rank vectors file beside the index
LIBRARY = "faiss-cpu IVF-PQ"
RECALL_QUERIES = 1000
RECALL_K = 10
METRICS = ("cosine", "euclidean")
RECALL_TARGET = 0.95  # the build visits the fewest cells (nprobe) that reach this recall@10
NPROBE_LADDER = (16, 32, 64, 128, 256)
MAX_NLIST = 4096  # cells: above ~1M rows more cells cost more to train and assign than they save per query


def _faiss():
    import faiss  # imported when an index is used: it costs ~0.3 s

    return faiss


def default_params(n: int, dim: int) -> dict:
    """IVF-PQ parameters for ``n`` rows of ``dim`` features: ~4 sqrt(n) cells, at most 4,096 (each
    trained on >= 39 points), one code byte per 8 dimensions, 8-bit codes (fewer bits
    when there are too few rows to train 256 centroids)."""
    nlist = int(max(1, min(4 * np.sqrt(n), n // 39, MAX_NLIST)))
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    nbits = int(max(1, min(8, np.floor(np.log2(max(2, n // 39))))))
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, NPROBE_LADDER[0]), "rerank": 100}


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


def row_count(path) -> int:
    """Rows of a features run, from its footers (a sharded run: its parts')."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        from core.store import shards

        return sum(pq.read_metadata(f).num_rows for f in shards.parts(path))
    return pq.read_metadata(path).num_rows


# ---------------------------------------------------------------- the re-rank vectors (the features, by row)

SAMPLED_BLOCKS = 64
BLOCK = 1 << 20


def vectors_file(run: dict, cache=None) -> Path:
    key = store.key_of("knn-vectors", INDEX_VERSION, run["key"], run_fingerprint(run))
    return store.cache_dir(cache) / "indexes" / f"{key}.vectors.npy"


def vectors_dtype(run: dict):
    return np.float16 if str(run.get("dtype")) == "float16" else np.float32


def sampled_checksum(path) -> str:
    """SHA-256 of the file's size and of 64 evenly spaced 1 MB blocks (a 15 GB file in ~0.1 s)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for off in sorted({int(x) for x in np.linspace(0, max(0, size - BLOCK), SAMPLED_BLOCKS)}):
            fh.seek(off)
            h.update(fh.read(BLOCK))
    return h.hexdigest()


def open_vectors(path, meta: dict | None = None) -> np.ndarray | None:
    """The memory-mapped (n, d) re-rank vectors, or None when missing, truncated, of another
    shape than ``meta`` records, or failing its sampled checksum."""
    path = Path(path)
    try:
        V = np.load(path, mmap_mode="r")
    except Exception:
        return None
    if V.ndim != 2:
        return None
    if meta is not None:
        if list(V.shape) != meta.get("shape") or str(V.dtype) != meta.get("dtype"):
            return None
        if meta.get("checksum") != sampled_checksum(path):
            return None
    return V


def gather(V: np.memmap, rows: np.ndarray) -> np.ndarray:
    """``V[rows]`` of a memory-mapped matrix, with the kernel asked for every row's pages first
    (madvise WILLNEED): on a cold page cache the ~100 scattered reads of a re-rank are then
    in flight together instead of one page fault after another."""
    mm = getattr(V, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED") and len(rows) <= 1 << 16:
        row_bytes = V.shape[1] * V.itemsize
        base = V.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts inside the mapping
        page = mmap.PAGESIZE
        for r in np.asarray(rows, np.int64).tolist():
            a = base + r * row_bytes
            lo = a - a % page
            try:
                mm.madvise(mmap.MADV_WILLNEED, lo, a + row_bytes - lo)
            except (OSError, ValueError):  # advice only
                break
    return np.asarray(V[rows])


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

    def __init__(self, index, meta: dict, path: Path | None = None, vectors: np.ndarray | None = None):
        self.index, self.meta, self.path = index, meta, path
        self.vectors = vectors  # (n, d) memory-mapped features for the re-rank, when built
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
        callable positions -> (len, d) matrix for the exact re-rank (None: the index's
        own ``vectors``); ``exclude``: one position per query to leave out (the query's
        own row), or None."""
        rows = self.vectors if rows is None else rows
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
            flat, inv = np.unique(cand, return_inverse=True)  # each candidate row read once, in file order
            inv = inv.reshape(cand.shape)
            if isinstance(rows, np.memmap):  # the reads issued at once
                R = gather(rows, flat)
            elif isinstance(rows, np.ndarray):
                R = rows[flat]
            else:
                R = rows(flat)
            R = np.ascontiguousarray(R, dtype=np.float32)
            sq = np.einsum("ij,ij->i", R, R)
            dots = np.empty(cand.shape, np.float32)
            for i in range(len(q)):  # each query against its own candidates only: no (m, c, d) copy
                dots[i] = R[inv[i]] @ q[i]
            if self.metric == "cosine":  # q is a unit vector: |r/|r| - q|^2 = 2 - 2 r.q / |r|
                d = 2 - 2 * dots / np.sqrt(np.maximum(sq, 1e-24))[inv]
            else:
                d = sq[inv] - 2 * dots + np.einsum("md,md->m", q, q)[:, None]
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
    vectors = None
    if meta.get("vectors"):
        vectors = open_vectors(path.parent / meta["vectors"]["file"], meta["vectors"])
        if vectors is None:  # missing or damaged: rebuilt with the index
            return None
    return KnnIndex(index, meta, path, vectors)


def get_index(run: dict, metric: str = "cosine", cache=None, progress: bool = False, **params) -> KnnIndex:
    """The run's index, built and cached on a miss (under a file lock: two identical
    requests build once); a damaged index file is rebuilt."""
    hit = cached_index(run, metric, cache, **params)
    if hit is not None:
        return hit
    path, meta_path, key = index_paths(run, metric, cache, **params)

    def compute():
        vpath = vectors_file(run, cache)
        vmeta = _vectors_meta(vpath)
        have = vmeta is not None and open_vectors(vpath, vmeta) is not None
        with contextlib.ExitStack() as stack:
            out = None if have else stack.enter_context(store.atomic_path(vpath))
            index, meta = build_index(run["path"], metric, progress=progress, vectors_out=out,
                                      vectors_dtype=vectors_dtype(run), **params)
        if not have:
            V = np.load(vpath, mmap_mode="r")
            vmeta = {"file": vpath.name, "shape": list(V.shape), "dtype": str(V.dtype), "bytes": vpath.stat().st_size,
                     "checksum": sampled_checksum(vpath)}
            store.write_json(vpath.with_suffix(".json"), vmeta)
        meta["vectors"] = vmeta
        meta.update(kind="knn-index", key=key, features_run=run["key"], run=run_fingerprint(run),
                    dataset=run.get("dataset"), model=run.get("model"))
        faiss = _faiss()
        with store.atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        meta.update(bytes=path.stat().st_size, sha256=_sha256(path),
                    bytes_per_galaxy=round(path.stat().st_size / max(1, index.ntotal), 1))
        store.write_json(meta_path, meta)  # last: the commit mark
        return KnnIndex(index, meta, path, open_vectors(vpath, vmeta))

    return get_or_compute(meta_path, lambda _: cached_index(run, metric, cache, **params), compute)[0]


def _npy_writer(path, dtype, shape):
    """An open file with a ``.npy`` header for an array of ``shape``; rows are then written in order."""
    fh = open(path, "wb")
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(int(v) for v in shape)})
    return fh


def _vectors_meta(vpath: Path) -> dict | None:
    try:
        return json.loads(vpath.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


def build_index(features_path, metric: str = "cosine", progress: bool = False, seed: int = 0,
                recall_queries: int = RECALL_QUERIES, vectors_out=None, vectors_dtype=np.float32, **params):
    """(faiss index, meta) of a features run, streamed in batches (see the module doc);
    ``vectors_out``: a path to write the run's features to as an (n, d) ``.npy`` of
    ``vectors_dtype`` in the same pass (the re-rank vectors)."""
    faiss = _faiss()
    t0 = time.perf_counter()
    rss0 = _peak_rss_mb()
    rng = np.random.default_rng(seed)
    # pass 1: the row count, a training sample and the recall queries
    n = row_count(features_path)
    dim = int(store.read_schema(features_path).field("embedding").type.list_size)
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
        if progress:
            print(f"\rindex: sampling {n_train:,} training rows and {len(Q):,} recall queries, "
                  f"{start + len(X):,} / {n:,} read", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\nindex: training {p['nlist']:,} cells and {p['m']} product quantisers on {n_train:,} rows",
              file=sys.stderr, flush=True)
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
    V = None if vectors_out is None else _npy_writer(vectors_out, vectors_dtype, (n, dim))
    for start, X in iter_embeddings(features_path):
        if V is not None:  # written, not memory-mapped: the written pages are not this process's memory
            V.write(np.ascontiguousarray(X, dtype=vectors_dtype).tobytes())
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
            print(f"\rindex: {start + len(X):,} / {n:,} galaxies added ({time.perf_counter() - t0:.0f} s)", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if V is not None:
        V.close()
    t_build = time.perf_counter() - t0
    # recall@10 of the index (with its exact re-rank) against the exact search; unless nprobe was
    # given, the fewest cells to visit that reach RECALL_TARGET on these queries
    kidx = KnnIndex(index, {"metric": metric, "params": p})
    ladder = [p["nprobe"]] if "nprobe" in params and params["nprobe"] is not None else \
        sorted({min(p["nlist"], v) for v in NPROBE_LADDER})
    by_nprobe = {}
    for nprobe in ladder:
        index.nprobe = int(nprobe)
        found, coded = _recall(kidx.candidates(Q, int(p["rerank"]) + 1), query_rows, best_i, kq)
        by_nprobe[int(nprobe)] = round(found, 4)
        if found >= RECALL_TARGET:
            break
    p["nprobe"] = int(nprobe)
    found = by_nprobe[int(nprobe)]
    t_total = time.perf_counter() - t0
    meta = {"version": INDEX_VERSION, "library": LIBRARY, "faiss": faiss.__version__, "metric": metric,
            "rows": int(index.ntotal), "dim": int(dim), "params": p,
            "recall_at_10": found, "recall_at_10_without_rerank": round(coded, 4), "recall_by_nprobe": by_nprobe,
            "recall_queries": int(len(Q)), "recall_seed": seed,
            "seconds": {"train": round(t_train, 2), "add": round(t_build - t_train, 2), "total": round(t_total, 2)},
            "peak_rss_mb": _peak_rss_mb(), "peak_rss_mb_before": rss0,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return index, meta


def _recall(cand: np.ndarray, query_rows: np.ndarray, truth: np.ndarray, kq: int) -> tuple[float, float]:
    """(recall@kq after the exact re-rank of the candidates, recall@kq of the coded order)."""
    found = coded = 0
    for r in range(len(cand)):
        c = cand[r][(cand[r] >= 0) & (cand[r] != query_rows[r])]
        coded += len(np.intersect1d(c[:kq], truth[r]))
        found += len(np.intersect1d(c, truth[r]))  # re-ranked exactly, the true ones among c come first
    return found / (len(cand) * kq), coded / (len(cand) * kq)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)
