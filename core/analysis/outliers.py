"""Outlier scores in feature space: which galaxies look like no other.

Two unsupervised scores per galaxy of a features run, each scaled 0-5 as
Astronomaly (Lochner & Bassett 2021) does: min-max over the run, 5 = the
weirdest galaxy, 0 = the most ordinary.

- ``knn``: mean cosine distance to the galaxy's k nearest galaxies (k = 10);
  isolated galaxies score high.
- ``iforest``: scikit-learn's isolation forest on the standardised features
  (seeded); galaxies that random splits isolate quickly score high.

Scores are cached like maps: one parquet per (features run, parameters) under
``<cache>/anomalies/``, written atomically with provenance, computed once under a
file lock. ``score_against`` ranks galaxies of another run (the real photos)
against a reference run without changing the reference's scores.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.store import cache as store
from core.store.compute import cached_parquet, read_parquet
from core.errors import UserError
from core.analysis import knn
from core.analysis.knn import neighbours
from core.analysis.knn_index import get_index

ANOMALY_VERSION = 1
METHODS = {"knn": "kNN distance", "iforest": "isolation forest"}
DEFAULTS = {"k": 10, "n_estimators": 200, "seed": 42}
SCALE_MAX = 5.0


def scale_0_5(raw, lower_is_weirder: bool = False) -> np.ndarray:
    """Astronomaly's ScoreConverter: min-max onto [0, 5], 5 = weirdest. Constant input -> 0."""
    raw = np.asarray(raw, np.float64)
    if lower_is_weirder:
        raw = -raw
    lo, hi = np.nanmin(raw), np.nanmax(raw)
    if not hi > lo:
        return np.zeros(len(raw), np.float32)
    return (SCALE_MAX * (raw - lo) / (hi - lo)).astype(np.float32)


def _unit(X) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _check(X, k: int) -> np.ndarray:
    X = np.asarray(X, np.float32)
    if X.ndim != 2 or len(X) < 3:
        raise UserError(f"outlier scores need at least 3 galaxies with features; got shape {X.shape}")
    if not np.isfinite(X).all():
        raise UserError("features hold NaN or infinite values: extract them again")
    return X


def knn_distance(X, k: int = 10, queries=None, index=None, search: dict | None = None) -> np.ndarray:
    """Mean cosine distance of each row of X (n, d) to its k nearest other rows,
    or of each row of ``queries`` (m, d) to its k nearest rows of X: (n,) or (m,) float64.
    Through the kNN entry point (:func:`core.analysis.knn.neighbours`): exact, or the
    run's cosine ``index`` above the threshold; ``search`` (a dict) receives which."""
    X = _check(X, k)
    k = max(1, min(int(k), len(X) - (queries is None)))
    _, dist, how = neighbours(X, k, queries=queries, metric="cosine", index=index)
    if search is not None:
        search.update(how)
    return dist.astype(np.float64).mean(1)


def _forest(X, n_estimators: int, seed: int):
    from sklearn.ensemble import IsolationForest

    mean, std = X.mean(0), X.std(0)
    std[std == 0] = 1
    forest = IsolationForest(n_estimators=n_estimators, random_state=seed).fit((X - mean) / std)
    return lambda Q: -forest.score_samples((np.asarray(Q, np.float32) - mean) / std)  # higher = weirder


def isolation_forest(X, n_estimators: int = 200, seed: int = 42, queries=None) -> np.ndarray:
    """Isolation-forest outlier score (higher = weirder; sklearn's -score_samples) of
    each row of X (n, d), or of ``queries`` scored by a forest fitted on X."""
    X = _check(X, 3)
    return _forest(X, n_estimators, seed)(X if queries is None else queries).astype(np.float64)


def scores(X, k: int = 10, n_estimators: int = 200, seed: int = 42, index=None,
           search: dict | None = None) -> pd.DataFrame:
    """Both outlier scores of every row of X (n, d): columns ``knn``, ``iforest`` (0-5,
    5 = weirdest) and their raw values ``knn_raw``, ``iforest_raw``. ``index``: the
    run's cosine kNN index (used above the entry point's threshold)."""
    raw_knn = knn_distance(X, k, index=index, search=search)
    raw_forest = isolation_forest(X, n_estimators, seed)
    return pd.DataFrame({"knn": scale_0_5(raw_knn), "iforest": scale_0_5(raw_forest),
                         "knn_raw": raw_knn, "iforest_raw": raw_forest})


