"""Evaluation: F1, confusion, per-class scores, ΔF1 (full - head), failures, kNN.

The metric functions are pure (arrays in, arrays/frames out) so they are tested
without a model; the `evaluate` verb reads cached features that carry
predictions and writes ``evaluations/<features key>.json`` plus
``evaluations/summary.json`` (the paper's Table 1 layout) for the dashboard.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from core.errors import UserError
from core.models.checkpoint import MODEL_SIZES, model_size
from core.models.modes import prediction_mapping

# ---------------------------------------------------------------- metrics


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes) int64, rows true class, columns predicted.

    Rows whose label or prediction falls outside ``0..n_classes-1`` (unlabelled
    -1) are ignored: they carry no ground truth to score against.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in length")
    ok = (labels >= 0) & (labels < n_classes) & (preds >= 0) & (preds < n_classes)
    flat = labels[ok] * n_classes + preds[ok]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # 0/0 -> 0, as sklearn


def scores_from_confusion(cm, class_names=None) -> dict:
    """Scores from a confusion matrix (rows true, columns predicted).

    Returns ``{"accuracy", "macro_f1", "weighted_f1", "n", "per_class"}`` where
    ``per_class`` is a DataFrame with columns class, precision, recall, f1,
    support. Macro F1 averages the classes that occur (in truth or in
    predictions), like scikit-learn's default label set, so a class absent
    from a test split does not count as a zero.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    present = (support + predicted) > 0
    per_class = pd.DataFrame(
        {"class": names, "precision": precision, "recall": recall, "f1": f1, "support": support}
    )
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
        "n": n,
        "per_class": per_class,
    }


def per_class_delta(head: dict, full: dict) -> pd.DataFrame:
    """Per-class F1 after head-only and full finetuning and ΔF1 = full - head,
    plus a macro-average row (the paper's Table 1 reading: a small ΔF1 means the
    frozen features already work). ``head`` and ``full`` are
    `scores_from_confusion` results on the same classes and split."""
    names = list(full["per_class"]["class"])
    if list(head["per_class"]["class"]) != names:
        raise ValueError("ΔF1 needs the head-only and full scores on the same classes")
    out = pd.DataFrame({"class": names + ["macro average"],
                        "F1 head-only": [*head["per_class"]["f1"], head["macro_f1"]],
                        "F1 full": [*full["per_class"]["f1"], full["macro_f1"]]})
    out["ΔF1"] = out["F1 full"] - out["F1 head-only"]
    return out


def classification_report(labels, preds, class_names) -> dict:
    """`scores_from_confusion` of (labels, preds) plus the matrix under "confusion"."""
    cm = confusion_matrix(labels, preds, len(class_names))
    return {**scores_from_confusion(cm, class_names), "confusion": cm}


def top_mistakes(df: pd.DataFrame, k: int = 20, class_names=None) -> pd.DataFrame:
    """The k most confident wrong predictions, most confident first.

    ``df`` needs columns id, label, pred, confidence (a features table);
    unlabelled rows are skipped. Returns id, row (when present), true, pred,
    confidence; true/pred are class names when ``class_names`` is given.
    Ties keep table order, so the ranking is stable across runs.
    """
    wrong = df[(df["label"] >= 0) & (df["label"] != df["pred"])]
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable").head(k)
    name = (lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)) if class_names else (lambda i: int(i))
    out = pd.DataFrame({"id": wrong["id"].astype(str).to_numpy()})
    if "row" in wrong:
        out["row"] = wrong["row"].to_numpy(dtype=np.int64)
    out["true"] = [name(int(i)) for i in wrong["label"]]
    out["pred"] = [name(int(i)) for i in wrong["pred"]]
    out["confidence"] = wrong["confidence"].to_numpy(dtype=np.float64)
    return out


def base_model_of(prov: dict) -> str:
    """The model a run started from: finetuned checkpoints record `base_model`."""
    return prov.get("base_model") or prov.get("model") or "?"


