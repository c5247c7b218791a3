"""Cached maps: one projection parquet per (features run, method, parameters,
alignment), beside the features, and the ``python -m core project`` verb.

A map is computed once, under a file lock (two identical requests compute
once), written atomically with its provenance and quality numbers, and read
back instantly afterwards. The dashboard asks ``cached_projection`` what is
instant and ``get_projection`` for the rest; ``place_run`` / ``place_points``
put other galaxies (the real photos, a test split) into a cached map.
"""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core.store import cache as store
from core.store.compute import get_or_compute, read_parquet
from core.analysis.maps import projection as proj
from core.store.embeddings import embedding_matrix
from core.errors import UserError

# Bump when a change to the map code changes the maps: old cache entries then miss.
MAP_VERSION = 2  # 2: t-SNE affinities calibrated without underflow (core.analysis.maps.affinities)
NAMES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("x", pa.float32()), ("y", pa.float32())])


def _say(progress: bool, message: str):
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- finding features


def _features_runs(cache) -> list[dict]:
    return [r for r in store.list_runs(cache) if r["kind"] == "features"]


def features_run(features_key: str, cache=None) -> dict:
    """The ``list_runs`` entry of a cached features run, or a UserError saying what to do."""
    for run in _features_runs(cache):
        if run["key"] == features_key:
            return run
    raise UserError(
        f"no cached features with key {features_key!r} in {store.cache_dir(cache)}; "
        "list them with `python -m core ls`"
    )


def find_features(dataset: str, model: str, cache=None) -> dict:
    """The features run of ``dataset`` x ``model``; with several (poolings,
    splits) the one with split "all" and pooling "cls", else a UserError listing them."""
    from core.data.sources import canonical_ref

    dataset, model = canonical_ref(dataset), canonical_ref(model)
    runs = [r for r in _features_runs(cache) if r.get("dataset") == dataset and r.get("model") == model]
    if not runs:
        raise UserError(
            f"no cached features for {dataset} with {model} in {store.cache_dir(cache)}: "
            f"run `python -m core extract --dataset {dataset} --model {model}` first"
        )
    if len(runs) > 1:
        runs = [r for r in runs if r.get("split") == "all" and r.get("pooling") == "cls"] or runs
    if len(runs) > 1:
        listed = ", ".join(f"{r['key']} (pooling={r.get('pooling')}, split={r.get('split')})" for r in runs)
        raise UserError(f"several features runs match {dataset} with {model}: {listed}; pick one with --run KEY")
    return runs[0]


