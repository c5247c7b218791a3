"""What a cache hit costs: `python -m core demo` on a built demo cache, and the
dashboard's first load (Streamlit AppTest, a fresh process) on the same cache.

    python bench/cache_hits.py --cache /tmp/demo-cache                       # this checkout
    python bench/cache_hits.py --cache /tmp/demo-cache --baseline /work/main # and a baseline

With ``--baseline`` (another checkout, e.g. before a change), both are run
alternately in the same script, so the ratio holds on a machine whose speed
drifts. Prints medians; the demo cache must be built first (`python -m core demo`).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_LOAD = """
import sys, time
from streamlit.testing.v1 import AppTest
t = time.perf_counter()
at = AppTest.from_file(sys.argv[1], default_timeout=600).run()
assert not at.exception, at.exception
print(time.perf_counter() - t)
"""


def demo_rerun(repo: Path, cache: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "core", "demo", "--cache", cache], cwd=repo, capture_output=True,
                       text=True)
    if r.returncode != 0 or "cached" not in r.stdout:
        raise SystemExit(f"demo in {repo} failed or was not a cache hit:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def first_load(repo: Path, cache: str) -> float:
    env = {**__import__("os").environ, "EXPLORER_CACHE": cache}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", FIRST_LOAD, str(repo / "dashboard" / "app.py")], cwd=repo, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"dashboard in {repo} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="a built demo cache")
    ap.add_argument("--baseline", help="another checkout to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dashboard", action="store_true")
    args = ap.parse_args(argv)
    repos = {"this": REPO} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    checks = {"demo re-run": demo_rerun} | ({} if args.no_dashboard else {"dashboard first load": first_load})
    times = {(name, label): [] for name in checks for label in repos}
    for _ in range(args.repeats):
        for name, fn in checks.items():
            for label, repo in repos.items():  # alternate, so drift hits both alike
                times[(name, label)].append(fn(repo, args.cache))
    for name in checks:
        line = [f"{name:<22}"]
        for label in repos:
            line.append(f"{label} {statistics.median(times[(name, label)]):6.2f} s")
        if args.baseline:
            ratio = statistics.median(times[(name, "this")]) / statistics.median(times[(name, "baseline")])
            line.append(f"ratio {ratio:.2f}")
        print("  ".join(line) + f"   (median of {args.repeats}, wall time of a fresh process)", flush=True)


if __name__ == "__main__":
    main()
