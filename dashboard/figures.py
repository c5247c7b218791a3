"""Plotly figures for the dashboard (no Streamlit here).

Speed matters: every Streamlit rerun serialises the figure. Maps therefore use
`Scattergl` with float32 coordinates and an int32 dataset row in `customdata`
(plotly sends numpy arrays as binary), one trace per category with a single
colour each, never per-point colour strings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .astro import hover_sky, hover_template
from .data import MapXY, RunData, class_colour

GREY = "#c9c9c9"
WRONG, RIGHT = "#d62728", "#9ecae1"
NUMERIC_SCALE = "Viridis"


def marker_size(n: int) -> float:
    return 9.0 if n <= 500 else 6.0 if n <= 3000 else 4.0 if n <= 30000 else 2.5


def colour_options(data: RunData) -> list[str]:
    """What the map can be coloured by for this run."""
    opts = ["true class"]
    if data.has_predictions:
        opts += ["predicted class", "correct / wrong", "confidence"]
    for c in data.meta_columns():
        col = data.frame[c]
        if pd.api.types.is_numeric_dtype(col) or col.nunique() <= 20:
            opts.append(c[len("meta_"):])
    return opts


def category_codes(data: RunData, colour_by: str):
    """(codes int array, [(code, name, colour)]) for a categorical colouring, or None."""
    f = data.frame
    if colour_by == "true class":
        codes = f["label"].to_numpy()
        return codes, [(i, n, class_colour(i)) for i, n in enumerate(data.class_names)] + [(-1, "unlabelled", "#555")]
    if colour_by == "predicted class":
        codes = f["pred"].to_numpy()
        return codes, [(i, n, class_colour(i)) for i, n in enumerate(data.class_names)]
    if colour_by == "correct / wrong":
        return f["correct"].to_numpy().astype(np.int64), [(1, "correct", RIGHT), (0, "wrong", WRONG)]
    col = f.get("meta_" + colour_by)
    if col is not None and not pd.api.types.is_numeric_dtype(col):
        values = col.astype(str).to_numpy()
        cats = sorted(set(values))
        lookup = {c: i for i, c in enumerate(cats)}
        codes = np.fromiter((lookup[v] for v in values), np.int64, len(values))
        return codes, [(i, c, class_colour(i)) for i, c in enumerate(cats)]
    return None


def numeric_values(data: RunData, colour_by: str) -> np.ndarray:
    col = data.frame["confidence"] if colour_by == "confidence" else data.frame["meta_" + colour_by]
    return col.to_numpy(dtype=np.float32, na_value=np.nan)


def _hover(data: RunData, true: int, pred: int, numeric: str | None) -> str:
    """One hover template per trace: class names are baked in, so the per-point
    payload is only the id (text) and [row, confidence] (customdata)."""
    names = data.class_names
    out = f"<b>%{{text}}</b><br>true: {names[true] if 0 <= true < len(names) else 'unlabelled'}"
    if data.has_predictions:
        out += f"<br>predicted: {names[pred] if 0 <= pred < len(names) else '?'} (%{{customdata[1]:.2f}})"
    if numeric and numeric != "confidence":
        out += f"<br>{numeric}: %{{marker.color:.3g}}"
    return out + hover_template(data) + "<extra></extra>"


def _groups(keys: np.ndarray):
    """(key, positions) for each distinct key, keys in ascending order."""
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    return zip(uniq.tolist(), np.split(order, starts[1:]))


def map_figure(data: RunData, xy: MapXY, colour_by: str = "true class", highlight: list[int] | tuple = (),
               marked: dict[str, np.ndarray] | None = None, height: int = 560, title: str | None = None,
               show_legend: bool = True) -> go.Figure:
    """The galaxy map.

    ``highlight``: true-class indices drawn in colour while every other galaxy stays
    visible in grey. ``marked``: {legend name: frame positions} drawn as rings on top
    (a confusion cell, a selection made in another map).

    Points are split into one trace per (colour, true class, predicted class), so
    hover can name both classes without a string per point; the legend shows one
    entry per colour and toggles its traces together.
    """
    n = data.n
    size = marker_size(n)
    f = data.frame
    labels = f["label"].to_numpy()
    preds = f["pred"].to_numpy() if data.has_predictions else np.full(n, -1)
    k = len(data.class_names) + 1
    grey = ~np.isin(labels, np.asarray(list(highlight), dtype=np.int64)) if len(highlight) else np.zeros(n, bool)
    colour_idx, legend, numeric, values, (lo, hi) = _colouring(data, colour_by)
    colour_idx = np.where(grey, -1, colour_idx)  # grey first
    keys = ((colour_idx + 1) * k + (labels + 1)) * k + (preds + 1)
    counts = np.bincount(colour_idx + 1, minlength=len(legend) + 1)
    sky = hover_sky(data)  # RA, Dec, z as typed customdata columns + a sexagesimal string per point
    custom = data.custom if sky is None else np.hstack([data.custom, sky[0]])
    traces, seen = [], set()
    for key, pos in _groups(keys):
        c, rest = divmod(key, k * k)
        true, pred = rest // k - 1, rest % k - 1
        c -= 1
        if c < 0:
            name, colour, group, extra = f"other classes ({counts[0]:,})", GREY, "other", dict(opacity=0.55)
        elif numeric:
            name, colour, group, extra = numeric, values[pos], "numeric", {}
        else:
            _, label, colour = legend[c]
            name, group, extra = f"{label} ({counts[c + 1]:,})", label, {}
        marker = dict(size=size, color=colour, line=dict(width=0))
        if numeric and c >= 0:
            marker.update(colorscale=NUMERIC_SCALE, cmin=lo, cmax=hi if hi > lo else lo + 1,
                          showscale="numeric" not in seen,
                          colorbar=dict(title=dict(text=numeric), thickness=12, len=0.6))
        # plain dicts: plotly validates them once, ~4x faster than building go.Scattergl objects
        traces.append(dict(
            type="scattergl", x=xy.x[pos], y=xy.y[pos], customdata=custom[pos], text=data.ids[pos],
            **({} if sky is None else {"hovertext": sky[1][pos]}),
            mode="markers", name=name, legendgroup=group, showlegend=group not in seen and group != "numeric",
            hovertemplate=_hover(data, true, pred, numeric if c >= 0 else None), marker=marker, **extra))
        seen.add(group)
    fig = go.Figure(traces + _ring_traces(data, xy, marked or {}, size))
    fig.update_layout(
        height=height, margin=dict(l=5, r=5, t=36, b=5), template="plotly_white",  # top: room for the toolbar
        title=dict(text=title, font=dict(size=14), x=0.01) if title else None,
        showlegend=show_legend, legend=dict(itemsizing="constant", font=dict(size=11), bgcolor="rgba(255,255,255,0.7)",
                                            groupclick="togglegroup"),
        dragmode="select", hovermode="closest", uirevision=data.run.get("key"),
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x", scaleratio=1),
    )
    return fig


def _colouring(data: RunData, colour_by: str):
    """How ``colour_by`` colours the points: (colour index per point, legend [(code, label,
    colour)], the numeric column's name or None, its values, its (lo, hi) range)."""
    cats = category_codes(data, colour_by)
    if cats is None:
        values = numeric_values(data, colour_by)
        finite = values[np.isfinite(values)]
        lo_hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        return np.zeros(data.n, np.int64), [], colour_by, values, lo_hi
    codes, legend = cats
    lo_code = min(code for code, _, _ in legend)
    lut = np.zeros(max(code for code, _, _ in legend) - lo_code + 1, np.int64)
    for i, (code, _, _) in enumerate(legend):
        lut[code - lo_code] = i
    return lut[np.asarray(codes, np.int64) - lo_code], legend, None, None, (None, None)


def _ring_traces(data: RunData, xy: MapXY, marked: dict, size: float) -> list[dict]:
    """Open rings on top of the points of each ``marked`` set (first black, then magenta)."""
    traces = []
    for i, (name, pos) in enumerate(marked.items()):
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos):
            traces.append(dict(
                type="scattergl", x=xy.x[pos], y=xy.y[pos], customdata=data.custom[pos], mode="markers",
                name=f"{name} ({len(pos):,})", hoverinfo="skip",
                marker=dict(size=max(size * 2.2, 9), color="#111" if i == 0 else "#ff00aa", symbol="circle-open",
                            line=dict(width=1.5))))
    return traces


