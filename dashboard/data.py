"""What the dashboard reads from the cache, as plain Python (no Streamlit here).

A *catalog* groups the cached runs the way a user thinks of them:
dataset -> model (family and size) -> mode (generic / head / full) -> checkpoint.
The functions below take arrays and return arrays or frames, so they are tested
without a server or a browser.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from core.evaluation import prediction_mapping  # one definition, shared with `python -m core evaluate`

MODES = ("generic", "head", "full")
MODE_HELP = {
    "generic": "the pretrained checkpoint as is: frozen features, no classifier",
    "head": "only a classification head trained on top of the frozen features",
    "full": "every parameter finetuned on the galaxy labels",
}
METHODS = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
FAMILY_NAMES = {"dinov2": "DINOv2", "vit": "ViT", "beit": "BEiT", "swinv2": "SwinV2", "swin": "Swin"}

# One fixed colour per class index, so a class keeps its colour across runs and views.
# No grey in it: grey means "not highlighted".
CLASS_COLOURS = ["#d62728", "#ff7f0e", "#1f77b4", "#17becf", "#9467bd",
                 "#2ca02c", "#8c564b", "#e377c2", "#bcbd22", "#393b79"]
EXTRA_COLOURS = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                 "#9edae5", "#637939", "#8c6d31", "#843c39"]


def class_colour(i: int) -> str:
    palette = CLASS_COLOURS + EXTRA_COLOURS
    return palette[i % len(palette)]


# ---------------------------------------------------------------- catalog

def dataset_label(ref: str) -> str:
    """A short human name for a dataset reference (it also appears in shared links)."""
    prefix, _, body = str(ref).partition(":")
    body = body.split("?", 1)[0].rstrip("/")
    name = Path(body).name or body
    if prefix == "synthetic":
        return f"{name} (synthetic)"
    if prefix == "h5":
        return Path(name).stem
    return name or str(ref)


def model_label(run: dict) -> str:
    family = run.get("family") or "model"
    size = run.get("size") or (f"{run['dim']}-d" if run.get("dim") else "")
    return f"{FAMILY_NAMES.get(family, family)} · {size}".strip(" ·")


def run_mode(run: dict) -> str:
    """generic / head / full as recorded; a run without a recorded mode is generic
    when it has no head, else 'finetuned' (we do not guess head vs full)."""
    mode = run.get("mode")
    if mode in MODES:
        return mode
    return "finetuned" if run.get("has_head") else "generic"


def is_random_stand_in(run: dict) -> bool:
    """The offline demo's 'generic' checkpoint is randomly initialised, not pretrained."""
    if run.get("random_init") or run.get("stand_in"):
        return True
    return str(run.get("model", "")).startswith("demo:") and run_mode(run) == "generic"


def checkpoint_label(run: dict) -> str:
    return f"{run.get('model')} · {run.get('pooling', '?')} pooling · split {run.get('split', 'all')}"


def _unique_labels(items, label_fn) -> dict:
    out: dict[str, object] = {}
    for item in items:
        label = base = label_fn(item)
        n = 2
        while label in out and out[label] != item:
            label, n = f"{base} #{n}", n + 1
        out.setdefault(label, item)
    return out


