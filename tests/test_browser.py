"""The real thing: `streamlit run` on localhost and Debian's Chromium driven by
Playwright. Load the page, see the map, click a confusion cell, see its gallery,
select galaxies on the map, hover a galaxy. Screenshots go to test-artifacts/ (git-ignored)."""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.browser_fixtures import CHROMIUM, chromium, served

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found: apt-get install chromium (no browser is downloaded)")]


def _serving(cache: Path, root: Path):
    """A module fixture's body: the dashboard on ``cache`` for the module's tests; (url, server log)."""
    log = root / "server.log"
    with served(cache, log) as (_, url):
        yield url, log


@contextlib.contextmanager
def page_at(log: Path, failure: str, height: int = 1300):
    """A 1500-px-wide Chromium page; if the test fails on it, a screenshot
    test-artifacts/<failure> and the server log's tail."""
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": height})
        try:
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure))
            print(Path(log).read_text()[-3000:])
            raise


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    cache = Path(os.environ.get("DASHBOARD_BROWSER_CACHE")  # a prebuilt demo cache, else the README's demo
                 or request.getfixturevalue("demo_cache")["cache"])
    yield from _serving(cache, tmp_path_factory.mktemp("browser"))


# Where a confusion cell sits on screen, from plotly's own axis conversions.
CELL_XY = """([t, p]) => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    if (!gd.data || !gd.data.some(tr => tr.type === 'heatmap')) continue;
    const L = gd._fullLayout, box = gd.getBoundingClientRect();
    return [box.left + L._size.l + L.xaxis.l2p(p), box.top + L._size.t + L.yaxis.l2p(t)];
  }
  return null;
}"""


FIRST_POINT_XY = """() => {
  const gd = document.querySelector('.js-plotly-plot'), L = gd._fullLayout, box = gd.getBoundingClientRect();
  const t = gd._fullData.find(t => t.type === 'scattergl' && t._length > 0);
  return [box.left + L._size.l + L.xaxis.l2p(t.x[0]), box.top + L._size.t + L.yaxis.l2p(t.y[0])];
}"""


def test_map_confusion_click_gallery_and_selection(server):
    url, log = server
    with page_at(log, "failure.png", 1300) as page:
        page.goto(url)
        page.wait_for_selector(".js-plotly-plot .scatterlayer, .js-plotly-plot canvas", timeout=30000)
        page.get_by_text("t-SNE map quality").wait_for(timeout=10000)
        page.wait_for_timeout(800)
        x, y = page.evaluate(FIRST_POINT_XY)
        page.mouse.move(x + 2, y + 2)
        page.mouse.move(x, y)
        page.wait_for_selector(".hoverlayer .hovertext", timeout=10000)
        hover = page.locator(".hoverlayer .hovertext").first.text_content()
        assert "true:" in hover and "predicted:" in hover, hover
        page.screenshot(path=str(ARTIFACTS / "01-map-hover.png"))
        assert "Traceback" not in page.content()

        # Confusion: click the Unbarred Tight -> Unbarred Loose cell on the heatmap itself.
        page.get_by_role("tab", name="Confusion").click()
        page.get_by_text("Rows are the true class").wait_for(timeout=15000)
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                               ".some(gd => gd.data && gd.data.some(t => t.type === 'heatmap'))", timeout=15000)
        page.wait_for_timeout(500)
        x, y = page.evaluate(CELL_XY, [6, 7])
        page.mouse.click(x, y)
        heading = page.get_by_text("of class Unbarred Tight Spiral predicted as Unbarred Loose Spiral")
        heading.wait_for(timeout=15000)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stImage] img').length > 0",
                               timeout=15000)
        assert "cell=" not in page.url  # bound keys are cell_true / cell_pred
        assert "cell_true=Unbarred" in page.url and "cell_pred=Unbarred" in page.url
        page.wait_for_timeout(800)
        heading.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "02-confusion-cell-gallery.png"))

        # Back on the map: drag a box -> gallery of the selected galaxies with a CSV download.
        page.get_by_role("tab", name="Map").click()
        page.get_by_text("t-SNE map quality").wait_for(timeout=15000)
        page.wait_for_timeout(800)
        plot = page.locator(".js-plotly-plot").first.locator(".nsewdrag").first
        b = plot.bounding_box()
        page.mouse.move(b["x"] + b["width"] * 0.05, b["y"] + b["height"] * 0.05)
        page.mouse.down()
        page.mouse.move(b["x"] + b["width"] * 0.5, b["y"] + b["height"] * 0.6, steps=8)
        page.mouse.up()
        page.get_by_text("Selected galaxies:").wait_for(timeout=15000)
        page.get_by_text("Download selection (CSV)").wait_for(timeout=5000)
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / "03-map-selection.png"), full_page=True)
        assert "Traceback" not in page.content()


