"""Failures: why the model errs, not only where.

Four questions, each answered from the cached run:
- Is the *label* wrong? Suspicious labels from out-of-sample probabilities (core.analysis.label_issues),
  with the class the galaxy more likely belongs to, and a CSV to send back for relabelling.
- Does the model fail on a *kind* of galaxy? Failure slices (core.analysis.slices): metadata ranges and
  map regions where the error rate is much higher than elsewhere.
- Can its *confidence* be trusted? Calibration (core.analysis.calibration).
- Does *another model* fail on the same galaxies? Disagreement (core.analysis.disagreement).
"""
from __future__ import annotations

import io
from functools import partial

import numpy as np
import pandas as pd
import streamlit as st

from core.analysis import calibration as C
from core.analysis import disagreement as G
from core.data import sky

from .. import data as D
from ..astro import sky_columns
from ..figures import map_figure
from .bigmap import big_map, wants_big_map
from .common import Context, gallery, guarded, mtime, on_map_select

SUSPECTS_SHOWN = 16
COMPUTE_ON_VIEW = 5_000  # galaxies analysed on first view; larger runs when asked


@st.cache_data(show_spinner="Looking for suspicious labels (out-of-sample probes and neighbours)…", max_entries=8)
def _label_issues(cache: str, key: str, mtime_ns: int) -> pd.DataFrame:
    from core.analysis.label_issues import label_issues

    return label_issues(key, cache=cache)


@st.cache_data(show_spinner="Looking for failure slices…", max_entries=8)
def _slices(cache: str, key: str, map_key: str | None, mtime_ns: int) -> list[dict]:
    from core.analysis.slices import failure_slices

    return failure_slices(key, cache=cache, map_key=map_key)


@st.cache_data(show_spinner=False, max_entries=16)
def _calibration(path: str, mtime_ns: int, run: dict) -> dict:
    return C.run_calibration(run)


@st.cache_data(show_spinner="Comparing the two models…", max_entries=8)
def _joined(path_a: str, path_b: str, mtime_a: int, mtime_b: int, run_a: dict, run_b: dict) -> pd.DataFrame:
    return G.compare_runs(run_a, run_b)


def positions_of(data: D.RunData, ids) -> np.ndarray:
    """Frame positions of galaxy ids, in the order given (ids not in the run are dropped)."""
    index = pd.Index(data.frame["id"].astype(str))
    pos = index.get_indexer(pd.Index([str(i) for i in ids]))
    return pos[pos >= 0].astype(np.int64)


def suspects_csv(data: D.RunData, issues: pd.DataFrame, layer: str) -> bytes:
    """What an astronomer sends back to be relabelled: id, ra, dec, given and suggested label, score, links."""
    pos = positions_of(data, issues["id"])
    f = data.frame.iloc[pos]
    out = pd.DataFrame({"id": issues["id"].astype(str).to_numpy(), "given_label": issues["given"].to_numpy(),
                        "suggested_label": issues["suggested"].to_numpy(), "score": issues["score"].round(4).to_numpy(),
                        "flagged": issues["flagged"].to_numpy()})
    sky_part = sky_columns(f, layer).reset_index(drop=True)
    if len(sky_part.columns):
        out = pd.concat([out, sky_part], axis=1)
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()


def ready_or_asked(ctx: Context, what: str) -> bool:
    """Small runs get their label-issue scores on first view; above ``COMPUTE_ON_VIEW`` galaxies they are
    computed when asked, or ahead of time with the command shown."""
    from core.analysis.label_issues import cached_label_issues

    if ctx.data.n <= COMPUTE_ON_VIEW or cached_label_issues(ctx.run["key"], cache=ctx.cache) is not None:
        return True
    if st.session_state.get(f"failures_go_{ctx.run['key']}"):
        return True
    command = f"python -m core failures --run {ctx.run['key']} --cache {ctx.cache}"
    st.info(f"This run has {ctx.data.n:,} galaxies: its out-of-sample probes take a while (minutes on a laptop "
            f"CPU), so they run when you ask. Or run them ahead of time: `{command}`")
    if st.button("Analyse this run now", key=f"failures-go-{what}"):
        st.session_state[f"failures_go_{ctx.run['key']}"] = True
        st.rerun()
    return False


