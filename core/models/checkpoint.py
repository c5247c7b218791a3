"""What a checkpoint is, read from its files alone: its fingerprint, its size word, what `finetune`
or `demo` recorded about it, and the loaded ``Checkpoint`` (backbone + head + preprocessing)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built or run
    import torch

from core.models.pooling import default_pooling, pool


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


MODEL_SIZES = ("nano", "tiny", "small", "base", "large", "huge", "giant")


def model_size(name: str | None) -> str | None:
    """The size word in a model name (`dinov2-base-...` -> "base"), else None."""
    for part in re.split(r"[^a-z0-9]+", (name or "").lower()):
        if part in MODEL_SIZES:
            return part
    return None


_WIDTH_SIZES = {128: "nano", 192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1536: "giant"}
_SWIN_SIZES = {96: "tiny/small", 128: "base", 192: "large"}  # SwinV2 sizes by the first stage's width


def size_name(ref: str, config, base_model: str | None = None) -> str:
    """The size word of a checkpoint: from its name (hub id or folder name, else the
    base it was finetuned from) when that says it, else from the config's widths
    (SwinV2 by its first stage: its last stage is 8x wider)."""
    for name in (ref, base_model):
        body = str(name or "").split(":", 1)[-1].rstrip("/")
        size = model_size(body if body.count("/") <= 1 and not body.startswith("/") else Path(body).name)
        if size:
            return size
    if config.model_type in ("swinv2", "swin"):
        return _SWIN_SIZES.get(getattr(config, "embed_dim", 0), f"embed {getattr(config, 'embed_dim', '?')}")
    hidden = getattr(config, "hidden_size", 0)
    return _WIDTH_SIZES.get(hidden, f"hidden {hidden}")


@dataclass
class Checkpoint:
    """A loaded checkpoint: its backbone, its classifier (a standard HF head or an
    MLP head from `core.models.heads`, or none) and how images go in.

    ``model`` is what is saved (the HF classifier model, or the backbone carrying an
    MLP head); ``backbone`` is what features are read from; ``classifier`` maps
    ``classifier_pooling`` features to logits.
    """

    ref: str
    path: Path
    model: torch.nn.Module
    backbone: torch.nn.Module
    family: str
    hidden_size: int
    id2label: dict | None
    fingerprint: str
    processor_config: dict
    head: torch.nn.Module | None = None  # an MLP/linear head of core.models.heads (not HF's own)
    head_spec: dict | None = None
    mode: str | None = None
    provenance: dict = field(default_factory=dict)
    has_cls: bool = True
    num_prefix_tokens: int = 1
    classifier: torch.nn.Module | None = None  # maps classifier_pooling features to logits
    classifier_pooling: str | None = None
    size: str | None = None

    @property
    def has_head(self) -> bool:
        return bool(self.id2label)

    @property
    def size_name(self) -> str:
        return self.size or f"hidden {self.hidden_size}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def default_pooling(self) -> str:
        return default_pooling(self.family)

    def input_size(self) -> tuple[int, int]:
        from core.models.preprocess import Preprocessor

        return Preprocessor(self.processor_config).input_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (b, H, W, 3) on any device -> normalised (b, 3, S, S) in the model's
        dtype, as the checkpoint's image processor (see `core.models.preprocess`)."""
        from core.models.preprocess import Preprocessor

        return Preprocessor(self.processor_config)(images, self.dtype)

    def pool(self, out, pooling: str) -> torch.Tensor:
        """Features (b, d) of a backbone output (see `core.models.pooling`)."""
        return pool(out, pooling, self.family, self.num_prefix_tokens)

    def compile(self, **options) -> "Checkpoint":
        """torch.compile the backbone in place (pays off on large GPU runs); the
        classifier is a small module applied after it, so no hooks are needed."""
        import torch

        if not self._classifier_unknown():
            self.backbone = torch.compile(self.backbone, **options)
        return self

    def _classifier_unknown(self) -> bool:
        return self.classifier is None and self.model is not self.backbone

    def forward(self, pixel_values: torch.Tensor, pooling: str = "auto"):
        """(features (b, d), logits (b, C) or None) from one pass through the backbone."""
        if self._classifier_unknown():
            return self._forward_through_model(pixel_values, pooling)
        out = self.backbone(pixel_values=pixel_values)
        feats = self.pool(out, pooling)
        if self.classifier is None:
            return feats, None
        head_in = feats if pooling == self.classifier_pooling else self.pool(out, self.classifier_pooling)
        return feats, self.classifier(head_in.to(self.dtype))

    def _forward_through_model(self, pixel_values, pooling):
        """A standard head of a family `core.models.pooling` does not know: run HF's model and
        read the backbone's output on the way (not compiled)."""
        captured = {}
        hook = self.backbone.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        try:
            logits = self.model(pixel_values=pixel_values).logits
        finally:
            hook.remove()
        return self.pool(captured["out"], pooling), logits

    def save(self, out_dir, provenance: dict | None = None) -> Path:
        """Write a loadable checkpoint atomically (see `core.models.saving`)."""
        from core.models.saving import save_checkpoint

        return save_checkpoint(self, out_dir, provenance)


def recorded_provenance(path: Path) -> dict:
    """What `finetune`/`demo` recorded about a checkpoint they built (mode, base model...)."""
    f = Path(path) / "explorer.json"
    return json.loads(f.read_text()) if f.is_file() else {}


