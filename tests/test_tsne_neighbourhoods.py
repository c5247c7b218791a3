"""t-SNE neighbourhoods as faithful as scikit-learn's (issue 25, section 1): our
affinities P reach the asked perplexity where openTSNE 1.0.4's underflow, every
t-SNE path uses them, and the maps keep as many true neighbours as scikit-learn's."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from core.analysis.maps import affinities  # noqa: E402
from core.analysis.maps import projection as proj  # noqa: E402
from core.analysis.maps import tsne_torch  # noqa: E402
from core.analysis.maps.tsne_neighbours import MapNeighbours  # noqa: E402
from tsne_quality import far_features, opentsne_conditional  # noqa: E402  (bench/tsne_quality.py)

torch.set_num_threads(2)


def test_scikit_learn_underflow_case_reaches_perplexity_30():
    """scikit-learn's test_binary_search_underflow: 90 values near 100, the first
    being the point itself (scikit-learn leaves it out), perplexity 30."""
    from sklearn.utils import check_random_state

    data = check_random_state(42).randn(1, 90).astype(np.float32) + 100
    P = affinities.conditional(data[:, 1:], 30.0).numpy()
    assert 2 ** -np.nansum(P[0] * np.log2(P[0])) == pytest.approx(30.0, abs=0.01)
    assert P.sum() == pytest.approx(1.0, abs=1e-12)
    # openTSNE 1.0.4's calibration (and ours before) stops far off here: what this guards
    theirs = opentsne_conditional(data[:, 1:])
    assert abs(affinities.perplexities(theirs)[0] - 30) > 10


def test_every_row_of_far_apart_768d_features_reaches_the_perplexity():
    X, _ = far_features(1000)
    idx, d2 = proj.exact_knn(X, 90)
    assert np.median(d2[:, 0]) > 5000  # far apart: exp(-d2 beta) underflows without the shift
    ours = affinities.perplexities(affinities.conditional(d2, 30.0))
    np.testing.assert_allclose(ours, 30.0, atol=0.01)
    theirs = affinities.perplexities(opentsne_conditional(d2))
    assert (np.abs(theirs - 30) > 0.01).mean() > 0.3  # openTSNE's own P misses on these rows
    # the symmetric P of a map: every path gets the same one
    rows, cols, P = affinities.joint(idx, d2, 30.0)
    csr = affinities.joint_csr(idx, d2, 30.0).tocoo()
    dense = np.zeros((1000, 1000))
    dense[rows.numpy(), cols.numpy()] = P.numpy()
    assert csr.sum() == pytest.approx(1.0) and float(P.sum()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(dense[csr.row, csr.col], csr.data, rtol=1e-5)
    np.testing.assert_allclose(dense, dense.T, atol=1e-9)


def test_placing_new_points_uses_calibrated_affinities():
    X, _ = far_features(600)
    nb = MapNeighbours(X, 30.0, 1)
    P, neighbours, distances = nb.to_new(X[:40] + 0.5, perplexity=5, return_distances=True)
    assert P.shape == (40, 600) and neighbours.shape == (40, 15)
    rows = np.asarray(P.todense())
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    cond = np.take_along_axis(rows, neighbours, axis=1)
    np.testing.assert_allclose(affinities.perplexities(cond), 5.0, atol=0.01)
    # a perplexity the neighbours cannot reach is clipped to k / 3, as openTSNE does
    P = nb.to_new(X[:3], perplexity=20, k_neighbors=9)
    assert P.shape == (3, 600) and np.isfinite(P.data).all()


def test_perplexity_too_high_is_a_clear_error():
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    with pytest.raises(proj.ProjectionError, match="perplexity 30 needs more than 90 points.*at most 13"):
        tsne_torch.tsne(X, perplexity=30, device="cpu")
    with pytest.raises(proj.ProjectionError, match="at most 13"):
        proj.tsne(X, perplexity=30)
    with pytest.raises(ValueError, match="cannot be reached with 10 neighbours"):
        affinities.conditional(np.ones((5, 10)), 12.0)


def test_equidistant_neighbours_stay_uniform():
    P = affinities.conditional(np.full((3, 12), 50.0), 5.0).numpy()
    np.testing.assert_allclose(P, 1 / 12)


@pytest.mark.slow
def test_maps_keep_as_many_neighbours_as_scikit_learn():
    """One-sided: kNN preservation (k = 10) of our CPU map no worse than
    scikit-learn's t-SNE (the paper's) on far-apart clustered 768-d features."""
    from sklearn.manifold import TSNE

    X, _ = far_features(800)
    ours = proj.map_quality(X, proj.tsne(X, device="cpu"))["knn_preservation"]
    theirs = proj.map_quality(X, TSNE(perplexity=30, init="pca", random_state=42).fit_transform(X))["knn_preservation"]
    assert ours >= theirs - 0.01


def test_calibration_by_chunks_is_the_same(monkeypatch):
    X, _ = far_features(500)
    _, d2 = proj.exact_knn(X, 90)
    whole = affinities.conditional(d2, 30.0)
    monkeypatch.setattr(affinities, "CHUNK_ELEMENTS", 90 * 64)  # 8 chunks, the last one short
    np.testing.assert_array_equal(affinities.conditional(d2, 30.0).numpy(), whole.numpy())
