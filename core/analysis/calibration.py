"""Calibration: can a run's confidences be trusted?

A classifier is calibrated when, of the galaxies it labels with 80% confidence, 80% are right. If it
is over-confident, "its most confident mistakes" say less than they seem to, and a suspicious label
found from its probabilities may be the model's fault.

- ``reliability``: the reliability diagram of the top-label confidence against being right, with the
  bins of ``sklearn.calibration.calibration_curve`` (uniform: ten equal-width bins of [0, 1]), and the
  expected calibration error (ECE: the bins' |accuracy - confidence| weighted by their share).
- ``classwise``: the same per class, on ``probs[:, c]`` against "the label is c".
- ``temperature_scaling``: one temperature T fitted on a held-out half of the test split (minimum
  negative log-likelihood of softmax(log p / T)) and scored on the other half, before and after.
- ``run_calibration``: all of it for a cached features run with predictions, on its test split.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import UserError

N_BINS = 10


def _bin_ids(prob: np.ndarray, n_bins: int) -> np.ndarray:
    """sklearn's uniform binning: edges linspace(0, 1, n_bins + 1); a value on an inner edge falls in the
    lower bin (``searchsorted`` side left, as ``calibration_curve``), 1 in the last."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], prob)


def reliability(confidence, correct, n_bins: int = N_BINS) -> tuple[pd.DataFrame, float]:
    """(bins, ECE) for confidences (n,) in [0, 1] and whether each answer was right (n,) bool.

    ``bins``: one row per non-empty bin (as ``calibration_curve`` returns them): lo, hi, count,
    confidence (mean), accuracy (share right), gap (accuracy - confidence).
    """
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise UserError(f"calibration needs one confidence per answer; got {confidence.shape} and {correct.shape}")
    if np.nanmin(confidence) < 0 or np.nanmax(confidence) > 1:
        raise UserError("confidences must lie in [0, 1]")
    ids = _bin_ids(confidence, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    conf_sum = np.bincount(ids, weights=confidence, minlength=n_bins)
    right_sum = np.bincount(ids, weights=correct.astype(np.float64), minlength=n_bins)
    keep = count > 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = pd.DataFrame({"lo": edges[:-1][keep], "hi": edges[1:][keep], "count": count[keep],
                         "confidence": conf_sum[keep] / count[keep], "accuracy": right_sum[keep] / count[keep]})
    bins["gap"] = bins["accuracy"] - bins["confidence"]
    ece = float((bins["count"] * bins["gap"].abs()).sum() / len(confidence))
    return bins, ece


def expected_calibration_error(confidence, correct, n_bins: int = N_BINS) -> float:
    return reliability(confidence, correct, n_bins)[1]


def classwise(probs, labels, class_names, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per class: ECE of ``probs[:, c]`` against "label is c", the galaxies of that class and the mean
    probability given to it against its true share."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    rows = []
    for c, name in enumerate(class_names):
        is_c = labels == c
        _, ece = reliability(np.clip(probs[:, c], 0, 1), is_c, n_bins)
        rows.append({"class": name, "galaxies": int(is_c.sum()), "ECE": ece,
                     "mean probability": float(probs[:, c].mean()), "share": float(is_c.mean())})
    return pd.DataFrame(rows)


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def _softmax(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits / t
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def temperature_scaling(probs, labels, seed: int = 0, n_bins: int = N_BINS) -> dict:
    """Fit one temperature on a random half of the galaxies (stratified by label), score the other half.

    ``probs`` (n, K) are a softmax's outputs, so log p are its logits up to a constant per row, which a
    temperature does not see. T > 1 means the model was over-confident. Returns T and ECE / NLL before
    and after on the held-out half, with both halves' sizes."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) < 20:
        raise UserError(f"temperature scaling needs at least 20 labelled galaxies; this split has {len(labels)}")
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fit[members[: len(members) // 2]] = True
    held = ~fit
    logits = np.log(np.clip(probs, 1e-12, 1.0))
    best = minimize_scalar(lambda log_t: _nll(logits[fit], labels[fit], float(np.exp(log_t))),
                           bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    t = float(np.exp(best.x))
    before, after = probs[held], _softmax(logits[held], t)
    right_before = before.argmax(1) == labels[held]
    return {"temperature": t, "fit_galaxies": int(fit.sum()), "scored_galaxies": int(held.sum()),
            "ece_before": expected_calibration_error(before.max(1), right_before, n_bins),
            "ece_after": expected_calibration_error(after.max(1), after.argmax(1) == labels[held], n_bins),
            "nll_before": _nll(logits[held], labels[held], 1.0), "nll_after": _nll(logits[held], labels[held], t)}


def verdict(ece: float, temperature: float | None = None) -> str:
    """One sentence a newcomer can act on."""
    if ece < 0.03:
        words = "well calibrated: its confidences can be read as probabilities"
    elif ece < 0.08:
        words = "roughly calibrated"
    else:
        words = "poorly calibrated: read its confidences with care"
    if temperature is not None and ece >= 0.03:
        words += (f"; it is over-confident (temperature {temperature:.2f} > 1 softens it)" if temperature > 1.05 else
                  f"; it is under-confident (temperature {temperature:.2f} < 1 sharpens it)" if temperature < 0.95 else "")
    return f"ECE {ece:.3f}: {words}."


def run_calibration(run: dict, n_bins: int = N_BINS, seed: int = 0) -> dict:
    """Calibration of a features run with predictions (a ``list_runs`` entry), on its test split (every
    labelled galaxy when it has none): ECE and bins, per class, temperature scaling before/after."""
    from core.models.modes import prediction_mapping
    from core.store import cache as store

    if not run.get("has_head") or run.get("mode") == "generic":
        raise UserError(f"run {run.get('key')} has no predictions (mode {run.get('mode')}): calibration needs a "
                        "checkpoint with a classification head trained on these classes")
    mapping = prediction_mapping(list(run.get("class_names") or []), run.get("id2label"))
    if mapping is None:
        raise UserError(f"run {run.get('key')}: its head predicts classes that are not this dataset's")
    names = store.read_schema(run["path"]).names
    cols = [c for c in ("split", "label", "pred", "confidence", "probs") if c in names]
    table = store.read_table(run["path"], columns=cols)
    if table is None:
        raise UserError(f"features file {run['path']} is unreadable; extract it again")
    df = table.select([c for c in cols if c != "probs"]).to_pandas()
    labelled = df["label"].to_numpy() >= 0
    test = labelled & (df["split"].to_numpy() == "test") if "split" in df else labelled
    split = "test" if test.any() else "all labelled"
    rows = test if test.any() else labelled
    labels = df["label"].to_numpy()[rows]
    conf = df["confidence"].to_numpy(np.float64)[rows]
    pred = df["pred"].to_numpy(np.int64)[rows]  # head outputs -> dataset classes (a head may order them otherwise)
    right = np.where((pred >= 0) & (pred < len(mapping)), mapping[np.clip(pred, 0, len(mapping) - 1)], -1) == labels
    bins, ece = reliability(conf, right, n_bins)
    out = {"run": run.get("key"), "split": split, "galaxies": int(rows.sum()), "accuracy": float(right.mean()),
           "mean_confidence": float(conf.mean()), "ece": ece, "bins": bins.to_dict("records")}
    if "probs" in cols:
        raw = np.stack(table.column("probs").to_numpy(zero_copy_only=False))[rows]
        probs = np.zeros_like(raw)
        probs[:, mapping] = raw  # column j of the head is dataset class mapping[j]
        class_names = run.get("class_names") or [str(i) for i in range(probs.shape[1])]
        out["per_class"] = classwise(probs, labels, class_names, n_bins).to_dict("records")
        if len(labels) >= 20:
            out["temperature_scaling"] = temperature_scaling(probs, labels, seed, n_bins)
    out["verdict"] = verdict(ece, (out.get("temperature_scaling") or {}).get("temperature"))
    return out
