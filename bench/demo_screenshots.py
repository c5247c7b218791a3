"""Screenshots for the README: the Compare view (generic map beside the finetuned one) on a demo cache.

    PYTHONPATH=. python bench/demo_screenshots.py --cache DIR   # a cache `python -m core demo` built

Starts `streamlit run` on localhost and drives Debian's Chromium (no browser is
downloaded); writes docs/demo-compare.png (the two maps and the per-class kNN table).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, start_server

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", default=str(REPO / "docs" / "demo-compare.png"))
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.mkdtemp()) / "server.log"
    proc, url = start_server(Path(a.cache), log)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1250})
            page.goto(f"{url}/?view=Compare", timeout=120_000)
            page.get_by_text("Which classes finetuning separated").wait_for(timeout=180_000)
            page.wait_for_timeout(3000)
            tmp = Path(a.out).with_suffix(".tmp.png")
            page.screenshot(path=str(tmp), full_page=True)
            tmp.replace(a.out)
            browser.close()
        print(f"wrote {a.out}")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
