"""Calibration numbers a user reads to decide whether a model's confidences can be trusted."""
import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from core.analysis import calibration as C
from core.errors import UserError


def overconfident(n=4000, k=5, sharpness=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(sharpness * z): over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.5
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=p) for p in true_p])
    model = np.exp(sharpness * z) / np.exp(sharpness * z).sum(1, keepdims=True)
    return model, labels, true_p


def test_bins_are_sklearns_calibration_curve_bins():
    probs, labels, _ = overconfident()
    conf, right = probs.max(1), probs.argmax(1) == labels
    bins, _ = C.reliability(conf, right)
    prob_true, prob_pred = calibration_curve(right, conf, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(bins["accuracy"], prob_true, atol=1e-12)
    np.testing.assert_allclose(bins["confidence"], prob_pred, atol=1e-12)
    assert bins["count"].sum() == len(conf)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_values_on_bin_edges_fall_where_sklearn_puts_them(n_bins):
    """Confidences exactly on an edge (0.5, 0.9... common with rounded or float32 outputs) land in the
    same bin as calibration_curve's: the lower one."""
    probs, labels, _ = overconfident(seed=n_bins)
    conf, right = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    conf[: 4 * n_bins] = np.repeat(edges[1:], 4)[: 4 * n_bins]  # every edge, 1.0 included
    bins, ece = C.reliability(conf, right, n_bins)
    prob_true, prob_pred = calibration_curve(right, conf, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(bins["accuracy"], prob_true, atol=1e-12)
    np.testing.assert_allclose(bins["confidence"], prob_pred, atol=1e-12)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    assert ece == pytest.approx((counts[counts > 0] * np.abs(prob_true - prob_pred)).sum() / len(conf), abs=1e-12)


def test_a_calibrated_model_scores_near_zero_and_an_overconfident_one_does_not():
    probs, labels, true_p = overconfident()
    ece_true = C.expected_calibration_error(true_p.max(1), true_p.argmax(1) == labels)
    ece_over = C.expected_calibration_error(probs.max(1), probs.argmax(1) == labels)
    assert ece_true < 0.03 < 0.1 < ece_over


def test_temperature_scaling_finds_the_overconfidence_and_repairs_it():
    probs, labels, _ = overconfident(sharpness=3.0)
    t = C.temperature_scaling(probs, labels)
    assert 2.0 < t["temperature"] < 4.5  # the true softening is 3
    assert t["ece_after"] < t["ece_before"] / 2 and t["nll_after"] < t["nll_before"]
    assert t["fit_galaxies"] + t["scored_galaxies"] == len(labels)
    assert "over-confident" in C.verdict(t["ece_before"], t["temperature"])


def test_classwise_and_bad_input():
    probs, labels, _ = overconfident(k=3)
    per = C.classwise(probs, labels, ["a", "b", "c"])
    assert list(per["class"]) == ["a", "b", "c"] and per["galaxies"].sum() == len(labels)
    with pytest.raises(UserError):
        C.reliability([0.5, 1.5], [True, False])


def test_a_run_without_a_head_is_a_plain_error():
    with pytest.raises(UserError, match="no predictions"):
        C.run_calibration({"key": "k", "has_head": False, "mode": "generic"})


def test_a_head_that_orders_the_classes_otherwise_is_read_by_name(tmp_path):
    """A checkpoint whose head lists the classes in another order (id2label) is scored on the dataset's
    classes: the same numbers as the probabilities in dataset order; a generic run is refused."""
    from tests.cached_heads_fixtures import write_reversed_head_run

    probs, labels, _ = overconfident(n=400, k=3, seed=4)
    run = write_reversed_head_run(tmp_path, "rev", probs, labels)
    out = C.run_calibration(run)
    test = np.arange(400) % 2 == 0
    conf, right = probs[test].max(1), probs[test].argmax(1) == labels[test]
    assert out["split"] == "test" and out["accuracy"] == pytest.approx(right.mean())
    assert out["ece"] == pytest.approx(C.expected_calibration_error(conf, right), abs=1e-6)
    per = {r["class"]: r for r in out["per_class"]}
    assert per["a"]["galaxies"] == (labels[test] == 0).sum()
    assert per["a"]["mean probability"] == pytest.approx(probs[test, 0].mean(), abs=1e-6)
    generic = write_reversed_head_run(tmp_path, "gen", probs, labels, mode="generic")
    with pytest.raises(UserError, match="no predictions"):
        C.run_calibration(generic)
