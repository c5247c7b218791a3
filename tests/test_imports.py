"""A cache hit costs nothing: reading the cache imports neither torch nor the map and
learning libraries, only computing does (docs/CONTRACTS.md, "Imports").

Modules on the cache-hit path (the CLI verbs, `core.extract.features`, `core.models.load`,
`core.analysis.maps.projection`, `core.analysis.maps.store`, the dashboard) import torch, transformers,
openTSNE, scikit-learn, umap-learn and scipy inside the functions that compute;
compute-only modules (`core.train.finetune`, `core.analysis.knn`, `core.analysis.maps.tsne_neighbours`, ...)
import them at the top and are themselves imported inside those functions.
The demo's own cache hit and the dashboard's first view are checked in
tests/test_demo.py.
"""
import pkgutil
import subprocess
import sys

import pytest

import dashboard.views
from tests.conftest import REPO, subprocess_timeout

HEAVY = ("torch", "transformers", "openTSNE", "sklearn", "umap", "scipy")

# every module a cache hit goes through, and the dashboard's
CACHE_HIT_PATH = [
    "core.__main__", "core.cli.demo", "core.extract.features", "core.models.load", "core.models.pooling", "core.models.timm",
    "core.analysis.maps.store", "core.analysis.maps.projection", "core.analysis.maps.quality", "core.cli.ls", "core.analysis.evaluation", "core.analysis.layers",
    "core.extract.layers", "core.analysis.outliers", "core.analysis.attention", "core.extract.upload", "core.data.sources",
    "dashboard.data", *(f"dashboard.views.{m.name}" for m in pkgutil.iter_modules(dashboard.views.__path__)),
]


def heavy_modules_after(code: str, env: dict | None = None) -> list[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                       timeout=subprocess_timeout(), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1].split() if r.stdout.strip() else []


def test_modules_on_the_cache_hit_path_import_no_heavy_library():
    assert heavy_modules_after("\n".join(f"import {m}" for m in CACHE_HIT_PATH)) == []


@pytest.mark.slow
def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a compute-only module does import them."""
    assert "openTSNE" in heavy_modules_after("import core.analysis.maps.tsne_neighbours")
