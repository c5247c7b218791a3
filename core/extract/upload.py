"""Features of one image a user brings (an upload in the dashboard's Find view),
computed in-process with a cached run's checkpoint, exactly as `extract` computes
them for a dataset: uint8 RGB resized to the run's dataset image size, the
checkpoint's own preprocessing, the run's pooling."""
from __future__ import annotations

import hashlib
import io

import numpy as np

from core.data.base import SourceError, resize_square, to_rgb_uint8

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "tif", "tiff", "fits", "fit"]


def content_hash(content: bytes) -> str:
    """16 hex chars of SHA-256: the cache key of an uploaded file."""
    return hashlib.sha256(content).hexdigest()[:16]


def read_image(content: bytes, name: str = "") -> np.ndarray:
    """uint8 (h, w, 3) RGB from an image file's bytes (PNG, JPEG, TIFF...; FITS: a g,r,z cube by
    the Legacy Surveys colour scheme). Raises SourceError with what went wrong."""
    if name.lower().endswith((".fits", ".fit", ".fits.gz")):
        from astropy.io import fits

        from core.data.fits import legacy_rgb

        try:
            with fits.open(io.BytesIO(content), memmap=False) as hdul:
                hdu = next(h for h in hdul if getattr(h, "data", None) is not None and h.data.ndim == 3)
                bands = [str(hdu.header.get(f"BAND{i}", "grz"[i])).strip().lower() for i in range(3)]
                return legacy_rgb(np.asarray(hdu.data, np.float64), bands)
        except Exception as e:
            raise SourceError(f"{name} is not a g,r,z FITS cube ({type(e).__name__})") from None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as img:
            img.load()
            return to_rgb_uint8(img)
    except Exception as e:
        raise SourceError(f"{name or 'the file'} is not an image this app can read ({type(e).__name__})") from None


def embed(image: np.ndarray, checkpoint, pooling: str = "auto", image_size: int | None = None):
    """(features (d,) float32, class probabilities (C,) or None) of one uint8 (h, w, 3) image.

    ``image_size``: the side the run's dataset batches had (provenance
    ``dataset_image_size``); the image is squared to it first, as a Dataset does.
    """
    import torch

    if image_size:
        image = resize_square(np.ascontiguousarray(image), int(image_size))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)[None]).to(checkpoint.device)  # a writable copy
    with torch.inference_mode():
        feats, logits = checkpoint.forward(checkpoint.preprocess(x), pooling)
    probs = None if logits is None else torch.softmax(logits.float(), -1)[0].cpu().numpy()
    return feats.float()[0].cpu().numpy(), probs
