"""Why `finetune --precision auto` trains in bf16 with eager attention on some CPUs.

    PYTHONPATH=. python bench/cpu_precision.py [--threads 2] [--repeats 2]

Times issue 10's fixed workload (60 AdamW steps, batch 64, of the demo-sized
0.83M DINOv2 at 64 px; bench/demo_speed.py) in fp32 and in bf16 autocast, each
with SDPA and with eager attention, alternated ``--repeats`` times in one
process, and prints each as a ratio to the plain fp32 + SDPA workload (the
baseline). Writes bench/results/cpu-precision.json. Whether the CPU computes
bf16 natively (core.train.finetune.cpu_has_bf16) is printed beside it: where it does
not, bf16 is emulated and slower than fp32, and `auto` keeps fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from bench.demo_speed import fixed_workload
from core.train.finetune import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
CASES = {"fp32 sdpa": (False, None), "fp32 eager": (False, "eager"), "bf16 sdpa": (True, None),
         "bf16 eager": (True, "eager")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fixed_workload(steps=3)  # warm-up: first-call allocations and oneDNN kernels
    times = {name: [] for name in CASES}
    for _ in range(a.repeats):
        for name, (bf16, attention) in CASES.items():
            times[name].append(fixed_workload(bf16=bf16, attention=attention))
            print(json.dumps({"case": name, "seconds": round(times[name][-1], 2)}), flush=True)
    base = statistics.median(times["fp32 sdpa"])
    result = {"threads": a.threads, "cpu_has_bf16": cpu_has_bf16(), "torch": torch.__version__,
              "baseline": "fp32 sdpa (issue 10's fixed workload)", "baseline_s": round(base, 2),
              "cases": {name: {"median_s": round(statistics.median(t), 2),
                               "ratio_to_baseline": round(statistics.median(t) / base, 3)}
                        for name, t in times.items()},
              "load_average": os.getloadavg(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = REPO / "bench" / "results" / "cpu-precision.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"native bf16: {result['cpu_has_bf16']}; baseline fp32 + SDPA {base:.2f} s")
    for name, c in result["cases"].items():
        print(f"  {name:10} {c['median_s']:6.2f} s  x{c['ratio_to_baseline']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
