"""The large map in headless Chromium: what a user waits for at 17,736, 200,000
and 1,000,000 galaxies (run through `python bench/dashboard.py --browser`).

    python bench/dashboard.py --browser                        # all three sizes
    python bench/dashboard.py --browser --sizes 17736 --work /tmp/bigmap-runs

Each size is a run written by bench/make_big_run.py (kept under --work and
reused: a million rows take a few minutes to write and score). For each size,
`streamlit run` serves the dashboard and Chromium (SwiftShader WebGL2 on this
GPU-less machine) opens it:

- first paint: navigation -> every galaxy drawn (the component's own counter,
  after a GPU readback); first visit (cold server caches) and second visit;
- class highlight round trip: Enter in the sidebar's "Highlight classes" ->
  the map shows Disturbed in colour and the rest grey (and back);
- selection round trip: a box / lasso dragged on the map -> the selection ringed
  on the map, "Selected galaxies", the per-class counts and the gallery's images
  on the page (and Clear selection -> rings and gallery gone);
- bytes per galaxy: the binary columns fetched from /media/ (what the map
  itself fetched, and all media responses) plus everything on the websocket
  while loading, divided by the number of galaxies (the page's own JavaScript
  and fonts are not counted: they do not grow with the map);
- server RSS: the streamlit process's resident and peak memory (Linux /proc).

Besides the totals, each is broken into phases (printed, and in the JSON): for the first paint,
when the page's own JavaScript had loaded, the websocket opened, the script's first message and the
map's element came, the map's frame opened, its code ran, its arguments came, the columns were
fetched and decoded, the points drawn and shown (window.__bigmap.marks in bigmap.js); for an
interaction, when the server's answer reached the map, its rings were fetched and drawn, and when
the page showed the gallery. The machine's load average is recorded beside every row: numbers taken
under load (this machine has 2 cores) are not comparable with quiet ones.

Baseline in the same run: the Plotly map (the renderer below
EXPLORER_BIG_MAP_POINTS) at the sizes given by --plotly-sizes, first paint and
highlight, so the numbers come as ratios too. Results: bench/results/bigmap-browser.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "bigmap-browser.json"
GOALS_1M = {"first paint (s)": 10, "round trip (s)": 2, "bytes per galaxy": 16, "server peak RSS (GB)": 3}
FRAME = "iframe[title*='galaxy_map']"
PLOTLY_DRAWN = """(n) => [...document.querySelectorAll('.js-plotly-plot')].some(gd => gd._fullData
    && gd.querySelector('canvas') && gd._fullData.reduce((s, t) => s + (t._length || 0), 0) >= n)"""
PLOTLY_GREY = """(on) => [...document.querySelectorAll('.js-plotly-plot')].some(gd => gd._fullData
    && gd._fullData.some(t => (t.name || '').startsWith('other classes')) === on)"""


def big_run(work: Path, n: int, given: dict | None = None) -> Path:
    """The cache of an n-galaxy run, written once by make_big_run and reused (or one given with
    --cache N=PATH, e.g. the 10M rehearsal written by `make_big_run.py --rows 10000000 --dim 768`)."""
    import make_big_run

    if given and n in given:
        return Path(given[n])
    cache = work / str(n) / "cache"
    if not list((cache / "features").glob("*.parquet")):
        make_big_run.make(cache, rows=n)
    return cache


def rss(pid: int) -> dict:
    """Resident and peak resident memory of a process, GB (Linux)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024**2
    return {"server RSS (GB)": round(out.get("VmRSS", 0), 3), "server peak RSS (GB)": round(out.get("VmHWM", 0), 3)}


