"""Every dataset source, on fixtures in the real formats."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.sources import open_dataset
from core.data.base import GALAXY10_CLASSES, SourceError


def write_galaxy10_h5(path, n=40, size=32, seed=0):
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        f["ans"] = (np.arange(n) % 10).astype(np.uint8)
        f["ra"] = rng.uniform(0, 360, n)
        f["dec"] = rng.uniform(-30, 30, n)
        f["redshift"] = rng.uniform(0, 0.2, n)
        f["pxscale"] = np.full(n, 0.262)
    return path


def test_h5_layout_split_and_chunked_reads(tmp_path):
    p = write_galaxy10_h5(tmp_path / "Galaxy10_DECals.h5")
    ds = open_dataset(f"h5:{p}")
    assert len(ds) == 40 and ds.class_names == GALAXY10_CLASSES
    assert ds.class_names[3] == "In-between Round Smooth"  # astroNN's own lookup gets this one wrong
    assert list(ds.metadata.columns) == ["ra", "dec", "redshift", "pxscale"]
    # stratified 80/20: each class of 4 images gives 1 (round(0.8)) to test
    for c in range(10):
        assert (ds.splits[ds.labels == c] == "test").sum() == 1
    assert np.array_equal(open_dataset(f"h5:{p}").splits, ds.splits)  # deterministic
    import h5py

    with h5py.File(p) as f:
        raw = f["images"][:]
    rows = np.array([7, 2, 30, 3])
    assert np.array_equal(ds.batch(rows), raw[rows])  # unsorted rows come back in order
    assert np.array_equal(ds.batch(np.arange(5, 9)), raw[5:9])
    assert np.array_equal(ds.image(11), raw[11])
    fp = ds.fingerprint
    ds.close()
    with h5py.File(p, "r+") as f:
        f["ans"][0] = 5
    assert open_dataset(f"h5:{p}").fingerprint != fp


def test_h5_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_dataset(f"h5:{tmp_path}/nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(SourceError, match="not a readable HDF5"):
        open_dataset(f"h5:{bad}")


def _hf_dataset(n=12, with_classlabel=False):
    import datasets

    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(n)]
    label_feature = datasets.ClassLabel(names=["a", "b", "c"]) if with_classlabel else datasets.Value("uint8")
    feats = datasets.Features({"image": datasets.Image(), "label": label_feature, "id_str": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": imgs, "label": [i % 3 for i in range(n)], "id_str": [f"gal{i}" for i in range(n)]}, features=feats)


def test_hf_save_to_disk_and_parquet_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": _hf_dataset(12), "test": _hf_dataset(6)})
    dd.save_to_disk(tmp_path / "galaxy_mnist")
    ds = open_dataset(f"hf:{tmp_path / 'galaxy_mnist'}")
    assert len(ds) == 18 and (ds.splits == "train").sum() == 12 and (ds.splits == "test").sum() == 6
    assert ds.class_names == ["smooth_round", "smooth_cigar", "edge_on_disk", "unbarred_spiral"]  # built-in table
    assert ds.ids[0] == "gal0" and ds.image_size == 24
    assert ds.batch([0, 13]).shape == (2, 24, 24, 3)
    assert np.array_equal(ds.image(13), np.asarray(dd["test"][1]["image"]))

    # the hub layout: data/train-*.parquet, data/test-*.parquet; label a plain uint8
    folder = tmp_path / "galaxy10_decals" / "data"
    folder.mkdir(parents=True)
    dd["train"].to_parquet(folder / "train-00000-of-00001.parquet")
    dd["test"].to_parquet(folder / "test-00000-of-00001.parquet")
    ds2 = open_dataset(f"hf:{tmp_path / 'galaxy10_decals'}")
    assert ds2.class_names == GALAXY10_CLASSES and len(ds2) == 18
    assert np.array_equal(ds2.image(13), ds.image(13))

    dd3 = datasets.DatasetDict({"train": _hf_dataset(6, with_classlabel=True)})
    dd3.save_to_disk(tmp_path / "other")
    assert open_dataset(f"hf:{tmp_path / 'other'}").class_names == ["a", "b", "c"]


def test_hf_unreachable_hub_id_fails_fast():
    import time

    t = time.time()
    with pytest.raises(SourceError, match="could not reach .*hf:/path/to/folder"):
        open_dataset("hf:nobody-here/no_such_dataset")
    assert time.time() - t < 20


def test_folder_real_photos(examples_dir):
    ds = open_dataset(f"folder:{examples_dir}")
    assert len(ds) == 60 and not ds.skipped
    assert ds.class_names == GALAXY10_CLASSES
    assert np.bincount(ds.labels, minlength=10).tolist() == [6, 10, 5, 5, 4, 6, 5, 4, 6, 9]
    assert "galaxy_zoo_answer" in ds.metadata.columns
    assert ds.image(0).shape == (424, 424, 3)
    assert ds.batch([0, 1]).shape == (2, 256, 256, 3)


def test_folder_modes_and_broken_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpg")
    Image.fromarray(np.dstack([rgb, np.full((40, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray((rng.integers(0, 65535, (20, 20))).astype(np.uint16)).save(tmp_path / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    files = ["rgb.png", "gray.jpg", "rgba.png", "deep16.png", "cmyk.jpg", "empty.png", "junk.jpg", "gone.png"]
    pd.DataFrame({"file": files, "label": [0, 1, 2, 3, 0, 1, 2, 3], "redshift": np.linspace(0, 1, 8)}).to_csv(
        tmp_path / "labels.csv", index=False)
    ds = open_dataset(f"folder:{tmp_path}?image_size=16")
    # opening only stats the files; a file that does not decode is skipped when a batch meets it
    assert list(ds.ids) == files[:5] + ["junk.jpg"]
    assert {s["file"]: s["reason"] for s in ds.skipped} == {"empty.png": "empty file", "gone.png": "missing"}
    rows, _, skipped = ds.load_images(np.arange(6))
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert skipped == [{"file": "junk.jpg", "reason": "unreadable (UnidentifiedImageError)"}]
    b = ds.batch(np.arange(5))
    assert b.shape == (5, 16, 16, 3) and b.dtype == np.uint8
    assert "redshift" in ds.metadata.columns
    g = ds.image(1)
    assert g.shape == (40, 30, 3) and np.array_equal(g[..., 0], g[..., 1])  # grayscale -> RGB


def test_reference_errors(tmp_path):
    for ref, msg in [("galaxy10", "no prefix"), ("s3:bucket", "unknown dataset prefix"),
                     (f"folder:{tmp_path}/missing", "does not exist"), (f"folder:{tmp_path}", "labels.csv not found"),
                     ("synthetic:", "empty")]:
        with pytest.raises(SourceError, match=msg):
            open_dataset(ref)
