"""Tiny random-weight checkpoints of the four families, written with save_pretrained."""
from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("dinov2", "vit", "beit", "swinv2")


def tiny_config(family: str, image_size: int = 32, num_labels: int = 0):
    import transformers as tf

    common = dict(image_size=image_size, num_channels=3)
    if family == "dinov2":
        cfg = tf.Dinov2Config(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, **common)
    elif family == "vit":
        cfg = tf.ViTConfig(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, **common)
    elif family == "beit":
        cfg = tf.BeitConfig(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, use_mean_pooling=True, **common)
    elif family == "swinv2":
        cfg = tf.Swinv2Config(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                              **common)
    else:
        raise ValueError(family)
    if num_labels:
        cfg.num_labels = num_labels
        cfg.id2label = {i: f"class {i}" for i in range(num_labels)}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return cfg


def make_checkpoint(root, family: str, num_labels: int = 0, image_size: int = 32, seed: int = 0,
                    crop: bool = False) -> Path:
    """Write `root/<family>[-head]` with random weights and an image-processor config."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tiny_config(family, image_size, num_labels)
    cls = tf.AutoModelForImageClassification if num_labels else tf.AutoModel
    model = cls.from_config(cfg)
    out = Path(root) / (f"{family}-head{num_labels}" if num_labels else family)
    model.save_pretrained(out)
    proc = {"do_resize": True, "size": {"height": image_size, "width": image_size}, "resample": 2,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "do_center_crop": False}  # said outright: BitImageProcessor (DINOv2) defaults to a 224 crop
    if crop:
        proc.update(size={"shortest_edge": image_size + 8}, do_center_crop=True,
                    crop_size={"height": image_size, "width": image_size})
    (out / "preprocessor_config.json").write_text(json.dumps(proc))
    return out
