"""Screenshots of the Layers view and the Neighbours attention overlay for the README.

    python bench/layers_screenshots.py --cache cache     # after `python -m core demo`

Starts `streamlit run` on a free localhost port and drives Debian's Chromium
(no browser download); writes docs/dashboard-layers.png and docs/dashboard-attention.png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser_fixtures import chromium, served  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(ROOT / "cache"))
    p.add_argument("--galaxy", default="syn-000007")
    args = p.parse_args()
    log = Path(tempfile.mkdtemp()) / "server.log"
    with served(Path(args.cache), log) as (_, url), chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1150})
        page.goto(f"{url}/?view=Layers")
        page.get_by_text("Reading:").wait_for(timeout=120000)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(ROOT / "docs" / "dashboard-layers.png"))
        page.goto(f"{url}/?view=Neighbours&galaxy={args.galaxy}")
        page.get_by_text("rollout, all blocks").first.wait_for(timeout=120000)
        page.wait_for_timeout(2500)
        page.get_by_text("Where the models look").scroll_into_view_if_needed()
        page.screenshot(path=str(ROOT / "docs" / "dashboard-attention.png"))
    print("wrote docs/dashboard-layers.png, docs/dashboard-attention.png")

if __name__ == "__main__":
    main()
