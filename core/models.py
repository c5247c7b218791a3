"""Checkpoint references -> a loaded backbone (+ head), its preprocessing and pooling.

A reference is an explicit string:

==================  ===========================================================
``hf:MODEL_ID``      a Hugging Face hub id (network, or already in the HF cache)
``dir:PATH``         a ``save_pretrained`` folder (safetensors weights)
``demo:NAME``        a checkpoint the offline demo built (``<cache>/checkpoints/demo/NAME``)
``timm:...``         a timm encoder (``hf_hub:OWNER/NAME`` or a save_for_hf folder): core/timm_encoder.py
==================  ===========================================================

Everything goes through the transformers Auto classes; ``trust_remote_code`` is
never set. MLP heads that the Auto classes cannot express are stored beside the
backbone (``explorer_head.safetensors`` + an ``explorer_head`` key in config.json)
and rebuilt by ``core.heads``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cache as store
from .data import split_ref
from .data.base import SourceError

POOLINGS = ("auto", "cls", "mean", "pooler")
FAMILIES = ("dinov2", "vit", "beit", "swinv2")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_SIZES = {384: "small", 768: "base", 1024: "large", 1536: "giant", 192: "tiny", 128: "nano"}


def resolve(ref: str, cache=None) -> Path:
    """Turn a checkpoint reference into a local folder, or raise SourceError saying what to do."""
    prefix, body, _ = split_ref(ref, kinds=("hf", "dir", "demo", "timm"), what="checkpoint")
    if prefix == "timm":
        from .timm_encoder import resolve as resolve_timm

        return resolve_timm(body)
    if prefix == "dir":
        path = Path(body).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} is not a save_pretrained folder (no config.json): check the path after dir:")
        return path
    if prefix == "demo":
        path = store.cache_dir(cache) / "checkpoints" / "demo" / body
        if not (path / "config.json").is_file():
            raise SourceError(f"demo checkpoint {body!r} is not built in {path.parent}: run `python -m core demo` first")
        return path
    return _hub_snapshot(body)


def _hub_snapshot(model_id: str) -> Path:
    """Local snapshot of a hub model: the HF cache first, then the network (fails fast)."""
    from .hub import snapshot

    try:
        return snapshot(model_id, ["*.json", "*.safetensors"])
    except Exception as e:
        raise SourceError(
            f"could not reach hf:{model_id} ({type(e).__name__}): with no network, save the model "
            "elsewhere with save_pretrained and use dir:PATH, or point HF_HOME at a cache that holds it"
        ) from None


def fingerprint_dir(path: Path) -> str:
    """Digest of config + weights: small files whole, big ones by size, mtime and sampled bytes."""
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.suffix not in (".json", ".safetensors") or f.name == "explorer.json" or f.name.startswith("."):
            continue
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}".encode())
        with open(f, "rb") as fh:
            if st.st_size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(str(st.st_mtime_ns).encode())
                for off in range(0, st.st_size, st.st_size // 64):
                    fh.seek(off)
                    h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def _processor_config(path: Path, config) -> dict:
    f = path / "preprocessor_config.json"
    proc = json.loads(f.read_text()) if f.is_file() else {}
    image_size = getattr(config, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    proc.setdefault("do_resize", True)
    proc.setdefault("size", {"height": image_size, "width": image_size})
    proc.setdefault("do_rescale", True)
    proc.setdefault("rescale_factor", 1 / 255)
    proc.setdefault("do_normalize", True)
    proc.setdefault("image_mean", IMAGENET_MEAN)
    proc.setdefault("image_std", IMAGENET_STD)
    proc.setdefault("resample", 3)
    return proc


def _hw(size, default) -> tuple[int, int] | int:
    if size is None:
        return default
    if isinstance(size, int):
        return (size, size)
    if "height" in size:
        return (size["height"], size["width"])
    return int(size["shortest_edge"])  # an int means "shortest edge"


@dataclass
class Checkpoint:
    ref: str
    path: Path
    model: torch.nn.Module
    backbone: torch.nn.Module
    family: str
    hidden_size: int
    id2label: dict | None
    fingerprint: str
    processor_config: dict
    head: torch.nn.Module | None = None
    head_spec: dict | None = None
    mode: str | None = None
    provenance: dict = field(default_factory=dict)
    has_cls: bool = True
    num_prefix_tokens: int = 1

    @property
    def has_head(self) -> bool:
        return bool(self.id2label)

    @property
    def size_name(self) -> str:
        return _SIZES.get(self.hidden_size, f"hidden {self.hidden_size}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def default_pooling(self) -> str:
        return "cls" if self.has_cls else "pooler"

    def input_size(self) -> tuple[int, int]:
        p = self.processor_config
        crop = _hw(p.get("crop_size"), None) if p.get("do_center_crop") else None
        if crop:
            return crop
        size = _hw(p.get("size"), None)
        return size if isinstance(size, tuple) else (size, size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (b, H, W, 3) on any device -> normalised float (b, 3, S, S) in the model's dtype.

        Follows the checkpoint's image-processor config: resize (shortest edge or
        fixed size, bicubic/bilinear with antialiasing), centre crop, rescale, normalise.
        """
        p = self.processor_config
        x = images.permute(0, 3, 1, 2).float()
        if p.get("do_resize", True):
            size = _hw(p.get("size"), None)
            h, w = x.shape[-2:]
            if isinstance(size, int):
                s = size / min(h, w)
                size = (max(size, round(h * s)), max(size, round(w * s)))
            if tuple(size) != (h, w):
                mode = "bicubic" if p.get("resample", 3) == 3 else "bilinear"
                x = F.interpolate(x, size=tuple(size), mode=mode, antialias=True, align_corners=False)
        if p.get("do_center_crop"):
            ch, cw = _hw(p.get("crop_size"), None)
            h, w = x.shape[-2:]
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            x = x[..., top : top + ch, left : left + cw]
        if p.get("do_rescale", True):
            x = x * float(p.get("rescale_factor", 1 / 255))
        if p.get("do_normalize", True):
            mean = torch.tensor(p.get("image_mean", IMAGENET_MEAN), device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(p.get("image_std", IMAGENET_STD), device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.to(self.dtype)

    def pool(self, out, pooling: str) -> torch.Tensor:
        """Pooled features from a backbone output: CLS token, mean of patch tokens, or pooler."""
        if pooling == "auto":
            pooling = self.default_pooling()
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # some backbones return (b, c, h, w) maps
            hidden = hidden.flatten(2).transpose(1, 2)
        if pooling == "cls":
            if not self.has_cls:
                raise SourceError(f"{self.family} has no CLS token: use --pooling pooler or mean")
            return hidden[:, 0]
        if pooling == "mean":
            return hidden[:, self.num_prefix_tokens if self.has_cls else 0 :].mean(1)
        if pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise SourceError(f"{self.family} checkpoint has no pooler output: use --pooling cls or mean")
            return pooled.flatten(1)
        raise SourceError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")

    def compile(self) -> "Checkpoint":
        """torch.compile the model in place (pays off on large GPU runs)."""
        if self.model is self.backbone:
            self.model = self.backbone = torch.compile(self.backbone)
        else:
            self.model = torch.compile(self.model)
            self._classifier = True
        return self

    def forward(self, pixel_values: torch.Tensor, pooling: str = "auto"):
        """(features (b, d), logits (b, C) or None) from one pass through the model."""
        if self.model is self.backbone and not getattr(self, "_classifier", False):
            out = self.backbone(pixel_values=pixel_values)
            feats = self.pool(out, pooling)
            logits = None
            if self.head is not None:
                head_in = self.pool(out, self.head_spec.get("pooling", "auto"))
                logits = self.head(head_in.to(next(self.head.parameters()).dtype))
            return feats, logits
        captured = {}
        hook = self.backbone.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        try:
            logits = self.model(pixel_values=pixel_values).logits
        finally:
            hook.remove()
        return self.pool(captured["out"], pooling), logits

    def save(self, out_dir, provenance: dict | None = None) -> Path:
        """Write a loadable checkpoint atomically: a temp folder renamed into place."""
        out_dir = Path(out_dir).resolve()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
        try:
            dtype = self.dtype
            self.model.to(torch.float32)
            self.model.save_pretrained(tmp)
            self.model.to(dtype)
            (tmp / "preprocessor_config.json").write_text(json.dumps(self.processor_config, indent=1))
            if self.head is not None:
                from safetensors.torch import save_file

                save_file({k: v.float().contiguous() for k, v in self.head.state_dict().items()},
                          tmp / "explorer_head.safetensors")
                cfg = json.loads((tmp / "config.json").read_text())
                if self.head_spec is None:
                    from .heads import head_spec

                    self.head_spec = head_spec(self.head)
                cfg["explorer_head"] = self.head_spec
                cfg["id2label"] = {str(k): v for k, v in (self.id2label or {}).items()}
                cfg["label2id"] = {v: int(k) for k, v in (self.id2label or {}).items()}
                (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
            (tmp / "explorer.json").write_text(json.dumps(provenance or {}, indent=1, default=str))
            store.replace_dir(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out_dir


NO_CLS = ("swinv2", "swin", "convnext", "convnextv2", "resnet", "regnet", "efficientnet")


def recorded_provenance(path: Path) -> dict:
    """What `finetune`/`demo` recorded about a checkpoint they built (mode, base model...)."""
    f = Path(path) / "explorer.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def describe(path: Path) -> dict:
    """Family, default pooling and whether there is a head, read from config.json alone
    (a cache hit must not load the model)."""
    from . import timm_encoder

    if timm_encoder.is_timm_folder(path):
        return timm_encoder.describe(path)
    raw = json.loads((Path(path) / "config.json").read_text())
    family = raw.get("model_type", "unknown")
    arch = (raw.get("architectures") or [""])[0]
    has_head = arch.endswith("ForImageClassification") or "explorer_head" in raw
    return {"family": family, "has_head": has_head, "default_pooling": "pooler" if family in NO_CLS else "cls",
            "mode": recorded_provenance(path).get("mode")}


def _load_model(cls, path: Path, **kw):
    try:
        return cls.from_pretrained(path, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError):  # families without an SDPA implementation
        return cls.from_pretrained(path, **kw)


def load_checkpoint(ref: str, device="cpu", num_labels: int | None = None, id2label: dict | None = None,
                    cache=None, dtype: torch.dtype | None = None) -> Checkpoint:
    """Load a checkpoint reference for inference or finetuning.

    ``num_labels``/``id2label``: when the checkpoint has no classification head, load it
    with a fresh standard head of that many classes (for linear finetuning).
    ``dtype``: defaults to bfloat16 on CUDA and float32 on CPU.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve(ref, cache)
    from . import timm_encoder

    if timm_encoder.is_timm_folder(path):
        return timm_encoder.load(ref, path, device=device, dtype=dtype)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise SourceError(f"cannot read the config of {ref}: {e}") from None
    raw = json.loads((path / "config.json").read_text())
    arch = (getattr(config, "architectures", None) or [""])[0]
    has_std_head = arch.endswith("ForImageClassification")
    head_spec = raw.get("explorer_head")
    family = config.model_type
    head = None
    labels = None
    if has_std_head or (num_labels and not head_spec):
        kw = {}
        if not has_std_head:
            labels = id2label or {i: f"class {i}" for i in range(num_labels)}
            kw = dict(num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()})
        try:
            model = _load_model(AutoModelForImageClassification, path, **kw)
        except ValueError as e:
            raise SourceError(f"{ref}: transformers cannot build an image classifier for {family!r} ({e})") from None
        backbone = model.base_model
        labels = {int(k): v for k, v in model.config.id2label.items()}
    else:
        model = _load_model(AutoModel, path)
        backbone = model
        if head_spec:
            from safetensors.torch import load_file

            from .heads import build_head

            head = build_head(head_spec["type"], head_spec["in_dim"], head_spec["num_labels"],
                              hidden=head_spec.get("hidden"))
            head.load_state_dict(load_file(path / "explorer_head.safetensors"))
            model.add_module("explorer_head", head)
            labels = {int(k): v for k, v in raw.get("id2label", {}).items()} or {
                i: f"class {i}" for i in range(head_spec["num_labels"])}

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model.to(device=device, dtype=dtype).eval()
    hidden = getattr(config, "hidden_size", None) or getattr(config, "embed_dim", None)
    if family == "swinv2" or getattr(config, "model_type", "") in ("swin", "convnext", "resnet"):
        hidden = getattr(config, "hidden_size", hidden)  # pooled width = last stage width
    prov = recorded_provenance(path)
    has_cls = family not in NO_CLS
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    return Checkpoint(
        ref=ref, path=path, model=model, backbone=backbone, family=family, hidden_size=int(hidden),
        id2label=labels, fingerprint=fingerprint_dir(path), processor_config=_processor_config(path, config),
        head=head, head_spec=head_spec, mode=prov.get("mode"), provenance=prov, has_cls=has_cls,
        num_prefix_tokens=prefix,
    )
