"""The dashboard in a real browser: `streamlit run` on a free localhost port and Debian's
Chromium (`/usr/bin/chromium`, no browser is downloaded) driven by Playwright.

One harness for the browser tests (`tests/test_browser.py`) and the bench scripts that
time or photograph the dashboard (`bench/dashboard.py`, `bench/bigmap_browser.py`,
`bench/demo_screenshots.py`, `bench/layers_screenshots.py`):

>>> with served(cache, log) as (proc, url), chromium() as browser:
...     page = browser.new_page(viewport={"width": 1500, "height": 1300})
...     page.goto(url)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cache: Path, log_path: Path, wait_s: float = 60.0):
    """`streamlit run dashboard/app.py -- --cache DIR` on a free localhost port, answering its
    health check; (process, url). Raises RuntimeError with the log's tail if it does not start."""
    port = free_port()
    streamlit = Path(sys.executable).with_name("streamlit")
    cmd = [str(streamlit) if streamlit.exists() else shutil.which("streamlit"), "run", "dashboard/app.py",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
           "--", "--cache", str(cache)]
    env = {k: v for k, v in os.environ.items() if k != "EXPLORER_CACHE"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return proc, url
        except Exception:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not start; log:\n{Path(log_path).read_text()[-2000:]}")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def served(cache: Path, log_path: Path):
    """``start_server`` as a context: yields (process, url), stops the server on the way out."""
    proc, url = start_server(cache, log_path)
    try:
        yield proc, url
    finally:
        stop_server(proc)


@contextlib.contextmanager
def chromium():
    """Debian's Chromium under Playwright (headless); yields the browser, closed on the way out."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
