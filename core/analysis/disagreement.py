"""Two models on the same galaxies: where they disagree, and who is wrong.

Any two features runs with predictions over the same galaxies (head-only vs full finetune, DINOv2 vs
BEiT, a timm encoder...) are joined on the galaxy id. The matrix counts model A's prediction against
model B's; each galaxy falls in one of five outcomes:

- ``both right``;
- ``only A wrong`` / ``only B wrong``: one model's failure, the other shows it can be done;
- ``both wrong, different classes``: a hard galaxy;
- ``both wrong, same class``: two models that learned differently agree against the label. When both
  are confident (``SUSPECT_CONFIDENCE``), that is the strongest hint that the label itself is wrong.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import UserError

SUSPECT_CONFIDENCE = 0.8
OUTCOMES = ("both right", "only A wrong", "only B wrong", "both wrong, different classes", "both wrong, same class")


def _predictions(run: dict) -> pd.DataFrame:
    """The run's predictions as dataset class indices (a head may list the classes in another order)."""
    from core.analysis.evaluation import read_predictions
    from core.models.modes import prediction_mapping

    if not run.get("has_head") or run.get("mode") == "generic":
        raise UserError(f"run {run.get('key')} ({run.get('model')}, mode {run.get('mode')}) has no predictions on "
                        "these classes: compare two runs whose checkpoints have a head trained on them")
    df = read_predictions(run["path"])
    if df is None or "pred" not in df:
        raise UserError(f"features file {run['path']} is unreadable or has no predictions; extract it again")
    mapping = prediction_mapping(list(run.get("class_names") or []), run.get("id2label"))
    if mapping is None:
        raise UserError(f"run {run.get('key')}: its head predicts classes that are not this dataset's")
    raw = df["pred"].to_numpy(np.int64)
    ok = (raw >= 0) & (raw < len(mapping))
    return df.assign(pred=np.where(ok, mapping[np.clip(raw, 0, len(mapping) - 1)], -1))


def join(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per galaxy in both runs: id, label, pred_a, conf_a, pred_b, conf_b, row_a, row_b, outcome,
    label_suspect (both wrong on the same class, both at least SUSPECT_CONFIDENCE sure)."""
    cols = ["id", "label", "pred", "confidence"] + (["row"] if "row" in a and "row" in b else [])
    m = a[cols].merge(b[cols], on="id", suffixes=("_a", "_b"))
    if m.empty:
        raise UserError("the two runs share no galaxy id: choose two runs of the same dataset")
    if (m["label_a"] != m["label_b"]).any():
        raise UserError("the two runs give the same galaxies different labels: they are not runs of the same dataset")
    m = m.rename(columns={"label_a": "label", "pred_a": "pred_a", "confidence_a": "conf_a", "confidence_b": "conf_b"})
    m = m.drop(columns="label_b")
    labelled = m["label"].to_numpy() >= 0
    wrong_a = labelled & (m["pred_a"].to_numpy() != m["label"].to_numpy())
    wrong_b = labelled & (m["pred_b"].to_numpy() != m["label"].to_numpy())
    same = m["pred_a"].to_numpy() == m["pred_b"].to_numpy()
    outcome = np.select([~wrong_a & ~wrong_b, wrong_a & ~wrong_b, ~wrong_a & wrong_b, wrong_a & wrong_b & ~same],
                        OUTCOMES[:4], OUTCOMES[4])
    m["outcome"] = np.where(labelled, outcome, "unlabelled")
    m["label_suspect"] = (m["outcome"] == OUTCOMES[4]) & (m["conf_a"] >= SUSPECT_CONFIDENCE) & \
        (m["conf_b"] >= SUSPECT_CONFIDENCE)
    return m


def matrix(joined: pd.DataFrame, class_names) -> pd.DataFrame:
    """Counts of A's prediction (rows) against B's (columns), labelled with class names."""
    k = len(class_names)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (joined["pred_a"].to_numpy(), joined["pred_b"].to_numpy()), 1)
    return pd.DataFrame(cm, index=list(class_names), columns=list(class_names))


def summary(joined: pd.DataFrame) -> dict:
    counts = joined["outcome"].value_counts()
    out = {o: int(counts.get(o, 0)) for o in OUTCOMES}
    out["galaxies"] = len(joined)
    out["agree"] = int((joined["pred_a"] == joined["pred_b"]).sum())
    out["label_suspects"] = int(joined["label_suspect"].sum())
    return out


def cell(joined: pd.DataFrame, pred_a: int, pred_b: int) -> pd.DataFrame:
    """The galaxies A called ``pred_a`` and B called ``pred_b``, label suspects first, then the most confident."""
    g = joined[(joined["pred_a"] == pred_a) & (joined["pred_b"] == pred_b)]
    order = np.lexsort((-(g["conf_a"] + g["conf_b"]).to_numpy(), ~g["label_suspect"].to_numpy()))
    return g.iloc[order]


def compare_runs(run_a: dict, run_b: dict) -> pd.DataFrame:
    """``join`` of two cached features runs (``list_runs`` entries)."""
    names_a, names_b = run_a.get("class_names"), run_b.get("class_names")
    if names_a and names_b and list(names_a) != list(names_b):
        raise UserError("the two runs have different class lists: compare runs of the same dataset")
    return join(_predictions(run_a), _predictions(run_b))
