"""`python -m core demo`: the embedded default, built offline from nothing.

Renders a synthetic Galaxy10-like set and uses three checkpoints of a small
DINOv2-architecture model: ``generic`` (self-supervised: DINO-pretrained by
`python -m core pretrain` on other synthetic galaxies, without labels; its
weights ship in ``core/weights/demo-generic``, the offline stand-in for
``facebook/dinov2-*``), ``head`` (a linear head trained on frozen generic
features) and ``full`` (every parameter finetuned from generic). It extracts
their features, evaluates them, computes the default maps (t-SNE, the
finetuned maps aligned to the generic one, and PCA), the outlier scores and the
per-block scores of the Layers view, and runs the real DECaLS example photos
through the same checkpoints when they are present.

Every step is cached, so a second run only checks the cache.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from core.cli import args as shared
from core.store import cache as store
from core.data.sources import open_dataset
from core.errors import UserError

DATASET = "synthetic:galaxy10?n=3000&size=64&seed=42&label_noise=volunteer"  # given labels with volunteer-like noise
EXAMPLES = store.REPO_ROOT.parent / "shared" / "data" / "galaxyzoo-decals-examples"
RECIPE = 4  # bump when the demo's models or training change, so old demo checkpoints are rebuilt

# The generic model: a 0.83M-parameter DINOv2-architecture ViT (64 px, patch 8), DINO-pretrained on
# synthetic galaxies of another seed; how it was trained is in its folder (COMMAND.md, training_log.json).
GENERIC_WEIGHTS = store.REPO_ROOT / "core" / "weights" / "demo-generic"
# Head-only: the HF linear classifier (the paper's protocol) on concat(CLS, mean patch token) of the frozen
# generic model. Its self-supervised features are ill-conditioned (per-dimension spread ~0.04 around means
# ~0.8), so the linear head needs a large learning rate; one view (no flips) keeps the backbone pass single.
TRAINING = {
    "head": dict(mode="head", head="linear", epochs=100, lr=0.1, batch_size=128, schedule="linear", augment=False),
    "full": dict(mode="full", head="linear", epochs=14, lr=1e-3, batch_size=64, schedule="onecycle",
                 weight_decay=0.05),
}
GENERIC_NOTE = ("self-supervised DINOv2-architecture model (0.83M parameters) pretrained with DINO on "
                "synthetic galaxies without labels: the offline stand-in for facebook/dinov2-*")


def _checkpoint_dir(cache, name: str) -> Path:
    return store.cache_dir(cache) / "checkpoints" / "demo" / name


def _is_current(path: Path, dataset_fp: str, base_fp: str) -> bool:
    """A head/full checkpoint built by this recipe on this dataset from this generic model."""
    f = path / "explorer.json"
    if not (path / "config.json").is_file() or not f.is_file():
        return False
    prov = json.loads(f.read_text())
    return (prov.get("demo_recipe") == RECIPE and prov.get("dataset_fingerprint") == dataset_fp
            and prov.get("base_fingerprint") == base_fp)


def build_generic(cache, weights: Path = GENERIC_WEIGHTS) -> Path:
    """The shipped self-supervised checkpoint, copied into the cache (atomically) as ``demo:generic``."""
    from core.models.load import fingerprint_dir

    if not (weights / "model.safetensors").is_file():
        raise UserError(f"the demo's generic weights are missing from {weights}: restore them with git, or "
                        "retrain them with the command in core/weights/demo-generic/COMMAND.md")
    out = _checkpoint_dir(cache, "generic")
    source = fingerprint_dir(weights)
    f = out / "explorer.json"
    if f.is_file() and json.loads(f.read_text()).get("weights_fingerprint") == source:
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(weights, tmp, ignore=shutil.ignore_patterns("*.md"))
    prov = json.loads((weights / "explorer.json").read_text()) if (weights / "explorer.json").is_file() else {}
    prov.update(mode="generic", demo_recipe=RECIPE, note=GENERIC_NOTE, weights_fingerprint=source,
                weights=str(weights.relative_to(store.REPO_ROOT)) if weights.is_relative_to(store.REPO_ROOT)
                else str(weights))
    (tmp / "explorer.json").write_text(json.dumps(prov, indent=1, default=str))
    return store.replace_dir(tmp, out)


def build(cache=None, dataset: str = DATASET, examples: Path | None = EXAMPLES, device: str = "auto",
          progress: bool = True, log=print) -> dict:
    """Build (or find cached) everything the dashboard shows. Returns a summary dict.

    Each step asks the cache first (``lookup``, ``cached_projection``, ``cached_scores``...,
    which never compute): a rebuilt demo only reads footers and JSON and imports neither
    torch nor the map libraries; the first step that computes calls ``_computing``."""
    from core.analysis.evaluation import write_summary

    cache = store.cache_dir(cache)
    t0 = last = time.time()
    timings = {}

    def step(name):
        nonlocal last
        timings[name], last = round(time.time() - last, 1), time.time()

    log(f"[1/6] synthetic galaxies: {dataset}")
    ds = open_dataset(dataset)
    step("dataset")

    log("[2/6] checkpoints: generic (self-supervised, shipped), head (linear head on frozen features), "
        "full (all parameters)")
    _build_checkpoints(ds, cache, device, progress, log)
    step("checkpoints")

    log("[3/6] features")
    sets = [("synthetic", ds)]
    if examples is not None and (Path(examples) / "labels.csv").is_file():
        sets.append(("real", open_dataset(f"folder:{examples}")))
    runs = _build_features(sets, cache, device, progress, log)
    step("features")

    log("[4/6] evaluation")
    scores = _build_evaluations(runs, cache)
    write_summary(cache)
    step("evaluation")

    log("[5/6] maps: t-SNE (finetuned maps aligned to the generic map) and PCA")
    quality = _build_maps([label for label, _ in sets], runs, cache, progress)
    step("maps")

    log("      outlier scores (kNN distance, isolation forest): the Unusual view, and every map can be coloured by them")
    _build_outliers(runs, cache)
    step("outliers")

    log("      per-block probe, kNN and CKA scores for the Layers view")
    _build_layer_scores(runs, cache)
    step("layers")

    log("[6/6] done")
    summary = {"cache": str(cache), "seconds": round(time.time() - t0, 1), "timings": timings,
               "results": _results(runs, scores, quality)}
    _print_summary(summary, log)
    return summary


def _build_checkpoints(ds, cache: Path, device: str, progress: bool, log) -> None:
    """demo:generic (the shipped weights) and the head-only and full finetunes of it, unless current."""
    from core.models.load import fingerprint_dir

    generic_fp = fingerprint_dir(build_generic(cache))
    for name, recipe in TRAINING.items():
        out = _checkpoint_dir(cache, name)
        if _is_current(out, ds.fingerprint, generic_fp):
            log(f"      {name}: cached")
            continue
        from core.train.finetune import finetune

        _computing()
        finetune(ds, "demo:generic", out=out, device=device, cache=cache, progress=progress, log=log,
                 **recipe)
        prov_file = out / "explorer.json"
        prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
        prov.update(demo_recipe=RECIPE, dataset_fingerprint=ds.fingerprint, base_model="demo:generic",
                    mode=recipe["mode"])
        prov_file.write_text(json.dumps(prov, indent=1, default=str))


def _build_features(sets: list, cache: Path, device: str, progress: bool, log) -> dict:
    """Features of every (set, checkpoint), the synthetic ones with every block's features too:
    ``{(set label, checkpoint name): provenance + key + path}``."""
    from core.extract.features import extract, lookup

    runs = {}
    for label, data in sets:
        for name in ("generic", "head", "full"):
            layers = "all" if label == "synthetic" else None
            found = lookup(data, f"demo:{name}", cache=cache, layers=layers)
            if found:
                (path, prov), hit = found, True
            else:
                _computing()
                path, prov, hit = extract(data, f"demo:{name}", device=device, cache=cache, progress=progress,
                                          log=lambda *_: None, layers=layers)
            runs[(label, name)] = prov | {"key": path.stem, "path": str(path)}
            done = "cached" if hit else f"{prov['rows']} images in {prov['seconds']:.1f} s"
            log(f"      {label:<9} {name:<7} {done}")
    return runs


def _build_evaluations(runs: dict, cache: Path) -> dict:
    """The evaluation of every run with predictions, read or written: ``{(set, checkpoint): evaluation}``."""
    from core.analysis.evaluation import evaluate_run, read_predictions

    scores = {}
    for (label, name), run in runs.items():
        if not run.get("has_head"):
            continue
        out = store.path_for(cache, "evaluations", run["key"], ".json")
        if out.is_file():
            ev = json.loads(out.read_text())
        else:
            ev = evaluate_run(run, read_predictions(run["path"]))
            store.write_json(out, ev)
        scores[(label, name)] = ev
    return scores


def _build_maps(labels: list[str], runs: dict, cache: Path, progress: bool) -> dict:
    """t-SNE (the finetuned runs' aligned to the generic one's) and PCA maps of every run:
    ``{(set, checkpoint): map quality + feature quality}``."""
    from core.analysis.maps.store import cached_projection, get_projection

    quality = {}
    for label in labels:
        generic_key = runs[(label, "generic")]["key"]
        for name in ("generic", "head", "full"):
            key = runs[(label, name)]["key"]
            align = None if name == "generic" else generic_key
            _, prov = cached_projection(key, "tsne", cache, align_to=align) or _computing(
                get_projection, key, "tsne", cache=cache, align_to=align, progress=progress)
            cached_projection(key, "pca", cache) or _computing(get_projection, key, "pca", cache=cache, progress=False)
            quality[(label, name)] = {**prov.get("quality", {}), **(prov.get("feature_quality") or {})}
    return quality


def _build_outliers(runs: dict, cache: Path) -> None:
    from core.analysis.outliers import cached_anomalies, get_anomalies

    for run in runs.values():
        cached_anomalies(run["key"], cache) or _computing(get_anomalies, run["key"], cache)


def _build_layer_scores(runs: dict, cache: Path) -> None:
    """Per-block probe and kNN scores of the synthetic runs, and the finetuned runs' CKA to the generic one."""
    from core.analysis.layers import cached_cka, cached_scores, layer_cka, layer_scores

    generic_key = runs[("synthetic", "generic")]["key"]
    for name in ("generic", "head", "full"):
        key = runs[("synthetic", name)]["key"]
        cached_scores(key, cache) or _computing(layer_scores, key, cache, progress=False)
        if name != "generic":
            cached_cka(generic_key, key, cache) or _computing(layer_cka, generic_key, key, cache, progress=False)


