"""`folder:DIR`: image files listed in `DIR/labels.csv` (`file,label[,class_name,...]`).

Any size and mode (grayscale, RGBA, 16-bit, CMYK) becomes uint8 RGB. Images are
decoded lazily, when a batch or a thumbnail needs them: opening a folder only reads
labels.csv and stats the files (missing and empty files are skipped and named
there); a file that does not decode is skipped and named by the extraction that
meets it (``Dataset.load_images``); the rest goes on.
Extra CSV columns become metadata. An optional `split` column is honoured;
otherwise every image is in the "test" split (these are images to look at, not
to train on).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.sky import map_columns
from core.data.base import GALAXY10_CLASSES, Dataset, SourceError, decode_image, resize_square, to_rgb_uint8


class FolderDataset(Dataset):
    files: list  # absolute Paths, aligned with rows

    def _read(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            img.draft("RGB", (self.image_size * 2, self.image_size * 2))  # fast JPEG downscale
            return to_rgb_uint8(img)

    def _load(self, rows):
        return np.stack([resize_square(self._read(int(i)), self.image_size) for i in rows])

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.files[int(i)]) as img:
            return decode_image(img)  # the original, shrunk as decoded only beyond base.MAX_SIDE


def _check_file(path: Path) -> tuple[str | None, str]:
    """(why this file can't be used or None, its stat signature for the fingerprint).
    Only a stat: decoding waits until the image is needed."""
    try:
        st = path.stat()
    except OSError:
        return "missing", ""
    if not path.is_file():
        return "missing", ""
    if st.st_size == 0:
        return "empty file", ""
    return None, f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def open_folder(ref: str, root: Path, image_size: int | str = 256, class_names: str | None = None,
                ra: str | None = None, dec: str | None = None, **_):
    root = Path(root)
    csv = root / "labels.csv"
    if not root.is_dir():
        raise SourceError(f"folder {root} does not exist: point folder: at a directory holding labels.csv")
    if not csv.is_file():
        raise SourceError(f"{csv} not found: a folder dataset needs labels.csv with columns file,label")
    table = pd.read_csv(csv)
    if "file" not in table.columns:
        raise SourceError(f"{csv} has no 'file' column: expected columns file,label[,class_name,...]")
    if "label" not in table.columns:
        table["label"] = -1
    table["label"] = pd.to_numeric(table["label"], errors="coerce").fillna(-1).astype(np.int64)

    keep, skipped, stats = [], [], []
    for i, name in enumerate(table["file"].astype(str)):
        problem, stat = _check_file(root / name)
        if problem:
            skipped.append({"file": name, "reason": problem})
        else:
            keep.append(i)
            stats.append(stat)
    table = table.iloc[keep].reset_index(drop=True)
    if table.empty:
        raise SourceError(f"no readable images listed in {csv} ({len(skipped)} skipped)")

    labels = table["label"].to_numpy()
    names = class_names_of(table, labels, class_names)
    files = [root / f for f in table["file"].astype(str)]
    splits = table["split"].astype(str).to_numpy() if "split" in table.columns else np.full(len(table), "test")
    meta = table.drop(columns=[c for c in ("label", "split") if c in table.columns])
    meta = map_columns(meta, ra, dec, where=str(csv))  # ?ra=COL&dec=COL, else columns named ra/dec

    h = hashlib.sha256()
    h.update(csv.read_bytes())
    for stat in stats:  # the same digest as before decoding became lazy: caches stay valid
        h.update(stat.encode())
    ds = FolderDataset(
        source=ref,
        class_names=names,
        ids=table["file"].astype(str).to_numpy(),
        labels=labels,
        splits=splits,
        metadata=meta,
        image_size=int(image_size),
        skipped=skipped,
        content_key="folder:" + h.hexdigest(),
    )
    ds.files = files
    return ds


def class_names_of(table: pd.DataFrame, labels: np.ndarray, option: str | None) -> list[str]:
    """class_name column if present, else an explicit option, else Galaxy10 names when
    the labels fit them, else "class k"."""
    n = int(labels.max()) + 1 if (labels >= 0).any() else 0
    if option:
        names = [s.strip() for s in option.split(",")]
        if len(names) < n:
            raise SourceError(f"class_names lists {len(names)} names but labels go up to {n - 1}")
        return names
    if "class_name" in table.columns:
        names = [f"class {k}" for k in range(n)]
        for lab, name in zip(labels, table["class_name"].astype(str)):
            if lab >= 0:
                names[lab] = name
        if n <= len(GALAXY10_CLASSES) and all(
            names[k] in (GALAXY10_CLASSES[k], f"class {k}") for k in range(n)
        ):
            return list(GALAXY10_CLASSES)  # keep the full table so class k means the same everywhere
        return names
    if n <= len(GALAXY10_CLASSES):
        return list(GALAXY10_CLASSES)
    return [f"class {k}" for k in range(n)]
