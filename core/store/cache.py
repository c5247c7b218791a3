"""The parquet store: where files live, how they are keyed, written and listed.

Layout under the cache folder (``--cache DIR``, else ``$EXPLORER_CACHE``, else
``<repo>/cache``)::

    features/<key>.parquet      one per (dataset fp, checkpoint fp, pooling, split)
    features/<key>/             the same run sharded (large runs, the Ray engine): parquet parts
                                ``part-00000.parquet``... plus ``_manifest.json`` (see core.store.shards)
    projections/<key>.parquet   one per (features run, method, parameters)
    evaluations/<key>.json      one per features run with predictions (+ summary.json)
    checkpoints/                checkpoints the demo and `finetune` build
    layers/<key>.parquet        per-layer features of features/<key> (extract --layers), + analyses
    attention/<key>.npz         attention maps of one galaxy x checkpoint
    anomalies/<key>.parquet     outlier scores of a features run
    label_issues/<key>.parquet  suspicious labels of a features run (core.analysis.label_issues)
    indexes/<key>.faiss         a nearest-neighbour index of one features run (+ <key>.json: parameters,
                                recall@10, checksum; see core.analysis.knn_index)
    anomalies/<key>.parquet     outlier scores of a features run
    label_issues/<key>.parquet  suspicious labels of a features run (core.analysis.label_issues)

Every parquet carries its provenance as JSON under the key-value metadata key
``explorer``. Files are written to ``.<name>.tmp-<pid>`` and renamed, so a
killed run never leaves a file that looks whole; ``ls`` ignores temp files and
anything whose footer does not read back.

A cache hit is validated from the footer and row-group statistics (``quick_check``),
not a full read; ``verify`` reads every page and its checksum (``ls --verify``,
``extract --verify``, and the parts a crashed sharded run left behind).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.store import files, shards
from core.store.files import (  # noqa: F401  the cache's primitives, one import for callers
    META_KEY, REPO_ROOT, KINDS, cache_dir, key_of, path_for, atomic_path, AtomicParquetWriter, replace_dir, staged_dir, write_parquet, write_json, compute_lock,
)


def provenance(path) -> dict | None:
    """The provenance dict of a complete parquet file, or None if it is unreadable,
    truncated or its row count disagrees with what was recorded. A sharded run's
    provenance comes from its manifest (None while the run is incomplete)."""
    return shards.provenance(path) if Path(path).is_dir() else files.provenance(path)


def read_table(path, columns=None) -> pa.Table | None:
    """Read a cached parquet (file or sharded run) fully, or None when it is corrupt
    (then callers recompute)."""
    return shards.read_table(path, columns) if Path(path).is_dir() else files.read_table(path, columns)


def read_schema(path) -> pa.Schema:
    """The columns of a cached parquet file or sharded run (footer only)."""
    return pq.read_schema(shards.parts(path)[0]) if Path(path).is_dir() else files.read_schema(path)


def quick_check(path) -> dict | None:
    """Provenance of a complete run (file or sharded), checked from footers and row-group
    statistics only (see files.quick_check). None if not complete."""
    return shards.quick_check(path) if Path(path).is_dir() else files.quick_check(path)


def verify(path) -> str | None:
    """Read every data page with its checksum. None when intact, else why not."""
    return shards.verify(path) if Path(path).is_dir() else files.verify(path)


def list_runs(cache=None) -> list[dict]:
    """Every complete cached artefact with its provenance, path, size and kind.

    Features, projections, per-layer features, outlier scores and suspicious labels come from their parquet
    footers, evaluations from their JSON; incomplete or corrupt files are left out.
    """
    cache = cache_dir(cache)
    runs = []
    for kind, label in (("features", "features"), ("projections", "projection"), ("layers", "layers"),
                        ("anomalies", "anomalies"), ("label_issues", "label_issues")):
        for p in sorted((cache / kind).glob("*.parquet")):
            if p.name.startswith("."):
                continue
            prov = provenance(p)
            if prov is None:
                continue
            prov.update(kind=label, key=p.stem, path=str(p), bytes=p.stat().st_size)
            runs.append(prov)
        if kind == "features":
            runs += shards.list_sharded(cache / kind)
    for p in sorted((cache / "indexes").glob("*.json")):  # kNN indexes (core.analysis.knn_index)
        index = p.with_suffix(".faiss")
        if p.name.startswith(".") or not index.exists():
            continue
        try:
            obj = json.loads(p.read_text())
        except Exception:
            continue
        runs.append({**obj, "kind": "knn-index", "key": p.stem, "path": str(index), "bytes": index.stat().st_size})
    for p in sorted((cache / "evaluations").glob("*.json")):
        if p.name.startswith(".") or p.name == "summary.json":  # summary: the ΔF1 table, not a run
            continue
        try:
            obj = json.loads(p.read_text())
        except Exception:
            continue
        runs.append(
            {
                "kind": "evaluation",
                "key": p.stem,
                "path": str(p),
                "bytes": p.stat().st_size,
                **{k: obj.get(k) for k in ("features_run", "dataset", "model", "mode", "macro_f1", "accuracy")},
            }
        )
    return runs
