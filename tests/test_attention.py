"""Attention maps: HF's own attentions through eager for one image, SDPA kept for
batches, rollout arithmetic, the crop the model saw, caching, SwinV2 said clearly."""
import numpy as np
import pytest
import torch

from core.analysis import attention as A
from core.data.sources import open_dataset
from core.models.load import load_checkpoint

DATASET = "synthetic:galaxy10?n=12&size=40&seed=1"


@pytest.mark.parametrize("family", ["dinov2", "vit", "beit"])
def test_last_block_cls_attention_matches_hf_eager(checkpoints, family):
    import transformers as tf

    torch.set_num_threads(1)
    ck = load_checkpoint(f"dir:{checkpoints[family + '-head']}")
    assert ck.backbone.config._attn_implementation == "sdpa"
    image = open_dataset(DATASET).batch(np.array([3]))[0]
    maps = A.compute(ck, image)
    assert ck.backbone.config._attn_implementation == "sdpa"  # batch extraction keeps the fast kernel
    assert maps["heads"].shape == (2, 4, 4) and maps["mean"].shape == (4, 4) and maps["rollout"].shape == (4, 4)
    np.testing.assert_allclose(maps["heads"].sum((1, 2)), 1, atol=1e-5)
    np.testing.assert_allclose(maps["mean"], maps["heads"].mean(0), atol=1e-6)
    assert maps["rollout"].sum() == pytest.approx(1, abs=1e-5)
    # reference: a fresh eager model from transformers, attentions of the last block, CLS row
    ref = tf.AutoModel.from_pretrained(checkpoints[family + "-head"], attn_implementation="eager").eval()
    with torch.no_grad():
        att = ref(pixel_values=ck.preprocess(torch.from_numpy(image)[None]), output_attentions=True).attentions
    cls = att[-1][0, :, 0, 1:].numpy()
    np.testing.assert_allclose(maps["heads"].reshape(2, -1), cls / cls.sum(-1, keepdims=True), atol=1e-5)
    # the crop the model saw: 40 px galaxy resized to the model's 32 px
    assert maps["crop"].shape == (32, 32, 3) and maps["crop"].dtype == np.uint8


def test_rollout_arithmetic():
    T = 5
    uniform = [np.full((2, T, T), 1 / T)] * 3
    # uniform attention, half residual: CLS keeps 1/T + (1 - 1/T) / 2^3 of itself, the patches share the rest equally
    cls_self = 1 / T + (1 - 1 / T) / 8
    np.testing.assert_allclose(A.rollout(uniform), np.full(T - 1, (1 - cls_self) / (T - 1)))
    # CLS attends only to patch 2 in one block: half the flow (residual) stays on CLS, half goes to patch 2
    a = np.zeros((1, T, T))
    a[0, :, 2] = 1
    np.testing.assert_allclose(A.rollout([a]), [0, 0.5, 0, 0])


def test_crop_the_model_saw(tmp_path):
    from tests.checkpoint_fixtures import make_checkpoint

    ck = load_checkpoint(f"dir:{make_checkpoint(tmp_path, 'vit', crop=True)}")  # shortest edge 40, crop 32
    img = np.zeros((80, 80, 3), np.uint8)
    img[:, :4] = 255  # a bright left margin (2 px after the resize to 40) that the centre crop cuts away
    crop = A.model_view(ck, img)
    assert crop.shape == (32, 32, 3)
    assert crop.max() < 10


def test_cached_by_galaxy_and_checkpoint(tmp_path, checkpoints):
    ds = open_dataset(DATASET)
    loads = []

    def loader():
        loads.append(1)
        return load_checkpoint(f"dir:{checkpoints['dinov2']}")

    fp = "fp-dinov2"
    first = A.get(loader, ds, 5, fp, cache=tmp_path)
    again = A.get(loader, ds, 5, fp, cache=tmp_path)
    assert len(loads) == 1  # the second call loads no model
    for k in ("heads", "mean", "rollout", "crop"):
        np.testing.assert_array_equal(first[k], again[k])
    A.get(loader, ds, 6, fp, cache=tmp_path)
    assert len(loads) == 2 and len(list((tmp_path / "attention").glob("*.npz"))) == 2


def test_swinv2_says_it_has_no_cls_attention(checkpoints):
    ck = load_checkpoint(f"dir:{checkpoints['swinv2']}")
    with pytest.raises(A.AttentionUnavailable, match="swinv2 has no CLS token"):
        A.compute(ck, np.zeros((32, 32, 3), np.uint8))