def load_features(run: dict, extra: tuple[str, ...] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows: DataFrame with row, id, label and the ``extra`` columns; X: (n, d) float32) of a
    features run."""
    names = ["row", "id", "label", *extra]
    table = store.read_table(run["path"], columns=[*names, "embedding"])
    if table is None:
        raise UserError(f"features file {run['path']} is unreadable or incomplete; extract it again")
    X = embedding_matrix(table.column("embedding"), run.get("dim") or 0)
    rows = table.select(names).to_pandas()
    return rows, X


# ---------------------------------------------------------------- the cache


def projection_key(features_key: str, method: str, params: dict, align_to: str | None) -> str:
    return store.key_of("projection", MAP_VERSION, features_key, method, params, align_to)


def _where(features_key, method, cache, params, align_to):
    if align_to == features_key:
        raise UserError("a map cannot be aligned to its own features run; leave out --align-to")
    params = proj.params_for(method, **(params or {}))
    key = projection_key(features_key, method, params, align_to or None)
    return store.path_for(store.cache_dir(cache), "projections", key), params


def cached_projection(features_key: str, method: str, cache=None, params=None, align_to=None):
    """``(DataFrame row, id, x, y; provenance)`` if this map is cached, else None. Never computes."""
    path, _ = _where(features_key, method, cache, params, align_to)
    return read_parquet(path)


def _initial_coordinates(ids: np.ndarray, X: np.ndarray, ref: pd.DataFrame) -> np.ndarray:
    """Start coordinates from a reference map, matched by galaxy id. Galaxies the
    reference lacks start at the median position of their 10 nearest matched
    galaxies in this feature space (where openTSNE also puts new points)."""
    pos = pd.Series(np.arange(len(ref)), index=ref["id"].astype(str).to_numpy())
    at = pos.reindex(ids.astype(str)).to_numpy()
    matched = ~np.isnan(at)
    if not matched.any():
        raise UserError("the features to align to share no galaxy ids with these features; cannot align the maps")
    ref_xy = ref[["x", "y"]].to_numpy(np.float64)
    init = np.zeros((len(ids), 2))
    init[matched] = ref_xy[at[matched].astype(int)]
    if not matched.all():
        near, _ = proj.exact_knn(X[matched], min(10, int(matched.sum())), queries=X[~matched])
        init[~matched] = np.median(init[matched][near], axis=1)
    return init


def get_projection(features_key: str, method: str, cache=None, params=None, align_to=None, progress=True):
    """``(DataFrame row, id, x, y; provenance)`` of a map, computed and cached on a miss.

    ``params`` are the method's options (see ``core.analysis.maps.projection.fit_<method>``);
    ``align_to`` a features key whose map (same method and options, computed if
    needed) is the starting point, matched by galaxy id. The provenance holds
    ``quality`` (the map's kNN preservation and trustworthiness) and
    ``feature_quality`` (the feature space's kNN accuracy and silhouette, per class).
    """
    path, params = _where(features_key, method, cache, params, align_to)
    if (hit := read_parquet(path)) is not None:
        return hit
    run = features_run(features_key, cache)
    reference = reference_prov = None
    if align_to:  # before taking our lock: the reference map has its own
        reference, reference_prov = get_projection(align_to, method, cache, params, None, progress)

    def compute():
        _say(progress, f"reading features {features_key} ({run.get('rows')} x {run.get('dim')})")
        rows, X = load_features(run, extra=("split",))  # the split: for the test-split kNN score
        if reference is not None and _same_features(rows, X, align_to, cache):
            # e.g. a head-only run: its backbone is the generic one, so its map is the generic map
            _say(progress, f"same features as {align_to}: its map, unchanged")
            return _map_table(run, method, params, align_to, rows["row"].to_numpy(np.int64), rows["id"].to_numpy(),
                              reference[["x", "y"]].to_numpy(np.float32), same_features_as=align_to,
                              **{k: v for k in ("fitted_params", "implementation", "quality", "feature_quality",
                                                "versions") if (v := reference_prov.get(k)) is not None}, seconds=0.0)
        return _fit_map(run, method, params, align_to, rows, X, reference, cache, progress)

    hit, was_cached = get_or_compute(path, read_parquet, compute, lambda p, result: store.write_parquet(p, *result))
    _say(progress and not was_cached, f"wrote {path}")
    return hit


def _fit_map(run: dict, method: str, params: dict, align_to, rows: pd.DataFrame, X: np.ndarray, reference,
             cache, progress: bool) -> tuple[pa.Table, dict]:
    """(table, provenance) of a new map of the features ``X``: fitted (from the reference map's
    coordinates when aligning), then scored (map quality and feature-space quality)."""
    init = _initial_coordinates(rows["id"].to_numpy(), X, reference) if reference is not None else None
    _say(progress, f"{NAMES[method]} of {len(X):,} points" + (f", starting from the map of {align_to}" if align_to else ""))
    start = time.perf_counter()
    fit_params = dict(params)
    if method == "tsne" and fit_params.get("perplexity", 30) > (len(X) - 1) / 3:
        # small sets (e.g. 60 real photos): the largest perplexity t-SNE allows, recorded below
        fit_params["perplexity"] = max(1.0, float((len(X) - 1) // 3))
        _say(progress, f"perplexity lowered to {fit_params['perplexity']:g} for {len(X)} points")
    fitted = proj.fit(method, X, init=init, progress=progress, **fit_params)
    seconds = time.perf_counter() - start
    _say(progress, f"scoring the map and the feature space ({seconds:.1f} s so far)")
    quality_start = time.perf_counter()
    quality = proj.map_quality(X, fitted.embedding, k=min(10, (len(X) - 1) // 2))  # k < 10 only for tiny runs
    feature_quality = _feature_quality(run["key"], cache, rows, X, run)
    return _map_table(run, method, params, align_to, rows["row"].to_numpy(np.int64), rows["id"].to_numpy(),
                      fitted.embedding, fitted_params=fit_params, implementation=fitted.implementation or None,
                      quality=quality, feature_quality=feature_quality, seconds=round(seconds, 3),
                      quality_seconds=round(time.perf_counter() - quality_start, 3),
                      versions=_versions(method, fitted.implementation))


def _same_features(rows, X, other_key: str, cache) -> bool:
    """Whether the features run ``other_key`` holds the very same vectors for the same galaxies in
    the same order (bit for bit), so a map of one is a map of the other. Runs of another size or
    whose first vectors differ are told apart without reading the whole other run."""
    other = features_run(other_key, cache)
    if other.get("rows") not in (None, len(X)) or other.get("dim") not in (None, X.shape[1]):
        return False
    head = _first_embeddings(other["path"], min(len(X), 256))
    if head is not None and not np.array_equal(head, X[:len(head)]):
        return False
    other_rows, Y = load_features(other)
    return (X.shape == Y.shape and np.array_equal(rows["id"].to_numpy(), other_rows["id"].to_numpy())
            and np.array_equal(X, Y))


def _first_embeddings(path, n: int) -> np.ndarray | None:
    """The first ``n`` vectors of a features file or sharded run (one batch read), or None."""
    import pyarrow.parquet as pq

    try:
        if Path(path).is_dir():
            from core.store.shards import parts

            path = parts(path)[0]
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n, columns=["embedding"]))
    except Exception:  # unreadable here: the full comparison decides (and reports a damaged file)
        return None
    return embedding_matrix(batch.column("embedding"))


def _map_table(run: dict, method: str, params: dict, align_to, rows, ids, xy, **fields) -> tuple[pa.Table, dict]:
    """The one form of map files: (columns ``row, id, x, y``, the provenance of CONTRACTS.md:
    identity fields from the features run ``run``, then ``fields``)."""
    prov = {
        "kind": "projection", "features_run": run["key"], "method": method, "params": params,
        "fitted_params": params, "aligned_to": align_to or None, "rows": len(xy), "map_version": MAP_VERSION,
        **{name: run.get(name) for name in ("dataset", "model", "mode", "pooling", "split")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields,
    }
    table = pa.table({"row": np.asarray(rows, np.int64), "id": np.asarray(ids).astype(str),
                      "x": xy[:, 0], "y": xy[:, 1]}, schema=SCHEMA)
    return table, prov


def write_layout(run: dict, method: str, xy, ids, cache=None, align_to=None, **fields):
    """Store ready-made coordinates ``xy`` (n, 2) of the galaxies ``ids`` (rows 0..n-1 of the
    features run ``run``, a ``list_runs`` entry) as the ``method`` map with default options:
    the file ``get_projection`` / ``cached_projection`` then read instead of computing one.
    For synthetic fixtures and benchmark runs too large to map here; ``fields`` add to the
    provenance (``quality``, ``feature_quality``, ``seconds``, and ``layout``: the sentence that
    says the map is a stand-in). Returns the file's path."""
    path, params = _where(run["key"], method, cache, None, align_to)
    fields = {"quality": {}, "feature_quality": None, **fields}
    return store.write_parquet(path, *_map_table(run, method, params, align_to, np.arange(len(xy)), ids,
                                                 np.asarray(xy, np.float32), **fields))


def place_points(features_key: str, method: str, X_new, cache=None, params=None, align_to=None, progress=False) -> np.ndarray:
    """(m, 2) float32 positions of new features ``X_new`` (m, d) in a cached map,
    without recomputing the map (computed first if it is not cached); see
    ``core.analysis.maps.projection.attach`` for how each method places points."""
    df, prov = get_projection(features_key, method, cache, params, align_to, progress)
    _, X = load_features(features_run(features_key, cache))
    fitted = proj.attach(method, X, df[["x", "y"]].to_numpy(), **prov.get("fitted_params", prov["params"]))
    return fitted.transform(X_new)


def place_run(features_key: str, method: str, new_features_key: str, cache=None, params=None, align_to=None,
              progress=False) -> pd.DataFrame:
    """Another features run (e.g. the 60 real photos, extracted with the same
    checkpoint) placed into a cached map: DataFrame ``row, id, label, x, y``."""
    rows, X_new = load_features(features_run(new_features_key, cache))
    xy = place_points(features_key, method, X_new, cache, params, align_to, progress)
    return rows.assign(x=xy[:, 0], y=xy[:, 1])


def _feature_quality(features_key, cache, rows, X, run) -> dict | None:
    """The feature space's kNN accuracy and silhouette: copied from another map of
    the same features if there is one (it depends on the features only), else
    computed; None without labels of at least two classes."""
    for other in store.list_runs(cache):
        if other["kind"] == "projection" and other.get("features_run") == features_key and other.get("feature_quality"):
            return other["feature_quality"]
    labels = rows["label"].to_numpy()
    if len(np.unique(labels[labels >= 0])) < 2 or (labels >= 0).sum() <= 10:
        return None
    quality = proj.feature_space_quality(X, labels, run.get("class_names"))
    quality["test_knn_accuracy"] = _test_split_knn(labels, rows["split"].to_numpy().astype(str), X)
    return quality


def _test_split_knn(labels, splits, X, k: int = 10) -> float | None:
    """kNN accuracy on the test split: each labelled test galaxy voted on by its ``k`` nearest
    labelled train galaxies (cosine, as the Layers view and the DINO papers score a frozen
    backbone); None without labelled galaxies in both splits."""
    from core.analysis.layers import knn_accuracy, train_test_masks

    train, test = train_test_masks(splits, labels)
    if not train.any() or not test.any() or len(np.unique(labels[train])) < 2:
        return None
    return knn_accuracy(X[train], labels[train], X[test], labels[test], k)


def _versions(method: str, implementation: str = "") -> dict:
    import importlib.metadata as md

    names = {"tsne": ["openTSNE"], "umap": ["umap-learn", "pynndescent"], "pca": []}[method] + ["scikit-learn", "numpy"]
    names += ["torch"] if (implementation or "").startswith("torch") else []
    return {n: md.version(n) for n in names}


# ---------------------------------------------------------------- the CLI verb