def streamed_scores(index, k: int = 10, n_estimators: int = 200, seed: int = 42, search: dict | None = None,
                    batch: int = 4096, fit_rows: int = 100_000, progress: bool = False) -> pd.DataFrame:
    """:func:`scores` of every galaxy of a run too large to hold, read in batches from its
    index's memory-mapped features (``index.vectors``): kNN distances from the index
    (each galaxy a query, its own row left out); the isolation forest fitted on a seeded
    sample of ``fit_rows`` galaxies (each tree draws 256 of them, as it would from all)
    with the sample's mean and spread, then applied batch by batch."""
    V = index.vectors
    if V is None:
        raise UserError("this index has no re-rank vectors; rebuild it (delete it and search again)")
    n = len(V)
    k = max(1, min(int(k), n - 1))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, fit_rows), replace=False))
    forest = _forest(np.asarray(V[sample], np.float32), n_estimators, seed)
    raw_knn = np.empty(n, np.float64)
    raw_forest = np.empty(n, np.float64)
    how = {}
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        Q = np.asarray(V[s:s + batch], np.float32)
        _, dist, how = neighbours(None, k, queries=Q, metric="cosine", index=index, rows=V,
                                  exclude=np.arange(s, s + len(Q)), exact_below=0)
        raw_knn[s:s + len(Q)] = dist.astype(np.float64).mean(1)
        raw_forest[s:s + len(Q)] = forest(Q)
        if progress:
            done = s + len(Q)
            print(f"\routlier scores: {done:,} / {n:,} galaxies, {time.perf_counter() - t0:.0f} s", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if search is not None:
        search.update(how, iforest_fit_rows=len(sample))
    return pd.DataFrame({"knn": scale_0_5(raw_knn), "iforest": scale_0_5(raw_forest),
                         "knn_raw": raw_knn, "iforest_raw": raw_forest})


def score_against(X_ref, X_new, k: int = 10, n_estimators: int = 200, seed: int = 42) -> pd.DataFrame:
    """Outlier scores of new galaxies (m, d) measured against a reference set (n, d):
    on the reference's 0-5 scale (may exceed 5: weirder than any reference galaxy) and
    as a percentile (share of reference galaxies that score lower, 0-100)."""
    X_ref = _check(X_ref, k)
    ref = scores(X_ref, k, n_estimators, seed)
    new_raw = {"knn": knn_distance(X_ref, k, queries=X_new),
               "iforest": isolation_forest(X_ref, n_estimators, seed, queries=X_new)}
    out = {}
    for name, raw in new_raw.items():
        ref_raw = ref[f"{name}_raw"].to_numpy()
        lo, hi = ref_raw.min(), ref_raw.max()
        out[name] = (SCALE_MAX * (raw - lo) / (hi - lo) if hi > lo else np.zeros(len(raw))).astype(np.float32)
        out[f"{name}_percentile"] = 100 * np.searchsorted(np.sort(ref_raw), raw, side="left") / len(ref_raw)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- the cache


def anomalies_path(features_key: str, cache=None, **params) -> tuple[Path, dict]:
    params = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    key = store.key_of("anomalies", ANOMALY_VERSION, features_key, params)
    return store.cache_dir(cache) / "anomalies" / f"{key}.parquet", params


def cached_anomalies(features_key: str, cache=None, **params) -> tuple[pd.DataFrame, dict] | None:
    """``(DataFrame row, id, knn, iforest; provenance)`` when cached, else None. Never computes."""
    path, _ = anomalies_path(features_key, cache, **params)
    return read_parquet(path)


def get_anomalies(features_key: str, cache=None, progress: bool = False, **params) -> tuple[pd.DataFrame, dict]:
    """Outlier scores of a cached features run, computed and cached on a miss (file lock:
    two identical requests compute once). Rows in the features file's order."""
    from core.analysis.maps.store import features_run, load_features

    if (hit := cached_anomalies(features_key, cache, **params)) is not None:
        return hit
    path, params = anomalies_path(features_key, cache, **params)
    run = features_run(features_key, cache)

    def compute():
        if progress:
            print(f"outlier scores of {run.get('rows')} galaxies ({features_key})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        search = {}
        if int(run.get("rows") or 0) >= knn.EXACT_BELOW:  # survey scale: the features are never loaded whole
            rows = store.read_table(run["path"], columns=["row", "id"]).to_pandas()
            index = get_index(run, "cosine", cache, progress=progress)
            s = streamed_scores(index, **params, search=search, progress=progress)
            n = len(rows)
        else:
            rows, X = load_features(run)
            s = scores(X, **params, search=search)
            n = len(X)
        prov = {"search": search, "kind": "anomalies", "features_run": features_key, "version": ANOMALY_VERSION, "params": params,
                "methods": METHODS, "scale": "0-5 min-max over the run, 5 = weirdest (Astronomaly)",
                "dataset": run.get("dataset"), "model": run.get("model"), "mode": run.get("mode"),
                "rows": n, "seconds": round(time.perf_counter() - t0, 3)}
        return pa.table({"row": rows["row"].to_numpy(np.int64), "id": rows["id"].astype(str).to_numpy(),
                         "knn": s["knn"].to_numpy(np.float32), "iforest": s["iforest"].to_numpy(np.float32)}), prov

    return cached_parquet(path, compute)[0]


def ranks(score, mask) -> np.ndarray:
    """1-based ranks (1 = weirdest) of the galaxies in ``mask`` among all, by ``score``."""
    order = np.argsort(-np.asarray(score), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank[np.asarray(mask, bool)]


# ---------------------------------------------------------------- the verb
