"""`python -m core pretrain`: label-free DINO on tiny in-memory galaxies, resumable, atomic, loads via dir:."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.data.base import Dataset
from core.train.pretrain import pretrain, random_crops
from tests.conftest import REPO, subprocess_timeout

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
            layerscale_value=1.0)
FAST = dict(epochs=2, batch_size=8, local_crops=2, out_dim=32, head_hidden=32, bottleneck=16, seed=3)


class _Images(Dataset):
    """A few blob 'galaxies' in memory: round or elongated, bright on dark sky."""

    def _load(self, rows):
        return self.pixels[rows]


def _dataset(labels=None, n=24):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    pixels = []
    for i in range(n):
        q = 1.0 if i % 2 else 0.3
        blob = np.exp(-(xx**2 + (yy / q) ** 2) / 0.1)[..., None] * rng.uniform(150, 250, 3)
        pixels.append(np.clip(blob + rng.normal(8, 3, (32, 32, 3)), 0, 255).astype(np.uint8))
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    ds = _Images(source="memory:blobs", class_names=["round", "long"], ids=np.array([f"g{i}" for i in range(n)]),
                 labels=labels.astype(np.int64), splits=np.array(["train"] * n), image_size=32, content_key="blobs")
    ds.pixels = np.stack(pixels)
    return ds


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _weights(path):
    return load_file(path / "model.safetensors")


@pytest.mark.slow
def test_pretrain_writes_a_standard_checkpoint_that_loads_through_dir(tmp_path):
    from core.models.load import load_checkpoint

    out = pretrain(_dataset(), tmp_path / "ssl", config=TINY, progress=False, log=lambda *_: None, **FAST)
    ck = load_checkpoint(f"dir:{out}")
    assert ck.family == "dinov2" and not ck.has_head
    pixels = ck.preprocess(torch.from_numpy(_dataset().batch(np.arange(4))))
    assert pixels.shape == (4, 3, 32, 32)
    feats, logits = ck.forward(pixels)
    assert feats.shape == (4, 32) and logits is None and torch.isfinite(feats).all()
    prov = json.loads((out / "explorer.json").read_text())
    assert prov["mode"] == "generic" and prov["labels_used"] is False and prov["steps"] == 6
    log = json.loads((out / "training_log.json").read_text())
    assert [e["epoch"] for e in log["history"]] == [1, 2]
    assert all(np.isfinite(e["loss"]) and e["teacher_entropy"] <= e["ln_K"] for e in log["history"])
    assert (out / "dino_head.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert not list(tmp_path.glob(".*")), "staging or resume state left behind"
    # the checkpoint learned something: its weights moved away from the fresh init
    import transformers as tf

    torch.manual_seed(0)
    fresh = tf.Dinov2Model(tf.Dinov2Config(**TINY)).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in _weights(out).items() if k in fresh)


@pytest.mark.slow
def test_labels_are_never_read(tmp_path):
    """Same seed, shuffled labels (and none at all) -> byte-identical weights."""
    labels = np.arange(24) % 2
    a = pretrain(_dataset(labels), tmp_path / "a", config=TINY, progress=False, log=lambda *_: None, **FAST)
    b = pretrain(_dataset(np.random.default_rng(1).permutation(labels)), tmp_path / "b", config=TINY,
                 progress=False, log=lambda *_: None, **FAST)
    c = pretrain(_dataset(np.full(24, -1)), tmp_path / "c", config=TINY, progress=False, log=lambda *_: None, **FAST)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.slow
def test_a_killed_run_leaves_no_checkpoint_and_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    import core.train.pretrain as P

    full = pretrain(_dataset(), tmp_path / "whole", config=TINY, progress=False, log=lambda *_: None, **FAST)
    real_save = P._save_state

    def killed_after_first_epoch(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "_save_state", killed_after_first_epoch)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        pretrain(_dataset(), out, config=TINY, progress=False, log=lambda *_: None, **FAST)
    assert not out.exists()  # no half checkpoint that looks whole
    monkeypatch.setattr(P, "_save_state", real_save)
    said = []
    pretrain(_dataset(), out, config=TINY, progress=False, log=said.append, **FAST)
    assert any("resuming from epoch 1/2" in s for s in said)
    epochs = json.loads((out / "training_log.json").read_text())["history"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    wf, wr = _weights(full), _weights(out)
    assert all(torch.allclose(wf[k], wr[k], atol=1e-5) for k in wf)  # as if never interrupted


@pytest.mark.slow
def test_continues_pretraining_a_checkpoint(tmp_path):
    first = pretrain(_dataset(), tmp_path / "first", config=TINY, progress=False, log=lambda *_: None, **FAST)
    said = []
    again = pretrain(_dataset(), tmp_path / "again", model_ref=f"dir:{first}", progress=False, log=said.append,
                     **{**FAST, "epochs": 1})
    prov = json.loads((again / "explorer.json").read_text())
    assert prov["model"] == f"dir:{first}" and not any("fresh head" in s for s in said)
    w1, w2 = _weights(first), _weights(again)
    assert w1.keys() == w2.keys() and any(not torch.equal(w1[k], w2[k]) for k in w1)


def test_crops_keep_colour_and_stay_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    x[:, 0] *= 0.2  # a blue-ish image: the band ratios must survive
    crops = random_crops(x, 16, (0.2, 0.5), 0.2, g)
    assert crops.shape == (6, 3, 16, 16) and crops.min() >= 0 and crops.max() <= 1
    ratio = crops[:, 0].mean() / crops[:, 2].mean()
    assert ratio < 0.35  # red stays faint: no hue shift


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    from tests.checkpoint_fixtures import make_checkpoint

    vit = make_checkpoint(tmp_path, "vit")
    def run(*args):
        return subprocess.run([sys.executable, "-m", "core", "pretrain", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=subprocess_timeout())

    r = run("--dataset", "synthetic:galaxy10?n=20&size=32", "--config", "huge", "--out", str(tmp_path / "x"),
            "--batch-size", "4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--config 'huge' is neither nano nor small nor a JSON file" in r.stderr
    r = run("--dataset", "synthetic:galaxy10?n=20&size=32", "--model", f"dir:{vit}",
            "--out", str(tmp_path / "y"), "--batch-size", "4")
    assert r.returncode == 2 and "DINOv2-architecture models only" in r.stderr and "Traceback" not in r.stderr
    r = run("--dataset", "synthetic:galaxy10?n=20&size=32", "--out", str(tmp_path / "z"), "--batch-size", "64")
    assert r.returncode == 2 and "fewer than one batch" in r.stderr