class Wire:
    """Bytes the page receives: the websocket (Streamlit's messages) and /media/ files; and when
    (time.time()) the websocket opened, its first message came and the map's arguments came."""

    def __init__(self, page):
        self.ws = 0
        self.media = 0
        self.at: dict[str, float] = {}
        page.on("websocket", self._open)
        page.on("response", self._response)

    def _open(self, ws):
        self.at.setdefault("websocket open", time.time())
        ws.on("framereceived", self._frame)

    def _frame(self, payload):
        self.ws += len(payload)
        self.at.setdefault("first message from the script", time.time())
        if b"galaxy_map" in (payload if isinstance(payload, bytes) else payload.encode("latin1", "replace")):
            self.at.setdefault("map element sent by the script", time.time())

    def _response(self, response):
        if "/media/" in response.url and "/static/" not in response.url:  # not the page's fonts
            try:
                self.media += len(response.body())
            except Exception:  # a response the page dropped
                pass


def map_frame(page):
    page.wait_for_selector(FRAME, timeout=300_000)
    for _ in range(100):
        frames = [f for f in page.frames if "galaxy_map" in f.url]
        if frames:
            return frames[0]
        page.wait_for_timeout(50)
    raise RuntimeError("the map's frame did not appear")


# In the map's frame: its clock's origin and its marks (ms), see window.__bigmap in bigmap.js.
FRAME_CLOCK = "() => ({origin: performance.timeOrigin, marks: window.__bigmap.marks, trip: window.__bigmap.trip})"


def phases(page, frame, wire: Wire, t0: float) -> dict:
    """Seconds since navigation at which each phase of the first paint ended, in order: the page's
    own HTML and JavaScript, the websocket, the script's messages, the map's frame and the map's own
    steps (fetch, decode, draw). Differences between neighbours are where the time went."""
    nav = page.evaluate("() => { const e = performance.getEntriesByType('navigation')[0]; "
                        "return {origin: performance.timeOrigin, dom: e.domContentLoadedEventEnd}; }")
    out = {"page HTML and Streamlit's JavaScript loaded": (nav["origin"] + nav["dom"]) / 1000 - t0}
    out.update({k: v - t0 for k, v in wire.at.items()})
    if frame is not None:
        clock = frame.evaluate(FRAME_CLOCK)
        out["map frame opened"] = clock["origin"] / 1000 - t0
        for name, ms in clock["marks"].items():
            out[{"script": "map code running", "args": "map arguments arrived"}.get(name, name)] = \
                (clock["origin"] + ms) / 1000 - t0
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: kv[1])}


def trip_phases(frame, t0: float) -> dict:
    """Seconds since an interaction (time.time() t0) at which the map got the server's answer, had
    fetched the rings and had drawn them (window.__bigmap.trip)."""
    clock = frame.evaluate(FRAME_CLOCK)
    trip = clock["trip"] or {}
    names = {"sent": "event sent", "args": "server's answer arrived", "rings": "rings fetched", "drawn": "drawn"}
    return {names[k]: round((clock["origin"] + trip[k]) / 1000 - t0, 3) for k in names if k in trip}


