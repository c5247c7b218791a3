"""Plotly figures for the dashboard (no Streamlit here).

Speed matters: every Streamlit rerun serialises the figure. Maps therefore use
`Scattergl` with float32 coordinates and an int32 dataset row in `customdata`
(plotly sends numpy arrays as binary), one trace per category with a single
colour each, never per-point colour strings.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

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
        if np.issubdtype(col.dtype, np.number) or col.nunique() <= 20:
            opts.append(c[len("meta_"):])
    return opts


def _categories(data: RunData, colour_by: str):
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
    if col is not None and not np.issubdtype(col.dtype, np.number):
        values = col.astype(str).to_numpy()
        cats = sorted(set(values))
        lookup = {c: i for i, c in enumerate(cats)}
        codes = np.fromiter((lookup[v] for v in values), np.int64, len(values))
        return codes, [(i, c, class_colour(i)) for i, c in enumerate(cats)]
    return None


def _numeric(data: RunData, colour_by: str) -> np.ndarray:
    col = data.frame["confidence"] if colour_by == "confidence" else data.frame["meta_" + colour_by]
    return col.to_numpy(dtype=np.float32, na_value=np.nan)


def _trace(xy: MapXY, data: RunData, pos: np.ndarray, name: str, size: float, colour, **kw) -> go.Scattergl:
    return go.Scattergl(
        x=xy.x[pos], y=xy.y[pos], customdata=data.frame["row"].to_numpy(np.int32)[pos],
        text=data.hover[pos], hovertemplate="%{text}<extra></extra>", mode="markers", name=name,
        marker=dict(size=size, color=colour, line=dict(width=0)), **kw)


def map_figure(data: RunData, xy: MapXY, colour_by: str = "true class", highlight: list[int] | tuple = (),
               marked: dict[str, np.ndarray] | None = None, height: int = 560, title: str | None = None,
               show_legend: bool = True) -> go.Figure:
    """The galaxy map.

    ``highlight``: true-class indices drawn in colour while every other galaxy stays
    visible in grey. ``marked``: {legend name: frame positions} drawn as rings on top
    (a confusion cell, a selection made in another map).
    """
    n = data.n
    size = marker_size(n)
    labels = data.frame["label"].to_numpy()
    focus = np.isin(labels, np.asarray(list(highlight), dtype=np.int64)) if len(highlight) else np.ones(n, bool)
    traces = []
    if len(highlight):
        rest = np.flatnonzero(~focus)
        traces.append(_trace(xy, data, rest, f"other classes ({len(rest):,})", size, GREY,
                              opacity=0.55, legendrank=2000))
    cats = _categories(data, colour_by)
    if cats is not None:
        codes, legend = cats
        for code, name, colour in legend:
            pos = np.flatnonzero((codes == code) & focus)
            if len(pos):
                traces.append(_trace(xy, data, pos, f"{name} ({len(pos):,})", size, colour))
    else:
        pos = np.flatnonzero(focus)
        values = _numeric(data, colour_by)[pos]
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        t = _trace(xy, data, pos, colour_by, size, values, showlegend=False)
        t.marker.update(colorscale=NUMERIC_SCALE, cmin=lo, cmax=hi if hi > lo else lo + 1,
                        colorbar=dict(title=dict(text=colour_by), thickness=12, len=0.6))
        traces.append(t)
    for i, (name, pos) in enumerate((marked or {}).items()):
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos):
            traces.append(_trace(xy, data, pos, f"{name} ({len(pos):,})", max(size * 2.2, 9),
                                 "#111" if i == 0 else "#ff00aa", marker_symbol="circle-open"))
            traces[-1].marker.line.width = 1.5
    fig = go.Figure(traces)
    fig.update_layout(
        height=height, margin=dict(l=5, r=5, t=36, b=5), template="plotly_white",  # top: room for the toolbar
        title=dict(text=title, font=dict(size=14), x=0.01) if title else None,
        showlegend=show_legend, legend=dict(itemsizing="constant", font=dict(size=11), bgcolor="rgba(255,255,255,0.7)"),
        dragmode="select", hovermode="closest", uirevision=data.run.get("key"),
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x", scaleratio=1),
    )
    return fig


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
