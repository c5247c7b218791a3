"""Failure hunting (issue 21): suspicious labels, failure slices, the `failures` verb, and the
synthetic source's volunteer-like label noise whose truth is known."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest

from core.analysis import label_issues as li
from core.analysis.slices import find_slices
from core.cli.main import main
from tests.features_fixtures import write_features


def _mixture(n=600, d=16, classes=4, seed=0):
    """Gaussian classes that overlap a little: labels a linear probe gets ~90% right."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(0, 1.6, (classes, d))
    X = (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    return X, y


def _flip(y, rate, classes, seed):
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(y), int(rate * len(y)), replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, classes, len(rows))) % classes
    return noisy


def test_planted_noise_is_found_better_than_chance_and_no_worse_than_cleanlab():
    from cleanlab.filter import find_label_issues

    X, y = _mixture()
    noisy = _flip(y, 0.1, 4, seed=1)
    bad = noisy != y
    out = li.find_issues(X, noisy, 4)
    top = np.argsort(-out["score"], kind="stable")[:60]
    precision, recall = bad[top].mean(), (out["flagged"] & bad).sum() / bad.sum()
    assert precision >= 3 * bad.mean()  # chance is 0.1
    # cleanlab on the same kind of out-of-sample probabilities (the probe alone): one-sided
    P = li.probe_probs(X, noisy, 4)
    ranked = find_label_issues(noisy, P, return_indices_ranked_by="self_confidence")
    flagged = find_label_issues(noisy, P)
    assert precision >= bad[ranked[:60]].mean() - 0.05
    assert recall >= (flagged & bad).sum() / bad.sum() - 0.05
    assert set(np.flatnonzero(out["suggested"] != noisy)) >= set(np.flatnonzero(out["flagged"]))  # a flag names another class


def _planted(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"pitch_angle_deg": rng.uniform(5, 40, n), "brightness": rng.lognormal(8, 0.3, n),
                         "axis_ratio": rng.uniform(0.2, 1, n)})
    labels = rng.integers(0, 5, n)
    wrong = rng.random(n) < 0.12
    planted = (labels == 3) & (meta["pitch_angle_deg"].to_numpy() < 18)
    wrong[planted] = rng.random(planted.sum()) < 0.55
    return meta, labels, wrong, planted


def test_slices_find_a_planted_slice_and_say_it_in_words():
    meta, labels, wrong, planted = _planted()
    names = ["Round", "Cigar", "Barred", "Unbarred Loose", "Merging"]
    slices = find_slices(wrong, meta, labels, names)
    top = slices[0]
    got = np.zeros(len(wrong), bool)
    got[top["rows"]] = True
    f1 = 2 * (got & planted).sum() / (got.sum() + planted.sum())
    assert f1 >= 0.8 and top["kind"] == "metadata"
    assert top["rule"]["column"] == "pitch_angle_deg" and top["rule"]["class"] == "Unbarred Loose"
    assert top["description"].startswith("Unbarred Loose with pitch angle < ")
    assert "°:" in top["description"] and "wrong" in top["description"] and f"{top['n']} galaxies" in top["description"]
    assert top["ratio"] > 2 and top["p_value"] < 1e-6 and len(top["ids"]) == top["n"]


def test_a_three_galaxy_slice_does_not_top_the_list():
    meta, labels, wrong, planted = _planted(seed=3)
    brightest = np.argsort(meta["brightness"].to_numpy())[-3:]
    wrong[brightest] = True  # three galaxies, all wrong: the highest error rate of any range
    slices = find_slices(wrong, meta, labels, min_size=1)
    assert slices[0]["n"] > 50
    # alone, with no real slice beside it, three wrong galaxies are not significant
    rng = np.random.default_rng(0)
    wrong = rng.random(len(wrong)) < 0.12
    wrong[brightest] = True
    assert all(s["n"] > 3 for s in find_slices(wrong, meta, labels, min_size=1))


def test_slices_ring_a_cluster_of_wrong_galaxies_on_the_map():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (1500, 2))
    wrong = rng.random(1500) < 0.1
    inside = np.hypot(xy[:, 0] - 30, xy[:, 1] - 70) < 8
    wrong[inside] = rng.random(inside.sum()) < 0.85
    top = find_slices(wrong, None, xy=xy)[0]
    assert top["kind"] == "map" and np.hypot(top["region"]["x"] - 30, top["region"]["y"] - 70) < 8
    got = np.zeros(1500, bool)
    got[top["rows"]] = True
    assert 2 * (got & inside).sum() / (got.sum() + inside.sum()) >= 0.6  # F1 of the disc vs the cluster


def _run(tmp_path, n=400):
    X, y = _mixture(n=n, d=12, classes=4, seed=2)
    noisy = _flip(y, 0.08, 4, seed=3)
    rng = np.random.default_rng(4)
    pred = np.where(rng.random(n) < 0.85, y, (y + 1) % 4)
    cols = {"id": [f"g{i:04d}" for i in range(n)], "label": noisy, "embedding": X,
            "split": np.where(np.arange(n) % 5 == 0, "test", "train"),
            "meta_redshift": rng.uniform(0, 0.2, n), "meta_true_label": y}
    generic = write_features(tmp_path, cols, class_names=["Round", "Cigar", "Barred", "Merging"], mode="generic")
    full = write_features(tmp_path, {**cols, "pred": pred, "confidence": rng.uniform(0.3, 1, n)},
                          class_names=["Round", "Cigar", "Barred", "Merging"], mode="full", model="demo:other")
    return generic, full, noisy != y


