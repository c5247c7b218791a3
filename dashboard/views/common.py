"""What every view shares: cached loaders, the current context, galleries and
the small pieces of session state (selection, confusion cell, focus galaxy).

Everything heavy is cached by file path and modification time, so switching
between cached runs costs a dictionary lookup; a file rewritten by `core` is
read again.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from core.store import cache as store

from core.data.sky import DEFAULT_LAYER

from .. import data as D
from ..astro import card_lines
from ..thumbs import THUMB_PX, placeholder_png, thumbnail_png

log = logging.getLogger("dashboard")
NO_CELL = "—"


# ---------------------------------------------------------------- cached loading

def mtime(path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


@st.cache_data(show_spinner=False, max_entries=8)
def _list_runs(cache: str, signature: tuple) -> tuple[list[dict], list[dict]]:
    runs = store.list_runs(cache)
    return runs, store.list_damaged(cache, runs)


def _signature(folder: Path, depth: int = 1) -> tuple:
    """(files, newest mtime, total bytes) of a cache folder and its run folders: changes when a
    file is added, removed, rewritten or truncated in place."""
    n = newest = size = 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir():
                    if depth:
                        sub = _signature(Path(e.path), depth - 1)
                        n, newest, size = n + sub[0], max(newest, sub[1]), size + sub[2]
                    continue
                st_ = e.stat()
                n, newest, size = n + 1, max(newest, st_.st_mtime_ns), size + st_.st_size
    except OSError:
        pass
    return n, newest, size


def load_catalog(cache: Path) -> D.Catalog:
    """The catalog of cached runs, and the damaged files (named in the sidebar, never dropped
    silently); re-listed only when a file in the cache changes."""
    signature = tuple(_signature(Path(cache) / k) for k in
                      ("features", "projections", "evaluations", "layers", "anomalies"))
    runs, damaged = _list_runs(str(cache), signature)
    return D.Catalog.from_runs(runs, damaged)


@st.cache_resource(show_spinner="Reading features…", max_entries=12)
def cached_run_data(path: str, mtime_ns: int, key: str) -> D.RunData:
    prov = store.provenance(path) or {}
    return D.read_run({**prov, "key": key, "path": path})


def run_data(run: dict) -> D.RunData:
    return cached_run_data(run["path"], mtime(run["path"]), run["key"])


@st.cache_resource(show_spinner="Reading the map…", max_entries=24)
def cached_map_xy(features_path: str, fmtime: int, key: str, proj_path: str, pmtime: int) -> D.MapXY:
    data = cached_run_data(features_path, fmtime, key)
    return D.read_projection(data, {**(store.provenance(proj_path) or {}), "path": proj_path})


def map_xy(run: dict, projection: dict | None) -> D.MapXY | None:
    if projection is None:
        return None
    return cached_map_xy(run["path"], mtime(run["path"]), run["key"], projection["path"], mtime(projection["path"]))


@st.cache_resource(show_spinner="Reading embeddings…", max_entries=4)
def _embeddings(path: str, mtime: int) -> tuple[np.ndarray, np.ndarray]:
    X = D.read_embeddings(path)
    return X, D.row_norms(X)


@st.cache_resource(show_spinner="Building the run's neighbour index (once per run; it is cached beside the run)…",
                   max_entries=4)
def _run_index(path: str, mtime: int, metric: str, _run: dict):
    from core.analysis.knn_index import get_index

    return get_index(_run, metric, Path(path).parents[1])


def run_index(run: dict, metric: str = "cosine"):
    """The run's kNN index (:mod:`core.analysis.knn_index`) when the run is large enough
    for the kNN entry point to use one (:data:`core.analysis.knn.EXACT_BELOW` rows), else None."""
    from core.analysis import knn

    if int(run.get("rows") or 0) < knn.EXACT_BELOW:
        return None
    return _run_index(run["path"], mtime(run["path"]), metric, run)


def search_note(how: dict) -> str:
    """How a neighbour search was answered, for a caption."""
    if how.get("search") == "index":
        return f"from the run's index ({how.get('library')}, recall@10 {how.get('recall_at_10')} measured at build)"
    return "exact search"


def embeddings(run: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, row norms of X) of a features run, in the order of its RunData frame. A run
    large enough for an index (``run_index``) is never loaded: X is the index's
    memory-mapped features (rows are read when asked for) and the norms are None."""
    index = run_index(run, "cosine")
    if index is not None and index.vectors is not None:
        return index.vectors, None
    return _embeddings(run["path"], mtime(run["path"]))


@st.cache_resource(show_spinner=False, max_entries=8)
def open_source(ref: str):
    """(Dataset, None) or (None, reason). ``ref`` only ever comes from list_runs."""
    try:
        from core.data.sources import open_dataset

        return open_dataset(ref), None
    except Exception as e:  # any source problem -> placeholders, never a traceback
        log.warning("thumbnails unavailable for %s: %s", ref, e)
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


