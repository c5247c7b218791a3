"""What the charts hand back (Streamlit plotly selections) and what a user
takes away (a CSV of the selected galaxies)."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from .rundata import MapXY, RunData


def rows_from_selection(selection) -> list[int]:
    """Dataset rows (the customdata the charts carry) of a Streamlit plotly selection."""
    if not selection:
        return []
    points = selection.get("points", []) if hasattr(selection, "get") else []
    rows = []
    for p in points:
        cd = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(cd, dict):  # a typed array arrives as {"0": ...}
            cd = cd.get("0")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is None:
            continue
        try:
            rows.append(int(cd))
        except (TypeError, ValueError):
            continue
    return list(dict.fromkeys(rows))


def cell_from_selection(selection) -> tuple[int, int] | None:
    """(true, predicted) of a clicked confusion cell (the click layer's customdata)."""
    points = selection.get("points", []) if selection and hasattr(selection, "get") else []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, dict):  # a typed array arrives as {"0": t, "1": p}
            cd = [cd.get("0"), cd.get("1")]
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            try:
                return int(cd[0]), int(cd[1])
            except (TypeError, ValueError):
                continue
    return None


def selection_csv(data: RunData, positions, xy: MapXY | None = None, layer: str = "ls-dr10") -> bytes:
    """CSV of selected galaxies: id, row, split, true class, prediction, confidence, x, y,
    and where the dataset has them ra, dec, redshift and survey links (``layer``)."""
    positions = np.asarray(positions, dtype=np.int64)
    sub = data.frame.iloc[positions]
    out = pd.DataFrame({"id": sub["id"].to_numpy(), "row": sub["row"].to_numpy(), "split": sub["split"].to_numpy(),
                        "true_class": sub["true"].to_numpy()})
    if data.has_predictions:
        out["predicted_class"] = sub["predicted"].to_numpy()
        out["confidence"] = sub["confidence"].to_numpy().round(4)
    if xy is not None:
        out["x"] = xy.x[positions]
        out["y"] = xy.y[positions]
    from .astro import sky_columns

    out = pd.concat([out.reset_index(drop=True), sky_columns(sub, layer)], axis=1)
    buf = io.StringIO()
    out.to_csv(buf, index=False)
    return buf.getvalue().encode()
