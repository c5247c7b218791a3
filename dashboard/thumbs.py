"""Small galaxy thumbnails as PNG bytes (no Streamlit here; the app caches them)."""
from __future__ import annotations

import io

import numpy as np

THUMB_PX = 96


def thumbnail_png(image: np.ndarray, size: int = THUMB_PX) -> bytes:
    """uint8 (h, w, 3) -> PNG bytes of a ``size`` px square thumbnail."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    img.thumbnail((size, size), Image.BILINEAR)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def placeholder_png(size: int = THUMB_PX) -> bytes:
    """A plain grey square for galaxies whose image cannot be read."""
    return thumbnail_png(np.full((size, size, 3), 200, np.uint8), size)
