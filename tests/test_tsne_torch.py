"""The torch t-SNE (openTSNE's FFT-interpolation algorithm) and the chunked exact
kNN, checked against openTSNE itself and against brute force, on the CPU."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from core.analysis import knn as knn_mod  # noqa: E402
from core.analysis.maps import store as mapstore  # noqa: E402
from core.analysis.maps import projection as proj  # noqa: E402
from core.analysis.maps import affinities, tsne_torch  # noqa: E402
from core.analysis.maps.tsne_neighbours import ExactNeighbours  # noqa: E402
from projection import clustered_features  # noqa: E402  (bench/projection.py's generator)
from tests.projection_fixtures import blobs, write_features  # noqa: E402

torch.set_num_threads(2)


def brute_knn(X, k, Q=None):
    X = X.astype(np.float64)
    Q = X if Q is None else Q.astype(np.float64)
    D = ((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    if Q is X:
        np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(D, idx, axis=1)


# ---------------------------------------------------------------- kNN


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "tf32"])
def test_knn_is_exact_at_every_precision(precision):
    # far from the origin, so bf16 products alone would misorder neighbours: the
    # re-ranking and the certification must repair that (the CPU's float32 path is
    # the earlier exact_knn, uncentred: there the offset would only test float32 rounding)
    X, _ = blobs(600, d=24, n_classes=5, seed=3)
    X = X + (40.0 if precision != "fp32" else 0.0)
    idx, d2 = knn_mod.knn(X, 12, device="cpu", precision=precision, chunk_rows=128)
    ref_idx, ref_d2 = brute_knn(X, 12)
    assert idx.shape == (600, 12) and idx.dtype == np.int64 and d2.dtype == np.float32
    assert (idx == ref_idx).mean() > 0.999  # float32 ties may swap two equidistant points
    np.testing.assert_allclose(d2, ref_d2, rtol=1e-4, atol=1e-3)
    assert not (idx == np.arange(600)[:, None]).any()

    Q = X[:7] + 0.01
    qi, _ = knn_mod.knn(X, 5, queries=Q, device="cpu", precision=precision)
    assert np.array_equal(qi, brute_knn(X, 5, Q)[0])


def test_knn_rounded_products_alone_would_be_wrong():
    """Guards the test above: on these points bf16 distances without the float32
    re-ranking do lose true neighbours."""
    X, _ = blobs(600, d=24, n_classes=5, seed=3)
    X = torch.as_tensor(X + 40.0)
    Xc = X - X.mean(0)
    norms = (Xc * Xc).sum(1)
    D = knn_mod._sq_distances(Xc, Xc, norms, torch.bfloat16)
    D.fill_diagonal_(float("inf"))
    rough = torch.topk(D, 12, largest=False).indices.numpy()
    assert (rough == brute_knn(X.numpy(), 12)[0]).mean() < 0.97


def test_knn_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="k=20 neighbours asked among 10 points"):
        knn_mod.knn(np.zeros((10, 3), np.float32), 20)
    with pytest.raises(ValueError, match="precision must be one of"):
        knn_mod.knn(np.zeros((10, 3), np.float32), 2, precision="fp8")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "tf32"])
def test_device_knn_is_exact_and_stays_on_the_device(precision):
    """The t-SNE's own kNN (tsne_torch.device_knn, the CUDA path) run on the CPU:
    certified rounded products re-ranked, the uncertified rows searched again."""
    X, _ = blobs(500, d=24, n_classes=5, seed=3)
    X = torch.as_tensor(X + (40.0 if precision != "fp32" else 0.0))
    ref_idx, ref_d2 = brute_knn(X.numpy(), 12)
    # margin 0: no spare candidates, so rounded rows cannot be certified and are searched again
    for margin, block in ((32, None), (0, None), (32, 64)):  # block: two-round selection, 500 = 7 x 64 + pad
        stats = {}
        idx, d2 = tsne_torch.device_knn(X, 12, precision=precision, chunk_rows=96, margin=margin, stats=stats,
                                        block=block)
        assert torch.is_tensor(idx) and idx.device == X.device and idx.shape == (500, 12)
        assert (idx.numpy() == ref_idx).mean() > 0.999
        np.testing.assert_allclose(d2.numpy(), ref_d2, rtol=1e-4, atol=1e-3)
        if precision != "fp32" and margin == 0:
            assert stats["rows_searched_again"] > 100
    with pytest.raises(ValueError, match="k=500 neighbours asked among 500 points"):
        tsne_torch.device_knn(X, 500)


def test_layout_grid_box_count_is_fixed_between_looks():
    # given the box count, repulsion is openTSNE's count's result when they agree, and a finer
    # grid (more boxes than the width needs) is at least as close to the exact sum
    Y = torch.as_tensor(np.random.default_rng(1).normal(size=(1500, 2)) * 20).float()
    width = float(Y.max() - Y.min())
    auto, Z_auto = tsne_torch.repulsion(Y)
    fixed, Z_fixed = tsne_torch.repulsion(Y, tsne_torch.n_boxes(width))
    assert torch.equal(auto, fixed) and float(Z_auto) == float(Z_fixed)
    Yd = Y.double()
    D = ((Yd[:, None] - Yd[None]) ** 2).sum(-1)
    W = 1 / (1 + D)
    W.fill_diagonal_(0)
    exact = ((W ** 2)[:, :, None] * (Yd[:, None] - Yd[None])).sum(1) / W.sum()
    finer, _ = tsne_torch.repulsion(Y, tsne_torch.n_boxes(width) + 30)
    err = lambda g: float((g.double() - exact).norm(dim=1).mean() / exact.norm(dim=1).mean())  # noqa: E731
    assert err(finer) <= err(fixed) * 1.05 and err(fixed) < 0.05
    # the count: openTSNE's for the width the map is growing to, kept while it is enough
    assert tsne_torch.next_boxes(30.0) == 50
    assert tsne_torch.next_boxes(100.0, 90.0) == tsne_torch.n_boxes(115.0)
    assert tsne_torch.next_boxes(100.0, 99.0, current=120) == 120  # enough, not wasteful: no new shapes
    assert tsne_torch.next_boxes(100.0, 99.0, current=100) == tsne_torch.n_boxes(101.5)  # outgrown
    assert tsne_torch.next_boxes(60.0, 60.0, current=200) == tsne_torch.n_boxes(60.0)  # map shrank a lot


def test_layout_steps_are_capped_and_keep_openTSNE_momentum():
    """openTSNE 1.0.4: momentum 0.8 in both phases, no point moves more than 5 per step."""
    n = 3000
    Y = torch.as_tensor(np.random.default_rng(2).normal(size=(n, 2))).float()
    # half of all affinity between points 0 and 1, about 1 apart: the learning rate (n / 12)
    # times the exaggerated pull would move them by hundreds
    rows, cols, P = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.5, 0.5])
    pull = float((Y[0] - Y[1]).norm()) / (1 + float((Y[0] - Y[1]).norm()) ** 2) * 0.5 * n
    before = Y.clone()
    tsne_torch.optimise(Y, rows, cols, P, [(1, 12.0, tsne_torch.MOMENTUM)])
    moved = ((Y - before) - (Y - before).mean(dim=0)).norm(dim=1)
    assert pull > 100 and float(moved[:2].min()) == pytest.approx(5.0, rel=1e-3)
    assert float(moved.max()) <= 5.0 * 1.001
    assert tsne_torch.MOMENTUM == 0.8 and tsne_torch.MAX_STEP == 5.0


@pytest.mark.slow
def test_layout_refresh_does_not_change_the_map():
    """Looking at the map's width every iteration or every 10 gives the same layout
    up to the grid's interpolation error (the box count only lags the growth)."""
    X, labels = blobs(600, d=16, n_classes=4, seed=7)
    rows, cols, P = affinities.joint(*knn_mod.knn(X, 90), 30.0)
    start = tsne_torch.pca_start(torch.as_tensor(X), 42)
    maps = []
    for refresh in (1, 10):
        Y = start.clone()
        stats = {}
        tsne_torch.optimise(Y, rows, cols, P, [(100, 12.0, 0.8), (150, 1.0, 0.8)], refresh=refresh, stats=stats)
        maps.append(Y.numpy())
        assert stats["looks"] == 250 // refresh and stats["graph_replays"] == 0  # one host sync per look only
    q = [proj.map_quality(X, Y)["knn_preservation"] for Y in maps]
    assert abs(q[0] - q[1]) < 0.02
    for a in range(2):
        assert abs(np.corrcoef(maps[0][:, a], maps[1][:, a])[0, 1]) > 0.98


