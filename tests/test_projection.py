"""Maps (t-SNE, UMAP, PCA), their quality numbers, their cache and `project`."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.store import cache as store  # noqa: E402
from core.analysis.maps import store as mapstore  # noqa: E402
from core.analysis.maps import projection as proj  # noqa: E402
from core.__main__ import main  # noqa: E402
from core.errors import UserError  # noqa: E402
from tests.projection_fixtures import blobs, write_features  # noqa: E402

N = 300


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def same_class_near(Y, labels, k=5):
    """Share of each point's k map neighbours that share its class."""
    near, _ = proj.exact_knn(Y, k)
    return float((labels[near] == labels[:, None]).mean())


@pytest.fixture(scope="module")
def data():
    return blobs(N, d=32, n_classes=4, seed=0)


@pytest.fixture(scope="module")
def tsne_map(data):
    return proj.fit_tsne(data[0])


@pytest.fixture(scope="module")
def umap_map(data):
    return proj.fit_umap(data[0])


# ---------------------------------------------------------------- functions


@pytest.mark.slow
def test_shapes_and_dtype(data, tsne_map, umap_map):
    X, labels = data
    for Y in (tsne_map.embedding, umap_map.embedding, proj.pca(X)):
        assert Y.shape == (N, 2) and Y.dtype == np.float32 and np.isfinite(Y).all()
    for Y in (tsne_map.embedding, umap_map.embedding):  # well-separated blobs stay apart
        assert same_class_near(Y, labels) > 0.95
    assert proj.tsne(X[:100], perplexity=10).shape == (100, 2)


@pytest.mark.slow
def test_seeded_and_reproducible(data, tsne_map, umap_map):
    X, _ = data
    assert np.array_equal(proj.tsne(X), tsne_map.embedding)
    assert np.array_equal(proj.umap(X), umap_map.embedding)
    assert np.array_equal(proj.pca(X), proj.pca(X))
    assert not np.array_equal(proj.tsne(X, seed=7, init=np.random.default_rng(1).normal(size=(N, 2))), tsne_map.embedding)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(10), "2-D"),
    (np.zeros((3, 4)), "at least 5"),
    (np.where(np.eye(20, 4) > 0, np.nan, 1.0), "NaN"),
    (np.full((20, 4), np.inf), "NaN or infinite"),
    ([["a", "b"]] * 20, "numeric"),
])
def test_input_validated_at_the_door(bad, message):
    for fn in (proj.tsne, proj.umap, proj.pca):
        with pytest.raises(ValueError, match=message) as err:
            fn(bad)
        assert isinstance(err.value, UserError)


def test_options_validated(data):
    X, _ = data
    with pytest.raises(ValueError, match="perplexity 30 needs more than 90 points"):
        proj.tsne(X[:50])
    with pytest.raises(ValueError, match=r"init must be \(n, 2\)"):
        proj.tsne(X, init=np.zeros((N, 3)))
    with pytest.raises(ValueError, match="n_neighbors"):
        proj.umap(X[:10], n_neighbors=15)
    with pytest.raises(ValueError, match="no option perplexity"):
        proj.params_for("pca", perplexity=5)
    with pytest.raises(ValueError, match="unknown map method"):
        proj.params_for("mds")
    assert proj.params_for("tsne", perplexity=30, seed=None) == proj.params_for("tsne")
    assert type(proj.params_for("tsne", perplexity=30)["perplexity"]) is float
    with pytest.raises(ValueError, match="seed must be an integer"):
        proj.params_for("umap", seed=1.5)


# ---------------------------------------------------------------- alignment and new points


def test_aligned_tsne_keeps_galaxies_in_place(data, tsne_map):
    """Barely changed features started from the generic map land where they were,
    even when that map is turned by 90 degrees: the start, not luck, places them."""
    X, _ = data
    X_fine = X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32) * 0.05
    generic = tsne_map.embedding @ np.array([[0, 1], [-1, 0]], np.float32)
    fine = proj.tsne(X_fine, init=generic)
    assert corr(fine[:, 0], generic[:, 0]) > 0.8 and corr(fine[:, 1], generic[:, 1]) > 0.8


