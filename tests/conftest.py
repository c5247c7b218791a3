import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "galaxyzoo-decals-examples"
TEST_TIMEOUT_S = 1200.0  # pytest.ini's `timeout`; replaced by the value this run uses in pytest_configure
MARGIN_S = 60.0  # a child process is stopped this long before the test's own timeout


def pytest_configure(config):
    global TEST_TIMEOUT_S
    TEST_TIMEOUT_S = float(config.getoption("timeout", None) or config.getini("timeout") or TEST_TIMEOUT_S)


def pytest_collection_modifyitems(config, items):
    """Tests that need the built demo are `demo` tests wherever they are written."""
    for item in items:
        if "demo_cache" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.demo)


def subprocess_timeout() -> float:
    """Seconds a child process may run inside one test (fixture setup included): under the
    per-test timeout, so a hung child fails its test with its own output, not a pytest-timeout kill."""
    return max(TEST_TIMEOUT_S - MARGIN_S, MARGIN_S)


@pytest.fixture
def examples_dir():
    if not (EXAMPLES / "labels.csv").is_file():
        pytest.skip(f"real DECaLS examples not found at {EXAMPLES} (shared/ data folder absent)")
    return EXAMPLES


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny random checkpoints of every family, with and without a 10-class head."""
    from tests.checkpoint_fixtures import FAMILIES, make_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for fam in FAMILIES:
        out[fam] = make_checkpoint(root, fam)
        out[fam + "-head"] = make_checkpoint(root, fam, num_labels=10)
    return out


@pytest.fixture(scope="session")
def dashboard_cache(tmp_path_factory):
    """The dashboard tests' cache (tests.dashboard_fixtures.build_cache, 300 galaxies), built once.
    Tests that add to it remove what they added."""
    from tests.dashboard_fixtures import build_cache

    return build_cache(tmp_path_factory.mktemp("dashboard"), n=300)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """The real demo, built once per test session into a temp cache by the command users run."""
    import subprocess
    import sys
    import time

    cache = tmp_path_factory.mktemp("demo-cache")
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "core", "demo", "--cache", str(cache)], cwd=REPO,
                       capture_output=True, text=True, timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr[-3000:]
    return {"cache": cache, "stdout": r.stdout, "stderr": r.stderr, "seconds": time.time() - t}
