"""A damaged cached file is never silently dropped (issue 25 §2): `ls` lists it as damaged with the
command that recomputes it, `ls --verify` names it and exits 1, the dashboard names it in the
sidebar, and the named command recomputes it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from core.cli.main import main
from core.store import cache as store
from core.store import shards
from tests.features_fixtures import features_table, write_features

os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.test_dashboard import APP, ok  # noqa: E402

DATASET = "synthetic:test?n=40"


def _columns(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"id": [f"g{i:03d}" for i in range(n)], "split": ["train"] * (n // 2) + ["test"] * (n - n // 2),
            "label": rng.integers(0, 3, n), "embedding": rng.normal(size=(n, 8))}


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """A cache with one file of each kind: features (single file), a sharded features run,
    a map, outlier scores, suspicious labels, a kNN index, per-layer features and an evaluation."""
    from core.analysis.maps.store import get_projection
    from core.analysis.knn_index import get_index
    from core.analysis.maps.store import features_run
    from core.analysis.outliers import get_anomalies
    from core.analysis.label_issues import label_issues

    cache = tmp_path_factory.mktemp("intact")
    run = write_features(cache, _columns(40), dataset=DATASET)
    # the sharded run: two parts and a manifest, as the Ray engine writes it
    prov = {**{k: v for k, v in run.items() if k not in ("key", "path")}, "model": "demo:other"}
    table = features_table(_columns(40, seed=1))
    w = shards.ShardedWriter(cache / "features" / "5ba4dedf00000000", prov, 40, shard_rows=20)
    for k, (a, b) in enumerate(w.ranges):
        with w.part_writer(k, table.schema) as pw:
            pw.write(table.slice(a, b - a))
    w.finish(prov)
    get_projection(run["key"], "pca", cache, progress=False)
    get_anomalies(run["key"], cache)
    label_issues(run["key"], cache)
    get_index(features_run(run["key"], cache), "cosine", cache)
    layers = pa.table({"row": np.arange(40), "b1": np.zeros(40, np.float32)})
    store.write_parquet(store.path_for(cache, "layers", run["key"]), layers,
                        {"kind": "layers", "features_run": run["key"], "unit": "block", "layers": [1],
                         "kinds": ["cls"], "dataset": DATASET, "model": run["model"], "split": "all"})
    store.write_json(store.path_for(cache, "evaluations", run["key"], ".json"),
                     {"features_run": run["key"], "dataset": DATASET, "model": run["model"], "macro_f1": 0.5})
    assert store.list_damaged(cache) == []
    return cache, run


def _damage(cache, kind: str):
    """Truncate the one file of ``kind``; return (list_runs kind, the key ls must name)."""
    if kind == "sharded part":
        part = cache / "features" / "5ba4dedf00000000" / shards.part_name(1)
        part.write_bytes(part.read_bytes()[:300])
        return "features", "5ba4dedf00000000"
    folder, label = {"features": ("features", "features"), "map": ("projections", "projection"),
                     "scores": ("anomalies", "anomalies"), "per-layer": ("layers", "layers"),
                     "index": ("indexes", "knn-index"), "suspicious labels": ("label_issues", "label_issues"),
                     "evaluation": ("evaluations", "evaluation")}[kind]
    (path,) = [p for p in (cache / folder).iterdir() if p.suffix in (".parquet", ".json", ".faiss") and p.is_file()
               and not (p.suffix == ".json" and folder == "indexes")]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return label, path.stem


KINDS = ["features", "sharded part", "map", "scores", "suspicious labels", "index", "per-layer", "evaluation"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_is_listed_verified_and_shown(tmp_path, intact, kind, capsys, monkeypatch):
    cache = tmp_path / "c"
    shutil.copytree(intact[0], cache)
    label, key = _damage(cache, kind)
    runs = store.list_runs(cache)
    assert key not in {r["key"] for r in runs if r["kind"] == label}  # it does not read back...

    (bad,) = store.list_damaged(cache)  # ...and is listed as damaged, with the fix
    assert (bad["kind"], bad["key"]) == (label, key) and not bad.get("unfinished")
    if kind in ("features", "sharded part", "per-layer"):
        assert "python -m core extract --dataset" in bad["fix"] and "--model demo:" in bad["fix"]

    capsys.readouterr()
    assert main(["ls", "--cache", str(cache)]) == 0
    out = capsys.readouterr()
    (line,) = [ln for ln in out.out.splitlines() if key in ln and "DAMAGED" in ln]
    assert line.startswith(label) and bad["fix"] in line
    assert "1 damaged file" in out.err

    assert main(["ls", "--verify", "--cache", str(cache)]) == 1
    err = capsys.readouterr().err
    assert f"damaged: {bad['path']}" in err and "1 damaged" in err

    assert main(["ls", "--json", "--cache", str(cache)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in listed if r.get("damaged")] == [key]

    monkeypatch.setenv("EXPLORER_CACHE", str(cache))
    at = ok(AppTest.from_file(APP, default_timeout=60).run())
    (warning,) = [w.value for w in at.sidebar.warning]
    assert "1 cached file damaged" in warning and key in warning and bad["fix"] in warning


def test_unfinished_sharded_run_is_named_but_not_damaged(tmp_path, intact, capsys):
    cache = tmp_path / "c"
    shutil.copytree(intact[0], cache)
    (cache / "features" / "5ba4dedf00000000" / shards.MANIFEST).unlink()  # a killed (or running) extract
    (bad,) = store.list_damaged(cache)
    assert bad["unfinished"] and "to resume it" in bad["fix"]
    assert main(["ls", "--verify", "--cache", str(cache)]) == 0
    assert "unfinished: " in capsys.readouterr().err


def test_the_named_command_recomputes_a_damaged_map_and_scores(tmp_path, intact):
    from core.analysis.maps.store import get_projection
    from core.analysis.outliers import get_anomalies

    cache = tmp_path / "c"
    shutil.copytree(intact[0], cache)
    _damage(cache, "map")
    _damage(cache, "scores")
    assert len(store.list_damaged(cache)) == 2
    get_projection(intact[1]["key"], "pca", cache, progress=False)
    get_anomalies(intact[1]["key"], cache)
    assert store.list_damaged(cache) == []


def test_the_named_command_recomputes_damaged_features(tmp_path, examples_dir, checkpoints, capsys):
    import shlex

    cache = tmp_path / "c"
    args = ["extract", "--dataset", f"folder:{examples_dir}", "--model", f"dir:{checkpoints['vit']}",
            "--cache", str(cache)]
    assert main(args) == 0
    path = next((cache / "features").glob("*.parquet"))
    assert main(["project", "--run", path.stem, "--method", "pca", "--cache", str(cache)]) == 0
    path.write_bytes(path.read_bytes()[:1000])  # truncated, e.g. by a full disk
    (bad,) = store.list_damaged(cache)
    fix = bad["fix"].split("`")[1]  # the command ls prints, run as printed
    cmd = shlex.split(fix)
    assert cmd[:4] == ["python", "-m", "core", "extract"]
    assert main([*cmd[3:], "--cache", str(cache)]) == 0
    assert store.list_damaged(cache) == [] and path.stem in {r["key"] for r in store.list_runs(cache)}