def delta_f1_table(evaluations) -> pd.DataFrame:
    """ΔF1 = F1 full - F1 head per base model that has both (the paper's Table 1).

    ``evaluations`` is an iterable of dicts with at least ``mode`` ("full" /
    "head"), ``macro_f1``, ``model`` and optionally ``base_model``, ``family``,
    ``dataset`` (or ``dataset_fingerprint``). Runs are matched on (dataset,
    base model); runs are paired only on the same dataset and split, by (dataset,
    split, base model); with several runs of one mode (e.g. linear and MLP heads) the
    best F1 counts, as in the paper. Columns: dataset, split, family, size,
    base_model, f1_full, f1_head, delta_f1, full_run, head_run (fractions, not
    percent), sorted by family then size.
    """
    best: dict[tuple, dict] = {}
    for ev in evaluations:
        mode = ev.get("mode")
        if mode not in ("full", "head") or ev.get("macro_f1") is None:
            continue
        key = (ev.get("dataset_fingerprint") or ev.get("dataset"), ev.get("split"), base_model_of(ev))
        slot = best.setdefault(key, {})
        if mode not in slot or ev["macro_f1"] > slot[mode]["macro_f1"]:
            slot[mode] = ev
    rows = []
    for (_, split, base), slot in best.items():
        if "full" not in slot or "head" not in slot:
            continue
        full, head = slot["full"], slot["head"]
        rows.append(
            {
                "dataset": full.get("dataset"),
                "split": split,
                "family": full.get("family") or head.get("family"),
                "size": model_size(base) or full.get("size"),
                "base_model": base,
                "f1_full": float(full["macro_f1"]),
                "f1_head": float(head["macro_f1"]),
                "delta_f1": float(full["macro_f1"]) - float(head["macro_f1"]),
                "full_run": full.get("features_run"),
                "head_run": head.get("features_run"),
            }
        )
    cols = ["dataset", "split", "family", "size", "base_model", "f1_full", "f1_head", "delta_f1", "full_run",
            "head_run"]
    df = pd.DataFrame(rows, columns=cols)
    order = {s: i for i, s in enumerate(MODEL_SIZES)}
    if len(df):
        df = df.assign(_o=df["size"].map(order).fillna(len(MODEL_SIZES)))
        df = df.sort_values(["dataset", "family", "_o", "base_model"], kind="stable").drop(columns="_o")
    return df.reset_index(drop=True)


def format_table(df: pd.DataFrame, floatfmt: str = "{:.3f}", index: bool = False) -> str:
    """Aligned plain-text table: numbers right-aligned, text left-aligned."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    cells, numeric = [], []
    for c in frame.columns:
        s = frame[c]
        is_num = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        numeric.append(is_num)
        if pd.api.types.is_float_dtype(s):
            cells.append(["" if pd.isna(v) else floatfmt.format(v) for v in s])
        else:
            cells.append(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in s])
    widths = [max([len(h)] + [len(v) for v in col]) for h, col in zip(cols, cells)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line([col[i] for col in cells]) for i in range(len(frame))]
    return "\n".join(out)


def row_norms(X) -> np.ndarray:
    """(n,) float32 L2 norm of each row of ``X`` (n, d); zero rows count as 1."""
    norms = np.linalg.norm(np.asarray(X, dtype=np.float32), axis=1).astype(np.float32)
    norms[norms == 0] = 1.0
    return norms


GPU_NEIGHBOURS_FROM = 200_000  # galaxies from which one query is answered on a GPU (when there is one)


def _gpu() -> bool:
    from core.analysis.knn import knn_gpu_ready

    return knn_gpu_ready()


def knn_neighbours(X, i, k: int = 10, metric: str = "cosine", norms=None, index=None, search: dict | None = None):
    """The k nearest rows of ``X`` (n, d) to row(s) ``i``, excluding the row itself.

    Returns (indices, distances), each (k,) for an int ``i`` or (m, k) for m
    query rows, nearest first. Cosine distance is 1 - cosine similarity;
    euclidean is the L2 distance. One matrix-vector product per query, so
    17k x 768 answers in milliseconds without an index, and no normalised copy
    of ``X`` is made (600 MB at 200,000 x 768); pass ``norms`` (`row_norms`)
    to skip recomputing them on every call. ``index``: the run's kNN index for
    ``metric`` (:mod:`core.analysis.knn_index`), used from the kNN entry point's
    threshold (:data:`core.analysis.knn.EXACT_BELOW` rows) on; ``search`` (a dict)
    receives how the answer was found (``{"search": "exact" | "index", ...}``).
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    single = np.ndim(i) == 0
    q_idx = np.atleast_1d(np.asarray(i, dtype=np.int64))
    n = len(X)
    from core.analysis import knn

    if index is not None and n >= knn.EXACT_BELOW:  # X may be memory-mapped: only the query rows are read
        k = min(int(k), n - 1)
        idx, dist, how = knn.neighbours(X, k, queries=np.asarray(X[q_idx], np.float32), metric=metric,
                                        index=index, exclude=q_idx)
        if search is not None:
            search.update(how)
        dist = dist.astype(np.float64) if metric == "cosine" else np.sqrt(dist.astype(np.float64))
        return (idx[0], dist[0]) if single else (idx, dist)
    X = np.asarray(X, dtype=np.float32)
    if search is not None:
        search.update({"search": "exact", "device": "cuda" if single and n >= GPU_NEIGHBOURS_FROM and _gpu() else "cpu"})
    if single and n >= GPU_NEIGHBOURS_FROM and _gpu():  # at scale: X stays on the GPU between clicks
        from core.analysis.knn import nearest_rows

        idx, dist = nearest_rows(X, int(i), k, metric)
        return idx, dist.astype(np.float64)
    k = min(int(k), n - 1)
    if k <= 0:
        empty = np.zeros((len(q_idx), 0))
        return (empty[0].astype(np.int64), empty[0]) if single else (empty.astype(np.int64), empty)
    Q = X[q_idx]
    if metric == "cosine":
        norms = row_norms(X) if norms is None else norms
        d = 1.0 - (Q @ X.T) / (norms[q_idx][:, None] * norms[None, :])
    else:
        sq = np.einsum("ij,ij->i", X, X)
        d = np.sqrt(np.maximum(sq[q_idx][:, None] + sq[None, :] - 2.0 * (Q @ X.T), 0.0))
    d = d.astype(np.float64)
    d[np.arange(len(q_idx)), q_idx] = np.inf  # a galaxy is not its own neighbour
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    pd_ = np.take_along_axis(d, part, axis=1)
    order = np.lexsort((part, pd_), axis=1)  # by distance, then index for determinism
    idx = np.take_along_axis(part, order, axis=1)
    dist = np.take_along_axis(pd_, order, axis=1)
    return (idx[0], dist[0]) if single else (idx, dist)


