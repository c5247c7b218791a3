"""Sharded features runs: a folder of parquet parts plus a manifest, resumable.

Layout of ``features/<key>/`` (same key, columns and provenance as ``<key>.parquet``)::

    part-000000.parquet     rows [0, shard_rows) of the run's row list, written atomically
    part-000001.parquet     rows [shard_rows, 2 * shard_rows) ...
    _manifest.json          written last: the run's provenance and its parts

Part k always covers the same planned rows, so a killed run resumes by computing
only the parts that are missing. A folder without ``_manifest.json`` is a run in
progress (or a killed one): ``ls`` does not list it. Every part carries the run's
identity in its own footer, so a part from another run is never mistaken for one
of this run. Readers go through pyarrow datasets over the manifest's part list
(``pq.read_table(folder)`` also works: ``_``- and ``.``-prefixed files are ignored).
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.store import files as store

MANIFEST = "_manifest.json"
SHARD_ROWS = 100_000  # rows per part; a run of more rows than this is sharded
IDENTITY = ("dataset_fingerprint", "model_fingerprint", "pooling", "split", "mode", "shard_rows", "rows_planned")


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def part_ranges(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[(start, stop)] positions into the run's row list, one per part."""
    return [(s, min(s + shard_rows, n_rows)) for s in range(0, n_rows, shard_rows)]


def manifest(folder) -> dict | None:
    """The manifest of a complete sharded run, or None."""
    try:
        obj = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == 1 else None


def parts(folder) -> list[Path]:
    """The part files of a complete sharded run, in row order."""
    m = manifest(folder)
    return [Path(folder) / p["file"] for p in (m or {}).get("parts", [])]


def provenance(folder) -> dict | None:
    """The run's provenance (from the manifest), or None when the run is incomplete."""
    m = manifest(folder)
    if m is None:
        return None
    prov = dict(m["provenance"])
    prov["parts"] = len(m["parts"])
    return prov


def quick_check(folder) -> dict | None:
    """Provenance when every part listed in the manifest is there, the size recorded,
    and its footer and row-group statistics agree with the manifest; else None."""
    m = manifest(folder)
    if m is None:
        return None
    for p in m["parts"]:
        f = Path(folder) / p["file"]
        try:
            if f.stat().st_size != p["bytes"]:
                return None
        except OSError:
            return None
        if store.quick_check(f) is None or pq.read_metadata(f).num_rows != p["rows"]:
            return None
    return provenance(folder)


def verify(folder) -> str | None:
    """Read every page of every part with its checksum: None when intact, else why not."""
    m = manifest(folder)
    if m is None:
        return "no manifest: the run did not finish (resume it with the same extract command)"
    for p in m["parts"]:
        problem = store.verify(Path(folder) / p["file"])
        if problem:
            return f"{p['file']}: {problem}"
    return None


def _format(check_pages: bool):
    import pyarrow.dataset as pads  # imported when a sharded run is read: it costs a second

    return pads.ParquetFileFormat(
        default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=check_pages))


def dataset(folder, check_pages: bool = False):
    """A pyarrow dataset over a complete run's parts, in row order (for streaming readers:
    ``dataset(f).to_batches(columns=[...])``)."""
    import pyarrow.dataset as pads

    files = parts(folder)
    if not files:
        raise FileNotFoundError(f"{folder} is not a complete sharded run (no {MANIFEST})")
    return pads.dataset([str(f) for f in files], format=_format(check_pages))


def read_table(folder, columns=None) -> pa.Table | None:
    """Every part, in row order, page checksums checked; None when incomplete or corrupt."""
    if quick_check(folder) is None:
        return None
    try:
        return dataset(folder, check_pages=True).to_table(columns=columns)
    except Exception:
        return None


def list_sharded(features_dir) -> list[dict]:
    """``list_runs`` entries of the complete sharded runs in a features folder."""
    runs = []
    for d in sorted(Path(features_dir).glob("*")):
        if not d.is_dir() or d.name.startswith("."):
            continue
        prov = quick_check(d)  # every part there, footers as the manifest says
        if prov is None or prov.get("kind") != "features":
            continue
        size = sum(p["bytes"] for p in manifest(d)["parts"])
        prov.update(kind="features", key=d.name, path=str(d), bytes=size)
        runs.append(prov)
    return runs


