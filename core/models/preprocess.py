"""Images -> the pixel values a checkpoint expects, exactly as its own image processor.

The settings are the checkpoint's ``preprocessor_config.json`` read through
transformers' ``AutoImageProcessor`` (so the processor class's defaults fill what
the file leaves out), and the steps are the processor's: resize (fixed size or
shortest edge), centre crop, rescale, normalise. Resizing runs in torch (on the
GPU when there is one) with the processor's filter and antialiasing, and rounds
to uint8 levels as the processor's PIL resize does.

Each image is resampled once, from its original size: datasets whose batches are
not their original images (``folder:`` and ``hf:`` sources resize to a common
size to stack them) are read image by image through `load_batch`; sources whose
batches are the originals (h5, synthetic) say so with ``batches_are_originals``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes; others -> bicubic


def processor_config(path: Path, config) -> dict:
    """The checkpoint's image-processor settings as a plain dict.

    With a ``preprocessor_config.json``: what transformers' own processor class
    reads from it, class defaults included. Without one: a square resize to the
    model's ``image_size``, bicubic, ImageNet mean/std.
    """
    path = Path(path)
    proc = {}
    if (path / "preprocessor_config.json").is_file():
        proc = _auto_processor_dict(path)
    image_size = getattr(config, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    defaults = {"do_resize": True, "size": {"height": image_size, "width": image_size}, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_MEAN,
                "image_std": IMAGENET_STD, "resample": 3, "do_center_crop": False}
    for k, v in defaults.items():
        if proc.get(k) is None:
            proc[k] = v
    proc["resample"] = int(proc["resample"])
    return proc


def _auto_processor_dict(path: Path) -> dict:
    raw = json.loads((path / "preprocessor_config.json").read_text())
    try:
        from transformers import AutoImageProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return {**raw, **json.loads(AutoImageProcessor.from_pretrained(path).to_json_string())}
    except Exception:  # an unknown processor class: its file is all we have
        return raw


def _hw(size) -> tuple[int, int] | int | None:
    """(height, width) of a fixed size, or an int: the shortest edge."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if "height" in size:
        return (int(size["height"]), int(size["width"]))
    return int(size["shortest_edge"])


def resized_shape(h: int, w: int, size) -> tuple[int, int]:
    """Output (height, width) of the processor's resize: a fixed size, or the
    shortest edge set to ``size`` and the other scaled (truncated, as HF does)."""
    size = _hw(size)
    if isinstance(size, tuple):
        return size
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    return (size, new_long) if h <= w else (new_long, size)


def _center_crop(x: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """transformers' ``center_crop``: a crop larger than the image pads it with zeros first
    (centred, the odd pixel of padding on the top/left), so the output is always ``crop``."""
    ch, cw = crop
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        nh, nw = max(ch, h), max(cw, w)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        x = F.pad(x, (left, nw - w - left, top, nh - h - top))
        h, w = nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


class Preprocessor:
    """uint8 RGB images -> normalised float pixel values (b, 3, S, S)."""

    def __init__(self, config: dict):
        self.config = config

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model receives."""
        p = self.config
        if p.get("do_center_crop") and p.get("crop_size"):
            return _hw(p["crop_size"])
        size = _hw(p.get("size"))
        return size if isinstance(size, tuple) else (size, size)

    def __call__(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (b, H, W, 3) on any device -> float (b, 3, h, w) in ``dtype``."""
        return self._pixels(images.permute(0, 3, 1, 2).float()).to(dtype)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config
        if p.get("do_resize", True):
            x = self._resize(x)
        if p.get("do_center_crop"):
            x = _center_crop(x, _hw(p["crop_size"]))
        if p.get("do_rescale", True):
            x = x * float(p.get("rescale_factor", 1 / 255))
        if p.get("do_normalize", True):
            mean = torch.tensor(p["image_mean"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(p["image_std"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = resized_shape(h, w, self.config.get("size"))
        if out == (h, w):
            return x
        mode = _FILTERS.get(self.config.get("resample", 3), "bicubic")
        if mode == "nearest":
            return F.interpolate(x, size=out, mode=mode)
        x = F.interpolate(x, size=out, mode=mode, antialias=True, align_corners=False)
        return x.round_().clamp_(0, 255)  # the processor resizes uint8 images and gets uint8 back


def originals_are_batches(ds) -> bool:
    """Whether ``ds.batch`` returns the images at their original size (h5 and
    synthetic sources do); otherwise they are read one by one from the original."""
    return bool(getattr(ds, "batches_are_originals", False))


def load_batch(ds, rows, preprocess) -> torch.Tensor:
    """The images of ``rows`` ready for the device: a uint8 (b, H, W, 3) batch of the
    original images when they share one size (``preprocess`` then runs on the
    device), else float pixel values (b, 3, S, S) made here by ``preprocess``
    (uint8 (1, H, W, 3) -> (1, 3, S, S)), each image from its original size."""
    if originals_are_batches(ds):
        return torch.from_numpy(ds.batch(rows))
    return stack_originals([ds.image(int(i)) for i in rows], preprocess)


def stack_originals(images: list, preprocess) -> torch.Tensor:
    """Original uint8 (h, w, 3) images -> one batch, as ``load_batch`` returns it."""
    if len({im.shape for im in images}) == 1:
        return torch.from_numpy(np.stack(images))
    return torch.cat([preprocess(torch.from_numpy(np.ascontiguousarray(im))[None]) for im in images])