@dataclass
class Catalog:
    """The cached runs, grouped for the sidebar. Built from `core.cache.list_runs`."""

    features: list[dict] = field(default_factory=list)
    projections: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)

    @classmethod
    def from_runs(cls, runs: list[dict]) -> "Catalog":
        cat = cls()
        for r in runs:
            {"features": cat.features, "feature": cat.features, "projection": cat.projections,
             "projections": cat.projections, "evaluation": cat.evaluations}.get(r.get("kind"), []).append(r)
        return cat

    def __bool__(self) -> bool:
        return bool(self.features)

    def datasets(self) -> dict[str, str]:
        """label -> dataset reference; datasets with predictions and more galaxies first."""
        refs = {}
        for r in self.features:
            best = refs.get(r["dataset"], (0, 0))
            refs[r["dataset"]] = max(best, (int(bool(r.get("has_head"))), int(r.get("rows") or 0)))
        order = sorted(refs, key=lambda d: (-refs[d][0], -refs[d][1], d))
        return _unique_labels(order, dataset_label)

    def models(self, dataset: str) -> list[str]:
        """Model labels (family · size) with runs on this dataset."""
        labels = []
        for r in self.features:
            if r["dataset"] == dataset and model_label(r) not in labels:
                labels.append(model_label(r))
        return labels

    def runs(self, dataset: str, model: str | None = None, mode: str | None = None) -> list[dict]:
        return [r for r in self.features if r["dataset"] == dataset
                and (model is None or model_label(r) == model)
                and (mode is None or run_mode(r) == mode)]

    def modes(self, dataset: str, model: str) -> list[str]:
        found = {run_mode(r) for r in self.runs(dataset, model)}
        return [m for m in (*MODES, "finetuned") if m in found]

    def counterpart(self, run: dict, mode: str) -> dict | None:
        """The run of the same dataset and model in another mode (first one cached)."""
        if run_mode(run) == mode:
            return run
        others = self.runs(run["dataset"], model_label(run), mode)
        same_pool = [r for r in others if r.get("pooling") == run.get("pooling")]
        return (same_pool or others or [None])[0]

    def placeable(self, run: dict) -> list[dict]:
        """Runs of the same checkpoint on other datasets (e.g. the real photos), whose
        galaxies can be placed into this run's map."""
        return [r for r in self.features if r["model"] == run["model"] and r["dataset"] != run["dataset"]
                and r.get("pooling") == run.get("pooling") and r.get("dim") == run.get("dim")]

    def finetuned_for(self, run: dict) -> dict | None:
        """The finetuned run to compare with: this one when finetuned, else full, else head."""
        if run_mode(run) != "generic":
            return run
        return self.counterpart(run, "full") or self.counterpart(run, "head") or self.counterpart(run, "finetuned")

    def projection(self, features_key: str, method: str, aligned_to: str | None = None) -> dict | None:
        """The cached projection of a features run; prefer one aligned to ``aligned_to``,
        then an unaligned one, then the newest."""
        found = [p for p in self.projections if p.get("features_run") == features_key and p.get("method") == method]
        if not found:
            return None
        found.sort(key=lambda p: (p.get("aligned_to") == aligned_to and aligned_to is not None,
                                  p.get("aligned_to") is None, str(p.get("created", ""))), reverse=True)
        return found[0]

    def projection_methods(self, features_key: str) -> list[str]:
        return [m for m in METHODS if self.projection(features_key, m)]

    def evaluation(self, features_key: str) -> dict | None:
        for e in self.evaluations:
            if e.get("features_run") == features_key or e.get("key") == features_key:
                return e
        return None


# ---------------------------------------------------------------- one run's data

@dataclass
class RunData:
    """One features run without its embeddings: what the map, galaxies and scores need.

    ``frame`` columns: row (dataset position, the stable id the charts carry), id,
    split, label, true (class name), and with a usable head pred, predicted,
    confidence, correct; then meta_* columns.
    """

    run: dict
    frame: pd.DataFrame
    class_names: list[str]
    has_predictions: bool
    no_predictions_reason: str
    ids: np.ndarray  # (n,) fixed-width str: hover text (copies and serialises fast)
    custom: np.ndarray  # (n, 2) float32 [dataset row, confidence or NaN]: the charts' customdata
    position: pd.Index  # dataset row -> frame position

    @property
    def n(self) -> int:
        return len(self.frame)

    def positions(self, rows) -> np.ndarray:
        """Frame positions of dataset rows (rows not in this run are dropped)."""
        pos = self.position.get_indexer(np.asarray(rows, dtype=np.int64))
        return pos[pos >= 0]

    def meta_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith("meta_") and c != "meta_file"]


def class_name(class_names, i: int) -> str:
    return class_names[i] if 0 <= i < len(class_names) else "unlabelled"


