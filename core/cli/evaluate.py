"""`python -m core evaluate`: the command line of core.analysis.evaluation."""
from __future__ import annotations

import pandas as pd

from core.cli import args as shared
from core.analysis.evaluation import evaluate_run, format_table, read_predictions, write_summary
from core.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "evaluate",
        help="score cached predictions: F1, confusion, per-class, ΔF1, top mistakes",
        description="Evaluate cached features runs that carry predictions (test split when there is one). "
        "Writes evaluations/<features key>.json and evaluations/summary.json (ΔF1 table) and prints tables.",
    )
    shared.add_run(p, "features run key (see `python -m core ls`); default: every run with predictions")
    shared.add_dataset(p, purpose="only runs of this dataset")
    shared.add_model(p, purpose="only runs of this checkpoint")
    p.add_argument("--top", type=int, default=20, help="most-confident mistakes to keep (default 20)")
    shared.add_cache(p)
    p.set_defaults(func=run)


def _select(runs, args) -> list[dict]:
    features = [r for r in runs if r["kind"] == "features"]
    if args.run:
        hit = [r for r in features if r["key"] == args.run]
        if not hit:
            raise UserError(f"no features run {args.run!r} in the cache: list them with `python -m core ls`")
        if hit[0].get("has_head") and hit[0].get("mode") == "generic":
            raise UserError(f"features run {args.run} is generic (its head predicts other classes than the galaxy "
                            "labels): it is not scored; finetune it first with `python -m core finetune`")
        if not hit[0].get("has_head"):
            raise UserError(f"features run {args.run} has no predictions (checkpoint without a head): "
                            "finetune it first with `python -m core finetune`")
        return hit
    from core.data.sources import canonical_ref

    chosen = [r for r in features if r.get("has_head") and r.get("mode") in ("head", "full")]
    if args.dataset:
        chosen = [r for r in chosen if r.get("dataset") == canonical_ref(args.dataset)]
    if args.model:
        chosen = [r for r in chosen if r.get("model") == canonical_ref(args.model)]
    if (args.dataset or args.model) and not chosen:
        raise UserError("no cached features with predictions match "
                        + " ".join(f"--{k} {v}" for k, v in (("dataset", args.dataset), ("model", args.model)) if v)
                        + ": extract them first with `python -m core extract`")
    return chosen


def _print_evaluation(ev: dict) -> None:
    print(f"\n== {ev['features_run']}  {ev['model']}  mode={ev['mode']}  on {ev['dataset']}")
    print(f"split {ev['split']} ({ev['rows']} galaxies): accuracy {ev['accuracy']:.3f}  "
          f"macro F1 {ev['macro_f1']:.3f}  weighted F1 {ev['weighted_f1']:.3f}")
    print(f"training images in this split: {ev['leakage']['text']}\n")
    print(format_table(pd.DataFrame(ev["per_class"])))
    names = ev["class_names"]
    cm = pd.DataFrame(ev["confusion"], columns=[str(j) for j in range(len(names))])
    cm.insert(0, "true \\ pred", [f"{j} {n}" for j, n in enumerate(names)])
    print("\nconfusion (rows true, columns predicted)")
    print(format_table(cm))
    if ev["top_mistakes"]:
        print("\nmost confident mistakes")
        print(format_table(pd.DataFrame(ev["top_mistakes"]).head(10)))


def run(args) -> int:
    from core.store import cache as store

    cache = store.cache_dir(args.cache)
    chosen = _select(store.list_runs(cache), args)
    if not chosen:
        print(f"no cached features with predictions in {cache}: finetune a model "
              "(`python -m core finetune`) and extract its features (`python -m core extract`)")
        return 0
    for r in chosen:
        table = read_predictions(r["path"])
        if table is None:
            print(f"skipped {r['key']}: its parquet no longer reads back")
            continue
        try:
            ev = evaluate_run(r, table, top_k=args.top)
        except UserError as e:
            if args.run:
                raise
            print(f"skipped {r['key']}: {e}")
            continue
        out = store.write_json(store.path_for(cache, "evaluations", r["key"], ".json"), ev)
        _print_evaluation(ev)
        print(f"written {out}")
    summary = write_summary(cache)
    delta = pd.DataFrame(summary["delta_f1"])
    if len(delta):
        shown = delta[["dataset", "split", "family", "size", "base_model", "f1_full", "f1_head", "delta_f1"]].copy()
        for c in ("f1_full", "f1_head", "delta_f1"):
            shown[c] = shown[c] * 100  # the paper's Table 1 reports percent
        print("\nΔF1 = F1 full - F1 head (macro F1, %)")
        print(format_table(shown, floatfmt="{:.2f}"))
    else:
        print("\nΔF1 table: no base model has both a full and a head-only evaluation yet")
    return 0