# ---------------------------------------------------------------- runs -> evaluations


def evaluate_run(run: dict, table: pd.DataFrame, top_k: int = 20) -> dict:
    """Evaluation dict (the `evaluations/<key>.json` fields) of one features run.

    Uses the test rows when the table has any, else every labelled row, and
    records which under ``split``.
    """
    from core.models.modes import leakage

    class_names = list(run.get("class_names") or [])
    if not class_names:
        raise UserError(f"features run {run.get('key')} records no class names: re-extract it")
    if run.get("mode") == "generic":
        raise UserError(f"features run {run.get('key')} is generic (its head, if any, was not trained on these "
                        "galaxy classes): it is not scored; finetune it first with `python -m core finetune`")
    mapping = prediction_mapping(class_names, run.get("id2label"))
    if mapping is None:
        raise UserError(
            f"features run {run.get('key')}: the head predicts {len(run['id2label'])} classes "
            f"that are not the dataset's {len(class_names)}; finetune it on this dataset first"
        )
    df = table
    split = "all"
    if "split" in df and (df["split"] == "test").any():
        df, split = df[df["split"] == "test"], "test"
    elif "split" in df and df["split"].nunique() == 1:
        split = str(df["split"].iloc[0])
    df = df.assign(pred=mapping[df["pred"].to_numpy(dtype=np.int64)]).reset_index(drop=True)
    labelled = df[df["label"] >= 0]
    if not len(labelled):
        raise UserError(f"features run {run.get('key')} has no labelled rows to evaluate")
    rep = classification_report(labelled["label"], labelled["pred"], class_names)
    mistakes = top_mistakes(df, top_k, class_names)
    per_class = rep["per_class"].astype({"support": int})
    return {
        "features_run": run.get("key"),
        "dataset": run.get("dataset"),
        "dataset_fingerprint": run.get("dataset_fingerprint"),
        "model": run.get("model"),
        "model_fingerprint": run.get("model_fingerprint"),
        "base_model": base_model_of(run),
        "family": run.get("family"),
        "size": model_size(base_model_of(run)) or run.get("size"),
        "mode": run.get("mode"),
        "head": run.get("head"),
        "pooling": run.get("pooling"),
        "split": split,
        "leakage": leakage(run, labelled["split"] if "split" in labelled else []),
        "rows": int(rep["n"]),
        "class_names": class_names,
        "accuracy": rep["accuracy"],
        "macro_f1": rep["macro_f1"],
        "weighted_f1": rep["weighted_f1"],
        "per_class": per_class.to_dict("records"),
        "confusion": rep["confusion"].tolist(),
        "top_mistakes": mistakes.to_dict("records"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


_SUMMARY_FIELDS = ("features_run", "dataset", "model", "base_model", "family", "size", "mode", "head",
                   "split", "leakage", "rows", "accuracy", "macro_f1", "weighted_f1")


def write_summary(cache) -> dict:
    """Rebuild `evaluations/summary.json` from every evaluation in the cache."""
    from core.store import cache as store

    folder = store.cache_dir(cache) / "evaluations"
    evals = []
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith(".") or p.name == "summary.json":
            continue
        try:
            evals.append(json.loads(p.read_text()))
        except Exception:
            continue  # a foreign or damaged file must not block the summary
    summary = {
        "delta_f1": delta_f1_table(evals).to_dict("records"),
        "runs": [{f: ev.get(f) for f in _SUMMARY_FIELDS} for ev in evals],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    store.write_json(folder / "summary.json", summary)
    return summary


# ---------------------------------------------------------------- CLI


def read_predictions(path) -> pd.DataFrame | None:
    """The scoring columns of a features run, file or sharded (embeddings stay on disk)."""
    from core.store import cache as store

    try:
        names = store.read_schema(path).names
    except Exception:
        return None
    wanted = [c for c in ("row", "id", "split", "label", "pred", "confidence") if c in names]
    table = store.read_table(path, columns=wanted)
    return None if table is None else table.to_pandas()
