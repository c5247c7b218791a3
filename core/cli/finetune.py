"""`python -m core finetune`: the command line of core.train.finetune."""
from __future__ import annotations

from core.cli import args as shared
from core.models.heads import HEADS
from core.train.finetune import MODES, PRECISIONS, SCHEDULES, finetune


def add_parser(sub):
    p = sub.add_parser(
        "finetune", help="finetune a checkpoint on a dataset: head-only or full, linear or MLP head",
        description="Finetune MODEL on DATASET's train split (validation: its test split) and save a "
        "save_pretrained checkpoint at --out, loadable as dir:OUT, with training_log.json beside it.",
    )
    shared.add_dataset(p, required=True, purpose="trained on its train split, validated on its test split")
    shared.add_model(p, required=True, purpose="the checkpoint to start from")
    p.add_argument("--mode", required=True, choices=MODES, help="head: frozen backbone; full: all parameters")
    p.add_argument("--head", default="linear", choices=HEADS, help="classification head (default linear)")
    p.add_argument("--hidden", type=int, help="MLP hidden width (default: the feature width)")
    p.add_argument("--epochs", type=int, help="default 30 (the paper)")
    p.add_argument("--lr", type=float, help="default 5e-5 full (1e-4 ViT), 1e-3 head-only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--schedule", default="linear", choices=SCHEDULES, help="linear warm-up/decay or one-cycle")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations")
    p.add_argument("--out", help="checkpoint folder (default <cache>/checkpoints/<model>-<dataset>-<mode>-<head>)")
    shared.add_device(p)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
    shared.add_cache(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from core.store import cache as store
    from core.data.sources import open_dataset

    out = args.out
    if out is None:  # e.g. checkpoints/dinov2-base-galaxy10_decals-full-linear
        def slug(ref):
            return ref.split(":", 1)[-1].split("?")[0].rstrip("/").split("/")[-1]

        name = f"{slug(args.model)}-{slug(args.dataset)}-{args.mode}-{args.head}"
        out = store.cache_dir(args.cache) / "checkpoints" / name
    ds = open_dataset(args.dataset)
    finetune(ds, args.model, args.mode, head=args.head, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
             out=out, device=args.device, seed=args.seed, warmup=args.warmup, schedule=args.schedule,
             augment=not args.no_augment, hidden=args.hidden, weight_decay=args.weight_decay,
             precision=args.precision, cache=args.cache)
    return 0
