"""Layers: where finetuning changed the network, block by block.

Per block: how separable the classes are (standardised linear probe, macro F1,
and a kNN vote, train -> test galaxies) for each mode, and how similar the
finetuned block is to the generic one (linear CKA on the same galaxies), with a
sentence that reads the curves. Scores are computed by ``core.analysis.layers`` on the
first visit and cached beside the per-layer features.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.extract import layers as lf
from core.analysis import layers as L

from .. import data as D
from ..layerfigs import MODE_NAMES, cka_figure, curves_figure
from .common import Context, mtime

KIND_NAMES = {"cls": "CLS token", "mean": "mean of patch tokens"}


@st.cache_data(show_spinner=False, max_entries=8)
def _layer_runs(cache: str, signature: int) -> dict:
    return {r["key"]: r for r in lf.layer_runs(cache)}


def layer_runs(ctx: Context) -> dict:
    """features key -> per-layer features entry, re-listed when the layers folder changes."""
    return _layer_runs(str(ctx.cache), mtime(ctx.cache / "layers"))


@st.cache_data(show_spinner=False, max_entries=32)
def _scores(cache: str, key: str, mtime: int) -> dict:
    return L.layer_scores(key, cache, progress=False)


@st.cache_data(show_spinner=False, max_entries=32)
def _cka(cache: str, key_a: str, key_b: str, mtime_a: int, mtime_b: int) -> dict:
    return L.layer_cka(key_a, key_b, cache, progress=False)


def mode_runs(ctx: Context) -> dict:
    """mode -> features run with per-layer features, for this dataset and model."""
    have = layer_runs(ctx)
    out = {}
    for mode in ("generic", "head", "full", "finetuned"):
        run = ctx.catalog.counterpart(ctx.run, mode)
        if run is not None and run["key"] in have and D.run_mode(run) == mode:
            out[mode] = have[run["key"]]
    return out


def layers_view(ctx: Context) -> None:
    st.caption("Inside the network: for every block, how well a linear classifier (and a kNN vote) separates the "
               "classes from that block's features, and how much finetuning changed the block (linear CKA "
               "between the generic and the finetuned block on the same galaxies: 1 = the same up to a rotation "
               "and scale).")
    runs = mode_runs(ctx)
    if not runs:
        st.info("No per-layer features cached for this dataset and model. Store them with the same pass as the "
                "features:")
        st.code(f"python -m core extract --dataset {ctx.run['dataset']} --model {ctx.run['model']} --layers all",
                language="bash")
        return
    unit = next(iter(runs.values())).get("unit", "block")
    kinds = [k for k in lf.KINDS if all(k in r.get("kinds", lf.KINDS) for r in runs.values())]
    kind = st.radio("Features of each block", kinds, format_func=KIND_NAMES.get, horizontal=True, key="layer_kind",
                    help="CLS token: what the classifier of ViT and DINOv2 reads; mean of patch tokens: the "
                    "average of what the block says about each part of the image")
    with st.spinner(f"Scoring {len(runs)} checkpoint(s), every {unit} (once; cached)…"):
        scores = {m: _scores(str(ctx.cache), r["key"], mtime(r["path"])) for m, r in runs.items()}
        cka = {}
        if "generic" in runs:
            g = runs["generic"]
            for m, r in runs.items():
                if m != "generic":
                    cka[m] = _cka(str(ctx.cache), g["key"], r["key"], mtime(g["path"]), mtime(r["path"]))["cka"]
    notes = [s["note"] for s in scores.values() if s.get("note")]
    if notes:
        st.warning(f"No separability scores: this run {notes[0]}.")
    target = next((m for m in ("full", "finetuned", "head", "generic") if m in runs), None)
    sentence = L.reading([r for r in scores[target]["scores"] if r["kind"] == kind],
                         [r for r in cka.get(target, []) if r["kind"] == kind] or None, unit)
    if sentence:
        st.markdown(f"**Reading:** {sentence}" + (f" _(separability of the {MODE_NAMES[target]} checkpoint)_"
                                                    if target != "generic" else ""))
    left, right = st.columns(2)
    left.plotly_chart(curves_figure({m: s["scores"] for m, s in scores.items()}, kind, unit), key="layer_curves",
                      config={"displayModeBar": False})
    if cka:
        right.plotly_chart(cka_figure(cka, kind, unit), key="layer_cka", config={"displayModeBar": False})
    else:
        right.info("CKA needs the generic checkpoint's per-layer features too.")
    if "head" in cka:
        st.caption("Head-only finetuning trains the classifier alone, so its blocks equal the generic ones (CKA 1): "
                   "a reference line, and a check.")
    first = next(iter(scores.values()))
    st.caption(f"Probe: logistic regression on standardised features (C = {first.get('C')}), fitted on "
               f"{first.get('train', 0):,} train galaxies, scored on {first.get('test', 0):,} test galaxies; "
               f"kNN: {first.get('k')} nearest train galaxies by cosine similarity. Features after each {unit}, "
               "before the model's final LayerNorm.")
    # the per-layer entries carry no pretraining provenance: ask the features runs they belong to
    features_runs = [r for r in (ctx.catalog.counterpart(ctx.run, m) for m in runs) if r is not None]
    if any(D.is_random_stand_in(r) for r in features_runs):
        st.caption("ℹ️ The demo's generic checkpoint is a random-init stand-in, not a pretrained model.")
    elif any(D.is_demo_generic(r) for r in features_runs):
        st.caption("ℹ️ " + D.DEMO_GENERIC_NOTE)
    with st.expander("The numbers"):
        table = pd.DataFrame([{"mode": MODE_NAMES.get(m, m), unit: r["layer"], "probe macro F1": r["macro_f1"],
                               "kNN accuracy": r["knn_accuracy"]}
                              for m, s in scores.items() for r in s["scores"] if r["kind"] == kind])
        for m, rows in cka.items():
            ck = {r["layer"]: r["cka"] for r in rows if r["kind"] == kind}
            sel = table["mode"] == MODE_NAMES.get(m, m)
            table.loc[sel, "CKA with generic"] = table.loc[sel, unit].map(ck)
        st.dataframe(table, hide_index=True, width="stretch")
