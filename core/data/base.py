"""The one Dataset interface every source (h5, hf, folder, synthetic) implements."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import UserError

GALAXY10_CLASSES = [
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
]
# Galaxy10 DECaLS class counts (PAPER.md), used for the default synthetic balance.
GALAXY10_COUNTS = [1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873]

GALAXY_MNIST_CLASSES = ["smooth_round", "smooth_cigar", "edge_on_disk", "unbarred_spiral"]


class SourceError(UserError, ValueError):
    """A user-facing problem with a dataset or checkpoint reference (bad prefix,
    missing path, unreachable id). The message says what to do; the CLI prints it
    without a traceback and exits with code 2."""


@dataclass
class Dataset:
    """A labelled image collection, as every source presents it.

    Rows are addressed by position ``0..n-1``. ``ids`` are stable strings (file
    name, h5 row, hf split/row) that survive re-extraction; the dashboard keys on them.

    Subclasses implement ``_load(rows) -> uint8 (b, H, W, 3)`` at ``image_size``
    and ``image(i) -> uint8 (h, w, 3)`` at native resolution.
    """

    source: str
    class_names: list[str]
    ids: np.ndarray  # (n,) str
    labels: np.ndarray  # (n,) int64, -1 = unlabelled
    splits: np.ndarray  # (n,) str: "train" | "test"
    metadata: pd.DataFrame = field(default_factory=pd.DataFrame)  # n rows, aligned with ids
    image_size: int = 256  # side of the square uint8 batches `batch()` returns
    skipped: list[dict] = field(default_factory=list)  # [{"file":..., "reason":...}]
    content_key: str = ""  # source-specific digest of the content; see fingerprint()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the images, labels or split change (16 hex chars)."""
        h = hashlib.sha256()
        h.update(self.content_key.encode())
        h.update(json.dumps(self.class_names).encode())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        h.update("\0".join(map(str, self.splits)).encode())
        h.update("\0".join(map(str, self.ids)).encode())
        h.update(str(self.image_size).encode())
        return h.hexdigest()[:16]

    def rows(self, split: str = "all") -> np.ndarray:
        """Row positions of one split ("train", "test") or of all rows ("all")."""
        if split == "all":
            return np.arange(len(self))
        if split not in ("train", "test"):
            raise SourceError(f"unknown split {split!r}: use all, train or test")
        return np.flatnonzero(self.splits == split)

    def batch(self, rows) -> np.ndarray:
        """uint8 RGB images (b, image_size, image_size, 3) for the given rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = self._load(rows)
        assert out.dtype == np.uint8 and out.ndim == 4 and out.shape[-1] == 3, out.shape
        return out

    def load_images(self, rows) -> tuple[np.ndarray, list[np.ndarray], list[dict]]:
        """(rows that decoded, their images at native size uint8 (h, w, 3), skipped
        [{"file", "reason"}]). Extraction reads file-by-file sources through this, so
        one bad image mid-stream is skipped and named, not fatal."""
        ok, images, skipped = [], [], []
        for i in np.asarray(rows, dtype=np.int64):
            try:
                images.append(self.image(int(i)))
                ok.append(i)
            except Exception as e:  # PIL and friends raise many types for broken files
                skipped.append({"file": str(self.ids[i]), "reason": _reason(e)})
        return np.asarray(ok, dtype=np.int64), images, skipped

    def iter_batches(self, rows, batch_size: int):
        """Yield (rows, uint8 batch) chunks; sources read lazily so memory stays bounded."""
        rows = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield chunk, self.batch(chunk)

    def image(self, i: int) -> np.ndarray:
        """One image at native resolution, uint8 (h, w, 3), for thumbnails."""
        return self._load(np.asarray([i]))[0]

    def close(self) -> None:
        """Release open file handles (h5); the dataset reopens them when used again."""

    def _load(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else "unlabelled"


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "missing"
    return f"unreadable ({type(e).__name__})"


def stratified_split(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 42) -> np.ndarray:
    """Deterministic stratified split: returns an array of "train"/"test" per row.

    Each class contributes round(test_fraction * count) rows to "test"; unlabelled
    rows (-1) are treated as their own class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    splits = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        splits[idx[: int(round(test_fraction * len(idx)))]] = "test"
    return splits.astype(str)


def to_rgb_uint8(img) -> np.ndarray:
    """Convert a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F) to uint8 RGB."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0.0, 1.0)
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255
        img = Image.fromarray(a.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


MAX_SIDE = 2048  # images decoded for a model keep at most this many pixels on their longer side
_REDUCIBLE = ("L", "RGB", "RGBA", "LA", "I", "F")


def decode_image(img) -> np.ndarray:
    """uint8 (h, w, 3) RGB of an opened (not yet loaded) PIL image, as a model is fed it: the
    original, or, when its longer side exceeds ``MAX_SIDE``, shrunk by an integer factor as it is
    decoded (a JPEG at 1/2-1/8 scale by the decoder, anything else box-averaged by
    ``Image.reduce``), so a 12,000 x 12,000 image never becomes a full-size RGB array or tensor.
    Images up to ``MAX_SIDE`` are the originals: the model's preprocessing resamples them once.
    `extract` (``folder:`` and FITS sources) and an upload in the dashboard both read through
    here, so they embed the same pixels."""
    from PIL import Image

    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError("zero-size image")
    if max(w, h) <= MAX_SIDE:
        return to_rgb_uint8(img)
    factor = -(-max(w, h) // MAX_SIDE)
    if img.format == "JPEG":
        img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (max(1, w // factor), max(1, h // factor)))
        factor = -(-max(img.size) // MAX_SIDE)
    img.load()
    if factor > 1:
        if img.mode not in _REDUCIBLE:
            img = Image.fromarray(to_rgb_uint8(img))
        img = img.reduce(factor)
    return to_rgb_uint8(img)


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (h, w, 3) image to (size, size, 3), bilinear with antialiasing."""
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.uint8)
