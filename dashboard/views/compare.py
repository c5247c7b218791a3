"""Compare: the generic and the finetuned map side by side, linked. What you
select in one is ringed in the other; highlighted classes apply to both.
A third run on the same galaxies (e.g. a galaxy-native `timm:` encoder) can be
added beside them: three maps, their quality numbers and per-class kNN accuracy."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import streamlit as st

from .. import data as D
from ..catalog import unique_labels
from ..figures import colour_options, map_figure
from .bigmap import big_map, wants_big_map
from .common import Context, map_xy, on_map_select, run_data
from .map import marked_positions, selection_panel

NO_THIRD = "none"


def compare_view(ctx: Context) -> None:
    generic = ctx.catalog.counterpart(ctx.run, "generic")
    tuned = ctx.catalog.finetuned_for(ctx.run)
    if generic is None or tuned is None:
        missing = "generic" if generic is None else "finetuned"
        st.info(f"Nothing to compare: no {missing} run of {D.model_label(ctx.run)} is cached for this dataset.")
        if any(ctx.catalog.counterpart(r, "generic") and ctx.catalog.finetuned_for(r)
               for r in ctx.catalog.runs(ctx.dataset) if r["key"] != ctx.run["key"]):
            st.caption("To see this run beside a generic and a finetuned model, choose that model in the sidebar "
                       "and add this run as the third map here.")
        return
    st.caption("Left, the features of the checkpoint as pretrained; right, after finetuning on the galaxy labels "
               "(the map is aligned to the left one). Classes that mix on the left and form separate islands on "
               "the right are what finetuning taught the model. Select galaxies in either map: they are ringed "
               "in both.")
    third = third_run(ctx, generic, tuned)
    method = D.METHODS.get(ctx.method, ctx.method)
    shown = [(generic, "cmp_generic", None), (tuned, "cmp_tuned", generic["key"])]
    if third is not None:
        shown.append((third, "cmp_third_map", generic["key"]))  # aligned when such a map is cached, else its own
    cols = st.columns(len(shown))
    qualities = []
    for col, (run, key, aligned_to) in zip(cols, shown):
        with col:
            data = run_data(run)
            projection = ctx.catalog.projection(run["key"], ctx.method, aligned_to)
            xy = map_xy(run, projection)
            title = f"{ctx.label(run)} · {run.get('model')}"
            if run is third and D.model_label(run) != D.model_label(generic):
                title += f" ({D.model_label(run)})"
            if data.has_predictions:
                report = D.split_scores(data.frame, data.class_names, D.default_split(data.frame))
                title += f" · macro F1 {report['macro_f1']:.2f}"
            st.markdown(f"**{title}**")
            if xy is None:
                st.info(f"No {method} map cached for `{run['key']}`"
                        + (f": `python -m core project --run {run['key']} --method {ctx.method}`." if run is third
                           else "."))
                qualities.append(None)
                continue
            sub = replace(ctx, run=run, data=data, projection=projection, xy=xy)
            colour = ctx.colour_by if ctx.colour_by in colour_options(data) else "true class"
            if wants_big_map(sub):  # large runs: the WebGL map (views/bigmap.py)
                big_map(replace(sub, colour_by=colour), marked_positions(sub), height=500, key=key, stars=False)
            else:
                legend = key == shown[-1][1]
                fig = map_figure(data, xy, colour, ctx.highlight, marked_positions(sub),
                                 height=500 + (150 if legend and third is not None else 0), show_legend=legend)
                if legend and third is not None:  # three narrow columns: the legend under the map, not beside it
                    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=0, x=0))
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
    third_name = None
    if third is not None:
        third_name = (D.model_label(third) if D.model_label(third) != D.model_label(generic)
                      else ctx.label(third))
    class_knn_table(*qualities[:2], third_fq=qualities[2] if third is not None else None, third_name=third_name)
    selection_panel(ctx, key="cmp")


def third_candidates(ctx: Context, generic: dict, tuned: dict) -> dict[str, dict]:
    """label -> features run: every other run on this dataset (any model, e.g. a `timm:` encoder)."""
    shown = {generic["key"], tuned["key"]}
    runs = [r for r in ctx.catalog.runs(ctx.dataset) if r["key"] not in shown]
    return unique_labels(runs, lambda r: f"{D.model_label(r)} · {ctx.label(r)} · {r.get('model')}")


def third_run(ctx: Context, generic: dict, tuned: dict) -> dict | None:
    """The run the user added as a third map, or None. No control when there is nothing to add."""
    candidates = third_candidates(ctx, generic, tuned)
    if not candidates:
        return None
    left, _ = st.columns([2, 3])
    choice = left.selectbox("Add a third run", [NO_THIRD, *candidates], key="cmp_third", bind="query-params",
                            help="another features run on the same galaxies, e.g. a galaxy-native encoder "
                                 "(`timm:`): its map, quality numbers and per-class kNN accuracy beside "
                                 "the generic and the finetuned ones")
    return candidates.get(choice)


def class_knn_table(generic_fq: dict | None, tuned_fq: dict | None, third_fq: dict | None = None,
                    third_name: str | None = None) -> None:
    """Per-class kNN accuracy before and after finetuning (from the maps' recorded feature quality),
    plus a third run's column when one was added."""
    from core.analysis.maps.quality import class_knn_change

    if not (generic_fq or {}).get("per_class") or not (tuned_fq or {}).get("per_class"):
        return
    table = class_knn_change(generic_fq, tuned_fq)
    text = ("**Which classes finetuning separated** · per-class kNN accuracy in the feature space "
            f"(leave-one-out, k={tuned_fq.get('k', 10)}): the share of a class's galaxies whose nearest "
            "neighbours mostly share their class. Top: what finetuning separated; bottom: what stayed mixed.")
    if (third_fq or {}).get("per_class"):
        column = f"{third_name} kNN" if f"{third_name} kNN" not in table.columns else "third run kNN"
        by_class = {r["class"]: r.get("knn_accuracy") for r in third_fq["per_class"]}
        table.insert(table.columns.get_loc("change"), column, table["class"].map(by_class))
        text += f" `{column}`: the third run's, on the same galaxies."
    st.markdown(text)
    st.dataframe(table, hide_index=True, key="cmp_class_knn", column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if c not in ("class", "n")})
