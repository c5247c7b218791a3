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
                                recall@10, checksum; see core.analysis.knn_index), and
    indexes/<vkey>.vectors.npy  the run's features laid out by row for the index's exact re-rank

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
    footers, evaluations from their JSON; incomplete or corrupt files are left out here and
    listed by ``list_damaged`` (``ls`` and the dashboard show both).
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
        if p.name.startswith(".") or p.name.endswith(".vectors.json") or not index.exists():
            continue
        try:
            obj = json.loads(p.read_text())
        except Exception:
            continue  # listed by list_damaged
        if obj.get("bytes") != index.stat().st_size:
            continue  # truncated or rewritten: listed by list_damaged
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


# ---------------------------------------------------------------- damaged files: never silently dropped

_PARQUET_KINDS = (("features", "features"), ("projections", "projection"), ("layers", "layers"),
                  ("anomalies", "anomalies"), ("label_issues", "label_issues"))


def list_damaged(cache=None, runs: list[dict] | None = None) -> list[dict]:
    """Every cached file (or sharded run folder) that is there but does not read back, which
    ``list_runs`` leaves out: ``kind``, ``key``, ``path``, ``bytes``, ``damaged`` (why) and ``fix``
    (the command that recomputes it). A sharded run without its manifest (interrupted, or still
    being written) is listed too, with ``unfinished: True``.

    Whatever the damaged file's lost footer held is recovered, where possible, from the intact
    runs that point at it (``runs``: ``list_runs``'s answer, read again when not given), so the
    ``fix`` can name the dataset and checkpoint.
    """
    cache = cache_dir(cache)
    runs = list_runs(cache) if runs is None else runs
    out = []
    for kind, label in _PARQUET_KINDS:
        for p in sorted((cache / kind).glob("*.parquet")):
            if p.name.startswith(".") or provenance(p) is not None:
                continue
            out.append({"kind": label, "key": p.stem, "path": str(p), "bytes": _size(p),
                        "damaged": "the footer does not read back (truncated or overwritten?)"})
        if kind == "features":
            out += shards.list_damaged(cache / kind)
    for p in sorted({*(cache / "indexes").glob("*.json"), *(cache / "indexes").glob("*.faiss")}):
        if p.name.startswith(".") or p.name.endswith(".vectors.json") or (
                p.suffix == ".faiss" and p.with_suffix(".json").exists()):
            continue
        index = p.with_suffix(".faiss")
        try:
            meta = json.loads(p.read_text()) if p.suffix == ".json" else None
            vec = (meta or {}).get("vectors") or {}
            vfile = p.parent / vec["file"] if vec.get("file") else None
            why = ("its JSON (parameters, checksum) is missing" if meta is None else
                   "index file missing" if not index.exists() else
                   f"{_size(index):,} bytes, its JSON says {meta.get('bytes')} (truncated?)"
                   if meta.get("bytes") != _size(index) else
                   f"its re-rank vectors {vfile.name} are missing or not {vec.get('bytes'):,} bytes (truncated?)"
                   if vfile is not None and (not vfile.exists() or _size(vfile) != vec.get("bytes")) else None)
        except Exception as e:
            why = f"its JSON does not read back ({type(e).__name__})"
        if why:
            out.append({"kind": "knn-index", "key": p.stem, "path": str(index), "bytes": _size(index), "damaged": why})
    for p in sorted((cache / "evaluations").glob("*.json")):
        if p.name.startswith(".") or p.name == "summary.json":
            continue
        try:
            if isinstance(json.loads(p.read_text()), dict):
                continue
            why = "not a JSON object"
        except Exception as e:
            why = f"unreadable JSON ({type(e).__name__})"
        out.append({"kind": "evaluation", "key": p.stem, "path": str(p), "bytes": _size(p), "damaged": why})
    for d in out:
        d.update({k: v for k, v in _recovered(d, runs).items() if d.get(k) is None})
        d["fix"] = repair_hint(d)
    return out


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _recovered(entry: dict, runs: list[dict]) -> dict:
    """What the intact runs say about the features run behind a damaged file (dataset, model,
    pooling, split): the file's own key for features, per-layer features and evaluations
    (they share their run's key)."""
    if entry["kind"] not in ("features", "layers", "evaluation"):
        return {}
    key = entry["key"]
    found: dict = {}
    for r in runs:
        if r.get("kind") == "features" and r.get("key") == key:
            return {k: r.get(k) for k in ("dataset", "model", "pooling", "split", "features_run") if r.get(k)}
        if r.get("features_run") == key or (r.get("kind") in ("layers", "evaluation") and r.get("key") == key):
            for k in ("dataset", "model", "pooling", "split"):
                if r.get(k) and not found.get(k):
                    found[k] = r[k]
    return found


def repair_hint(entry: dict, pages: bool = False) -> str:
    """What to do about a damaged entry of ``list_damaged`` (or, ``pages``, a run whose footer
    reads but a data page does not, as ``verify`` finds): the command that recomputes it. Each
    such command finds the damaged file, says so and recomputes it in place (a sharded run:
    only its damaged parts)."""
    import shlex

    kind, key = entry["kind"], entry["key"]
    extract = None
    if entry.get("dataset") and entry.get("model"):
        extract = (f"python -m core extract --dataset {shlex.quote(str(entry['dataset']))} "
                   f"--model {shlex.quote(str(entry['model']))}"
                   + (f" --pooling {entry['pooling']}" if entry.get("pooling") else "")
                   + (f" --split {entry['split']}" if entry.get("split") else ""))
    if pages and extract:
        extract += " --verify"
    if kind == "features":
        cmd = f"`{extract}`" if extract else ("the `python -m core extract` that made it"
                                              + (" with --verify" if pages else ""))
        if entry.get("unfinished"):
            return f"re-run {cmd} to resume it (or delete {entry['path']} if it was abandoned)"
        return f"re-run {cmd}: it recomputes this run"
    if kind == "layers":
        cmd = f"`{extract} --layers all`" if extract else "the `python -m core extract --layers ...` that made it"
        return f"re-run {cmd}: it recomputes the per-layer features"
    if kind == "evaluation":
        return f"re-run `python -m core evaluate --run {key}`: it rewrites this evaluation"
    if kind == "knn-index":
        return "the next search rebuilds it (a neighbour search of its run, in the dashboard or the CLI)"
    if pages:
        return f"delete {entry['path']}, then " + repair_hint(entry)
    if kind == "projection":
        return ("reopen this map in the dashboard, or re-run the `python -m core project` that made it: "
                "a damaged map is recomputed")
    if kind == "anomalies":
        return ("open Unusual galaxies in the dashboard, or re-run the `python -m core anomalies` that made it: "
                "damaged scores are recomputed")
    if kind == "label_issues":
        return ("open Failures in the dashboard, or re-run the `python -m core failures` that made it: "
                "damaged scores are recomputed")
    return f"delete {entry['path']} and re-run the command that made it"