def _results(runs: dict, scores: dict, quality: dict) -> list[dict]:
    """One row of the summary table per run."""
    results = []
    for (label, name), run in runs.items():
        ev = scores.get((label, name), {})
        q = quality.get((label, name), {})
        results.append({
            "dataset": label, "checkpoint": f"demo:{name}", "mode": run["mode"], "rows": run["rows"],
            "macro_f1": ev.get("macro_f1"), "accuracy": ev.get("accuracy"), "split": ev.get("split"),
            "knn_accuracy": q.get("knn_accuracy"), "test_knn_accuracy": q.get("test_knn_accuracy"),
            "silhouette": q.get("silhouette"),
            "knn_preservation": q.get("knn_preservation"),
        })
    return results


def _computing(compute=None, *args, **kwargs):
    """Before a step that computes: torch gets every core, unless OMP_NUM_THREADS says otherwise
    (busy shared machines: 1 thread). Then ``compute(*args, **kwargs)``, if given, and its result."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    return compute(*args, **kwargs) if compute else None


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def _print_summary(summary: dict, log) -> None:
    log("")
    log(f"{'data':<10}{'checkpoint':<14}{'mode':<9}{'macro F1':>9}{'accuracy':>10}{'kNN acc':>9}{'kNN test':>9}"
        f"{'silhouette':>11}")
    for r in summary["results"]:
        log(f"{r['dataset']:<10}{r['checkpoint']:<14}{r['mode']:<9}{_fmt(r['macro_f1']):>9}"
            f"{_fmt(r['accuracy']):>10}{_fmt(r['knn_accuracy']):>9}{_fmt(r.get('test_knn_accuracy')):>9}"
            f"{_fmt(r['silhouette']):>11}")
    log("macro F1 and accuracy on the synthetic test split (real photos: all 60, approximate labels);")
    log("kNN acc / silhouette: class structure of the feature space itself (the generic checkpoint has no head):")
    log("kNN acc leave-one-out over all galaxies; kNN test: each test galaxy voted on by its 10 nearest train galaxies.")
    log(f"built in {summary['seconds']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in summary['timings'].items())})"
        f" into {summary['cache']}")
    log("next: make serve   (or: streamlit run dashboard/app.py)")


def add_parser(sub):
    p = sub.add_parser("demo", help="build the offline demo: synthetic galaxies, three checkpoints, features, maps",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    shared.add_cache(p)
    shared.add_dataset(p, default=DATASET, forms="a synthetic:galaxy10 reference")
    p.add_argument("--examples", default=str(EXAMPLES),
                   help="folder of real photos with labels.csv to place in the maps ('' to skip)")
    shared.add_device(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    build(cache=args.cache, dataset=args.dataset, examples=Path(args.examples) if args.examples else None,
          device=args.device)
    return 0
