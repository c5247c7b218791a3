"""Features are what each family's own HF classifier reads, with the checkpoint's
own image processor: checked on the real photos against transformers' model and
`AutoImageProcessor`, not against our code.

Each checkpoint is a tiny random one in the hub layout: `save_pretrained` of a
`*ForImageClassification` model and of its real processor class.
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from core.store import cache as store
from core.__main__ import main

torch.set_num_threads(1)


def _processor(family: str):
    import transformers as tf

    pil = {"dinov2": "BitImageProcessor", "vit": "ViTImageProcessor", "beit": "BeitImageProcessor",
           "swinv2": "ViTImageProcessor"}[family]
    cls = getattr(tf, pil + "Pil", None) or getattr(tf, pil)
    if family == "dinov2":  # shortest edge, centre crop, bicubic: DINOv2's hub processor scaled down
        return cls(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                   resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if family == "beit":  # fixed resize then crop, bicubic, mean/std 0.5 (BEiT's hub processor)
        return cls(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                   resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    if family == "vit":  # ViT's: fixed size, bilinear
        return cls(size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return cls(size={"height": 32, "width": 32}, resample=3)  # SwinV2 (ViTImageProcessor), bicubic


def _hub_checkpoint(root, family: str, mean_pooling: bool = True):
    import transformers as tf

    from tests.checkpoint_fixtures import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(family, image_size=32, num_labels=10)
    if family == "beit":
        cfg.use_mean_pooling = mean_pooling
    model = tf.AutoModelForImageClassification.from_config(cfg)
    out = root / f"{family}{'' if mean_pooling else '-cls'}"
    model.save_pretrained(out)
    _processor(family).save_pretrained(out)
    return out


def _photos(examples_dir):
    import pandas as pd
    from PIL import Image

    files = pd.read_csv(examples_dir / "labels.csv")["file"].astype(str)
    return list(files), [np.asarray(Image.open(examples_dir / f).convert("RGB")) for f in files]


def _hf_reference(path, images):
    """(classifier input (n, d), logits (n, C), base model's pooler_output) from
    transformers alone, fp32."""
    import transformers as tf

    proc = tf.AutoImageProcessor.from_pretrained(path)
    model = tf.AutoModelForImageClassification.from_pretrained(path).eval()
    got = {}
    model.classifier.register_forward_pre_hook(lambda m, a: got.setdefault("x", a[0]))
    with torch.no_grad():
        pv = proc(images=images, return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pv).logits
        pooled = model.base_model(pixel_values=pv).pooler_output
    return got["x"].numpy(), logits.numpy(), None if pooled is None else pooled.numpy()


def centred_cosine(a, b) -> np.ndarray:
    """Per-row cosine after removing each matrix's mean row (random-weight features
    are nearly collinear, so the raw cosine says little)."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _extract(tmp_path, examples_dir, path, pooling="auto"):
    """The one features run `python -m core extract` writes, as (provenance, table)."""
    cache = tmp_path / f"cache-{pooling}"
    assert main(["extract", "--dataset", f"folder:{examples_dir}", "--model", f"dir:{path}",
                 "--pooling", pooling, "--device", "cpu", "--cache", str(cache)]) == 0
    (run,) = [r for r in store.list_runs(cache) if r["kind"] == "features"]
    return run, pq.read_table(run["path"]).to_pandas()


@pytest.mark.slow
@pytest.mark.parametrize("family,mean_pooling", [("dinov2", True), ("vit", True), ("beit", True),
                                                 ("beit", False), ("swinv2", True)])
def test_features_are_what_the_family_classifier_reads(tmp_path, examples_dir, family, mean_pooling):
    path = _hub_checkpoint(tmp_path, family, mean_pooling)
    files, images = _photos(examples_dir)
    head_in, logits, pooled = _hf_reference(path, images)

    pooling = "cls+mean" if family == "dinov2" else "auto"
    run, t = _extract(tmp_path, examples_dir, path, pooling)
    assert t["id"].tolist() == files
    ours = np.stack(t["embedding"].to_numpy())
    assert ours.shape == head_in.shape
    assert np.percentile(centred_cosine(ours, head_in), 5) >= 0.99  # the worst galaxies too, not only the median
    # the cached predictions are the HF classifier's
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()
    assert np.abs(np.stack(t["probs"].to_numpy()) - probs).max() < 1e-3
    if family in ("beit", "swinv2"):
        assert run["pooling"] == "pooler"
    if family == "dinov2":  # the default: CLS after the final LayerNorm (the paper's features)
        run, t = _extract(tmp_path, examples_dir, path, "auto")
        assert run["pooling"] == "cls"
        assert np.percentile(centred_cosine(np.stack(t["embedding"].to_numpy()), pooled), 5) >= 0.99  # the worst galaxies too, not only the median
        assert np.percentile(centred_cosine(np.stack(t["embedding"].to_numpy()), head_in[:, :32]), 5) >= 0.99  # the worst galaxies too, not only the median


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov2", "vit", "beit", "swinv2"])
def test_pixels_are_the_processor_pixels_resampled_once(tmp_path, examples_dir, family):
    """At the hub processors' real sizes, the pixel values `extract` feeds the model
    from the real photos (424 px JPEGs, read through the folder: source) are the
    processor's within rounding: a mean under 0.3 uint8 levels. Resizing them to the
    folder's 256 px first and then to the model's size is off by about 1-1.5 levels
    on average and up to 16-27."""
    import transformers as tf

    from core.data.sources import open_dataset
    from core.models.preprocess import Preprocessor, load_batch, processor_config

    def cls(name):
        return getattr(tf, name + "Pil", None) or getattr(tf, name)

    proc = {"dinov2": lambda: cls("BitImageProcessor")(),  # shortest edge 224 -> crop 224, bicubic
            "vit": lambda: cls("ViTImageProcessor")(),  # 224 x 224, bilinear
            "beit": lambda: cls("BeitImageProcessor")(size={"height": 256, "width": 256}, do_center_crop=True),
            "swinv2": lambda: cls("ViTImageProcessor")(size={"height": 256, "width": 256}, resample=3)}[family]()
    proc.save_pretrained(tmp_path)
    prep = Preprocessor(processor_config(tmp_path, tf.ViTConfig()))
    ds = open_dataset(f"folder:{examples_dir}")
    rows = ds.rows()[:16]
    ours = prep(load_batch(ds, rows, prep))
    reference = tf.AutoImageProcessor.from_pretrained(tmp_path)(
        images=[ds.image(int(i)) for i in rows], return_tensors="pt")["pixel_values"]
    levels = (ours - reference).abs() * 255 * torch.tensor(prep.config["image_std"]).view(1, 3, 1, 1)
    assert ours.shape == reference.shape
    assert levels.mean() < 0.3 and levels.max() <= 6, (float(levels.mean()), float(levels.max()))
