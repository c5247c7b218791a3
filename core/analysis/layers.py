"""Where finetuning changed the network: per-layer separability and similarity.

Pure functions on arrays (tested against scikit-learn and known identities):

- ``knn_accuracy``: a k-nearest-neighbour vote (cosine, as the DINO papers'
  kNN probe) of test galaxies among train galaxies;
- ``linear_probe``: multinomial logistic regression on standardised features
  (train mean/std), sklearn's objective and default C, solved by L-BFGS
  (scipy, as sklearn); scored as macro F1 on the test galaxies;
- ``linear_cka``: linear centred kernel alignment between two representations
  of the same galaxies (Kornblith et al. 2019): 1 for the same space up to a
  rotation and an overall scale, ~0 for unrelated ones;
- ``reading``: the sentence the dashboard shows under the curves.

``layer_scores`` / ``layer_cka`` compute these for cached per-layer features
(``core.extract.layers``) and cache the result as JSON beside them, computed
once under a file lock like the maps.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from core.store import cache as store
from core.store.compute import cached_json, read_json
from core.extract import layers as lf
from core.errors import UserError
from core.analysis.evaluation import classification_report
from core.analysis.knn import neighbours

# Bump when a change here changes the numbers: old cached analyses then miss.
ANALYSIS_VERSION = 2
MAX_CKA_POINTS = 5000


# ---------------------------------------------------------------- pure functions


def _check(X, name) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        raise UserError(f"{name} must be a numeric (n, d) array; got shape {X.shape}")
    return X


def knn_accuracy(X_train, y_train, X_test, y_test, k: int = 10) -> float:
    """Accuracy of a ``k``-NN majority vote (cosine similarity) of each test galaxy
    among the train galaxies; ties go to the lowest class number (as sklearn's
    ``KNeighborsClassifier``). X_*: (n, d); y_*: (n,) int."""
    A = _check(X_train, "X_train").astype(np.float32)
    B = _check(X_test, "X_test").astype(np.float32)
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    k = min(k, len(A))
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    near, _, _ = neighbours(A, k, queries=B, metric="cosine")  # the one kNN entry point
    votes = np.zeros((len(near), n_classes), np.int64)
    np.add.at(votes, (np.arange(len(near))[:, None], y_train[near]), 1)
    correct = int((votes.argmax(1) == y_test).sum())
    return correct / max(len(B), 1)


def standardise(X_train, X_test) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the train set's mean and std (constant columns left at 0)."""
    X_train, X_test = np.asarray(X_train, np.float64), np.asarray(X_test, np.float64)
    mean, std = X_train.mean(0), X_train.std(0)
    std[std < 1e-12] = 1.0
    return (X_train - mean) / std, (X_test - mean) / std


