"""Sharded features runs (a folder of parts + manifest): same result as one file, read
by every consumer like one file, resumable after SIGKILL; cache hits read only footers."""
import json
import os
import signal
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import core.extract.features as features
from core.store import cache as store
from core.store import shards
from tests.test_extract import cli, start_slow_cli
from tests.test_sources import write_galaxy10_h5

QUIET = dict(progress=False, log=lambda *_: None)


def embeddings(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


@pytest.mark.slow
def test_sharded_run_equals_single_file_and_reads_like_one(tmp_path, checkpoints):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=50)
    model = f"dir:{checkpoints['dinov2-head']}"
    one, _, _ = features.extract(f"h5:{h5}", model, cache=tmp_path / "one", batch_size=8, **QUIET)
    path, prov, hit = features.extract(f"h5:{h5}", model, cache=tmp_path / "c", batch_size=8, shard_rows=20, **QUIET)
    assert not hit and path.is_dir() and path.name == one.stem  # same cache key, a folder instead of a file
    assert sorted(p.name for p in path.iterdir()) == ["_manifest.json"] + [shards.part_name(k) for k in range(3)]
    assert prov["rows"] == 50 and prov["parts"] == 3 and prov["dim"] == 32 and prov["engine"] == "local"
    a, b = pq.read_table(one), store.read_table(path)
    assert b.column_names == a.column_names and b.equals(a)
    assert pq.read_table(path).equals(a)  # plain pyarrow reads the folder too (manifest and temp files ignored)
    # ls, evaluate and project find and read it through the cache like a single file
    runs = json.loads(cli("ls", "--json", cache=tmp_path / "c").stdout)
    assert [(r["key"], r["rows"], r["parts"], r["path"]) for r in runs] == [(path.name, 50, 3, str(path))]
    assert "50 x 32" in cli("ls", cache=tmp_path / "c").stdout
    r = cli("evaluate", cache=tmp_path / "c")
    assert path.name in r.stdout and "macro F1" in r.stdout
    r = cli("project", "--run", path.name, "--method", "pca", cache=tmp_path / "c")
    proj = [x for x in store.list_runs(tmp_path / "c") if x["kind"] == "projection"]
    assert len(proj) == 1 and proj[0]["rows"] == 50 and proj[0]["features_run"] == path.name
    # a second request is a hit on the folder; a damaged part is found by --verify and recomputed alone
    assert features.extract(f"h5:{h5}", model, cache=tmp_path / "c", shard_rows=20, **QUIET)[2] is True
    part1 = path / shards.part_name(1)
    raw = bytearray(part1.read_bytes())
    raw[300:360] = bytes(60)
    part1.write_bytes(bytes(raw))
    before = {k: (path / shards.part_name(k)).stat().st_mtime_ns for k in (0, 2)}
    assert cli("ls", "--verify", cache=tmp_path / "c", check=False).returncode == 1
    _, prov, hit = features.extract(f"h5:{h5}", model, cache=tmp_path / "c", shard_rows=20, verify=True, **QUIET)
    assert not hit and prov["resumed_parts"] == 2
    assert {k: (path / shards.part_name(k)).stat().st_mtime_ns for k in (0, 2)} == before
    assert store.read_table(path).equals(a)


def test_cache_hit_reads_footers_not_pages(tmp_path, checkpoints, monkeypatch):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=30)
    args = dict(dataset_ref=f"h5:{h5}", model_ref=f"dir:{checkpoints['vit']}", **QUIET)
    single, _, _ = features.extract(**args, cache=tmp_path / "a")
    sharded, _, _ = features.extract(**args, cache=tmp_path / "b", shard_rows=10)

    def no_pages(*a, **k):
        raise AssertionError("a cache hit must not read data pages")

    monkeypatch.setattr(pq, "read_table", no_pages)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", no_pages)
    monkeypatch.setattr(shards, "read_table", no_pages)
    assert features.extract(**args, cache=tmp_path / "a")[:3:2] == (single, True)
    assert features.extract(**args, cache=tmp_path / "b")[:3:2] == (sharded, True)
    # a part that went missing is not a hit
    (sharded / shards.part_name(1)).unlink()
    assert features.cached(sharded) is None and store.list_runs(tmp_path / "b") == []


@pytest.mark.slow
def test_killed_sharded_run_resumes_with_only_missing_parts(tmp_path, checkpoints):
    h5 = write_galaxy10_h5(tmp_path / "g10.h5", n=120)
    cache = tmp_path / "c"
    args = ["extract", "--dataset", f"h5:{h5}", "--model", f"dir:{checkpoints['dinov2-head']}", "--batch-size", "8",
            "--shard-rows", "24", "--cache", str(cache)]
    proc = start_slow_cli(args, 0.25)
    deadline = time.time() + 120
    done = []
    while time.time() < deadline and len(done) < 2:
        done = sorted((cache / "features").glob("*/part-*.parquet"))
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = done[0].parent
    assert 2 <= len(done) < 5 and not (folder / shards.MANIFEST).exists(), "killed mid-run"
    assert store.list_runs(cache) == []  # an unfinished run is not listed
    kept = {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("part-*.parquet"))}
    r = cli(*args)
    assert f"{len(kept)} part(s) already done" in r.stdout
    assert f"{120 - 24 * len(kept)} images ->" in r.stdout  # only the missing rows were computed
    assert {p: (folder / p).stat().st_mtime_ns for p in kept} == kept
    runs = store.list_runs(cache)
    assert len(runs) == 1 and runs[0]["rows"] == 120 and runs[0]["parts"] == 5
    ref, _, _ = features.extract(f"h5:{h5}", f"dir:{checkpoints['dinov2-head']}", cache=tmp_path / "ref",
                                 batch_size=8, **QUIET)
    got, want = store.read_table(folder), pq.read_table(ref)
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("pred").equals(want.column("pred"))
    assert np.allclose(embeddings(got), embeddings(want), atol=1e-5)


def bad_folder(root, n=12):
    """n small photos with one undecodable file in the middle, as a folder: dataset."""
    rng = np.random.default_rng(1)
    files = []
    for i in range(n):
        name = f"g{i:03d}.png"
        if i == n // 2:
            (root / name).write_bytes(b"\x89PNG this is not a png")
        else:
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name)
        files.append(name)
    import pandas as pd

    pd.DataFrame({"file": files, "label": np.arange(n) % 10}).to_csv(root / "labels.csv", index=False)
    return f"folder:{root}?image_size=32", files[n // 2]


@pytest.mark.parametrize("shard_rows", [None, 5])
def test_bad_image_mid_stream_is_skipped_and_named(tmp_path, checkpoints, shard_rows):
    (tmp_path / "photos").mkdir()
    ref, bad = bad_folder(tmp_path / "photos")
    logged = []
    path, prov, _ = features.extract(ref, f"dir:{checkpoints['dinov2']}", cache=tmp_path / "c", batch_size=4,
                                     shard_rows=shard_rows, progress=False, log=logged.append)
    assert prov["skipped"] == [{"file": bad, "reason": "unreadable (UnidentifiedImageError)"}]
    assert prov["rows"] == 11 and bad not in store.read_table(path).column("id").to_pylist()
    assert any(bad in line and "skipped 1" in line for line in logged)
