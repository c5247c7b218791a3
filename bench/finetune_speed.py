"""Time finetuning of the demo-sized DINOv2 (0.83M params: 64 px, patch 8, hidden 128,
4 layers) on N procedurally drawn 64-px images (disc vs bar, see tests/test_finetune.py).

    PYTHONPATH=. python bench/finetune_speed.py [--device cuda] [--epochs 10] [--n 3000] [--precision fp32]

Prints seconds per mode and the validation macro F1; image content does not
change the timing, so the quick two-class generator stands in for galaxies.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import transformers as tf

    import core.train.finetune as ft
    from tests.test_finetune import Shapes

    ds = Shapes.make(a.n, 64)
    root = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(image_size=64, patch_size=8, hidden_size=128, num_hidden_layers=4,
                          num_attention_heads=4, mlp_ratio=4)
    model = tf.Dinov2Model(cfg)
    model.save_pretrained(root / "base")
    (root / "base" / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 64, "width": 64}, "do_center_crop": False, "do_rescale": True,
         "rescale_factor": 1 / 255,
         "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    print(f"params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, {a.n} images, device {a.device}")
    for mode, head, lr, schedule in (("full", "linear", 1e-3, "onecycle"), ("head", "mlp2", None, "linear")):
        t = time.time()
        out = ft.finetune(ds, f"dir:{root / 'base'}", mode, head, epochs=a.epochs, lr=lr, batch_size=a.batch_size,
                          schedule=schedule, out=root / f"{mode}-{head}", device=a.device, precision=a.precision,
                          progress=False,
                          log=lambda *x: None)
        log = json.loads((out / "training_log.json").read_text())
        print(f"{mode:4} {head:6} {a.epochs} epochs: {time.time() - t:6.1f} s  "
              f"val macro F1 {log['val_macro_f1']:.3f}  ({log['dtype']}, {log['device']})", flush=True)


if __name__ == "__main__":
    main()
