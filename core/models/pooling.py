"""Which vector of a backbone's output is "the features" of an image.

By default, what the family's own HF classifier reads, so the cached features
are the ones a classification head is trained on:

==========  ================================================================
DINOv2      ``cls``: the CLS token after the final LayerNorm (the paper's
            t-SNE features); its classifier reads ``cls+mean`` (CLS
            concatenated with the mean patch token, 2 x hidden)
ViT         ``cls``: the CLS token after the final LayerNorm
BEiT        ``pooler``: with ``use_mean_pooling`` (BEiT's default) the mean of
            the patch tokens through the pooler's LayerNorm (the final
            LayerNorm is then an identity: the raw CLS is not what it reads),
            else the CLS token after the final LayerNorm
SwinV2      ``pooler``: the average of the last stage (no CLS token)
==========  ================================================================
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where a model is built or run
    import torch

from core.data.base import SourceError

POOLINGS = ("auto", "cls", "mean", "cls+mean", "pooler")
NO_CLS = ("swinv2", "swin", "convnext", "convnextv2", "resnet", "regnet", "efficientnet")
_DEFAULT = {"beit": "pooler", "data2vec-vision": "pooler"}
# what `<Family>ForImageClassification.classifier` is fed, for the families we know
CLASSIFIER_INPUT = {"dinov2": "cls+mean", "dinov2_with_registers": "cls+mean", "vit": "cls", "beit": "pooler", "data2vec-vision": "pooler",
                    "swinv2": "pooler", "swin": "pooler"}


def default_pooling(family: str) -> str:
    """The features of a family when the user does not choose (``--pooling auto``)."""
    return _DEFAULT.get(family, "pooler" if family in NO_CLS else "cls")


def classifier_pooling(family: str) -> str | None:
    """What the family's HF classifier reads, or None for a family we do not know."""
    return CLASSIFIER_INPUT.get(family)


def pool(out, pooling: str, family: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(b, d) features from a backbone output (``last_hidden_state`` (b, n, h) or a
    (b, c, h, w) map, optional ``pooler_output``)."""
    import torch

    if pooling == "auto":
        pooling = default_pooling(family)
    has_cls = family not in NO_CLS
    hidden = out.last_hidden_state
    if hidden.dim() == 4:  # some backbones return (b, c, h, w) maps
        hidden = hidden.flatten(2).transpose(1, 2)
    if pooling in ("cls", "cls+mean") and not has_cls:
        raise SourceError(f"{family} has no CLS token: use --pooling pooler or mean")
    patches = hidden[:, num_prefix_tokens if has_cls else 0 :]
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return patches.mean(1)
    if pooling == "cls+mean":
        return torch.cat([hidden[:, 0], patches.mean(1)], dim=1)
    if pooling == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise SourceError(f"{family} checkpoint has no pooler output: use --pooling cls or mean")
        return pooled.flatten(1)
    raise SourceError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
