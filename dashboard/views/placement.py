"""Another dataset's galaxies placed into a map (the real DECaLS photos in the demo), for the Plotly map and
the large map alike."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import data as D
from .common import Context, log


@st.cache_data(show_spinner="Placing the galaxies in the map…", max_entries=16)
def placed(cache: str, features_key: str, method: str, other_key: str, params_json: str, align_to) -> pd.DataFrame:
    """Another run's galaxies placed into this map without recomputing it (core.analysis.maps.store.place_run)."""
    import json

    from core.store import cache as store
    from core.analysis.maps import store as mapstore

    params = json.loads(params_json) or None
    df = mapstore.place_run(features_key, method, other_key, cache=cache, params=params, align_to=align_to)
    run = next(r for r in store.list_runs(cache) if r.get("key") == other_key)
    if run.get("has_head"):
        df["pred"] = store.read_table(run["path"], columns=["pred"]).column("pred").to_numpy()
    return df


def placed_other_dataset(ctx: Context) -> tuple[pd.DataFrame, dict, str] | None:
    """Behind a toggle: another dataset's galaxies (the real DECaLS photos in the demo), run through
    the same checkpoint, placed into this map. Returns (placed rows, their run, dataset label) or None."""
    import json

    others = ctx.catalog.placeable(ctx.run) if ctx.projection else []
    if not others:
        return None
    other = others[0]
    name = D.dataset_label(other["dataset"])
    if not st.toggle(f"Place the {other.get('rows', '')} galaxies of {name} in this map", key="place_other",
                     help="They went through the same checkpoint; each is placed among the galaxies whose "
                          "features it resembles, without recomputing the map."):
        return None
    try:
        df = placed(str(ctx.cache), ctx.run["key"], ctx.method, other["key"],
                    json.dumps(ctx.projection.get("params") or {}), ctx.projection.get("aligned_to"))
    except Exception as e:  # e.g. an older cache without the map; say so and keep the map
        st.caption(f"Could not place {name}: {type(e).__name__}")
        log.exception("placing %s failed", other["key"])
        return None
    return df, other, name
