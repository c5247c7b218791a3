"""Suspicious labels: which galaxies' given class is probably wrong, and what it should be.

Every galaxy's class probabilities come from models that never saw its label:

- a *standardised linear probe* (multinomial logistic regression on the features,
  standardised with the training folds' mean and spread, as MAE/DINO probes do),
  fitted K times (5 folds) so each galaxy is scored by the probe that held it out;
- the labels of its *neighbours in feature space* (cosine, k = 10, itself excluded),
  which see the local structure a linear probe cannot.

The two are averaged. Confident learning (cleanlab's ``find_label_issues``: per-class
self-confidence thresholds, pruned by the estimated noise rates) flags the set (with ``rounds=2`` the
probe is fitted again without the flagged galaxies, Northcutt et al.'s "prune, then
retrain"; measured no better on the demo's features, so off by default). The score of a
galaxy (0-1, higher = more suspicious) is the mean of 1 - self-confidence (the probability
of its given class) and 1 - normalised margin (how much more the models believe in another
class); the suggested label is the most probable class.

Cached like outlier scores: one parquet per (features run, parameters) under
``<cache>/label_issues/``, atomic, with provenance, listed by ``python -m core ls``.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import UserError
from core.store import cache as store
from core.store.compute import get_or_compute

LABEL_ISSUES_VERSION = 1
DEFAULTS = {"folds": 5, "k": 10, "l2": 1e-2, "rounds": 1, "seed": 0}
COLUMNS = ["id", "given", "suggested", "score", "flagged"]


# ---------------------------------------------------------------- out-of-sample probabilities


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise UserError(f"label issues need features (n, d) and n labels; got {X.shape} and {y.shape}")
    if not np.isfinite(X).all():
        raise UserError("features hold NaN or infinite values: extract them again")
    return X, y


def _fit_probe(X, y, n_classes: int, l2: float, steps: int = 100, init=None):
    """Multinomial logistic regression on standardised X (scipy's L-BFGS, float32 products):
    returns (function rows -> probabilities, the solution to warm-start the next fold from)."""
    from scipy.optimize import minimize

    mean, std = X.mean(0), X.std(0)
    std[std < 1e-6] = 1.0
    Z = ((X - mean) / std).astype(np.float32)
    n, d = Z.shape
    Y = np.zeros((n, n_classes), np.float32)
    Y[np.arange(n), y] = 1

    def loss_grad(w):
        W, b = w[:-n_classes].reshape(d, n_classes).astype(np.float32), w[-n_classes:].astype(np.float32)
        S = Z @ W + b
        S -= S.max(1, keepdims=True)
        E = np.exp(S)
        total = E.sum(1, keepdims=True)
        loss = (np.log(total).sum() - (S * Y).sum()) / n + 0.5 * l2 * float((W * W).sum())
        G = (E / total - Y) / n
        return float(loss), np.concatenate([(Z.T @ G + l2 * W).ravel(), G.sum(0)]).astype(np.float64)

    w0 = np.zeros(d * n_classes + n_classes) if init is None else init
    w = minimize(loss_grad, w0, jac=True, method="L-BFGS-B", options={"maxiter": steps}).x
    W, b = w[:-n_classes].reshape(d, n_classes).astype(np.float32), w[-n_classes:].astype(np.float32)

    def predict(Q):
        S = ((np.asarray(Q, np.float32) - mean) / std) @ W + b
        S -= S.max(1, keepdims=True)
        E = np.exp(S)
        return (E / E.sum(1, keepdims=True)).astype(np.float64)
    return predict, w


def folds_of(y, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..folds-1) of each row, stratified by class."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        fold[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % folds
    return fold


def probe_probs(X, y, n_classes: int, folds: int = 5, l2: float = 1e-2, seed: int = 0,
                keep=None) -> np.ndarray:
    """Out-of-sample class probabilities (n, n_classes) of a standardised linear probe:
    each row is predicted by the probe fitted on the other folds (only on the rows of
    ``keep``, a boolean mask, when given)."""
    X, y = _check(X, y)
    keep = np.ones(len(y), bool) if keep is None else np.asarray(keep, bool)
    fold = folds_of(y, folds, seed)
    P = np.zeros((len(y), n_classes))
    w = None
    for f in range(folds):
        train = (fold != f) & keep
        held = fold == f
        # folds share most of their galaxies: each starts from the last one's solution (~3x fewer steps)
        predict, w = _fit_probe(X[train], y[train], n_classes, l2, steps=100 if w is None else 40, init=w)
        P[held] = predict(X[held])
    return P


def neighbour_probs(X, y, n_classes: int, k: int = 10, neighbours=None) -> np.ndarray:
    """Class probabilities (n, n_classes) from the labels of each galaxy's k nearest
    galaxies in feature space (cosine on standardised features, itself excluded),
    smoothed towards the class frequencies by one pseudo-vote."""
    X, y = _check(X, y)
    idx = nearest(X, k) if neighbours is None else neighbours
    counts = np.zeros((len(y), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(y)), idx.shape[1]), y[idx].ravel()), 1.0)
    prior = np.bincount(y, minlength=n_classes) / len(y)
    return (counts + prior) / (idx.shape[1] + 1.0)


def nearest(X, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k nearest other rows by cosine on standardised X."""
    from core.analysis.knn import knn

    Z = (X - X.mean(0)) / np.maximum(X.std(0), 1e-6)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    return knn(Z.astype(np.float32), min(k, len(X) - 1), device="cpu")[0]


# ---------------------------------------------------------------- scores and flags


def label_scores(y, P) -> tuple[np.ndarray, np.ndarray]:
    """(score 0-1, higher = more suspicious: the mean of 1 - self-confidence and 1 - normalised
    margin; suggested class)."""
    y = np.asarray(y, np.int64)
    given = P[np.arange(len(y)), y]
    other = P.copy()
    other[np.arange(len(y)), y] = -np.inf
    margin = given - other.max(1)  # in [-1, 1]
    # self-confidence ranks random slips best, the margin boundary swaps: both, equally weighted
    return ((1 - given) + (1 - margin) / 2) / 2, P.argmax(1)


def flag(y, P) -> np.ndarray:
    """Confident learning's flagged set (cleanlab ``find_label_issues``, pruned by noise rate)."""
    from cleanlab.filter import find_label_issues

    y = np.asarray(y, np.int64)
    present = np.unique(y)
    if len(present) < 2:
        return np.zeros(len(y), bool)
    # cleanlab wants every class in labels; restrict to the classes present
    remap = np.full(P.shape[1], -1)
    remap[present] = np.arange(len(present))
    Q = P[:, present]
    Q = Q / np.maximum(Q.sum(1, keepdims=True), 1e-12)
    return np.asarray(find_label_issues(remap[y], Q, filter_by="prune_by_noise_rate"), bool)


def find_issues(X, y, n_classes: int, folds: int = 5, k: int = 10, l2: float = 1e-2, rounds: int = 2,
                seed: int = 0, progress=None, probe=None) -> dict:
    """Suspicious labels of rows (X (n, d), y (n,) in 0..n_classes-1): a dict of arrays
    ``score`` (0-1), ``suggested``, ``flagged`` and the probabilities ``probs`` (n, C).
    ``probe``: the first round's out-of-sample probe probabilities when already computed
    (``probe_probs`` with the same folds and seed), so a benchmark hands both methods the same ones."""
    X, y = _check(X, y)
    if len(y) < 2 * folds or len(np.unique(y)) < 2:
        raise UserError(f"label issues need at least {2 * folds} labelled galaxies of two classes or more; "
                        f"got {len(y)} of {len(np.unique(y))}")
    say = progress or (lambda m: None)
    say("neighbours in feature space")
    P_knn = neighbour_probs(X, y, n_classes, k)
    keep = None
    for r in range(max(1, rounds)):
        say(f"out-of-sample linear probes, {folds} folds (round {r + 1})")
        P_probe = probe if (r == 0 and probe is not None) else probe_probs(X, y, n_classes, folds, l2, seed, keep)
        P = (P_probe + P_knn) / 2
        flagged = flag(y, P)
        keep = ~flagged
    score, suggested = label_scores(y, P)
    return {"score": score, "suggested": suggested, "flagged": flagged, "probs": P}


# ---------------------------------------------------------------- the cache


def label_issues_path(features_key: str, cache=None, **params) -> tuple[Path, dict]:
    params = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    key = store.key_of("label_issues", LABEL_ISSUES_VERSION, features_key, params)
    return store.cache_dir(cache) / "label_issues" / f"{key}.parquet", params


def _frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas()
    return df.sort_values(["flagged", "score"], ascending=[False, False], kind="stable").reset_index(drop=True)


def cached_label_issues(run_key: str, cache=None, **params) -> pd.DataFrame | None:
    """The cached frame (see ``label_issues``), or None. Never computes."""
    path, _ = label_issues_path(run_key, cache, **params)
    table = store.read_table(path) if store.provenance(path) else None
    return None if table is None else _frame(table)


def label_issues(run_key: str, cache=None, progress=None, **params) -> pd.DataFrame:
    """Suspicious labels of a cached features run, computed once and cached.

    Returns a DataFrame with columns ``id``, ``given``, ``suggested`` (class names),
    ``score`` (0-1, higher = more suspicious), ``flagged`` (confident learning's set),
    ``row`` (the features file's row) and ``p_given`` / ``p_suggested`` (out-of-sample
    probabilities), flagged first, then score descending. Unlabelled galaxies are left out.
    ``progress``: True (messages on stderr) or a callable taking a message.
    """
    from core.analysis.maps.store import features_run, load_features

    hit = cached_label_issues(run_key, cache, **params)
    if hit is not None:
        return hit
    path, params = label_issues_path(run_key, cache, **params)
    run = features_run(run_key, cache)
    say = progress if callable(progress) else (
        (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None))

    def compute():
        say(f"suspicious labels of {run.get('rows')} galaxies ({run_key})")
        rows, X = load_features(run)
        names = list(run.get("class_names") or [])
        labels = rows["label"].to_numpy(np.int64)
        n_classes = max(len(names), int(labels.max()) + 1 if len(labels) else 0)
        names += [str(c) for c in range(len(names), n_classes)]
        have = labels >= 0
        t0 = time.perf_counter()
        out = find_issues(X[have], labels[have], n_classes, progress=say, **params)
        y = labels[have]
        P = out["probs"]
        table = pa.table({
            "row": rows["row"].to_numpy(np.int64)[have], "id": rows["id"].astype(str).to_numpy()[have],
            "given": np.asarray(names, object)[y], "suggested": np.asarray(names, object)[out["suggested"]],
            "score": out["score"].astype(np.float32), "flagged": out["flagged"],
            "p_given": P[np.arange(len(y)), y].astype(np.float32),
            "p_suggested": P[np.arange(len(y)), out["suggested"]].astype(np.float32)})
        prov = {"kind": "label_issues", "features_run": run_key, "version": LABEL_ISSUES_VERSION,
                "params": params, "dataset": run.get("dataset"), "model": run.get("model"),
                "mode": run.get("mode"), "flagged": int(out["flagged"].sum()),
                "method": "out-of-sample standardised linear probes (K folds) averaged with feature-space "
                          "neighbours' labels; flagged by confident learning (cleanlab find_label_issues, "
                          "prune_by_noise_rate), probe refitted without the flagged; score = 1 - normalised margin",
                "seconds": round(time.perf_counter() - t0, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        return table, prov

    return get_or_compute(path, lambda _: cached_label_issues(run_key, cache, **params), compute,
                          lambda p, result: store.write_parquet(p, *result))[0]
