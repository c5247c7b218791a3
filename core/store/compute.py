"""Get-or-compute: the one way a cached result is found or made.

Every cached artefact (features runs, maps, outlier scores, per-layer scores and CKA)
follows the same steps, written here once:

1. read the cache (``read(path)``; None means missing, incomplete or damaged);
2. on a miss take a file lock beside ``path`` (``files.compute_lock``), so two identical
   requests at once compute once: the second waits, then
3. reads again (the first may have finished while it waited);
4. computes, stamps the provenance (``seconds``, ``created``) and writes it atomically
   (a temp file renamed into place: a killed run never leaves a file that looks whole);
5. reads the written file back, so a caller gets exactly what a later cache hit returns.

>>> table_and_prov, was_cached = cached_parquet(path, lambda: (table, {"kind": "anomalies"}))
>>> result, was_cached = cached_json(path, lambda: {"kind": "layer-scores", "scores": [...]})
>>> value, was_cached = get_or_compute(path, read, compute)  # compute writes itself (sharded runs)
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa

from core.store.files import compute_lock, provenance, read_table, write_json, write_parquet


def get_or_compute(path, read: Callable[[Path], Any], compute: Callable[[], Any],
                   write: Callable[[Path, Any], Any] | None = None, timeout: float = 3600) -> tuple[Any, bool]:
    """``(value, was_cached)`` of the cached result at ``path``, computed once on a miss.

    ``read(path)`` returns the cached value or None (missing or damaged: compute it).
    ``compute()`` returns the new value; with ``write``, ``write(path, value)`` stores it
    (atomically) and the value returned is ``read(path)`` of what was written. Without
    ``write``, ``compute`` stores the result itself (e.g. a sharded features run) and its
    return value is passed through. The lock is held from the second read to the write.
    """
    path = Path(path)
    if (hit := read(path)) is not None:
        return hit, True
    with compute_lock(path, timeout):
        if (hit := read(path)) is not None:  # someone else finished it while we waited
            return hit, True
        value = compute()
        if write is None:
            return value, False
        write(path, value)
    value = read(path)
    if value is None:
        raise RuntimeError(f"{path} did not read back after writing it")
    return value, False


def stamp(prov: dict, start: float) -> dict:
    """Add ``seconds`` (since ``start``, a ``time.perf_counter()``) and ``created`` (UTC, ISO)
    to a provenance dict unless it has them already; returns it."""
    prov.setdefault("seconds", round(time.perf_counter() - start, 3))
    prov.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return prov


# ---------------------------------------------------------------- JSON results


def read_json(path) -> dict | None:
    """A cached JSON result, or None when it is missing or does not parse."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def cached_json(path, compute: Callable[[], dict], timeout: float = 3600) -> tuple[dict, bool]:
    """``(result, was_cached)`` of a JSON result: ``compute()`` returns a dict, which is
    stamped (``seconds``, ``created``) and written atomically on a miss."""
    start = [0.0]

    def timed():
        start[0] = time.perf_counter()
        return compute()

    return get_or_compute(path, read_json, timed, lambda p, obj: write_json(p, stamp(obj, start[0])), timeout)


# ---------------------------------------------------------------- parquet results


def read_parquet(path) -> tuple[pd.DataFrame, dict] | None:
    """``(DataFrame, provenance)`` of a complete, intact cached parquet file, or None. The
    provenance also says where the file is (``key``: its stem, ``path``)."""
    path = Path(path)
    prov = provenance(path)
    table = read_table(path) if prov else None
    if table is None:
        return None
    prov.update(key=path.stem, path=str(path))
    return table.to_pandas(), prov


def cached_parquet(path, compute: Callable[[], tuple[pa.Table, dict]],
                   timeout: float = 3600) -> tuple[tuple[pd.DataFrame, dict], bool]:
    """``((DataFrame, provenance), was_cached)`` of a parquet result: ``compute()`` returns
    ``(table, provenance)``; the provenance is stamped (``seconds``, ``created``) and written
    into the file's footer with it, atomically, on a miss."""
    start = [0.0]

    def timed():
        start[0] = time.perf_counter()
        return compute()

    def write(p, result):
        table, prov = result
        write_parquet(p, table, stamp(prov, start[0]))

    return get_or_compute(path, read_parquet, timed, write, timeout)