def fit_logistic(X, y, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-7):
    """Multinomial logistic regression, sklearn's objective:
    ``C * sum(cross-entropy) + ||W||^2 / 2`` (the intercept not penalised), solved
    with L-BFGS as sklearn's default solver does (scipy). X: (n, d) float, y: (n,)
    int in 0..K-1. Returns (W (d, K), b (K,)) float64.

    BLAS runs on one thread here: the products are small (2,400 x 256 by 256 x 10), and
    with OpenBLAS threads each of L-BFGS's ~100 steps waited on them (the demo's 16
    probes: 15.8 s on 2 threads, 1.4 s on one)."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.int64)
    n, d = X.shape
    K = int(y.max()) + 1
    Y = np.zeros((n, K))
    Y[np.arange(n), y] = 1.0
    scale = 1.0 / (C * n)  # the objective divided by C * n: same minimum, better conditioned

    def loss_and_grad(w):
        W, b = w[: d * K].reshape(d, K), w[d * K:]
        Z = X @ W + b
        Z -= Z.max(1, keepdims=True)
        log_norm = np.log(np.exp(Z).sum(1, keepdims=True))
        P = np.exp(Z - log_norm)
        loss = (log_norm[:, 0] - (Z * Y).sum(1)).mean() + 0.5 * scale * (W * W).sum()
        G = (P - Y) / n
        return loss, np.concatenate([(X.T @ G + scale * W).ravel(), G.sum(0)])

    with threadpool_limits(1, user_api="blas"):
        res = minimize(loss_and_grad, np.zeros(d * K + K), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-12})
    return res.x[: d * K].reshape(d, K), res.x[d * K:]


def linear_probe(X_train, y_train, X_test, y_test, C: float = 1.0, max_iter: int = 100) -> dict:
    """Standardised linear probe: ``{"macro_f1", "accuracy", "pred"}`` on the test galaxies.
    ``max_iter`` 100 as sklearn's LogisticRegression default."""
    A, B = standardise(_check(X_train, "X_train"), _check(X_test, "X_test"))
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    W, b = fit_logistic(A, y_train, C=C, max_iter=max_iter)
    pred = (B @ W + b).argmax(1)
    n_classes = int(max(y_train.max(), y_test.max(), pred.max())) + 1
    report = classification_report(y_test, pred, [str(i) for i in range(n_classes)])
    return {"macro_f1": report["macro_f1"], "accuracy": report["accuracy"], "pred": pred}


def linear_cka(X, Y) -> float:
    """Linear CKA between two representations of the same n galaxies:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc (n, d1), Yc (n, d2)."""
    X = _check(X, "X").astype(np.float64)
    Y = _check(Y, "Y").astype(np.float64)
    if len(X) != len(Y):
        raise UserError(f"CKA compares the same galaxies: {len(X)} rows against {len(Y)}")
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    xy = np.linalg.norm(Y.T @ X) ** 2
    denom = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(xy / denom) if denom > 0 else 0.0


