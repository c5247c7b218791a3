"""One image a user brings (the Find view's upload): read like a dataset image and
embedded exactly as `extract` embeds a dataset's galaxies."""
import io

import numpy as np
import pytest

from core.data.base import SourceError
from core.extract.upload import content_hash, embed, read_image


def test_read_png_and_fits_cube_and_errors():
    from astropy.io import fits
    from PIL import Image

    from core.data.fits import legacy_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert np.array_equal(read_image(buf.getvalue(), "a.png"), rgb)
    planes = np.random.default_rng(1).normal(0.1, 0.2, (3, 16, 16)).astype(np.float32)
    hdu = fits.PrimaryHDU(planes)
    for i, b in enumerate("grz"):
        hdu.header[f"BAND{i}"] = b
    buf = io.BytesIO()
    hdu.writeto(buf)
    assert np.array_equal(read_image(buf.getvalue(), "cutout.fits"), legacy_rgb(planes, "grz"))
    with pytest.raises(SourceError, match="not an image this app can read"):
        read_image(b"junk", "x.png")
    with pytest.raises(SourceError, match="not a g,r,z FITS cube"):
        read_image(b"junk", "x.fits")
    assert content_hash(b"abc") == content_hash(b"abc") != content_hash(b"abd")


@pytest.mark.slow
def test_embed_matches_extract(tmp_path, checkpoints):
    from core.store import cache as store
    from core.data.sources import open_dataset
    from core.extract.features import extract
    from core.models.load import load_checkpoint
    from tests.test_sources import write_galaxy10_h5

    h5 = write_galaxy10_h5(tmp_path / "g.h5", n=12, size=40)
    for name in ("dinov2", "dinov2-head"):
        path, prov, _ = extract(f"h5:{h5}", f"dir:{checkpoints[name]}", cache=tmp_path / "c", progress=False,
                                log=lambda *a: None)
        table = store.read_table(path).to_pandas()
        ck = load_checkpoint(f"dir:{checkpoints[name]}")
        feats, probs = embed(open_dataset(f"h5:{h5}").image(5), ck, prov["pooling"], prov["dataset_image_size"])
        np.testing.assert_allclose(feats, table["embedding"].iloc[5], rtol=1e-4, atol=1e-5)
        if name == "dinov2-head":
            np.testing.assert_allclose(probs, table["probs"].iloc[5], rtol=1e-4, atol=1e-6)
        else:
            assert probs is None
