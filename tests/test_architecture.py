"""The architecture holds: core's layers import only downward, nothing imports in a cycle (imports
inside functions count), the dashboard uses core's public modules, and no `_private` name crosses a
module boundary. The contracts live in .importlinter; `lint-imports` checks them."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401  (required: a missing linter must fail here, not skip)

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "dashboard")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          timeout=120)


def test_contracts_are_kept():
    r = lint(REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def planted_copy(tmp_path: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    return tmp_path


def plant(path: Path, line: str) -> None:
    """Add an import inside a function, where cycles used to hide."""
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")


def test_an_upward_import_inside_a_function_breaks_the_layers(tmp_path):
    root = planted_copy(tmp_path)
    plant(root / "core/store/files.py", "from core.analysis import evaluation  # noqa")
    r = lint(root)
    assert r.returncode != 0
    assert "core.store.files -> core.analysis.evaluation" in r.stdout


def test_a_cycle_between_sibling_modules_is_caught(tmp_path):
    root = planted_copy(tmp_path)
    # knn is imported by evaluation (same layer); importing back closes a cycle the layers cannot see
    plant(root / "core/analysis/knn.py", "from core.analysis import evaluation  # noqa")
    r = lint(root)
    assert r.returncode != 0
    assert "no import cycles" in r.stdout and "BROKEN" in r.stdout


def test_the_dashboard_may_not_reach_into_training_or_the_cli(tmp_path):
    root = planted_copy(tmp_path)
    plant(root / "dashboard/views/common.py", "from core.train import finetune  # noqa")
    r = lint(root)
    assert r.returncode != 0 and "dashboard is not allowed to import core.train" in r.stdout


def project_imports():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                    yield path, node


def test_no_private_name_is_imported_across_modules():
    crossing = [f"{p.relative_to(REPO)}:{n.lineno} {a.name}" for p, n in project_imports() for a in n.names
                if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, crossing


def test_package_inits_say_what_the_layer_is_and_import_nothing():
    for init in sorted((REPO / "core").rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init} needs a docstring: what the layer is, what it may import"
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not imports, f"{init} imports {ast.unparse(imports[0])}: import the module's full path instead"


def test_paths_anchored_to_the_repository_survive_the_move(monkeypatch):
    """Modules moved a level down; what they find beside the repository must not move with them."""
    from core.cli.demo import EXAMPLES, GENERIC_WEIGHTS
    from core.extract import ray
    from core.store import cache as store

    monkeypatch.delenv("EXPLORER_CACHE", raising=False)
    assert store.cache_dir() == REPO / "cache"
    assert (GENERIC_WEIGHTS / "config.json").is_file()
    assert EXAMPLES == REPO.parent / "shared" / "data" / "galaxyzoo-decals-examples"
    assert Path(ray.REPO_ROOT) == REPO
