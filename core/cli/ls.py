"""`python -m core ls`: every cached run, for people (a table) and scripts (--json)."""
from __future__ import annotations

import json
import sys

from core.cli import args as shared
from core.store import cache as store
from core.analysis.knn_index import verify_index


def add_parser(sub):
    p = sub.add_parser("ls", help="list cached features, projections, per-layer features, outlier scores "
                       "and evaluations",
                       description="List every complete cached run with its path, dataset, checkpoint, "
                       "mode, pooling, rows, embedding dim and size on disk, and every damaged or unfinished "
                       "file with the command that recomputes it.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (a list of objects)")
    shared.add_cache(p)
    p.add_argument("--verify", action="store_true",
                   help="read every page of every run and check its checksum; name the damaged ones (exit 1)")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _verify(runs: list[dict]) -> int:
    """Check every parquet run page by page; mark the damaged ones (they stay listed, as damaged)."""
    damaged = 0
    for r in runs:
        if r["kind"] == "evaluation":
            continue
        problem = verify_index(r["path"]) if r["kind"] == "knn-index" else store.verify(r["path"])
        r["verified"] = problem is None
        if problem:
            damaged += 1
            r["damaged"] = problem
            r["fix"] = store.repair_hint(r, pages=True)
    return damaged


def _report_damaged(runs: list[dict]) -> None:
    for r in runs:
        if r.get("damaged"):
            state = "unfinished" if r.get("unfinished") else "damaged"
            print(f"{state}: {r['path']} ({r['damaged']}); {r['fix']}", file=sys.stderr)


def _blocks(layers) -> str:
    layers = list(layers or [])
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def run(args) -> int:
    runs = store.list_runs(args.cache)
    verify = getattr(args, "verify", False)
    damaged = _verify(runs) if verify else 0
    broken = store.list_damaged(args.cache, runs)  # files that do not read back: listed, never dropped
    damaged += sum(not b.get("unfinished") for b in broken)
    status = 1 if damaged and verify else 0
    if args.json:
        print(json.dumps(runs + broken, indent=1, default=str))
        return status
    if not runs and not broken:
        print(f"cache {store.cache_dir(args.cache)} is empty: build the demo with `python -m core demo`")
        return 0
    rows = []
    for r in runs:
        if r["kind"] == "features":
            what = f"{r.get('dataset')}  {r.get('model')}  mode={r.get('mode')} pooling={r.get('pooling')} split={r.get('split')}"
            shape = f"{r.get('rows')} x {r.get('dim')}"
        elif r["kind"] == "projection":
            what = f"{r.get('method')} of {r.get('features_run')}" + (f" aligned to {r['aligned_to']}" if r.get("aligned_to") else "")
            shape = f"{r.get('rows')} x 2"
        elif r["kind"] == "layers":
            what = f"{r.get('unit')}s {_blocks(r.get('layers'))} of {r.get('features_run')} ({'+'.join(r.get('kinds') or [])})"
            shape = f"{r.get('rows')} x {len(r.get('layers') or [])} {r.get('unit')}(s)"
        elif r["kind"] == "anomalies":
            params = r.get("params") or {}
            what = (f"outlier scores ({'+'.join(r.get('methods') or [])}, k={params.get('k')}) "
                    f"of {r.get('features_run')}")
            shape = f"{r.get('rows')} x 2"
        elif r["kind"] == "label_issues":
            what = f"suspicious labels ({r.get('flagged')} flagged) of {r.get('features_run')}"
            shape = f"{r.get('rows')} x 1"
        elif r["kind"] == "knn-index":
            what = (f"{r.get('library')} {r.get('metric')} index of {r.get('features_run')}, "
                    f"recall@10 {r.get('recall_at_10')} ({r.get('recall_queries')} queries)")
            if (r.get("vectors") or {}).get("bytes"):
                what += f"; re-rank vectors {_size(r['vectors']['bytes'])} ({r['vectors']['dtype']})"
            shape = f"{r.get('rows')} x {r.get('dim')}"
        else:
            what = f"evaluation of {r.get('features_run')}  macro F1 {r.get('macro_f1')}"
            shape = ""
        if r.get("damaged"):
            what = f"DAMAGED ({r['damaged']}): {what}"
        rows.append((r["kind"], r["key"], shape, _size(r["bytes"]), what))
    for b in broken:
        state = "UNFINISHED" if b.get("unfinished") else "DAMAGED"
        rows.append((b["kind"], b["key"], "?", _size(b["bytes"]), f"{state} ({b['damaged']}): {b['fix']}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    if verify:
        _report_damaged(runs + broken)
        intact = sum(not r.get("damaged") for r in runs)
        print(f"verified: {intact} intact, {damaged} damaged", file=sys.stderr)
    elif damaged:
        print(f"{damaged} damaged file(s): each is named above with the command that recomputes it "
              "(`python -m core ls --verify` also reads every page)", file=sys.stderr)
    return status
