"""Screenshots for the README: the Compare view (generic map beside the finetuned one) on a demo cache.

    PYTHONPATH=. python bench/demo_screenshots.py --cache DIR   # a cache `python -m core demo` built

Starts `streamlit run` on localhost and drives Debian's Chromium (no browser is
downloaded); writes docs/demo-compare.png (the two maps and the per-class kNN table).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python bench/demo_screenshots.py` from anywhere finds tests/ and core/

from tests.browser_fixtures import chromium, served  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", default=str(REPO / "docs" / "demo-compare.png"))
    a = ap.parse_args()
    log = Path(tempfile.mkdtemp()) / "server.log"
    with served(Path(a.cache), log) as (_, url), chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        page.goto(f"{url}/?view=Compare", timeout=120_000)
        page.get_by_text("Which classes finetuning separated").wait_for(timeout=180_000)
        page.wait_for_timeout(3000)
        tmp = Path(a.out).with_suffix(".tmp.png")
        page.screenshot(path=str(tmp), full_page=True)
        tmp.replace(a.out)
    print(f"wrote {a.out}")

if __name__ == "__main__":
    main()
