"""Maps of a feature space: t-SNE, UMAP and PCA as pure functions on arrays.

Every method takes an ``(n, d)`` float array and returns an ``(n, 2)`` float32
array; it is seeded, so the same call gives the same map. ``fit_*`` returns a
:class:`Map` that also places new points (``Map.transform``) without
recomputing the map; ``attach`` makes one from a map read back from the cache.
``init=`` starts a map from given 2-D coordinates: pass the generic model's
map when computing the finetuned one and the same galaxy lands roughly in the
same place unless finetuning moved it.

The quality numbers (kNN preservation, trustworthiness, kNN accuracy,
silhouette) live in :mod:`core.analysis.maps.quality` and are re-exported here.

openTSNE, umap-learn, scikit-learn and torch are imported inside the functions
that compute or place a map (openTSNE's index subclasses live in
:mod:`core.analysis.maps.tsne_neighbours`), so ``params_for`` and reading a cached map
(:mod:`core.analysis.maps.store`) import none of them.

>>> Y = tsne(X)                       # paper defaults: perplexity 30, seed 42
>>> m = fit_tsne(X); m.transform(X_new).shape
(m, 2)
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from core.analysis.maps.quality import (  # noqa: F401  (re-exported: projection is the public door)
    MIN_POINTS, ProjectionError, check_features, exact_knn, feature_space_quality, knn_preservation, map_quality,
    trustworthiness,
)

METHODS = ("tsne", "umap", "pca")

__all__ = [
    "METHODS", "Map", "ProjectionError", "fit", "fit_tsne", "fit_umap", "fit_pca", "tsne", "umap", "pca", "attach",
    "params_for", "check_features", "knn_preservation", "trustworthiness", "map_quality",
    "feature_space_quality", "exact_knn",
]


def _check_init(init, n: int) -> np.ndarray | None:
    if init is None:
        return None
    init = np.asarray(init, dtype=np.float64)
    if init.shape != (n, 2):
        raise ProjectionError(f"init must be (n, 2) = ({n}, 2) starting coordinates; got shape {init.shape}")
    if not np.isfinite(init).all():
        raise ProjectionError("init has NaN or infinite coordinates")
    return init


def _n_jobs(n_jobs: int | None, n: int) -> int:
    """None: every core from 1,000 points up, one below (a small map is done before
    threads pay off, and on a busy machine their spin-waits made 300 points take 10 s
    instead of 0.4 s; on 2 cores, 1,000 points took 1.0 s on two threads against 3.0 s
    on one, 3,000 points 4.0 s against 7.6 s). -1: every core."""
    if n_jobs is None:
        return (os.cpu_count() or 1) if n >= 1000 else 1
    return (os.cpu_count() or 1) if n_jobs == -1 else max(1, int(n_jobs))


@dataclass
class Map:
    """A fitted 2-D map: ``embedding`` (n, 2) float32 and ``transform(X_new)``,
    which places new points into this map without moving the old ones."""

    method: str
    params: dict
    embedding: np.ndarray
    dim: int
    _place: Callable = field(repr=False)
    implementation: str = ""  # which code made it, e.g. "openTSNE 1.0.4" or "torch (cuda)"

    def transform(self, X_new) -> np.ndarray:
        """``(m, d)`` new features -> ``(m, 2)`` float32 coordinates in this map."""
        X_new = check_features(X_new, "X_new", min_points=1, dim=self.dim)
        return np.asarray(self._place(X_new), dtype=np.float32)


# ---------------------------------------------------------------- t-SNE


class _Progress:
    """An openTSNE callback that drives a tqdm bar (returns False: keep going).
    openTSNE counts iterations per phase, so a smaller count starts a new phase."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, leave=False)
        self.last = 0

    def __call__(self, iteration, error, embedding):
        self.bar.update(iteration - self.last if iteration > self.last else iteration)
        self.last = iteration
        return False

    def close(self):
        self.bar.close()