@pytest.mark.slow
def test_aligned_umap_and_pca(data):
    # UMAP's optimiser moves whole clusters early on: alignment holds from a few
    # hundred points per cluster (r = 0.88 / 0.92 here; one axis fails at 300 points)
    X, _ = blobs(800, d=32, n_classes=4, seed=0)
    X_fine = X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32) * 0.05
    generic = proj.umap(X) @ np.array([[0, 1], [-1, 0]], np.float32)
    fine = proj.umap(X_fine, init=generic)
    assert corr(fine[:, 0], generic[:, 0]) > 0.8 and corr(fine[:, 1], generic[:, 1]) > 0.8
    X, _ = data
    X_fine = X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32) * 0.05
    flipped = -proj.pca(X)
    assert np.allclose(proj.pca(X_fine, init=flipped), flipped, atol=0.1 * flipped.std())


@pytest.mark.slow
def test_transform_places_new_points_with_their_class(data):
    X, labels = data
    X_new, labels_new = blobs(60, d=32, n_classes=4, seed=0)  # same centres, fresh points
    for method in proj.METHODS:
        m = proj.fit(method, X)
        before = m.embedding.copy()
        placed = m.transform(X_new)
        assert placed.shape == (60, 2) and placed.dtype == np.float32
        assert np.array_equal(m.embedding, before)  # the map itself does not move
        near, _ = proj.exact_knn(m.embedding, 5, queries=placed)
        if method != "pca":  # PCA's 2-D map overlaps these blobs; it is checked exactly below
            assert (labels[near] == labels_new[:, None]).mean() > 0.9, method
    assert np.allclose(m.transform(X), m.embedding, atol=1e-4)
    with pytest.raises(ValueError, match="fitted on 32"):
        m.transform(X_new[:, :5])


@pytest.mark.slow
def test_maps_read_back_place_points_like_the_fitted_ones(data, tsne_map):
    X, labels = data
    X_new, labels_new = blobs(60, d=32, n_classes=4, seed=0)
    tsne_back = proj.attach("tsne", X, tsne_map.embedding)
    assert np.allclose(tsne_back.transform(X_new), tsne_map.transform(X_new), atol=1e-3)
    pca_map = proj.fit_pca(X, init=-proj.pca(X))
    assert np.allclose(proj.attach("pca", X, pca_map.embedding).transform(X_new), pca_map.transform(X_new), atol=1e-4)
    umap_back = proj.attach("umap", X, proj.umap(X))
    near, _ = proj.exact_knn(umap_back.embedding, 5, queries=umap_back.transform(X_new))
    assert (labels[near] == labels_new[:, None]).mean() > 0.9
    with pytest.raises(ValueError, match="one point per row"):
        proj.attach("pca", X, tsne_map.embedding[:10])


# ---------------------------------------------------------------- quality numbers


def test_map_quality_on_known_structure():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(400, 2)) * 10
    X = np.hstack([plane, rng.normal(size=(400, 8)) * 0.01]).astype(np.float32)
    q = proj.map_quality(X, plane)
    assert q["knn_preservation"] > 0.95 and q["trustworthiness"] > 0.99 and q["points"] == 400
    noise = rng.normal(size=(400, 2))
    assert proj.knn_preservation(X, noise) < 0.1
    assert 0.4 < proj.trustworthiness(X, noise) < 0.6


def test_quality_matches_reference_definitions():
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    Y = X[:, :2] + rng.normal(size=(300, 2))
    q = proj.map_quality(X, Y, k=7)
    assert q["trustworthiness"] == pytest.approx(trustworthiness(X, Y, n_neighbors=7), abs=1e-6)
    nx = NearestNeighbors(n_neighbors=7).fit(X).kneighbors(return_distance=False)
    ny = NearestNeighbors(n_neighbors=7).fit(Y).kneighbors(return_distance=False)
    expected = np.mean([len(set(a) & set(b)) / 7 for a, b in zip(nx, ny)])
    assert q["knn_preservation"] == pytest.approx(expected)
    sampled = proj.map_quality(X, Y, k=7, max_points=150)
    assert sampled["points"] == 150 and abs(sampled["trustworthiness"] - q["trustworthiness"]) < 0.05
    with pytest.raises(ValueError, match="same points"):
        proj.map_quality(X, Y[:10])


