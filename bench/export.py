"""The one-file HTML export: its size and how fast it paints from disk, offline, in headless Chromium.

    .venv/bin/python bench/export.py --cache DEMO_CACHE [--sizes demo,17736,1000000] [--work /tmp/export-bench]

- demo: the demo's full-finetune t-SNE map, thumbnails for every galaxy;
- 17736: Galaxy10's size: 17,736 synthetic galaxies through the demo's full checkpoint (`extract`), a
  PCA map, thumbnails for every galaxy;
- 1000000: `bench/make_big_run.py`'s million-galaxy run, without thumbnails.
Each file is opened from file:// with the network disabled (5 times, median) and the first paint is
read from the page (navigation start to the first drawn frame), then a hover and a class highlight are
timed. Goals (issue 26): <= 15 MB and <= 1.0 s with thumbnails for every galaxy at the demo and 17,736;
<= 40 MB and <= 5 s at 1M. Prints JSON and writes bench/results/export.json with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.analysis.export import write_html  # noqa: E402
from core.store import cache as store  # noqa: E402

GOALS = {"demo": (15, 1.0), "17736": (15, 1.0), "1000000": (40, 5.0)}


def core(*args, cache) -> None:
    subprocess.run([sys.executable, "-m", "core", *args, "--cache", str(cache)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)


def features(cache, model=None, rows=None):
    runs = [r for r in store.list_runs(cache) if r["kind"] == "features"]
    return [r for r in runs if (model is None or r.get("model", "").endswith(model)) and (rows is None or r["rows"] == rows)]


def prepare(size: str, demo_cache: Path, work: Path) -> tuple[Path, str, dict]:
    if size == "demo":
        run = next(r for r in features(demo_cache, rows=3000) if r.get("mode") == "full")
        return demo_cache, run["key"], {"method": "tsne"}
    if size == "17736":
        cache = work / "g10"
        if not features(cache, rows=17736):
            model = f"dir:{demo_cache / 'checkpoints' / 'demo' / 'full'}"
            core("extract", "--dataset", "synthetic:galaxy10?n=17736&size=64&seed=7", "--model", model, cache=cache)
        run = features(cache, rows=17736)[0]
        core("project", "--run", run["key"], "--method", "pca", cache=cache)  # a cache hit once made
        return cache, run["key"], {"method": "pca"}
    cache = work / "big"
    if not features(cache, rows=int(size)):
        subprocess.run([sys.executable, "bench/make_big_run.py", "--rows", size, "--cache", str(cache), "--no-pca"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return cache, features(cache, rows=int(size))[0]["key"], {"method": "tsne", "thumbnails": False}


def open_offline(path: Path, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    paints, hovers, highlights = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        for _ in range(repeats):
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(path.as_uri())
            page.wait_for_function("document.body.dataset.painted", timeout=300_000)
            paints.append(int(page.evaluate("document.body.dataset.painted")) / 1000)
            box = page.locator("#mapbox").bounding_box()
            sx, sy = page.evaluate("galaxyMap.screen(0)")
            t = time.perf_counter()
            page.mouse.move(box["x"] + sx, box["y"] + sy)
            page.wait_for_function("document.getElementById('tip').style.display === 'block'")
            hovers.append(time.perf_counter() - t)
            t = time.perf_counter()
            page.locator("#legend div").first.click()
            page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            highlights.append(time.perf_counter() - t)
            phases = json.loads(page.evaluate("document.body.dataset.phases"))
            context.close()
        browser.close()
    return {"first_paint_s": round(statistics.median(paints), 3), "first_paint_all_s": paints,
            "hover_s": round(statistics.median(hovers), 3), "highlight_s": round(statistics.median(highlights), 3),
            "phases_ms": phases}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True, help="a demo cache (`python -m core demo --cache DIR`)")
    ap.add_argument("--sizes", default="demo,17736,1000000")
    ap.add_argument("--work", default="/tmp/export-bench", help="where the larger runs and the files are written")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    work = Path(a.work)
    out = []
    for size in a.sizes.split(","):
        cache, key, kw = prepare(size, Path(a.cache), work)
        path = work / f"export-{size}.html"
        load_before = os.getloadavg()
        stats = write_html(path, key, cache=cache, **kw)
        row = {"size": size, **stats, "mb": round(stats["bytes"] / 2 ** 20, 2), **open_offline(path, a.repeats),
               "load_average": [round(v, 2) for v in load_before + os.getloadavg()]}
        goal_mb, goal_s = GOALS.get(size, (None, None))
        row["goals"] = {"mb": goal_mb, "first_paint_s": goal_s,
                        "met": goal_mb is not None and row["mb"] <= goal_mb and row["first_paint_s"] <= goal_s}
        row.pop("path")
        print(json.dumps(row), flush=True)
        out.append(row)
    dest = REPO / "bench" / "results" / "export.json"
    dest.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "runs": out}, indent=1))
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
