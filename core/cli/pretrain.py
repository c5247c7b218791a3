"""`python -m core pretrain`: the command line of core.train.pretrain."""
from __future__ import annotations

import sys

from core.cli import args as shared
from core.train.pretrain import DEFAULTS, pretrain


def add_parser(sub):
    p = sub.add_parser(
        "pretrain", help="self-supervised DINO pretraining of a DINOv2-architecture model on images, no labels",
        description="DINO self-distillation (student + EMA teacher, multi-crop, centring and sharpening) on "
        "DATASET's images, labels unused. Saves a save_pretrained checkpoint at --out (loadable as dir:OUT) "
        "with training_log.json; started again after a kill, it resumes from its last finished epoch.",
    )
    shared.add_dataset(p, required=True, purpose="its images (labels unused)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", default=None, help="a fresh model: nano (0.83M, 64 px) | small (DINOv2-S/14) | "
                     "a JSON file of Dinov2Config fields (default nano)")
    shared.add_model(src, purpose="continue pretraining a DINOv2 checkpoint",
                   forms="hf:MODEL_ID (e.g. hf:facebook/dinov2-small) | dir:PATH | demo:NAME")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    for key in ("epochs", "batch_size", "local_crops", "out_dim", "seed"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {DEFAULTS[key]}")
    for key in ("lr", "momentum", "teacher_temp", "weight_decay"):
        p.add_argument(f"--{key.replace('_', '-')}", type=float, help=f"default {DEFAULTS[key]}")
    shared.add_device(p)
    shared.add_cache(p, purpose="where demo: references are found")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from core.data.sources import open_dataset

    options = {k: getattr(args, k) for k in ("epochs", "batch_size", "local_crops", "out_dim", "seed", "lr",
                                              "momentum", "teacher_temp", "weight_decay")}
    command = "python -m core " + " ".join(a if " " not in a and "&" not in a and "?" not in a else f"'{a}'"
                                           for a in sys.argv[1:])
    pretrain(open_dataset(args.dataset), args.out, config=args.config or "nano", model_ref=args.model,
             device=args.device, cache=args.cache, command=command, **options)
    return 0
