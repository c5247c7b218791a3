"""t-SNE's input affinities P, computed once, in our code, for every t-SNE path
(openTSNE on the CPU, the torch port on the CPU or a GPU, new points placed into a map).

Each point's conditional affinities to its k nearest neighbours are a Gaussian
``exp(-(d2 - min d2) beta) / sum`` whose bandwidth ``beta`` is found by binary
search so that the row's perplexity (``exp`` of its entropy) is the one asked for.
Subtracting the row's smallest squared distance cancels in the normalisation but
keeps the largest term at 1, so the sum cannot underflow. openTSNE 1.0.4
(``exp(-d2 beta)``, sum clamped at float64 eps) and our earlier copy of it did
not: on 768-d features, whose squared distances run to thousands, a third to two
thirds of the rows stopped at the clamp with the wrong perplexity (up to 57
instead of 30), and scikit-learn's ``test_binary_search_underflow`` case (89
squared distances near 100, perplexity 30) read 75.7.

- :func:`conditional` (n, k) -> (n, k) rows summing to 1 (torch, CPU or CUDA);
- :func:`joint` the symmetric P of a map (torch ``rows, cols, vals``);
- :func:`joint_csr` the same as a scipy CSR matrix (what openTSNE takes);
- :func:`check_perplexity` the one-line error when the perplexity needs more points.

>>> rows, cols, P = joint(idx, d2, 30.0, "cpu")       # kNN indices and squared distances
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.analysis.maps.quality import ProjectionError

TOL = 1e-8  # on the entropy (nats), openTSNE's and scikit-learn's tolerance
MAX_ITER = 200
CHUNK_ELEMENTS = 1 << 24  # distances calibrated at once


def check_perplexity(perplexity: float, n: int) -> None:
    """Raise :class:`ProjectionError` unless ``0 < perplexity <= (n - 1) / 3``: t-SNE
    looks at 3 x perplexity neighbours, and a perplexity above what they allow would
    silently give every neighbour the same weight."""
    if not 0 < perplexity <= (n - 1) / 3:
        raise ProjectionError(
            f"perplexity {perplexity:g} needs more than {int(3 * perplexity)} points (t-SNE looks at "
            f"3 x perplexity neighbours); got {n}: use a perplexity of at most {max(1, (n - 1) // 3)}"
        )


def conditional(d2, perplexity: float, tol: float = TOL, max_iter: int = MAX_ITER) -> torch.Tensor:
    """Conditional affinities (n, k) float64 from squared neighbour distances
    (n, k) (array or tensor; the result is on its device): per row
    ``exp(-(d2 - min d2) beta)`` normalised, ``beta`` by binary search (start 1,
    double or halve until bracketed, then bisect; openTSNE's and scikit-learn's
    search) until the row's entropy is ``log(perplexity)`` within ``tol``.

    The perplexity must be below k (k neighbours give at most perplexity k, all
    equal): ValueError otherwise. A row whose neighbours are all equidistant has
    perplexity k whatever beta and is left uniform (as scikit-learn does)."""
    d2 = torch.as_tensor(d2)
    n, k = d2.shape
    if not 0 < perplexity < k:
        raise ValueError(f"perplexity {perplexity:g} cannot be reached with {k} neighbours per point "
                         f"(at most {k}, when all are equally near); search more neighbours or lower it")
    rows = max(1, CHUNK_ELEMENTS // k)
    if n > rows:  # by chunks of rows: float64 temporaries of ~128 MB each whatever n (10M points: 7 GB each)
        return torch.cat([conditional(d2[s:s + rows], perplexity, tol, max_iter) for s in range(0, n, rows)])
    d2 = d2.double()
    shifted = d2 - d2.min(dim=1, keepdim=True).values
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=torch.float64, device=d2.device)
    lo = torch.zeros_like(beta)  # beta > 0 always; hi = inf until a bracket is found
    hi = torch.full_like(beta, math.inf)
    check = 8  # test "all rows done" every few steps: one host sync per 8 steps on a GPU
    for step in range(max_iter):
        W = torch.exp(-shifted * beta)
        total = W.sum(dim=1, keepdim=True)  # >= 1: the nearest neighbour's term is exp(0)
        entropy = torch.log(total) + beta * (shifted * W).sum(dim=1, keepdim=True) / total
        diff = entropy - target
        done = diff.abs() <= tol
        if (step + 1) % check == 0 and bool(done.all()):
            break
        up = (diff > 0) & ~done  # too flat: narrow the Gaussian
        down = (diff < 0) & ~done
        lo = torch.where(up, beta, lo)
        hi = torch.where(down, beta, hi)
        beta = torch.where(up, torch.where(torch.isinf(hi), beta * 2, (beta + hi) / 2), beta)
        beta = torch.where(down, (beta + lo) / 2, beta)
    W = torch.exp(-shifted * beta)
    return W / W.sum(dim=1, keepdim=True)


def perplexities(P) -> np.ndarray:
    """(n,) perplexity of each row of conditional affinities (n, k): exp(entropy)."""
    P = np.asarray(torch.as_tensor(P).double().cpu())
    with np.errstate(divide="ignore", invalid="ignore"):
        H = -np.where(P > 0, P * np.log(P), 0.0).sum(axis=1)
    return np.exp(H)


def joint(idx, d2, perplexity: float, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric joint affinities from kNN ``idx`` (n, k) and squared distances
    (n, k): ``(rows, cols, P)`` tensors on ``device`` (int64, int64, float32),
    sorted by row, ``P = (P_cond + P_cond.T) / 2`` normalised to sum to 1 in float64."""
    idx = torch.as_tensor(np.asarray(idx) if not torch.is_tensor(idx) else idx, device=device)
    n, k = idx.shape
    cond = conditional(torch.as_tensor(d2, device=device), perplexity)
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    cols = idx.reshape(-1)
    vals = cond.reshape(-1)
    P = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([vals, vals]) / 2, (n, n), check_invariants=False).coalesce()
    rows, cols = P.indices()
    vals = P.values()
    vals = vals / vals.sum()
    return rows, cols, vals.float()


