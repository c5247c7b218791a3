"""`extract --engine ray` on a local Ray (2 CPUs, small object store, no dashboard),
one cluster for the whole test session: same result as the in-process engine, a
killed driver resumes with only the missing parts, bad images skipped and named."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import core.extract.features as features
from core.store import cache as store
from core.store import shards
from tests.conftest import subprocess_timeout
from tests.test_extract import REPO
from tests.test_shards import QUIET, bad_folder, embeddings

import ray  # noqa: E402
SYNTHETIC = "synthetic:galaxy10?n=2000&size=64&seed=7"


@pytest.fixture(scope="session")
def ray_cluster():
    from core.extract import ray as ray_engine

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    connected = ray_engine.connect(num_cpus=2, object_store_mb=128)
    yield connected.get_runtime_context().gcs_address
    connected.shutdown()


@pytest.fixture(scope="module")
def demo_generic(tmp_path_factory):
    """The demo's own generic checkpoint (random-init DINOv2 of the demo architecture)."""
    from core.cli.demo import build_generic

    cache = tmp_path_factory.mktemp("demo-ckpt")
    return f"dir:{build_generic(cache)}"


def assert_same_run(got, want):
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("label").equals(want.column("label"))
    if "pred" in want.column_names:
        assert got.column("pred").equals(want.column("pred"))
    assert np.allclose(embeddings(got), embeddings(want), atol=1e-4)


@pytest.mark.slow
def test_ray_engine_matches_in_process(tmp_path, ray_cluster, demo_generic, checkpoints):
    for model in (demo_generic, f"dir:{checkpoints['dinov2-head']}"):
        local, _, _ = features.extract(SYNTHETIC, model, cache=tmp_path / "local", split="test", **QUIET)
        path, prov, hit = features.extract(SYNTHETIC, model, cache=tmp_path / "ray", split="test", engine="ray",
                                           shard_rows=150, **QUIET)
        assert not hit and path.is_dir() and path.name == local.stem
        assert prov["engine"] == "ray" and prov["rows"] == 400 and prov["parts"] == 3
        assert prov["device"].startswith("cpu") and prov["ray"]["actors"] == 1
        assert_same_run(store.read_table(path), pq.read_table(local))
    runs = store.list_runs(tmp_path / "ray")
    assert sorted(r["rows"] for r in runs) == [400, 400] and all(r["engine"] == "ray" for r in runs)


@pytest.mark.slow
def test_bad_image_skipped_and_named_like_in_process(tmp_path, ray_cluster, checkpoints):
    (tmp_path / "photos").mkdir()
    ref, bad = bad_folder(tmp_path / "photos")
    model = f"dir:{checkpoints['dinov2-head']}"
    local, lprov, _ = features.extract(ref, model, cache=tmp_path / "a", batch_size=4, **QUIET)
    logged = []
    path, prov, _ = features.extract(ref, model, cache=tmp_path / "b", batch_size=4, engine="ray", progress=False,
                                     log=logged.append)
    assert prov["skipped"] == lprov["skipped"] == [{"file": bad, "reason": "unreadable (UnidentifiedImageError)"}]
    assert prov["rows"] == 11 and any(bad in line for line in logged)
    assert_same_run(store.read_table(path), pq.read_table(local))


@pytest.mark.slow
def test_killed_ray_driver_resumes_with_only_missing_parts(tmp_path, ray_cluster, demo_generic):
    cache = tmp_path / "c"
    dataset = "synthetic:galaxy10?n=600&size=64&seed=7"
    args = [sys.executable, "-m", "core", "extract", "--dataset", dataset, "--model", demo_generic,
            "--engine", "ray", "--address", ray_cluster, "--batch-size", "12", "--shard-rows", "60",
            "--cache", str(cache)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done = []
    while time.time() < deadline and len(done) < 2 and proc.poll() is None:
        done = sorted((cache / "features").glob("*/part-*.parquet"))
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(done) >= 2, "the run should have written parts before it was killed"
    folder = done[0].parent
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}
    assert len(kept) < 10 and not (folder / shards.MANIFEST).exists(), "killed mid-run"
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(kept)} part(s) already done" in r.stdout
    assert f"{600 - 60 * len(kept)} images ->" in r.stdout
    assert {p: (folder / p).stat().st_mtime_ns for p in kept} == kept
    local, _, _ = features.extract(dataset, demo_generic, cache=tmp_path / "local", **QUIET)
    assert_same_run(store.read_table(folder), pq.read_table(local))