def open_page(browser, url: str, n: int, renderer: str) -> tuple:
    """(page, frame or None, wire, seconds to first paint, seconds to the page shell, phases)."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    wire = Wire(page)
    t = time.perf_counter()
    t0 = time.time()
    page.goto(url)
    page.get_by_text("Galaxy embedding explorer").first.wait_for(timeout=300_000)
    shell = time.perf_counter() - t
    frame = None
    if renderer == "webgl":
        frame = map_frame(page)
        frame.wait_for_function("() => window.__bigmap && (window.__bigmap.paints > 0 || window.__bigmap.error)",
                                timeout=600_000, polling=50)
        error = frame.evaluate("() => window.__bigmap.error")
        if error:
            raise RuntimeError(f"the map failed: {error}")
    else:
        page.wait_for_function(PLOTLY_DRAWN, arg=n, timeout=600_000, polling=50)
    seconds = time.perf_counter() - t
    return page, frame, wire, seconds, shell, phases(page, frame, wire, t0)


def highlight(page, frame, on: bool, renderer: str) -> float:
    """Seconds from choosing (or removing) Disturbed in "Highlight classes" to the map showing it."""
    box = page.locator("[data-testid=stSidebar] [data-testid=stMultiSelect] input").first
    box.click()
    if on:
        page.keyboard.type("Disturbed")
    t = time.perf_counter()
    t0 = time.time()
    page.keyboard.press("Enter" if on else "Backspace")
    if renderer == "webgl":
        frame.wait_for_function("(h) => window.__bigmap.highlight === h", arg="1" if on else "", timeout=120_000,
                                polling=20)
    else:
        page.wait_for_function(PLOTLY_GREY, arg=on, timeout=120_000, polling=20)
    seconds = time.perf_counter() - t
    page.keyboard.press("Escape")
    return seconds, (trip_phases(frame, t0) if frame is not None else {})


def select(page, frame, shape: str) -> float:
    """Seconds from releasing a box / lasso on the map to the rings, the gallery heading, the per-class
    counts and the gallery's images all shown."""
    frame.click(f"button[data-mode={shape}]")
    b = page.locator(FRAME).bounding_box()
    at = lambda fx, fy: (b["x"] + b["width"] * fx, b["y"] + b["height"] * fy)  # noqa: E731
    path = ([at(0.35, 0.35), at(0.6, 0.6)] if shape == "box" else
            [at(0.4 + 0.15 * math.cos(a * math.pi / 4), 0.5 + 0.2 * math.sin(a * math.pi / 4)) for a in range(9)])
    page.mouse.move(*path[0])
    page.mouse.down()
    for p in path[1:]:
        page.mouse.move(*p, steps=4)
    t = time.perf_counter()
    t0 = time.time()
    page.mouse.up()
    frame.wait_for_function("() => window.__bigmap.ringsShown > 0", timeout=120_000, polling=20)
    ringed = time.perf_counter() - t
    page.get_by_text("Selected galaxies:").wait_for(timeout=120_000)
    heading = time.perf_counter() - t
    # the whole answer: the per-class counts and the gallery's first image on the page (a Clear clicked
    # before then would be timed with the rest of this selection's page still arriving)
    page.wait_for_function("() => document.querySelector('[data-testid=stDataFrame]') && "
                           "document.querySelectorAll('[data-testid=stImage] img').length > 0",
                           timeout=120_000, polling=20)
    got = {**trip_phases(frame, t0), "rings shown": round(ringed, 3), "gallery heading shown": round(heading, 3),
           "counts and gallery shown": round(time.perf_counter() - t, 3)}
    return time.perf_counter() - t, got


def clear(page, frame) -> tuple[float, dict]:
    t = time.perf_counter()
    t0 = time.time()
    page.get_by_role("button", name="Clear selection").click()
    frame.wait_for_function("() => window.__bigmap.ringsShown === 0", timeout=120_000, polling=20)
    ringed = time.perf_counter() - t
    page.get_by_text("Selected galaxies:").wait_for(state="detached", timeout=120_000)
    got = {**trip_phases(frame, t0), "rings gone": round(ringed, 3),
           "gallery gone": round(time.perf_counter() - t, 3)}
    return time.perf_counter() - t, got


ANSWER = re.compile(r"^\d+ of \d+ neighbours share its class")  # the Neighbours view's answer, per feature space


def neighbours_trip(page, galaxy: str) -> float:
    """Seconds from Enter in the Neighbours view's "Galaxy id" box to the answer on the page (its
    caption: "k of 8 neighbours share its class"), from a cleared box."""
    box = page.get_by_role("textbox", name="Galaxy id")
    box.fill("")
    box.press("Enter")
    page.get_by_text("Try one of these").first.wait_for(timeout=300_000)
    box.fill(galaxy)
    t = time.perf_counter()
    box.press("Enter")
    page.get_by_text(ANSWER).first.wait_for(timeout=600_000)
    return time.perf_counter() - t