def test_approximate_knn_finds_most_true_neighbours():
    """The survey-size path (tsne_torch.approximate_knn, an inverted file in torch) on the CPU:
    recall against exact search, measured, and exact distances for what it returns."""
    X, _ = blobs(3000, d=32, n_classes=6, seed=8)
    T = torch.as_tensor(X)
    idx, d2 = tsne_torch.approximate_knn(T, 15, clusters=24, probes=6)
    ref, _ = knn_mod.knn(X, 15)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(idx.numpy(), ref)])
    assert recall > 0.9
    assert not (idx.numpy() == np.arange(3000)[:, None]).any()
    true_d2 = ((X[:, None, :] - X[idx.numpy()]) ** 2).sum(-1)
    np.testing.assert_allclose(d2.numpy(), true_d2, rtol=1e-4, atol=1e-3)
    assert (np.diff(d2.numpy(), axis=1) >= 0).all()
    # probing every cell is exact search
    idx_all, _ = tsne_torch.approximate_knn(T, 15, clusters=8, probes=8)
    assert (idx_all.numpy() == ref).mean() > 0.999


def test_directed_affinities_give_the_symmetric_attraction(monkeypatch):
    X, _ = blobs(700, d=16, n_classes=4, seed=9)
    idx, d2 = knn_mod.knn(X, 60)
    Y = torch.as_tensor(np.random.default_rng(3).normal(size=(700, 2)) * 5).float()
    sym = tsne_torch.attraction(Y, *affinities.joint(idx, d2, 20.0))
    rows, cols, P = affinities.directed(idx, d2, 20.0)
    assert len(P) == 700 * 60 and float(P.double().sum()) == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(tsne_torch.attraction(Y, rows, cols, P, directed=True).numpy(), sym.numpy(),
                               rtol=1e-4, atol=1e-7)
    # a whole map through the directed path (as from 2M points) and from precomputed neighbours
    monkeypatch.setattr(tsne_torch, "DIRECTED_FROM", 100)
    a = tsne_torch.tsne(X, perplexity=20.0, device="cpu", n_iter=150, early_exaggeration_iter=100)
    b = tsne_torch.tsne(torch.as_tensor(X), perplexity=20.0, n_iter=150, early_exaggeration_iter=100,
                        neighbours=(torch.as_tensor(idx), torch.as_tensor(d2)))
    monkeypatch.setattr(tsne_torch, "DIRECTED_FROM", 10 ** 9)
    c = tsne_torch.tsne(X, perplexity=20.0, device="cpu", n_iter=150, early_exaggeration_iter=100)
    np.testing.assert_allclose(a, b, atol=1e-3)
    # the same gradient summed in another order: a map as good (the details, even the
    # blobs' arrangement, may differ: t-SNE amplifies rounding)
    qa, qc = (proj.map_quality(X, Y)["knn_preservation"] for Y in (a, c))
    assert abs(qa - qc) < 0.02 and qa > 0.2


