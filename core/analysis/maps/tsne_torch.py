"""t-SNE in torch with openTSNE's algorithm and defaults: FFT-interpolated
repulsion (Linderman et al. 2019, "FIt-SNE"), so it runs on a GPU and on the CPU.

Steps, each as openTSNE 1.0 does them:

1. exact kNN, k = 3 x perplexity (CPU: :func:`core.analysis.knn.knn`; CUDA:
   :func:`device_knn`, TF32 products re-ranked in float32 and certified, the
   result left on the GPU, no host sync inside its loop);
2. affinities P (:mod:`core.analysis.maps.affinities`): Gaussian bandwidths by
   binary search on each point's entropy (tolerance 1e-8, at most 200 steps,
   each row shifted by its smallest distance so nothing underflows, unlike
   openTSNE 1.0.4), symmetrised ``P = (P + P.T) / 2``, normalised to 1;
3. PCA start rescaled to standard deviation 1e-4 with 1% jitter;
4. gradient descent with gains (+0.2 / x0.8, min 0.01), momentum 0.8 (openTSNE
   1.0.4's ``initial_momentum`` and ``final_momentum``) and each point's step
   capped at length 5 (its ``max_step_norm``): early exaggeration 12 for 250
   iterations (learning rate N / 12), then 500 at exaggeration 1 (learning
   rate N); the map is re-centred after every step;
5. attraction from the sparse P; repulsion on a square grid spanning the map
   with ``max(50, map width)`` boxes (rounded up to an FFT-friendly count)
   and 3 interpolation nodes per box: Lagrange weights spread each point's
   charges ``[1, y1, y2, |y|^2]`` onto the nodes, one FFT convolution with the
   squared Cauchy kernel gives the potentials, the same weights read them
   back. The normalisation Z and the KL divergence are summed in float64.

Without overhead (issue 24): the grid follows the map's bounds every
iteration on the device, but its box count is chosen only every
:data:`REFRESH` iterations (from the width then, plus the growth since the
last look), so shapes stay fixed between looks: cuFFT reuses its plans, the
loop never waits for the GPU except at those looks, and on CUDA each block of
iterations can be replayed as one CUDA graph (:func:`optimise`, ``graphs``).

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
from core.analysis.maps import affinities
from core.analysis.maps.affinities import check_perplexity, joint

N_INTERPOLATION = 3
MIN_BOXES = 50


# ---------------------------------------------------------------- neighbours


def device_knn(X: torch.Tensor, k: int, precision: str | None = None, chunk_rows: int | None = None,
               margin: int = 32, stats: dict | None = None, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest rows of ``X`` (n, d) (a tensor, searched where it lies),
    each row excluding itself: ``(indices int64, squared distances float32)``
    tensors (n, k) on X's device, nearest first.

    :func:`core.analysis.knn.knn`'s certified search, kept on the device: each
    chunk's products run in ``precision`` ("tf32" on CUDA by default, "bf16", or
    "fp32"), its ``k + margin`` candidates are re-ranked in float32 and a row is
    certified when the rounding bound shows no other point can beat its k-th
    distance. Nothing is copied to the host inside the loop; the rows that failed
    the certificate are searched again in float32 after it (one sync).
    ``chunk_rows`` (default: 2^28 distances per chunk on CUDA, 2^24 on the CPU).
    ``block``: select the candidates in two rounds, first within blocks of this
    many columns, then among the blocks' winners, instead of one top-k over rows
    as wide as X (which dominated the 1M search on an H200: 37 s for ~1.5 PFLOP
    of products); bench/gpu_survey.py measures both. ``stats`` receives
    ``rows_searched_again``."""
    dev = X.device
    if precision is None:
        precision = "tf32" if dev.type == "cuda" else "fp32"
    u = {"bf16": 2.0 ** -8, "tf32": 2.0 ** -11, "fp32": 0.0}[precision]
    n, k = len(X), int(k)
    if not 0 < k < n:
        raise ValueError(f"k={k} neighbours asked among {n} points")
    Xc = (X.float() - X.float().mean(dim=0)).contiguous()  # smaller norms, smaller rounding error
    norms = (Xc * Xc).sum(dim=1)
    Xr = Xc.to(torch.bfloat16) if precision == "bf16" else Xc
    c = min(n - 1, k + margin) if u else k
    step = chunk_rows or max(16, (1 << (28 if dev.type == "cuda" else 24)) // n)
    idx = torch.empty((n, k), dtype=torch.int64, device=dev)
    dist = torch.empty((n, k), dtype=torch.float32, device=dev)
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    bound_scale = 1.25 * 6 * u * float(norms.max().sqrt()) if u else 0.0  # one sync, before the loop
    col_norms = norms
    if block:  # pad the columns to whole blocks with points at infinite distance
        block = min(int(block), n)
        pad = -n % block
        Xr = torch.cat([Xr, Xr.new_zeros(pad, Xr.shape[1])])
        col_norms = torch.cat([norms, norms.new_full((pad,), float("inf"))])
        offsets = (torch.arange((n + pad) // block, device=dev) * block)[None, :, None]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for s0 in range(0, n, step):
            s1 = min(n, s0 + step)
            Q = Xc[s0:s1]
            prod = (Q.to(torch.bfloat16) @ Xr.T).float() if precision == "bf16" else Q @ Xr.T
            D = prod.mul_(-2).add_(col_norms[None, :]).add_(norms[s0:s1, None]).clamp_(min=0)
            del prod
            D[torch.arange(s1 - s0, device=dev), torch.arange(s0, s1, device=dev)] = float("inf")
            if block:
                v, j = torch.topk(D.view(s1 - s0, -1, block), min(c, block), dim=2, largest=False, sorted=False)
                del D
                j = (j + offsets).reshape(s1 - s0, -1)
                approx, o = torch.topk(v.reshape(s1 - s0, -1), c, dim=1, largest=False, sorted=True)
                cand = torch.gather(j, 1, o)
                del v, j
            else:
                approx, cand = torch.topk(D, c, dim=1, largest=False, sorted=True)
                del D
            if not u:
                idx[s0:s1], dist[s0:s1] = cand, approx
                continue
            exact = ((Q[:, None, :] - Xc[cand]) ** 2).sum(dim=2)
            d, order = torch.topk(exact, k, dim=1, largest=False, sorted=True)
            idx[s0:s1], dist[s0:s1] = torch.gather(cand, 1, order), d
            if c < n - 1:
                failed[s0:s1] = approx[:, -1] - bound_scale * norms[s0:s1].sqrt() <= d[:, -1]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    redo = torch.nonzero(failed).flatten()  # the one sync
    if stats is not None:
        stats["rows_searched_again"] = len(redo)
    for s0 in range(0, len(redo), step):
        r = redo[s0:s0 + step]
        D = (Xc[r] @ Xc.T).mul_(-2).add_(norms[None, :]).add_(norms[r, None]).clamp_(min=0)
        D[torch.arange(len(r), device=dev), r] = float("inf")
        d, i = torch.topk(D, k, dim=1, largest=False, sorted=True)
        idx[r], dist[r] = i, d
    return idx, dist


def approximate_knn(X: torch.Tensor, k: int, clusters: int | None = None, probes: int = 8, seed: int = 0,
                    iterations: int = 8, chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate ``k`` nearest rows of ``X`` (n, d) (each excluding itself), for
    sizes where the exact search's n^2 d products cost too much (10M points).

    An inverted file in torch: k-means (``iterations`` Lloyd steps on a sample of
    256 points per centroid) into ``clusters`` cells (default ~sqrt(n)), then each
    cell's points are searched exactly among the points of the ``probes`` cells
    whose centroids are nearest its own (one product per cell, in TF32 on CUDA,
    the kept distances recomputed in float32). Recall is measured, not guaranteed
    (bench/gpu_survey.py): a point near a cell's border can have neighbours in a
    cell not probed. On 20,000 clustered 768-d points (CPU) recall@10 was 0.64 /
    0.78 / 0.88 probing 8 / 16 / 32 of 141 cells: probe a good share of the cells. Returns ``(indices int64, squared distances float32)`` (n, k)
    tensors on X's device, nearest first."""
    dev = X.device
    n, k = len(X), int(k)
    clusters = int(clusters or max(1, round(n ** 0.5)))
    probes = min(probes, clusters)
    g = torch.Generator(device="cpu").manual_seed(seed)
    sample = torch.randperm(n, generator=g)[:min(n, 256 * clusters)].to(dev)
    C = X[sample[torch.randperm(len(sample), generator=g)[:clusters].to(dev)]].float().clone()
    step = chunk_rows or max(16, (1 << 28 if dev.type == "cuda" else 1 << 22) // clusters)

    def nearest_centroid(rows):
        out = torch.empty(len(rows), dtype=torch.int64, device=dev)
        cn = (C * C).sum(dim=1)
        for s0 in range(0, len(rows), step):
            Q = X[rows[s0:s0 + step]].float()
            out[s0:s0 + step] = (cn[None, :] - 2 * Q @ C.T).argmin(dim=1)
        return out

    Xs = X[sample].float()
    for _ in range(iterations):  # Lloyd on the sample; empty cells keep their centroid
        a = nearest_centroid(sample)
        sums = torch.zeros_like(C).index_add_(0, a, Xs)
        counts = torch.bincount(a, minlength=clusters).to(C.dtype)[:, None]
        C = torch.where(counts > 0, sums / counts.clamp(min=1), C)
    del Xs
    cell = nearest_centroid(torch.arange(n, device=dev))
    order = torch.argsort(cell)
    counts = torch.bincount(cell, minlength=clusters).cpu().tolist()  # one sync: cell sizes for the loop
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    cn = (C * C).sum(dim=1)
    between = cn[None, :] - 2 * C @ C.T + cn[:, None]
    between.fill_diagonal_(-1.0)  # a cell's own points come first among its candidates
    near_cells = torch.topk(between, probes, dim=1, largest=False).indices.cpu().tolist()
    idx = torch.empty((n, k), dtype=torch.int64, device=dev)
    dist = torch.empty((n, k), dtype=torch.float32, device=dev)
    members = [order[starts[c]:starts[c + 1]] for c in range(clusters)]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for c in range(clusters):
            q = members[c]
            if not len(q):
                continue
            cand = torch.cat([members[o] for o in near_cells[c]])
            if len(cand) <= k:  # too few candidates in the probed cells: search every point
                cand = torch.arange(n, device=dev)
                near_cells[c] = [-1]
            Cx = X[cand].float()
            cx = (Cx * Cx).sum(dim=1)
            rows = chunk_rows or max(16, (1 << 28 if dev.type == "cuda" else 1 << 22) // len(cand))
            for s0 in range(0, len(q), rows):
                qq = q[s0:s0 + rows]
                Q = X[qq].float()
                D = cx[None, :] - 2 * Q @ Cx.T
                if near_cells[c][0] == c:  # own cell first: row i is candidate s0 + i
                    r = torch.arange(len(qq), device=dev)
                    D[r, s0 + r] = float("inf")
                else:  # all points searched (too few candidates)
                    D[cand[None, :] == qq[:, None]] = float("inf")
                j = torch.topk(D, k, dim=1, largest=False, sorted=False).indices
                nb = cand[j]
                d = ((Q[:, None, :] - X[nb].float()) ** 2).sum(dim=2)  # float32, not TF32
                d, o = torch.sort(d, dim=1)
                idx[qq], dist[qq] = torch.gather(nb, 1, o), d
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return idx, dist


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


def _kernel_fft(N: int, h, device, dtype) -> torch.Tensor:
    """rfft2 of the squared Cauchy kernel 1 / (1 + r^2)^2 on a (2N, 2N) circulant
    grid of node offsets (spacing ``h``, a number or a 0-d device tensor), for
    linear convolution of N x N grids."""
    r = torch.arange(2 * N, device=device, dtype=dtype)
    off = torch.where(r <= N, r, 2 * N - r) * h
    K = 1.0 / (1.0 + off[:, None] ** 2 + off[None, :] ** 2) ** 2
    return torch.fft.rfft2(K)


def repulsion(Y: torch.Tensor, boxes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Repulsive gradient (n, 2) and Z = sum over pairs i != j of 1 / (1 + |y_i - y_j|^2)
    (a float64 0-d tensor, left on the device), by FFT interpolation on a grid
    spanning the map with ``boxes`` boxes per side. ``boxes`` None: openTSNE's
    count for the map's width, ``n_boxes(width)`` (one host sync to read it); given, the
    call never waits for the device, and its shapes (and so cuFFT's plans) depend
    on ``boxes`` only."""
    if boxes is None:
        lo, hi = (float(v) for v in torch.stack([Y.min(), Y.max()]).tolist())
        boxes = n_boxes(hi - lo)
    n = len(Y)
    p = N_INTERPOLATION
    lo, hi = Y.min(), Y.max()
    width = (hi - lo).clamp(min=1e-12) / boxes  # box side, a device tensor
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


def attraction(Y: torch.Tensor, rows, cols, P, directed: bool = False) -> torch.Tensor:
    """Attractive gradient (n, 2): sum_j P_ij (y_i - y_j) / (1 + |y_i - y_j|^2).
    ``directed``: (rows, cols, P) are :func:`core.analysis.maps.affinities.directed`
    edges, each pulling both its ends."""
    diff = Y.index_select(0, rows) - Y.index_select(0, cols)  # index_select: ~2x faster than Y[rows] on the CPU
    w = P / (1 + (diff * diff).sum(dim=1))
    force = diff.mul_(w[:, None])
    grad = torch.zeros_like(Y).index_add_(0, rows, force)
    return grad.index_add_(0, cols, force, alpha=-1) if directed else grad


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


REFRESH = 10  # iterations between looks at the map's width (the only host syncs of the layout)
MAX_STEP = 5.0  # openTSNE 1.0.4's max_step_norm: no point moves further in one step
MOMENTUM = 0.8  # openTSNE 1.0.4's, in both phases
KNN_OPTIONS: dict = {}  # device_knn's chunk_rows / block for tsne(): set from a measurement (bench/gpu_survey.py)
DIRECTED_FROM = 2_000_000  # points from which P stays as directed edges (memory: see affinities.directed)


def _step(Y, update, gains, rows, cols, P, boxes: int, exaggeration: float, momentum: float, lr: float,
          directed: bool = False):
    """One gradient step, in place on ``Y``, ``update`` and ``gains`` (no host sync)."""
    rep, _ = repulsion(Y, boxes)
    grad = exaggeration * attraction(Y, rows, cols, P, directed) - rep
    flipped = torch.sign(update) != torch.sign(grad)
    gains.copy_(torch.where(flipped, gains + 0.2, gains * 0.8 + 0.01))
    update.mul_(momentum).sub_(lr * gains * grad)
    norm = update.norm(dim=1, keepdim=True)
    update.mul_((MAX_STEP / norm.clamp(min=1e-12)).clamp(max=1.0))
    Y.add_(update)
    Y.sub_(Y.mean(dim=0, dtype=torch.float64).to(Y.dtype))


def next_boxes(width: float, previous_width: float | None = None, current: int | None = None) -> int:
    """The grid's box count for the next :data:`REFRESH` iterations: openTSNE's count
    for the width the map will reach if it keeps growing as it did since the
    last look (``previous_width``), so a box stays at most about one map unit
    wide. The ``current`` count is kept while it is enough and at most 25% more
    than needed (fewer new shapes: fewer cuFFT plans and CUDA graph captures)."""
    growth = max(0.0, width - previous_width) if previous_width is not None else 0.0
    needed = n_boxes(width + 1.5 * growth)
    if current is not None and needed <= current <= max(MIN_BOXES, 1.25 * needed):
        return current
    return needed


def optimise(Y, rows, cols, P, phases, progress: bool = False, graphs: bool | None = None,
             refresh: int = REFRESH, directed: bool = False, stats: dict | None = None) -> torch.Tensor:
    """openTSNE's gradient descent on ``Y`` (n, 2) float32, in place. ``phases``:
    ``[(iterations, exaggeration, momentum), ...]``; gains and the update carry
    over between phases; learning rate N / exaggeration; steps capped at
    :data:`MAX_STEP`. The map's width is read every ``refresh`` iterations (one
    host sync) to size the grid (:func:`next_boxes`). ``graphs``: replay each
    block of iterations as a captured CUDA graph (None: on CUDA, falling back to
    plain launches if capture fails; ignored elsewhere). ``directed``: P's edges
    are :func:`core.analysis.maps.affinities.directed` ones. ``stats``, a dict,
    receives ``looks`` (host syncs), ``graph_replays`` and ``graph_captures``."""
    n = len(Y)
    counts = {"looks": 0, "graph_replays": 0, "graph_captures": 0}
    update = torch.zeros_like(Y)
    gains = torch.ones_like(Y)
    use_graphs = Y.device.type == "cuda" and graphs is not False
    captured: dict = {}  # the latest graph only: (boxes, phase) -> graph; all share one memory pool
    pool = torch.cuda.graph_pool_handle() if use_graphs else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(ph[0] for ph in phases), desc="t-SNE (torch): layout", unit="it", file=sys.stderr,
                   leave=False)
    previous, boxes = None, None
    for phase, (iterations, exaggeration, momentum) in enumerate(phases):
        lr = n / exaggeration
        done = 0
        while done < iterations:
            width = float(Y.max() - Y.min())  # the look: one host sync per block
            counts["looks"] += 1
            boxes = next_boxes(width, previous, boxes)
            previous = width
            block = min(refresh, iterations - done)
            args = (Y, update, gains, rows, cols, P, boxes, exaggeration, momentum, lr, directed)
            if use_graphs:
                try:
                    graph = captured.get((boxes, phase))
                    if graph is None:
                        captured.clear()
                        graph = captured[(boxes, phase)] = _capture(args, pool)
                        counts["graph_captures"] += 1
                    for _ in range(block):
                        graph.replay()
                    counts["graph_replays"] += block
                except RuntimeError as e:  # capture unsupported here: plain launches from now on
                    warnings.warn(f"CUDA graph capture failed ({e}); running the layout without graphs")
                    use_graphs = False
                    captured.clear()
                    continue  # redo this block without graphs (replays that ran are kept)
            else:
                for _ in range(block):
                    _step(*args)
            done += block
            if bar is not None:
                bar.update(block)
    if bar is not None:
        bar.close()
    if stats is not None:
        stats.update(counts)
    return Y


def _capture(args, pool=None):
    """A CUDA graph of one :func:`_step` on these (static) tensors, after a warm-up
    step on a side stream (which is discarded: the state is restored)."""
    Y, update, gains = args[:3]
    saved = [t.clone() for t in (Y, update, gains)]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _step(*args)  # warm-up: allocations, cuFFT plans
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        _step(*args)
    for t, s in zip((Y, update, gains), saved):  # capture does not run the kernels, warm-up did: undo it
        t.copy_(s)
    return graph


def tsne(X, perplexity: float = 30.0, seed: int = 42, init=None, n_iter: int = 500,
         early_exaggeration_iter: int = 250, early_exaggeration: float = 12.0, device: str | None = None,
         progress: bool = False, return_kl: bool = False, timings: dict | None = None, threads: int | None = 1,
         graphs: bool | None = None, neighbours=None):
    """(n, d) features -> (n, 2) float32 t-SNE map (openTSNE's defaults).

    ``init`` (n, 2): start from these coordinates at their own scale and skip
    early exaggeration (``n_iter + early_exaggeration_iter`` plain iterations),
    as :func:`core.analysis.maps.projection.fit_tsne` does for aligned maps. ``device``
    "cpu" | "cuda" | None (CUDA when available). With ``return_kl`` returns
    ``(map, KL divergence)``. ``timings``, a dict, receives the seconds of each
    stage (knn, affinities, start, layout). ``threads``: torch's CPU threads for
    the layout (default 1: its many small steps ran 5x slower per iteration on 2
    threads of a busy 2-core machine; None keeps torch's setting). ``graphs``:
    CUDA graphs for the layout (see :func:`optimise`). ``X`` may be a tensor (the
    run stays on its device); ``neighbours``: ``(idx, d2)`` (n, k) found by the
    caller (e.g. :func:`approximate_knn`), k >= 3 x perplexity. From
    :data:`DIRECTED_FROM` points P stays as directed edges (no symmetric matrix
    built; ``return_kl`` builds it). A perplexity above
    (n - 1) / 3 is a :class:`~core.analysis.maps.quality.ProjectionError`; inputs
    are otherwise assumed validated (:func:`core.analysis.maps.projection.check_features`).
    """
    dev = torch.device(device or default_device())
    lap = _Laps(dev, timings)
    if torch.is_tensor(X):  # features already on a device (e.g. generated there at survey size)
        Xd, dev = X, X.device
        lap = _Laps(dev, timings)
    else:
        X = np.ascontiguousarray(X, dtype=np.float32)
        with warnings.catch_warnings():  # X may be a read-only view of the cache; nothing writes it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            Xd = torch.as_tensor(X).to(dev) if dev.type == "cuda" else None
    n = len(X)
    check_perplexity(perplexity, n)
    k = min(n - 1, int(3 * perplexity))
    searched = {}
    if neighbours is not None:  # (idx, d2) searched by the caller, e.g. approximate_knn
        idx, d2 = neighbours
    elif Xd is not None:  # neighbours and P stay on the device
        idx, d2 = device_knn(Xd, k, stats=searched, **KNN_OPTIONS)
    else:
        idx, d2 = knn(X, k, device="cpu", stats=searched)
    lap("knn")
    if timings is not None and searched:
        timings["knn_rows_searched_again"] = searched["rows_searched_again"]
    directed = n >= DIRECTED_FROM and not return_kl
    rows, cols, P = (affinities.directed if directed else joint)(idx, d2, perplexity, dev)
    del idx, d2
    lap("affinities")
    if init is None:
        with warnings.catch_warnings():  # X may be a read-only view of the cache; pca_start only reads it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            Y = pca_start(Xd if Xd is not None else torch.as_tensor(X, device=dev), seed)
        # momentum 0.8 in both phases: openTSNE 1.0.4's defaults (initial_momentum = final_momentum = 0.8)
        phases = [(early_exaggeration_iter, early_exaggeration, MOMENTUM), (n_iter, 1.0, MOMENTUM)]
    else:
        Y = torch.as_tensor(np.asarray(init, dtype=np.float64) - np.mean(init, axis=0), device=dev).float()
        phases = [(early_exaggeration_iter + n_iter, 1.0, MOMENTUM)]
    del Xd
    lap("start")
    before = torch.get_num_threads()
    if dev.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        Y = optimise(Y.contiguous(), rows, cols, P, phases, progress, graphs=graphs, directed=directed)
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