def measure_neighbours(browser, url: str, n: int, tries: int = 4) -> dict:
    """The Neighbours view of a galaxy: the first answer (it opens the run's index) and the next ones."""
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(url + "/?view=Neighbours")
    page.get_by_role("textbox", name="Galaxy id").wait_for(timeout=300_000)
    rng = __import__("random").Random(0)
    trips = [neighbours_trip(page, f"J{rng.randrange(n):07d}") for _ in range(tries)]
    caption = page.get_by_text(ANSWER).first.inner_text()
    page.close()
    return {"neighbours, first (s)": round(trips[0], 3), "neighbours, next (s)": [round(t, 3) for t in trips[1:]],
            "neighbours round trip (s)": round(statistics.median(trips[1:]), 3), "neighbours caption": caption}


def measure(cache: Path, n: int, renderer: str, neighbours: bool = False) -> dict:
    from tests.browser_fixtures import chromium, served

    os.environ["EXPLORER_BIG_MAP_POINTS"] = "0" if renderer == "webgl" else str(10**9)
    log = Path(tempfile.mkdtemp()) / "server.log"
    out: dict = {"galaxies": n, "renderer": renderer, "load average (1, 5, 15 min) before": list(os.getloadavg())}
    with served(cache, log) as (proc, url):
        with chromium() as browser:
            page, frame, wire, out["first paint, first visit (s)"], _, first = open_page(browser, url, n, renderer)
            out["first paint phases, first visit (s since navigation)"] = first
            page.close()
            page, frame, wire, out["first paint (s)"], out["page shell shown (s)"], out[
                "first paint phases (s since navigation)"] = open_page(browser, url, n, renderer)
            page.wait_for_timeout(500)
            out["media bytes per galaxy"] = round(wire.media / n, 2)
            out["bytes per galaxy"] = round((wire.media + wire.ws) / n, 2)
            if frame is not None:
                fetched = frame.evaluate("() => window.__bigmap.fetchedBytes")
                out["bytes the map fetched per galaxy"] = round(fetched / n, 2)
                # Playwright cannot always read back the body of a 206 answer (the map asks for byte ranges):
                # the map's own count of what it fetched is then the floor of the media bytes
                out["media bytes per galaxy"] = round(max(wire.media, fetched) / n, 2)
                out["bytes per galaxy"] = round((max(wire.media, fetched) + wire.ws) / n, 2)
                out["webgl renderer"] = frame.evaluate("""() => { const gl = document.createElement('canvas')
                    .getContext('webgl2'); const x = gl && gl.getExtension('WEBGL_debug_renderer_info');
                    return x ? gl.getParameter(x.UNMASKED_RENDERER_WEBGL) : (gl ? 'webgl2' : 'none'); }""")
                out["full redraw in the browser (s)"] = round(frame.evaluate("() => window.__bigmap.lastRenderMs") / 1000, 3)
                at = frame.evaluate("() => [window.__bigmap.argsAt, window.__bigmap.pointsReadyAt, window.__bigmap.firstPaintAt]")
                out["in the map's frame (s): args arrive, points ready, painted"] = [round(v / 1000, 3) for v in at]
            trips, ws_bytes, steps = [], [], []
            for on in (True, False, True, False):
                before = wire.ws + wire.media
                seconds, got = highlight(page, frame, on, renderer)
                trips.append(seconds)
                steps.append(got)
                page.wait_for_timeout(300)
                ws_bytes.append(wire.ws + wire.media - before)
            out["highlight round trip (s)"] = round(statistics.median(trips), 3)
            out["highlight round trips (s)"] = [round(t, 3) for t in trips]
            out["bytes per highlight"] = int(statistics.median(ws_bytes))
            if frame is not None:
                out["highlight phases (s since the key press)"] = steps
                before = wire.ws + wire.media
                sel, got = [], {}
                seconds, got["box"] = select(page, frame, "box")
                sel.append(seconds)
                out["bytes per selection"] = wire.ws + wire.media - before
                seconds, got["clear"] = clear(page, frame)
                sel.append(seconds)
                seconds, got["lasso"] = select(page, frame, "lasso")
                sel.append(seconds)
                seconds, got["clear lasso"] = clear(page, frame)
                sel.append(seconds)
                out["selection round trips (s): box, clear, lasso, clear"] = [round(t, 3) for t in sel]
                out["selection phases (s since the mouse up / click)"] = got
                out["selection round trip (s)"] = round(statistics.median(sel), 3)
            page.close()
            if neighbours and renderer == "webgl":
                out.update(measure_neighbours(browser, url, n))
        out.update(rss(proc.pid))
    return out