# ---------------------------------------------------------------- the pieces against openTSNE


@pytest.mark.slow
@pytest.mark.parametrize("spread", [3.0, 38.0])  # a 50-box grid, and a 231-box one
def test_repulsion_is_openTSNE_fft_gradient(spread):
    from openTSNE import _tsne

    Y = torch.as_tensor(np.random.default_rng(0).normal(size=(3000, 2)) * spread)
    theirs = np.zeros((3000, 2))
    Z_theirs = _tsne.estimate_negative_gradient_fft_2d(Y.numpy().copy(), theirs, 3, 50, 1, 1)
    ours, Z = tsne_torch.repulsion(Y)
    assert Z == pytest.approx(Z_theirs, rel=1e-9)
    np.testing.assert_allclose(-ours.numpy(), theirs, rtol=0, atol=1e-9 * np.abs(theirs).max())


def test_repulsion_close_to_exact_sum():
    Y = torch.as_tensor(np.random.default_rng(1).normal(size=(1500, 2)) * 4)
    rep, Z = tsne_torch.repulsion(Y.float())
    D = ((Y[:, None] - Y[None]) ** 2).sum(-1)
    W = 1 / (1 + D)
    W.fill_diagonal_(0)
    exact = ((W ** 2)[:, :, None] * (Y[:, None] - Y[None])).sum(1) / W.sum()
    assert Z == pytest.approx(float(W.sum()), rel=1e-3)
    assert float((rep.double() - exact).norm(dim=1).mean() / exact.norm(dim=1).mean()) < 0.01


def test_grid_size_follows_the_map():
    assert tsne_torch.n_boxes(3.0) == 50
    assert tsne_torch.n_boxes(160.8) == 160 and tsne_torch.n_boxes(229.5) == 231  # 231 = 3 * 7 * 11
    assert tsne_torch.n_boxes(1000.2) == 1000