def suspicious_labels(ctx: Context) -> None:
    st.subheader("Suspicious labels")
    st.caption("Galaxies whose given label disagrees with what the features say. Each galaxy is judged by "
               "linear probes that never saw it (5-fold) and by its nearest neighbours' labels; a galaxy is "
               "flagged when its given class is less likely than that class's own typical confidence "
               "(confident learning). Flagged galaxies are candidates for relabelling, not verdicts.")
    run = ctx.run
    if not ready_or_asked(ctx, "suspects"):
        return
    issues = _label_issues(str(ctx.cache), run["key"], mtime(run["path"]))
    flagged = issues[issues["flagged"]]
    st.markdown(f"**{len(flagged):,} of {len(issues):,} labels flagged** as probably wrong. "
                f"Most suspicious first:")
    top = issues.head(SUSPECTS_SHOWN)
    pos = positions_of(ctx.data, top["id"])
    notes = [f"**given {g} → suggested {s}** (score {sc:.2f})"
             for g, s, sc in zip(top["given"], top["suggested"], top["score"])]
    gallery(ctx, pos, key="suspects", limit=SUSPECTS_SHOWN, notes=notes)
    layer = st.session_state.get("survey_layer") or sky.DEFAULT_LAYER
    st.download_button("Download the suspicious labels (CSV)", lambda: suspects_csv(ctx.data, issues, layer),
                       file_name="suspicious-labels.csv", mime="text/csv", key="suspects-csv", on_click="ignore",
                       help="every galaxy, most suspicious first: id, sky position, given and suggested label, "
                            "score, survey link")


