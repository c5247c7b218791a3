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
    with pytest.raises(SourceError, match="truncated or not a FITS file"):
        read_image(b"junk", "x.fits")
    whole = buf.getvalue()
    with pytest.raises(SourceError, match="x.fits is truncated"):  # cut mid-data, e.g. an interrupted download
        read_image(whole[: len(whole) - 1500], "x.fits")
    buf = io.BytesIO()
    fits.PrimaryHDU(planes[0]).writeto(buf)
    with pytest.raises(SourceError, match=r"holds no g,r,z cube .*\(16, 16\)"):
        read_image(buf.getvalue(), "flat.fits")
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
        feats, probs = embed(open_dataset(f"h5:{h5}").image(5), ck, prov["pooling"])
        np.testing.assert_allclose(feats, table["embedding"].iloc[5], rtol=1e-4, atol=1e-5)
        if name == "dinov2-head":
            np.testing.assert_allclose(probs, table["probs"].iloc[5], rtol=1e-4, atol=1e-6)
        else:
            assert probs is None


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1400, 1900), (2500, 5000)])
def test_upload_embeds_as_extract_embeds_the_same_file_from_a_folder(tmp_path, checkpoints, shape):
    """A non-square, large upload (under, and beyond, the decode limit) gives the vector `extract`
    stores for the same file read through folder: (issue 22: no squash to the dataset size first)."""
    from core.extract.features import extract
    from core.extract.upload import read_upload, embed_upload
    from core.models.load import load_checkpoint
    from core.store import cache as store

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = np.exp(-(((xx - shape[1] / 2) / (shape[1] / 5)) ** 2 + ((yy - shape[0] / 3) / (shape[0] / 7)) ** 2))
    rgb = np.clip(blob[..., None] * [230, 160, 90] + rng.normal(0, 20, (*shape, 3)), 0, 255).astype(np.uint8)
    content = _png(rgb)
    folder = tmp_path / "imgs"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "mine.png").write_bytes(content)
    (folder / "images" / "small.png").write_bytes(_png(rgb[:64, :48]))
    (folder / "labels.csv").write_text("file,label\nimages/mine.png,0\nimages/small.png,1\n")
    name = "dinov2-head"
    path, prov, _ = extract(f"folder:{folder}", f"dir:{checkpoints[name]}", cache=tmp_path / "c",
                            progress=False, log=lambda *a: None)
    table = store.read_table(path).to_pandas().set_index("id")
    image = read_upload(content, "mine.png")
    if max(shape) > 2048:
        assert max(image.shape[:2]) <= 2048  # shrunk as decoded, the same way extract reads it
    else:
        assert np.array_equal(image, rgb)
    feats, probs = embed_upload(image, load_checkpoint(f"dir:{checkpoints[name]}"), prov["pooling"])
    np.testing.assert_allclose(feats, table.loc["images/mine.png", "embedding"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, table.loc["images/mine.png", "probs"], rtol=1e-4, atol=1e-6)


def test_a_huge_png_is_shrunk_as_decoded_without_full_size_arrays():
    """A 12,000 x 12,000 PNG (436 KB, under Pillow's decompression-bomb limit) is read with far less
    memory than one full-size RGB array (432 MB), let alone a float tensor of it."""
    import tracemalloc

    from PIL import Image

    from core.extract.upload import read_image

    buf = io.BytesIO()
    Image.new("RGB", (12000, 12000), (30, 60, 90)).save(buf, format="PNG")
    content = buf.getvalue()
    assert len(content) < 1_000_000
    tracemalloc.start()
    image = read_image(content, "huge.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert image.shape == (2000, 2000, 3) and image[0, 0].tolist() == [30, 60, 90]
    assert peak < 100e6, peak  # numpy arrays only (Pillow's own decode buffer is not traced)


def test_huge_jpeg_is_decoded_at_reduced_scale():
    from PIL import Image

    from core.extract.upload import read_image

    buf = io.BytesIO()
    Image.new("RGB", (9000, 6000), (200, 100, 50)).save(buf, format="JPEG")
    image = read_image(buf.getvalue(), "big.jpg")
    assert max(image.shape[:2]) <= 2048 and image.shape[1] > image.shape[0]


def test_at_most_CONCURRENT_uploads_are_worked_on_at_once():
    import threading
    import time

    from core.extract import upload

    inside, most, lock = [0], [0], threading.Lock()
    real = upload.read_image

    def slow(content, name=""):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        with lock:
            inside[0] -= 1
        return real(content, name)

    content = _png(np.zeros((8, 8, 3), np.uint8))
    upload.read_image = slow
    try:
        threads = [threading.Thread(target=upload.read_upload, args=(content, "a.png")) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        upload.read_image = real
    assert most[0] == upload.CONCURRENT
    for _ in range(upload.CONCURRENT):
        upload._SLOTS.acquire()
    try:
        with pytest.raises(SourceError, match="busy"):
            upload.read_upload(content, "a.png", timeout=0.1)
    finally:
        for _ in range(upload.CONCURRENT):
            upload._SLOTS.release()
