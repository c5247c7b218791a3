"""The synthetic Galaxy10 source, as the dashboard and the demo rely on it:
deterministic, random-access, Galaxy10-balanced, honest metadata, and classes
that look like what they are called."""
import pickle

import numpy as np
import pandas as pd
import pytest

from core.data.base import GALAXY10_CLASSES, SourceError
from core.data.sources import open_dataset
from core.data.base import GALAXY10_COUNTS
from core.data.synthetic import COLUMNS, RENDERER_VERSION, draw_labels, params_frame, render, render_galaxy

EDGE_ON, ROUND, TIGHT, LOOSE = 8, 2, 6, 7


def _class_rows(labels, c, k):
    return np.flatnonzero(labels == c)[:k]


def test_open_dataset_gives_a_dataset_of_the_requested_shape():
    ds = open_dataset("synthetic:galaxy10?n=50&size=32")
    assert len(ds) == 50 and ds.image_size == 32
    assert ds.class_names == GALAXY10_CLASSES
    assert ds.ids[0] == "syn-000000" and len(set(ds.ids)) == 50
    assert ds.labels.dtype == np.int64 and set(ds.labels) <= set(range(10))
    assert set(ds.splits) == {"train", "test"}
    b = ds.batch([0, 1, 2])
    assert b.shape == (3, 32, 32, 3) and b.dtype == np.uint8
    assert ds.image(4).shape == (32, 32, 3)
    assert len(ds.metadata) == 50
    assert RENDERER_VERSION in ds.content_key


def test_render_returns_images_labels_and_parameters():
    images, labels, params = render(12, size=32, seed=1)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int64
    assert isinstance(params, pd.DataFrame) and list(params.columns) == list(COLUMNS) and len(params) == 12
    assert images.std() > 5, "images are not blank"


def test_same_seed_same_bytes_other_seed_other_images():
    a, la, pa = render(10, size=32, seed=7)
    b, lb, pb = render(10, size=32, seed=7)
    assert a.tobytes() == b.tobytes() and (la == lb).all()
    pd.testing.assert_frame_equal(pa, pb)
    c, _, _ = render(10, size=32, seed=8)
    assert a.tobytes() != c.tobytes()


def test_any_image_renders_alone_exactly_as_in_the_full_set():
    ds = open_dataset("synthetic:galaxy10?n=40&size=32&seed=3")
    full = ds.batch(np.arange(40))
    for i in (0, 17, 39):
        assert np.array_equal(ds.image(i), full[i])
    subset = [31, 2, 17, 2]
    assert np.array_equal(ds.batch(subset), full[subset])
    images, labels, _ = render(40, size=32, seed=3)
    assert np.array_equal(images, full) and np.array_equal(labels, ds.labels)


def test_class_balance_follows_galaxy10_or_uniform():
    n = 3000
    counts = np.bincount(draw_labels(n, 42), minlength=10)
    expected = n * np.array(GALAXY10_COUNTS) / sum(GALAXY10_COUNTS)
    assert counts.sum() == n and np.all(np.abs(counts - expected) < 1)
    assert (np.bincount(draw_labels(1000, 42, "uniform"), minlength=10) == 100).all()
    assert len(draw_labels(7, 42)) == 7
    # the order is shuffled, not blocks of one class
    assert len(set(draw_labels(n, 42)[:30])) > 3


def test_split_is_stratified_and_follows_test_fraction():
    ds = open_dataset("synthetic:galaxy10?n=2000&size=32")
    for c in range(10):
        in_c = ds.splits[ds.labels == c]
        assert abs((in_c == "test").mean() - 0.2) < 0.02, GALAXY10_CLASSES[c]
    ds = open_dataset("synthetic:galaxy10?n=1000&size=32&test_fraction=0.5")
    assert abs((ds.splits == "test").mean() - 0.5) < 0.02


def test_metadata_has_one_column_per_parameter_and_nan_where_not_applicable():
    ds = open_dataset("synthetic:galaxy10?n=400&size=32")
    m = ds.metadata
    assert len(m) == 400
    for col in ("pitch_angle_deg", "axis_ratio", "inclination_deg", "bar_strength", "bulge_fraction",
                "brightness", "size_px", "position_angle_deg", "has_dust_lane", "n_clumps", "variant"):
        assert col in m.columns, col
    spiral, smooth = np.isin(ds.labels, [5, 6, 7]), np.isin(ds.labels, [2, 3, 4])
    assert m.pitch_angle_deg[spiral].notna().all() and m.pitch_angle_deg[smooth].isna().all()
    assert (m.bar_strength[ds.labels == 5] > 0).all() and (m.bar_strength[ds.labels == 6] == 0).all()
    assert not m.has_dust_lane[np.isin(ds.labels, [2, 3, 4, 5, 6, 7])].any()
    assert m.has_dust_lane.dtype == bool and m.n_clumps.dtype == np.int64


def test_pixel_lengths_scale_with_image_size_but_the_galaxies_do_not_change():
    labels = draw_labels(30, 42)
    small, large = params_frame(labels, 42, 32), params_frame(labels, 42, 128)
    np.testing.assert_allclose(large.size_px, 4 * small.size_px)
    np.testing.assert_allclose(large.axis_ratio, small.axis_ratio)


def test_fingerprint_changes_with_every_option_and_only_then():
    base = "synthetic:galaxy10?n=30&size=32"
    fp = open_dataset(base).fingerprint
    assert open_dataset("synthetic:galaxy10?size=32&n=30&seed=42").fingerprint == fp
    for extra in ("&seed=1", "&balance=uniform", "&test_fraction=0.3"):
        assert open_dataset(base + extra).fingerprint != fp, extra
    assert open_dataset("synthetic:galaxy10?n=31&size=32").fingerprint != fp
    assert open_dataset("synthetic:galaxy10?n=30&size=48").fingerprint != fp
    # identical options give one normalised source string
    assert open_dataset("synthetic:galaxy10?size=32&n=30").source == open_dataset(base).source