def failure_slices(ctx: Context) -> None:
    st.subheader("Failure slices: where the model fails most")
    st.caption("Groups of galaxies, described by a metadata range or a region of the map, whose error rate is "
               "well above the rest, with a significance test so a handful of galaxies cannot top the list.")
    if not ctx.data.has_predictions:
        st.info(f"No slices here: {ctx.data.no_predictions_reason}.")
        return
    map_key = ctx.projection.get("key") if ctx.projection else None
    found = _slices(str(ctx.cache), ctx.run["key"], map_key, mtime(ctx.run["path"]))
    if not found:
        st.success("No group of galaxies fails significantly more than the rest.")
        return
    sentences = [s["description"] for s in found]
    choice = st.radio("Open a slice", range(len(found)), format_func=lambda i: sentences[i], key="slice",
                      bind="query-params")
    chosen = found[int(choice or 0)]
    pos = positions_of(ctx.data, chosen["ids"])
    left, right = st.columns([3, 2])
    with left:
        wrong = pos[~ctx.data.frame["correct"].to_numpy()[pos]] if len(pos) else pos
        st.markdown(f"**{len(pos):,} galaxies in this slice**, {len(wrong):,} misclassified; the misclassified "
                    "first:")
        order = np.concatenate([wrong, np.setdiff1d(pos, wrong)])
        gallery(ctx, order, key="slice-gallery", limit=16, columns=4)
    with right:
        if ctx.xy is not None and wants_big_map(ctx):  # large runs: the WebGL map, as in the Map view
            big_map(ctx, {"slice": pos}, height=440, key="slice_bigmap", stars=False)
            st.caption("The slice's galaxies are ringed on the map.")
        elif ctx.xy is not None:
            fig = map_figure(ctx.data, ctx.xy, ctx.colour_by, ctx.highlight, {"slice": pos}, height=440,
                             show_legend=False)
            st.plotly_chart(fig, key="slice_map", on_select=partial(on_map_select, "slice_map", ctx.dataset),
                            selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
            st.caption("The slice's galaxies are ringed on the map.")


def reliability_figure(bins: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=(bins["lo"] + bins["hi"]) / 2, y=bins["accuracy"], width=bins["hi"] - bins["lo"],
                name="accuracy", marker_color="#4c78a8", customdata=bins["count"],
                hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} galaxies<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(dash="dash", color="grey"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="confidence",
                      yaxis_title="share right", xaxis_range=[0, 1], yaxis_range=[0, 1], bargap=0.05,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def calibration(ctx: Context) -> None:
    st.subheader("Calibration: can its confidence be trusted?")
    if not ctx.data.has_predictions:
        st.info(f"No calibration here: {ctx.data.no_predictions_reason}.")
        return
    cal = _calibration(ctx.run["path"], mtime(ctx.run["path"]), ctx.run)
    st.caption(f"On the {cal['split']} split ({cal['galaxies']:,} galaxies): bars are the share of right answers "
               "among the galaxies given each confidence; on the dashed line, confidence means what it says. "
               "Bars below the line: over-confident.")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(reliability_figure(pd.DataFrame(cal["bins"])), key="reliability",
                        config={"displayModeBar": False})
    with right:
        st.markdown(f"**{cal['verdict']}**")
        st.caption(f"accuracy {cal['accuracy']:.3f} · mean confidence {cal['mean_confidence']:.3f} · expected "
                   "calibration error (ECE): the average gap between confidence and accuracy, 0 is perfect.")
        ts = cal.get("temperature_scaling")
        if ts:
            st.dataframe(pd.DataFrame({"": ["ECE", "negative log-likelihood"],
                                       "as trained": [ts["ece_before"], ts["nll_before"]],
                                       f"temperature {ts['temperature']:.2f}": [ts["ece_after"], ts["nll_after"]]}),
                         hide_index=True, width="stretch")
            st.caption(f"Temperature scaling fitted on {ts['fit_galaxies']} test galaxies, scored on the other "
                       f"{ts['scored_galaxies']}. If it helps a lot, rank mistakes by the scaled confidence.")
    if cal.get("per_class"):
        with st.expander("Per class"):
            st.dataframe(pd.DataFrame(cal["per_class"]), hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                        for c in ("ECE", "mean probability", "share")})


def disagreement(ctx: Context) -> None:
    st.subheader("Two models disagree")
    st.caption("Another run of the same galaxies (head-only vs full finetune, another family...). Both wrong "
               "on the same class, both confident: the strongest hint that the label itself is wrong. Only one "
               "wrong: that model's failure. Both wrong on different classes: a hard galaxy.")
    if not ctx.data.has_predictions:
        st.info(f"No comparison here: {ctx.data.no_predictions_reason}.")
        return
    others = [r for r in ctx.catalog.runs(ctx.dataset) if r["key"] != ctx.run["key"] and r.get("has_head")
              and D.run_mode(r) != "generic"]  # a generic head (ImageNet...) predicts other classes
    if not others:
        st.info("No other run of this dataset has predictions to compare with.")
        return
    labels = {r["key"]: f"{D.model_label(r)} · {ctx.label(r)}" for r in others}
    other_key = st.selectbox("Compare with", list(labels), format_func=labels.get, key="versus",
                             bind="query-params")
    other = next(r for r in others if r["key"] == other_key)
    joined = _joined(ctx.run["path"], other["path"], mtime(ctx.run["path"]), mtime(other["path"]), ctx.run, other)
    s = G.summary(joined)
    names = ctx.data.class_names
    cols = st.columns(5)
    for col, outcome in zip(cols, G.OUTCOMES):
        col.metric(outcome.replace("A", "this").replace("B", "other"), f"{s[outcome]:,}")
    st.caption(f"{s['label_suspects']:,} galaxies where both models are at least {G.SUSPECT_CONFIDENCE:.0%} sure "
               "of the same other class.")
    m = G.matrix(joined, names)
    left, right = st.columns([3, 2])
    with left:
        st.dataframe(m.rename_axis("this model ↓ / other →"), width="stretch")
    with right:
        a = st.selectbox("This model said", names, key="versus_a", bind="query-params")
        b = st.selectbox("The other said", names, key="versus_b", bind="query-params",
                         index=min(1, len(names) - 1))
        cell = G.cell(joined, names.index(a), names.index(b))
        st.markdown(f"**{len(cell):,} galaxies**" + (" (label suspects first)" if cell["label_suspect"].any() else ""))
    if len(cell):
        pos = positions_of(ctx.data, cell["id"].head(16))
        notes = [f"this {names[pa]} ({ca:.2f}) · other {names[pb]} ({cb:.2f})" +
                 (" · **label suspect**" if sus else "")
                 for pa, ca, pb, cb, sus in zip(cell["pred_a"], cell["conf_a"], cell["pred_b"], cell["conf_b"],
                                                cell["label_suspect"])][:16]
        gallery(ctx, pos, key="versus-gallery", limit=16, notes=notes)


def failures_view(ctx: Context) -> None:
    st.caption("Why does the model fail? A wrong label, a hard kind of galaxy, or the model itself? Each section "
               "answers one of these from this run's cached features and predictions.")
    if not ctx.data.has_predictions:
        st.info(f"This run has no predictions ({ctx.data.no_predictions_reason}): suspicious labels are still "
                "found from its features; choose mode head or full for slices, calibration and disagreement.")
    for section in (suspicious_labels, failure_slices, calibration, disagreement):
        guarded(section, ctx)
        st.divider()
