"""Exact k nearest neighbours in chunked matrix products, on the CPU or a GPU.

One function, :func:`knn`, for t-SNE's neighbour graph, map quality and the
Neighbours view. Distances are squared euclidean.

- CPU: float32 products, one chunk of query rows at a time (~64 MB each).
- CUDA: the products run in TF32 (or bf16), which is several times faster but
  rounds distances; each chunk keeps ``k + margin`` candidates by rounded
  distance and re-ranks them in float32. A row is *certified* when no point
  outside its candidates can beat its k-th re-ranked distance, given a bound
  on the rounding error; the few rows that are not are searched again in
  float32. So the result equals a float32 search (up to ties), only faster.
  TF32 is the default: on clustered 768-d features the gap between the k-th and
  the (k + 32)-th distance is ~3% of the distance, under bf16's bound (~7%) but
  well over TF32's (~1%), so with bf16 nearly every row was searched twice
  (1M points: 90 s of kNN on an H200, bench/gpu_tsne.py).

>>> idx, d2 = knn(X, 90)                        # every row, itself excluded
>>> idx, d2 = knn(X, 8, queries=X[:1])          # the 8 nearest rows to one point
>>> idx, d, how = neighbours(X, 10, metric="cosine", index=run_index)  # the entry point

:func:`neighbours` is the one entry point for every consumer (outlier scores,
the Neighbours view, Find, kNN accuracy, map quality): exact search below
:data:`EXACT_BELOW` rows, the run's ANN index (:mod:`core.analysis.knn_index`)
above it, and it says which.
"""
from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 24  # distances held at once per chunk: 64 MB of float32
# relative rounding of one input to the product (round to nearest): bf16 keeps 8 bits, TF32 11
_UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "tf32": 2.0 ** -11, "fp32": 0.0}


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    import torch  # imported when used: the cache-hit path stays torch-free

    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(device: torch.device, precision: str | None) -> str:
    import torch  # imported when used: the cache-hit path stays torch-free

    if precision is None:
        return "tf32" if device.type == "cuda" else "fp32"
    if precision not in _UNIT_ROUNDOFF:
        raise ValueError(f"precision must be one of {', '.join(_UNIT_ROUNDOFF)}; got {precision!r}")
    return precision


