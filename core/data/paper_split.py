"""Take another source's train/test split by matching galaxies by their pixels:
``h5:Galaxy10_DECals.h5?split_from=hf:matthieulel/galaxy10_decals`` scores on the
paper's test split (the HF dataset's), not the h5 source's own seeded 80/20 split,
so a published finetune is never scored on galaxies it was trained on.

Each image becomes a small signature (the mean of each channel over an 8 x 8 grid
of blocks, 192 numbers), robust to re-encoding (PNG / JPEG) but not to another
cutout; every galaxy takes the split of the nearest galaxy of the other source,
and a match that is not close (a galaxy missing from the other source) is an error.
Matching reads both sources once; the result is kept in ``<cache>/splits/`` keyed
by both sources' contents, so later opens cost a file read.
"""
from __future__ import annotations

import numpy as np

from core.data.base import SourceError

GRID = 8
MAX_LEVELS = 3.0  # a match differs by at most this many uint8 levels per block on average
_BATCH = 256


def signatures(ds) -> np.ndarray:
    """(n, 3 * GRID * GRID) float32 block means of each image of ``ds`` at its batch size."""
    out = []
    for start in range(0, len(ds), _BATCH):
        rows = np.arange(start, min(len(ds), start + _BATCH))
        b = ds.batch(rows).astype(np.float32)
        n, h, w, c = b.shape
        b = b[:, : h - h % GRID, : w - w % GRID]
        blocks = b.reshape(n, GRID, b.shape[1] // GRID, GRID, b.shape[2] // GRID, c).mean((2, 4))
        out.append(blocks.reshape(n, -1))
    return np.concatenate(out) if out else np.zeros((0, 3 * GRID * GRID), np.float32)


def matched_splits(ds, other) -> np.ndarray:
    """The split of ``other``'s matching galaxy for each row of ``ds`` (n,) str,
    cached under ``<cache>/splits/``."""
    from core.store import cache as store

    key = store.key_of("split_from", ds.content_key, len(ds), other.fingerprint)
    path = store.cache_dir() / "splits" / f"{key}.npy"
    if path.is_file():
        return np.load(path).astype(str)
    splits = _match(ds, other)
    with store.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, splits)
    return splits


def _match(ds, other) -> np.ndarray:
    if ds.image_size != other.image_size:
        raise SourceError(f"split_from: images of {other.source} are {other.image_size} px, "
                          f"those of {ds.source} {ds.image_size} px: they are not the same cutouts")
    a, b = signatures(ds), signatures(other)
    b_sq = (b * b).sum(1)
    nearest = np.empty(len(a), np.int64)
    dist = np.empty(len(a), np.float32)
    for start in range(0, len(a), 1024):
        q = a[start : start + 1024]
        d2 = np.maximum((q * q).sum(1)[:, None] + b_sq[None, :] - 2 * q @ b.T, 0)
        nearest[start : start + len(q)] = d2.argmin(1)
        dist[start : start + len(q)] = np.sqrt(d2.min(1) / a.shape[1])  # RMS difference per block
    bad = np.flatnonzero(dist > MAX_LEVELS)
    if len(bad):
        raise SourceError(f"split_from: {len(bad)} of {len(a)} galaxies of {ds.source} have no match in "
                          f"{other.source} (first: row {bad[0]}); the two sources do not hold the same galaxies")
    return np.asarray(other.splits)[nearest].astype(str)