@pytest.mark.parametrize("ref, words", [
    ("synthetic:galaxy10?n=abc", "not an integer"),
    ("synthetic:galaxy10?n=0", "out of range"),
    ("synthetic:galaxy10?size=8", "out of range"),
    ("synthetic:galaxy10?size=4096", "out of range"),
    ("synthetic:galaxy10?seed=-1", "out of range"),
    ("synthetic:galaxy10?balance=even", "galaxy10 or uniform"),
    ("synthetic:galaxy10?test_fraction=1.5", "test_fraction"),
    ("synthetic:galaxy10?test_fraction=x", "not a number"),
    ("synthetic:galaxy10?colour=red", "unknown synthetic option"),
    ("synthetic:galaxy20", "synthetic:galaxy10"),
])
def test_bad_options_are_user_errors_that_say_what_to_do(ref, words):
    with pytest.raises(SourceError, match=words):
        open_dataset(ref)


def test_options_may_also_be_given_as_python_values():
    ds = open_dataset("synthetic:galaxy10", n=20, size=32, seed=5)
    assert len(ds) == 20 and ds.image_size == 32


@pytest.mark.slow
def test_parameters_separate_the_classes_they_should_and_overlap_where_intended():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    labels = draw_labels(3000, 42)
    m = params_frame(labels, 42, 64)
    # edge-on disc vs round smooth: axis ratio alone is (near) perfect
    pick = np.isin(labels, [EDGE_ON, ROUND])
    acc = cross_val_score(LogisticRegression(), m.loc[pick, ["axis_ratio"]], labels[pick], cv=5).mean()
    assert acc > 0.99
    # tight vs loose by pitch angle: clearly better than chance, but NOT perfect
    pick = np.isin(labels, [TIGHT, LOOSE])
    acc = cross_val_score(LogisticRegression(), m.loc[pick, ["pitch_angle_deg"]], labels[pick], cv=5).mean()
    assert 0.7 < acc < 0.95, acc


def _axis_ratio(img):
    """Second-moment axis ratio of the light above the sky."""
    lum = img.astype(np.float64).mean(axis=2)
    w = np.clip(lum - np.percentile(lum, 60) - 10, 0, None)
    s = img.shape[0]
    # keep the central galaxy, not field stars near the border
    y, x = np.mgrid[:s, :s] - (s - 1) / 2
    w[np.hypot(x, y) > 0.4 * s] = 0
    tot = w.sum()
    mx, my = (w * x).sum() / tot, (w * y).sum() / tot
    cov = np.cov(np.stack([x.ravel() - mx, y.ravel() - my]), aweights=w.ravel())
    ev = np.linalg.eigvalsh(cov)
    return np.sqrt(ev[0] / ev[1])


def test_edge_on_discs_look_far_more_elongated_than_round_ellipticals():
    labels = draw_labels(600, 42)
    q = {c: np.median([_axis_ratio(render_galaxy(c, 42, int(i), 64)) for i in _class_rows(labels, c, 16)])
         for c in (EDGE_ON, ROUND)}  # medians: a field star near the galaxy can spoil one measurement
    assert q[EDGE_ON] < 0.4 and q[ROUND] > 0.75 and q[EDGE_ON] < 0.5 * q[ROUND], q


def test_bulges_are_redder_than_discs():
    # Legacy Survey colours: RGB = (z, r, g), so red/blue = z/g
    labels = draw_labels(600, 42)
    rows = _class_rows(labels, TIGHT, 12)
    redder = []
    for i in rows:
        img = render_galaxy(TIGHT, 42, int(i), 64).astype(np.float64)
        c = img[28:36, 28:36]
        ring = np.concatenate([img[16:24, 16:48].reshape(-1, 3), img[40:48, 16:48].reshape(-1, 3)])
        redder.append(c[..., 0].sum() / c[..., 2].sum() > ring[:, 0].sum() / ring[:, 2].sum())
    assert np.mean(redder) > 0.8


def test_a_small_set_renders_each_galaxy_once_and_gives_the_same_pixels(monkeypatch):
    """The demo's finetunes and extractions read the set several times in one process:
    each row is rendered once, and what comes back is what a fresh render gives."""
    import core.data.synthetic as syn
    from core.data.sources import open_dataset

    ref = "synthetic:galaxy10?n=40&size=32&seed=5"
    fresh = open_dataset(ref).batch(np.arange(40))
    calls = []
    render = syn.render_galaxy
    monkeypatch.setattr(syn, "render_galaxy", lambda *a: calls.append(a[2]) or render(*a))
    ds = open_dataset(ref)
    rows = np.array([7, 3, 7, 39, 0])
    assert np.array_equal(ds.batch(rows), fresh[rows])
    assert sorted(calls) == [0, 3, 7, 39]
    out = ds.batch(np.arange(40)[::-1])
    assert np.array_equal(out, fresh[::-1]) and len(calls) == 40
    out[:] = 0  # a caller's copy: the kept pixels are untouched
    assert np.array_equal(ds.batch(rows), fresh[rows]) and len(calls) == 40
    assert pickle.loads(pickle.dumps(ds))._kept is None  # Ray workers get the recipe, not 40 images
    monkeypatch.setattr(syn, "KEEP_BYTES", 40 * 32 * 32 * 3 - 1)  # a bigger set renders per read
    big = open_dataset(ref)
    big.batch(rows), big.batch(rows)
    assert len(calls) == 40 + 10 and big._kept is None
