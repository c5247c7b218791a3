"""Failure slices: groups of galaxies where a model goes wrong far more often than elsewhere.

Two kinds of slice, searched together and ranked on one scale:

- ``metadata``: a range of one numeric column (redshift, axis ratio, pitch angle,
  brightness, the model's confidence...), over all galaxies or within one given class.
  Ranges are runs of consecutive quantile bins (32 per column and class), so the search
  sees every interval at that resolution.
- ``map``: a disc of the map around a wrong galaxy holding its 10-320 nearest map
  neighbours (a circular scan, as Kulldorff's spatial scan statistic does).

Each candidate is scored by the one-sided Bernoulli log-likelihood ratio of "the error rate
inside differs from outside" (Kulldorff 1997): it grows with how much worse the slice is
*and* with how many galaxies it holds, so three wrong galaxies cannot outrank a large slice
at 40% wrong. Its p-value (chi-squared with one degree of freedom on twice the ratio,
halved for the one-sided test) is multiplied by the number of candidates tried
(Bonferroni); slices with an adjusted p-value above ``alpha`` are dropped, and a slice
sharing half or more of its galaxies (or of the other's) with a better one is not listed again.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.errors import UserError

DEFAULTS = {"bins": 32, "max_slices": 10, "min_size": 5, "alpha": 0.05}
MAP_NEIGHBOURS = (10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320)
MAX_CENTRES = 600
SKIP_COLUMNS = {"true_label", "label", "row", "id"}  # the synthetic truth is not a slice
UNITS = {"_deg": "°", "_px": " px", "_arcsec": "″"}


def _llr(w_in, n_in, W, N):
    """One-sided Bernoulli log-likelihood ratio (in > out) of slices with ``w_in`` wrong of
    ``n_in``, among ``W`` wrong of ``N``; 0 where the slice is not worse than the rest."""
    from scipy.special import xlogy

    w_in, n_in = np.asarray(w_in, np.float64), np.asarray(n_in, np.float64)
    w_out, n_out = W - w_in, N - n_in
    with np.errstate(divide="ignore", invalid="ignore"):
        p_in = np.where(n_in > 0, w_in / np.maximum(n_in, 1), 0)
        p_out = np.where(n_out > 0, w_out / np.maximum(n_out, 1), 0)
        p = W / N
        ll = (xlogy(w_in, p_in) + xlogy(n_in - w_in, 1 - p_in) + xlogy(w_out, p_out)
              + xlogy(n_out - w_out, 1 - p_out) - xlogy(W, p) - xlogy(N - W, 1 - p))
    ll = np.where((p_in > p_out) & (n_in > 0) & (n_out > 0), ll, 0.0)
    return np.maximum(ll, 0.0)


def p_value(llr, tried: int = 1) -> np.ndarray:
    """One-sided p-value of a log-likelihood ratio (chi-squared, 1 d.o.f.), Bonferroni-adjusted
    for ``tried`` candidates, capped at 1."""
    from scipy.stats import chi2

    return np.minimum(1.0, chi2.sf(2 * np.asarray(llr, np.float64), 1) / 2 * max(1, tried))


def _nice(column: str) -> tuple[str, str]:
    for suffix, unit in UNITS.items():
        if column.endswith(suffix):
            return column[: -len(suffix)].replace("_", " "), unit
    return column.replace("_", " "), ""


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _rule_text(column, lo, hi, vmin, vmax) -> str:
    name, unit = _nice(column)
    if lo <= vmin:
        return f"{name} < {_fmt(hi)}{unit}"
    if hi > vmax:
        return f"{name} ≥ {_fmt(lo)}{unit}"
    return f"{name} {_fmt(lo)}–{_fmt(hi)}{unit}"


def _metadata_candidates(wrong, meta: pd.DataFrame, labels, class_names, bins: int, min_size: int):
    """Yield (llr array, w, n, builder) per (scope, column): builder(index) -> slice dict."""
    N, W = len(wrong), int(wrong.sum())
    scopes = [(None, np.ones(N, bool))]
    if labels is not None:
        for c in np.unique(labels[labels >= 0]):
            mask = labels == c
            if mask.sum() >= min_size:
                scopes.append((int(c), mask))
    for column in meta.columns:
        if column in SKIP_COLUMNS:
            continue
        values = pd.to_numeric(meta[column], errors="coerce") if meta[column].dtype != bool else meta[column].astype(float)
        values = values.to_numpy(np.float64)
        for c, scope in scopes:
            rows = np.flatnonzero(scope & np.isfinite(values))
            if len(rows) < min_size:
                continue
            v = values[rows]
            edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
            if len(edges) < 2:
                continue
            # bin b holds edges[b] <= v < edges[b+1]; the last bin includes the maximum
            b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
            nb = np.bincount(b, minlength=len(edges) - 1).astype(np.float64)
            wb = np.bincount(b, weights=wrong[rows].astype(np.float64), minlength=len(edges) - 1)
            cn, cw = np.concatenate([[0], np.cumsum(nb)]), np.concatenate([[0], np.cumsum(wb)])
            i, j = np.triu_indices(len(nb) + 1, k=1)  # bins i..j-1
            n_in, w_in = cn[j] - cn[i], cw[j] - cw[i]
            full = (i == 0) & (j == len(nb)) & (c is None)  # the whole set is not a slice
            llr = np.where((n_in >= min_size) & ~full, _llr(w_in, n_in, W, N), 0.0)

            def build(t, rows=rows, b=b, i=i, j=j, edges=edges, v=v, c=c, column=column):
                lo, hi = edges[i[t]], edges[j[t]] if j[t] < len(edges) - 1 else np.inf
                members = rows[(b >= i[t]) & (b < j[t])]
                hi_shown = edges[j[t]]
                scope_name = class_names[c] if c is not None and c < len(class_names) else (
                    "Galaxies" if c is None else f"class {c}")
                rule = _rule_text(column, lo, hi_shown if np.isfinite(hi) else np.inf, v.min(),
                                  v.max() if np.isfinite(hi) else -np.inf)
                return {"kind": "metadata", "members": members, "scope": scope_name,
                        "rule": {"column": column, "lo": float(lo), "hi": float(hi) if np.isfinite(hi) else None,
                                 "class": class_names[c] if c is not None and c < len(class_names) else None},
                        "where": f"{scope_name} with {rule}"}
            yield llr, w_in, n_in, build


def _map_candidates(wrong, xy, labels, class_names, min_size: int, seed: int = 0):
    from scipy.spatial import cKDTree

    N = len(wrong)
    W = int(wrong.sum())
    centres = np.flatnonzero(wrong)
    if len(centres) > MAX_CENTRES:
        centres = np.sort(np.random.default_rng(seed).choice(centres, MAX_CENTRES, replace=False))
    ks = np.array([k for k in MAP_NEIGHBOURS if min_size <= k < N])
    if len(centres) == 0 or len(ks) == 0:
        return
    dist, idx = cKDTree(xy).query(xy[centres], k=int(ks.max()))
    cw = np.cumsum(wrong[idx], axis=1)
    w_in = cw[:, ks - 1].astype(np.float64)
    n_in = np.broadcast_to(ks, w_in.shape).astype(np.float64)
    llr = _llr(w_in, n_in, W, N).ravel()

    def build(t):
        ci, ki = divmod(int(t), len(ks))
        members = idx[ci, : ks[ki]]
        cx, cy = (float(v) for v in xy[centres[ci]])
        radius = float(dist[ci, ks[ki] - 1])
        where = f"Map region at ({cx:.1f}, {cy:.1f}), radius {radius:.1f}"
        if labels is not None:
            lab = labels[members]
            lab = lab[lab >= 0]
            if len(lab):
                top = int(np.bincount(lab).argmax())
                share = float((lab == top).mean())
                name = class_names[top] if top < len(class_names) else f"class {top}"
                where += f" (mostly {name})" if share >= 0.5 else ""
        return {"kind": "map", "members": members, "where": where,
                "region": {"x": cx, "y": cy, "radius": radius, "k": int(ks[ki])}}
    yield llr, w_in.ravel(), n_in.ravel(), build


def find_slices(wrong, meta: pd.DataFrame | None = None, labels=None, class_names=(), xy=None, ids=None,
                bins: int = 32, max_slices: int = 10, min_size: int = 5, alpha: float = 0.05) -> list[dict]:
    """Failure slices of galaxies with ``wrong`` (n,) bool (the model's errors).

    ``meta``: DataFrame of n rows (numeric columns are searched), ``labels`` (n,) ints for
    per-class ranges and the map regions' dominant class, ``xy`` (n, 2) map coordinates
    (``None``: no map regions), ``ids`` (n,) galaxy ids (default: row numbers).
    Returns up to ``max_slices`` dicts, best first: description, ids, rows, n, wrong,
    error_rate, rate_elsewhere, ratio, llr, p_value (Bonferroni-adjusted), kind, and
    ``rule`` {column, lo, hi (None = no upper bound), class} or ``region`` {x, y, radius, k}.
    """
    wrong = np.asarray(wrong, bool)
    N, W = len(wrong), int(wrong.sum())
    if N == 0:
        raise UserError("failure slices need galaxies with labels and predictions; there are none")
    ids = np.asarray([str(i) for i in range(N)] if ids is None else ids).astype(str)
    labels = None if labels is None else np.asarray(labels, np.int64)
    class_names = list(class_names)
    if W == 0 or W == N:
        return []
    groups = []
    if meta is not None and len(meta.columns):
        if len(meta) != N:
            raise UserError(f"metadata has {len(meta)} rows for {N} galaxies")
        groups += list(_metadata_candidates(wrong, meta.reset_index(drop=True), labels, class_names, bins, min_size))
    if xy is not None:
        xy = np.asarray(xy, np.float64)
        if xy.shape != (N, 2):
            raise UserError(f"map coordinates have shape {xy.shape} for {N} galaxies")
        groups += list(_map_candidates(wrong, xy, labels, class_names, min_size))
    if not groups:
        return []
    tried = int(sum(len(g[0]) for g in groups))
    flat = np.concatenate([g[0] for g in groups])
    owner = np.concatenate([np.full(len(g[0]), gi) for gi, g in enumerate(groups)])
    local = np.concatenate([np.arange(len(g[0])) for g in groups])
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0]
    chosen, masks = [], []
    for t in order[:20_000]:
        if len(chosen) >= max_slices:
            break
        llr = float(flat[t])
        p = float(p_value(llr, tried))
        if p > alpha:
            break  # sorted by llr: every later one is less significant
        s = groups[owner[t]][3](int(local[t]))
        mask = np.zeros(N, bool)
        mask[s["members"]] = True
        if any((mask & m).sum() / min(mask.sum(), m.sum()) >= 0.5 for m in masks):
            continue
        n, w = int(mask.sum()), int(wrong[mask].sum())
        rate, elsewhere = w / n, (W - w) / max(N - n, 1)
        ratio = rate / elsewhere if elsewhere > 0 else math.inf
        s.update(ids=ids[mask].tolist(), rows=np.flatnonzero(mask).tolist(), n=n, wrong=w, error_rate=rate,
                 rate_elsewhere=elsewhere, ratio=ratio, llr=llr, p_value=p,
                 description=f"{s.pop('where')}: {rate:.0%} wrong, "
                             f"{'∞' if not math.isfinite(ratio) else f'{ratio:.1f}'}× the rate elsewhere, "
                             f"{n} galaxies")
        s.pop("members")
        s.pop("scope", None)
        chosen.append(s)
        masks.append(mask)
    return chosen


# ---------------------------------------------------------------- a features run


def run_errors(run: dict, rows: pd.DataFrame, cache=None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mask of the rows judged, wrong (same length as the mask's True rows), what was judged).

    A run with a classification head (head/full) is judged on its own predictions, on the test
    split when it has one of 100 galaxies or more (the training split's labels were learnt);
    any other run by the out-of-sample linear probes of ``label_issues`` (suggested != given).
    """
    labels = rows["label"].to_numpy(np.int64)
    have = labels >= 0
    if "pred" in rows.columns and run.get("mode") in ("head", "full"):
        pred = rows["pred"].to_numpy(np.int64)
        if "split" in rows.columns and (rows["split"].astype(str) == "test").sum() >= 100:
            have &= (rows["split"].astype(str) == "test").to_numpy()
            what = f"the {run.get('mode')} model's predictions on the test split"
        else:
            what = f"the {run.get('mode')} model's predictions"
        return have, pred[have] != labels[have], what
    from core.analysis.label_issues import label_issues

    issues = label_issues(run["key"], cache).set_index("row")
    ok = issues.reindex(rows["row"].to_numpy())
    have &= ok["given"].notna().to_numpy()
    wrong = (ok["suggested"] != ok["given"]).to_numpy()[have]
    return have, wrong, "out-of-sample linear probes (K folds) with feature-space neighbours"


def run_metadata(run: dict, ids) -> pd.DataFrame:
    """The dataset's metadata columns aligned to ``ids`` (empty frame when there are none), for
    features files that do not carry them as ``meta_*`` columns."""
    from core.data.sources import open_dataset

    try:
        ds = open_dataset(run["dataset"])
    except Exception:  # the source moved: slice by what the features file holds
        return pd.DataFrame(index=range(len(ids)))
    meta = ds.metadata
    if meta is None or not len(meta.columns):
        return pd.DataFrame(index=range(len(ids)))
    meta = meta.reset_index(drop=True).copy()
    meta.index = np.asarray(ds.ids).astype(str)
    return meta.reindex(np.asarray(ids).astype(str)).reset_index(drop=True)


def run_map(run_key: str, cache=None, map_key: str | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """(DataFrame id, x, y; its key) of ``map_key``, else of a cached t-SNE of the run (else any map
    of it), else (None, None). Never computes a map."""
    from core.store import cache as store

    maps = [r for r in store.list_runs(cache) if r["kind"] == "projection"]
    if map_key:
        found = [r for r in maps if r["key"] == map_key]
        if not found:
            raise UserError(f"no cached map with key {map_key!r}; list them with `python -m core ls`")
    else:
        found = sorted((r for r in maps if r.get("features_run") == run_key),
                       key=lambda r: (r.get("method") != "tsne", bool(r.get("aligned_to"))))
    for r in found:
        table = store.read_table(r["path"], columns=["id", "x", "y"])
        if table is not None:
            return table.to_pandas(), r["key"]
    return None, None


def failure_slices(run_key: str, cache=None, map_key: str | None = None, progress=None, **params) -> list[dict]:
    """Failure slices of a cached features run (see ``find_slices``): metadata ranges of its
    dataset (plus the model's confidence) and regions of its map (``map_key``, else a cached
    t-SNE of the run; none: metadata only). Each dict also holds ``judged`` (what errors were
    counted) and, for map slices, ``map`` (the map's key)."""
    from core.analysis.maps.store import features_run, load_features
    from core.store import cache as store

    run = features_run(run_key, cache)
    names = store.read_schema(run["path"]).names
    cols = [c for c in names if c in ("pred", "confidence", "split") or c.startswith("meta_")]
    rows, _ = load_features(run, tuple(cols))
    if progress:
        (progress if callable(progress) else print)(f"failure slices of {run_key}")
    have, wrong, judged = run_errors(run, rows, cache)
    ids = rows["id"].astype(str).to_numpy()
    carried = [c for c in rows.columns if c.startswith("meta_")]  # the metadata the features file carries
    if carried:
        meta = rows[carried].rename(columns=lambda c: c[len("meta_"):]).reset_index(drop=True)
    else:
        meta = run_metadata(run, ids)
    if "confidence" in rows.columns:
        meta["confidence"] = rows["confidence"].to_numpy(np.float64)
    xy_frame, used_map = run_map(run_key, cache, map_key)
    xy = None
    if xy_frame is not None:
        pos = xy_frame.drop_duplicates("id").set_index("id").reindex(ids[have])
        if pos["x"].notna().all():
            xy = pos[["x", "y"]].to_numpy(np.float64)
    out = find_slices(wrong, meta[have].reset_index(drop=True), rows["label"].to_numpy(np.int64)[have],
                      run.get("class_names") or [], xy=xy, ids=ids[have], **params)
    for s in out:
        s["judged"] = judged
        s["rows"] = rows["row"].to_numpy(np.int64)[have][s["rows"]].tolist()
        if s["kind"] == "map":
            s["map"] = used_map
    return out
