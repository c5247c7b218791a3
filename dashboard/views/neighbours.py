"""Neighbours: one galaxy and its k nearest galaxies in feature space, in the
generic and the finetuned space side by side."""
from __future__ import annotations

import numpy as np
import streamlit as st

from .. import data as D
from .attention import attention_panel
from .common import Context, embeddings, gallery, run_data, run_index, search_note


def suggestions(ctx: Context) -> np.ndarray:
    """A few galaxies worth a look: the most confident mistakes, else the first ones."""
    f = ctx.data.frame
    if ctx.data.has_predictions:
        wrong = np.flatnonzero(~f["correct"].to_numpy() & (f["label"].to_numpy() >= 0))
        if len(wrong):
            return wrong[np.argsort(-f["confidence"].to_numpy()[wrong], kind="stable")][:8]
    return np.arange(min(8, len(f)))


def neighbours_view(ctx: Context) -> None:
    st.caption("Pick a galaxy to see the galaxies nearest to it in feature space, before and after finetuning. "
               "When most neighbours share its class, the features capture its morphology.")
    c1, c2, c3 = st.columns([2, 2, 1])
    galaxy = c1.text_input("Galaxy id", key="galaxy", bind="query-params",
                           placeholder=f"e.g. {ctx.data.frame['id'].iloc[0]}",
                           help="or press Neighbours under any galaxy in a gallery").strip()
    k = c2.slider("Neighbours (k)", 3, 24, 8, key="k")
    metric = c3.radio("Distance", ["cosine", "euclidean"], key="metric", horizontal=True)
    if not galaxy:
        st.markdown("**Try one of these**" + (" (the most confident mistakes)" if ctx.data.has_predictions else ""))
        gallery(ctx, suggestions(ctx), key="suggest")
        return
    hits = np.flatnonzero(ctx.data.ids == galaxy)
    if not len(hits):
        st.warning(f"No galaxy with id {galaxy!r} in this run.")
        return
    row = int(ctx.data.frame["row"].iloc[hits[0]])
    st.markdown("**The galaxy**")
    gallery(ctx, hits[:1], key="focus", neighbours_button=False)
    attention_panel(ctx, row, key="nb-att")

    from .find import encoder_runs

    runs = encoder_runs(ctx)  # generic, finetuned, then other encoders of these galaxies (e.g. timm:)
    cols = st.columns(len(runs))
    for col, run in zip(cols, runs):
        with col:
            data = run_data(run)
            pos = data.positions([row])
            if not len(pos):
                st.info(f"This galaxy is not in run `{run['key']}`.")
                continue
            X, norms = embeddings(run)
            how = {}
            idx, dist = D.knn_neighbours(X, int(pos[0]), k, metric, norms=norms, index=run_index(run, metric),
                                         search=how)
            labels = data.frame["label"].to_numpy()
            same = int((labels[idx] == labels[pos[0]]).sum())
            st.markdown(f"**{ctx.label(run)}** · {D.model_label(run)} · `{run.get('model')}`")
            st.caption(f"{same} of {len(idx)} neighbours share its class ({data.frame['true'].iloc[pos[0]]}); "
                       f"{metric} distance {dist.min():.3g}–{dist.max():.3g}; {search_note(how)}.")
            if D.is_random_stand_in(run):
                st.caption("ℹ️ This generic checkpoint is the offline demo's random-init stand-in.")
            elif D.is_demo_generic(run):
                st.caption("ℹ️ " + D.DEMO_GENERIC_NOTE)
            if D.run_mode(run) == "head":
                st.caption("Head-only finetuning leaves the features unchanged, so these match the generic ones.")
            gallery(ctx, idx, key=f"nb-{run['key']}", data=data, columns=4, limit=k)
