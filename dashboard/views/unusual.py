"""Unusual: galaxies ranked by how unlike the others their features are (outlier
scores 0-5, as Astronomaly shows them), with the score on each card; where a class
and another dataset (the real photos) rank. Also the sidebar's survey-layer choice
and the outlier-score columns every view can colour by."""
from __future__ import annotations

import io
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.data import sky

from .. import data as D
from ..astro import LAYERS, OUTLIER_COLUMNS, has_sky, outlier_score, sky_columns, with_outlier_scores
from .common import Context, mtime, gallery, log

AUTO_MAX = 5_000  # scored on first view (seconds); larger runs on request (17,736 x 768: ~0.5-2 min on 2 cores)
SCORES = {"mean": "both (mean)", "knn": "kNN distance", "iforest": "isolation forest"}
INDEX_SCORES_PER_SECOND = 600  # galaxies scored per second from an index on 2 cores (1M x 768, docs/BENCHMARKS.md)


def _duration(minutes: float) -> str:
    return f"{minutes:.0f} minutes" if minutes < 90 else f"{minutes / 60:.1f} hours"


def _anomalies_mtime(cache: str, key: str) -> int:
    from core.analysis import outliers as anomaly

    return mtime(anomaly.anomalies_path(key, cache)[0])


@st.cache_resource(show_spinner="Scoring how unusual each galaxy is…", max_entries=12)
def _scored(cache: str, key: str, fmtime: int, amtime: int, compute: bool, _data: D.RunData) -> D.RunData | None:
    from core.analysis import outliers as anomaly

    hit = anomaly.cached_anomalies(key, cache)
    if hit is None and compute:
        hit = anomaly.get_anomalies(key, cache)
    return None if hit is None else with_outlier_scores(_data, hit[0])


def with_outliers(cache, run: dict, data: D.RunData) -> D.RunData:
    """``data`` plus its outlier-score columns: cached scores, or computed now for runs of up to
    AUTO_MAX galaxies (or when asked in the Unusual view); unchanged when neither."""
    compute = data.n <= AUTO_MAX or bool(st.session_state.get(f"score-{run['key']}"))
    try:
        scored = _scored(str(cache), run["key"], mtime(run["path"]), _anomalies_mtime(str(cache), run["key"]),
                         compute, data)
    except Exception:  # scores are an extra: the rest of the page goes on without them
        log.exception("outlier scores of %s", run["key"])
        return data
    return scored or data


def survey_layer(sb, data: D.RunData) -> None:
    """The Legacy Surveys viewer layer the links open, shown only for runs with sky positions."""
    if has_sky(data):
        sb.selectbox("Survey layer", LAYERS, key="survey_layer", bind="query-params",
                     help="the Legacy Surveys sky-viewer layer that each galaxy's link opens")


@st.cache_data(show_spinner="Ranking the other dataset's galaxies…", max_entries=8)
def _against(ref_path: str, ref_mtime: int, new_path: str, new_mtime: int) -> pd.DataFrame:
    from core.analysis import outliers as anomaly

    return anomaly.score_against(D.read_embeddings(ref_path), D.read_embeddings(new_path))