@pytest.mark.slow
def test_affinities_are_openTSNE_affinities():
    """Where openTSNE's calibration does not underflow (16-d blobs: small distances),
    our P is its P (tests/test_tsne_neighbourhoods.py covers where it does)."""
    from openTSNE.affinity import PerplexityBasedNN

    X, _ = blobs(800, d=16, n_classes=4, seed=2)
    rows, cols, P = affinities.joint(*knn_mod.knn(X, 90), 30.0, "cpu")
    theirs = PerplexityBasedNN(perplexity=30, knn_index=ExactNeighbours(X, 90)).P.tocoo()
    ours = np.zeros((800, 800))
    ours[rows.numpy(), cols.numpy()] = P.numpy()
    ref = np.zeros((800, 800))
    ref[theirs.row, theirs.col] = theirs.data
    assert P.sum().item() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-10)


def test_pca_start_is_openTSNE_start_up_to_jitter():
    from openTSNE import initialization

    X, _ = blobs(500, d=16, n_classes=4, seed=4)
    ours = tsne_torch.pca_start(torch.as_tensor(X), 42).numpy()
    theirs = initialization.pca(X, n_components=2, random_state=42, add_jitter=False)
    assert ours.std(axis=0)[0] == pytest.approx(1e-4, rel=0.02)
    for a in range(2):  # same axes; the sign of a principal axis is a convention
        assert abs(np.corrcoef(ours[:, a], theirs[:, a])[0, 1]) > 0.999


# ---------------------------------------------------------------- whole maps against openTSNE


def exact_kl(P, Y):
    """KL(P || Q) with Q's normaliser summed over all pairs (float64, no approximation)."""
    P = P.tocoo()
    Y = np.asarray(Y, np.float64)
    Z = 0.0
    for s in range(0, len(Y), 1000):
        D = ((Y[s:s + 1000, None] - Y[None]) ** 2).sum(-1)
        Z += (1 / (1 + D)).sum() - min(1000, len(Y) - s)
    q = 1 / (1 + ((Y[P.row] - Y[P.col]) ** 2).sum(-1))
    return float((P.data * np.log(P.data / q)).sum() + np.log(Z))


@pytest.fixture(scope="module")
def five_thousand():
    """openTSNE and the torch port on the same 5,000 x 768 features, the same P."""
    import openTSNE
    from openTSNE.affinity import PerplexityBasedNN

    X, _ = clustered_features(5000, 768, seed=1)
    aff = PerplexityBasedNN(perplexity=30, knn_index=ExactNeighbours(X, 90), n_jobs=1)
    init = openTSNE.initialization.pca(X, random_state=42)
    theirs = np.asarray(openTSNE.TSNE(negative_gradient_method="fft", n_jobs=1, random_state=42).fit(
        affinities=aff, initialization=init))
    ours, kl = tsne_torch.tsne(X, device="cpu", return_kl=True)
    return X, aff.P, theirs, ours, kl


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~30 s on 2 idle cores; 10+ minutes on a busy shared machine
def test_same_quality_as_openTSNE_on_5000_points(five_thousand):
    X, P, theirs, ours, kl = five_thousand
    q_ours, q_theirs = proj.map_quality(X, ours), proj.map_quality(X, theirs)
    # one-sided: ours may be better than openTSNE, never worse by more than the tolerance
    assert q_ours["knn_preservation"] >= q_theirs["knn_preservation"] - 0.01
    kl_ours, kl_theirs = exact_kl(P, ours), exact_kl(P, theirs)
    assert kl_ours <= 1.05 * kl_theirs
    assert kl == pytest.approx(kl_ours, rel=0.01)  # the KL we report (FFT Z) is the exact one
    # a real map, not a collapsed or exploded one: like openTSNE's in extent
    assert 0.5 < np.ptp(ours, axis=0).max() / np.ptp(theirs, axis=0).max() < 2


# ---------------------------------------------------------------- through core.analysis.maps.projection


def test_projection_picks_the_implementation():
    assert proj.implementation_for(5000, "cpu") == "openTSNE"  # faster per iteration on the CPU
    assert proj.implementation_for(5000, "cpu", "torch") == "torch-cpu"
    assert proj.gradient_method(300) == "bh" and proj.gradient_method(8000) == "fft"  # no slow corner at 5-10k
    if not torch.cuda.is_available():
        assert proj.implementation_for(300) == "openTSNE"
        with pytest.raises(proj.ProjectionError, match="no GPU"):
            proj.tsne(np.random.default_rng(0).normal(size=(200, 3)), device="cuda")
    else:
        assert proj.implementation_for(300) == "torch-cuda"
    with pytest.raises(proj.ProjectionError, match="device must be cpu or cuda"):
        proj.tsne(np.random.default_rng(0).normal(size=(200, 3)), device="tpu")
    with pytest.raises(proj.ProjectionError, match="implementation must be openTSNE or torch"):
        proj.tsne(np.random.default_rng(0).normal(size=(200, 3)), implementation="cuml")


