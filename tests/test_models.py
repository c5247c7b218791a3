"""Checkpoints of all four families, with and without a head, through the real loader."""
import numpy as np
import pytest
import torch

from core.data.base import SourceError
from core.models.load import load_checkpoint
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
    out = ck.backbone(pixel_values=ck.preprocess(x))
    if family == "swinv2":
        assert ck.default_pooling() == "pooler"  # no CLS token
        with pytest.raises(SourceError, match="no CLS token"):
            ck.forward(ck.preprocess(x), "cls")
    elif family == "beit":  # use_mean_pooling: its classifier reads the pooler, not the raw CLS
        assert ck.default_pooling() == "pooler"
        assert torch.allclose(feats, out.pooler_output)
    else:
        assert ck.default_pooling() == "cls"
        assert torch.allclose(feats, out.last_hidden_state[:, 0])  # the paper's CLS features
    if family != "swinv2":
        mean, _ = ck.forward(ck.preprocess(x), "mean")
        assert torch.allclose(mean, out.last_hidden_state[:, 1:].mean(1))
    if head:  # logits from one backbone pass, no hooks, equal to HF's own classifier
        assert torch.allclose(logits, ck.model(pixel_values=ck.preprocess(x)).logits, atol=1e-5)
        assert not ck.backbone._forward_hooks and not ck.model._forward_hooks


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov2", "beit"])
def test_compiled_checkpoint_with_a_head_gives_the_same_answers(checkpoints, family):
    ck = load_checkpoint(f"dir:{checkpoints[family + '-head']}")
    x = ck.preprocess(torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8))
    feats, logits = ck.forward(x)
    ck.compile(backend="eager")  # the inductor backend needs a compiler; the wiring is what is tested
    assert isinstance(ck.backbone, torch._dynamo.eval_frame.OptimizedModule)
    for _ in range(2):  # a second batch: no hook piles up, same numbers
        f2, l2 = ck.forward(x)
        assert torch.allclose(feats, f2, atol=1e-5) and torch.allclose(logits, l2, atol=1e-5)


def test_pickle_only_checkpoint_is_one_line_error_naming_the_fix(tmp_path):
    folder = make_checkpoint(tmp_path, "vit")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(SourceError, match="pickle weights.*save_pretrained") as e:
        load_checkpoint(f"dir:{folder}")
    assert "\n" not in str(e.value)


def test_size_names_from_the_name_then_the_config():
    import transformers as tf

    from core.models.load import size_name

    swin_b = tf.Swinv2Config(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])
    assert swin_b.hidden_size == 1024  # the last stage: "large" if read as a ViT width
    assert size_name("dir:/tmp/x/checkpoint", swin_b) == "base"
    assert size_name("hf:microsoft/swinv2-large-patch4-window12-192-22k", swin_b) == "large"
    assert size_name("dir:/tmp/run", tf.ViTConfig(hidden_size=384)) == "small"
    assert size_name("dir:/data/small-tests/ckpt", tf.ViTConfig()) == "base"  # only the folder's own name counts
    assert size_name("dir:/tmp/ft", tf.Dinov2Config(hidden_size=32),
                     base_model="hf:facebook/dinov2-giant") == "giant"


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


def test_a_crop_larger_than_the_image_pads_as_the_hf_processor_does(tmp_path):
    """DINOv2's processor class (BitImageProcessor) crops to 224 px unless told otherwise: a
    processor file that leaves do_center_crop out gets HF's zero padding around a smaller image
    (here 30 px resized, cropped to 36 x 33), not the image itself."""
    import json

    from transformers import AutoImageProcessor

    images = _photos(None)
    folder = make_checkpoint(tmp_path, "dinov2")
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    del proc["do_center_crop"]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {**proc, "size": {"height": 30, "width": 30}, "crop_size": {"height": 36, "width": 33}}))
    ck = load_checkpoint(f"dir:{folder}")
    ours = ck.preprocess(torch.from_numpy(images))
    ref = AutoImageProcessor.from_pretrained(folder)(images=list(images), return_tensors="pt")["pixel_values"]
    assert ck.input_size() == (36, 33) and ours.shape == ref.shape == (len(images), 3, 36, 33)
    assert (ours[..., :3, :] == -1).all() and (ours[..., :, :2] == -1).all()  # black borders, normalised
    assert (ours - ref).abs().max() < 0.03  # PIL vs torch antialiasing


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


def test_hub_timeouts_take_effect(monkeypatch):
    """huggingface_hub reads its timeout variables at import: ours must still apply."""
    import huggingface_hub
    from huggingface_hub import constants

    from core.data import hub

    seen = {}

    def fake_download(repo_id, local_files_only=False, etag_timeout=None, **kw):
        if local_files_only:
            raise FileNotFoundError("not cached")
        seen.update(etag=etag_timeout, download=constants.HF_HUB_DOWNLOAD_TIMEOUT)
        return "/nowhere"

    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", constants.DEFAULT_DOWNLOAD_TIMEOUT)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    hub.snapshot("someone/model", ["*.json"])
    assert seen == {"etag": hub.ETAG_TIMEOUT, "download": hub.DOWNLOAD_TIMEOUT}
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "30")  # the user's own setting wins
    hub.snapshot("someone/model", ["*.json"])
    assert seen["etag"] == 30