def test_feature_space_quality_separation_and_scattered_class():
    generic, labels = blobs(600, d=32, n_classes=5, spread=0.25, seed=3, scattered=0)
    fine, _ = blobs(600, d=32, n_classes=5, spread=3.0, seed=3, scattered=0)
    labels = labels.copy()
    labels[:20] = -1  # unlabelled galaxies are left out
    names = ["Disturbed", "A", "B", "C", "D", "never seen"]
    g = proj.feature_space_quality(generic, labels, names)
    f = proj.feature_space_quality(fine, labels, names)
    assert f["points"] == 580 and f["silhouette_points"] == 580
    assert f["knn_accuracy"] > g["knn_accuracy"] + 0.2 and f["silhouette"] > g["silhouette"] + 0.2
    per = {c["class"]: c for c in f["per_class"]}
    assert per["never seen"] == {"label": 5, "class": "never seen", "n": 0, "knn_accuracy": None, "silhouette": None}
    others = [per[c] for c in "ABCD"]
    assert all(per["Disturbed"]["silhouette"] < o["silhouette"] - 0.2 for o in others)
    assert all(o["knn_accuracy"] > 0.95 for o in others)
    small = proj.feature_space_quality(fine, labels, names, max_silhouette=200)
    assert small["silhouette_points"] == 200 and abs(small["silhouette"] - f["silhouette"]) < 0.05
    with pytest.raises(ValueError, match="at least 2 classes"):
        proj.feature_space_quality(fine, np.zeros(600, int))


# ---------------------------------------------------------------- cache and CLI


@pytest.fixture
def cache(tmp_path, data):
    X, labels = data
    generic = write_features(tmp_path, X, labels, model="demo:generic")
    X_fine = X + np.random.default_rng(5).normal(size=X.shape).astype(np.float32) * 0.05
    fine = write_features(tmp_path, X_fine, labels, model="demo:full", mode="full")
    return tmp_path, generic, fine


def test_cache_hit_does_not_recompute(cache, monkeypatch):
    root, generic, _ = cache
    assert mapstore.cached_projection(generic, "pca", root) is None
    df, prov = mapstore.get_projection(generic, "pca", root, progress=False)
    assert list(df.columns) == ["row", "id", "x", "y"] and len(df) == N
    assert str(df["x"].dtype) == "float32" and df["id"].iloc[0] == "g00000"
    assert prov["kind"] == "projection" and prov["features_run"] == generic and prov["method"] == "pca"
    assert prov["params"] == {"seed": 42} and prov["aligned_to"] is None and prov["rows"] == N
    assert prov["quality"]["knn_preservation"] > 0 and 0 < prov["quality"]["trustworthiness"] <= 1
    assert prov["feature_quality"]["knn_accuracy"] > 0.95 and len(prov["feature_quality"]["per_class"]) == 4

    def boom(*a, **k):
        raise AssertionError("recomputed a cached map")

    monkeypatch.setattr(proj, "fit", boom)
    df2, prov2 = mapstore.get_projection(generic, "pca", root, params={"seed": 42}, progress=False)
    assert df2.equals(df) and prov2 == prov
    assert mapstore.cached_projection(generic, "pca", root)[1] == prov
    listed = [r for r in store.list_runs(root) if r["kind"] == "projection"]
    assert [(r["features_run"], r["method"], r["aligned_to"]) for r in listed] == [(generic, "pca", None)]
    assert mapstore.cached_projection(generic, "pca", root, params={"seed": 1}) is None


@pytest.mark.slow
def test_new_galaxies_placed_into_a_cached_map(cache, data):
    root, generic, _ = cache
    X_new, labels_new = blobs(60, d=32, n_classes=4, seed=0)
    photos = write_features(root, X_new, labels_new, ids=[f"photo{i}" for i in range(60)], dataset="folder:photos")
    placed = mapstore.place_run(generic, "tsne", photos, root)
    assert list(placed.columns) == ["row", "id", "label", "x", "y"] and placed["id"].iloc[0] == "photo0"
    df, _ = mapstore.cached_projection(generic, "tsne", root)
    near, _ = proj.exact_knn(df[["x", "y"]].to_numpy(np.float32), 5, queries=placed[["x", "y"]].to_numpy(np.float32))
    assert (data[1][near] == labels_new[:, None]).mean() > 0.9
    placed = mapstore.place_run(generic, "pca", photos, root)
    assert np.allclose(placed[["x", "y"]].to_numpy(), proj.fit_pca(data[0]).transform(X_new), atol=1e-4)


