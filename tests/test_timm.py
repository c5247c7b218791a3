"""`timm:` checkpoints, offline: random-init timm models saved here with timm's own
save_for_hf, loaded through our reference parser, compared with timm's own pipeline."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.data.base import SourceError
from core.models.load import load_checkpoint, resolve

from tests.conftest import REPO, subprocess_timeout


def _timm():
    try:
        import timm
    except Exception as e:  # no timm, or a torchvision built for another torch (CPU-only machines)
        pytest.skip(f"timm unavailable here ({type(e).__name__}: {str(e)[:80]}); install requirements-timm.txt")
    return timm


@pytest.fixture(scope="module")
def timm_models(tmp_path_factory):
    """A tiny ConvNeXt (Zoobot's encoder family) and a tiny ViT, random weights, as save_for_hf folders."""
    timm = _timm()
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    conv_args = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    conv = timm.create_model("convnext_nano", pretrained=False, num_classes=0, **conv_args)
    save_for_hf(conv, root / "convnext", model_args=conv_args, safe_serialization=True)
    vit_args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **vit_args)
    # a data config unlike the convnext's; set on the model, which save_for_hf writes in every timm 1.0.x
    # (its data_config= argument is newer than the timm 1.0.29 on the GPU machine)
    vit.pretrained_cfg = {**vit.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 1.0,
                          "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    save_for_hf(vit, root / "vit", model_args=vit_args, safe_serialization=True)
    return {"convnext": (root / "convnext", conv.eval()), "vit": (root / "vit", vit.eval())}


def _images(n=3, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_features_equal_timms_own_model_and_transform(timm_models):
    timm = _timm()
    from PIL import Image

    for name in ("convnext", "vit"):
        path, model = timm_models[name]
        ck = load_checkpoint(f"timm:{path}")
        assert ck.family == {"convnext": "convnext_nano", "vit": "vit_tiny_patch16_224"}[name]
        assert ck.hidden_size == model.num_features and not ck.has_head
        images = _images(size=32 if name == "vit" else 48)
        cfg = timm.data.resolve_data_config({}, model=ck.model)  # the data config saved with the weights
        transform = timm.data.create_transform(**cfg)
        theirs = torch.stack([transform(Image.fromarray(im)) for im in images])
        ours = ck.preprocess(torch.from_numpy(images))
        assert ours.shape == theirs.shape
        # PIL's and torch's bicubic kernels differ slightly when resizing; without a resize they agree exactly
        assert (ours - theirs).abs().mean() < (1e-5 if name == "vit" else 0.03)
        with torch.no_grad():
            feats, logits = ck.forward(ours)
            ref = model.forward_head(model.forward_features(theirs), pre_logits=True)
        assert logits is None and feats.shape == (3, model.num_features)
        cos = torch.nn.functional.cosine_similarity(feats, ref).min()
        assert cos > (0.99999 if name == "vit" else 0.98), (name, cos)


def test_poolings(timm_models):
    path, _ = timm_models["vit"]
    ck = load_checkpoint(f"timm:{path}")
    x = ck.preprocess(torch.from_numpy(_images(2, 32)))
    with torch.no_grad():
        tokens = ck.model.forward_features(x)
        assert torch.allclose(ck.forward(x, "cls")[0], tokens[:, 0])
        assert torch.allclose(ck.forward(x, "mean")[0], tokens[:, 1:].mean(1))
    conv = load_checkpoint(f"timm:{timm_models['convnext'][0]}")
    with pytest.raises(SourceError, match="no class token"):
        conv.forward(conv.preprocess(torch.from_numpy(_images(1))), "cls")


@pytest.mark.slow
def test_extract_through_the_cli_with_a_timm_encoder(timm_models, tmp_path):
    from tests.test_sources import write_galaxy10_h5

    h5 = write_galaxy10_h5(tmp_path / "g.h5", n=20)
    path, model = timm_models["convnext"]
    cmd = [sys.executable, "-m", "core", "extract", "--dataset", f"h5:{h5}", "--model", f"timm:{path}",
           "--cache", str(tmp_path / "c")]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert r.returncode == 0, r.stderr[-2000:]
    from core.store import cache as store

    runs = [x for x in store.list_runs(tmp_path / "c") if x["kind"] == "features"]
    assert len(runs) == 1
    run = runs[0]
    assert run["family"] == "convnext_nano" and run["dim"] == model.num_features and run["mode"] == "generic"
    assert run["pooling"] == "pooler" and not run["has_head"] and run["model"] == f"timm:{path}"
    assert "pred" not in store.read_table(run["path"]).column_names
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout())
    assert "cache hit" in again.stdout
    assert load_checkpoint(f"dir:{path}").family == "convnext_nano"  # dir: of a timm folder works too


@pytest.mark.slow
def test_reference_errors_say_what_to_write(tmp_path):
    with pytest.raises(SourceError, match="timm:hf_hub:OWNER/NAME"):
        resolve("timm:convnext_nano")
    with pytest.raises(SourceError, match="save_for_hf"):
        resolve("timm:hf_hub:mwalmsley/zoobot-encoder-does-not-exist-here")
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(SourceError, match="not a timm save_for_hf folder"):
        resolve(f"timm:{tmp_path}")
    r = subprocess.run([sys.executable, "-m", "core", "extract", "--dataset", "synthetic:galaxy10?n=20",
                        "--model", "timm:nowhere", "--cache", str(tmp_path / "c")], cwd=REPO, capture_output=True,
                       text=True, timeout=subprocess_timeout())
    assert r.returncode == 2 and "Traceback" not in r.stderr and "timm:hf_hub:OWNER/NAME" in r.stderr
