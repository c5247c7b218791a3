"""The map: every galaxy as a dot, placed so that galaxies with similar features
sit close together. Box, lasso or click selects galaxies -> gallery + CSV."""
from __future__ import annotations

import threading
import time
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from .. import data as D
from ..figures import map_figure
from .bigmap import big_map, wants_big_map
from .placement import placed_other_dataset
from .share import export_panel
from .common import Context, chosen_cell, clear_picked, gallery, log, on_map_select, picked_rows

QUALITY_HELP = {
    "knn_preservation": "share of each galaxy's nearest neighbours in feature space that stay its neighbours "
                        "on the map (1 = perfect)",
    "trustworthiness": "how rarely the map puts galaxies together that are far apart in feature space (1 = never)",
    "knn_accuracy": "share of galaxies whose 10 nearest neighbours in feature space mostly share their class "
                    "(computed on the features, not the map); low for a class = it is scattered",
    "silhouette": "how much closer galaxies are to their own class than to the nearest other class "
                  "(-1 to 1; near 0 or below = classes overlap)",
}


def marked_positions(ctx: Context, include_picked: bool = True) -> dict[str, np.ndarray]:
    """Galaxies to ring on a map: the chosen confusion cell and the current selection."""
    out = {}
    cell = chosen_cell(ctx) if ctx.data.has_predictions else None
    if cell is not None:
        t, p = cell
        names = ctx.data.class_names
        mask = D.split_mask(ctx.data.frame, st.session_state.get("cell_split") or D.default_split(ctx.data.frame))
        out[f"cell {names[t]} → {names[p]}"] = D.cell_positions(ctx.data.frame, t, p, mask)
    if include_picked:
        rows = picked_rows(ctx)
        if len(rows):
            out["selected"] = ctx.data.positions(rows)
    return out


def quality_panel(ctx: Context) -> None:
    prov = ctx.projection or {}
    st.markdown(f"**{D.METHODS.get(ctx.method, ctx.method)} map quality**")
    quality = prov.get("quality") or {}
    shown = 0
    for name in ("knn_preservation", "trustworthiness"):
        if isinstance(quality.get(name), (int, float)):
            st.metric(name.replace("_", " ").replace("knn", "kNN"), f"{quality[name]:.2f}", help=QUALITY_HELP[name])
            shown += 1
    if not shown:
        st.caption("No quality numbers were recorded for this map.")
    if prov.get("layout"):  # e.g. bench/make_big_run.py's stand-in for a t-SNE of a million galaxies
        st.caption(f"This map is a {prov['layout']}.")
    if prov.get("aligned_to"):
        st.caption("Aligned to the generic map, so the two can be compared side by side.")
    features = prov.get("feature_quality") or {}
    if isinstance(features.get("knn_accuracy"), (int, float)):
        st.markdown("**Class structure of the features**")
        st.metric("kNN accuracy", f"{features['knn_accuracy']:.2f}", help=QUALITY_HELP["knn_accuracy"])
        if isinstance(features.get("silhouette"), (int, float)):
            st.metric("silhouette", f"{features['silhouette']:.2f}", help=QUALITY_HELP["silhouette"])


def overlay_other_datasets(ctx: Context, fig) -> None:
    """Optionally draw another dataset's galaxies as stars placed into this Plotly map."""
    import plotly.graph_objects as go

    got = placed_other_dataset(ctx)
    if got is None:
        return
    df, other, name = got
    names = other.get("class_names") or ctx.data.class_names
    cls = lambda i: names[i] if 0 <= i < len(names) else "unlabelled"  # noqa: E731
    text = [f"{gid}<br>true: {cls(int(t))}" + (f"<br>predicted: {cls(int(p))}" if "pred" in df else "")
            for gid, t, p in zip(df["id"], df["label"], df["pred"] if "pred" in df else df["label"])]
    fig.add_trace(go.Scattergl(
        x=df["x"].to_numpy(np.float32), y=df["y"].to_numpy(np.float32), mode="markers", name=f"{name} (placed)",
        marker=dict(symbol="star", size=13, color="gold", line=dict(color="black", width=1)),
        hovertext=text, hoverinfo="text"))
    st.caption(f"Stars: {len(df)} galaxies of {name} placed in this map. Each star sits among the galaxies "
               "whose features it resembles most.")


def per_class_structure(ctx: Context) -> None:
    """Per class: is it a compact island (high kNN accuracy, positive silhouette) or scattered?"""
    per_class = pd.DataFrame(((ctx.projection or {}).get("feature_quality") or {}).get("per_class") or [])
    if not len(per_class):
        return
    # Drawn only once opened (on_change="rerun" makes .open known): a table on a closed expander would make
    # every first page load fetch and start Streamlit's data-grid code before the map could show.
    with (exp := st.expander("Which classes form islands, and which scatter? (per class, in feature space)",
                             key="per-class-structure", on_change="rerun")):
        if not exp.open:
            return
        table = per_class.set_index("class")[["n", "knn_accuracy", "silhouette"]].rename(
            columns={"n": "galaxies", "knn_accuracy": "kNN accuracy"}).sort_values("kNN accuracy")
        st.dataframe(table.style.format({"kNN accuracy": "{:.2f}", "silhouette": "{:.2f}"}), width="stretch")
        st.caption("Lowest first. A class with low kNN accuracy and a silhouette near or below 0 is scattered "
                   "among others: in Galaxy10, Disturbed.")


