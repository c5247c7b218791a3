"""Confusion: where the classifier goes wrong, which galaxies those are, and
per-class scores (with the head-only vs full ΔF1 table when both runs exist)."""
from __future__ import annotations

from functools import partial

import numpy as np
import streamlit as st

from core.models.modes import leakage

from .. import data as D
from ..figures import confusion_figure, map_figure
from .attention import cell_attention
from .common import NO_CELL, Context, chosen_cell, gallery, on_map_select, run_data

SPLIT_NAMES = {"test": "test split", "train": "train split", "all": "all galaxies"}


def on_cell_click(class_names: list[str]) -> None:
    event = st.session_state.get("cm_chart")
    cell = D.cell_from_selection(event.get("selection") if event else None)
    if cell is not None and max(cell) < len(class_names):
        st.session_state["cell_true"] = class_names[cell[0]]
        st.session_state["cell_pred"] = class_names[cell[1]]


def scores_table(scores):
    return st.dataframe(
        scores, hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(c, format="%.2f") for c in ("precision", "recall", "f1")})


def delta_table(ctx: Context, split: str) -> None:
    head_run = ctx.catalog.counterpart(ctx.run, "head")
    full_run = ctx.catalog.counterpart(ctx.run, "full")
    if not head_run or not full_run:
        return
    scores = []
    for run in (head_run, full_run):
        d = run_data(run)
        if not d.has_predictions:
            return
        scores.append(D.split_scores(d.frame, d.class_names, split))
    st.markdown("**ΔF1: what finetuning every parameter adds over training the head alone**")
    st.caption("ΔF1 = F1 (full) − F1 (head-only), per class and for the macro average. A small ΔF1 means the "
               "frozen features were already good; the paper finds DINOv2 has the smallest gap of the families.")
    st.dataframe(D.per_class_delta(*scores), hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(c, format="%+.2f" if c == "ΔF1" else "%.2f")
                                for c in ("F1 head-only", "F1 full", "ΔF1")})


def confusion_view(ctx: Context) -> None:
    data = ctx.data
    if not data.has_predictions:
        st.info(f"No confusion matrix here: {data.no_predictions_reason}. Choose mode head or full in the sidebar.")
        return
    st.caption("Rows are the true class (Galaxy Zoo volunteers' label), columns the class the model predicted; "
               "the diagonal holds the correct answers. Click a cell, or choose it below, to see its galaxies "
               "and where they sit on the map.")
    names = data.class_names
    frame = data.frame
    splits = [s for s in ("test", "train", "all") if s == "all" or (frame["split"] == s).any()]
    default = D.default_split(frame)
    c1, c2 = st.columns([1, 2])
    split = c1.radio("Galaxies", splits, index=splits.index(default), format_func=SPLIT_NAMES.get, horizontal=True,
                     key="cell_split", help="score on the test split: the classifier never trained on it")
    normalised = c2.toggle("Row-normalised (share of each true class)", key="cm_norm")
    mask = D.split_mask(frame, split)
    st.caption(f"Training images among these galaxies: {leakage(data.run, frame['split'][mask])['text']}.")
    report = D.split_scores(frame, names, split)
    cm = report["confusion"]
    cell = chosen_cell(ctx)

    left, right = st.columns(2)
    with left:
        st.plotly_chart(confusion_figure(cm, names, normalised, cell), key="cm_chart", selection_mode="points",
                        on_select=partial(on_cell_click, names), config={"displayModeBar": False})
        a, b = st.columns(2)
        a.selectbox("True class", [NO_CELL, *names], key="cell_true", bind="query-params")
        b.selectbox("Predicted class", [NO_CELL, *names], key="cell_pred", bind="query-params")
    cell_pos = D.cell_positions(frame, *cell, mask) if cell else np.zeros(0, np.int64)
    with right:
        if ctx.xy is not None:
            marked = {f"cell {names[cell[0]]} → {names[cell[1]]}": cell_pos} if cell else {}
            fig = map_figure(data, ctx.xy, ctx.colour_by, ctx.highlight, marked, height=480, show_legend=False)
            st.plotly_chart(fig, key="cm_map", on_select=partial(on_map_select, "cm_map", ctx.dataset),
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
            st.caption("The chosen cell's galaxies are ringed on the map." if cell else
                       "Choose a cell to ring its galaxies on the map.")
        else:
            st.caption(f"No {D.METHODS.get(ctx.method, ctx.method)} map cached for this run.")

    if cell:
        t, p = cell
        verdict = "correctly classified" if t == p else "misclassified"
        st.subheader(f"{len(cell_pos):,} galaxies of class {names[t]} predicted as {names[p]}")
        st.caption(f"{verdict.capitalize()}, {SPLIT_NAMES[split]}, most confident first"
                   + (f"; showing 24 of {len(cell_pos):,}." if len(cell_pos) > 24 else "."))
        gallery(ctx, cell_pos, key="cell")
        cell_attention(ctx, cell_pos)
    st.divider()
    s1, s2 = st.columns(2)
    with s1:
        st.markdown(f"**Per-class scores ({SPLIT_NAMES[split]})**")
        st.caption(f"accuracy {report['accuracy']:.3f} · macro F1 {report['macro_f1']:.3f} · "
                   "precision: of the galaxies predicted as this class, the share that are; recall: of this "
                   "class, the share found.")
        scores_table(report["per_class"])
    with s2:
        delta_table(ctx, split)
