"""Outlier scores: planted outliers rank first, the 0-5 scale, caching, the CLI verb."""
import subprocess
import sys

import numpy as np
import pytest

from core.analysis import outliers as anomaly
from core.errors import UserError
from tests.conftest import subprocess_timeout
from tests.projection_fixtures import blobs, write_features

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def planted(n=300, d=16, n_out=5, seed=0):
    """Blobs plus ``n_out`` galaxies far from every blob, at the end."""
    X, labels = blobs(n, d, n_classes=3, spread=3.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = rng.normal(size=(n_out, d)).astype(np.float32) * 12
    return np.vstack([X, out]), np.concatenate([labels, np.full(n_out, 3)])


@pytest.mark.parametrize("method", ["knn", "iforest"])
def test_planted_outliers_score_highest_on_the_0_5_scale(method):
    X, labels = planted()
    s = anomaly.scores(X)[method].to_numpy()
    assert s.min() == pytest.approx(0) and s.max() == pytest.approx(5)
    top = set(np.argsort(-s)[:5].tolist())
    assert len(top & set(range(300, 305))) >= 4, (method, sorted(top))
    assert anomaly.ranks(s, labels == 3).max() <= 10  # all five among the ten weirdest


def test_scale_like_astronomaly():
    np.testing.assert_allclose(anomaly.scale_0_5([1, 2, 3]), [0, 2.5, 5])
    np.testing.assert_allclose(anomaly.scale_0_5([1, 2, 3], lower_is_weirder=True), [5, 2.5, 0])
    assert (anomaly.scale_0_5([4, 4, 4]) == 0).all()


def test_knn_distance_is_cosine():
    X = np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0]], np.float32)
    d = anomaly.knn_distance(X, k=1)
    cos = X @ X.T / np.outer(np.linalg.norm(X, axis=1), np.linalg.norm(X, axis=1))
    np.fill_diagonal(cos, -np.inf)
    np.testing.assert_allclose(d, 1 - cos.max(1), atol=1e-5)


def test_score_against_ranks_new_galaxies_without_changing_the_reference():
    X, _ = planted(n=200, n_out=0)
    new = np.vstack([X[:3] + 0.01, np.random.default_rng(5).normal(size=(2, 16)).astype(np.float32) * 12])
    s = anomaly.score_against(X, new)
    assert (s["knn_percentile"][:3] < 90).all() and (s["knn_percentile"][3:] == 100).all()
    assert (s["iforest_percentile"][3:] > 95).all() and (s["knn"][3:] > 5).all()


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="at least 3"):
        anomaly.scores(np.zeros((2, 4)))
    X = np.ones((10, 3), np.float32)
    X[2, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        anomaly.scores(X)


def test_cached_once_keyed_by_parameters(tmp_path):
    X, labels = planted(n=120)
    key = write_features(tmp_path, X, labels)
    assert anomaly.cached_anomalies(key, tmp_path) is None
    df, prov = anomaly.get_anomalies(key, tmp_path)
    assert len(df) == len(X) and list(df.columns) == ["row", "id", "knn", "iforest"]
    assert prov["kind"] == "anomalies" and prov["params"]["k"] == 10 and prov["features_run"] == key
    again, prov2 = anomaly.get_anomalies(key, tmp_path)
    assert prov2["created"] == prov["created"] and np.array_equal(again["knn"], df["knn"])
    other, prov3 = anomaly.get_anomalies(key, tmp_path, k=3)
    assert prov3["params"]["k"] == 3 and len(list((tmp_path / "anomalies").glob("*.parquet"))) == 2
    assert not list((tmp_path / "anomalies").glob(".*tmp*"))


@pytest.mark.slow
def test_cli_lists_the_weirdest_and_ranks_another_run(tmp_path):
    X, labels = planted(n=120)
    key = write_features(tmp_path, X, labels, class_names=["a", "b", "c", "odd"])
    other = write_features(tmp_path, X[-5:], labels[-5:], dataset="folder:photos")
    r = subprocess.run([sys.executable, "-m", "core", "anomalies", "--run", key, "--against", other, "--top", "5",
                        "--cache", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr
    top = r.stdout.split("weirdest 5")[1].splitlines()[1:6]
    assert sum("odd" in line for line in top) >= 4, r.stdout
    assert "class odd: 5 galaxies" in r.stdout and "5 galaxies of folder:photos ranked against it" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "core", "anomalies", "--run", "nope", "--cache", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert bad.returncode == 2 and "no cached features with key 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_ls_lists_cached_scores_and_clean_cache_removes_them(tmp_path, capsys):
    """`python -m core ls` (table and --json) lists the cached outlier scores; `make clean-cache`
    removes them with everything else core computed, and nothing outside those folders."""
    import json
    import shutil

    from core.__main__ import main

    X, labels = planted(n=60)
    key = write_features(tmp_path, X, labels)
    _, prov = anomaly.get_anomalies(key, tmp_path)
    assert main(["ls", "--json", "--cache", str(tmp_path)]) == 0
    listed = [r for r in json.loads(capsys.readouterr().out) if r["kind"] == "anomalies"]
    path = anomaly.anomalies_path(key, tmp_path)[0]
    assert len(listed) == 1 and listed[0]["features_run"] == key and listed[0]["path"] == str(path)
    assert listed[0]["key"] == path.stem and listed[0]["rows"] == len(X) and listed[0]["bytes"] > 0
    assert main(["ls", "--cache", str(tmp_path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("anomalies"))
    assert path.stem in line and f"outlier scores (knn+iforest, k=10) of {key}" in line and f"{len(X)} x 2" in line

    if shutil.which("make") is None:
        pytest.skip("make not installed")
    kinds = ["features", "projections", "evaluations", "checkpoints", "layers", "anomalies", "attention", "splits"]
    for kind in kinds:
        (tmp_path / kind).mkdir(exist_ok=True)
        (tmp_path / kind / "x.bin").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    r = subprocess.run(["make", "-s", "clean-cache", f"CACHE={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                       timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr
    assert not [k for k in kinds if (tmp_path / k).exists()] and (tmp_path / "notes.txt").read_text() == "mine"