def _spans(layers: list[int]) -> str:
    """[9, 10, 11, 12] -> "9-12"; [2, 5] -> "2 and 5"."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        start = layer if start is None else start
        if i == len(layers) - 1 or layers[i + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def reading(scores: list[dict], cka: list[dict] | None = None, unit: str = "block", tolerance: float = 0.02) -> str:
    """One or two sentences that read the curves, e.g. "Finetuning changed blocks
    3-4 most (CKA with the generic features 0.41 at block 4). Block 2 is already
    as separable as the last (probe macro F1 0.61 vs 0.63)."

    ``scores``: rows ``{layer, macro_f1}`` of one checkpoint and one kind (the
    finetuned one when there is one); ``cka``: rows ``{layer, cka}`` generic vs
    finetuned, same kind. A block counts as "already as separable" within ``tolerance``.
    """
    out = []
    if cka:
        rows = sorted(cka, key=lambda r: r["layer"])
        change = np.array([1 - r["cka"] for r in rows])
        if change.max() < 0.05:
            out.append(f"Finetuning barely changed the features (CKA with the generic features ≥ "
                       f"{1 - change.max():.2f} at every {unit}).")
        else:
            most = [r["layer"] for r, c in zip(rows, change) if c >= 0.5 * change.max()]
            low = rows[int(change.argmax())]
            out.append(f"Finetuning changed {unit}s {_spans(most)} most (CKA with the generic features "
                       f"{low['cka']:.2f} at {unit} {low['layer']}, 1 = unchanged).")
    scored = sorted((r for r in scores if r.get("macro_f1") is not None), key=lambda r: r["layer"])
    if scored:
        last = scored[-1]
        first = next(r for r in scored if r["macro_f1"] >= last["macro_f1"] - tolerance)
        best = max(scored, key=lambda r: r["macro_f1"])
        if first["layer"] < last["layer"]:
            out.append(f"{unit.capitalize()} {first['layer']} is already as separable as the last "
                       f"(probe macro F1 {first['macro_f1']:.2f} vs {last['macro_f1']:.2f}).")
        else:
            out.append(f"Separability grows up to the last {unit} (probe macro F1 {last['macro_f1']:.2f}).")
        if best["macro_f1"] > last["macro_f1"] + tolerance:
            out.append(f"{unit.capitalize()} {best['layer']} separates the classes better than the last "
                       f"({best['macro_f1']:.2f}).")
    return " ".join(out)


# ---------------------------------------------------------------- cached analyses


def _say(progress, message):
    if progress:
        print(message, file=sys.stderr, flush=True)


def _layer_run(features_key: str, cache) -> dict:
    for run in lf.layer_runs(cache):
        if run["key"] == features_key:
            return run
    raise UserError(f"no per-layer features for run {features_key!r}: extract them with "
                    "`python -m core extract ... --layers all`")


def _analysis_path(cache, *parts):
    return store.path_for(store.cache_dir(cache), "layers", "analysis-" + store.key_of(*parts), ".json")


def train_test_masks(splits, labels):
    """(train, test) boolean masks of the labelled galaxies of each split."""
    return (splits == "train") & (labels >= 0), (splits == "test") & (labels >= 0)


def cached_scores(features_key: str, cache=None, k: int = 10, C: float = 1.0) -> dict | None:
    """The cached per-layer scores of a run, or None. Never computes."""
    run = _layer_run(features_key, cache)
    return read_json(_analysis_path(cache, "scores", ANALYSIS_VERSION, features_key, run.get("layers"), k, C))


def layer_scores(features_key: str, cache=None, k: int = 10, C: float = 1.0, progress: bool = True) -> dict:
    """kNN accuracy and probe macro F1 of every stored block and kind of a run, fitted
    on its train galaxies and scored on its test galaxies; cached.

    Returns ``{features_run, model, mode, unit, layers, train, test, k, C,
    scores: [{layer, kind, knn_accuracy, macro_f1, accuracy}], seconds}``; ``scores``
    is empty with a ``note`` when the run lacks labelled train and test galaxies.
    """
    from tqdm.auto import tqdm

    run = _layer_run(features_key, cache)
    path = _analysis_path(cache, "scores", ANALYSIS_VERSION, features_key, run.get("layers"), k, C)

    def compute():
        start = time.perf_counter()
        twin = _scored_twin(run, cache, k, C)
        if twin is not None:  # e.g. a head-only run: the frozen generic blocks, already scored
            _say(progress, f"same blocks as {twin['features_run']}: its scores ({path})")
            return {**{k: v for k, v in twin.items() if k != "created"}, "features_run": features_key,
                    "model": run.get("model"), "mode": run.get("mode"), "same_blocks_as": twin["features_run"],
                    "seconds": round(time.perf_counter() - start, 2)}
        result = {"kind": "layer-scores", "features_run": features_key, "model": run.get("model"),
                  "mode": run.get("mode"), "dataset": run.get("dataset"), "unit": run.get("unit", "block"),
                  "layers": run.get("layers"), "k": k, "C": C, "max_iter": 100, "scores": [],
                  "version": ANALYSIS_VERSION}
        jobs = [(layer, kind) for layer in run["layers"] for kind in run.get("kinds", lf.KINDS)]
        for layer, kind in tqdm(jobs, desc=f"layer scores {features_key}", disable=not progress, file=sys.stderr):
            _, labels, splits, X = lf.read_layer(run["path"], layer, kind)
            train, test = train_test_masks(splits, labels)
            result.update(train=int(train.sum()), test=int(test.sum()))
            if len(np.unique(labels[train])) < 2 or not test.any():
                result["note"] = "needs labelled train and test galaxies of at least two classes"
                break
            probe = linear_probe(X[train], labels[train], X[test], labels[test], C=C)
            result["scores"].append({
                "layer": layer, "kind": kind, "knn_accuracy": knn_accuracy(X[train], labels[train], X[test],
                                                                           labels[test], k),
                "macro_f1": probe["macro_f1"], "accuracy": probe["accuracy"]})
        _say(progress, f"writing {path}")
        return result

    return cached_json(path, compute)[0]


def _scored_twin(run: dict, cache, k: int, C: float) -> dict | None:
    """The cached scores of another run whose stored blocks are this run's bit for bit (same
    galaxies, labels and splits), or None. A head-only run and its generic base are such twins."""
    for other in lf.layer_runs(cache):
        if (other["key"] == run["key"] or other.get("dataset") != run.get("dataset")
                or other.get("rows") != run.get("rows") or other.get("layers") != run.get("layers")
                or other.get("kinds", lf.KINDS) != run.get("kinds", lf.KINDS)):
            continue
        scores = read_json(_analysis_path(cache, "scores", ANALYSIS_VERSION, other["key"], other.get("layers"), k, C))
        if scores is None or scores.get("same_blocks_as"):
            continue
        if all(_same_arrays(lf.read_layer(run["path"], layer, kind), lf.read_layer(other["path"], layer, kind))
               for layer in run["layers"] for kind in run.get("kinds", lf.KINDS)):
            return scores
    return None


def _same_arrays(a: tuple, b: tuple) -> bool:
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def cached_cka(key_a: str, key_b: str, cache=None) -> dict | None:
    """The cached CKA of two runs, or None. Never computes."""
    a, b = _layer_run(key_a, cache), _layer_run(key_b, cache)
    return read_json(_analysis_path(cache, "cka", ANALYSIS_VERSION, key_a, key_b, a.get("layers"), b.get("layers")))


def layer_cka(key_a: str, key_b: str, cache=None, max_points: int = MAX_CKA_POINTS, seed: int = 0,
              progress: bool = True) -> dict:
    """Linear CKA between the same block of two runs (e.g. generic vs full) on the
    galaxies they share (matched by id; a seeded sample of at most ``max_points``); cached.

    Returns ``{runs: [a, b], modes, unit, points, cka: [{layer, kind, cka}]}``.
    """
    from tqdm.auto import tqdm

    a, b = _layer_run(key_a, cache), _layer_run(key_b, cache)
    path = _analysis_path(cache, "cka", ANALYSIS_VERSION, key_a, key_b, a.get("layers"), b.get("layers"))
    if (hit := read_json(path)) is not None:
        return hit
    layers = sorted(set(a["layers"]) & set(b["layers"]))
    kinds = [k for k in a.get("kinds", lf.KINDS) if k in b.get("kinds", lf.KINDS)]
    if not layers or not kinds:
        raise UserError(f"runs {key_a} and {key_b} share no stored blocks to compare")

    def compute():
        out = []
        pick_a = pick_b = None
        for layer, kind in tqdm([(layer, k) for layer in layers for k in kinds], desc="CKA", disable=not progress,
                                file=sys.stderr):
            ids_a, _, _, Xa = lf.read_layer(a["path"], layer, kind)
            ids_b, _, _, Xb = lf.read_layer(b["path"], layer, kind)
            if pick_a is None:
                common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
                if len(common) < 3:
                    raise UserError(f"runs {key_a} and {key_b} share {len(common)} galaxies; CKA needs the same galaxies")
                keep = np.random.default_rng(seed).permutation(len(common))[:max_points]
                pick_a, pick_b = ia[np.sort(keep)], ib[np.sort(keep)]
            out.append({"layer": layer, "kind": kind, "cka": linear_cka(Xa[pick_a], Xb[pick_b])})
        return {"kind": "layer-cka", "runs": [key_a, key_b], "modes": [a.get("mode"), b.get("mode")],
                "models": [a.get("model"), b.get("model")], "unit": a.get("unit", "block"),
                "points": int(len(pick_a)), "cka": out, "version": ANALYSIS_VERSION}

    return cached_json(path, compute)[0]
