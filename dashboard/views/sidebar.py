"""The sidebar: which cached run to look at and how to colour it.

Options come from what is cached. Dataset, model, mode, projection, colour and
highlighted classes are bound to the URL query string, so a copied link
reopens the same view; a value in a link that is not among the options is
ignored, so a link can never make the app open a file of its choosing.
"""
from __future__ import annotations

import streamlit as st

from .. import data as D
from ..figures import colour_options
from .common import Context, map_xy, run_data
from .unusual import survey_layer, with_outliers

MODE_CAPTIONS = {"generic": "pretrained, frozen", "head": "classifier head only", "full": "all parameters",
                 "finetuned": "mode not recorded"}


def damaged_notice(catalog: D.Catalog, where=None) -> None:
    """Name every damaged or unfinished cached file and how to recompute it (`python -m core ls`
    lists the same), so a run that does not read back is never silently missing from the choices."""
    lines = catalog.damaged_lines()
    if lines:
        n = len(lines)
        (where or st).warning(f"{n} cached file{'s' if n > 1 else ''} damaged or unfinished, not offered "
                              "below:\n" + "\n".join(lines), icon="⚠️")


def sidebar(cache, catalog: D.Catalog) -> Context:
    sb = st.sidebar
    sb.header("What to look at")
    damaged_notice(catalog, sb)
    datasets = catalog.datasets()
    dataset = datasets[sb.selectbox("Dataset", list(datasets), key="dataset", bind="query-params",
                                    help="the galaxy images the features were extracted from")]
    models = catalog.models(dataset)
    model = sb.selectbox("Model", models, key="model", bind="query-params",
                         help="backbone family and size")
    modes = catalog.modes(dataset, model)
    mode = sb.radio("Mode", modes, index=modes.index("full") if "full" in modes else len(modes) - 1,
                    key="mode", bind="query-params", horizontal=False,
                    captions=[MODE_CAPTIONS[m] for m in modes],
                    help="generic: the checkpoint as pretrained; head: only a classification head was trained "
                         "on top of frozen features; full: every parameter finetuned on the galaxy labels")
    runs = catalog.runs(dataset, model, mode)
    if len(runs) > 1:
        labels = {D.checkpoint_label(r): r for r in runs}
        run = labels[sb.selectbox("Checkpoint", list(labels), key="checkpoint", bind="query-params")]
    else:
        run = runs[0]
        sb.caption(f"Checkpoint `{run.get('model')}` · {run.get('pooling', '?')} pooling")
    if D.is_random_stand_in(run):
        sb.info("This generic checkpoint is the offline demo's stand-in: a randomly initialised network, "
                "not a pretrained foundation model. Expect little structure in its map.", icon="ℹ️")
    elif D.is_demo_generic(run):
        sb.info(D.DEMO_GENERIC_NOTE, icon="ℹ️")

    cached = catalog.projection_methods(run["key"])
    methods = list(D.METHODS)
    method = sb.radio("Projection", methods, format_func=D.METHODS.get, key="projection", bind="query-params",
                      horizontal=True, index=methods.index("tsne"),
                      help="how the features are flattened to 2-D. Cached for this run: "
                           + (", ".join(D.METHODS[m] for m in cached) or "none"))
    data = with_outliers(cache, run, run_data(run))  # + outlier-score columns (colour by them)
    aligned_to = None
    if D.run_mode(run) != "generic":
        generic = catalog.counterpart(run, "generic")
        aligned_to = generic["key"] if generic else None
    projection = catalog.projection(run["key"], method, aligned_to)

    colours = colour_options(data)
    colour_by = sb.selectbox("Colour by", colours, key="colour", bind="query-params",
                             help="true class = the Galaxy Zoo volunteers' label; predicted class and "
                                  "confidence come from the checkpoint's classification head")
    survey_layer(sb, data)
    highlight = sb.multiselect("Highlight classes", data.class_names, key="highlight", bind="query-params",
                               placeholder="e.g. Disturbed",
                               help="these classes stand out; every other galaxy stays visible in grey")
    sb.divider()
    sb.caption(f"Cache: `{cache}`  \n{len(catalog.features)} features runs, {len(catalog.projections)} maps, "
               f"{len(catalog.evaluations)} evaluations"
               + (f", {len(catalog.damaged)} damaged (named above)." if catalog.damaged else "."))
    return Context(cache=cache, catalog=catalog, dataset=dataset, run=run, data=data, method=method,
                   projection=projection, xy=map_xy(run, projection), colour_by=colour_by,
                   highlight=[data.class_names.index(c) for c in highlight if c in data.class_names])