def print_phases(r: dict) -> None:
    """Where the time went: each phase's end (s since navigation / the interaction) and its own share."""
    print(f"\n{r['galaxies']:,} galaxies, {r['renderer']}: load average {r['load average (1, 5, 15 min) after']}")
    for key in ("first paint phases, first visit (s since navigation)", "first paint phases (s since navigation)"):
        if r.get(key):
            print(f"  {key}:")
            last = 0.0
            for name, at in r[key].items():
                print(f"    {at:7.3f} s  (+{at - last:6.3f})  {name}")
                last = at
    for key in ("highlight phases (s since the key press)", "selection phases (s since the mouse up / click)"):
        steps = r.get(key)
        if steps:
            print(f"  {key}:")
            for name, got in (steps.items() if isinstance(steps, dict) else enumerate(steps)):
                print(f"    {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[17736, 200000, 1000000])
    ap.add_argument("--plotly-sizes", type=int, nargs="*", default=[17736, 200000],
                    help="sizes to measure the Plotly map at too, as the baseline (default 17736 200000)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bigmap-runs"),
                    help="where the runs are written and reused (default /tmp/bigmap-runs)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--cache", nargs="*", default=[], metavar="N=PATH",
                    help="use an existing cache for size N (e.g. 10000000=/tmp/10m/cache) instead of writing one")
    ap.add_argument("--neighbours", action="store_true",
                    help="also time the Neighbours view of typed galaxy ids (needs the run's index: "
                         "python -m core index --run KEY)")
    args = ap.parse_args(argv)
    given = {int(a.split("=", 1)[0]): a.split("=", 1)[1] for a in args.cache}
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()} on {os.cpu_count()} CPUs "
          "(numbers taken under load are not comparable)", flush=True)
    import logging

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    results = []
    for n in args.sizes:
        cache = big_run(Path(args.work), n, given)
        for renderer in (["plotly"] if n in args.plotly_sizes else []) + ["webgl"]:
            r = measure(cache, n, renderer, args.neighbours)
            r["load average (1, 5, 15 min) after"] = list(os.getloadavg())
            results.append(r)
            print(json.dumps(r), flush=True)
            print_phases(r)
    for r in results:
        base = next((b for b in results if b["renderer"] == "plotly" and b["galaxies"] == r["galaxies"]), None)
        if base and r is not base:
            r["vs plotly (same run)"] = {k: round(r[k] / base[k], 3) for k in ("first paint (s)", "highlight round trip (s)",
                                                                               "bytes per galaxy") if base.get(k)}
    print(f"\n{'galaxies':>10s} {'renderer':8s} {'paint 1st':>9s} {'paint':>7s} {'highlight':>9s} {'select':>7s} "
          f"{'B/galaxy':>8s} {'RSS GB':>7s} {'peak':>6s}")
    for r in results:
        print(f"{r['galaxies']:>10,d} {r['renderer']:8s} {r['first paint, first visit (s)']:8.2f}s {r['first paint (s)']:6.2f}s "
              f"{r['highlight round trip (s)']:8.2f}s {r.get('selection round trip (s)', float('nan')):6.2f}s "
              f"{r['bytes per galaxy']:8.1f} {r['server RSS (GB)']:7.2f} {r['server peak RSS (GB)']:6.2f}")
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.node(),
           "cpus": os.cpu_count(), "load average (1, 5, 15 min) at the end": list(os.getloadavg()), "command": "python bench/dashboard.py --browser " + " ".join(argv or []),
           "goals at 1M": GOALS_1M, "results": results,
           "note": "headless Chromium, software WebGL (SwiftShader), 2 CPU cores shared with other jobs: "
                   "compare rows of the same run only"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
