"""`python -m core failures`: suspicious labels and failure slices of a cached features run."""
from __future__ import annotations

import json
import math

from core.cli import args as shared
from core.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "failures", help="suspicious labels and failure slices of a cached features run",
        description="Hunt failures: which galaxies' labels are probably wrong (out-of-sample linear probes and "
        "feature-space neighbours, flagged by confident learning) and where the model fails most (metadata "
        "ranges and map regions, with a significance test). Cached beside the run.")
    shared.add_features_choice(p)
    p.add_argument("--map", dest="map_key", help="map key for map-region slices (default: a cached t-SNE of the run)")
    p.add_argument("--top", type=int, default=10, help="how many suspicious labels and slices to print")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: suspicious_labels (flagged first) and slices")
    shared.add_cache(p)
    p.set_defaults(func=run)


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _calibration(r: dict) -> dict | None:
    """The run's calibration summary (core.analysis.calibration) when it has predictions."""
    if not r.get("has_head"):
        return None
    from core.analysis.calibration import run_calibration

    try:
        c = run_calibration(r)
    except UserError:
        return None
    return {k: c[k] for k in ("split", "galaxies", "accuracy", "mean_confidence", "ece", "verdict",
                              "temperature_scaling") if k in c}


def run(args) -> int:
    from core.analysis.label_issues import label_issues
    from core.analysis.slices import failure_slices

    if args.top < 0:
        raise UserError("--top must be 0 or more")
    r = shared.chosen_features_run(args)
    issues = label_issues(r["key"], args.cache, progress=not args.json)
    slices = failure_slices(r["key"], args.cache, map_key=args.map_key)
    if args.json:
        out = {"run": r["key"], "dataset": r.get("dataset"), "model": r.get("model"), "mode": r.get("mode"),
               "galaxies": len(issues), "flagged": int(issues["flagged"].sum()),
               "suspicious_labels": [{"id": str(i), "given": g, "suggested": s, "score": round(float(c), 6),
                                      "flagged": bool(f)} for i, g, s, c, f in
                                     issues[["id", "given", "suggested", "score", "flagged"]].itertuples(index=False)],
               "slices": [{k: _finite(v) for k, v in s.items() if k != "rows"} for s in slices]}
        calibration = _calibration(r)
        if calibration is not None:
            out["calibration"] = calibration
        print(json.dumps(out, default=str))
        return 0
    flagged = issues[issues["flagged"]]
    print(f"{len(issues)} labelled galaxies of {r.get('dataset')} with {r.get('model')} ({r.get('mode')}): "
          f"{len(flagged)} suspicious labels (confident learning)")
    for row in issues.head(args.top).itertuples(index=False):
        print(f"  {row.id:>14}  given {row.given:<28} suggested {row.suggested:<28} score {row.score:.2f}"
              f"{'  flagged' if row.flagged else ''}")
    if not slices:
        print("no failure slice is significant (Bonferroni-adjusted p < 0.05)")
    else:
        print(f"failure slices ({slices[0]['judged']}), worst first:")
        for s in slices[: args.top]:
            print(f"  {s['description']}  (p = {s['p_value']:.2g})")
    calibration = _calibration(r)
    if calibration is not None:
        print(f"calibration on the {calibration['split']} split: ECE {calibration['ece']:.3f}; {calibration['verdict']}")
    return 0
