"""The numbers shown next to a map: how faithful the map is to its feature space
(kNN preservation, trustworthiness) and how well the feature space separates
the classes (kNN-classifier accuracy, silhouette; overall and per class).

All distances are euclidean and exact. The feature-space neighbours are found
in chunks of rows with one matrix product each, so memory stays ~64 MB
whatever ``n`` (sklearn's ``trustworthiness`` builds an n x n matrix: 2.5 GB
at Galaxy10's 17,736 points).
"""
from __future__ import annotations

import numpy as np

from core.errors import UserError
from core.analysis.knn import neighbours, sq_distances

_CHUNK_ELEMENTS = 1 << 24  # distances held at once: 64 MB of float32


MIN_POINTS = 5


class ProjectionError(UserError, ValueError):
    """Input a map cannot be made from (NaN, too few points, wrong shape); the
    message says what to do. A ValueError for callers, a one-line CLI error."""


def check_features(X, name: str = "X", min_points: int = MIN_POINTS, dim: int | None = None) -> np.ndarray:
    """Validate an ``(n, d)`` feature matrix and return it as C-contiguous float32."""
    try:
        X = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ProjectionError(f"{name} must be a numeric (n, d) array of features: {e}") from None
    if X.ndim != 2:
        hint = " (one feature per point? use X.reshape(-1, 1))" if X.ndim == 1 else ""
        raise ProjectionError(f"{name} must be a 2-D (n, d) array of features; got shape {X.shape}{hint}")
    if X.shape[0] < min_points:
        raise ProjectionError(f"{name} has {X.shape[0]} points; a map needs at least {min_points}")
    if X.shape[1] < 1:
        raise ProjectionError(f"{name} has no feature columns (shape {X.shape})")
    if dim is not None and X.shape[1] != dim:
        raise ProjectionError(f"{name} has {X.shape[1]} features per point but the map was fitted on {dim}")
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ProjectionError(
            f"{name} has {len(rows)} point(s) with NaN or infinite features (first: row {rows[0]}); "
            "drop or impute them before making a map"
        )
    return np.ascontiguousarray(X)



def _features(X, name="X") -> np.ndarray:
    return check_features(X, name)


def _error(message: str) -> Exception:
    return ProjectionError(message)


