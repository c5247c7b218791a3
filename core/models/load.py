"""Checkpoint references -> a loaded backbone (+ head), its preprocessing and pooling.

A reference is an explicit string:

==================  ===========================================================
``hf:MODEL_ID``      a Hugging Face hub id (network, or already in the HF cache)
``dir:PATH``         a ``save_pretrained`` folder (safetensors weights)
``demo:NAME``        a checkpoint the offline demo built (``<cache>/checkpoints/demo/NAME``)
``timm:...``         a timm encoder (``hf_hub:OWNER/NAME`` or a save_for_hf folder): core/models/timm.py
==================  ===========================================================

Everything goes through the transformers Auto classes; ``trust_remote_code`` is
never set and only safetensors weights are read (a ``pytorch_model.bin``-only
folder is a one-line error naming the conversion). MLP heads that the Auto
classes cannot express are stored beside the backbone
(``explorer_head.safetensors`` + an ``explorer_head`` key in config.json) and
rebuilt by ``core.models.heads``.

The pieces of a loaded checkpoint live in their own modules: images -> pixel
values in `core.models.preprocess` (the checkpoint's own image processor), backbone
output -> features in `core.models.pooling` (what the family's classifier reads), and
writing a checkpoint in `core.models.saving`. Features and logits come from one
backbone pass and no hooks, so ``--compile`` compiles the backbone alone.

``resolve``, ``describe`` and ``fingerprint_dir`` (all a cache hit needs) read
files only: torch and transformers are imported by the functions that load or
run a checkpoint.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built or run
    import torch

from core.store import cache as store
from core.data.sources import split_ref
from core.data.base import SourceError
from core.models.checkpoint import (  # noqa: F401  (re-exported: callers import them from here)
    Checkpoint, fingerprint_dir, model_size, recorded_provenance, size_name,
)
from core.models.pooling import NO_CLS, POOLINGS, classifier_pooling, default_pooling, pool  # noqa: F401  (POOLINGS: CLI)


def resolve(ref: str, cache=None) -> Path:
    """Turn a checkpoint reference into a local folder, or raise SourceError saying what to do."""
    prefix, body, _ = split_ref(ref, kinds=("hf", "dir", "demo", "timm"), what="checkpoint")
    if prefix == "timm":
        from core.models.timm import resolve as resolve_timm

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
    from core.data.hub import snapshot

    try:
        return snapshot(model_id, ["*.json", "*.safetensors"])
    except Exception as e:
        raise SourceError(
            f"could not reach hf:{model_id} ({type(e).__name__}): with no network, save the model "
            "elsewhere with save_pretrained and use dir:PATH, or point HF_HOME at a cache that holds it"
        ) from None


def _check_weights(path: Path, ref: str) -> None:
    """Refuse folders whose weights are only pickles (``pytorch_model.bin``): loading
    one runs arbitrary code, so we never do; say how to convert instead."""
    if any(path.glob("*.safetensors")):
        return
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise SourceError(
            f"{ref} has only pickle weights (pytorch_model.bin), which are not loaded (unpickling runs code): "
            "convert them once with `AutoModel.from_pretrained(PATH).save_pretrained(OUT)` (safetensors) "
            "and use dir:OUT")
    raise SourceError(f"{ref} has no weights (*.safetensors) beside its config.json: check the folder or hub id")


def describe(path: Path) -> dict:
    """Family, default pooling and whether there is a head, read from config.json alone
    (a cache hit must not load the model)."""
    from core.models import timm as timm_encoder

    if timm_encoder.is_timm_folder(path):
        return timm_encoder.describe(path)
    raw = json.loads((Path(path) / "config.json").read_text())
    family = raw.get("model_type", "unknown")
    arch = (raw.get("architectures") or [""])[0]
    has_head = arch.endswith("ForImageClassification") or "explorer_head" in raw
    recorded = recorded_provenance(path)
    return {"family": family, "has_head": has_head, "default_pooling": default_pooling(family),
            "id2label": raw.get("id2label") if has_head else None, "mode": recorded.get("mode"),
            "base_model": recorded.get("base_model"), "recorded": recorded}


@contextlib.contextmanager
def eager_attention(backbone):
    """Inside the block, the HF ``backbone`` runs its attention eager (what ``output_attentions``
    needs, and faster than SDPA in bf16 on a CPU); its earlier implementation (SDPA) is set back
    after. The setting is the model's own: callers that share a model serialise around it."""
    before = getattr(backbone.config, "_attn_implementation", None)
    if before != "eager":
        backbone.set_attn_implementation("eager")
    try:
        yield backbone
    finally:
        if before not in (None, "eager"):
            backbone.set_attn_implementation(before)


def _load_model(cls, path: Path, **kw):
    kw["use_safetensors"] = True  # never unpickle
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
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve(ref, cache)
    from core.models import timm as timm_encoder
    from core.models.preprocess import processor_config

    if timm_encoder.is_timm_folder(path):
        return timm_encoder.load(ref, path, device=device, dtype=dtype)
    _check_weights(path, ref)
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

            from core.models.heads import build_head

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
    prov = recorded_provenance(path)
    classifier, classifier_pooling = _classifier(model, backbone, head, head_spec, family)
    return Checkpoint(
        ref=ref, path=path, model=model, backbone=backbone, family=family, hidden_size=int(_feature_width(config)),
        id2label=labels, fingerprint=fingerprint_dir(path), processor_config=processor_config(path, config),
        head=head, head_spec=head_spec, mode=prov.get("mode"), provenance=prov, has_cls=family not in NO_CLS,
        num_prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
        classifier=classifier, classifier_pooling=classifier_pooling,
        size=size_name(ref, config, prov.get("base_model")),
    )


def _classifier(model, backbone, head, head_spec, family):
    """(module mapping pooled features to logits, the pooling it reads) of a loaded model."""
    if head is not None:
        return head, head_spec.get("pooling") or default_pooling(family)
    if model is backbone or classifier_pooling(family) is None:
        return None, None  # no head, or a family whose classifier input we do not know (forward via the model)
    return model.classifier, classifier_pooling(family)


def _feature_width(config) -> int:
    """Width of the CLS / pooled features: ``hidden_size`` (for SwinV2 the last stage's width)."""
    return getattr(config, "hidden_size", None) or getattr(config, "embed_dim", None)
