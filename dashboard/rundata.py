"""One features run as the dashboard shows it: its galaxies (without embeddings),
their predictions mapped onto the dataset's classes, and its map coordinates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from core.store import cache as store
from core.analysis.evaluation import prediction_mapping  # one definition, shared with `python -m core evaluate`


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
    identity: bool = False  # dataset row == frame position for every galaxy (a run of the whole dataset)

    @property
    def n(self) -> int:
        return len(self.frame)

    def positions(self, rows) -> np.ndarray:
        """Frame positions of dataset rows (rows not in this run are dropped)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.identity:  # no hash table: 10M galaxies, a 650k-row selection in ms instead of 0.5 s
            return rows[(rows >= 0) & (rows < self.n)]
        pos = self.position.get_indexer(rows)
        return pos[pos >= 0]

    def meta_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith("meta_") and c != "meta_file"]


def fixed_width_ids(column) -> np.ndarray | None:
    """A string column's values as a fixed-width numpy str array straight from its Arrow buffers
    when every value is ASCII of one length (survey ids usually are: 10M in ~0.2 s instead of
    ~2.5 s through Python strings); None otherwise."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_string(col.type) or col.null_count or len(col) == 0:
        return None
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32, count=len(col) + 1, offset=col.offset * 4)
    width = int(offsets[1] - offsets[0])
    if width <= 0 or (np.diff(offsets) != width).any():
        return None
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    if (data >= 128).any():
        return None
    return data.view(f"S{width}").astype(f"U{width}")


def _named(codes: np.ndarray, names: np.ndarray) -> pd.Categorical | np.ndarray:
    """Class names of class indices (anything out of range: the last name, "unlabelled"), as a
    categorical: one byte per galaxy instead of a string (10M galaxies: 10 MB, not 250 MB)."""
    k = len(names) - 1
    codes = np.where((codes >= 0) & (codes < k), codes, k)
    if len(set(names.tolist())) < len(names):  # two classes of one name: plain strings
        return names[codes]
    return pd.Categorical.from_codes(codes, categories=pd.Index(names.tolist(), dtype=object))


def build_run_data(run: dict, table) -> RunData:
    """RunData from a features run's provenance and its table (pyarrow or pandas,
    embedding/probs columns are ignored)."""
    ids = None
    if not isinstance(table, pd.DataFrame):  # column by column, each freed once converted: no second copy at once
        ids = fixed_width_ids(table.column("id")) if "id" in table.column_names else None
        table = table.select([c for c in table.column_names if c not in ("embedding", "probs")]).to_pandas(
            self_destruct=True, split_blocks=True)
    df = table.drop(columns=[c for c in ("embedding", "probs") if c in table.columns]).reset_index(drop=True)
    if "split" in df.columns:
        df["split"] = df["split"].astype("category")  # a few distinct values: one byte per galaxy
    class_names = [str(c) for c in (run.get("class_names") or [])]
    labels = df["label"].to_numpy(dtype=np.int64)
    if not class_names:
        class_names = [f"class {i}" for i in range(int(labels.max(initial=-1)) + 1)]
    names = np.array(class_names + ["unlabelled"], dtype=object)
    df["true"] = _named(labels, names)
    reason = ""
    has_pred = "pred" in df.columns and bool(run.get("has_head", True))
    if not has_pred:
        reason = "this checkpoint has no classification head, so there are no predictions"
    elif run.get("mode") == "generic":  # a head over other classes (ImageNet...): never scored
        has_pred = False
        reason = "this generic checkpoint's head was not trained on these galaxy classes, so it is not scored"
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
            df["predicted"] = _named(pred, names)
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
                   no_predictions_reason=reason, ids=ids if ids is not None else np.asarray(df["id"].astype(str).to_numpy(), dtype=str),
                   custom=custom, position=pd.Index(rows),
                   identity=bool(np.array_equal(rows, np.arange(len(rows)))))


def read_run(run: dict) -> RunData:
    """Read a features parquet without its embeddings (fast even at 200k rows)."""
    schema = store.read_schema(run["path"])  # a file or a sharded run's folder
    cols = [n for n in schema.names if n not in ("embedding", "probs")]
    return build_run_data(run, pq.read_table(run["path"], columns=cols))


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