def _chunks(m: int, n: int):
    step = max(16, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def exact_knn(X, k: int, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours among the rows of ``X`` (float32, (n, d)).

    ``queries=None`` means every row of ``X``, each excluding itself. Returns
    ``(indices int64 (m, k), squared distances float32 (m, k))``, nearest first.
    Runs on the GPU when one is visible (TF32 products re-ranked in float32,
    certified exact), else blocked BLAS products: see :mod:`core.analysis.knn`.
    """
    idx, d2, _ = neighbours(X, k, queries=queries)
    return idx, d2


def _map_neighbours(Y: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(Y).kneighbors(return_distance=False)


def _check_pair(X, Y, k: int):
    X = _features(X, "X")
    Y = _features(Y, "Y")
    if len(X) != len(Y):
        raise _error(f"X has {len(X)} points but the map Y has {len(Y)}; they must be the same points")
    if not 1 <= k < len(X) / 2:
        raise _error(f"k={k} must be at least 1 and below half the number of points ({len(X)})")
    return X, Y


def map_quality(X, Y, k: int = 10, max_points: int = 20_000, seed: int = 0) -> dict:
    """kNN preservation and trustworthiness of map ``Y`` (n, 2) of features ``X`` (n, d).

    - ``knn_preservation``: mean share of each point's ``k`` nearest neighbours
      in feature space that are also among its ``k`` nearest on the map (1 = all kept).
    - ``trustworthiness``: as ``sklearn.manifold.trustworthiness`` (penalises map
      neighbours that are far in feature space; 1 = none).

    One pass computes both. Above ``max_points`` points a seeded sample of
    ``max_points`` points is scored (against all points); ``points`` says how many.
    """
    X, Y = _check_pair(X, Y, k)
    n = len(X)
    queries = np.arange(n)
    if n > max_points:
        queries = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    near_map = _map_neighbours(Y, k)[queries]
    x_norms = np.einsum("ij,ij->i", X, X)
    kept = 0
    penalty = 0.0
    for s in _chunks(len(queries), n):
        rows = queries[s]
        D = sq_distances(X[rows], X, x_norms)
        D[np.arange(len(rows)), rows] = np.inf
        near_x = np.argpartition(D, k - 1, axis=1)[:, :k]
        nm = near_map[s]
        kept += int((nm[:, :, None] == near_x[:, None, :]).any(-1).sum())
        # rank of each map neighbour in feature space = 1 + points strictly closer
        d_nm = np.take_along_axis(D, nm, axis=1)
        for j in range(k):
            rank = np.count_nonzero(D < d_nm[:, j : j + 1], axis=1) + 1
            penalty += float(np.maximum(rank - k, 0).sum())
    m = len(queries)
    trust = 1.0 - penalty * 2.0 / (m * k * (2.0 * n - 3.0 * k - 1.0))
    return {"k": int(k), "knn_preservation": kept / (m * k), "trustworthiness": trust, "points": int(m)}


def knn_preservation(X, Y, k: int = 10, **kw) -> float:
    """Mean share of each point's ``k`` feature-space neighbours kept among its
    ``k`` map neighbours; see :func:`map_quality`."""
    return map_quality(X, Y, k, **kw)["knn_preservation"]


def trustworthiness(X, Y, k: int = 10, **kw) -> float:
    """sklearn's trustworthiness, computed in chunks; see :func:`map_quality`."""
    return map_quality(X, Y, k, **kw)["trustworthiness"]


def feature_space_quality(
    X, labels, class_names=None, k: int = 10, max_silhouette: int = 4000, seed: int = 42
) -> dict:
    """How well a feature space separates labelled classes, overall and per class.

    - ``knn_accuracy``: leave-one-out ``k``-nearest-neighbour vote (ties go to
      the class whose neighbours are closer); per class it is that class's recall.
    - ``silhouette``: sklearn's silhouette (euclidean) on a seeded sample of at
      most ``max_silhouette`` points (it is O(n^2)); per class the mean over its
      sampled points. Near 0 or negative = the class is scattered among others.

    ``labels`` (n,) int, -1 = unlabelled (left out). ``class_names[c]`` names
    label ``c``; every named class gets a row (``n`` = 0 and None values if absent).
    Returns ``{"k", "points", "knn_accuracy", "silhouette", "silhouette_points",
    "per_class": [{"label", "class", "n", "knn_accuracy", "silhouette"}]}``.
    """
    from sklearn.metrics import silhouette_samples

    X = _features(X, "X")
    labels = np.asarray(labels)
    if labels.shape != (len(X),) or not np.issubdtype(labels.dtype, np.integer):
        raise _error(f"labels must be {len(X)} integers (one per point, -1 = unlabelled); got {labels.dtype} {labels.shape}")
    keep = labels >= 0
    X, y = X[keep], labels[keep].astype(np.int64)
    classes = np.unique(y)
    if len(classes) < 2 or len(y) <= k:
        raise _error(f"feature-space quality needs more than k={k} labelled points in at least 2 classes; "
                         f"got {len(y)} in {len(classes)}")
    n_classes = max(int(classes.max()) + 1, len(class_names or ()))

    near, _ = exact_knn(X, k)
    votes = np.zeros((len(y), n_classes))
    closeness = 1 + (k - np.arange(k)) / (k * (k + 1))  # bonuses sum to 0.5 < one vote
    np.add.at(votes, (np.arange(len(y))[:, None], y[near]), closeness[None, :])
    correct = votes.argmax(axis=1) == y

    rng = np.random.default_rng(seed)
    sample = np.arange(len(y)) if len(y) <= max_silhouette else np.sort(rng.choice(len(y), max_silhouette, replace=False))
    sil = np.full(len(y), np.nan)
    if len(np.unique(y[sample])) >= 2:
        sil[sample] = silhouette_samples(X[sample], y[sample])

    def mean(v):
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else None

    per_class = []
    for c in range(n_classes):
        members = y == c
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        per_class.append({
            "label": c, "class": name, "n": int(members.sum()),
            "knn_accuracy": float(correct[members].mean()) if members.any() else None,
            "silhouette": mean(sil[members]),
        })
    return {
        "k": int(k), "points": int(len(y)), "knn_accuracy": float(correct.mean()),
        "silhouette": mean(sil), "silhouette_points": int(len(sample)), "per_class": per_class,
    }


def class_knn_change(before: dict, after: dict, names: tuple[str, str] = ("generic", "finetuned")):
    """Per-class kNN accuracy of two feature spaces of the same galaxies, side by side.

    ``before``/``after``: :func:`feature_space_quality` results (e.g. the generic
    and the finetuned checkpoint). Returns a DataFrame with one row per class
    present in either: ``class``, ``n``, ``<names[0]> kNN``, ``<names[1]> kNN``,
    ``change`` (after - before), largest gain first, so the classes finetuning
    separated come on top and those that stayed mixed at the bottom.
    """
    import pandas as pd

    a = {r["class"]: r for r in before.get("per_class", [])}
    b = {r["class"]: r for r in after.get("per_class", [])}
    rows = []
    for name in list(a) + [c for c in b if c not in a]:
        x, y = a.get(name, {}).get("knn_accuracy"), b.get(name, {}).get("knn_accuracy")
        if x is None and y is None:
            continue
        rows.append({"class": name, "n": int(max(a.get(name, {}).get("n", 0), b.get(name, {}).get("n", 0))),
                     f"{names[0]} kNN": x, f"{names[1]} kNN": y,
                     "change": None if x is None or y is None else y - x})
    df = pd.DataFrame(rows, columns=["class", "n", f"{names[0]} kNN", f"{names[1]} kNN", "change"])
    return df.sort_values("change", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