def fit_tsne(
    X,
    perplexity: float = 30.0,
    seed: int = 42,
    init=None,
    n_iter: int = 500,
    early_exaggeration_iter: int = 250,
    n_jobs: int | None = None,
    progress: bool = False,
    device: str | None = None,
    implementation: str | None = None,
) -> Map:
    """t-SNE with openTSNE's algorithm on exact neighbours: openTSNE itself or our
    torch port of it (:mod:`core.analysis.maps.tsne_torch`), both on our affinities
    P (:mod:`core.analysis.maps.affinities`: every row at the asked perplexity).

    ``device``: "cuda" | "cpu" | None (= CUDA when available). ``implementation``
    "openTSNE" | "torch" | None (= the faster one on that device: see
    :func:`implementation_for`). ``Map.implementation`` says which ran.

    Defaults mirror the paper (perplexity 30, seed 42, PCA initialisation).
    ``init`` (n, 2) is a map of the same points to start from, at its own scale
    (e.g. the generic model's t-SNE map): the optimisation then runs without
    early exaggeration, so points stay put unless their neighbourhoods changed.
    ``transform`` uses openTSNE's placement of new points (optimised against
    the fixed map).
    """
    X = check_features(X)
    n = len(X)
    from core.analysis.maps.affinities import check_perplexity

    check_perplexity(perplexity, n)
    init = _check_init(init, n)
    jobs = _n_jobs(n_jobs, n)
    impl = implementation_for(n, device, implementation)
    if impl != "openTSNE":
        return _fit_tsne_torch(X, perplexity, seed, init, n_iter, early_exaggeration_iter, jobs, progress, impl)
    from openTSNE import TSNE, initialization

    from core.analysis.maps.affinities import joint_csr
    from core.analysis.maps.tsne_neighbours import MapNeighbours

    bar = _Progress(early_exaggeration_iter + n_iter, "t-SNE: neighbours") if progress else None
    # our P (openTSNE's own calibration underflows on far-apart features: core.analysis.maps.affinities)
    idx, d2 = exact_knn(X, min(n - 1, int(3 * perplexity)))
    aff = MapNeighbours(X, perplexity, jobs, P=joint_csr(idx, d2, perplexity))
    if init is None:
        start = initialization.pca(X, n_components=2, random_state=seed)
        phases = dict(early_exaggeration_iter=early_exaggeration_iter, n_iter=n_iter)
    else:
        # An aligned map keeps the reference map's scale and skips early exaggeration:
        # exaggeration lets whole clusters wander (a 4-blob map kept one axis with r=0.16),
        # without it a galaxy moves only as far as its new neighbours pull it (r=0.999 for
        # barely changed features, kNN preservation within 0.02 of an unaligned map after
        # a big change; measured on 300-5,000 points).
        start = init - init.mean(axis=0)
        phases = dict(early_exaggeration_iter=0, early_exaggeration=1, n_iter=early_exaggeration_iter + n_iter)
    if bar:
        bar.bar.set_description("t-SNE: layout")
    model = TSNE(
        perplexity=perplexity, **phases,
        negative_gradient_method=gradient_method(n), n_jobs=jobs, random_state=seed,
        callbacks=bar, callbacks_every_iters=10,
    )
    quiet = logging.getLogger("openTSNE")  # it warns that a wide start "may" converge poorly
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        embedding = model.fit(affinities=aff, initialization=start)
    finally:
        quiet.setLevel(level)
        if bar:
            bar.close()

    # openTSNE's transform first recentres the map on its bounding box, in place;
    # doing it now keeps placed points and the returned map in one frame
    embedding -= (embedding.max(axis=0) + embedding.min(axis=0)) / 2
    params = dict(perplexity=perplexity, seed=seed, n_iter=n_iter, early_exaggeration_iter=early_exaggeration_iter)
    return Map("tsne", params, np.asarray(embedding, dtype=np.float32), X.shape[1], _placer(embedding),
               implementation=f"openTSNE {_version('openTSNE')}")


# openTSNE's gradient method: FFT interpolation from this many points up, Barnes-Hut
# below. CPU time per iteration, one thread, 750 iterations of bench/projection.py's
# features: 2,000 points FFT 10.9 ms, BH 6.6 ms; 8,000 (first 100 iterations) FFT
# 11 ms, BH 43 ms. openTSNE's own "auto" switches at 10,000: the slow corner of issue 13.
FFT_FROM = 5000


def gradient_method(n: int) -> str:
    """openTSNE's negative_gradient_method for ``n`` points ("fft" or "bh")."""
    return "fft" if n >= FFT_FROM else "bh"


