"""The one get-or-compute helper (core.store.compute): a miss computes once and writes
atomically with its provenance, a hit computes nothing, two requests at once compute once,
a damaged file is recomputed, and a failed computation leaves nothing behind."""
import threading
import time

import pyarrow as pa
import pytest

from core.store import compute as cc
from core.store import files


def _table(n=5):
    return pa.table({"row": pa.array(range(n), pa.int64()), "v": pa.array([float(i) for i in range(n)])})


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_a_miss_computes_and_writes_then_a_hit_computes_nothing(tmp_path):
    path = tmp_path / "anomalies" / "k.parquet"
    calls = []

    def compute():
        calls.append(1)
        return _table(), {"kind": "anomalies", "rows_seen": 5}

    (df, prov), was_cached = cc.cached_parquet(path, compute)
    assert not was_cached and len(calls) == 1
    assert df["v"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert prov["kind"] == "anomalies" and prov["rows"] == 5 and prov["key"] == "k" and prov["path"] == str(path)
    assert prov["seconds"] >= 0 and prov["created"].endswith("+00:00")
    assert files.provenance(path)["created"] == prov["created"]  # stamped into the footer, not only returned

    (df2, prov2), was_cached = cc.cached_parquet(path, compute)
    assert was_cached and len(calls) == 1
    assert df2.equals(df) and prov2 == prov
    assert _leftovers(path.parent) == []


def test_two_requests_at_once_compute_once(tmp_path):
    path = tmp_path / "layers" / "analysis.json"
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.3)  # the second request arrives while this one computes
        return {"kind": "layer-scores", "scores": [1, 2, 3]}

    threads = [threading.Thread(target=lambda: results.append(cc.cached_json(path, compute))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(was for _, was in results) == [False, True, True]
    assert len({str(r) for r, _ in results}) == 1  # all three see the same result


def test_a_damaged_file_is_recomputed(tmp_path):
    path = tmp_path / "projections" / "k.parquet"
    cc.cached_parquet(path, lambda: (_table(50), {"kind": "projection"}))
    path.write_bytes(path.read_bytes()[:-40])  # truncated: the footer no longer reads
    (df, prov), was_cached = cc.cached_parquet(path, lambda: (_table(7), {"kind": "projection"}))
    assert not was_cached and len(df) == 7 and prov["rows"] == 7

    path_json = tmp_path / "layers" / "a.json"
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_json.write_text('{"kind": "layer-sc')  # half a file
    result, was_cached = cc.cached_json(path_json, lambda: {"kind": "layer-scores"})
    assert not was_cached and result["kind"] == "layer-scores"


def test_a_failed_computation_leaves_nothing_and_the_next_request_computes(tmp_path):
    path = tmp_path / "anomalies" / "k.parquet"

    def broken():
        raise ValueError("out of memory, say")

    with pytest.raises(ValueError):
        cc.cached_parquet(path, broken)
    assert not path.exists() and _leftovers(path.parent) == []
    # the lock was released: a new request does not wait an hour
    (df, _), was_cached = cc.cached_parquet(path, lambda: (_table(3), {"kind": "anomalies"}), timeout=5)
    assert not was_cached and len(df) == 3


def test_a_computation_that_writes_itself_passes_its_value_through(tmp_path):
    """e.g. a sharded features run: compute writes the folder, the helper only locks and re-checks."""
    path = tmp_path / "features" / "k.parquet"

    def read(p):
        prov = files.provenance(p) if p.exists() else None
        return (p, prov) if prov else None

    def compute():
        files.write_parquet(path, _table(4), {"kind": "features"})
        return path, {"kind": "features", "fresh": True}

    (out, prov), was_cached = cc.get_or_compute(path, read, compute)
    assert not was_cached and out == path and prov["fresh"]
    (out, prov), was_cached = cc.get_or_compute(path, read, compute)
    assert was_cached and prov["rows"] == 4 and "fresh" not in prov


def test_a_write_that_does_not_read_back_is_an_error(tmp_path):
    path = tmp_path / "x.json"
    with pytest.raises(RuntimeError, match="did not read back"):
        cc.get_or_compute(path, lambda p: None, lambda: {"a": 1}, lambda p, v: files.write_json(p, v))
