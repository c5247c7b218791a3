"""Export this view: the current map as one HTML file that opens offline (core.analysis.export)."""
from __future__ import annotations

import re

import streamlit as st

from .common import Context, chosen_cell, picked_rows


def export_html(cache: str, key: str, map_key: str | None, method: str, title: str, note: str,
                highlight: tuple, cell: tuple | None, ring_ids: tuple) -> bytes:
    from core.analysis.export import build_html

    page, _ = build_html(key, cache=cache, method=method, map_key=map_key, title=title or None, note=note,
                         highlight=highlight, cell=cell, ring_ids=list(ring_ids) or None)
    return page.encode("utf-8")


def export_panel(ctx: Context) -> None:
    """An expander under the map: title, note, and a download of this view as one HTML file."""
    if ctx.projection is None:
        return
    with st.expander("Export this view as one HTML file"):
        st.caption("One file you can email or put in a paper's supplement: the map with its class legend and "
                   "highlighting, hover with thumbnails, the confusion matrix, and the confusion cell or "
                   "selection you chose here, ringed. It opens in any browser, offline, without this server.")
        names = ctx.data.class_names
        title = st.text_input("Title", key="export_title",
                              placeholder=f"{ctx.label()} · {ctx.method} map")
        note = st.text_area("Note", key="export_note", height=68,
                            placeholder="What should your reader look at?")
        cell = chosen_cell(ctx)
        rows = picked_rows(ctx)
        ring_ids = tuple(ctx.data.frame["id"].astype(str).iloc[rows].tolist()) if len(rows) and not cell else ()
        rings = (f"the confusion cell {names[cell[0]]} → {names[cell[1]]}" if cell else
                 f"your selection of {len(rows):,} galaxies" if len(rows) else "nothing")
        st.caption(f"Ringed in the file: {rings}. Highlighted: "
                   f"{', '.join(names[i] for i in ctx.highlight) if ctx.highlight else 'every class'}.")
        slug = re.sub(r"[^a-z0-9]+", "-", (title or f"{ctx.run['key']}-{ctx.method}").lower()).strip("-")
        st.download_button(
            "Export this view (HTML)", key="export_html", on_click="ignore", mime="text/html",
            file_name=f"galaxy-map-{slug}.html",
            data=lambda: export_html(str(ctx.cache), ctx.run["key"], ctx.projection.get("key"), ctx.method, title,
                                     note, tuple(names[i] for i in ctx.highlight),
                                     (names[cell[0]], names[cell[1]]) if cell else None, ring_ids))
