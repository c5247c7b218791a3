"""Extraction -> parquet cache -> `ls`, through the CLI a user runs."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import core.extract.batches as batches
import core.extract.features as features
from core.store import cache as store
from tests.conftest import subprocess_timeout
from tests.test_sources import write_galaxy10_h5

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cache=None, check=True):
    cmd = [sys.executable, "-m", "core", *args] + (["--cache", str(cache)] if cache else [])
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


@pytest.mark.slow
def test_extract_real_photos_listed_by_ls(tmp_path, checkpoints, examples_dir):
    ck = checkpoints["dinov2-head"]
    r = cli("extract", "--dataset", f"folder:{examples_dir}", "--model", f"dir:{ck}", cache=tmp_path)
    assert "60 images ->" in r.stdout
    runs = json.loads(cli("ls", "--json", cache=tmp_path).stdout)
    assert len(runs) == 1
    run = runs[0]
    assert run["rows"] == 60 and run["dim"] == 32 and run["kind"] == "features"
    assert run["mode"] == "full" and run["pooling"] == "cls" and run["family"] == "dinov2" and run["has_head"]
    assert run["dataset"] == f"folder:{examples_dir.resolve()}"
    table = pq.read_table(run["path"])
    assert table.column_names[:8] == ["row", "id", "split", "label", "embedding", "pred", "confidence", "probs"]
    assert "meta_galaxy_zoo_answer" in table.column_names
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    probs = np.stack(table.column("probs").to_numpy(zero_copy_only=False))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(1), table.column("pred").to_numpy())
    assert table.column("id").to_pylist()[0] == "images/decals-9_a-1_0.jpg"
    assert {"versions", "device", "dtype", "dataset_fingerprint", "model_fingerprint", "created", "seconds"} <= set(run)
    # the human table names the run too
    assert "60 x 32" in cli("ls", cache=tmp_path).stdout
    # an identical request is a cache hit
    r = cli("extract", "--dataset", f"folder:{examples_dir}", "--model", f"dir:{ck}", cache=tmp_path)
    assert r.stdout.startswith("cache hit")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov2", "vit", "beit", "swinv2"])
def test_every_family_with_and_without_head(tmp_path, checkpoints, family):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=30)
    for name in (family, family + "-head"):
        path, prov, hit = features.extract(f"h5:{h5}", f"dir:{checkpoints[name]}", split="test",
                                           cache=tmp_path / "cache", progress=False, log=lambda *_: None)
        t = pq.read_table(path)
        assert not hit and t.num_rows == 10 and set(t.column("split").to_pylist()) == {"test"}
        assert prov["pooling"] == ("pooler" if family in ("swinv2", "beit") else "cls")  # what its classifier reads
        assert ("pred" in t.column_names) == name.endswith("head") == prov["has_head"]
        assert "meta_redshift" in t.column_names


def test_cache_hit_loads_no_model_and_corrupt_file_is_recomputed(tmp_path, checkpoints, monkeypatch):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=20)
    args = dict(dataset_ref=f"h5:{h5}", model_ref=f"dir:{checkpoints['vit']}", cache=tmp_path / "c", progress=False,
                log=lambda *_: None)
    path, _, hit = features.extract(**args)
    assert not hit

    def boom(*a, **k):
        raise AssertionError("a cache hit must not load the model")

    with monkeypatch.context() as m:
        m.setattr(batches, "load_checkpoint", boom)
        assert features.extract(**args)[2] is True

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, e.g. by a full disk
    assert store.list_runs(tmp_path / "c") == []
    path2, prov, hit = features.extract(**args)
    assert not hit and path2 == path and pq.read_table(path).num_rows == 20

    flipped = bytearray(path.read_bytes())
    flipped[200:260] = bytes(60)  # damage inside a data page, footer intact
    path.write_bytes(bytes(flipped))
    # a hit reads footers only, so page damage is found by the full check that `ls --verify`
    # and `extract --verify` run, and then recomputed
    assert features.cached(path) is not None and features.cached(path, verify=True) is None
    r = cli("ls", "--verify", cache=tmp_path / "c", check=False)
    assert r.returncode == 1 and f"damaged: {path}" in r.stderr and "checksum" in r.stderr.lower()
    assert features.extract(**args, verify=True)[2] is False
    assert store.verify(path) is None and cli("ls", "--verify", cache=tmp_path / "c").returncode == 0


def test_two_identical_requests_compute_once(tmp_path, checkpoints, monkeypatch):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=20)
    loads = []
    real = batches.load_checkpoint

    def counting(*a, **k):
        loads.append(1)
        time.sleep(0.5)  # make the overlap certain
        return real(*a, **k)

    monkeypatch.setattr(batches, "load_checkpoint", counting)
    results = []

    def go():
        results.append(features.extract(f"h5:{h5}", f"dir:{checkpoints['dinov2']}", cache=tmp_path / "c",
                                         progress=False, log=lambda *_: None))

    threads = [threading.Thread(target=go) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(loads) == 1
    assert sorted(r[2] for r in results) == [False, True]


SLOW_EXTRACT = """
import sys, time
import core.data.h5 as h5
delay, orig = float(sys.argv[1]), h5.H5Dataset._load
def slow(self, rows):
    time.sleep(delay)
    return orig(self, rows)
