"""What a features run claims about the galaxy labels, and what its scores may mean.

A mode is a claim: "head" / "full" only for a classifier trained on the dataset's
classes; a checkpoint whose head predicts other classes (ImageNet's 1000, another
task's) is "generic", and its predictions are never scored against galaxy labels.

An evaluation states its split and whether the checkpoint's training images can
be in it: "disjoint" (known), "overlap" (n galaxies known to be trained on) or
"unknown" (the checkpoint does not say what it was trained on, or it was trained
on another source). The paper's published finetunes
(``hf:matthieulel/<base>-finetuned-galaxy10-decals``) were trained on the train
split of ``hf:matthieulel/galaxy10_decals`` (their model cards), so that
dataset's test split is known disjoint for them.
"""
from __future__ import annotations

import re

import numpy as np

from core.errors import UserError

MODES = ("generic", "head", "full")
PAPER_DATASET = "hf:matthieulel/galaxy10_decals"
_PAPER_CHECKPOINT = re.compile(r"^hf:matthieulel/.+-finetuned-galaxy10-decals$")


def resolve_mode(requested: str | None, desc: dict, class_names) -> str:
    """The mode of a features run: what the user said, else what finetuning recorded,
    else "full" for a head over the dataset's classes and "generic" otherwise.

    ``desc``: `core.models.load.describe` of the checkpoint (has_head, id2label, mode).
    A galaxy mode for a head over other classes is a one-line UserError.
    """
    if requested is not None and requested not in MODES:
        raise UserError(f"unknown mode {requested!r}: use one of {', '.join(MODES)}")
    fits = desc.get("has_head") and prediction_mapping(class_names, desc.get("id2label")) is not None
    if requested in ("head", "full") and not fits:
        what = (f"its head predicts {len(desc.get('id2label') or {})} classes that are not the dataset's "
                f"{len(class_names)}" if desc.get("has_head") else "it has no classification head")
        raise UserError(f"--mode {requested} says the checkpoint was finetuned on these galaxy classes, but {what}: "
                        "use --mode generic, or finetune it with `python -m core finetune`")
    recorded = desc.get("mode") if desc.get("mode") in MODES else None
    if requested or recorded:
        return requested or recorded
    return "full" if fits else "generic"


def training_data(model_ref: str, recorded: dict) -> dict | None:
    """What the checkpoint was trained on, as far as it is known: ``{"dataset",
    "dataset_fingerprint" (or None), "split"}`` or None."""
    if recorded.get("dataset"):
        return {"dataset": recorded["dataset"], "dataset_fingerprint": recorded.get("dataset_fingerprint"),
                "split": "train"}
    if _PAPER_CHECKPOINT.match(model_ref or ""):
        return {"dataset": PAPER_DATASET, "dataset_fingerprint": None, "split": "train"}
    return None


def leakage(run: dict, splits) -> dict:
    """Whether the evaluated galaxies can include the checkpoint's training images.

    ``run``: features provenance (dataset, dataset_fingerprint, mode, trained_on);
    ``splits``: the split of each evaluated galaxy. Returns ``{"status":
    "disjoint" | "overlap" | "unknown", "overlapping": int or None, "text"}``.
    """
    trained = run.get("trained_on")
    n_train = int(sum(1 for s in splits if s == "train"))
    if not trained:
        return {"status": "unknown", "overlapping": None,
                "text": "unknown: the checkpoint does not record its training images"}
    same = (trained.get("dataset_fingerprint") and trained["dataset_fingerprint"] == run.get("dataset_fingerprint")) \
        or (not trained.get("dataset_fingerprint") and trained.get("dataset") == run.get("dataset"))
    if not same:
        return {"status": "unknown", "overlapping": None,
                "text": f"unknown: trained on {trained.get('dataset')}, evaluated on {run.get('dataset')} "
                        "(the same galaxies may be in both)"}
    if n_train:
        return {"status": "overlap", "overlapping": n_train,
                "text": f"{n_train} evaluated galaxies are in the {trained.get('split', 'train')} split it was trained on"}
    return {"status": "disjoint", "overlapping": 0,
            "text": f"known disjoint: trained on the {trained.get('split', 'train')} split of this dataset"}


def _norm(name) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_PLACEHOLDER = re.compile(r"^(label|class)?[ _-]?\d+$")


def prediction_mapping(class_names, id2label) -> np.ndarray | None:
    """Map head output indices to dataset class indices, or None when the head does
    not predict the dataset's classes (a 1000-class ImageNet head, another task's
    10 classes): such a checkpoint is "generic" and its predictions are never scored.

    The same names in any order (case and punctuation aside) -> remapped by name;
    unnamed outputs (LABEL_0..., class 0..., 0...) of the right count -> taken in order.
    """
    k = len(class_names)
    if not id2label:
        return np.arange(k)
    labels = {int(a): str(b) for a, b in id2label.items()}
    if sorted(labels) != list(range(k)):
        return None
    by_name = {_norm(c): j for j, c in enumerate(class_names)}
    if len(by_name) == k and set(by_name) == {_norm(labels[i]) for i in range(k)}:
        return np.array([by_name[_norm(labels[i])] for i in range(k)])
    if all(_PLACEHOLDER.match(labels[i].strip().lower()) for i in range(k)):
        return np.arange(k)
    return None
