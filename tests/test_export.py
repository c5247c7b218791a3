"""`python -m core export`: one HTML file that opens offline, from disk, and leaks nothing of the machine."""
from __future__ import annotations

import base64
import getpass
import gzip
import re
import socket
from pathlib import Path

import pytest

from core.analysis.export import build_html, public_ref
from core.cli.main import main
from core.store import cache as store
from tests.browser_fixtures import CHROMIUM, chromium

TIGHT, LOOSE = "Unbarred Tight Spiral", "Unbarred Loose Spiral"


def full_run(cache):
    return next(r for r in store.list_runs(cache) if r["kind"] == "features" and r.get("mode") == "full")


@pytest.fixture(scope="module")
def exported(dashboard_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "map.html"
    run = full_run(dashboard_cache)
    assert main(["export", "--run", run["key"], "--cache", str(dashboard_cache), "--out", str(out),
                 "--title", "Tight or Loose?", "--note", "the <b>cell</b> we argued about",
                 "--cell", TIGHT, LOOSE]) == 0
    return out, run, dashboard_cache


def test_one_file_with_everything_and_nothing_of_the_machine(exported):
    out, run, cache = exported
    page = out.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "no network reference of any kind"
    assert "@import" not in page and "url(http" not in page
    # what a reader of the file sees: the page's text, and its embedded data unpacked
    payload = re.search(r'id="payload">([^<]*)<', page).group(1)
    unpacked = gzip.decompress(base64.b64decode(payload)).decode("utf-8", "replace")
    text = re.sub(r'id="payload">[^<]*<', "", re.sub(r"data:image/\w+;base64,[A-Za-z0-9+/=]+", "", page))
    secrets = [str(cache), str(Path(cache).parent), str(Path(run["path"]).parent), str(Path(run["dataset"].split(":", 1)[1]).parent)]
    secrets += [w for w in (socket.gethostname(), getpass.getuser()) if len(w) >= 3]
    assert not [s for s in secrets for where in (text, unpacked) if re.search(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", where)]
    assert "galaxies" in unpacked and TIGHT in unpacked  # the check looked at real content
    assert "<b>cell</b>" not in page  # the note is text, not markup
    assert page.count('class="sheet"') >= 1  # thumbnails embedded as sprite sheets
    assert out.stat().st_size < 2_000_000


def test_local_paths_are_reduced_to_their_name():
    assert public_ref("folder:/home/ana/private/galaxies") == "folder:galaxies"
    assert public_ref("dir:/srv/models/dinov2-head/") == "dir:dinov2-head"
    assert public_ref("hf:facebook/dinov2-base") == "hf:facebook/dinov2-base"
    assert public_ref("h5:/data/G10.h5?split_from=hf:/mnt/x/hf") == "h5:G10.h5"


def test_bad_requests_are_one_line(dashboard_cache, tmp_path, capsys):
    assert main(["export", "--run", "nope", "--cache", str(dashboard_cache), "--out", str(tmp_path / "a.html")]) == 2
    run = full_run(dashboard_cache)
    assert main(["export", "--run", run["key"], "--cache", str(dashboard_cache), "--out", str(tmp_path / "b.html"),
                 "--highlight", "Spiral-ish"]) == 2
    err = capsys.readouterr().err
    assert "no features run 'nope'" in err and "unknown class 'Spiral-ish'" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_thumbnails_beyond_the_budget_are_a_sample(dashboard_cache):
    run = full_run(dashboard_cache)
    _, stats = build_html(run["key"], cache=dashboard_cache, thumb_budget_mb=0.005)
    assert 0 < stats["thumbnails"] < stats["galaxies"]
    _, none = build_html(run["key"], cache=dashboard_cache, thumbnails=False)
    assert none["thumbnails"] == 0 and none["bytes"] < stats["bytes"]


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found: apt-get install chromium")
def test_opens_offline_from_disk_with_hover_highlight_and_cells(exported):
    out, run, _ = exported
    with chromium() as browser:
        context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
        page.goto(out.as_uri())
        page.wait_for_function("document.body.dataset.painted", timeout=60_000)
        assert page.inner_text("h1") == "Tight or Loose?" and "the <b>cell</b>" in page.inner_text("#note")
        n = page.evaluate("galaxyMap.n")
        assert n == run["rows"]
        # the chosen cell is ringed: as many rings as the cell holds
        ringed = page.evaluate("galaxyMap.rings().length")
        assert ringed > 0 and f"{TIGHT} predicted as {LOOSE}" in page.inner_text("#rings")
        # hover a galaxy: its id, class, prediction and thumbnail
        box = page.locator("#mapbox").bounding_box()
        i = page.evaluate("galaxyMap.rings()[0]")
        sx, sy = page.evaluate(f"galaxyMap.screen({i})")
        page.mouse.move(box["x"] + sx, box["y"] + sy)
        tip = page.inner_text("#tip")
        gid = page.evaluate("document.getElementById('tip').dataset.id")
        assert gid in page.evaluate("galaxyMap.ids") and f"class: {TIGHT}" in tip and "predicted" in tip
        assert page.locator("#tip .thumb").count() == 1
        # highlight one class: a galaxy of another class turns grey, one of it keeps its colour
        legend = page.locator("#legend div", has_text=LOOSE)
        legend.click()
        grey = page.evaluate(f"""(() => {{ const m = galaxyMap; for (let i = 0; i < m.n; i++) {{
            const [x, y] = m.screen(i); const p = m.pixel(x, y); if (p[0] === 205 && p[1] === 205 && p[2] === 205) return true; }}
            return false; }})()""")
        assert grey
        # click another confusion cell: its galaxies are ringed instead
        page.locator(f"td.cell[data-t='{0}'][data-p='{0}']").click()
        assert page.evaluate("galaxyMap.rings().length") == int(page.locator("td.cell[data-t='0'][data-p='0']").inner_text())
        assert not errors, errors
        context.close()


def unpacked_header(page: str) -> dict:
    import json
    import struct

    raw = gzip.decompress(base64.b64decode(re.search(r'id="payload">([^<]*)<', page).group(1)))
    (n,) = struct.unpack("<I", raw[:4])
    return json.loads(raw[4:4 + n])


def test_the_dashboard_button_exports_what_the_user_chose(dashboard_cache):
    from dashboard.views.share import export_html

    run = full_run(dashboard_cache)
    page = export_html(str(dashboard_cache), run["key"], None, "tsne", "My title", "my note", (LOOSE,),
                       (TIGHT, LOOSE), ()).decode()
    header = unpacked_header(page)
    assert header["title"] == "My title" and header["note"] == "my note"
    assert header["ring_label"] == f"{TIGHT} predicted as {LOOSE}" and header["rings"]
    assert header["highlight"] == [header["classes"].index(LOOSE)]


@pytest.mark.slow
def test_the_map_view_offers_the_export(dashboard_cache, monkeypatch):
    from tests.test_dashboard import run_app

    monkeypatch.setenv("EXPLORER_CACHE", str(dashboard_cache))
    at = run_app()
    assert any(e.label == "Export this view as one HTML file" for e in at.expander)