def test_find_by_uploaded_image(server, tmp_path):
    """Upload a galaxy image in the Find view: it goes through the checkpoints and its most
    similar galaxies appear with their similarity."""
    from PIL import Image

    url, log = server
    photo = sorted((REPO.parent / "shared" / "data" / "galaxyzoo-decals-examples").rglob("*.jpg"))
    if photo:
        upload = photo[0]
    else:  # no shared photos here: a bright round blob will do
        yy, xx = np.mgrid[:64, :64]
        blob = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 60.0)[..., None] * np.array([255, 230, 200])
        upload = tmp_path / "blob.png"
        Image.fromarray(blob.astype(np.uint8)).save(upload)
    with page_at(log, "failure-upload.png", 1300) as page:
        page.goto(f"{url}/?view=Find")
        page.get_by_text("by image").click()
        page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(str(upload))
        page.get_by_text("similarity", exact=False).first.wait_for(timeout=60000)
        # both spaces done: a "Most similar" summary each, then 8 cards with a similarity each
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stCaptionContainer]')]"
                               ".filter(e => e.textContent.startsWith('Most similar:')).length >= 2",
                               timeout=90000)
        cards = page.locator("[data-testid=stCaptionContainer]").filter(has_text="true:")
        sims = cards.filter(has_text=re.compile(r"similarity -?\d\.\d{4}")).count()
        assert sims >= 16, sims  # the 8 most similar galaxies, in the generic and in the finetuned space
        content = page.content()
        assert "full finetune" in content and "generic" in content and "Least similar" in content
        assert "Traceback" not in content
        page.screenshot(path=str(ARTIFACTS / "04-find-upload.png"), full_page=True)


# ---------------------------------------------------------------- a 200,000-galaxy run: the WebGL map

BIG_N = 200_000
MAP_FRAME = "iframe[title*='galaxy_map']"
# Screen position (in the page) of galaxy i, from the component's own view transform.
GALAXY_XY = """(i) => { const [sx, sy] = toScreen(S.x[i], S.y[i]); return [sx, sy]; }"""


@pytest.fixture(scope="module")
def big_server(tmp_path_factory):
    """`streamlit run` on a 200k-galaxy run written by bench/make_big_run.py (4-d features, unscored)."""
    sys.path.insert(0, str(REPO / "bench"))
    import make_big_run

    root = tmp_path_factory.mktemp("big-browser")
    make_big_run.make(root / "cache", rows=BIG_N, dim=4, pca=False, sample=0)
    yield from _serving(root / "cache", root)


@pytest.mark.slow
def test_large_map_draws_hovers_and_lasso_fills_the_gallery(big_server):
    url, log = big_server
    with page_at(log, "failure-large-map.png", 1100) as page:
        page.goto(url)
        page.wait_for_selector(MAP_FRAME, timeout=60000)
        frame = next(f for f in page.frames if "galaxy_map" in f.url)
        frame.wait_for_function("() => window.__bigmap.paints > 0 || window.__bigmap.error", timeout=120000)
        state = frame.evaluate("() => window.__bigmap")
        assert state["error"] is None and state["loadedPoints"] == BIG_N, state
        assert "200,000 galaxies drawn with WebGL" in page.content()
        # the points really are on the canvas: some pixels are neither white nor transparent
        painted = frame.evaluate("() => window.__bigmap.inkedPixels()")
        assert painted > 5000, painted

        # hover a galaxy: its classes at once, its id (from the server) after a short rest
        box = page.locator(MAP_FRAME).bounding_box()
        x, y = frame.evaluate(GALAXY_XY, 1234)
        page.mouse.move(box["x"] + x + 3, box["y"] + y + 3)
        page.mouse.move(box["x"] + x, box["y"] + y)
        tip = frame.locator("[data-testid=bigmap-tooltip]")
        tip.wait_for(state="visible", timeout=10000)
        assert "true:" in tip.inner_text() and "predicted:" in tip.inner_text()
        frame.wait_for_function("() => /^J\\d{7}/.test(document.getElementById('tip').innerText)", timeout=30000)
        page.screenshot(path=str(ARTIFACTS / "05-large-map-hover.png"))

        # lasso around that galaxy -> gallery, per-class counts and CSV on the page, rings on the map
        frame.click("button[data-mode=lasso]")
        cx, cy = box["x"] + x, box["y"] + y
        ring = [(cx + 40 * np.cos(a), cy + 40 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 13)]
        page.mouse.move(*ring[0])
        page.mouse.down()
        for p in ring[1:]:
            page.mouse.move(*p, steps=3)
        page.mouse.up()
        page.get_by_text("Selected galaxies:").wait_for(timeout=60000)
        page.get_by_text("Download selection (CSV)").wait_for(timeout=10000)
        page.wait_for_function("() => document.querySelectorAll('[data-testid=stImage] img').length > 0",
                               timeout=30000)
        frame.wait_for_function("() => window.__bigmap.ringsShown > 0", timeout=30000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "06-large-map-lasso.png"), full_page=True)
        assert "Traceback" not in page.content()
