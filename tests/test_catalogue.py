"""`parquet:` catalogues (image paths or bytes + label/metadata columns) and lazy
`folder:` decoding: images are read only when a batch or thumbnail needs them."""
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import core.extract.features as features
from core.store import cache as store
from core.data.base import SourceError
from core.data.sources import open_dataset
from tests.test_shards import QUIET


def png(rng, size=24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_catalogue(path, n=23, bad=11):
    """A DESI-style catalogue: encoded images in a bytes column, several row groups, one bad image."""
    rng = np.random.default_rng(0)
    images = [png(rng) for _ in range(n)]
    images[bad] = b"not an image"
    table = pa.table({"dr8_id": [f"dr8-{i}" for i in range(n)], "image": pa.array(images, pa.binary()),
                      "label": np.arange(n) % 4, "ra": np.linspace(150, 151, n), "dec": np.linspace(2, 3, n),
                      "smooth_fraction": rng.random(n)})
    pq.write_table(table, path, row_group_size=5)
    return images


def test_parquet_catalogue_streams_row_groups_and_skips_bad_images(tmp_path, checkpoints):
    images = write_catalogue(tmp_path / "cat.parquet")
    ds = open_dataset(f"parquet:{tmp_path / 'cat.parquet'}?image_size=16")
    assert len(ds) == 23 and ds.ids[3] == "dr8-3" and ds.labels.tolist()[:5] == [0, 1, 2, 3, 0]
    assert {"ra", "dec", "smooth_fraction"} <= set(ds.metadata.columns) and "image" not in ds.metadata.columns
    assert ds._cache is None  # opening read no image
    thumb = ds.image(7)  # one row group (rows 5-9) is read for it, and only that one
    assert thumb.shape == (24, 24, 3) and list(ds._cache) == [(0, 1)]
    assert np.array_equal(thumb, np.asarray(Image.open(io.BytesIO(images[7])).convert("RGB")))
    rows, images, skipped = ds.load_images(np.arange(9, 14))
    assert rows.tolist() == [9, 10, 12, 13] and [im.shape for im in images] == [(24, 24, 3)] * 4
    assert skipped == [{"file": "dr8-11", "reason": "unreadable (UnidentifiedImageError)"}]
    path, prov, _ = features.extract(ds, f"dir:{checkpoints['dinov2-head']}", cache=tmp_path / "c", batch_size=4,
                                     **QUIET)
    t = store.read_table(path)
    assert prov["rows"] == 22 and prov["skipped"] == skipped and "dr8-11" not in t.column("id").to_pylist()
    assert t.column("meta_smooth_fraction").to_pylist()[:3] == ds.metadata["smooth_fraction"].tolist()[:3]


def test_parquet_catalogue_of_paths(tmp_path):
    """Relative image paths start from the catalogue's folder; ids default to the paths."""
    rng = np.random.default_rng(1)
    (tmp_path / "cat" / "img").mkdir(parents=True)
    pixels = [rng.integers(0, 255, (30, 20, 3), dtype=np.uint8) for _ in range(4)]
    for i, a in enumerate(pixels):
        Image.fromarray(a).save(tmp_path / "cat" / "img" / f"{i}.png")
    pq.write_table(pa.table({"file": [f"img/{i}.png" for i in range(4)], "label": [0, 1, -1, 2],
                             "split": ["train", "train", "test", "test"]}), tmp_path / "cat" / "a.parquet")
    ds = open_dataset(f"parquet:{tmp_path / 'cat'}?image_size=8")
    assert list(ds.ids) == [f"img/{i}.png" for i in range(4)] and "file" in ds.metadata.columns
    assert ds.splits.tolist() == ["train", "train", "test", "test"] and ds.labels.tolist() == [0, 1, -1, 2]
    assert np.array_equal(ds.image(2), pixels[2]) and ds.batch([0, 3]).shape == (2, 8, 8, 3)
    with pytest.raises(SourceError, match="no column 'jpeg'"):
        open_dataset(f"parquet:{tmp_path / 'cat'}?image=jpeg")
    with pytest.raises(SourceError, match="not found"):
        open_dataset(f"parquet:{tmp_path / 'nothing.parquet'}")


def test_folder_opens_without_decoding(tmp_path, monkeypatch, examples_dir):
    import PIL.Image

    def no_decode(*a, **k):
        raise AssertionError("opening a folder: dataset must not decode images")

    monkeypatch.setattr(PIL.Image, "open", no_decode)
    ds = open_dataset(f"folder:{examples_dir}")
    assert len(ds) == 60 and not ds.skipped
    monkeypatch.undo()
    assert ds.image(0).shape == (424, 424, 3)