@st.cache_data(show_spinner=False, max_entries=5000)
def thumbnail(ref: str, row: int) -> bytes:
    ds, _ = open_source(ref)
    if ds is None:
        return placeholder_png()
    try:
        return thumbnail_png(ds.image(int(row)), THUMB_PX)
    except Exception as e:
        log.warning("thumbnail %s row %s: %s", ref, row, e)
        return placeholder_png()


def thumbnails_note(ref: str) -> str | None:
    """Why thumbnails are grey placeholders for this dataset, or None."""
    _, reason = open_source(ref)
    return reason


# ---------------------------------------------------------------- context

@dataclass
class Context:
    """What the sidebar chose, loaded."""

    cache: Path
    catalog: D.Catalog
    dataset: str
    run: dict
    data: D.RunData
    method: str
    projection: dict | None
    xy: D.MapXY | None
    colour_by: str
    highlight: list[int]

    def label(self, run: dict | None = None) -> str:
        run = run or self.run
        return {"generic": "generic", "head": "head-only finetune", "full": "full finetune"}.get(
            D.run_mode(run), D.run_mode(run))


def guarded(fn, *args):
    """Run a view; a failure becomes one line on the page and a traceback in the server log."""
    try:
        fn(*args)
    except Exception as e:  # Streamlit's own control flow exceptions are BaseException
        log.exception("view %s failed", getattr(fn, "__name__", fn))
        st.error(f"This view could not be drawn ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                 "The details are in the server log.")


# ---------------------------------------------------------------- shared state

def picked_rows(ctx: Context) -> np.ndarray:
    """Dataset rows selected on a map (box, lasso or click) for this dataset (int64; a lasso on the
    large map can hold a million, so they stay one array, never a Python list)."""
    p = st.session_state.get("picked")
    return np.asarray(p["rows"], dtype=np.int64) if p and p.get("dataset") == ctx.dataset else np.zeros(0, np.int64)


def set_picked(dataset: str, rows) -> None:
    st.session_state["picked"] = {"dataset": dataset, "rows": np.asarray(rows, dtype=np.int64)}


def on_map_select(chart_key: str, dataset: str) -> None:
    """Callback of a map's on_select: keep the selection across reruns and views."""
    event = st.session_state.get(chart_key)
    selection = event.get("selection") if event else None
    rows = D.rows_from_selection(selection)
    if rows or (selection and (selection.get("box") or selection.get("lasso"))):
        set_picked(dataset, rows)


def clear_picked() -> None:
    st.session_state.pop("picked", None)


def chosen_cell(ctx: Context) -> tuple[int, int] | None:
    """The confusion cell (true, predicted) chosen by click or selectboxes.

    The selectboxes live in the Confusion view and are bound to the URL; when that
    view has not been drawn yet in this session, the link's values are read directly.
    """
    names = ctx.data.class_names
    out = []
    for key in ("cell_true", "cell_pred"):
        value = st.session_state.get(key)
        if value is None:
            value = st.query_params.get(key)
        if value not in names:
            return None
        out.append(names.index(value))
    return out[0], out[1]


def focus(galaxy_id: str) -> None:
    """Callback: open the Neighbours view on this galaxy."""
    st.session_state["galaxy"] = galaxy_id
    st.session_state["view"] = "Neighbours"


# ---------------------------------------------------------------- galleries

def gallery(ctx: Context, positions, key: str, limit: int = 24, columns: int = 8,
            data: D.RunData | None = None, neighbours_button: bool = True, notes=None) -> None:
    """Thumbnails with id, true class, prediction and confidence, sky position, redshift and
    survey links where known; each can open its neighbours. ``positions`` index ``data.frame``
    (default: the current run); ``notes``: an extra line per card (e.g. a score)."""
    data = data or ctx.data
    positions = np.asarray(positions, dtype=np.int64)[:limit]
    if not len(positions):
        return
    ref = data.run["dataset"]
    frame = data.frame
    cols = st.columns(columns)
    for j, p in enumerate(positions):
        r = frame.iloc[int(p)]
        with cols[j % columns]:
            st.image(thumbnail(ref, int(r["row"])), width=THUMB_PX)
            lines = [f"**{r['id']}**", f"true: {r['true']}"]
            if data.has_predictions:
                mark = ":green[✓]" if r["correct"] else ":red[✗]"
                lines.append(f"{mark} pred: {r['predicted']} ({r['confidence']:.2f})")
            if notes is not None:
                lines.append(str(notes[j]))
            lines += card_lines(r, st.session_state.get("survey_layer") or DEFAULT_LAYER)
            st.caption("  \n".join(lines))
            if neighbours_button:
                st.button("Neighbours", key=f"{key}-nb-{j}", on_click=focus, args=(str(r["id"]),),
                          type="tertiary", help="show its nearest galaxies in feature space")
    note = thumbnails_note(ref)
    if note:
        st.caption(f"Images are grey placeholders: the dataset could not be opened ({note}).")
