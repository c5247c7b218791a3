"""What the model looks at in one galaxy: CLS-to-patch attention maps.

For one image and one checkpoint: the last block's attention from the CLS token
to every patch, per head and averaged over heads, and the attention rollout
across all blocks (Abnar & Zuidema 2020: per block the head-averaged attention
plus the identity for the residual path, rows renormalised, multiplied through).
Computed on demand with HF's ``output_attentions``, which needs the eager
attention: the model is switched to eager for that one image and back to SDPA,
so batch extraction keeps the fast kernel. Cached by galaxy and checkpoint
(``<cache>/attention/<key>.npz``).

SwinV2 has no CLS token and attends within shifted windows: there is no
CLS-to-patch map to show, and ``AttentionUnavailable`` says so.
"""
from __future__ import annotations

import threading

import numpy as np

from core.store import cache as store
from core.errors import UserError

ATTENTION_VERSION = 1
_SWITCH = threading.Lock()  # one eager pass at a time: the model's attention setting is shared


class AttentionUnavailable(UserError):
    """This checkpoint has no CLS-to-patch attention (e.g. SwinV2); the message says why."""


def model_view(ck, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (S, S, 3): the crop the model saw (its resize and
    centre crop, before normalisation), from the checkpoint's own preprocessing."""
    import torch

    x = ck.preprocess(torch.from_numpy(np.ascontiguousarray(image))[None]).float()[0]
    p = ck.processor_config
    if p.get("do_normalize", True):
        mean = torch.tensor(p.get("image_mean"), dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(p.get("image_std"), dtype=x.dtype).view(-1, 1, 1)
        x = x * std + mean
    if p.get("do_rescale", True):
        x = x / float(p.get("rescale_factor", 1 / 255))
    return x.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def rollout(attentions, prefix: int = 1, residual: float = 0.5) -> np.ndarray:
    """Attention rollout: (tokens - prefix,) share of the CLS token's input that
    flows from each patch through all blocks. ``attentions``: per block (heads, T, T)."""
    T = attentions[0].shape[-1]
    flow = np.eye(T)
    for a in attentions:
        a = np.asarray(a, np.float64).mean(0)
        a = residual * a + (1 - residual) * np.eye(T)
        a = a / a.sum(-1, keepdims=True)
        flow = a @ flow
    return flow[0, prefix:]


def _grid(values: np.ndarray, n_patches: int) -> np.ndarray:
    side = int(round(np.sqrt(n_patches)))
    if side * side != n_patches:
        raise AttentionUnavailable(f"{n_patches} patch tokens do not form a square grid")
    return values.reshape(*values.shape[:-1], side, side).astype(np.float32)


def compute(ck, image: np.ndarray) -> dict:
    """Attention maps of one uint8 (H, W, 3) image. Returns ``{"heads": (h, g, g),
    "mean": (g, g), "rollout": (g, g), "crop": (S, S, 3) uint8}`` (each map sums to
    1 over the patches: shares of the CLS token's attention)."""
    import torch

    from core.models.load import eager_attention

    if not ck.has_cls:
        raise AttentionUnavailable(f"{ck.family} has no CLS token, so it has no CLS-to-patch attention map; "
                                   "its windows attend locally")
    x = ck.preprocess(torch.from_numpy(np.ascontiguousarray(image))[None].to(ck.device))
    with _SWITCH, torch.inference_mode(), eager_attention(ck.backbone) as backbone:
        out = backbone(pixel_values=x, output_attentions=True)
    attentions = [a[0].float().cpu().numpy() for a in out.attentions]  # per block (heads, T, T)
    prefix = ck.num_prefix_tokens
    last = attentions[-1][:, 0, prefix:]
    last = last / last.sum(-1, keepdims=True)
    flow = rollout(attentions, prefix)
    n = last.shape[-1]
    return {"heads": _grid(last, n), "mean": _grid(last.mean(0), n), "rollout": _grid(flow / flow.sum(), n),
            "crop": model_view(ck, image)}


def attention_key(dataset_fingerprint: str, galaxy_id: str, model_fingerprint: str) -> str:
    return store.key_of("attention", ATTENTION_VERSION, dataset_fingerprint, str(galaxy_id), model_fingerprint)


def cached(dataset_fingerprint: str, galaxy_id: str, model_fingerprint: str, cache=None) -> dict | None:
    """The cached maps of a galaxy x checkpoint, or None (never computes)."""
    path = store.path_for(store.cache_dir(cache), "attention",
                          attention_key(dataset_fingerprint, galaxy_id, model_fingerprint), ".npz")
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("heads", "mean", "rollout", "crop")}
    except (OSError, ValueError, KeyError):
        return None


def get(ck_loader, dataset, row: int, model_fingerprint: str, cache=None) -> dict:
    """Attention maps of galaxy ``row`` of an open Dataset, cached by galaxy and checkpoint.

    ``ck_loader()`` returns the loaded Checkpoint; it is called only on a cache miss.
    """
    galaxy_id = str(dataset.ids[row])
    hit = cached(dataset.fingerprint, galaxy_id, model_fingerprint, cache)
    if hit is not None:
        return hit
    maps = compute(ck_loader(), dataset.batch(np.array([int(row)]))[0])  # the image extraction fed the model
    path = store.path_for(store.cache_dir(cache), "attention",
                          attention_key(dataset.fingerprint, galaxy_id, model_fingerprint), ".npz")
    with store.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **maps)
    return maps