# Rough seconds per 1,000 galaxies on 2 CPU cores (DESIGN.md: openTSNE 61 s for 17,736), for the progress bar.
SECONDS_PER_1000 = {"tsne": 3.5, "umap": 2.0, "pca": 0.05}


def compute_projection(ctx: Context, name: str) -> bool:
    """Ask core for the map, with a progress bar against a rough time estimate. True when done."""
    from core.analysis.maps import store as mapstore

    generic = ctx.catalog.counterpart(ctx.run, "generic")
    align = generic["key"] if generic and generic is not ctx.run else None
    result: dict = {}

    def work():
        try:
            mapstore.get_projection(ctx.run["key"], ctx.method, cache=ctx.cache, align_to=align, progress=False)
        except Exception as e:  # reported below, in the script thread
            result["error"] = e

    estimate = max(2.0, SECONDS_PER_1000.get(ctx.method, 3.0) * ctx.data.n / 1000 * (2 if align else 1))
    bar = st.progress(0.0, text=f"Computing the {name} map of {ctx.data.n:,} galaxies…")
    worker = threading.Thread(target=work, daemon=True, name="projection")
    t0 = time.monotonic()
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
        elapsed = time.monotonic() - t0
        bar.progress(min(elapsed / estimate, 0.97),
                     text=f"Computing the {name} map of {ctx.data.n:,} galaxies: {elapsed:.0f} s "
                          f"(about {estimate:.0f} s expected)")
    bar.empty()
    if "error" in result:
        e = result["error"]
        log.error("projection failed", exc_info=e)
        st.error(f"Could not compute the map: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return False
    return True


def missing_projection(ctx: Context) -> None:
    name = D.METHODS.get(ctx.method, ctx.method)
    cached = [D.METHODS[m] for m in ctx.catalog.projection_methods(ctx.run["key"])]
    st.info(f"No {name} map is cached for this run yet."
            + (f" Cached: {', '.join(cached)}." if cached else ""))
    if st.button(f"Compute the {name} map now", key="compute-map", type="primary"):
        if compute_projection(ctx, name):
            st.rerun()


def selection_panel(ctx: Context, key: str = "map") -> None:
    rows = picked_rows(ctx)
    if not len(rows):
        st.caption("Drag a box or a lasso on the map (or click a galaxy) to list the galaxies you select.")
        return
    pos = ctx.data.positions(rows)
    st.subheader(f"Selected galaxies: {len(pos):,}")
    left, right = st.columns([2, 5])
    with left:
        st.dataframe(D.class_counts(ctx.data.frame, pos, ctx.data.has_predictions), width="stretch")
        layer = st.session_state.get("survey_layer") or "ls-dr10"
        st.download_button("Download selection (CSV)", lambda: D.selection_csv(ctx.data, pos, ctx.xy, layer),
                           file_name="selected-galaxies.csv", mime="text/csv", key=f"{key}-csv",
                           on_click="ignore")
        st.button("Clear selection", key=f"{key}-clear", on_click=clear_picked)
    with right:
        order = pos
        if ctx.data.has_predictions:  # the 24 most confident, without sorting a selection of a million
            conf = ctx.data.frame["confidence"].to_numpy()[pos]
            top = np.argpartition(-conf, 23)[:24] if len(pos) > 24 else np.arange(len(pos))
            order = pos[top[np.lexsort((top, -conf[top]))]]
        if len(pos) > 24:
            st.caption(f"First 24 of {len(pos):,}" + (", most confident first" if ctx.data.has_predictions else "")
                       + "; the CSV lists them all.")
        gallery(ctx, order, key=f"{key}-sel", columns=6)


def map_view(ctx: Context) -> None:
    st.caption("Each dot is one galaxy, placed so that galaxies whose features are similar sit close together. "
               "Well-separated colour islands mean the model tells those classes apart. Hover a dot for its "
               "classes; drag a box or lasso (toolbar) to select galaxies.")
    if ctx.xy is None:
        missing_projection(ctx)
        return
    left, right = st.columns([5, 1])
    with left:
        if wants_big_map(ctx):  # large runs: WebGL fed binary columns (views/bigmap.py)
            big_map(ctx, marked_positions(ctx))
        else:
            fig = map_figure(ctx.data, ctx.xy, ctx.colour_by, ctx.highlight, marked_positions(ctx))
            overlay_other_datasets(ctx, fig)
            st.plotly_chart(fig, key="map_chart", on_select=partial(on_map_select, "map_chart", ctx.dataset),
                            selection_mode=("points", "box", "lasso"),
                            config={"scrollZoom": True, "displaylogo": False})
    with right:
        quality_panel(ctx)
        st.metric("galaxies", f"{ctx.data.n:,}")
    per_class_structure(ctx)
    selection_panel(ctx)
    export_panel(ctx)
