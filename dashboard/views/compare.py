"""Compare: the generic and the finetuned map side by side, linked. What you
select in one is ringed in the other; highlighted classes apply to both."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import streamlit as st

from .. import data as D
from ..figures import colour_options, map_figure
from .bigmap import big_map, wants_big_map
from .common import Context, map_xy, on_map_select, run_data
from .map import marked_positions, selection_panel


def compare_view(ctx: Context) -> None:
    generic = ctx.catalog.counterpart(ctx.run, "generic")
    tuned = ctx.catalog.finetuned_for(ctx.run)
    if generic is None or tuned is None:
        missing = "generic" if generic is None else "finetuned"
        st.info(f"Nothing to compare: no {missing} run of {D.model_label(ctx.run)} is cached for this dataset.")
        return
    st.caption("Left, the features of the checkpoint as pretrained; right, after finetuning on the galaxy labels "
               "(the map is aligned to the left one). Classes that mix on the left and form separate islands on "
               "the right are what finetuning taught the model. Select galaxies in either map: they are ringed "
               "in both.")
    method = D.METHODS.get(ctx.method, ctx.method)
    cols = st.columns(2)
    qualities = []
    for col, run, key in ((cols[0], generic, "cmp_generic"), (cols[1], tuned, "cmp_tuned")):
        with col:
            data = run_data(run)
            projection = ctx.catalog.projection(run["key"], ctx.method, None if run is generic else generic["key"])
            xy = map_xy(run, projection)
            title = f"{ctx.label(run)} · {run.get('model')}"
            if data.has_predictions:
                report = D.split_scores(data.frame, data.class_names, D.default_split(data.frame))
                title += f" · macro F1 {report['macro_f1']:.2f}"
            st.markdown(f"**{title}**")
            if xy is None:
                st.info(f"No {method} map cached for `{run['key']}`.")
                qualities.append(None)
                continue
            sub = replace(ctx, run=run, data=data, projection=projection, xy=xy)
            colour = ctx.colour_by if ctx.colour_by in colour_options(data) else "true class"
            if wants_big_map(sub):  # large runs: the WebGL map (views/bigmap.py)
                big_map(replace(sub, colour_by=colour), marked_positions(sub), height=500, key=key, stars=False)
            else:
                fig = map_figure(data, xy, colour, ctx.highlight, marked_positions(sub), height=500,
                                 show_legend=run is tuned)
                st.plotly_chart(fig, key=key, on_select=partial(on_map_select, key, ctx.dataset),
                                selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
            q = (projection or {}).get("quality") or {}
            fq = (projection or {}).get("feature_quality") or {}
            numbers = [("kNN preservation", q.get("knn_preservation")), ("trustworthiness", q.get("trustworthiness")),
                       ("feature kNN accuracy", fq.get("knn_accuracy")), ("silhouette", fq.get("silhouette"))]
            st.caption(" · ".join(f"{name} {v:.2f}" for name, v in numbers if isinstance(v, (int, float)))
                       or "no quality numbers recorded")
            if D.is_random_stand_in(run):
                st.caption("ℹ️ The offline demo's generic checkpoint is a randomly initialised stand-in, "
                           "not a pretrained model.")
            elif D.is_demo_generic(run):
                st.caption("ℹ️ " + D.DEMO_GENERIC_NOTE)
            qualities.append(fq)
    class_knn_table(*qualities)
    selection_panel(ctx, key="cmp")


def class_knn_table(generic_fq: dict | None, tuned_fq: dict | None) -> None:
    """Per-class kNN accuracy before and after finetuning (from the maps' recorded feature quality)."""
    from core.mapquality import class_knn_change

    if not (generic_fq or {}).get("per_class") or not (tuned_fq or {}).get("per_class"):
        return
    table = class_knn_change(generic_fq, tuned_fq)
    st.markdown("**Which classes finetuning separated** · per-class kNN accuracy in the feature space "
                f"(leave-one-out, k={tuned_fq.get('k', 10)}): the share of a class's galaxies whose nearest "
                "neighbours mostly share their class. Top: what finetuning separated; bottom: what stayed mixed.")
    st.dataframe(table, hide_index=True, key="cmp_class_knn", column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if c not in ("class", "n")})
