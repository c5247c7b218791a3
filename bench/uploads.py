"""Memory and time of the Find view's uploads (issue 25 §3): a 12,000 x 12,000 PNG (436 KB, under
Pillow's decompression-bomb limit) read and embedded as the dashboard server does it, one at a time
and four at once, against the old path (full-size decode, squashed to the run's 64-px dataset size,
embedded) measured in the same run.

Each scenario runs in a fresh process holding the checkpoint (like a warm server); the figure is
that process's peak resident memory (ru_maxrss) and the wall time of its uploads.

    PYTHONPATH=. EXPLORER_CACHE=/path/to/demo-cache python bench/uploads.py   # writes bench/results/uploads.json
Goal: one upload < 1.5 GB resident and <= 10 s; four at once < 2.5 GB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDE = 12000


def child(scenario: str) -> None:
    import io
    import resource
    import threading

    import numpy as np
    from PIL import Image

    from core.models.load import load_checkpoint

    ck = load_checkpoint("demo:generic", device="cpu", cache=os.environ.get("EXPLORER_CACHE", "/work/demo-cache"))
    content = Path(sys.argv[3]).read_bytes()  # made by the parent: this process's peak is the uploads'
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    if scenario == "old path, one upload":
        from core.data.base import resize_square, to_rgb_uint8
        from core.extract.upload import embed

        with Image.open(io.BytesIO(content)) as img:
            img.load()
            rgb = to_rgb_uint8(img)
        embed(resize_square(rgb, 64), ck, "cls")
    else:
        from core.extract.upload import embed_upload, read_upload

        n = 4 if "four" in scenario else 1

        def one():
            embed_upload(read_upload(content, "huge.png"), ck, "cls")

        threads = [threading.Thread(target=one) for _ in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"scenario": scenario, "idle_gb": idle / 1e9, "peak_gb": peak / 1e9, "seconds": seconds,
                      "png_bytes": len(content), "load": os.getloadavg()[0]}))
    _ = np


def main() -> None:
    import io
    import tempfile

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (30, 60, 90)).save(buf, format="PNG")
    png = Path(tempfile.mkdtemp()) / "huge.png"
    png.write_bytes(buf.getvalue())
    del buf
    rows = []
    for scenario in ("old path, one upload", "one upload", "four uploads at once"):
        out = subprocess.run([sys.executable, __file__, "--child", scenario, str(png)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
        if out.returncode:
            print(out.stderr[-2000:])
            raise SystemExit(1)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['scenario']:<22} peak {row['peak_gb']:.2f} GB (idle {row['idle_gb']:.2f})  "
              f"{row['seconds']:.1f} s   load {row['load']:.2f}")
    old, one = rows[0], rows[1]
    print(f"peak memory of one upload: {one['peak_gb'] / old['peak_gb']:.2f}x the old path's; "
          f"time {one['seconds'] / old['seconds']:.2f}x")
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "uploads.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