def knn(X, k: int, queries=None, device: str | None = None, precision: str | None = None,
        margin: int = 32, chunk_rows: int | None = None, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest rows of ``X`` (n, d) to each query row.

    ``queries=None`` means every row of ``X``, each excluding itself.
    ``device`` "cpu" | "cuda" | None (= CUDA when available). ``precision``
    of the products: "fp32" (CPU default), "tf32" (CUDA default) or "bf16";
    the latter two are re-ranked in float32 and certified (see the module doc).
    ``stats``, a dict, receives ``rows_searched_again``: the rows the rounded
    pass could not certify. Returns ``(indices int64 (m, k), squared distances float32 (m, k))``,
    nearest first.
    """
    import torch

    dev = torch.device(device or default_device())
    precision = _precision(dev, precision)
    if dev.type == "cpu" and precision == "fp32" and not torch.is_tensor(X) and not torch.is_tensor(queries):
        return _knn_numpy(X, k, queries)
    X = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32) if not torch.is_tensor(X) else X).float()
    self_query = queries is None
    Q = X if self_query else torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float32)
                                             if not torch.is_tensor(queries) else queries).float()
    n, m, k = len(X), len(Q), int(k)
    if not 0 < k <= n - self_query:
        raise ValueError(f"k={k} neighbours asked among {n} points")
    # distances do not depend on the origin; centring shrinks the norms and so the rounding error
    centre = X.mean(dim=0)
    Xd = (X.to(dev) - centre.to(dev)).contiguous()
    Qd = Xd if self_query else (Q.to(dev) - centre.to(dev)).contiguous()
    idx = torch.empty((m, k), dtype=torch.int64)
    dist = torch.empty((m, k), dtype=torch.float32)
    # a GPU reads all of X once per chunk: bigger chunks there (1 GB of distances)
    step = chunk_rows or max(16, (_CHUNK_ELEMENTS if dev.type == "cpu" else 1 << 28) // max(n, 1))
    search = _search_fp32 if precision == "fp32" else _search_rounded
    x_norms = (Xd * Xd).sum(dim=1)
    Xr = Xd.to(torch.bfloat16) if precision == "bf16" else Xd  # rounded once, not per chunk
    again = []
    for start in range(0, m, step):
        rows = slice(start, min(m, start + step))
        own = torch.arange(rows.start, rows.stop, device=dev) if self_query else None
        i, d = search(Qd[rows], Xd, x_norms, k, own, precision, margin, Xr, again)
        idx[rows], dist[rows] = i.cpu(), d.cpu()
    if stats is not None:
        stats["rows_searched_again"] = int(sum(again))
    return idx.numpy(), dist.numpy()


def _sq_distances(Q, X, x_norms, dtype=None):
    """(m, n) float32 squared distances; products in ``dtype`` (None: float32;
    ``X`` may already be in ``dtype``)."""
    if dtype is None:
        prod = Q @ X.T
    else:
        prod = (Q.to(dtype) @ X.to(dtype).T).float()
    D = x_norms[None, :] - 2 * prod
    D += (Q * Q).sum(dim=1)[:, None]
    return D.clamp_(min=0)


def _exclude_self(D, own):
    import torch  # imported when used: the cache-hit path stays torch-free

    if own is not None:
        D[torch.arange(len(own), device=D.device), own] = float("inf")


def _search_fp32(Q, X, x_norms, k, own, precision, margin, Xr=None, again=None):
    import torch  # imported when used: the cache-hit path stays torch-free

    D = _sq_distances(Q, X, x_norms)
    _exclude_self(D, own)
    d, i = torch.topk(D, k, dim=1, largest=False, sorted=True)
    return i, d


def _search_rounded(Q, X, x_norms, k, own, precision, margin, Xr=None, again=None):
    """Candidates from rounded products, re-ranked in float32, uncertified rows redone."""
    import torch  # imported when used: the cache-hit path stays torch-free

    n = len(X)
    c = min(n - (own is not None), k + margin)
    tf32 = precision == "tf32"
    if tf32:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        D = _sq_distances(Q, X if Xr is None else Xr, x_norms, None if tf32 else torch.bfloat16)
    finally:
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = old
    _exclude_self(D, own)
    approx, cand = torch.topk(D, c, dim=1, largest=False, sorted=True)
    del D
    exact = ((Q[:, None, :] - X[cand]) ** 2).sum(dim=2)  # (m, c) float32 on the candidates only
    d, order = torch.topk(exact, k, dim=1, largest=False, sorted=True)
    i = torch.gather(cand, 1, order)
    # |rounded - exact| <= 2 |q.x error| <= 2 (2u + u) |q| |x|: both inputs rounded, and a
    # bf16 product is rounded once more on output (+ float32 accumulation: the 1.25)
    u = _UNIT_ROUNDOFF[precision]
    bound = 1.25 * 6 * u * Q.norm(dim=1) * x_norms.max().sqrt()
    certified = (approx[:, -1] - bound > d[:, -1]) | (c == n - (own is not None))
    redo = torch.nonzero(~certified).flatten()
    if again is not None:
        again.append(len(redo))
    if len(redo):
        i_r, d_r = _search_fp32(Q[redo], X, x_norms, k, None if own is None else own[redo], "fp32", 0)
        i[redo], d[redo] = i_r, d_r
    return i, d


def _knn_numpy(X, k, queries=None, block: int = 2048):
    """The CPU path: blocked float32 BLAS products (every core) and a running top-k.

    - Each block of distances is one GEMM: the squared norms ride in two extra
      columns (``[x, |x|^2, 1] . [-2y, 1, |y|^2]``), so no pass adds them.
    - A row keeps its k best so far and their worst, ``tau``; in a new block only the
      entries below ``tau`` (a few per row once the first block has been seen) are
      merged, so the selection costs one comparison per distance, not a partial sort.
    - Every row searched against itself (``queries=None``): the distance matrix is
      symmetric, so only the blocks on and above the diagonal are computed and each
      serves its rows and its columns: half the products of one X.Xᵀ.
    The k distances returned are recomputed as ``|q - x|^2`` from the vectors."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    self_query = queries is None
    n, k = len(X), int(k)
    if not 0 < k <= n - self_query:
        raise ValueError(f"k={k} neighbours asked among {n} points")
    Q = X if self_query else np.ascontiguousarray(queries, dtype=np.float32)
    m = len(Q)
    if not self_query and m <= 64:  # a few queries (one click): one product, no copies of X
        D = sq_distances(Q, X, np.einsum("ij,ij->i", X, X))
        part = np.argpartition(D, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (m, n)).copy()
        best_i = part
    else:
        best_i = _blocked(X, Q, k, self_query, block)
    # exact distances of the k kept, nearest first (index breaks ties)
    d = np.empty((m, k), np.float32)
    for s in range(0, m, 256):  # small chunks: the gathered rows stay in cache
        q = Q[s:s + 256]
        diff = X[best_i[s:s + 256]]
        diff -= q[:, None, :]
        d[s:s + 256] = np.einsum("mkd,mkd->mk", diff, diff)
    order = np.lexsort((best_i, d), axis=1)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(d, order, 1)


def _blocked(X, Q, k, self_query, block):
    """Indices (m, k) of the k nearest, unordered: the blocked products of :func:`_knn_numpy`."""
    n, m = len(X), len(Q)
    ones = np.ones((n, 1), np.float32)
    x_norms = np.einsum("ij,ij->i", X, X)[:, None]
    R = np.hstack([-2 * X, ones, x_norms])  # (n, d + 2)
    if self_query:
        L = np.hstack([X, x_norms, ones])
    else:
        L = np.hstack([Q, np.einsum("ij,ij->i", Q, Q)[:, None], np.ones((m, 1), np.float32)])
    best_i = np.empty((m, k), np.int64)
    best_d = np.empty((m, k), np.float32)
    tau = np.empty(m, np.float32)
    cols = [slice(s, min(n, s + block)) for s in range(0, n, block)]
    rows = cols if self_query else [slice(s, min(m, s + block)) for s in range(0, m, block)]
    seed = max(4 * k, 256)  # columns whose partial sort gives each row its first k and tau
    for a, I in enumerate(rows):
        J = cols[a] if self_query else cols[0]
        D = L[I] @ R[J].T
        if self_query:
            D[np.arange(D.shape[0]), np.arange(D.shape[0])] = np.inf
        w = min(D.shape[1], seed)
        best_i[I], best_d[I] = -1, np.inf  # stays so where the first columns are fewer than k
        kk = min(k, w)
        part = np.argpartition(D[:, :w], kk - 1, axis=1)[:, :kk]
        best_i[I, :kk] = part + J.start
        best_d[I, :kk] = np.take_along_axis(D, part, 1)
        tau[I] = best_d[I].max(1)
        while w < D.shape[1]:  # the rest of the first block in doubling widths: tau tightens as it goes
            e = min(D.shape[1], 3 * w)
            _merge(best_i, best_d, tau, I.start, J.start + w, D[:, w:e], k)
            w = e
    for a, I in enumerate(rows):
        for b in range(a + 1 if self_query else 1, len(cols)):
            J = cols[b]
            D = L[I] @ R[J].T
            if not self_query:
                _merge(best_i, best_d, tau, I.start, J.start, D, k)
                continue
            # one scan serves both: entries that beat their row's or their column's k-th best
            t_rows, t_cols = tau[I][:, None], tau[J][None, :]
            mask = D < t_rows
            mask |= D < t_cols
            r, c = np.nonzero(mask)
            if len(r):
                v = D[r, c]
                a_ = v < t_rows[r, 0]
                _fold(best_i, best_d, tau, r[a_] + I.start, c[a_] + J.start, v[a_], k)
                b_ = v < t_cols[0, c]
                _fold(best_i, best_d, tau, c[b_] + J.start, r[b_] + I.start, v[b_], k)
    return best_i


def _merge(best_i, best_d, tau, row0, col0, D, k):
    """Fold the entries of block ``D`` (rows ``row0 + r``, columns ``col0 + c``) that beat
    their row's k-th best into the running top-k."""
    r, c = np.nonzero(D < tau[row0:row0 + D.shape[0], None])
    _fold(best_i, best_d, tau, r + row0, c + col0, D[r, c], k)


def _fold(best_i, best_d, tau, rows, cols, vals, k):
    """Merge candidate (row, column, distance) triples into the running top-k of their rows."""
    if not len(rows):
        return
    touched = np.unique(rows)
    cand_r = np.concatenate([np.repeat(touched, k), rows])
    cand_i = np.concatenate([best_i[touched].ravel(), cols])
    cand_d = np.concatenate([best_d[touched].ravel(), vals])
    order = np.lexsort((cand_d, cand_r))
    start = np.searchsorted(cand_r[order], touched)
    take = order[(start[:, None] + np.arange(k)).ravel()]
    best_i[touched] = cand_i[take].reshape(-1, k)
    best_d[touched] = cand_d[take].reshape(-1, k)
    tau[touched] = best_d[touched, -1]


# ---------------------------------------------------------------- the entry point

EXACT_BELOW = 200_000  # rows from which `neighbours` answers from a run's index (when it is given one)


def neighbours(X, k: int, queries=None, metric: str = "euclidean", index=None, rows=None,
               exclude=None, exact_below: int | None = None, device: str | None = None):
    """The one kNN entry point: ``(indices int64 (m, k), distances float32 (m, k), search dict)``.

    ``X`` (n, d) the galaxies (may be None when ``index`` and ``rows`` are given);
    ``queries`` (m, d), None = every row of ``X``, each excluding itself; ``exclude``:
    one row per query to leave out (a query that is itself a galaxy of ``X``).
    ``metric``: "euclidean" (squared distances) or "cosine" (1 - cosine similarity).
    Exact search (:func:`knn`: blocked BLAS on the CPU, certified TF32 on a GPU) below
    ``exact_below`` rows (default :data:`EXACT_BELOW`); at and above it, the run's
    ``index`` (:class:`core.analysis.knn_index.KnnIndex`) when one is given, re-ranked
    exactly from ``rows`` (a matrix or a row reader; default ``X``). ``search`` says
    which: ``{"search": "exact", "device"}`` or ``{"search": "index", "library",
    "recall_at_10", "index_key"}``.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    threshold = EXACT_BELOW if exact_below is None else int(exact_below)
    n = index.ntotal if X is None else len(X)
    if index is not None and n >= threshold:
        if index.metric != metric:
            raise ValueError(f"the index is for {index.metric} distances, not {metric}")
        self_query = queries is None
        Q = (X if rows is None else rows) if self_query else queries
        if self_query and not isinstance(Q, np.ndarray):
            raise ValueError("searching every row through an index needs the rows as a matrix")
        own = np.arange(len(Q)) if self_query else exclude
        idx, dist = index.search(Q, k, rows=X if rows is None else rows, exclude=own)
        meta = index.meta
        return idx, dist, {"search": "index", "library": meta.get("library"), "recall_at_10": meta.get("recall_at_10"),
                           "index_key": meta.get("key"), "params": meta.get("params")}
    X = np.asarray(X, np.float32)
    if metric == "cosine":
        X = _unit(X)
        queries = None if queries is None else _unit(queries)
    dev = device or default_device()
    if exclude is not None and queries is not None:  # one more, then drop the query's own row
        idx, d2 = knn(X, min(k + 1, len(X)), queries=queries, device=dev)
        own = idx == np.asarray(exclude, np.int64)[:, None]
        keep = np.argsort(own, axis=1, kind="stable")[:, :k]  # own row moved last, order kept
        idx, d2 = np.take_along_axis(idx, keep, 1), np.take_along_axis(d2, keep, 1)
    else:
        idx, d2 = knn(X, k, queries=queries, device=dev)
    dist = d2 / 2 if metric == "cosine" else d2  # |a-b|^2 / 2 = 1 - cos on unit vectors
    return idx, dist.astype(np.float32), {"search": "exact", "device": dev}


def _unit(X) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def sq_distances(Q: np.ndarray, X: np.ndarray, x_norms: np.ndarray) -> np.ndarray:
    """(m, n) float32 squared distances of query rows ``Q`` to rows ``X`` (``x_norms``:
    X's squared row norms), clamped at 0: for callers that need whole rows of distances
    (ranks, trustworthiness), not just the k nearest."""
    D = Q @ X.T
    D *= -2
    D += x_norms[None, :]
    D += np.einsum("ij,ij->i", Q, Q)[:, None]
    np.maximum(D, 0, out=D)
    return D


def knn_gpu_ready() -> bool:
    """Whether :func:`knn` would run on a GPU (the callers' "at scale" switch)."""
    import torch  # imported when used: the cache-hit path stays torch-free

    return torch.cuda.is_available()


_resident: dict = {}  # one feature matrix kept on the device between Neighbours-view calls


def nearest_rows(X: np.ndarray, i: int, k: int, metric: str = "cosine", device: str | None = None):
    """The ``k`` nearest rows of ``X`` (n, d) to row ``i``, itself excluded:
    ``(positions int64 (k,), distances float32 (k,))``, nearest first; cosine
    distance is 1 - cosine similarity. Meant for a GPU at scale: the (normalised)
    matrix stays on the device between calls with the same ``X``, so each call
    is one matrix-vector product there instead of a pass over X in host memory."""
    import torch  # imported when used: the cache-hit path stays torch-free

    dev = torch.device(device or default_device())
    key = (id(X), X.shape, metric, str(dev))
    if _resident.get("key") != key:
        _resident.clear()
        T = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32)).to(dev)
        if metric == "cosine":
            T = T / T.norm(dim=1, keepdim=True).clamp_(min=1e-12)
        _resident.update(key=key, X=T, norms=(T * T).sum(dim=1))
    T, norms = _resident["X"], _resident["norms"]
    k = max(0, min(int(k), len(T) - 1))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    q = T[i]
    if metric == "cosine":
        d = 1.0 - T @ q
    else:
        d = (norms - 2 * (T @ q) + norms[i]).clamp_(min=0).sqrt_()
    d[i] = float("inf")
    dist, idx = torch.topk(d, k, largest=False, sorted=True)
    return idx.cpu().numpy().astype(np.int64), dist.cpu().numpy().astype(np.float32)