def damaged(folder) -> str | None:
    """Why a sharded run folder does not read back as complete (a part missing, truncated
    or of the wrong size; an unreadable manifest), or None when its quick check passes.
    A folder without a manifest is an unfinished run (interrupted, or still running)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        n = len([p for p in folder.glob("part-*.parquet")])
        return f"unfinished: no {MANIFEST}, {n} part(s) written (an interrupted or running extract)"
    m = manifest(folder)
    if m is None:
        return f"{MANIFEST} unreadable"
    if quick_check(folder) is not None:
        return None
    for p in m["parts"]:
        f = folder / p["file"]
        if not f.exists():
            return f"{p['file']} is missing"
        if f.stat().st_size != p["bytes"]:
            return f"{p['file']} is {f.stat().st_size:,} bytes, the manifest says {p['bytes']:,} (truncated?)"
        if store.quick_check(f) is None:
            return f"{p['file']}: footer unreadable (truncated?)"
    return "a part disagrees with the manifest"


def list_damaged(features_dir) -> list[dict]:
    """Sharded run folders that are there but do not read back as complete runs, with why."""
    out = []
    for d in sorted(Path(features_dir).glob("*")):
        if not d.is_dir() or d.name.startswith("."):
            continue
        why = damaged(d)
        if why is None:
            continue
        try:
            prov = dict(json.loads((d / MANIFEST).read_text()).get("provenance") or {})
        except (OSError, ValueError, AttributeError):
            prov = {}
        size = sum(p.stat().st_size for p in d.glob("*.parquet"))
        out.append({**prov, "kind": "features", "key": d.name, "path": str(d), "bytes": size, "damaged": why,
                    "unfinished": why.startswith("unfinished")})
    return out


class ShardedWriter:
    """Write a run part by part; ``finish`` writes the manifest that makes it complete.

    ``done()`` names the parts a previous (killed) run left that are intact and belong
    to this run: a resumed run skips them. Parts are checked page by page here, since
    they are what a crash left behind.
    """

    def __init__(self, folder, provenance: dict, n_rows: int, shard_rows: int = SHARD_ROWS):
        self.folder = Path(folder)
        self.prov = provenance
        self.prov.update(shard_rows=int(shard_rows), rows_planned=int(n_rows))
        self.ranges = part_ranges(n_rows, shard_rows)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._manifest_path().unlink(missing_ok=True)  # (re)writing: not complete until finish()
        for tmp in self.folder.glob(".*.tmp-*"):  # temp parts of a killed run
            tmp.unlink(missing_ok=True)

    def _manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def _identity(self) -> dict:
        return {k: self.prov.get(k) for k in IDENTITY}

    def done(self) -> set[int]:
        """Indices of the parts already written, intact, by a run with the same identity."""
        out = set()
        for k in range(len(self.ranges)):
            f = self.folder / part_name(k)
            if not f.exists():
                continue
            prov = store.provenance(f)
            ok = prov is not None and prov.get("part") == k and all(
                prov.get(key) == val for key, val in self._identity().items())
            if ok and store.verify(f) is None:
                out.add(k)
            else:
                f.unlink()  # damaged or from another run: recompute it
        return out

    def part_writer(self, k: int, schema: pa.Schema) -> store.AtomicParquetWriter:
        """An atomic writer for part ``k`` (use it as a context manager); append the files
        it skipped to ``writer.provenance["part_skipped"]`` before it closes."""
        prov = dict(self.prov, part=k, part_skipped=[])
        return store.AtomicParquetWriter(self.folder / part_name(k), schema, prov)

    def finish(self, run_provenance: dict) -> dict:
        """Write the manifest (complete run); returns the run's provenance."""
        entries, skipped, rows = [], [], 0
        for k, (start, stop) in enumerate(self.ranges):
            f = self.folder / part_name(k)
            part_prov = store.provenance(f)
            if part_prov is None:
                raise RuntimeError(f"part {f} is missing or unreadable: cannot finish the run")
            entries.append({"file": f.name, "first": start, "planned": stop - start, "rows": part_prov["rows"],
                            "bytes": f.stat().st_size})
            skipped += part_prov.get("part_skipped") or []
            rows += part_prov["rows"]
        prov = {k: v for k, v in run_provenance.items() if k not in ("part", "part_skipped")}
        prov.update(rows=rows, skipped=list(prov.get("skipped") or []) + skipped, sharded=True)
        store.write_json(self._manifest_path(), {"format": 1, "provenance": prov, "parts": entries})
        return provenance(self.folder)
