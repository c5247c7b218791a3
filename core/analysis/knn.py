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
"""
from __future__ import annotations

import numpy as np
import torch

_CHUNK_ELEMENTS = 1 << 24  # distances held at once per chunk: 64 MB of float32
# relative rounding of one input to the product (round to nearest): bf16 keeps 8 bits, TF32 11
_UNIT_ROUNDOFF = {"bf16": 2.0 ** -8, "tf32": 2.0 ** -11, "fp32": 0.0}


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(device: torch.device, precision: str | None) -> str:
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
    if own is not None:
        D[torch.arange(len(own), device=D.device), own] = float("inf")


def _search_fp32(Q, X, x_norms, k, own, precision, margin, Xr=None, again=None):
    D = _sq_distances(Q, X, x_norms)
    _exclude_self(D, own)
    d, i = torch.topk(D, k, dim=1, largest=False, sorted=True)
    return i, d


def _search_rounded(Q, X, x_norms, k, own, precision, margin, Xr=None, again=None):
    """Candidates from rounded products, re-ranked in float32, uncertified rows redone."""
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


def _knn_numpy(X, k, queries=None):
    """The CPU path: float32 BLAS products and a partial sort (argpartition is ~3x
    faster than torch.topk on the CPU)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    self_query = queries is None
    n, k = len(X), int(k)
    if not 0 < k <= n - self_query:
        raise ValueError(f"k={k} neighbours asked among {n} points")
    # not centred (unlike the torch path): bit-identical to the exact_knn that made the
    # maps already cached (UMAP's layout follows float32 rounding of its neighbour distances)
    Q = X if self_query else np.ascontiguousarray(queries, dtype=np.float32)
    m = len(Q)
    x_norms = np.einsum("ij,ij->i", X, X)
    idx = np.empty((m, k), dtype=np.int64)
    dist = np.empty((m, k), dtype=np.float32)
    step = max(16, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, m, step):
        s = slice(start, min(m, start + step))
        D = Q[s] @ X.T
        D *= -2
        D += x_norms[None, :]
        D += np.einsum("ij,ij->i", Q[s], Q[s])[:, None]
        np.maximum(D, 0, out=D)
        if self_query:
            D[np.arange(D.shape[0]), np.arange(s.start, s.stop)] = np.inf
        part = np.argpartition(D, k - 1, axis=1)[:, :k]
        d = np.take_along_axis(D, part, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        idx[s] = np.take_along_axis(part, order, axis=1)
        dist[s] = np.take_along_axis(d, order, axis=1)
    return idx, dist


def knn_gpu_ready() -> bool:
    """Whether :func:`knn` would run on a GPU (the callers' "at scale" switch)."""
    return torch.cuda.is_available()


_resident: dict = {}  # one feature matrix kept on the device between Neighbours-view calls


def nearest_rows(X: np.ndarray, i: int, k: int, metric: str = "cosine", device: str | None = None):
    """The ``k`` nearest rows of ``X`` (n, d) to row ``i``, itself excluded:
    ``(positions int64 (k,), distances float32 (k,))``, nearest first; cosine
    distance is 1 - cosine similarity. Meant for a GPU at scale: the (normalised)
    matrix stays on the device between calls with the same ``X``, so each call
    is one matrix-vector product there instead of a pass over X in host memory."""
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
