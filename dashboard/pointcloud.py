"""The large map's data as compact binary columns (no Streamlit here).

The browser gets, once per run and map, one file of ``11 * n`` bytes:

    x float32[n] | y float32[n] | true class uint8[n] | predicted class uint8[n] | confidence uint8[n]

(classes as index + 1, 0 = unlabelled / no prediction; confidence as round(250 * c),
255 = none), and once per colouring a uint8[n] colour column indexing a palette of
at most 255 colours (255 = no value). That is 12 bytes per galaxy on the wire;
Plotly's JSON is about 35. Rings (a confusion cell, a selection) are uint32 frame
positions. Positions everywhere are positions in the RunData frame.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .data import MapXY, RunData
from .figures import NUMERIC_SCALE, category_codes, numeric_values

BYTES_PER_POINT = 11  # the point file; the colour column adds 1
NO_VALUE = 255
MAX_CLASSES = 254


def _codes(values: np.ndarray, n_classes: int) -> np.ndarray:
    """Class indices -> uint8 codes, index + 1; anything outside 0..n_classes-1 -> 0."""
    v = np.asarray(values, np.int64)
    return np.where((v >= 0) & (v < n_classes), v + 1, 0).astype(np.uint8)


def point_columns(data: RunData, xy: MapXY) -> bytes:
    """The point file (see the module docstring) of a run's map, in frame order."""
    k = len(data.class_names)
    if k > MAX_CLASSES:
        raise ValueError(f"the large map shows at most {MAX_CLASSES} classes; this run has {k}")
    f = data.frame
    conf = np.full(data.n, NO_VALUE, np.uint8)
    pred = np.zeros(data.n, np.uint8)
    if data.has_predictions:
        c = f["confidence"].to_numpy(np.float32)
        conf = np.where(np.isfinite(c), np.rint(np.clip(c, 0, 1) * 250), NO_VALUE).astype(np.uint8)
        pred = _codes(f["pred"].to_numpy(), k)
    parts = [np.ascontiguousarray(xy.x, np.float32), np.ascontiguousarray(xy.y, np.float32),
             _codes(f["label"].to_numpy(), k), pred, conf]
    return b"".join(p.tobytes() for p in parts)


def _hex(colour: str) -> str:
    """'#abc', '#aabbcc' or 'rgb(r, g, b)' -> '#aabbcc'."""
    colour = colour.strip()
    if colour.startswith("rgb"):
        r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    if len(colour) == 4:
        return "#" + "".join(ch * 2 for ch in colour[1:])
    return colour.lower()


def numeric_palette(n: int = 255) -> list[str]:
    from plotly.colors import sample_colorscale

    return [_hex(c) for c in sample_colorscale(NUMERIC_SCALE, np.linspace(0, 1, n).tolist())]


def colour_column(data: RunData, colour_by: str) -> tuple[bytes, dict]:
    """(uint8[n] colour codes, spec) for the map coloured by ``colour_by`` (one of
    ``figures.colour_options``). spec: ``kind`` "category" with ``palette`` and
    ``legend`` [(name, colour, count)], or "numeric" with ``palette``, ``lo``, ``hi``."""
    cats = category_codes(data, colour_by)
    if cats is not None:
        codes, legend = cats
        codes = np.asarray(codes, np.int64)
        if len(legend) > NO_VALUE:
            raise ValueError(f"{colour_by} has {len(legend)} values; the large map colours at most {NO_VALUE}")
        out = np.full(data.n, NO_VALUE, np.uint8)
        entries = []
        for i, (code, name, colour) in enumerate(legend):
            hit = codes == code
            out[hit] = i
            entries.append((str(name), _hex(colour), int(hit.sum())))
        return out.tobytes(), {"kind": "category", "label": colour_by, "palette": [e[1] for e in entries],
                               "legend": [e for e in entries if e[2]], "alpha": 0.85}
    values = numeric_values(data, colour_by)
    finite = np.isfinite(values)
    lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    out = np.full(data.n, NO_VALUE, np.uint8)
    out[finite] = np.rint((values[finite] - lo) / span * 254).astype(np.uint8)
    return out.tobytes(), {"kind": "numeric", "label": colour_by, "palette": numeric_palette(), "lo": lo, "hi": hi,
                           "alpha": 0.85}


def positions_bytes(positions) -> bytes:
    return np.ascontiguousarray(positions, dtype=np.uint32).tobytes()


def positions_in_polygon(xy: MapXY, polygon) -> np.ndarray:
    """Frame positions of the galaxies inside a polygon [(x, y), ...] in map
    coordinates (even-odd rule, as a lasso), ascending. Fewer than 3 vertices: none."""
    try:  # it comes from the browser: anything malformed selects nothing
        poly = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        return np.zeros(0, np.int64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.isfinite(poly).all():
        return np.zeros(0, np.int64)
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    cand = np.flatnonzero((xy.x >= x0) & (xy.x <= x1) & (xy.y >= y0) & (xy.y <= y1))
    # Grouped by horizontal band of y (a radix sort of 16-bit band numbers), the galaxies an edge can
    # cross (lo <= y < hi) lie in the bands it spans, one slice: the work is about twice the candidates,
    # not candidates x vertices (a 120-vertex lasso around 500k galaxies: ms, not s).
    bands = 4096
    scale = (bands - 1) / (y1 - y0) if y1 > y0 else 0.0
    key = ((xy.y[cand] - y0) * scale).astype(np.uint16)
    order = np.argsort(key, kind="stable")
    cand, key = cand[order], key[order]
    start = np.searchsorted(key, np.arange(bands + 1))
    px, py = xy.x[cand].astype(np.float64), xy.y[cand].astype(np.float64)
    inside = np.zeros(len(cand), bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        if ay == by:
            continue
        lo, hi = min(ay, by), max(ay, by)
        i0, i1 = start[int((lo - y0) * scale)], start[min(bands, int((hi - y0) * scale) + 1)]
        y = py[i0:i1]
        cross = (y >= lo) & (y < hi)  # (ay > y) != (by > y)
        xcross = ax + (y[cross] - ay) * (bx - ax) / (by - ay)
        seg = inside[i0:i1]
        seg[cross] ^= px[i0:i1][cross] < xcross
    return np.sort(cand[inside])


def star_points(placed: pd.DataFrame, class_names: list[str], other_names: list[str] | None = None) -> dict:
    """Another dataset's galaxies placed in the map (``mapstore.place_run``) as the
    stars the large map draws: {x, y, text} with the hover text of each."""
    names = other_names or class_names
    cls = lambda i: names[i] if 0 <= i < len(names) else "unlabelled"  # noqa: E731
    preds = placed["pred"].to_numpy() if "pred" in placed else None
    text = []
    for j, (gid, t) in enumerate(zip(placed["id"].astype(str), placed["label"].to_numpy())):
        line = f"<b>{_escape(gid)}</b> ★<br>true: {_escape(cls(int(t)))}"
        if preds is not None:
            line += f"<br>predicted: {_escape(cls(int(preds[j])))}"
        text.append(line)
    return {"x": placed["x"].astype(float).round(5).tolist(), "y": placed["y"].astype(float).round(5).tolist(),
            "text": text}


def _escape(s: str) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


RING_COLOURS = ["#111111", "#ff00aa"]  # as the Plotly map: a confusion cell black, a selection magenta