def implementation_for(n: int, device: str | None = None, implementation: str | None = None) -> str:
    """Which t-SNE code maps ``n`` points: "torch-cuda", "torch-cpu" or "openTSNE".

    ``device`` "cuda" | "cpu" | None (= CUDA when available); ``implementation``
    "openTSNE" | "torch" | None (= the faster: the torch port on a GPU, openTSNE
    on the CPU, where its compiled loops take half the torch port's time per
    iteration: 11 vs 22 ms CPU time at 8,000 points, one thread)."""
    import torch

    if implementation not in (None, "openTSNE", "torch"):
        raise ProjectionError(f"t-SNE implementation must be openTSNE or torch; got {implementation!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ProjectionError(f"device must be cpu or cuda; got {device!r}")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProjectionError("device cuda asked for, but torch sees no GPU here; use device='cpu'")
        return "openTSNE" if implementation == "openTSNE" else "torch-cuda"
    return "torch-cpu" if implementation == "torch" else "openTSNE"


def _fit_tsne_torch(X, perplexity, seed, init, n_iter, early_exaggeration_iter, jobs, progress, impl) -> Map:
    from openTSNE import TSNEEmbedding

    from core.analysis.maps import tsne_torch
    from core.analysis.maps.tsne_neighbours import MapNeighbours

    device = "cuda" if impl == "torch-cuda" else "cpu"
    Y = tsne_torch.tsne(X, perplexity=perplexity, seed=seed, init=init, n_iter=n_iter,
                        early_exaggeration_iter=early_exaggeration_iter, device=device, progress=progress)
    Y -= (Y.max(axis=0) + Y.min(axis=0)) / 2  # the frame openTSNE's placement works in (see below)
    params = dict(perplexity=perplexity, seed=seed, n_iter=n_iter, early_exaggeration_iter=early_exaggeration_iter)
    embedding = TSNEEmbedding(Y.astype(np.float64), MapNeighbours(X, perplexity, jobs), random_state=seed, n_jobs=jobs)
    return Map("tsne", params, Y.astype(np.float32), X.shape[1], _placer(embedding),
               implementation=f"torch {_version('torch')} ({device}), openTSNE's algorithm")


def _version(package: str) -> str:
    import importlib.metadata as md

    return md.version(package)


def _placer(embedding):
    # openTSNE's defaults for new points: perplexity 5, median start, 250 small steps
    return lambda X_new: np.asarray(embedding.transform(X_new))


# ---------------------------------------------------------------- UMAP


def fit_umap(
    X,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 42,
    init=None,
    progress: bool = False,
) -> Map:
    """UMAP (umap-learn) on exact neighbours, seeded: with ``random_state`` set
    umap-learn optimises single-threaded, the price of a reproducible map.
    ``init`` (n, 2) starts from given coordinates (umap-learn rescales them);
    its optimiser still moves whole clusters, so alignment holds less tightly
    than t-SNE's on small maps. ``transform`` is umap-learn's."""
    X = check_features(X)
    n = len(X)
    if not 2 <= n_neighbors < n:
        raise ProjectionError(f"n_neighbors must be between 2 and the number of points - 1 ({n - 1}); got {n_neighbors}")
    init = _check_init(init, n)
    import warnings

    import umap as umap_learn

    # Our exact neighbours instead of umap-learn's NN-descent: same map (NN-descent
    # found 99% of them), 3x faster at 17,736 x 768 (3 s + 6 s instead of 30 s)
    index = _UMAPNeighbours(X)
    idx, d2 = exact_knn(X, n_neighbors - 1)
    knn = (np.hstack([np.arange(n)[:, None], idx]), np.hstack([np.zeros((n, 1), np.float32), np.sqrt(d2)]), index)
    reducer = umap_learn.UMAP(
        n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1,
        init="spectral" if init is None else init, verbose=progress, precomputed_knn=knn,
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # umap-learn prints its progress
        # spectral init on tiny or disconnected graphs warns and falls back; the map is still valid
        warnings.simplefilter("ignore", UserWarning)
        Y = reducer.fit_transform(X)
    params = dict(n_neighbors=n_neighbors, min_dist=min_dist, seed=seed)
    return Map("umap", params, np.asarray(Y, dtype=np.float32), X.shape[1], reducer.transform)


class _UMAPNeighbours:
    """The neighbour search umap-learn's transform calls (pynndescent's ``query``), exact."""

    _angular_trees = False

    def __init__(self, X):
        self.X = X

    def query(self, queries, k, epsilon=None):
        idx, d2 = exact_knn(self.X, k, queries=np.asarray(queries, dtype=np.float32))
        return idx.astype(np.int32), np.sqrt(d2)


# ---------------------------------------------------------------- PCA


def fit_pca(X, seed: int = 42, init=None) -> Map:
    """The first two principal components. ``init`` (n, 2) is a map to read the
    same way: the result is rotated/reflected (orthogonal Procrustes, no
    scaling) to best match it, so an aligned PCA map does not flip axes."""
    from sklearn.decomposition import PCA

    X = check_features(X)
    init = _check_init(init, len(X))
    model = PCA(n_components=2, random_state=seed).fit(X)
    Y = model.transform(X).astype(np.float64)
    rot = np.eye(2)
    if init is not None:
        u, _, vt = np.linalg.svd(Y.T @ (init - init.mean(axis=0)))
        rot = u @ vt
    params = dict(seed=seed)
    return Map("pca", params, (Y @ rot).astype(np.float32), X.shape[1], lambda Z: model.transform(Z) @ rot)


# ---------------------------------------------------------------- maps read back


def attach(method: str, X, Y, n_jobs: int | None = None, **params) -> Map:
    """A :class:`Map` for coordinates ``Y`` (n, 2) computed earlier from ``X`` (n, d),
    e.g. read from the cache, so new points can be placed without recomputing it.

    - t-SNE: openTSNE's placement against ``Y`` (as ``fit_tsne(...).transform``);
    - PCA: the same principal axes, turned onto ``Y`` (exact);
    - UMAP: approximate, as umap-learn's transform needs the fitted model: a new
      point goes to the median map position of its ``n_neighbors`` nearest
      points in feature space (where umap-learn's own transform starts it).
    """
    X = check_features(X)
    Y = np.asarray(check_features(Y, "Y"), dtype=np.float64)
    if len(Y) != len(X) or Y.shape[1] != 2:
        raise ProjectionError(f"the map has shape {Y.shape}; it must be ({len(X)}, 2), one point per row of X")
    params = params_for(method, **params)
    if method == "tsne":
        from openTSNE import TSNEEmbedding

        from core.analysis.maps.tsne_neighbours import MapNeighbours

        shift = (Y.max(axis=0) + Y.min(axis=0)) / 2  # see fit_tsne: openTSNE recentres the map
        jobs = _n_jobs(n_jobs, len(X))
        embedding = TSNEEmbedding(Y - shift, MapNeighbours(X, params["perplexity"], jobs),
                                  random_state=params["seed"], n_jobs=jobs)
        inner = _placer(embedding)
        place = lambda X_new: inner(X_new) + shift  # noqa: E731
    elif method == "pca":
        inner = fit_pca(X, seed=params["seed"], init=Y)
        place = inner._place
    else:
        k = min(params["n_neighbors"], len(X))

        def place(X_new):
            near, _ = exact_knn(X, k, queries=X_new)
            return np.median(Y[near], axis=1)

    return Map(method, params, Y.astype(np.float32), X.shape[1], place)


# ---------------------------------------------------------------- one door

_FIT = {"tsne": fit_tsne, "umap": fit_umap, "pca": fit_pca}
_NOT_PARAMS = {"X", "init", "n_jobs", "progress", "device", "implementation"}  # do not change the map, so not part of its key


def params_for(method: str, **given) -> dict:
    """All parameters that determine a ``method`` map: defaults filled in, so
    ``perplexity=30`` and no perplexity give the same cache key. Unknown or
    None-valued options are dropped or rejected with a clear message."""
    if method not in _FIT:
        raise ProjectionError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    sig = inspect.signature(_FIT[method])
    known = {k: p.default for k, p in sig.parameters.items() if k not in _NOT_PARAMS}
    given = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ProjectionError(f"{method} has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    params = dict(known)
    for k, v in given.items():  # 30 and 30.0 must give one key: take the default's type
        try:
            params[k] = type(known[k])(v)
            if params[k] != v:
                raise ValueError
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(type(known[k]), type(known[k]).__name__)
            raise ProjectionError(f"{method} option {k} must be {kind}; got {v!r}") from None
    return params


def fit(method: str, X, init=None, progress: bool = False, **params) -> Map:
    """Fit a ``method`` ("tsne" | "umap" | "pca") map; options as in ``fit_<method>``."""
    params = params_for(method, **params)
    extra = {"progress": progress} if method != "pca" else {}
    return _FIT[method](X, init=init, **params, **extra)


def tsne(X, perplexity: float = 30.0, seed: int = 42, init=None, n_jobs: int | None = None, progress: bool = False,
         device: str | None = None, implementation: str | None = None, **kw) -> np.ndarray:
    """(n, d) features -> (n, 2) float32 t-SNE map; see :func:`fit_tsne`
    (``device`` "cuda" | "cpu" | None = CUDA when available; ``implementation``
    "openTSNE" | "torch" | None = the faster there)."""
    return fit_tsne(X, perplexity=perplexity, seed=seed, init=init, n_jobs=n_jobs, progress=progress, device=device,
                    implementation=implementation, **kw).embedding


def umap(X, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 42, init=None, progress: bool = False) -> np.ndarray:
    """(n, d) features -> (n, 2) float32 UMAP map; see :func:`fit_umap`."""
    return fit_umap(X, n_neighbors=n_neighbors, min_dist=min_dist, seed=seed, init=init, progress=progress).embedding


def pca(X, seed: int = 42, init=None) -> np.ndarray:
    """(n, d) features -> (n, 2) float32 PCA map; see :func:`fit_pca`."""
    return fit_pca(X, seed=seed, init=init).embedding
