"""Per-layer features and attention maps: what they cost.

1. Extraction with ``--layers all`` against plain extraction, same model, same
   images, same process, alternated (plain, layers, plain, layers...): the ratio
   of the streaming times (model load excluded), goal <= 1.25; and the storage
   per galaxy of the features file and of the per-layer file.
2. The attention maps of one galaxy (last block per head + rollout, eager
   attention for that image): cold (checkpoint load included) and warm; goal
   <= 0.5 s with the demo model on CPU.

    python bench/layers.py                                   # demo model, CPU
    python bench/layers.py --model dinov2-b --device cuda --n 8192   # the GPU number

Random weights (the speed does not depend on them). Prints JSON and writes
bench/results/layers-<model>-<device>.json.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name -> (Dinov2Config kwargs, input px)
    "demo": (None, 64),
    "dinov2-s": (dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14), 224),
    "dinov2-b": (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14), 224),
}


def make_checkpoint(name: str, root: Path) -> str:
    import torch
    import transformers as tf

    from core.cli.demo import GENERIC_WEIGHTS

    kw, px = MODELS[name]
    if kw is None:  # the demo's own generic model (its committed weights)
        return f"dir:{GENERIC_WEIGHTS}"
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(image_size=px, **kw)
    out = root / name
    tf.Dinov2Model(cfg).save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": px, "width": px}, "resample": 3, "do_center_crop": False, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return f"dir:{out}"


def extraction(ref: str, dataset, device: str, repeats: int, batch_size: int | None) -> dict:
    from core.extract.features import extract
    from core.extract.layers import layers_path

    times = {"plain": [], "layers": []}
    cpu = {"plain": [], "layers": []}  # process CPU seconds: steadier than wall time on a shared machine
    sizes = {}
    for i in range(repeats):
        for how in ("plain", "layers"):
            with tempfile.TemporaryDirectory() as cache:
                c0 = time.process_time()
                path, prov, _ = extract(dataset, ref, cache=cache, device=device, progress=False, log=lambda *_: None,
                                        batch_size=batch_size, layers="all" if how == "layers" else None)
                cpu[how].append(time.process_time() - c0)
                times[how].append(prov["seconds"] - prov["load_seconds"])
                sizes["features_bytes_per_galaxy"] = Path(path).stat().st_size / prov["rows"]
                if how == "layers":
                    lp = layers_path(path)
                    sizes["layers_bytes_per_galaxy"] = lp.stat().st_size / prov["rows"]
                    sizes["rows"] = prov["rows"]
                print(f"  {how:<6} run {i + 1}: {times[how][-1]:.2f} s wall, {cpu[how][-1]:.2f} s CPU", file=sys.stderr)
    plain, layers = statistics.median(times["plain"]), statistics.median(times["layers"])
    return {"plain_seconds": times["plain"], "layers_seconds": times["layers"],
            "plain_median_s": round(plain, 3), "layers_median_s": round(layers, 3),
            "ratio": round(layers / plain, 3), "goal_ratio": 1.25,
            "plain_cpu_s": [round(c, 2) for c in cpu["plain"]], "layers_cpu_s": [round(c, 2) for c in cpu["layers"]],
            "cpu_ratio": round(statistics.median(cpu["layers"]) / statistics.median(cpu["plain"]), 3),
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in sizes.items()}}


def attention(ref: str, dataset, device: str, repeats: int = 20) -> dict:
    import numpy as np

    from core.analysis import attention as A
    from core.models.load import load_checkpoint

    image = dataset.batch(np.array([7]))[0]
    t = time.perf_counter()
    ck = load_checkpoint(ref, device=device)
    A.compute(ck, image)
    cold = time.perf_counter() - t
    warm, warm_cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        A.compute(ck, image)
        warm.append(time.perf_counter() - t)
        warm_cpu.append(time.process_time() - c)
    return {"cold_s": round(cold, 3), "warm_median_s": round(statistics.median(warm), 4),
            "warm_min_s": round(min(warm), 4), "warm_max_s": round(max(warm), 4),
            "warm_cpu_median_s": round(statistics.median(warm_cpu), 4), "goal_s": 0.5}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="demo")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--n", type=int, default=3000, help="galaxies")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--images", choices=("synthetic", "memory"),
                   help="synthetic: rendered 64-px galaxies (rendering runs inside the timed passes; the CPU "
                   "default); memory: Galaxy10-shaped 256-px uint8 images held in RAM, as bench/extract.py "
                   "times a GPU (the default with --device cuda)")
    args = p.parse_args()
    args.images = args.images or ("memory" if args.device == "cuda" else "synthetic")

    import torch

    from core.data.sources import open_dataset

    torch.set_num_threads(args.threads)
    if args.images == "memory":
        sys.path.insert(0, str(ROOT / "bench"))
        dataset = importlib.import_module("extract").memory_dataset(args.n)
    else:
        dataset = open_dataset(f"synthetic:galaxy10?n={args.n}&size=64&seed=42")
    with tempfile.TemporaryDirectory() as root:
        ref = make_checkpoint(args.model, Path(root))
        result = {"model": args.model, "device": args.device, "n": args.n, "images": args.images, "threads": args.threads,
                  "machine": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
                  "extraction": extraction(ref, dataset, args.device, args.repeats, args.batch_size),
                  "attention_one_galaxy": attention(ref, dataset, args.device)}
    text = json.dumps(result, indent=1)
    print(text)
    out = ROOT / "bench" / "results" / f"layers-{args.model}-{args.device}.json"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
