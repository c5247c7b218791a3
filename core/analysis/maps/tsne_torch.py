"""t-SNE in torch with openTSNE's algorithm and defaults: FFT-interpolated
repulsion (Linderman et al. 2019, "FIt-SNE"), so it runs on a GPU and on the CPU.

Steps, each as openTSNE 1.0 does them:

1. exact kNN, k = 3 x perplexity (:mod:`core.analysis.knn`: chunked products; on CUDA
   TF32 re-ranked in float32);
2. Gaussian bandwidths by binary search on each point's entropy (tolerance
   1e-8, at most 200 steps), symmetrised ``P = (P + P.T) / 2``, normalised to 1;
3. PCA start rescaled to standard deviation 1e-4 with 1% jitter;
4. gradient descent with gains (+0.2 / x0.8, min 0.01) and momentum: early
   exaggeration 12 for 250 iterations (momentum 0.5, learning rate N / 12),
   then 500 at exaggeration 1 (momentum 0.8, learning rate N); the map is
   re-centred after every step;
5. attraction from the sparse P; repulsion on a square grid of
   ``max(50, map width)`` boxes (rounded up to an FFT-friendly count)
   with 3 interpolation nodes per box: Lagrange weights spread each point's
   charges ``[1, y1, y2, |y|^2]`` onto the nodes, one FFT convolution with the
   squared Cauchy kernel gives the potentials, the same weights read them
   back. The normalisation Z and the KL divergence are summed in float64.

>>> Y = tsne(X)                          # (n, d) -> (n, 2) float32, CUDA when available
>>> Y = tsne(X, device="cpu")
"""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch

from core.analysis.knn import default_device, knn

N_INTERPOLATION = 3
MIN_BOXES = 50


# ---------------------------------------------------------------- affinities


def calibrate(d2: torch.Tensor, perplexity: float, tol: float = 1e-8, max_iter: int = 200) -> torch.Tensor:
    """Conditional affinities (n, k) float64 from squared neighbour distances
    (n, k): per row exp(-beta d2) / sum, with beta found by openTSNE's binary
    search (start 1, double or halve until bracketed, then bisect) so that the
    row's entropy is log(perplexity)."""
    d2 = d2.double()
    n = len(d2)
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=torch.float64, device=d2.device)
    lo = torch.full_like(beta, -math.inf)
    hi = torch.full_like(beta, math.inf)
    done = torch.zeros_like(beta, dtype=torch.bool)
    for _ in range(max_iter):
        P = torch.exp(-d2 * beta)
        total = P.sum(dim=1, keepdim=True).clamp_(min=np.finfo(np.float64).eps)
        P /= total
        entropy = torch.log(total) + beta * (d2 * P).sum(dim=1, keepdim=True)
        diff = entropy - target
        done |= diff.abs() <= tol
        if bool(done.all()):
            break
        up = (diff > 0) & ~done  # too flat: narrow the Gaussian
        down = (diff <= 0) & ~done
        lo = torch.where(up, beta, lo)
        hi = torch.where(down, beta, hi)
        beta = torch.where(up, torch.where(torch.isinf(hi), beta * 2, (beta + hi) / 2), beta)
        beta = torch.where(down, torch.where(torch.isinf(lo), beta / 2, (beta + lo) / 2), beta)
    return torch.exp(-d2 * beta) / torch.exp(-d2 * beta).sum(dim=1, keepdim=True).clamp_(min=np.finfo(np.float64).eps)


def joint_affinities(idx: np.ndarray, d2: np.ndarray, perplexity: float, device) -> tuple:
    """Symmetric joint affinities from kNN ``idx`` (n, k) and squared distances
    (n, k): ``(rows, cols, P)`` tensors on ``device`` (int64, int64, float32),
    sorted by row, P summing to 1 (normalised in float64)."""
    n, k = idx.shape
    cond = calibrate(torch.as_tensor(d2, device=device), perplexity)
    rows = torch.arange(n, device=device).repeat_interleave(k)
    cols = torch.as_tensor(idx, device=device).reshape(-1)
    vals = cond.reshape(-1)
    P = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                torch.cat([vals, vals]) / 2, (n, n), check_invariants=False).coalesce()
    rows, cols = P.indices()
    vals = P.values()
    vals = vals / vals.sum()
    return rows, cols, vals.float()


# ---------------------------------------------------------------- start