def build_run_data(run: dict, table) -> RunData:
    """RunData from a features run's provenance and its table (pyarrow or pandas,
    embedding/probs columns are ignored)."""
    if not isinstance(table, pd.DataFrame):
        table = table.select([c for c in table.column_names if c not in ("embedding", "probs")]).to_pandas()
    df = table.drop(columns=[c for c in ("embedding", "probs") if c in table.columns]).reset_index(drop=True)
    class_names = [str(c) for c in (run.get("class_names") or [])]
    labels = df["label"].to_numpy(dtype=np.int64)
    if not class_names:
        class_names = [f"class {i}" for i in range(int(labels.max(initial=-1)) + 1)]
    names = np.array(class_names + ["unlabelled"], dtype=object)
    df["true"] = names[np.where((labels >= 0) & (labels < len(class_names)), labels, -1)]
    reason = ""
    has_pred = "pred" in df.columns and bool(run.get("has_head", True))
    if not has_pred:
        reason = "this checkpoint has no classification head, so there are no predictions"
    else:
        mapping = prediction_mapping(class_names, run.get("id2label"))
        if mapping is None:
            has_pred = False
            reason = (f"its head predicts {len(run.get('id2label') or {})} classes that are not this "
                      f"dataset's {len(class_names)}")
        else:
            raw = df["pred"].to_numpy(dtype=np.int64)
            pred = np.where((raw >= 0) & (raw < len(mapping)), mapping[np.clip(raw, 0, len(mapping) - 1)], -1)
            df["pred"] = pred
            df["predicted"] = names[pred]
            df["confidence"] = df["confidence"].astype(np.float32)
            df["correct"] = (pred == labels) & (labels >= 0)
    if not has_pred:
        df = df.drop(columns=[c for c in ("pred", "confidence") if c in df.columns])
    rows = df["row"].to_numpy(np.int64)
    custom = np.full((len(df), 2), np.nan, np.float32)
    custom[:, 0] = rows
    if has_pred:
        custom[:, 1] = df["confidence"].to_numpy(np.float32)
    return RunData(run=run, frame=df, class_names=class_names, has_predictions=has_pred,
                   no_predictions_reason=reason, ids=np.asarray(df["id"].astype(str).to_numpy(), dtype=str),
                   custom=custom, position=pd.Index(rows))


def read_run(run: dict) -> RunData:
    """Read a features parquet without its embeddings (fast even at 200k rows)."""
    schema = pq.read_schema(run["path"])
    cols = [n for n in schema.names if n not in ("embedding", "probs")]
    return build_run_data(run, pq.read_table(run["path"], columns=cols))


def read_embeddings(path) -> np.ndarray:
    """The (n, d) float32 embedding matrix of a features parquet, in file row order."""
    col = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(col), -1), dtype=np.float32)


@dataclass
class MapXY:
    """A projection aligned with a RunData frame (NaN where the projection lacks a row)."""

    x: np.ndarray
    y: np.ndarray
    projection: dict  # provenance


def align_projection(data: RunData, proj_table, projection: dict) -> MapXY:
    if not isinstance(proj_table, pd.DataFrame):
        proj_table = proj_table.to_pandas()
    pos = data.position.get_indexer(proj_table["row"].to_numpy(np.int64))
    ok = pos >= 0
    x = np.full(data.n, np.nan, np.float32)
    y = np.full(data.n, np.nan, np.float32)
    x[pos[ok]] = proj_table["x"].to_numpy(np.float32)[ok]
    y[pos[ok]] = proj_table["y"].to_numpy(np.float32)[ok]
    return MapXY(x, y, projection)


def read_projection(data: RunData, projection: dict) -> MapXY:
    return align_projection(data, pq.read_table(projection["path"], columns=["row", "x", "y"]), projection)


# ---------------------------------------------------------------- scores

def split_mask(frame: pd.DataFrame, split: str) -> np.ndarray:
    if split == "all":
        return np.ones(len(frame), bool)
    return (frame["split"] == split).to_numpy()


