"""`python -m core extract`: the command line of core.extract.features."""
from __future__ import annotations


from core.cli import args as shared
from core.data.base import SourceError
from core.errors import UserError
from core.extract import layers as layerfeatures
from core.extract.features import ENGINES, cached, extract, lookup, plan
from core.models.modes import MODES
from core.models.pooling import POOLINGS
from core.store import shards


def add_parser(sub):
    p = sub.add_parser(
        "extract", help="compute features (and predictions) of a checkpoint over a dataset",
        description="Compute features of MODEL over DATASET and cache them as parquet. "
        "An identical request is a cache hit that loads no model.",
        epilog="examples:\n  python -m core extract --dataset folder:../shared/data/galaxyzoo-decals-examples "
        "--model demo:full\n  python -m core extract --dataset hf:matthieulel/galaxy10_decals "
        "--model hf:facebook/dinov2-base --split test",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    shared.add_dataset(p, required=True)
    shared.add_model(p, required=True)
    p.add_argument("--mode", choices=MODES, help="what the checkpoint is: generic (pretrained), head (head-only "
                   "finetune) or full (full finetune); default: what finetune recorded, else generic/full by head")
    p.add_argument("--base-model", metavar="REF", help="the checkpoint this one was finetuned from (for an external "
                   "finetune, e.g. hf:facebook/dinov2-base): ΔF1 pairs its head-only and full runs by it")
    p.add_argument("--split", default="all", choices=("all", "train", "test"))
    p.add_argument("--pooling", default="auto", choices=POOLINGS,
                   help="auto (default): what the family's classifier reads (DINOv2, ViT: CLS after the final "
                   "LayerNorm, the paper's; BEiT, SwinV2: pooler); cls: CLS token; mean: mean of patch tokens; "
                   "cls+mean: CLS and mean concatenated (what Dinov2ForImageClassification reads); "
                   "pooler: pooler_output")
    p.add_argument("--layers", metavar="all|LIST", help="also store each chosen block's pooled features (CLS "
                   "and mean of patch tokens; SwinV2: per stage) from the same pass, e.g. all, last, 1,4,9-12")
    shared.add_device(p)
    p.add_argument("--batch-size", type=int, help="default 256 on GPU, 64 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; pays off on large sets)")
    shared.add_cache(p)
    p.add_argument("--verify", action="store_true",
                   help="check every page checksum of a cached run before trusting it (recompute if damaged)")
    p.add_argument("--shard-rows", type=int, help=f"rows per part of a sharded run (default {shards.SHARD_ROWS:,}); "
                   "runs with more rows are written as a folder of parts that a killed run resumes")
    g = p.add_argument_group("scale out (docs/SCALE.md)")
    g.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: threads in this process; ray: Ray Data actors on a local or existing cluster")
    g.add_argument("--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local one")
    g.add_argument("--workers", type=int, help="Ray: model actors (default: one per GPU, else one per node)")
    g.add_argument("--gpus-per-worker", type=float, help="Ray: GPUs per actor (default 1 when the cluster has GPUs)")
    g.add_argument("--cpus-per-worker", type=float, help="Ray: CPUs per actor (default: all of the smallest node's on CPU-only clusters)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    for flag in ("batch_size", "shard_rows", "workers"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer")
    ray_options = {k: getattr(args, k) for k in ("address", "workers", "gpus_per_worker", "cpus_per_worker")}
    if args.engine != "ray" and any(v is not None for v in ray_options.values()):
        raise UserError("--address, --workers, --gpus-per-worker and --cpus-per-worker need --engine ray")
    path, prov, hit = extract(args.dataset, args.model, mode=args.mode, split=args.split, pooling=args.pooling,
                              device=args.device, batch_size=args.batch_size, cache=args.cache,
                              compile=args.compile, engine=args.engine, shard_rows=args.shard_rows,
                              verify=args.verify, ray_options=ray_options if args.engine == "ray" else None,
                              layers=args.layers, base_model=args.base_model)
    if hit:
        print(f"cache hit: {path} ({prov['rows']} rows x {prov['dim']})")
        if args.layers:
            print(f"per-layer features: {layerfeatures.layers_path(path)}")
    return 0


__all__ = ["extract", "lookup", "plan", "cached", "SourceError"]
