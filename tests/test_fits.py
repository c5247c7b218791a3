"""`fits:DIR`: multi-band cutouts written here with astropy, as the Legacy Survey
cutout service writes them (a g,r,z cube with BAND0..2 and a TAN WCS) or one file per band."""
import numpy as np
import pandas as pd
import pytest

from core.data.sources import open_dataset
from core.data.base import SourceError
from core.data.fits import legacy_rgb, lupton_rgb

from astropy.io import fits  # noqa: E402


def header(ra, dec, size, pxscale=0.262, cube=True):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]  # FITS pixels are 1-based: the centre
    w.wcs.cdelt = [-pxscale / 3600, pxscale / 3600]
    h = w.to_header()
    if cube:
        for i, b in enumerate("grz"):
            h[f"BAND{i}"] = b
    return h


def galaxy(size=32, flux=1.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    blob = flux * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / 20)
    return np.stack([blob * s for s in (0.5, 1.0, 1.6)]) + rng.normal(0, 0.01, (3, size, size))


def write_cube(path, ra, dec, planes):
    fits.PrimaryHDU(planes.astype(np.float32), header=header(ra, dec, planes.shape[-1])).writeto(path)


@pytest.fixture
def cutouts(tmp_path):
    d = tmp_path / "cutouts"
    d.mkdir()
    write_cube(d / "a.fits", 150.1196, 2.2058, galaxy(seed=0))
    bad = galaxy(seed=1)
    bad[:, :4, :] = np.nan  # off the survey edge
    bad[0, 10:12, 10:12] = -5.0  # negative flux
    write_cube(d / "b.fits", 0.001, -30.0, bad)
    for band, plane in zip("grz", galaxy(seed=2)):  # one file per band, no band keyword: from the suffix
        fits.PrimaryHDU(plane.astype(np.float32), header=header(210.5, 54.3, 32, cube=False)).writeto(d / f"c_{band}.fits")
    fits.PrimaryHDU(galaxy(seed=3)[0].astype(np.float32)).writeto(d / "d_g.fits")  # r and z missing
    (d / "broken.fits").write_bytes(b"SIMPLE  = nonsense")
    return d


def test_cubes_band_files_wcs_and_skips(cutouts):
    ds = open_dataset(f"fits:{cutouts}")
    assert list(ds.ids) == ["a", "b", "c"] and (ds.labels == -1).all()
    np.testing.assert_allclose(ds.metadata["ra"], [150.1196, 0.001, 210.5], atol=1e-6)
    np.testing.assert_allclose(ds.metadata["dec"], [2.2058, -30.0, 54.3], atol=1e-6)
    np.testing.assert_allclose(ds.metadata["pxscale"], 0.262, rtol=1e-6)
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert reasons["d_g.fits"] == "band files for d lack r, z" and reasons["broken.fits"].startswith("unreadable")
    batch = ds.batch([0, 1, 2])
    assert batch.shape == (3, 256, 256, 3) and batch.dtype == np.uint8
    img = ds.image(1)
    assert img.shape == (32, 32, 3)
    assert (img[:4] == img[0, 0]).all()  # NaN rows are plain sky (zero flux), not garbage
    assert img[10, 10, 2] < img[20, 20, 2]  # negative flux is darker than zero flux, never wraps around


def legacypipe_sdss_rgb(imgs, bands, m=0.03, Q=20):
    """legacypipe's sdss_rgb as published (the viewer's colour scheme), for comparison."""
    rgbscales = dict(g=(2, 6.0), r=(1, 3.4), i=(0, 3.0), z=(0, 2.2))
    I = 0
    for img, band in zip(imgs, bands):
        plane, scale = rgbscales[band]
        I = I + np.maximum(0, img * scale + m)
    I /= len(bands)
    fI = np.arcsinh(Q * I) / np.sqrt(Q)
    I += (I == 0.) * 1e-6
    rgb = np.zeros(I.shape + (3,), np.float32)
    for img, band in zip(imgs, bands):
        plane, scale = rgbscales[band]
        rgb[:, :, plane] = np.clip((img * scale + m) * fI / I, 0, 1)
    return rgb


def test_legacy_and_lupton_schemes_match_their_references():
    planes = galaxy(seed=4)
    ref = legacypipe_sdss_rgb(planes, "grz")
    assert np.abs(legacy_rgb(planes, "grz").astype(int) - np.round(ref * 255).astype(int)).max() <= 1
    from astropy.visualization import make_lupton_rgb

    assert np.array_equal(lupton_rgb(planes, list("grz"), stretch=0.5, Q=8),
                          make_lupton_rgb(planes[2], planes[1], planes[0], stretch=0.5, Q=8))


def test_recipe_is_in_the_reference_and_fingerprint(cutouts):
    legacy = open_dataset(f"fits:{cutouts}")
    lupton = open_dataset(f"fits:{cutouts}?rgb=lupton&stretch=1")
    assert legacy.source == f"fits:{cutouts}?rgb=legacy&Q=20&m=0.03"
    assert lupton.source == f"fits:{cutouts}?rgb=lupton&stretch=1&Q=8&minimum=0"
    assert legacy.fingerprint != lupton.fingerprint
    assert not np.array_equal(legacy.image(0), lupton.image(0))
    assert np.array_equal(open_dataset(legacy.source).image(0), legacy.image(0))  # reopens from its own name
    with pytest.raises(SourceError, match="rgb=legacy"):
        open_dataset(f"fits:{cutouts}?rgb=sdss")
    with pytest.raises(SourceError, match="does not exist"):
        open_dataset(f"fits:{cutouts}/nope")


def test_labels_csv_adds_labels_and_its_coordinates_win(cutouts):
    pd.DataFrame({"file": ["a.fits", "c"], "label": [1, 5], "RA_CAT": [150.2, 210.6], "DEC_CAT": [2.3, 54.2],
                  "redshift": [0.05, 0.1]}).to_csv(cutouts / "labels.csv", index=False)
    ds = open_dataset(f"fits:{cutouts}?ra=RA_CAT&dec=DEC_CAT")
    assert list(ds.labels) == [1, -1, 5] and ds.class_names[5] == "Barred Spiral"
    np.testing.assert_allclose(ds.metadata["ra"], [150.2, np.nan, 210.6])
    assert ds.metadata["redshift"].iloc[2] == 0.1


def test_extract_records_the_recipe_and_positions(cutouts, checkpoints, tmp_path):
    from core.store import cache as store
    from core.extract.features import extract

    path, prov, _ = extract(f"fits:{cutouts}?rgb=lupton", f"dir:{checkpoints['dinov2']}", cache=tmp_path / "c",
                            progress=False, log=lambda *a: None)
    assert prov["dataset"].endswith("?rgb=lupton&stretch=0.5&Q=8&minimum=0")
    assert [s["file"] for s in prov["skipped"]] == ["broken.fits", "d_g.fits"]
    t = store.read_table(path).to_pandas()
    np.testing.assert_allclose(t["meta_ra"], [150.1196, 0.001, 210.5], atol=1e-6)
