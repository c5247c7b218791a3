"""Single parquet and JSON files of the cache: keys, atomic writes, provenance, checks, locks.

The sharded runs (core.store.shards) build on these; core.store.cache is the front that reads both.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"explorer"
REPO_ROOT = Path(__file__).resolve().parents[2]  # core/store/files.py -> the repository
KINDS = ("features", "projections", "evaluations", "checkpoints", "layers", "attention")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the cache folder: explicit argument, then $EXPLORER_CACHE, then <repo>/cache."""
    path = explicit or os.environ.get("EXPLORER_CACHE") or (REPO_ROOT / "cache")
    return Path(path).expanduser().resolve()


def key_of(*parts) -> str:
    """A 16-hex-char key from any JSON-serialisable parts (order matters)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def path_for(cache: Path, kind: str, key: str, suffix: str = ".parquet") -> Path:
    assert kind in KINDS, kind
    return Path(cache) / kind / f"{key}{suffix}"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicParquetWriter:
    """Stream tables into a parquet file that appears only when complete.

    The provenance dict is written into the footer at close, so fields filled in
    during the run (timings, the embedding width) are recorded too.

    >>> with AtomicParquetWriter(path, schema, provenance) as w:
    ...     w.write(batch_table)
    """

    def __init__(self, path, schema: pa.Schema, provenance: dict):
        self.path = Path(path)
        self.schema = schema.remove_metadata()
        self.provenance = provenance
        self._ctx = atomic_path(self.path)
        self._writer = None
        self.rows = 0

    def __enter__(self):
        tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(tmp, self.schema, compression="zstd", write_page_checksum=True)
        return self

    def write(self, table: pa.Table):
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.provenance["rows"] = self.rows
            self._writer.add_key_value_metadata({META_KEY: json.dumps(self.provenance, default=str).encode()})
        self._writer.close()
        return self._ctx.__exit__(exc_type, exc, tb)


def replace_dir(staging: Path, out: Path) -> Path:
    """Move a finished folder into place, replacing any old one with two renames, so a
    reader sees the old folder or the new one, never a half-written one."""
    staging, out = Path(staging), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
    return out


@contextlib.contextmanager
def staged_dir(out):
    """Yield a fresh staging folder beside ``out``; on success it replaces ``out`` (``replace_dir``),
    on an error it is removed, so ``out`` is never half-written."""
    out = Path(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield staging
        replace_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_parquet(path, table: pa.Table, provenance: dict) -> Path:
    """Write a whole table atomically with provenance."""
    with AtomicParquetWriter(path, table.schema, provenance) as w:
        w.write(table)
    return Path(path)


def write_json(path, obj) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, default=str))
    return Path(path)


def provenance(path) -> dict | None:
    """The provenance dict of a complete parquet file, or None if it is unreadable,
    truncated or its row count disagrees with what was recorded. A sharded run's
    provenance comes from its manifest (None while the run is incomplete)."""
    try:
        md = pq.read_metadata(path)
        prov = json.loads((md.metadata or {}).get(META_KEY, b"null"))
    except Exception:
        return None
    if not isinstance(prov, dict):
        return None
    if "rows" in prov and prov["rows"] != md.num_rows:
        return None
    prov.setdefault("rows", md.num_rows)
    return prov


def read_table(path, columns=None) -> pa.Table | None:
    """Read a cached parquet (file or sharded run) fully, or None when it is corrupt
    (then callers recompute)."""
    if provenance(path) is None:
        return None
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except Exception:
        return None


def read_schema(path) -> pa.Schema:
    """The columns of a cached parquet file or sharded run (footer only)."""
    return pq.read_schema(path)


def quick_check(path) -> dict | None:
    """Provenance of a complete run, checked from footers and row-group statistics only
    (no data page is read): the row count matches what was recorded, and every row group
    carries statistics of its ``row`` column that lie inside the run. None if not."""
    prov = provenance(path)
    if prov is None:
        return None
    try:
        md = pq.read_metadata(path)
        col = md.schema.names.index("row") if "row" in md.schema.names else None
        for i in range(md.num_row_groups if col is not None else 0):
            stats = md.row_group(i).column(col).statistics
            if stats is None or not stats.has_min_max or stats.min < 0 or stats.max < stats.min:
                return None
    except Exception:
        return None
    return prov


def verify(path) -> str | None:
    """Read every data page with its checksum. None when intact, else why not."""
    if provenance(path) is None:
        return "footer unreadable, or its row count disagrees with the provenance"
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        for i in range(pf.num_row_groups):
            pf.read_row_group(i)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return None


@contextlib.contextmanager
def compute_lock(path, timeout: float = 3600):
    """Hold a file lock for computing ``path``: two identical requests compute once,
    the second waits and then finds the file cached."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=timeout):
        yield
