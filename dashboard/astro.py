"""What the dashboard shows astronomers, as plain Python (no Streamlit here): sky
positions on hover and cards, survey links, CSV columns, outlier-score columns
and similarity to an uploaded image. Positions come from a features run's
``meta_ra``/``meta_dec`` (the source mapped them explicitly); a run without them
(the synthetic demo) simply shows none of this.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from core.data import sky

LAYERS = ["ls-dr10", "ls-dr10-grz", "ls-dr9", "sdss", "unwise-neo7"]  # Legacy Surveys viewer layers
OUTLIER_COLUMNS = {"knn": "outlier score (kNN)", "iforest": "outlier score (forest)"}


def has_sky(data) -> bool:
    """Whether this run's galaxies carry sky positions."""
    return sky.has_positions(data.frame)


def positions(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) float64 arrays aligned with the frame, NaN where unknown."""
    ra = pd.to_numeric(frame.get("meta_ra", pd.Series(np.nan, index=frame.index)), errors="coerce")
    dec = pd.to_numeric(frame.get("meta_dec", pd.Series(np.nan, index=frame.index)), errors="coerce")
    return ra.to_numpy(np.float64), dec.to_numpy(np.float64)


def hover_sky(data):
    """``(customdata columns (n, 3) float32 [ra, dec, redshift], sexagesimal (n,) str)`` for the
    map's hover, or None without positions. Computed once per RunData (it is cached)."""
    cached = data.__dict__.get("_hover_sky")
    if cached is not None or "_hover_sky" in data.__dict__:
        return cached
    out = None
    if has_sky(data):
        ra, dec = positions(data.frame)
        z = pd.to_numeric(data.frame["meta_redshift"], errors="coerce").to_numpy(np.float64) \
            if "meta_redshift" in data.frame else np.full(len(ra), np.nan)
        out = (np.stack([ra, dec, z], 1).astype(np.float32), sky.sexagesimal(ra, dec))
    data.__dict__["_hover_sky"] = out
    return out


def hover_template(data) -> str:
    """The hover lines for positions (customdata columns 2-4 and hovertext), "" without them."""
    if hover_sky(data) is None:
        return ""
    out = "<br>RA %{customdata[2]:.5f}° Dec %{customdata[3]:+.5f}°<br>%{hovertext}"
    return out + ("<br>z %{customdata[4]:.4f}" if "meta_redshift" in data.frame else "")


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def card_lines(row: pd.Series, layer: str = sky.DEFAULT_LAYER) -> list[str]:
    """Markdown lines for a gallery card: RA/Dec in degrees and sexagesimal, redshift, links."""
    ra, dec = _finite(row.get("meta_ra")), _finite(row.get("meta_dec"))
    lines = []
    if ra is not None and dec is not None:
        lines += [f"RA {ra:.5f}° Dec {dec:+.5f}°", str(sky.sexagesimal(ra, dec)[0])]
    z = _finite(row.get("meta_redshift"))
    if z is not None:
        lines.append(f"z = {z:.4f}")
    if ra is not None and dec is not None:
        legacy, simbad = sky.legacy_viewer_url(ra, dec, layer), sky.simbad_url(ra, dec)
        lines.append(f"[Legacy Surveys]({legacy}) · [SIMBAD]({simbad})")
    return lines


def sky_columns(frame: pd.DataFrame, layer: str = sky.DEFAULT_LAYER) -> pd.DataFrame:
    """CSV columns ra, dec, ra_dec_sexagesimal, redshift, legacy_survey_url, simbad_url for the
    rows of ``frame`` (empty frame when it has no positions and no redshift)."""
    out = pd.DataFrame(index=range(len(frame)))
    if sky.has_positions(frame):
        ra, dec = positions(frame)
        ok = np.isfinite(ra) & np.isfinite(dec)
        out["ra"], out["dec"] = ra, dec
        out["ra_dec_sexagesimal"] = sky.sexagesimal(ra, dec)
    if "meta_redshift" in frame:
        out["redshift"] = pd.to_numeric(frame["meta_redshift"], errors="coerce").to_numpy()
    if "ra" in out:
        out["legacy_survey_url"] = [sky.legacy_viewer_url(a, d, layer) if k else "" for a, d, k in zip(ra, dec, ok)]
        out["simbad_url"] = [sky.simbad_url(a, d) if k else "" for a, d, k in zip(ra, dec, ok)]
    return out


def with_outlier_scores(data, scores: pd.DataFrame):
    """A copy of RunData with the 0-5 outlier scores as colourable ``meta_`` columns,
    matched by dataset row. ``scores``: core.analysis.outliers's frame (row, knn, iforest)."""
    frame = data.frame.copy()
    pos = pd.Index(scores["row"].to_numpy(np.int64)).get_indexer(frame["row"].to_numpy(np.int64))
    for key, name in OUTLIER_COLUMNS.items():
        values = scores[key].to_numpy(np.float32)
        frame[f"meta_{name}"] = np.where(pos >= 0, values[np.clip(pos, 0, None)], np.nan).astype(np.float32)
    out = dataclasses.replace(data, frame=frame)
    out.__dict__.pop("_hover_sky", None)
    return out


def outlier_score(frame: pd.DataFrame, which: str) -> np.ndarray:
    """The chosen 0-5 score per galaxy: "knn", "iforest" or "mean" of the two."""
    cols = [f"meta_{OUTLIER_COLUMNS[k]}" for k in (OUTLIER_COLUMNS if which == "mean" else [which])]
    return frame[cols].to_numpy(np.float64).mean(1)


def cosine_similarity(X: np.ndarray, norms: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine similarity (n,) of every row of X (n, d) to one feature vector q (d,)."""
    q = np.asarray(q, np.float32).reshape(-1)
    return (X @ q) / (norms * max(float(np.linalg.norm(q)), 1e-12))


def most_and_least(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k most similar (highest first) and k least similar (lowest first)."""
    order = np.argsort(-similarity, kind="stable")
    k = min(int(k), len(order))
    return order[:k], order[::-1][:k]


def most_similar(X, norms, q, k: int, index=None) -> tuple[np.ndarray, np.ndarray | None, dict, dict]:
    """(the k most similar positions, the k least similar or None, {position: cosine similarity},
    how it was searched) of feature vector ``q`` among the rows of ``X``. Without an index every
    row is compared (``norms``: X's row norms); with the run's cosine index (a large run, ``X``
    memory-mapped) the most similar come from it through the kNN entry point, only their rows are
    read, and the least similar are not looked for (None): that would read every row."""
    from core.analysis.knn import neighbours

    q = np.asarray(q, np.float32).reshape(-1)
    if index is None:
        sim_all = cosine_similarity(X, norms, q)
        top, bottom = most_and_least(sim_all, k)
        both = np.r_[top, bottom]
        return top, bottom, dict(zip(both.tolist(), sim_all[both].tolist())), {"search": "exact"}
    near, dist, how = neighbours(X, k, queries=q[None], metric="cosine", index=index)
    ok = near[0] >= 0
    top = near[0][ok]
    return top, None, dict(zip(top.tolist(), (1.0 - dist[0][ok].astype(np.float64)).tolist())), how
