"""Checkpoints of all four families, with and without a head, through the real loader."""
import numpy as np
import pytest
import torch

from core.data.base import SourceError
from core.models import load_checkpoint
from tests.checkpoint_fixtures import FAMILIES, make_checkpoint


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", [False, True])
def test_load_and_forward(checkpoints, family, head):
    ck = load_checkpoint(f"dir:{checkpoints[family + ('-head' if head else '')]}")
    assert ck.family == family and ck.has_head == head
    x = torch.randint(0, 255, (3, 40, 48, 3), dtype=torch.uint8)
    feats, logits = ck.forward(ck.preprocess(x), "auto")
    assert feats.shape == (3, ck.hidden_size) and torch.isfinite(feats).all()
    assert (logits is not None) == head
    if head:
        assert logits.shape == (3, 10) and ck.id2label[0] == "class 0"
    if family == "swinv2":
        assert ck.default_pooling() == "pooler"  # no CLS token
        with pytest.raises(SourceError, match="no CLS token"):
            ck.forward(ck.preprocess(x), "cls")
    else:
        assert ck.default_pooling() == "cls"
        out = ck.backbone(pixel_values=ck.preprocess(x))
        assert torch.allclose(feats, out.last_hidden_state[:, 0])  # the paper's CLS features
        mean, _ = ck.forward(ck.preprocess(x), "mean")
        assert torch.allclose(mean, out.last_hidden_state[:, 1:].mean(1))


def _photos(examples_dir, n=4):
    """Non-square uint8 photos (b, H, W, 3): the real DECaLS ones when shared/ has them, else rendered galaxies."""
    if examples_dir is None:
        from core.data.synthetic import render

        return np.ascontiguousarray(render(n, size=96, seed=1)[0][:, :, 10:80])  # 96 x 70
    from PIL import Image

    files = sorted((examples_dir / "images").iterdir())[:n]
    return np.ascontiguousarray(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])[:, :, 40:360])


@pytest.mark.parametrize("photos", ["rendered", "real"])
@pytest.mark.parametrize("family,crop", [("vit", False), ("beit", True)])
def test_preprocessing_matches_the_hf_image_processor(tmp_path, request, photos, family, crop):
    """Our GPU-side resize/crop/normalise gives what HF's own processor gives, on
    non-square galaxy images (shortest edge 40 then centre crop 32 where ``crop``)."""
    from transformers import AutoImageProcessor

    examples = request.getfixturevalue("examples_dir") if photos == "real" else None
    images = _photos(examples)
    folder = make_checkpoint(tmp_path, family, crop=crop)
    ours = load_checkpoint(f"dir:{folder}").preprocess(torch.from_numpy(images))
    ref = AutoImageProcessor.from_pretrained(folder)(images=list(images), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (len(images), 3, 32, 32)
    assert (ours - ref).abs().max() < 0.03  # PIL vs torch antialiasing: ~0.006 here


def test_checkpoint_reference_errors(tmp_path):
    for ref, msg in [("facebook/dinov2-base", "no prefix"), ("s3:x", "unknown checkpoint prefix"),
                     (f"dir:{tmp_path}", "no config.json"), ("demo:nothing", "python -m core demo")]:
        with pytest.raises(SourceError, match=msg):
            load_checkpoint(ref, cache=tmp_path)
    with pytest.raises(SourceError, match="could not reach hf:nobody/none.*dir:PATH"):
        load_checkpoint("hf:nobody/none")


def test_fingerprint_follows_weights(tmp_path):
    a = load_checkpoint(f"dir:{make_checkpoint(tmp_path / 'a', 'dinov2', seed=0)}")
    b = load_checkpoint(f"dir:{make_checkpoint(tmp_path / 'b', 'dinov2', seed=1)}")
    c = load_checkpoint(f"dir:{make_checkpoint(tmp_path / 'c', 'dinov2', seed=0)}")
    assert a.fingerprint != b.fingerprint and a.fingerprint == c.fingerprint
