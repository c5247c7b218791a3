"""Where the models look: CLS-to-patch attention of the generic and the finetuned
checkpoint side by side, on the crop each model saw (Neighbours view and the
confusion gallery). Computed on demand for one galaxy, cached by core."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core.analysis import attention as A

from .. import data as D
from ..layerfigs import overlay, png
from .common import Context, log, open_source

SIZE = 150


@st.cache_resource(show_spinner="Loading the checkpoint…", max_entries=4)
def _checkpoint(model_ref: str, cache: str):
    from core.models.load import load_checkpoint

    return load_checkpoint(model_ref, cache=cache)


def _maps(ctx: Context, run: dict, row: int):
    ds, reason = open_source(run["dataset"])
    if ds is None:
        raise A.AttentionUnavailable(f"the dataset could not be opened ({reason})")
    return A.get(lambda: _checkpoint(run["model"], str(ctx.cache)), ds, int(row), run.get("model_fingerprint", ""),
                 cache=ctx.cache)


def compared_runs(ctx: Context) -> list[dict]:
    runs = []
    for run in (ctx.catalog.counterpart(ctx.run, "generic"), ctx.catalog.finetuned_for(ctx.run)):
        if run is not None and run not in runs:
            runs.append(run)
    return runs


def attention_panel(ctx: Context, row: int, key: str) -> None:
    """Attention of each compared checkpoint for dataset row ``row``."""
    st.markdown("**Where the models look** — attention of the CLS token to each patch, on the crop the model saw")
    runs = compared_runs(ctx)
    cols = st.columns(len(runs))
    for col, run in zip(cols, runs):
        with col:
            st.markdown(f"{ctx.label(run)} · `{run.get('model')}`")
            try:
                maps = _maps(ctx, run, row)
            except A.AttentionUnavailable as e:
                st.info(f"No attention map: {e}.")
                continue
            except Exception as e:  # a checkpoint that cannot be loaded here: one line, the rest of the view stays
                log.exception("attention %s row %s", run.get("model"), row)
                st.warning(f"No attention map ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).")
                continue
            size = maps["crop"].shape[0]
            a, b, c = st.columns(3)
            a.image(png(overlay(maps["crop"], np.zeros((1, 1)), SIZE, alpha=0)), caption=f"input ({size} px)")
            b.image(png(overlay(maps["crop"], maps["mean"], SIZE)), caption="last block, mean of heads")
            c.image(png(overlay(maps["crop"], maps["rollout"], SIZE)), caption="rollout, all blocks")
            if st.toggle("each head", key=f"{key}-heads-{run['key']}"):
                heads = st.columns(min(len(maps["heads"]), 6))
                for i, h in enumerate(maps["heads"]):
                    heads[i % len(heads)].image(png(overlay(maps["crop"], h, 96)), caption=f"head {i + 1}")
            if D.is_random_stand_in(run):
                st.caption("ℹ️ Random-init stand-in: its attention is not learned.")
            elif D.is_demo_generic(run):
                st.caption("ℹ️ Self-supervised demo model (DINO on synthetic galaxies, no labels): "
                           "attention learned without any class.")
            elif D.run_mode(run) == "head":
                st.caption("Head-only finetuning leaves the blocks unchanged: the same attention as generic.")
    st.caption("Bright = where the CLS token draws from. Rollout follows the attention through every block, "
               "residual connections included (Abnar & Zuidema 2020).")


def cell_attention(ctx: Context, positions) -> None:
    """Confusion gallery: pick one of the cell's galaxies to see where the models looked."""
    positions = np.asarray(positions, dtype=np.int64)[:24]
    if not len(positions):
        return
    if not st.toggle("Where did the models look? (attention of one of these galaxies)", key="cell_attention"):
        return
    frame = ctx.data.frame
    ids = [str(frame["id"].iloc[int(p)]) for p in positions]
    choice = st.selectbox("Galaxy", ids, key="cell_attention_galaxy")
    attention_panel(ctx, int(frame["row"].iloc[int(positions[ids.index(choice)])]), key="cell-att")