def pca_start(X: torch.Tensor, seed: int) -> torch.Tensor:
    """(n, 2) float32: the first two principal components (signs as sklearn:
    each axis's largest loading positive), rescaled to standard deviation 1e-4
    on the first axis, plus jitter of 1% of that (openTSNE's ``initialization.pca``)."""
    mean = X.mean(dim=0, dtype=torch.float64)
    cov = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64, device=X.device)
    step = max(1, (1 << 24) // max(1, X.shape[1]))
    for s in range(0, len(X), step):
        C = (X[s:s + step].double() - mean)
        cov += C.T @ C
    _, vecs = torch.linalg.eigh(cov)
    V = vecs[:, [-1, -2]]
    V *= torch.sign(V.gather(0, V.abs().argmax(dim=0, keepdim=True)))
    Y = torch.cat([(X[s:s + step].double() - mean) @ V for s in range(0, len(X), step)])
    Y *= 1e-4 / Y[:, 0].std(correction=0)
    g = torch.Generator().manual_seed(seed)
    Y += torch.randn(Y.shape, generator=g, dtype=torch.float64).to(Y.device) * (Y[:, 0].std(correction=0) * 0.01)
    return Y.float()


# ---------------------------------------------------------------- gradients


def _fft_friendly(m: int) -> bool:
    """Whether m = 2^a 3^b 5^c 7^d 11^e 13^f with e + f <= 1 (sizes FFTs are fast at)."""
    for prime in (2, 3, 5, 7):
        while m % prime == 0:
            m //= prime
    return m in (1, 11, 13)


def n_boxes(width: float) -> int:
    """Grid boxes per side for a map ``width`` wide: max(50, width), rounded up
    to the next FFT-friendly count. openTSNE 1.0.4's choice: checked against its
    compiled ``estimate_negative_gradient_fft_2d`` at widths 60-340 (same Z to 1e-12)."""
    boxes = int(max(MIN_BOXES, width))
    while not _fft_friendly(boxes):
        boxes += 1
    return boxes


def _lagrange(frac: torch.Tensor, p: int) -> torch.Tensor:
    """(..., p) Lagrange weights of positions ``frac`` in [0, 1] (box units) on
    ``p`` equispaced nodes at (i + 0.5) / p."""
    nodes = [(i + 0.5) / p for i in range(p)]
    w = []
    for a in range(p):
        term = torch.ones_like(frac)
        for b in range(p):
            if b != a:
                term = term * (frac - nodes[b]) / (nodes[a] - nodes[b])
        w.append(term)
    return torch.stack(w, dim=-1)


def _kernel_fft(N: int, h: float, device, dtype) -> torch.Tensor:
    """rfft2 of the squared Cauchy kernel 1 / (1 + r^2)^2 on a (2N, 2N) circulant
    grid of node offsets (spacing ``h``), for linear convolution of N x N grids."""
    r = torch.arange(2 * N, device=device, dtype=dtype)
    off = torch.where(r <= N, r, 2 * N - r) * h
    K = 1.0 / (1.0 + off[:, None] ** 2 + off[None, :] ** 2) ** 2
    return torch.fft.rfft2(K)


def repulsion(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repulsive gradient (n, 2) and Z = sum over pairs i != j of 1 / (1 + |y_i - y_j|^2)
    (a float64 0-d tensor, left on the device: no host sync per iteration), by FFT
    interpolation on a grid sized to the map."""
    n = len(Y)
    p = N_INTERPOLATION
    lo, hi = (float(v) for v in torch.stack([Y.min(), Y.max()]).tolist())
    boxes = n_boxes(hi - lo)
    width = max(hi - lo, 1e-12) / boxes
    N = p * boxes
    t = (Y - lo) / width
    box = t.floor().clamp_(0, boxes - 1)
    W = _lagrange(t - box, p)  # (n, 2, p)
    node = box.long()[..., None] * p + torch.arange(p, device=Y.device)  # (n, 2, p)
    flat = (node[:, 1, :, None] * N + node[:, 0, None, :]).reshape(n, p * p)
    w = (W[:, 1, :, None] * W[:, 0, None, :]).reshape(n, p * p)
    charges = torch.stack([torch.ones_like(Y[:, 0]), Y[:, 0], Y[:, 1], (Y * Y).sum(dim=1)], dim=1)  # (n, 4)
    grid = torch.zeros(N * N, 4, device=Y.device, dtype=Y.dtype)
    grid.index_add_(0, flat.reshape(-1), (w[:, :, None] * charges[:, None, :]).reshape(-1, 4))
    grid = grid.T.reshape(4, N, N)
    pot = torch.fft.irfft2(torch.fft.rfft2(grid, s=(2 * N, 2 * N)) * _kernel_fft(N, width / p, Y.device, Y.dtype),
                           s=(2 * N, 2 * N))[:, :N, :N]
    pot = pot.reshape(4, N * N).T.contiguous()
    phi = (pot.index_select(0, flat.reshape(-1)).view(n, p * p, 4) * w[:, :, None]).sum(dim=1)  # (n, 4)
    Yd, phid = Y.double(), phi.double()
    Z = ((1 + (Yd * Yd).sum(dim=1)) * phid[:, 0] - 2 * (Yd * phid[:, 1:3]).sum(dim=1) + phid[:, 3]).sum() - n
    return (Y * phi[:, :1] - phi[:, 1:3]) / Z.to(Y.dtype), Z


def attraction(Y: torch.Tensor, rows, cols, P) -> torch.Tensor:
    """Attractive gradient (n, 2): sum_j P_ij (y_i - y_j) / (1 + |y_i - y_j|^2)."""
    diff = Y.index_select(0, rows) - Y.index_select(0, cols)  # index_select: ~2x faster than Y[rows] on the CPU
    w = P / (1 + (diff * diff).sum(dim=1))
    return torch.zeros_like(Y).index_add_(0, rows, diff.mul_(w[:, None]))


def kl_divergence(Y: torch.Tensor, rows, cols, P) -> float:
    """KL(P || Q) of map ``Y`` for the joint affinities (rows, cols, P), float64;
    Z by FFT interpolation (as openTSNE reports it)."""
    _, Z = repulsion(Y)
    diff = (Y[rows] - Y[cols]).double()
    q = 1 / (1 + (diff * diff).sum(dim=1))
    Pd = P.double()
    keep = Pd > 0
    return float((Pd[keep] * torch.log(Pd[keep] / q[keep])).sum()) + float(Pd.sum()) * math.log(float(Z))


# ---------------------------------------------------------------- optimisation


def optimise(Y, rows, cols, P, phases, progress: bool = False) -> torch.Tensor:
    """openTSNE's gradient descent on ``Y`` (n, 2) float32, in place. ``phases``:
    ``[(iterations, exaggeration, momentum), ...]``; gains and the update carry
    over between phases; learning rate N / exaggeration."""
    n = len(Y)
    update = torch.zeros_like(Y)
    gains = torch.ones_like(Y)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(ph[0] for ph in phases), desc="t-SNE (torch): layout", unit="it", file=sys.stderr,
                   leave=False)
    for iterations, exaggeration, momentum in phases:
        lr = n / exaggeration
        for _ in range(iterations):
            rep, _ = repulsion(Y)
            grad = exaggeration * attraction(Y, rows, cols, P) - rep
            flipped = torch.sign(update) != torch.sign(grad)
            gains = torch.where(flipped, gains + 0.2, gains * 0.8 + 0.01)
            update = momentum * update - lr * gains * grad
            Y += update
            Y -= Y.mean(dim=0, dtype=torch.float64).to(Y.dtype)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Y


def tsne(X, perplexity: float = 30.0, seed: int = 42, init=None, n_iter: int = 500,
         early_exaggeration_iter: int = 250, early_exaggeration: float = 12.0, device: str | None = None,
         progress: bool = False, return_kl: bool = False, timings: dict | None = None, threads: int | None = 1):
    """(n, d) features -> (n, 2) float32 t-SNE map (openTSNE's defaults).

    ``init`` (n, 2): start from these coordinates at their own scale and skip
    early exaggeration (``n_iter + early_exaggeration_iter`` plain iterations),
    as :func:`core.analysis.maps.projection.fit_tsne` does for aligned maps. ``device``
    "cpu" | "cuda" | None (CUDA when available). With ``return_kl`` returns
    ``(map, KL divergence)``. ``timings``, a dict, receives the seconds of each
    stage (knn, affinities, start, layout). ``threads``: torch's CPU threads for
    the layout (default 1: its many small steps ran 5x slower per iteration on 2
    threads of a busy 2-core machine; None keeps torch's setting). Inputs are assumed validated
    (:func:`core.analysis.maps.projection.check_features`).
    """
    dev = torch.device(device or default_device())
    lap = _Laps(dev, timings)
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = len(X)
    k = min(n - 1, int(3 * perplexity))
    searched = {}
    idx, d2 = knn(X, k, device=dev.type, stats=searched)
    lap("knn")
    if timings is not None and searched:
        timings["knn_rows_searched_again"] = searched["rows_searched_again"]
    rows, cols, P = joint_affinities(idx, d2, perplexity, dev)
    lap("affinities")
    if init is None:
        with warnings.catch_warnings():  # X may be a read-only view of the cache; pca_start only reads it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            Y = pca_start(torch.as_tensor(X, device=dev), seed)
        phases = [(early_exaggeration_iter, early_exaggeration, 0.5), (n_iter, 1.0, 0.8)]
    else:
        Y = torch.as_tensor(np.asarray(init, dtype=np.float64) - np.mean(init, axis=0), device=dev).float()
        phases = [(early_exaggeration_iter + n_iter, 1.0, 0.8)]
    lap("start")
    before = torch.get_num_threads()
    if dev.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        Y = optimise(Y.contiguous(), rows, cols, P, phases, progress)
    finally:
        torch.set_num_threads(before)
    out = Y.cpu().numpy().astype(np.float32)
    lap("layout")
    return (out, kl_divergence(Y, rows, cols, P)) if return_kl else out


class _Laps:
    """Seconds per stage into ``timings`` (synchronising CUDA so each stage is its own)."""

    def __init__(self, device, timings):
        import time

        self.clock, self.device, self.timings = time.perf_counter, device, timings
        self.last = self.clock()

    def __call__(self, stage):
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = self.clock()
        self.timings[stage] = round(now - self.last, 3)
        self.last = now