def test_feature_quality_is_computed_once_per_features_run(cache, monkeypatch):
    root, generic, _ = cache
    _, first = mapstore.get_projection(generic, "pca", root, progress=False)
    monkeypatch.setattr(proj, "feature_space_quality", lambda *a, **k: pytest.fail("recomputed feature quality"))
    _, second = mapstore.get_projection(generic, "pca", root, params={"seed": 3}, progress=False)
    assert second["key"] != first["key"] and second["feature_quality"] == first["feature_quality"]


def test_tiny_run_gets_a_map_and_smaller_k(tmp_path):
    X, labels = blobs(12, d=8, n_classes=2, seed=1)
    key = write_features(tmp_path, X, labels)
    df, prov = mapstore.get_projection(key, "pca", tmp_path, progress=False)
    assert len(df) == 12 and prov["quality"]["k"] == 5 and prov["feature_quality"]["points"] == 12


def test_two_identical_requests_compute_once(cache, monkeypatch):
    import threading
    import time

    root, generic, _ = cache
    calls = []
    real_fit = proj.fit

    def slow_fit(*a, **k):
        calls.append(1)
        time.sleep(0.5)  # long enough for the second request to arrive and wait on the lock
        return real_fit(*a, **k)

    monkeypatch.setattr(proj, "fit", slow_fit)
    results = []
    threads = [threading.Thread(target=lambda: results.append(mapstore.get_projection(generic, "pca", root, progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0][0].equals(results[1][0])


def test_corrupt_cache_entry_is_recomputed(cache):
    root, generic, _ = cache
    _, prov = mapstore.get_projection(generic, "pca", root, progress=False)
    Path(prov["path"]).write_bytes(b"PAR1 truncated")
    assert mapstore.cached_projection(generic, "pca", root) is None
    df, _ = mapstore.get_projection(generic, "pca", root, progress=False)
    assert len(df) == N


@pytest.mark.slow
def test_aligned_map_through_the_cache(cache):
    root, generic, fine = cache
    df, prov = mapstore.get_projection(fine, "tsne", root, align_to=generic, progress=False)
    ref, _ = mapstore.cached_projection(generic, "tsne", root)  # computed on the way
    assert prov["aligned_to"] == generic and prov["params"]["perplexity"] == 30
    assert corr(df["x"], ref["x"]) > 0.8 and corr(df["y"], ref["y"]) > 0.8
    with pytest.raises(UserError, match="own features"):
        mapstore.get_projection(generic, "tsne", root, align_to=generic)


def test_feature_quality_scores_the_test_split_against_the_train_split(tmp_path):
    """test_knn_accuracy votes each test galaxy among the train galaxies only: here the test galaxies'
    features sit on the wrong class's train galaxies, which a leave-one-out vote over all would miss
    (test galaxies of one class are each other's nearest neighbours)."""
    rng = np.random.default_rng(0)
    n = 200
    labels = np.arange(n) % 2
    test = (np.arange(n) % 5) == 0  # write_features: every 5th galaxy is a test galaxy
    centres = np.array([[10.0, 0, 0, 0], [0, 10.0, 0, 0]], np.float32)
    X = centres[labels] + rng.normal(0, 0.5, (n, 4)).astype(np.float32)
    X[test] = centres[1 - labels[test]] + np.float32([0, 0, 5.0, 0]) * (1 + labels[test, None])
    key = write_features(tmp_path, X, labels)
    _, prov = mapstore.get_projection(key, "pca", tmp_path, progress=False)
    fq = prov["feature_quality"]
    assert fq["test_knn_accuracy"] == 0.0 and fq["knn_accuracy"] > 0.9


def test_a_head_only_run_gets_the_generic_map_itself(tmp_path, data, monkeypatch):
    """Head-only training leaves the backbone as it was, so its features are the generic ones bit for
    bit: its aligned map is the generic map (not a re-optimised copy that looks slightly changed)."""
    X, labels = data
    generic = write_features(tmp_path, X, labels)
    head = write_features(tmp_path, X.copy(), labels, model="demo:head", mode="head")
    moved = write_features(tmp_path, X + np.float32(1e-3), labels, model="demo:full", mode="full")
    ref, ref_prov = mapstore.get_projection(generic, "pca", tmp_path, progress=False)
    fits = []
    real_fit = mapstore.proj.fit
    monkeypatch.setattr(mapstore.proj, "fit", lambda *a, **k: fits.append(a[0]) or real_fit(*a, **k))
    df, prov = mapstore.get_projection(head, "pca", tmp_path, align_to=generic, progress=False)
    assert fits == [] and prov["same_features_as"] == generic and prov["aligned_to"] == generic
    np.testing.assert_array_equal(df[["x", "y"]].to_numpy(), ref[["x", "y"]].to_numpy())
    assert prov["quality"] == ref_prov["quality"] and prov["mode"] == "head"
    df, prov = mapstore.get_projection(moved, "pca", tmp_path, align_to=generic, progress=False)
    assert fits == ["pca"] and "same_features_as" not in prov  # other features: a map of their own
    tail = X.copy()
    tail[-1] += np.float32(1e-3)  # the same first vectors, one differs at the end
    late = write_features(tmp_path, tail, labels, model="demo:late", mode="full")
    _, prov = mapstore.get_projection(late, "pca", tmp_path, align_to=generic, progress=False)
    assert fits == ["pca", "pca"] and "same_features_as" not in prov


def test_align_with_galaxies_missing_from_the_reference(tmp_path, data):
    X, labels = data
    ref = write_features(tmp_path, X[40:], labels[40:], ids=[f"g{i:05d}" for i in range(40, N)])
    new = write_features(tmp_path, X, labels, model="demo:other")
    df, _ = mapstore.get_projection(new, "pca", tmp_path, align_to=ref, progress=False)
    assert len(df) == N and np.isfinite(df[["x", "y"]].to_numpy()).all()


def test_cli_project(cache, capsys):
    root, generic, fine = cache
    args = ["project", "--dataset", "synthetic:test", "--model", "demo:generic", "--method", "pca", "--cache", str(root)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "PCA map of synthetic:test / demo:generic (300 points), computed" in out and "kNN preservation" in out
    assert "reading features" in err and "scoring the map" in err and "wrote" in err  # stages of a long run
    assert main(args) == 0 and "cached" in capsys.readouterr().out
    assert main(["project", "--run", fine, "--method", "pca", "--align-to", generic, "--cache", str(root), "--json"]) == 0
    assert '"aligned_to": "' + generic in capsys.readouterr().out
    assert main(["ls", "--cache", str(root)]) == 0
    assert f"pca of {fine} aligned to {generic}" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--dataset", "synthetic:test", "--model", "hf:nowhere"], "run `python -m core extract --dataset synthetic:test --model hf:nowhere` first"),
    (["--run", "0123456789abcdef"], "no cached features with key"),
    (["--dataset", "synthetic:test"], "say which features"),
    (["--dataset", "synthetic:test", "--model", "demo:generic", "--method", "pca", "--perplexity", "5"], "tsne only"),
    (["--dataset", "synthetic:test", "--model", "demo:generic", "--align-to", "nope"], "no cached features with key 'nope'"),
])
def test_cli_user_errors(cache, capsys, args, message):
    root, _, _ = cache
    assert main(["project", *args, "--cache", str(root)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_picks_cls_all_or_asks_for_run(tmp_path, data, capsys):
    X, labels = data
    write_features(tmp_path, X, labels, split="train")
    cls_all = write_features(tmp_path, X, labels)
    assert mapstore.find_features("synthetic:test", "demo:tiny", tmp_path)["key"] == cls_all
    write_features(tmp_path, X, labels, pooling="mean")
    write_features(tmp_path, X, labels, pooling="mean", split="train")
    store.path_for(tmp_path, "features", cls_all).unlink()
    assert main(["project", "--dataset", "synthetic:test", "--model", "demo:tiny", "--cache", str(tmp_path)]) == 2
    assert "pick one with --run KEY" in capsys.readouterr().err
