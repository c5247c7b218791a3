"""The large-map component: a WebGL scatter of up to millions of galaxies.

Its frontend (``frontend/bigmap.js``, plain JavaScript, no build step, written
for this project) draws the points once per view into per-class layers, so
class highlighting and selection never redraw every point. The point and colour
columns are binary files served by Streamlit's media endpoint: their URLs are
content hashes, so a rerun that changes only the highlight, a ring or the hover
sends a few hundred bytes of arguments and the browser fetches nothing again.
"""
from __future__ import annotations

from pathlib import Path

import streamlit.components.v1 as components

FRONTEND = Path(__file__).parent / "frontend"
_component = components.declare_component("galaxy_map", path=str(FRONTEND))


def media_url(blob: bytes, name: str) -> str:
    """Serve ``blob`` for this session at a URL named by its content hash
    (re-registered on every rerun, as st.image does; identical bytes, same URL)."""
    from streamlit import runtime

    return runtime.get_instance().media_file_mgr.add(blob, "application/octet-stream", f"galaxy_map.{name}")


def galaxy_map(*, points: bytes, n: int, colour: bytes, colour_spec: dict, classes: list[str],
               has_predictions: bool, highlight: list[int], rings: list[dict], stars: dict | None,
               hover: dict | None, height: int, point_size: float, key: str, on_change=None):
    """Draw the map; returns the last event ({event: select|click|hover, ...}) or None.

    ``points`` / ``colour``: see ``dashboard.pointcloud``. ``highlight``: true-class
    indices shown in colour (others grey). ``rings``: [{name, colour, positions,
    selection}] drawn on top. ``stars``: {x, y, text} of another dataset's placed galaxies.
    """
    ring_args = [{"name": r["name"], "colour": r["colour"], "count": int(len(r["positions"])),
                  "selection": bool(r.get("selection")), "url": media_url(r["blob"], f"{key}.ring{i}")}
                 for i, r in enumerate(rings)]
    return _component(points_url=media_url(points, f"{key}.points"), n=int(n),
                      colour_url=media_url(colour, f"{key}.colour"),
                      colour=colour_spec, classes=list(classes), has_predictions=bool(has_predictions),
                      highlight=[int(c) + 1 for c in highlight], rings=ring_args, stars=stars, hover=hover,
                      height=int(height), point_size=float(point_size), key=key, on_change=on_change, default=None)