@pytest.fixture(scope="module")
def torch_map():
    X, labels = blobs(1000, d=32, n_classes=4, spread=3.0, seed=0)
    return X, labels, proj.fit_tsne(X, device="cpu", implementation="torch")


@pytest.mark.slow
def test_torch_map_places_new_points_and_aligns(torch_map):
    X, labels, m = torch_map
    assert m.implementation.startswith("torch") and m.embedding.shape == (len(X), 2)
    near, _ = proj.exact_knn(m.embedding, 5)
    assert (labels[near] == labels[:, None]).mean() > 0.95  # blobs stay apart
    # a galaxy seen again lands where it is in the map
    placed = m.transform(X[:50] + 0.01)
    gap = np.linalg.norm(placed - m.embedding[:50], axis=1)
    assert np.median(gap) < 0.05 * np.ptp(m.embedding, axis=0).max()
    # aligned: starting from this map, barely changed features stay put
    again = proj.tsne(X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32) * 0.01,
                      init=m.embedding, device="cpu", implementation="torch", n_iter=100, early_exaggeration_iter=0)
    for a in range(2):
        assert np.corrcoef(again[:, a], m.embedding[:, a])[0, 1] > 0.98


@pytest.mark.slow
def test_cached_map_says_which_implementation_made_it(tmp_path, torch_map, monkeypatch):
    X, labels, _ = torch_map
    small = write_features(tmp_path, X[:200], labels[:200], dataset="synthetic:small")
    _, prov = mapstore.get_projection(small, "tsne", tmp_path, progress=False)
    assert prov["implementation"].startswith("openTSNE 1.") and "torch" not in prov["versions"]
    # as on a GPU machine, where the torch port is the default
    monkeypatch.setattr(proj, "implementation_for", lambda n, device=None, implementation=None: "torch-cpu")
    key = write_features(tmp_path, X, labels)
    df, prov = mapstore.get_projection(key, "tsne", tmp_path, progress=False)
    assert prov["implementation"].startswith("torch") and "(cpu)" in prov["implementation"]
    assert "torch" in prov["versions"] and len(df) == len(X)
    Y = df[["x", "y"]].to_numpy()
    assert prov["quality"]["knn_preservation"] == pytest.approx(proj.map_quality(X, Y)["knn_preservation"])
    near, _ = proj.exact_knn(Y, 5)
    assert (labels[near] == labels[:, None]).mean() > 0.95


def test_neighbours_view_at_scale_uses_the_device_search(monkeypatch):
    from core.analysis import evaluation as E

    X, _ = blobs(500, d=16, n_classes=4, seed=6)
    expected = {m: E.knn_neighbours(X, 3, 8, m) for m in ("cosine", "euclidean")}
    monkeypatch.setattr(E, "GPU_NEIGHBOURS_FROM", 100)  # as if 500 galaxies were a survey...
    monkeypatch.setattr(E, "_gpu", lambda: True)  # ...on a GPU machine (the search runs where torch can)
    for metric, (idx, dist) in expected.items():
        got_idx, got_dist = E.knn_neighbours(X, 3, 8, metric)
        assert np.array_equal(got_idx, idx)
        np.testing.assert_allclose(got_dist, dist, rtol=1e-4, atol=1e-5)
    assert len(E.knn_neighbours(X, 3, 600, "cosine")[0]) == 499


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (bench/gpu_session.sh tests)")
def test_cuda_graph_layout_matches_plain_launches():
    X, _ = clustered_features(3000, 768, seed=2)
    rows, cols, P = affinities.joint(*knn_mod.knn(X, 90), 30.0, "cuda")
    start = tsne_torch.pca_start(torch.as_tensor(X, device="cuda"), 42)
    maps, runs = [], []
    for graphs in (True, False):
        Y, stats = start.clone(), {}
        tsne_torch.optimise(Y, rows, cols, P, [(40, 12.0, 0.8), (40, 1.0, 0.8)], graphs=graphs, stats=stats)
        maps.append(Y.cpu().numpy())
        runs.append(stats)
    assert runs[0]["graph_replays"] == 80 and runs[0]["graph_captures"] >= 2 and runs[1]["graph_replays"] == 0
    for a in range(2):  # index_add's atomics sum in any order: equal up to that
        assert np.corrcoef(maps[0][:, a], maps[1][:, a])[0, 1] > 0.99
