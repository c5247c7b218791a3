"""Screenshots of the Layers view and the Neighbours attention overlay for the README.

    python bench/layers_screenshots.py --cache cache     # after `python -m core demo`

Starts `streamlit run` on a free localhost port and drives Debian's Chromium
(no browser download); writes docs/dashboard-layers.png and docs/dashboard-attention.png.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]


def serve(cache: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("streamlit")), "run", "dashboard/app.py",
                             "--server.port", str(port), "--server.headless", "true", "--", "--cache", cache],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return proc, url
        except Exception:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("streamlit did not start")


def main():
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(ROOT / "cache"))
    p.add_argument("--galaxy", default="syn-000007")
    args = p.parse_args()
    proc, url = serve(args.cache)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
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
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print("wrote docs/dashboard-layers.png, docs/dashboard-attention.png")


if __name__ == "__main__":
    main()
