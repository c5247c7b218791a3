"""Features of one image a user brings (an upload in the dashboard's Find view),
computed in-process with a cached run's checkpoint, exactly as `extract` computes
them for the same file read through ``folder:`` (or ``fits:``): the same decoded pixels
(``core.data.base.decode_image``: the original, shrunk as it is decoded only when its
longer side exceeds ``MAX_SIDE``), resampled once by the checkpoint's own preprocessing,
the run's pooling.

Uploads cannot exhaust the server's memory: large images are shrunk as they are decoded
(no full-size RGB array or float tensor of a 12,000 x 12,000 image is made), and at most
``CONCURRENT`` uploads are decoded or embedded at once (``read_upload``, ``embed_upload``);
the others wait.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import threading

import numpy as np

from core.data.base import MAX_SIDE, SourceError, decode_image

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp", "tif", "tiff", "fits", "fit"]
CONCURRENT = 2  # uploads decoded and embedded at once per server process; the others wait their turn
_SLOTS = threading.BoundedSemaphore(CONCURRENT)


def content_hash(content: bytes) -> str:
    """16 hex chars of SHA-256: the cache key of an uploaded file."""
    return hashlib.sha256(content).hexdigest()[:16]


def read_image(content: bytes, name: str = "") -> np.ndarray:
    """uint8 (h, w, 3) RGB from an image file's bytes (PNG, JPEG, TIFF...; FITS: a g,r,z cube by
    the Legacy Surveys colour scheme), shrunk as decoded beyond ``MAX_SIDE`` pixels a side.
    Raises SourceError with what went wrong."""
    if name.lower().endswith((".fits", ".fit")):
        return _read_fits(content, name or "the file")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as img:
            return decode_image(img)
    except Image.DecompressionBombError as e:
        raise SourceError(f"{name or 'the file'} has too many pixels to decode safely ({e})") from None
    except Exception as e:
        raise SourceError(f"{name or 'the file'} is not an image this app can read ({type(e).__name__})") from None


def _read_fits(content: bytes, name: str) -> np.ndarray:
    import warnings

    from astropy.io import fits

    from core.data.fits import legacy_rgb, shrink_planes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy only warns about a truncated file: make it an error
            with fits.open(io.BytesIO(content), memmap=False) as hdul:
                hdus = [h for h in hdul if getattr(h, "data", None) is not None]
                cube = next((h for h in hdus if h.data.ndim == 3 and h.data.shape[0] == 3), None)
                if cube is None:
                    shapes = ", ".join(str(h.data.shape) for h in hdus) or "no image data"
                    raise SourceError(f"{name} holds no g,r,z cube (3 planes); found {shapes}")
                bands = [str(cube.header.get(f"BAND{i}", "grz"[i])).strip().lower() for i in range(3)]
                planes = shrink_planes(cube.data)
    except SourceError:
        raise
    except Exception as e:
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise SourceError(f"{name} is truncated or not a FITS file: it does not read back ({detail})") from None
    return legacy_rgb(planes, bands)


def embed(image: np.ndarray, checkpoint, pooling: str = "auto", image_size: int | None = None):
    """(features (d,) float32, class probabilities (C,) or None) of one uint8 (h, w, 3) image,
    as `extract` embeds a dataset image read at its original size: the checkpoint's
    preprocessing resamples it once. (``image_size`` is accepted for old callers and ignored:
    squaring the image to the run's dataset size first would resample it twice.)"""
    import torch

    x = torch.from_numpy(np.array(image, dtype=np.uint8)[None])  # a writable copy
    with torch.inference_mode():
        feats, logits = checkpoint.forward(checkpoint.preprocess(x.to(checkpoint.device)), pooling)
    probs = None if logits is None else torch.softmax(logits.float(), -1)[0].cpu().numpy()
    return feats.float()[0].cpu().numpy(), probs


@contextlib.contextmanager
def slot(timeout: float = 120.0):
    """Hold one of ``CONCURRENT`` slots while decoding or embedding an upload, so however many
    uploads arrive at once, at most that many are worked on together. A SourceError when no
    slot frees up within ``timeout`` seconds."""
    if not _SLOTS.acquire(timeout=timeout):
        raise SourceError(f"the server is busy with {CONCURRENT} other uploads: try again in a moment")
    try:
        yield
    finally:
        _SLOTS.release()


def read_upload(content: bytes, name: str = "", timeout: float = 120.0) -> np.ndarray:
    """``read_image`` holding a slot."""
    with slot(timeout):
        return read_image(content, name)


def embed_upload(image: np.ndarray, checkpoint, pooling: str = "auto", timeout: float = 120.0):
    """``embed`` holding a slot."""
    with slot(timeout):
        return embed(image, checkpoint, pooling)
