"""`timm:` checkpoints: galaxy-domain encoders built with timm, beside the HF families.

==============================  ===================================================
``timm:hf_hub:OWNER/NAME``       a timm model on the hub, e.g. Zoobot's encoders
                                 ``timm:hf_hub:mwalmsley/zoobot-encoder-convnext_nano``
                                 (HF cache first, then the network; fails fast offline)
``timm:DIR``                     a folder timm wrote with ``save_for_hf``
                                 (``config.json`` + ``model.safetensors``)
==============================  ===================================================

The model is built by ``timm.create_model("local-dir:<snapshot>", pretrained=True,
num_classes=0)``: architecture code comes from the installed timm, weights from
the folder; nothing remote is executed. Features are timm's pooled pre-logits
(``forward_head(..., pre_logits=True)``, e.g. a ConvNeXt's global average pool +
LayerNorm); ``mean`` averages the final feature map or patch tokens, ``cls`` takes
the class token of ViT-style models. Preprocessing follows the model's timm data
config (``input_size``, ``interpolation``, ``crop_pct``, ``mean``, ``std``), done
on the device like the HF families.

timm needs a torchvision built for the installed torch (``requirements-timm.txt``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built or run
    import torch

from core.data.base import SourceError
from core.models.checkpoint import Checkpoint, fingerprint_dir, recorded_provenance

_SIZES = {640: "nano", 768: "tiny/small", 1024: "base", 1536: "large"}  # ConvNeXt widths (Zoobot's encoders)


def _timm():
    import torch

    try:
        import timm
    except Exception as e:  # ImportError, or torchvision built for another torch (RuntimeError)
        raise SourceError(
            f"timm: checkpoints need timm and a torchvision matching torch {torch.__version__} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): pip install -r requirements-timm.txt"
        ) from None
    return timm


def is_timm_folder(path) -> bool:
    """A folder timm's save_for_hf wrote: config.json with ``architecture`` and no HF ``model_type``."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return False
    raw = json.loads(f.read_text())
    return "architecture" in raw and "model_type" not in raw


def resolve(body: str) -> Path:
    """The local folder of a ``timm:`` reference body, or a SourceError saying what to write."""
    if body.startswith(("hf_hub:", "hf-hub:")):
        repo = body.split(":", 1)[1]
        from core.data.hub import snapshot

        try:
            path = snapshot(repo, ["*.json", "*.safetensors"])
        except Exception as e:
            raise SourceError(
                f"could not reach timm:{body} ({type(e).__name__}): with no network, save the model with "
                "timm.models.save_for_hf(model, DIR, safe_serialization=True) elsewhere and use timm:DIR"
            ) from None
    else:
        path = Path(body).expanduser().resolve()
        if not path.exists():
            raise SourceError(
                f"timm:{body} is neither a folder nor hf_hub:OWNER/NAME: write timm:hf_hub:OWNER/NAME (e.g. "
                "timm:hf_hub:mwalmsley/zoobot-encoder-convnext_nano) or timm:DIR for a save_for_hf folder")
    if not is_timm_folder(path):
        raise SourceError(f"{path} is not a timm save_for_hf folder (config.json with 'architecture')")
    if not list(path.glob("*.safetensors")):
        raise SourceError(f"{path} has no .safetensors weights: save with safe_serialization=True")
    return path


def describe(path) -> dict:
    """Family (the timm architecture), default pooling and head, from config.json alone."""
    raw = json.loads((Path(path) / "config.json").read_text())
    return {"family": raw["architecture"], "has_head": False, "default_pooling": "pooler",
            "mode": recorded_provenance(path).get("mode")}


class TimmCheckpoint(Checkpoint):
    """A timm encoder behind the Checkpoint interface (features only, no head)."""

    def default_pooling(self) -> str:
        return "pooler"

    @property
    def size_name(self) -> str:
        return _SIZES.get(self.hidden_size, f"hidden {self.hidden_size}")

    def input_size(self) -> tuple[int, int]:
        return tuple(self.processor_config["input_size"][-2:])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (b, H, W, 3) on any device -> float (b, 3, h, w) as timm's eval transform makes it:
        shortest edge to ``size / crop_pct``, centre crop to ``size``, rescale, normalise."""
        import torch
        import torch.nn.functional as F

        cfg = self.processor_config
        x = images.permute(0, 3, 1, 2).float()
        h_out, w_out = self.input_size()
        crop_pct = cfg.get("crop_pct") or 0.875
        scale = (math.floor(h_out / crop_pct), math.floor(w_out / crop_pct))
        h, w = x.shape[-2:]
        if scale[0] == scale[1]:  # torchvision's Resize(int): the shortest edge becomes scale
            size = (scale[0], int(scale[0] * w / h)) if h <= w else (int(scale[0] * h / w), scale[0])
        else:  # timm's ResizeKeepRatio
            r = max(scale[0] / h, scale[1] / w)
            size = (round(h * r), round(w * r))
        if size != (h, w):
            mode = "bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear"
            x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp_(0, 255)
        top, left = int(round((size[0] - h_out) / 2)), int(round((size[1] - w_out) / 2))
        x = x[..., top : top + h_out, left : left + w_out] / 255.0
        mean = torch.tensor(cfg["mean"], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg["std"], device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def forward(self, pixel_values: torch.Tensor, pooling: str = "auto"):
        """(features (b, d), None): timm's pooled pre-logits, or mean/cls of the final features."""
        pooling = self.default_pooling() if pooling == "auto" else pooling
        feats = self.model.forward_features(pixel_values)
        if pooling == "pooler":
            return self.model.forward_head(feats, pre_logits=True).flatten(1), None
        prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        if pooling == "mean":
            pooled = feats.flatten(2).mean(-1) if feats.dim() == 4 else feats[:, prefix:].mean(1)
            return pooled, None
        if pooling == "cls":
            if feats.dim() != 3 or prefix < 1:
                raise SourceError(f"{self.family} has no class token: use --pooling pooler or mean")
            return feats[:, 0], None
        raise SourceError(f"unknown pooling {pooling!r}: use auto, pooler, mean or cls")

    def compile(self) -> "TimmCheckpoint":
        import torch

        self.model = self.backbone = torch.compile(self.model)
        return self


def load(ref: str, path: Path, device="cpu", dtype: torch.dtype | None = None) -> TimmCheckpoint:
    """Build the timm encoder of a resolved folder for inference (features only)."""
    import torch

    timm = _timm()
    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
    except Exception as e:
        raise SourceError(f"{ref}: timm cannot build this model ({type(e).__name__}: {str(e)[:200]})") from None
    data_config = timm.data.resolve_data_config({}, model=model)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.to(device=device, dtype=dtype).eval()
    prov = recorded_provenance(path)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    return TimmCheckpoint(
        ref=ref, path=path, model=model, backbone=model, family=describe(path)["family"],
        hidden_size=int(model.num_features), id2label=None, fingerprint=fingerprint_dir(path),
        processor_config={**data_config, "input_size": list(data_config["input_size"]), "source": "timm data config"},
        mode=prov.get("mode"), provenance=prov, has_cls=prefix > 0, num_prefix_tokens=prefix)
