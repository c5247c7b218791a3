"""Synthetic galaxy rendering speed on one core (target: >= 500 images/s at 64 px).

    python bench/render.py [--n 2000]
"""
import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # before numpy loads: measure one core, as the budget says

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.data.sources import open_dataset  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=2000)
args = ap.parse_args()

for size in (64, 128):
    t = time.perf_counter()
    ds = open_dataset(f"synthetic:galaxy10?n={args.n}&size={size}")
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    for _, batch in ds.iter_batches(ds.rows(), 256):
        pass
    dt = time.perf_counter() - t
    print(f"size {size:3d}: {args.n / dt:7.0f} images/s  ({args.n} images in {dt:.2f} s; "
          f"labels+metadata for all rows {t_open:.2f} s)")
