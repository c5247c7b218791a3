import json

import numpy as np
import pytest
import torch

import core.train.finetune as ft
from tests.checkpoint_fixtures import make_checkpoint
from core.__main__ import main
from core.data.base import Dataset
from core.analysis.evaluation import classification_report
from core.models.heads import HEADS, MLPHead, build_head, head_spec
from core.models.load import load_checkpoint

QUIET = dict(progress=False, log=lambda *a: None, device="cpu", precision="fp32")  # exact F1 checks need fp32


def shapes(n: int = 64, size: int = 32, seed: int = 0) -> np.ndarray:
    """Images of class 0 (a bright round disc) or 1 (a thin bar at a random angle)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    labels = np.arange(n) % 2
    out = np.zeros((n, size, size, 3), np.uint8)
    for i, lab in enumerate(labels):
        if lab == 0:
            mask = xx**2 + yy**2 < (size * rng.uniform(0.2, 0.3)) ** 2
        else:
            a = rng.uniform(0, np.pi)
            mask = (np.abs(xx * np.sin(a) - yy * np.cos(a)) < 2) & (np.abs(xx * np.cos(a) + yy * np.sin(a)) < size * 0.4)
        out[i][mask] = rng.integers(180, 255)
        out[i] = np.clip(out[i] + rng.integers(0, 30, out[i].shape), 0, 255)
    return out, labels


class Shapes(Dataset):
    """64 galaxies-in-spirit, 32 px: disc vs bar; 48 train, 16 test."""

    @classmethod
    def make(cls, n=64, size=32):
        images, labels = shapes(n, size)
        ds = cls(source="test:shapes", class_names=["disc", "bar"], ids=np.array([f"s{i}" for i in range(n)]),
                 labels=labels.astype(np.int64), splits=np.array(["train"] * (n * 3 // 4) + ["test"] * (n // 4)),
                 image_size=size, content_key="shapes")
        ds.images = images
        return ds

    def _load(self, rows):
        return self.images[rows]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return Shapes.make()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {f: make_checkpoint(root, f) for f in ("dinov2", "vit")}


def _val_f1(ck, ds):
    val = ds.rows("test")
    with torch.no_grad():
        _, logits = ck.forward(ck.preprocess(torch.from_numpy(ds.batch(val)).to(ck.device)))
    return classification_report(ds.labels[val], logits.argmax(-1).cpu().numpy(), ds.class_names)["macro_f1"]


def _check_saved(out, ds, mode, head):
    log = json.loads((out / "training_log.json").read_text())
    losses = [e["train_loss"] for e in log["history"]]
    assert losses[-1] < losses[0], losses
    prov = json.loads((out / "explorer.json").read_text())
    assert prov["mode"] == mode and prov["head"] == head and prov["base_model"].startswith("dir:")
    ck = load_checkpoint(f"dir:{out}")
    assert ck.has_head and ck.mode == mode and ck.id2label == {0: "disc", 1: "bar"}
    # the reloaded checkpoint predicts exactly what training validated
    assert _val_f1(ck, ds) == pytest.approx(log["history"][-1]["val_macro_f1"], abs=1e-4)
    return ck, log


@pytest.mark.slow
def test_head_only_linear_dinov2_is_a_standard_classifier(data, ckpts, tmp_path):
    before = load_checkpoint(f"dir:{ckpts['dinov2']}").model.state_dict()
    out = ft.finetune(data, f"dir:{ckpts['dinov2']}", "head", "linear", epochs=6, lr=1e-2, batch_size=16,
                      out=tmp_path / "dino-head", **QUIET)
    ck, log = _check_saved(out, data, "head", "linear")
    assert type(ck.model).__name__ == "Dinov2ForImageClassification" and ck.head is None
    assert ck.model.classifier.in_features == 2 * 32  # HF's DINOv2 head: concat(CLS, mean patch)
    after = ck.model.base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # backbone frozen
    assert log["history"][-1]["val_macro_f1"] > 0.8


@pytest.mark.slow
def test_full_linear_vit_trains_the_backbone(data, ckpts, tmp_path):
    before = load_checkpoint(f"dir:{ckpts['vit']}").model.state_dict()
    out = ft.finetune(data, f"dir:{ckpts['vit']}", "full", "linear", epochs=4, lr=1e-3, batch_size=16,
                      out=tmp_path / "vit-full", **QUIET)
    ck, _ = _check_saved(out, data, "full", "linear")
    assert type(ck.model).__name__ == "ViTForImageClassification"
    after = ck.model.base_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
@pytest.mark.parametrize("mode,head,family", [("head", "mlp2", "vit"), ("full", "mlp1", "dinov2")])
def test_mlp_heads_round_trip(data, ckpts, tmp_path, mode, head, family):
    out = ft.finetune(data, f"dir:{ckpts[family]}", mode, head, epochs=4, lr=3e-3, batch_size=16, hidden=24,
                      out=tmp_path / f"{family}-{mode}-{head}", **QUIET)
    ck, _ = _check_saved(out, data, mode, head)
    assert isinstance(ck.head, MLPHead) and ck.head.kind == head and ck.head.hidden == 24
    cfg = json.loads((out / "config.json").read_text())
    # an MLP reads what the family's own classifier reads: DINOv2 concat(CLS, mean patch), ViT the CLS token
    pooling, in_dim = ("cls+mean", 64) if family == "dinov2" else ("cls", 32)
    assert cfg["explorer_head"] == {"type": head, "in_dim": in_dim, "hidden": 24, "num_labels": 2, "pooling": pooling}


@pytest.mark.slow
def test_a_failed_finetune_leaves_no_checkpoint(data, ckpts, tmp_path, monkeypatch):
    calls = []

    def boom(*a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*a)

    real = ft._epoch_entry
    monkeypatch.setattr(ft, "_epoch_entry", boom)
    with pytest.raises(RuntimeError, match="killed"):
        ft.finetune(data, f"dir:{ckpts['dinov2']}", "full", "linear", epochs=3, out=tmp_path / "x", **QUIET)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ft, "_epoch_entry", real)

    # a crash while writing the log keeps the previous checkpoint at --out whole
    prev = ft.finetune(data, f"dir:{ckpts['dinov2']}", "head", "linear", epochs=1, out=tmp_path / "x", **QUIET)
    stamp = json.loads((prev / "explorer.json").read_text())["created"]
    real_dumps = json.dumps
    monkeypatch.setattr(ft.json, "dumps", lambda o, **k: (_ for _ in ()).throw(OSError("disk full"))
                        if "history" in o else real_dumps(o, **k))
    with pytest.raises(OSError):
        ft.finetune(data, f"dir:{ckpts['dinov2']}", "head", "mlp1", epochs=1, out=tmp_path / "x", **QUIET)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
    assert json.loads((prev / "explorer.json").read_text())["created"] == stamp
    assert load_checkpoint(f"dir:{prev}").head is None  # still the linear one


def test_heads_build_and_spec():
    for kind in HEADS:
        h = build_head(kind, 16, 3, hidden=8)
        spec = head_spec(h, pooling="pooler")
        again = build_head(spec["type"], spec["in_dim"], spec["num_labels"], hidden=spec["hidden"])
        again.load_state_dict(h.state_dict())  # same parameter names and shapes
        assert h(torch.zeros(2, 16)).shape == (2, 3) and spec["pooling"] == "pooler"
    assert sum(isinstance(m, torch.nn.Linear) for m in build_head("mlp3", 16, 3).modules()) == 4
    with pytest.raises(ValueError):
        build_head("mlp4", 16, 3)


def test_dihedral_and_schedule():
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.uint8).reshape(2, 4, 4, 3)
    views = {ft.dihedral(x, k).numpy().tobytes() for k in range(8)}
    assert len(views) == 8
    k = torch.tensor([3, 5])
    mixed = ft.dihedral(x, k)
    assert torch.equal(mixed[0], ft.dihedral(x[:1], 3)[0]) and torch.equal(mixed[1], ft.dihedral(x[1:], 5)[0])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = ft.lr_schedule(opt, "linear", 1.0, 100, 0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.0111, abs=1e-3)


def _folder(root, n=24):
    from PIL import Image

    images, labels = shapes(n, 32, seed=1)
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(root / f"g{i}.png")
        rows.append(f"g{i}.png,{lab},{['disc', 'bar'][lab]},{'test' if i % 4 == 0 else 'train'}")
    (root / "labels.csv").write_text("file,label,class_name,split\n" + "\n".join(rows) + "\n")
    return f"folder:{root}?image_size=32"


@pytest.mark.slow
def test_finetune_extract_evaluate(tmp_path, ckpts, capsys):
    """The CLI chain a user runs: finetune head-only and full, extract, evaluate -> ΔF1 row."""
    src = _folder(tmp_path)
    cache = str(tmp_path / "cache")
    for mode in ("head", "full"):
        assert main(["finetune", "--dataset", src, "--model", f"dir:{ckpts['vit']}", "--mode", mode,
                     "--epochs", "2", "--lr", "1e-3", "--device", "cpu", "--cache", cache]) == 0
        out = tmp_path / "cache" / "checkpoints" / f"vit-{tmp_path.name}-{mode}-linear"
        assert (out / "training_log.json").is_file()
        assert main(["extract", "--dataset", src, "--model", f"dir:{out}", "--device", "cpu", "--cache", cache]) == 0
    assert "val macro F1" in capsys.readouterr().out
    assert main(["evaluate", "--cache", cache]) == 0
    summary = json.loads((tmp_path / "cache" / "evaluations" / "summary.json").read_text())
    (row,) = summary["delta_f1"]
    assert row["base_model"] == f"dir:{ckpts['vit'].resolve()}" and row["family"] == "vit"
    assert sorted(r["mode"] for r in summary["runs"]) == ["full", "head"]
    assert all(r["split"] == "test" and r["rows"] == 6 for r in summary["runs"])
    # --out that is neither empty nor a checkpoint is refused before any training
    assert main(["finetune", "--dataset", src, "--model", f"dir:{ckpts['vit']}", "--mode", "head",
                 "--out", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


@pytest.mark.slow
def test_bf16_on_the_cpu_trains_with_eager_attention_and_saves_a_standard_checkpoint(data, ckpts, tmp_path,
                                                                                      monkeypatch):
    """--precision bf16 on a CPU (what auto picks where the CPU has native bf16): autocast, the
    attention eager while training (PyTorch's CPU SDPA is slower in bf16), SDPA again after."""
    seen = []
    train_full = ft._train_full

    def spy(r, *args):
        with ft._autocast(r):
            seen.append((r.ck.backbone.config._attn_implementation, torch.is_autocast_enabled("cpu"),
                         torch.get_autocast_dtype("cpu")))
        return train_full(r, *args)

    monkeypatch.setattr(ft, "_train_full", spy)
    quiet = {**QUIET, "precision": "bf16"}
    out = ft.finetune(data, f"dir:{ckpts['dinov2']}", "full", "linear", epochs=6, lr=3e-3, batch_size=16,
                      out=tmp_path / "bf16", **quiet)
    assert seen == [("eager", True, torch.bfloat16)]
    log = json.loads((out / "training_log.json").read_text())
    assert log["dtype"] == "bfloat16 autocast" and log["history"][-1]["train_loss"] < log["history"][0]["train_loss"]
    ck = load_checkpoint(f"dir:{out}")  # plain fp32 on the CPU, SDPA as every checkpoint loads
    assert ck.dtype == torch.float32 and ck.backbone.config._attn_implementation == "sdpa"
    assert abs(_val_f1(ck, data) - log["val_macro_f1"]) < 0.15  # bf16 may flip a borderline galaxy
    # fp32 asked for: no autocast, SDPA kept
    seen.clear()
    ft.finetune(data, f"dir:{ckpts['dinov2']}", "full", "linear", epochs=1, batch_size=16, out=tmp_path / "fp32",
                **QUIET)
    assert seen == [("sdpa", False, torch.bfloat16)]
    assert json.loads((tmp_path / "fp32" / "explorer.json").read_text())["dtype"] == "float32"


def test_precision_auto_follows_the_device_and_bad_values_are_refused(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ft._use_bf16("auto", cuda) and ft._use_bf16("bf16", cpu) and not ft._use_bf16("fp32", cuda)
    monkeypatch.setattr(ft, "cpu_has_bf16", lambda: False)
    assert not ft._use_bf16("auto", cpu)  # emulated bf16 is slower than fp32
    monkeypatch.setattr(ft, "cpu_has_bf16", lambda: True)
    assert ft._use_bf16("auto", cpu)
    with pytest.raises(ft.UserError, match="unknown precision 'fp16'"):
        ft._use_bf16("fp16", cpu)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode,head", [("full", "linear"), ("head", "mlp1")])
def test_finetune_on_gpu_bf16(data, ckpts, tmp_path, mode, head):
    out = ft.finetune(data, f"dir:{ckpts['dinov2']}", mode, head, epochs=6, lr=3e-3, batch_size=16,
                      out=tmp_path / "gpu", progress=False, log=print, device="cuda")
    log = json.loads((out / "training_log.json").read_text())
    assert log["dtype"] == "bfloat16 autocast" and log["history"][-1]["train_loss"] < log["history"][0]["train_loss"]
    ck = load_checkpoint(f"dir:{out}", device="cuda")
    assert ck.dtype == torch.bfloat16
    assert abs(_val_f1(ck, data) - log["val_macro_f1"]) < 0.15  # bf16 may flip a borderline galaxy