h5.H5Dataset._load = slow
from core.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def start_slow_cli(args: list, delay: float) -> subprocess.Popen:
    """`python -m core ARGS` in a child process whose h5 batches each take ``delay`` s longer
    to read, so a test can kill it mid-run."""
    return subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, str(delay), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_killed_extraction_leaves_nothing_complete_and_rerun_finishes(tmp_path, checkpoints):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=200)
    cache = tmp_path / "c"
    args = ["extract", "--dataset", f"h5:{h5}", "--model", f"dir:{checkpoints['dinov2']}", "--batch-size", "8",
            "--cache", str(cache)]
    proc = start_slow_cli(args, 0.3)
    deadline = time.time() + 240  # a loaded machine needs long to import torch; the loop ends at the first row group
    while time.time() < deadline and not list((cache / "features").glob(".*.tmp-*")):
        time.sleep(0.05)
    time.sleep(0.5)  # some row groups are written by now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((cache / "features").glob(".*.tmp-*")), "the run should have been killed mid-write"
    assert store.list_runs(cache) == []
    assert not list((cache / "features").glob("*.parquet"))
    cli(*args)
    runs = store.list_runs(cache)
    assert len(runs) == 1 and runs[0]["rows"] == 200


@pytest.mark.parametrize("args,expect", [
    (["extract", "--dataset", "galaxy10", "--model", "dir:/x"], "no prefix"),
    (["extract", "--dataset", "s3:bucket/x", "--model", "dir:/x"], "unknown dataset prefix"),
    (["extract", "--dataset", "folder:/no/such/dir", "--model", "dir:/x"], "does not exist"),
    (["extract", "--dataset", "h5:/no/such.h5", "--model", "dir:/x"], "not found"),
    (["extract", "--dataset", "synthetic:galaxy10?n=4&size=32", "--model", "hf:nobody/none"], "could not reach"),
    (["extract", "--dataset", "synthetic:galaxy10?n=4&size=32", "--model", "dir:/no/such"], "no config.json"),
    (["extract", "--dataset", "synthetic:galaxy10", "--model", "dir:/x", "--pooling", "max"], "invalid choice"),
    (["extract", "--model", "dir:/x"], "required"),
    (["frobnicate"], "invalid choice"),
])
@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(args, expect, tmp_path):
    r = cli(*args, check=False)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) <= 3


@pytest.mark.slow
def test_every_verb_has_help():
    from core.__main__ import VERBS

    top = cli("--help").stdout
    for verb in VERBS:  # listed with a sentence (beside it, or wrapped below it), not just named
        assert re.search(rf"^ +{verb}(?: +\w|\n {{6,}}\w)", top, re.M), f"no help line for {verb}:\n{top}"
        assert "usage: python -m core " + verb in cli(verb, "--help").stdout