def directed(idx, d2, perplexity: float, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`joint` without building the symmetric matrix: one edge ``(i, j)`` per
    neighbour with ``P_cond[i, j] / (2 n)``. The attraction of an edge, applied to
    both ends (:func:`core.analysis.maps.tsne_torch.attraction` with ``directed``),
    is the symmetric P's; half the edges, and no sort of all of them (at 10M points
    the symmetric P's coalesce alone needed ~90 GB)."""
    idx = torch.as_tensor(np.asarray(idx) if not torch.is_tensor(idx) else idx, device=device)
    n, k = idx.shape
    cond = conditional(torch.as_tensor(d2, device=device), perplexity)
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)
    return rows, idx.reshape(-1), (cond.reshape(-1) / (2 * n)).float()


def joint_csr(idx, d2, perplexity: float):
    """:func:`joint` as a scipy CSR matrix (n, n) float64 summing to 1: the P
    openTSNE optimises (its ``Affinities.P``)."""
    import scipy.sparse as sp

    idx = np.asarray(idx)
    n, k = idx.shape
    cond = conditional(np.asarray(d2), perplexity).numpy()
    P = sp.csr_matrix((cond.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    P = (P + P.T) / 2
    P /= P.sum()
    return P.tocsr()


def new_points_csr(idx, d2, perplexity: float, n_reference: int):
    """Affinities of new points to a map's points (m, n_reference) CSR, each row
    summing to 1 (not symmetrised): what openTSNE's placement optimises against."""
    import scipy.sparse as sp

    idx = np.asarray(idx)
    m, k = idx.shape
    cond = conditional(np.asarray(d2), perplexity if perplexity < k else k / 3).numpy()  # clipped as openTSNE does
    return sp.csr_matrix((cond.ravel(), idx.ravel(), np.arange(0, m * k + 1, k)), shape=(m, n_reference))
