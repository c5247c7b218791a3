"""The Failures view in a real browser (`streamlit run` + Debian's Chromium under Playwright)
on the demo: a suspicious card shows its suggested label, a failure slice opens and is ringed
on the map (and comes back from its link), the suspicious list downloads as CSV and parses."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.browser_fixtures import CHROMIUM
from tests.test_browser import ARTIFACTS, _serving, page_at

pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not found: apt-get install chromium (no browser is downloaded)")]

# How many galaxies a map trace whose name starts with `name` rings (-1: no such trace yet).
RINGED = """(name) => { for (const gd of document.querySelectorAll('.js-plotly-plot'))
  for (const t of (gd._fullData || [])) if ((t.name || '').startsWith(name) && t._length > 0) return t._length;
  return -1; }"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory, request):
    """(url, server log, the suspicious labels of the run the app opens on): the dashboard on the demo
    cache, that run's suspicious labels cached first (as `python -m core failures` leaves them)."""
    from core.analysis.label_issues import label_issues
    from core.store import cache as store

    cache = Path(os.environ.get("DASHBOARD_BROWSER_CACHE") or request.getfixturevalue("demo_cache")["cache"])
    run = next(r for r in store.list_runs(cache) if r["kind"] == "features" and r.get("mode") == "full"
               and r["dataset"].startswith("synthetic:"))  # the run the app opens on
    issues = label_issues(run["key"], cache)
    for url, log in _serving(cache, tmp_path_factory.mktemp("failures-browser")):
        yield url, log, issues


def test_failures_view_suggested_label_slice_ringed_and_csv(demo, tmp_path):
    url, log, issues = demo
    first = issues.iloc[0]
    with page_at(log, "failure-failures-view.png", 1400) as page:
        page.goto(f"{url}/?view=Failures")
        card = page.locator("[data-testid=stCaptionContainer]").filter(has_text="→ suggested").first
        card.wait_for(timeout=45000)
        text = card.text_content()
        assert str(first["id"]) in text, text
        assert f"given {first['given']} → suggested {first['suggested']}" in text, text
        assert first["suggested"] != first["given"]

        # the CSV of the suspicious list: downloaded, parsed, most suspicious first as on the page
        with page.expect_download(timeout=20000) as dl:
            page.get_by_role("button", name=re.compile("Download the suspicious")).click()
        path = tmp_path / "suspicious.csv"
        dl.value.save_as(path)
        csv = pd.read_csv(path)
        assert {"id", "given_label", "suggested_label", "score"} <= set(csv.columns), list(csv.columns)
        assert len(csv) == len(issues)
        assert str(csv["id"].iloc[0]) == str(first["id"]) and csv["suggested_label"].iloc[0] == first["suggested"]

        # a failure slice: click its sentence; its galaxies are ringed on the map, as many as it holds
        options = page.locator("[data-testid=stRadio] label").filter(has_text="× the rate elsewhere")
        options.first.wait_for(timeout=45000)
        option = options.nth(1) if options.count() > 1 else options.first
        sentence = option.text_content()
        n = int(re.search(r"([\d,]+) galaxies", sentence).group(1).replace(",", ""))
        option.click()
        page.wait_for_function(f"() => ({RINGED})('slice') === {n}", timeout=30000)
        assert "slice=" in page.url, page.url  # the chosen slice is in the link ...
        page.goto(page.url)  # ... and opening the link rings it again
        page.wait_for_function(f"() => ({RINGED})('slice') === {n}", timeout=45000)
        page.get_by_text("ringed on the map").first.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "05-failures-slice.png"))
        assert "Traceback" not in page.content()
