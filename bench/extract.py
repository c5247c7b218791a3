"""Feature-extraction throughput through the engine's own code path.

For each model: end-to-end images/s (Dataset -> uint8 batches -> device resize/
normalise -> model -> pooled features -> parquet on local disk), the pure-forward
ceiling (same model and batch, preprocessed random tensors already on the device),
their ratio, peak GPU memory and the wall time for the whole set. Optionally the
full-finetune training throughput.

    python bench/extract.py                      # GPU: DINOv2-S/B/L @224, ViT-B/16 @384, 17,736 images
    python bench/extract.py --device cpu --models tiny,dinov2-small --n 512
    python bench/extract.py --engine ray         # in-process vs Ray, each in its own process (see engines())

Weights are random (speed does not depend on them); pixels are random uint8 in
Galaxy10's shape (N, 256, 256, 3), held in memory. Prints a table and writes
bench/results/extract-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.base import GALAXY10_CLASSES, Dataset  # noqa: E402

MODELS = {
    # name: (family, image_size, patch, hidden, layers, heads)
    "tiny": ("dinov2", 64, 8, 128, 4, 4),
    "dinov2-small": ("dinov2", 224, 14, 384, 12, 6),
    "dinov2-base": ("dinov2", 224, 14, 768, 12, 12),
    "dinov2-large": ("dinov2", 224, 14, 1024, 24, 16),
    "vit-base-384": ("vit", 384, 16, 768, 12, 12),
}


class MemoryDataset(Dataset):
    """Galaxy10-shaped uint8 images in RAM: a pool of random images indexed modulo its size,
    so every batch is a real gather from memory as an h5 page-cache read would be."""

    pool: np.ndarray

    def _load(self, rows):
        return self.pool[rows % len(self.pool)]


def memory_dataset(n: int, size: int = 256, pool: int = 2048, seed: int = 0) -> MemoryDataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    ds = MemoryDataset(source=f"memory:{n}x{size}", class_names=list(GALAXY10_CLASSES),
                       ids=np.array([f"m{i}" for i in range(n)]), labels=labels,
                       splits=np.full(n, "test"), image_size=size, content_key=f"bench-{n}-{size}-{seed}")
    ds.pool = rng.integers(0, 256, (min(pool, n), size, size, 3), dtype=np.uint8)
    return ds


def make_checkpoint(root: Path, name: str, device: str, num_labels: int = 0) -> Path:
    import torch
    import transformers as tf

    family, image_size, patch, hidden, layers, heads = MODELS[name]
    Config = tf.Dinov2Config if family == "dinov2" else tf.ViTConfig
    cfg = Config(image_size=image_size, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                 num_attention_heads=heads, intermediate_size=4 * hidden)
    if num_labels:
        cfg.num_labels = num_labels
    cls = tf.AutoModelForImageClassification if num_labels else tf.AutoModel
    with torch.device(device):  # initialise where it will run: large models init fast on a GPU
        model = cls.from_config(cfg)
    out = root / f"{name}{'-head' if num_labels else ''}"
    model.save_pretrained(out)
    proc = {"do_resize": True, "size": {"height": image_size, "width": image_size}, "resample": 3,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (out / "preprocessor_config.json").write_text(json.dumps(proc))
    return out


def forward_ceiling(ck, batch: int, device: str, seconds: float = 3.0) -> float:
    """images/s of the model alone on preprocessed random tensors already on the device."""
    import torch

    h, w = ck.input_size()
    x = torch.randn(batch, 3, h, w, device=device, dtype=ck.dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            ck.forward(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ck.forward(x)
            n += batch
        sync()
    return n / (time.perf_counter() - t0)


def reader_only(ds, rows, batch: int, workers: int, on_gpu: bool) -> float:
    """images/s of the loader stage alone (gather + pin), to see whether it bounds the pipeline."""
    import torch
    from concurrent.futures import ThreadPoolExecutor

    chunks = [rows[i : i + batch] for i in range(0, min(len(rows), batch * 24), batch)]

    def load(c):
        t = torch.from_numpy(ds.batch(c))
        return t.pin_memory() if on_gpu else t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(load, chunks):
            pass
    return sum(len(c) for c in chunks) / (time.perf_counter() - t0)


def train_throughput(ckpt_dir: Path, device: str, batch: int, steps: int = 12) -> float:
    """Full-finetune images/s: forward + backward + AdamW step, bf16 autocast on CUDA."""
    import torch

    from core.models.load import load_checkpoint

    ck = load_checkpoint(f"dir:{ckpt_dir}", device=device, num_labels=10, dtype=torch.float32)
    ck.model.train()
    opt = torch.optim.AdamW(ck.model.parameters(), lr=5e-5, fused=device == "cuda")
    images = torch.randint(0, 256, (batch, 256, 256, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            _, logits = ck.forward(ck.preprocess(images).float())
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


def bench_model(name, compiled, ds, root, device, batch, workers, rdr, dev_name, n) -> dict:
    import torch
    import transformers

    from core.extract import features
    from core.models.load import load_checkpoint

    on_gpu = device == "cuda"
    ckpt = make_checkpoint(root, name, device)
    ck = load_checkpoint(f"dir:{ckpt}", device=device)
    if compiled:
        ck.compile()
    ceiling = forward_ceiling(ck, batch, device)
    del ck
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cache = root / f"cache-{name}-{compiled}"
    # warm-up pass on a slice (kernel selection, allocator), then the timed full set
    warm = memory_dataset(min(n, batch * 2), seed=1)
    features.extract(warm, f"dir:{ckpt}", device=device, batch_size=batch, cache=cache,
                     progress=False, compile=compiled, workers=workers, log=lambda *_: None)
    t0 = time.perf_counter()
    path, prov, _ = features.extract(ds, f"dir:{ckpt}", device=device, batch_size=batch, cache=cache,
                                     progress=False, compile=compiled, workers=workers, log=lambda *_: None)
    total = time.perf_counter() - t0
    e2e = n / (prov["seconds"] - prov["load_seconds"])  # streaming pipeline, model load excluded
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    row = dict(device=dev_name, model=name + ("+compile" if compiled else ""), image_size=MODELS[name][1],
               batch_size=batch, n_images=n, end_to_end_img_s=round(e2e, 1),
               forward_ceiling_img_s=round(ceiling, 1), ratio=round(e2e / ceiling, 3),
               peak_mem_gb=None if peak is None else round(peak, 2), total_s=round(total, 2),
               model_load_s=prov["load_seconds"], loader_img_s=round(rdr, 1), dtype=prov["dtype"],
               parquet_mb=round(_size(path) / 2**20, 1),
               torch=torch.__version__, transformers=transformers.__version__)
    print(f"{row['model']:<20} e2e {e2e:>9,.0f} img/s | forward {ceiling:>9,.0f} img/s | "
          f"ratio {e2e / ceiling:5.2f} | total {total:6.2f} s (load {prov['load_seconds']:.1f} s) | peak "
          f"{'-' if peak is None else f'{peak:.1f} GB'}", flush=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    return row


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size


# ----------------------------------------------------------------- in-process vs Ray

def engines(args) -> None:
    """The same extraction with ``--engine local`` and ``--engine ray``, each in a fresh
    process (so each pays its own start-up, and the driver's peak RSS is its own).

    CPU: synthetic galaxies (rendered on the fly, 64 px) through the demo's model
    architecture. GPU: DINOv2-B @224 on Galaxy10-shaped uint8 images held in memory,
    one GPU actor. Ray's wall time includes starting its local cluster.
    """
    import subprocess

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device == "cuda"
    n = args.n if args.n != 17_736 else (100_000 if on_gpu else 20_000)
    root = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        if on_gpu:
            ckpt, dataset = make_checkpoint(root, "dinov2-base", device), f"memory:{n}"
        else:
            from core.cli.demo import build_generic

            ckpt, dataset = build_generic(root / "demo"), f"synthetic:galaxy10?n={n}&size=64&seed=42"
        dev_name = torch.cuda.get_device_name() if on_gpu else f"cpu ({os.cpu_count()} cores)"
        print(f"engines on {dev_name}: {dataset}, model {ckpt.name} ({'dinov2-base' if on_gpu else 'demo'})",
              flush=True)
        rows = {}
        for engine in args.engine_order.split(","):
            cmd = [sys.executable, __file__, "--child", engine, "--dataset", dataset, "--ckpt", str(ckpt),
                   "--device", device, "--cache-dir", str(root / f"cache-{engine}")]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{engine} run failed")
            rows[engine] = json.loads(r.stdout.strip().splitlines()[-1])
            x = rows[engine]
            print(f"{engine:<6} wall {x['wall_s']:8.1f} s | {x['img_s']:8,.0f} img/s | driver peak RSS "
                  f"{x['driver_peak_rss_mb']:,.0f} MB | {x['rows']} rows in {x['parts']} part(s)", flush=True)
        ratio = rows["ray"]["wall_s"] / rows["local"]["wall_s"]
        tput = rows["ray"]["img_s"] / rows["local"]["img_s"]
        print(f"ray / in-process wall time: {ratio:.2f} (goal <= 1.3 on CPU); ray img/s / in-process: {tput:.2f} "
              f"(goal >= 0.85 on one GPU)", flush=True)
        result = dict(device=dev_name, dataset=dataset, n_images=n, model="dinov2-base" if on_gpu else "demo",
                      local=rows["local"], ray=rows["ray"], wall_ratio_ray_over_local=round(ratio, 3),
                      throughput_ratio_ray_over_local=round(tput, 3), torch=torch.__version__,
                      created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(result, "extract-ray", dev_name, args.out)


def write_results(data, prefix: str, dev_name: str, out: str | None = None) -> Path:
    """Write ``data`` as JSON to ``out``, else bench/results/<prefix>-<device slug>.json."""
    slug = "".join(c if c.isalnum() else "-" for c in dev_name.lower()).strip("-")
    path = Path(out or Path(__file__).parent / "results" / f"{prefix}-{slug}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return path


def child(args) -> None:
    """One timed extraction in this process; prints one JSON line."""
    import resource

    from core.extract import features

    if args.dataset.startswith("memory:"):  # an importable class, so Ray can ship it to its actors
        import importlib

        ds = importlib.import_module("bench.extract").memory_dataset(int(args.dataset.split(":")[1]))
    else:
        ds = args.dataset
    t0 = time.perf_counter()
    path, prov, _ = features.extract(ds, f"dir:{args.ckpt}", device=args.device, batch_size=args.batch_size,
                                     cache=args.cache_dir, progress=False, engine=args.child,
                                     log=lambda *a: print(*a, file=sys.stderr))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(engine=args.child, wall_s=round(wall, 2), img_s=round(prov["rows"] / wall, 1),
                          rows=prov["rows"], parts=prov.get("parts", 1), driver_peak_rss_mb=round(peak),
                          pipeline_s=prov["seconds"], startup_or_load_s=prov["load_seconds"],
                          batch_size=prov["batch_size"], device=prov["device"], dtype=prov["dtype"],
                          ray=prov.get("ray"), bytes=_size(path))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("ray",), help="compare the in-process engine with --engine ray")
    ap.add_argument("--engine-order", default="local,ray", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("local", "ray"), help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--models", default=None, help="comma list of " + ",".join(MODELS))
    ap.add_argument("--n", type=int, default=17_736, help="images (Galaxy10 DECaLS has 17,736)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="loader threads")
    ap.add_argument("--train", action="store_true", help="also time full finetuning of dinov2-base")
    ap.add_argument("--compile", action="store_true", help="also time dinov2-base with torch.compile")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/extract-<device>.json)")
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.engine:
        return engines(args)

    import torch
    import transformers

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device == "cuda"
    names = (args.models or ("dinov2-small,dinov2-base,dinov2-large,vit-base-384" if on_gpu
                             else "tiny,dinov2-small")).split(",")
    batch = args.batch_size or (256 if on_gpu else 64)
    workers = args.workers or (6 if on_gpu else 1)
    dev_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"device {dev_name} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"{args.n} images 256x256 | batch {batch} | loader threads {workers}", flush=True)

    ds = memory_dataset(args.n)
    root = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    results = []
    try:
        rdr = reader_only(ds, np.arange(args.n), batch, workers, on_gpu)
        print(f"loader alone: {rdr:,.0f} img/s", flush=True)
        variants = [(n, False) for n in names] + ([("dinov2-base", True)] if args.compile and on_gpu else [])
        for name, compiled in variants:
            try:
                row = bench_model(name, compiled, ds, root, device, batch, workers, rdr, dev_name, args.n)
            except Exception as e:  # report and go on: device time is scarce
                import traceback

                traceback.print_exc()
                row = dict(device=dev_name, model=name, error=f"{type(e).__name__}: {e}")
            results.append(row)
        if args.train:
            ckpt = make_checkpoint(root, "dinov2-base", device)
            tb = 64 if on_gpu else 8
            tput = train_throughput(ckpt, device, tb, steps=12 if on_gpu else 2)
            results.append(dict(device=dev_name, model="dinov2-base", kind="full-finetune train step",
                                image_size=224, batch_size=tb, train_img_s=round(tput, 1),
                                torch=torch.__version__, transformers=transformers.__version__))
            print(f"dinov2-base full finetune: {tput:,.0f} img/s (batch {tb}, fwd+bwd+AdamW)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_results(results, "extract", dev_name, args.out)


if __name__ == "__main__":
    main()
