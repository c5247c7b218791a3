"""`h5:PATH`: the astroNN Galaxy10 DECaLS file, or any h5 in its layout.

Datasets: `images` (N, H, W, 3) uint8, `ans` (labels), and optionally `ra`, `dec`,
`redshift`, `pxscale`. The real file is 2.5 GB, so images are read in chunks,
never whole. No split is stored: a deterministic stratified 80/20 split (seed 42)
is made and recorded in the features' `split` column.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.sky import map_columns
from core.data.base import GALAXY10_CLASSES, Dataset, SourceError, resize_square, stratified_split

META_FIELDS = ("ra", "dec", "redshift", "pxscale")


class H5Dataset(Dataset):
    path: Path
    _file = None
    batches_are_originals = True  # every image is stored at image_size: batches need no resampling

    def __getstate__(self):  # Ray ships the dataset to its actors; each opens its own handle
        return {k: v for k, v in self.__dict__.items() if k != "_file"}

    def _images(self):
        # One handle per process, opened lazily (h5py handles do not survive fork/pickle).
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file["images"]

    def _load(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        images = self._images()
        order = np.argsort(rows)
        sorted_rows = rows[order]
        # Contiguous runs read as slices (fast), the rest by sorted fancy indexing.
        if len(sorted_rows) and sorted_rows[-1] - sorted_rows[0] == len(sorted_rows) - 1:
            block = images[sorted_rows[0] : sorted_rows[-1] + 1]
        else:
            block = images[sorted_rows]
        out = np.empty_like(block)
        out[order] = block
        if out.shape[1] != self.image_size:
            out = np.stack([resize_square(im, self.image_size) for im in out])
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def image(self, i: int) -> np.ndarray:
        return self._images()[int(i)]


def open_h5(ref: str, path: Path, seed: int | str = 42, test_fraction: float | str = 0.2, **_):
    """An astroNN Galaxy10 h5 file (or one in its layout). ``?split_from=`` (the paper's split) is applied
    by core.data.sources.open_dataset, which can open the other dataset."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path} not found: h5: needs the Galaxy10_DECals.h5 file (or one in its layout)")
    try:
        import h5py
    except ImportError:
        raise SourceError("reading h5: sources needs h5py: pip install h5py") from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SourceError(f"{path} is not a readable HDF5 file ({e})") from None
    with f:
        if "images" not in f or "ans" not in f:
            raise SourceError(f"{path} lacks the 'images' and 'ans' datasets of the Galaxy10 layout")
        shape = f["images"].shape
        if len(shape) != 4 or shape[-1] != 3:
            raise SourceError(f"{path}: 'images' has shape {shape}, expected (N, H, W, 3)")
        labels = np.asarray(f["ans"][:], dtype=np.int64)
        meta = pd.DataFrame({k: np.asarray(f[k][:]) for k in META_FIELDS if k in f and len(f[k]) == shape[0]})
        # Content digest from labels, shapes and a strided sample of pixels: hashing
        # all 2.5 GB would cost seconds on every open.
        h = hashlib.sha256(f"{shape}".encode())
        h.update(labels.tobytes())
        for k in meta:
            h.update(meta[k].to_numpy().tobytes())
        for i in np.linspace(0, shape[0] - 1, num=min(shape[0], 32)).astype(int):
            h.update(f["images"][i].tobytes())
    if len(labels) != shape[0]:
        raise SourceError(f"{path}: {len(labels)} labels for {shape[0]} images")
    meta = map_columns(meta, where=str(path))  # the file's own ra/dec datasets, validated
    splits = stratified_split(labels, float(test_fraction), int(seed))
    ds = H5Dataset(
        source=ref, class_names=list(GALAXY10_CLASSES), ids=np.array([f"g10-{i:05d}" for i in range(shape[0])]),
        labels=labels, splits=splits, metadata=meta, image_size=int(shape[1]),
        content_key=f"h5:{h.hexdigest()}:seed={seed}:test={test_fraction}",
    )
    ds.path = path
    return ds
