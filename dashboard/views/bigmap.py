"""The map for large runs (above ``BIG_MAP_POINTS`` galaxies): the WebGL component
fed binary columns instead of a Plotly figure, with the same interactions:
hover (id, classes, confidence, thumbnail), box/lasso/click -> gallery + counts +
CSV, class highlighting, colour by any column, a confusion cell ringed, the real
photos as stars, URL state (the sidebar's, unchanged).

Every rerun costs the same whatever the map's size: the columns are built once
per run (cached) and the browser fetches them once per run.
"""
from __future__ import annotations

import base64
import os

import numpy as np
import streamlit as st

from .. import data as D
from .. import pointcloud as PC
from ..astro import card_lines
from ..components.bigmap import galaxy_map
from ..figures import marker_size
from .placement import placed_other_dataset  # the same toggle and cached placement as the Plotly map
from .common import Context, cached_map_xy, cached_run_data, mtime, set_picked, thumbnail

BIG_MAP_POINTS = int(os.environ.get("EXPLORER_BIG_MAP_POINTS", "10000"))
EVENT_KEY = "bigmap"


def wants_big_map(ctx: Context) -> bool:
    """Runs above the threshold get the WebGL map; small ones keep Plotly."""
    return ctx.xy is not None and ctx.data.n >= BIG_MAP_POINTS


# ---------------------------------------------------------------- cached columns

@st.cache_resource(show_spinner="Packing the map for the browser…", max_entries=8)
def _points(features_path: str, fmtime: int, key: str, proj_path: str, pmtime: int) -> bytes:
    data = cached_run_data(features_path, fmtime, key)
    return PC.point_columns(data, cached_map_xy(features_path, fmtime, key, proj_path, pmtime))


@st.cache_resource(show_spinner=False, max_entries=16)
def _colours(features_path: str, fmtime: int, key: str, colour_by: str, columns: tuple, _data) -> tuple[bytes, dict]:
    """Keyed by the run and its columns: ``_data`` may carry columns added after reading
    (outlier scores), which can be coloured by too."""
    return PC.colour_column(_data, colour_by)


def _keys(ctx: Context) -> tuple:
    return ctx.run["path"], mtime(ctx.run["path"]), ctx.run["key"]


# ---------------------------------------------------------------- events from the browser

def _position(data: D.RunData, value) -> int | None:
    """A frame position sent by the browser, checked (it is user input)."""
    try:
        pos = int(value)
    except (TypeError, ValueError):
        return None
    return pos if 0 <= pos < data.n else None


def handle_event(event, ctx: Context, key: str = EVENT_KEY) -> None:
    """Apply a map event: a box/lasso selects the galaxies inside it, a click selects one
    galaxy (its gallery card opens its neighbours), resting on a galaxy asks for its id
    and thumbnail."""
    if not isinstance(event, dict):
        return
    kind = event.get("event")
    rows = ctx.data.frame["row"].to_numpy()
    if kind == "select":
        pos = PC.positions_in_polygon(ctx.xy, event.get("polygon") or [])
        set_picked(ctx.dataset, rows[pos])
    elif kind == "click":
        pos = _position(ctx.data, event.get("pos"))
        if pos is not None:
            set_picked(ctx.dataset, [int(rows[pos])])
    elif kind == "hover":
        pos = _position(ctx.data, event.get("pos"))
        if pos is not None:
            st.session_state[f"{key}_hover"] = (ctx.run["key"], pos)


def _on_event(ctx: Context, key: str) -> None:
    handle_event(st.session_state.get(key), ctx, key)


def hover_info(ctx: Context, key: str = EVENT_KEY) -> dict | None:
    """Id and thumbnail of the galaxy the pointer rests on (asked for by the browser)."""
    run_key, pos = st.session_state.get(f"{key}_hover") or (None, None)
    if run_key != ctx.run["key"] or _position(ctx.data, pos) is None:
        return None
    r = ctx.data.frame.iloc[pos]
    png = thumbnail(ctx.data.run["dataset"], int(r["row"]))
    sky = [line for line in card_lines(r) if not line.startswith("[")]  # RA/Dec, z; the links are on its card
    return {"pos": int(pos), "id": str(r["id"]), "lines": sky,
            "thumb": "data:image/png;base64," + base64.b64encode(png).decode()}


# ---------------------------------------------------------------- the view

def _stars(ctx: Context) -> dict | None:
    """The real photos (another dataset through the same checkpoint) as stars, when asked."""

    got = placed_other_dataset(ctx)
    if got is None:
        return None
    df, other, name = got
    st.caption(f"Stars: {len(df)} galaxies of {name} placed in this map. Each star sits among the galaxies "
               "whose features it resembles most.")
    return PC.star_points(df, ctx.data.class_names, other.get("class_names"))


def big_map(ctx: Context, marked: dict[str, np.ndarray], height: int = 560, key: str = EVENT_KEY,
            stars: bool = True) -> None:
    """The WebGL map of ``ctx``; ``marked``: {legend name: frame positions} drawn as rings
    (``map.marked_positions``: the confusion cell, then the selection); ``key`` names this
    map (two maps side by side need two); ``stars``: offer to place the real photos."""
    stars = _stars(ctx) if stars else None
    proj = ctx.projection
    points = _points(*_keys(ctx), proj["path"], mtime(proj["path"]))
    colour, spec = _colours(*_keys(ctx), ctx.colour_by, tuple(ctx.data.frame.columns), ctx.data)
    selected = len(marked.get("selected", ())) > 0
    rings = [{"name": f"{name} ({len(pos):,})", "colour": PC.RING_COLOURS[min(i, 1)], "positions": pos,
              "blob": PC.positions_bytes(pos), "selection": name == "selected"}
             for i, (name, pos) in enumerate(marked.items()) if len(pos)]
    galaxy_map(points=points, n=ctx.data.n, colour=colour, colour_spec=spec, classes=ctx.data.class_names,
               has_predictions=ctx.data.has_predictions, highlight=ctx.highlight, rings=rings, stars=stars,
               hover=hover_info(ctx, key), height=height, point_size=marker_size(ctx.data.n),
               key=key, on_change=lambda: _on_event(ctx, key))
    legend = " · ".join(r["name"] for r in rings)
    st.caption(f"{ctx.data.n:,} galaxies drawn with WebGL from {len(points) + len(colour):,} bytes "
               f"({(len(points) + len(colour)) / max(ctx.data.n, 1):.0f} per galaxy). Box, Lasso and Pan at the "
               "top right; the wheel zooms; rest on a galaxy for its id and image; click one to select it."
               + (f" Rings: {legend}." if legend else "")
               + (" The selection outline stays until you clear it." if selected else ""))