def default_split(frame: pd.DataFrame) -> str:
    """Scores on the test split when there is one (the head never saw it), else all."""
    return "test" if (frame["split"] == "test").any() and (frame["split"] != "test").any() else "all"


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """Counts (n, n) int64: rows true class, columns predicted; unlabelled rows ignored."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    ok = (labels >= 0) & (labels < n_classes) & (preds >= 0) & (preds < n_classes)
    return np.bincount(labels[ok] * n_classes + preds[ok], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def row_normalised(cm: np.ndarray) -> np.ndarray:
    sums = cm.sum(1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros(cm.shape, float), where=sums > 0)


def per_class_scores(cm: np.ndarray, class_names) -> pd.DataFrame:
    """precision, recall, F1 and support per class (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    pred_sum, true_sum = cm.sum(0).astype(float), cm.sum(1).astype(float)
    precision = np.divide(tp, pred_sum, out=np.zeros_like(tp), where=pred_sum > 0)
    recall = np.divide(tp, true_sum, out=np.zeros_like(tp), where=true_sum > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame({"class": list(class_names), "precision": precision, "recall": recall, "f1": f1,
                         "support": true_sum.astype(int)})


def macro_f1(scores: pd.DataFrame) -> float:
    present = scores[scores["support"] > 0]
    return float(present["f1"].mean()) if len(present) else 0.0


def delta_f1(head: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Per-class F1 after head-only and full finetuning, ΔF1 = full - head, plus a
    macro row (the paper's Table 1 reading: a small ΔF1 means frozen features work)."""
    out = pd.DataFrame({"class": full["class"], "F1 head-only": head["f1"].to_numpy(),
                        "F1 full": full["f1"].to_numpy()})
    macro = pd.DataFrame({"class": ["macro average"], "F1 head-only": [macro_f1(head)], "F1 full": [macro_f1(full)]})
    out = pd.concat([out, macro], ignore_index=True)
    out["ΔF1"] = out["F1 full"] - out["F1 head-only"]
    return out


def cell_positions(frame: pd.DataFrame, true: int, pred: int, mask=None) -> np.ndarray:
    """Frame positions of galaxies of true class ``true`` predicted as ``pred``,
    most confident first."""
    sel = (frame["label"].to_numpy() == true) & (frame["pred"].to_numpy() == pred)
    if mask is not None:
        sel &= mask
    pos = np.flatnonzero(sel)
    conf = frame["confidence"].to_numpy()[pos]
    return pos[np.argsort(-conf, kind="stable")]


def class_counts(frame: pd.DataFrame, positions, has_predictions: bool) -> pd.DataFrame:
    """Per-class counts of a set of galaxies (true class, and predicted class if any)."""
    sub = frame.iloc[np.asarray(positions, dtype=np.int64)]
    counts = {"true": sub["true"].value_counts()}
    if has_predictions:
        counts["predicted"] = sub["predicted"].value_counts()
    out = pd.DataFrame(counts).fillna(0).astype(int).rename_axis("class")
    return out.sort_values("true", ascending=False, kind="stable")


# ---------------------------------------------------------------- selections

def rows_from_selection(selection) -> list[int]:
    """Dataset rows (the customdata the charts carry) of a Streamlit plotly selection."""
    if not selection:
        return []
    points = selection.get("points", []) if hasattr(selection, "get") else []
    rows = []
    for p in points:
        cd = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(cd, dict):  # a typed array arrives as {"0": ...}
            cd = cd.get("0")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is None:
            continue
        try:
            rows.append(int(cd))
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(rows))


def cell_from_selection(selection) -> tuple[int, int] | None:
    """(true, predicted) of a clicked confusion cell (the click layer's customdata)."""
    points = selection.get("points", []) if selection and hasattr(selection, "get") else []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, dict):  # a typed array arrives as {"0": t, "1": p}
            cd = [cd.get("0"), cd.get("1")]
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            try:
                return int(cd[0]), int(cd[1])
            except (TypeError, ValueError):
                continue
    return None


def selection_csv(data: RunData, positions, xy: MapXY | None = None) -> bytes:
    """CSV of selected galaxies: id, row, split, true class, prediction, confidence, x, y."""
    positions = np.asarray(positions, dtype=np.int64)
    sub = data.frame.iloc[positions]
    out = pd.DataFrame({"id": sub["id"].to_numpy(), "row": sub["row"].to_numpy(), "split": sub["split"].to_numpy(),
                        "true_class": sub["true"].to_numpy()})
    if data.has_predictions:
        out["predicted_class"] = sub["predicted"].to_numpy()
        out["confidence"] = sub["confidence"].to_numpy().round(4)
    if xy is not None:
        out["x"] = xy.x[positions]
        out["y"] = xy.y[positions]
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()


# ---------------------------------------------------------------- neighbours

def row_norms(X: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(X, axis=1), 1e-12).astype(np.float32)


GPU_NEIGHBOURS_FROM = 200_000


def _gpu() -> bool:
    from core.knn import knn_gpu_ready

    return knn_gpu_ready()


def knn(X: np.ndarray, i: int, k: int = 8, metric: str = "cosine", norms: np.ndarray | None = None):
    """The k nearest rows of X (n, d) to row i, itself excluded: (positions, distances).

    cosine distance is 1 - cosine similarity; pass ``norms`` (row_norms(X)) to skip
    recomputing them on every call. No normalised copy of X is made: at 200,000 x 768
    that copy alone would be 600 MB.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be cosine or euclidean, not {metric!r}")
    n = len(X)
    if n >= GPU_NEIGHBOURS_FROM and _gpu():  # at scale: X stays on the GPU between clicks
        from core.knn import nearest_rows

        return nearest_rows(X, i, k, metric)
    k = max(0, min(int(k), n - 1))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if metric == "cosine":
        norms = row_norms(X) if norms is None else norms
        d = 1.0 - (X @ X[i]) / (norms * norms[i])
    else:
        diff = X - X[i]
        d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    d = d.astype(np.float32, copy=False)
    d[i] = np.inf
    idx = np.argpartition(d, k - 1)[:k] if k < n else np.arange(n)
    idx = idx[np.argsort(d[idx], kind="stable")]
    return idx.astype(np.int64), d[idx]