def confusion_figure(cm: np.ndarray, class_names, normalised: bool = False, chosen: tuple[int, int] | None = None,
                     height: int = 520) -> go.Figure:
    """Confusion heatmap, rows true and columns predicted, with a click layer.

    Plotly heatmaps report no click to Streamlit, so an invisible marker sits on
    every cell; its customdata is (true, predicted).
    """
    k = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    z = norm if normalised else cm
    text = [[(f"{norm[i, j]:.0%}" if cm[i, j] else "") if normalised else (str(cm[i, j]) if cm[i, j] else "")
             for j in range(k)] for i in range(k)]
    idx = np.arange(k)
    heat = go.Heatmap(z=z.astype(np.float32), x=idx, y=idx, text=text, texttemplate="%{text}",
                      textfont=dict(size=11), colorscale="Blues", showscale=False, hoverinfo="skip",
                      zmin=0, zmax=1 if normalised else None)
    ti, pj = np.meshgrid(idx, idx, indexing="ij")
    cells = np.stack([ti.ravel(), pj.ravel()], 1).astype(np.int32)
    hover = [f"true: {class_names[t]}<br>predicted: {class_names[p]}<br>{cm[t, p]} galaxies ({norm[t, p]:.0%} of row)"
             for t, p in cells]
    # plain lists: a typed 2-D customdata reaches Python as {"0": t, "1": p}
    click = go.Scatter(x=cells[:, 1].tolist(), y=cells[:, 0].tolist(), customdata=cells.tolist(), mode="markers",
                       marker=dict(symbol="square", size=max(12, int(360 / k)), color="rgba(0,0,0,0.01)"),
                       hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", name="cells", showlegend=False,
                       selected=dict(marker=dict(opacity=0.01)), unselected=dict(marker=dict(opacity=0.01)))
    fig = go.Figure([heat, click])
    if chosen is not None:
        t, p = chosen
        fig.add_shape(type="rect", x0=p - 0.5, x1=p + 0.5, y0=t - 0.5, y1=t + 0.5, line=dict(color="#d62728", width=3))
    fig.update_layout(
        height=height, margin=dict(l=5, r=5, t=5, b=5), template="plotly_white", clickmode="event+select",
        dragmode="zoom", hovermode="closest",  # axes are fixed: a drag does nothing, a click selects
        xaxis=dict(title="predicted class", tickmode="array", tickvals=idx, ticktext=list(class_names), tickangle=-35,
                   range=[-0.5, k - 0.5], showgrid=False, zeroline=False, fixedrange=True),
        yaxis=dict(title="true class", tickmode="array", tickvals=idx, ticktext=list(class_names), autorange="reversed",
                   showgrid=False, zeroline=False, fixedrange=True),
    )
    return fig