def _json(argv) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(argv) == 0
    return json.loads(buf.getvalue())


def test_failures_json_shape_and_the_cache_is_reused(tmp_path, monkeypatch):
    generic, full, bad = _run(tmp_path)
    out = _json(["failures", "--run", generic["key"], "--cache", str(tmp_path), "--json"])
    labels = out["suspicious_labels"]
    assert len(labels) == 400 and set(labels[0]) >= {"id", "given", "suggested", "score"}
    flags = [s["flagged"] for s in labels]
    assert flags == sorted(flags, reverse=True) and any(flags)  # flagged first
    flagged = [s["score"] for s in labels if s["flagged"]]
    assert flagged == sorted(flagged, reverse=True)
    assert {s["given"] for s in labels} <= {"Round", "Cigar", "Barred", "Merging"}
    truly = {f"g{i:04d}" for i in np.flatnonzero(bad)}
    top = [s["id"] for s in labels[:20]]
    assert sum(i in truly for i in top) >= 10  # 8% are mislabelled
    assert isinstance(out["slices"], list)
    for s in out["slices"]:
        assert {"description", "ids", "n", "error_rate", "rate_elsewhere", "ratio", "p_value", "kind"} <= set(s)
        assert s["rule"]["column"] != "true_label" if s["kind"] == "metadata" else "region" in s
    # cached beside the run and listed; a second call computes nothing
    listed = _json(["ls", "--cache", str(tmp_path), "--json"])
    assert any(r["kind"] == "label_issues" and r["features_run"] == generic["key"] for r in listed)

    def boom(*a, **k):
        raise AssertionError("recomputed")
    monkeypatch.setattr(li, "find_issues", boom)
    again = _json(["failures", "--run", generic["key"], "--cache", str(tmp_path), "--json"])
    assert again["suspicious_labels"] == labels
    # a run with a head is judged on its own predictions, on its test split
    monkeypatch.undo()
    out = _json(["failures", "--run", full["key"], "--cache", str(tmp_path), "--json"])
    assert all("test split" in s["judged"] for s in out["slices"])
    assert 0 <= out["calibration"]["ece"] <= 1 and out["calibration"]["split"] == "test"


def test_failures_errors_are_one_line(tmp_path, capsys):
    assert main(["failures", "--run", "nope", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no cached features") and err.count("\n") == 1


def test_failures_on_an_h5_run_with_sky_positions(tmp_path, checkpoints):
    from core.extract.features import extract
    from tests.test_sources import write_galaxy10_h5

    h5 = write_galaxy10_h5(tmp_path / "Galaxy10_DECals.h5", n=60, size=32)
    cache = tmp_path / "cache"
    _, path, _ = extract(f"h5:{h5}", f"dir:{checkpoints['dinov2-head']}", mode="full", cache=cache,
                         progress=False, log=lambda *a: None)
    from core.store import cache as store

    run = next(r for r in store.list_runs(cache) if r["kind"] == "features")
    out = _json(["failures", "--run", run["key"], "--cache", str(cache), "--json"])
    assert len(out["suspicious_labels"]) == 60 and out["dataset"].startswith("h5:")
    assert {s["id"] for s in out["suspicious_labels"]} == set(store.read_table(run["path"], ["id"]).column("id").to_pylist())
    from core.analysis.slices import failure_slices, run_metadata

    meta = run_metadata(run, [s["id"] for s in out["suspicious_labels"]])
    assert {"ra", "dec", "redshift"} <= set(meta.columns) and meta["ra"].notna().all()
    assert isinstance(failure_slices(run["key"], cache), list)


def test_synthetic_volunteer_noise_keeps_the_truth_and_swaps_neighbours():
    from core.data.sources import open_dataset

    clean = open_dataset("synthetic:galaxy10?n=1500&size=16&seed=42")
    noisy = open_dataset("synthetic:galaxy10?n=1500&size=16&seed=42&label_noise=volunteer")
    assert "label_noise" not in clean.source and noisy.source.endswith("&label_noise=volunteer")
    assert clean.fingerprint != noisy.fingerprint
    truth = noisy.metadata["true_label"].to_numpy()
    np.testing.assert_array_equal(truth, clean.labels)
    swapped = noisy.labels != truth
    assert 0.03 <= swapped.mean() <= 0.12
    np.testing.assert_array_equal(noisy.batch(np.arange(20)), clean.batch(np.arange(20)))  # pixels show the truth
    neighbours = {(6, 7), (7, 6), (5, 6), (5, 7), (2, 3), (3, 2), (3, 4), (4, 3), (9, 8), (1, 0), (0, 1)}
    pairs = list(zip(truth[swapped].tolist(), noisy.labels[swapped].tolist()))
    assert sum(p in neighbours for p in pairs) >= 0.7 * len(pairs)  # mostly boundary swaps, a few slips
    # tight spirals called loose have open arms: the swap follows the boundary, not chance
    tight = truth == 6
    pitch = noisy.metadata["pitch_angle_deg"].to_numpy()
    assert pitch[tight & swapped].mean() > pitch[tight & ~swapped].mean() + 4
    with pytest.raises(Exception, match="label_noise"):
        open_dataset("synthetic:galaxy10?n=10&label_noise=loud")
