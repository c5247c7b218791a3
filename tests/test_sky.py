"""Sky positions: parsing, validation, cone match and links, checked against astropy."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data import sky
from core.data.sources import open_dataset
from core.data.base import SourceError


@pytest.mark.parametrize("text", ["150.1196 2.2058", "150.1196, +2.2058", "10:00:28.7 +02:12:21",
                                  "10h00m28.7s +2d12m21s", "10 00 28.7 +02 12 21"])
def test_parse_position_degrees_and_sexagesimal(text):
    ra, dec = sky.parse_position(text)
    assert ra == pytest.approx(150.1196, abs=2e-4) and dec == pytest.approx(2.2058, abs=2e-4)


def test_parse_position_negative_dec_and_errors():
    assert sky.parse_position("00:00:00 -00:30:00") == pytest.approx((0.0, -0.5))
    for bad, match in [("abc", "cannot read"), ("400 2", "RA 400"), ("10 95", "Dec 95"),
                       ("25:00:00 +01:00:00", "hours"), ("1 2 3", "cannot read")]:
        with pytest.raises(sky.CoordinateError, match=match):
            sky.parse_position(bad)


def test_sexagesimal_matches_astropy_and_carries_rounding():
    from astropy import units as u
    from astropy.coordinates import Angle

    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, 500), rng.uniform(-90, 90, 500)
    r = Angle(ra, unit=u.deg).to_string(unit=u.hourangle, sep="hms", precision=2, pad=True)
    d = Angle(dec, unit=u.deg).to_string(unit=u.deg, sep="dms", precision=1, pad=True, alwayssign=True)
    assert list(sky.sexagesimal(ra, dec)) == [f"{a} {b}" for a, b in zip(r, d)]
    # 59.999 s rounds into the next minute; 23h59m59.999s is 00h; unknown positions are ""
    assert list(sky.sexagesimal([359.9999999, 10.0, np.nan], [-0.0000001, 1.99999999, 0])) == [
        "00h00m00.00s -00d00m00.0s", "00h40m00.00s +02d00m00.0s", ""]


def test_nearest_matches_astropy_separation():
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, 2000), rng.uniform(-89, 89, 2000)
    ra[5] = np.nan  # unknown positions never match
    target = (ra[17] + 3 / 3600, dec[17] - 4 / 3600)  # 5" away, roughly
    idx, sep = sky.nearest(ra, dec, *target, k=3)
    assert idx[0] == 17
    ref = SkyCoord(ra[idx] * u.deg, dec[idx] * u.deg).separation(SkyCoord(target[0] * u.deg, target[1] * u.deg))
    np.testing.assert_allclose(sep, ref.arcsec, rtol=1e-6)
    assert sep[0] < sky.MATCH_WARNING_ARCSEC < sep[1]
    # across RA = 0 and near the pole
    idx, sep = sky.nearest(np.array([359.9999, 180.0]), np.array([0.0, 89.99]), 0.0001, 0.0)
    assert idx[0] == 0 and sep[0] == pytest.approx(0.72, abs=0.01)


def test_links_name_the_position_and_layer():
    url = sky.legacy_viewer_url(150.1196, 2.2058)
    assert url == "https://www.legacysurvey.org/viewer?ra=150.11960&dec=2.20580&layer=ls-dr10&zoom=14"
    assert "layer=ls-dr9" in sky.legacy_viewer_url(1, -2, layer="ls-dr9")
    s = sky.simbad_url(150.1196, -2.2058, radius_arcsec=5)
    assert s.startswith("https://simbad.cds.unistra.fr/simbad/sim-coo?Coord=150.11960+-2.20580&CooFrame=ICRS")
    assert "Radius=5&Radius.unit=arcsec" in s


def test_map_columns_explicit_names_and_validation():
    meta = pd.DataFrame({"RA_DEG": [10.0, 20.0], "DEC_DEG": [1.0, -2.0], "z": [0.1, 0.2]})
    out = sky.map_columns(meta, "RA_DEG", "DEC_DEG")
    assert list(out.columns) == ["ra", "dec", "z"]
    assert list(sky.map_columns(meta).columns) == ["RA_DEG", "DEC_DEG", "z"]  # never guessed
    with pytest.raises(SourceError, match="RA_X"):
        sky.map_columns(meta, "RA_X", "DEC_DEG")
    with pytest.raises(SourceError, match="both"):
        sky.map_columns(meta, "RA_DEG", None)
    with pytest.raises(SourceError, match="RA value.*row 1: 400.*degrees, not hours"):
        sky.map_columns(pd.DataFrame({"ra": [1.0, 400.0], "dec": [0.0, 0.0]}))
    with pytest.raises(SourceError, match="Dec value.*-91"):
        sky.map_columns(pd.DataFrame({"ra": [1.0, 2.0], "dec": [0.0, -91.0]}))
    ok = sky.map_columns(pd.DataFrame({"ra": [1.0, None], "dec": [0.0, None]}))  # unknown = NaN, allowed
    assert ok["ra"].isna().sum() == 1


def _folder(tmp_path, columns):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"g{i}.png")
    pd.DataFrame({"file": [f"g{i}.png" for i in range(3)], "label": [0, 1, 2], **columns}).to_csv(
        tmp_path / "labels.csv", index=False)
    return tmp_path


def test_folder_source_maps_named_coordinate_columns(tmp_path):
    d = _folder(tmp_path, {"RAJ2000": [10.0, 20.0, 30.0], "DEJ2000": [1.0, 2.0, 3.0], "redshift": [0.1, 0.2, 0.3]})
    ds = open_dataset(f"folder:{d}?ra=RAJ2000&dec=DEJ2000")
    assert list(ds.metadata["ra"]) == [10.0, 20.0, 30.0] and "RAJ2000" not in ds.metadata
    assert "ra" not in open_dataset(f"folder:{d}").metadata  # not named: no positions
    with pytest.raises(SourceError, match="RA_NOPE"):
        open_dataset(f"folder:{d}?ra=RA_NOPE&dec=DEJ2000")


def test_folder_source_rejects_out_of_range_coordinates(tmp_path):
    d = _folder(tmp_path, {"ra": [10.0, 2.5, 6.28], "dec": [1.0, 2.0, 120.0]})
    with pytest.raises(SourceError, match="Dec value"):
        open_dataset(f"folder:{d}")


def test_h5_coordinates_are_validated(tmp_path):
    import h5py

    from tests.test_sources import write_galaxy10_h5

    p = write_galaxy10_h5(tmp_path / "g.h5", n=20)
    assert open_dataset(f"h5:{p}").metadata["ra"].between(0, 360).all()
    with h5py.File(p, "r+") as f:
        f["dec"][3] = 91.0
    with pytest.raises(SourceError, match="Dec value.*row 3"):
        open_dataset(f"h5:{p}")


@pytest.mark.slow
def test_cli_error_for_bad_coordinates_is_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import subprocess_timeout

    d = _folder(tmp_path, {"ra": [10.0, 2.5, 6.28], "dec": [1.0, 2.0, 3.0]})
    r = subprocess.run([sys.executable, "-m", "core", "extract", "--dataset", f"folder:{d}?ra=x&dec=y",
                        "--model", "dir:/nowhere", "--cache", str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=subprocess_timeout())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "coordinate column(s) x, y not found" in r.stderr


def test_hf_source_maps_named_coordinate_columns(tmp_path):
    import datasets

    rng = np.random.default_rng(2)
    imgs = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 2, 3], "RA": [1.0, 2.0, 3.0, 4.0],
                                "DEC": [-1.0, -2.0, -3.0, -4.0]},
                               features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64"),
                                                           "RA": datasets.Value("float64"),
                                                           "DEC": datasets.Value("float64")})
                               ).save_to_disk(tmp_path / "cat")
    ds = open_dataset(f"hf:{tmp_path / 'cat'}?ra=RA&dec=DEC")
    assert list(ds.metadata["ra"]) == [1.0, 2.0, 3.0, 4.0] and list(ds.metadata["dec"]) == [-1.0, -2.0, -3.0, -4.0]
    with pytest.raises(SourceError, match="RA_J2000"):
        open_dataset(f"hf:{tmp_path / 'cat'}?ra=RA_J2000&dec=DEC")