def _percentile_of(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Percentile (0-100, share of all galaxies scoring lower) of the galaxies in mask."""
    ranked = np.sort(scores)
    return 100 * np.searchsorted(ranked, scores[mask], side="left") / len(scores)


def class_table(frame: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """Per class: galaxies, median score, median percentile, share among the weirdest 10%."""
    top = score >= np.quantile(score, 0.9)
    rows = []
    for name, idx in frame.groupby("true").indices.items():
        rows.append({"class": name, "galaxies": len(idx), "median score": float(np.median(score[idx])),
                     "median percentile": float(np.median(_percentile_of(score, np.isin(np.arange(len(score)), idx)))),
                     "in the weirdest 10%": float(top[idx].mean())})
    return pd.DataFrame(rows).sort_values("median score", ascending=False).set_index("class")


def other_datasets(ctx: Context) -> None:
    """Where another dataset run through the same checkpoint (the real photos) ranks."""
    for other in ctx.catalog.placeable(ctx.run)[:2]:
        name = D.dataset_label(other["dataset"])
        try:
            s = _against(ctx.run["path"], mtime(ctx.run["path"]), other["path"], mtime(other["path"]))
        except Exception as e:
            st.caption(f"Could not rank {name}: {type(e).__name__}")
            log.exception("ranking %s", other["key"])
            continue
        st.markdown(f"**{len(s)} galaxies of {name}**, scored against these {ctx.data.n:,}: median percentile "
                    f"{s['knn_percentile'].median():.0f} (kNN) and {s['iforest_percentile'].median():.0f} "
                    f"(isolation forest); {int((s['knn_percentile'] >= 90).sum())} of them are more unusual "
                    "than 90% of this run's galaxies (kNN).")


def unusual_view(ctx: Context) -> None:
    st.caption("The galaxies whose features look least like any other's, most unusual first. Scores run from 0 "
               "(most ordinary) to 5 (most unusual), scaled as Astronomaly does: kNN distance = mean cosine "
               "distance to the 10 nearest galaxies; isolation forest = how quickly random splits isolate it.")
    frame = ctx.data.frame
    if f"meta_{OUTLIER_COLUMNS['knn']}" not in frame:
        from core.analysis import knn

        if ctx.data.n >= knn.EXACT_BELOW:  # every galaxy a query to the run's index
            minutes = ctx.data.n / INDEX_SCORES_PER_SECOND / 60
            st.info(f"Runs of more than {AUTO_MAX:,} galaxies are scored only on request. These {ctx.data.n:,} are "
                    f"scored from the run's neighbour index, every galaxy a query: about {_duration(minutes)} on two "
                    "CPU cores, so run this command in a terminal (it shows its progress); the scores are then cached "
                    "and **Colour by** offers them too.")
        elif ctx.data.n > AUTO_MAX:
            st.info(f"Runs of more than {AUTO_MAX:,} galaxies are scored only on request: score these "
                    f"{ctx.data.n:,} once with this command (or the button; about a minute or two on a laptop "
                    "CPU), then the scores are cached and **Colour by** offers them too.")
        else:
            st.info(f"The outlier scores of these {ctx.data.n:,} galaxies could not be computed here (the server "
                    "log says why); this command computes and caches them:")
        st.code(anomalies_command(ctx), language="bash")
        if st.button("Score them now", key="score-now", type="primary"):
            st.session_state[f"score-{ctx.run['key']}"] = True
            st.rerun()
        return
    c1, c2, c3 = st.columns([2, 3, 2])
    which = c1.radio("Score", list(SCORES), format_func=SCORES.get, key="unusual_score", horizontal=True)
    classes = c2.multiselect("Only these classes", ctx.data.class_names, key="unusual_classes",
                             placeholder="all classes")
    limit = c3.slider("How many", 8, 48, 16, step=8, key="unusual_n")
    score = outlier_score(frame, which)
    mask = np.ones(len(frame), bool)
    if classes:
        mask = frame["true"].isin(classes).to_numpy()
    order = np.flatnonzero(mask)[np.argsort(-score[mask], kind="stable")]
    knn, forest = (frame[f"meta_{OUTLIER_COLUMNS[k]}"].to_numpy() for k in ("knn", "iforest"))
    notes = [f"**outlier score {score[p]:.2f}** (kNN {knn[p]:.2f} · forest {forest[p]:.2f})" for p in order[:limit]]
    st.subheader("Most unusual first")
    gallery(ctx, order[:limit], key="unusual", limit=limit, columns=8, notes=notes)
    layer = st.session_state.get("survey_layer") or sky.DEFAULT_LAYER
    st.download_button("Download the ranking (CSV)", lambda: ranking_csv(ctx.data, order, score, layer),
                       file_name="unusual-galaxies.csv", mime="text/csv", key="unusual-csv", on_click="ignore")
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Where each class ranks**")
        st.dataframe(class_table(frame, score).style.format(
            {"median score": "{:.2f}", "median percentile": "{:.0f}", "in the weirdest 10%": "{:.0%}"}),
            width="stretch")
        st.caption("A class far above the 50th percentile sits apart from the rest (in Galaxy10: Disturbed, "
                   "Merging); colour the map by an outlier score to see where they lie.")
    with right:
        other_datasets(ctx)


def anomalies_command(ctx: Context) -> str:
    """The command that scores the selected run, with ``--cache`` unless the cache is the default folder."""
    from core.store.cache import REPO_ROOT

    command = f"python -m core anomalies --run {ctx.run['key']}"
    if Path(ctx.cache).resolve() != (REPO_ROOT / "cache").resolve():
        command += f" --cache {shlex.quote(str(ctx.cache))}"
    return command


def ranking_csv(data: D.RunData, order, score, layer: str) -> bytes:
    """CSV of galaxies in ranking order: rank, id, true class, scores, then sky columns."""
    f = data.frame.iloc[np.asarray(order, np.int64)]
    out = pd.DataFrame({"rank": np.arange(1, len(f) + 1), "id": f["id"].to_numpy(), "true_class": f["true"].to_numpy(),
                        "outlier_score": np.round(score[order], 4)})
    for k, name in OUTLIER_COLUMNS.items():
        out[f"outlier_{k}"] = f[f"meta_{name}"].to_numpy().round(4)
    out = pd.concat([out, sky_columns(f, layer)], axis=1)
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()

