"""Which galaxies of a run: a split, a confusion cell, the class make-up of a
selection. Scores themselves come from `core.analysis.evaluation`."""
from __future__ import annotations

import numpy as np
import pandas as pd


def split_mask(frame: pd.DataFrame, split: str) -> np.ndarray:
    if split == "all":
        return np.ones(len(frame), bool)
    return (frame["split"] == split).to_numpy()


def default_split(frame: pd.DataFrame) -> str:
    """Scores on the test split when there is one (the head never saw it), else all."""
    return "test" if (frame["split"] == "test").any() and (frame["split"] != "test").any() else "all"


def cell_positions(frame: pd.DataFrame, true: int, pred: int, mask=None) -> np.ndarray:
    """Frame positions of galaxies of true class ``true`` predicted as ``pred``,
    most confident first."""
    sel = (frame["label"].to_numpy() == true) & (frame["pred"].to_numpy() == pred)
    if mask is not None:
        sel &= mask
    pos = np.flatnonzero(sel)
    conf = frame["confidence"].to_numpy()[pos]
    return pos[np.argsort(-conf, kind="stable")]


def _counts(codes: pd.Series, names: pd.Series, positions: np.ndarray) -> pd.Series:
    """value_counts of the names of ``positions``, counted on integer codes (a selection
    can hold a million galaxies; taking their name strings alone costs seconds)."""
    c = codes.to_numpy()[positions]
    lo = int(c.min(initial=0))
    count = np.bincount(c - lo)
    present = np.flatnonzero(count)
    first = np.array([np.argmax(c == lo + k) for k in present], dtype=np.int64)
    order = np.lexsort((first, -count[present]))  # as value_counts: most first, ties in order of appearance
    index = pd.Index(names.iloc[positions[first[order]]].to_numpy(), name="class")
    return pd.Series(count[present][order], index=index)


def class_counts(frame: pd.DataFrame, positions, has_predictions: bool) -> pd.DataFrame:
    """Per-class counts of a set of galaxies (true class, and predicted class if any)."""
    pos = np.asarray(positions, dtype=np.int64)
    counts = {"true": _counts(frame["label"], frame["true"], pos)}
    if has_predictions:
        counts["predicted"] = _counts(frame["pred"], frame["predicted"], pos)
    out = pd.DataFrame(counts).fillna(0).astype(int).rename_axis("class")
    return out.sort_values("true", ascending=False, kind="stable")


def split_scores(frame: pd.DataFrame, class_names, split: str) -> dict:
    """`core.analysis.evaluation.classification_report` of a run's galaxies in ``split``
    (accuracy, macro_f1, per_class, confusion (k, k)); the frame needs pred."""
    from core.analysis.evaluation import classification_report

    mask = split_mask(frame, split)
    return classification_report(frame["label"].to_numpy()[mask], frame["pred"].to_numpy()[mask], class_names)
