"""How fast the dashboard reruns, at the paper's 17,736 galaxies and at 200,000.

    python bench/dashboard.py                 # both sizes, AppTest + Chromium
    python bench/dashboard.py --sizes 17736 --no-browser
    python bench/dashboard.py --browser       # the large map: 17,736 / 200,000 / 1,000,000 galaxies
    python bench/dashboard.py --cache cache --no-browser   # an existing cache, e.g. the demo's

Server side: Streamlit's AppTest runs the real script; each interaction is timed
once cold (first time: may read a file) and then warm (median of repeats: what a
user feels when switching between cached runs). Browser: `streamlit run` on
localhost and Debian's Chromium; time from navigation until the map's WebGL
canvas is drawn, and until it is redrawn after a mode switch.
Goal: each warm rerun <= 0.2 s at 17,736 points and <= 1 s at 200,000.
With ``--cache DIR`` the same is timed on that cache instead of the synthetic fixtures;
run it in a fresh process, so "first load" includes importing the dashboard and
whatever its first view reads or computes (on the demo: nothing is computed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
APP = str(REPO / "dashboard" / "app.py")
GOAL = {17736: 0.2, 200000: 1.0}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def check(at):
    if at.exception or at.error:
        raise RuntimeError(f"app failed: {[e.value for e in at.exception] + [e.value for e in at.error]}")
    return at


def server_side(cache: Path, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """{action: (first, warm median)} seconds per rerun."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["EXPLORER_CACHE"] = str(cache)
    st.cache_data.clear()
    st.cache_resource.clear()
    results = {}

    at = AppTest.from_file(APP, default_timeout=300)
    first = timed(lambda: check(at.run()))
    warm = [timed(lambda: check(AppTest.from_file(APP, default_timeout=300).run())) for _ in range(repeats)]
    results["first load (new session)"] = (first, statistics.median(warm))

    def toggle(name, set_a, set_b, at=at):
        times = []
        for i in range(2 * repeats + 2):  # even: ends where it started
            (set_a if i % 2 == 0 else set_b)(at)
            times.append(timed(lambda: check(at.run())))
        results[name] = (times[0], statistics.median(times[1:]))

    toggle("mode switch (full <-> head)", lambda a: a.radio(key="mode").set_value("head"),
           lambda a: a.radio(key="mode").set_value("full"))
    toggle("projection switch (t-SNE <-> PCA)", lambda a: a.radio(key="projection").set_value("pca"),
           lambda a: a.radio(key="projection").set_value("tsne"))
    toggle("class highlight (Disturbed on/off)", lambda a: a.multiselect(key="highlight").set_value(["Disturbed"]),
           lambda a: a.multiselect(key="highlight").set_value([]))
    at.session_state["view"] = "Confusion"
    check(at.run())

    def cell(t, p):
        def go(a):
            a.selectbox(key="cell_true").set_value(t)
            a.selectbox(key="cell_pred").set_value(p)
        return go

    toggle("confusion cell (Tight->Loose <-> Loose->Tight)", cell("Unbarred Tight Spiral", "Unbarred Loose Spiral"),
           cell("Unbarred Loose Spiral", "Unbarred Tight Spiral"))
    return results


def browser(cache: Path) -> dict[str, float]:
    from tests.browser_fixtures import CHROMIUM, chromium, served

    if not Path(CHROMIUM).exists():
        return {}
    log = Path(tempfile.mkdtemp()) / "server.log"
    drawn = """(n) => { const gds = [...document.querySelectorAll('.js-plotly-plot')];
        return gds.some(gd => gd._fullData && gd._fullData.some(t => t.type === 'scattergl')
            && gd.querySelector('canvas') && gd._fullData.reduce((s, t) => s + (t._length || 0), 0) >= n); }"""
    out = {}
    with served(cache, log) as (_, url), chromium() as b:
        for attempt in ("first visit", "second visit (server caches warm)"):
            page = b.new_page(viewport={"width": 1500, "height": 1000})
            t = time.perf_counter()
            page.goto(url)
            page.get_by_text("Galaxy embedding explorer").first.wait_for(timeout=120000)
            out[f"page shell shown, {attempt}"] = time.perf_counter() - t
            page.wait_for_function(drawn, arg=1, timeout=120000, polling=20)
            out[f"map drawn, {attempt}"] = time.perf_counter() - t
            if attempt.startswith("second"):
                t = time.perf_counter()
                page.get_by_role("radiogroup", name="Mode").get_by_text("head", exact=True).click()
                page.get_by_text("head-only finetune (").wait_for(timeout=60000)
                page.wait_for_function(drawn, arg=1, timeout=60000, polling=20)
                out["mode switch -> map redrawn"] = time.perf_counter() - t
            page.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[17736, 200000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--cache", help="time the dashboard on this existing cache (e.g. the demo's) instead of "
                    "fixtures of --sizes")
    ap.add_argument("--browser", action="store_true", help="the large map in Chromium instead (bench/bigmap_browser.py): "
                    "first paint, highlight and selection round trips, bytes per point, server RSS")
    args, _ = ap.parse_known_args()
    if args.browser:
        import bigmap_browser  # bench/ is on the path when this file runs as a script

        return bigmap_browser.main([a for a in sys.argv[1:] if a != "--browser"])
    args = ap.parse_args()
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    logging.getLogger("dashboard").setLevel(logging.ERROR)  # "no thumbnails": expected here
    if args.cache:
        _report(Path(args.cache).resolve(), f"cache {args.cache}", None, args)
        return 0
    from tests.dashboard_fixtures import build_cache

    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            cache = build_cache(tmp, n=n, images=False, dim=64, second_dataset=False, layout_maps=True)
            _report(Path(cache), f"{n:,} galaxies (synthetic features, 64-d; fixture written in "
                    f"{time.perf_counter() - t:.1f} s)", GOAL.get(n), args)
    return 0


def _report(cache: Path, title: str, goal: float | None, args) -> None:
    print(f"\n== {title}")
    print(f"{'server-side rerun (AppTest)':48s} {'first':>8s} {'warm':>8s}")
    for name, (first, warm) in server_side(cache, args.repeats).items():
        flag = "" if goal is None else ("  ok" if warm <= goal else f"  > goal {goal} s")
        print(f"  {name:46s} {first:7.3f}s {warm:7.3f}s{flag}")
    if not args.no_browser:
        for name, secs in browser(cache).items():
            print(f"  chromium: {name:52s} {secs:6.2f}s")


if __name__ == "__main__":
    sys.exit(main())
