"""`extract --compile` with a classification head: same features and logits as eager,
and the speed ratio, measured in one process (GPU; falls back to CPU with a note).

    python bench/compile_heads.py [--n 4096] [--batch 256]

A random-weight DINOv2-base with a 10-class HF head (the paper's finetuned layout),
224 px uint8 batches preprocessed on the device, bf16 on CUDA. Prints images/s
eager and compiled, their ratio, and the largest feature/logit difference.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import transformers as tf

    from core.models.load import load_checkpoint

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        print("no GPU: timing on CPU with a small n (the number that matters is the GPU one)")
        args.n, args.batch = 64, 16
    folder = tempfile.mkdtemp()
    cfg = tf.Dinov2Config(image_size=224, num_labels=10)  # base size: hidden 768, 12 layers
    tf.Dinov2ForImageClassification(cfg).save_pretrained(folder)
    images = torch.randint(0, 255, (args.batch, 256, 256, 3), dtype=torch.uint8, device=device)

    def run(ck):
        outs, t0 = None, None
        with torch.inference_mode():
            for i in range(args.n // args.batch + 2):  # two warm-up batches (compilation)
                if i == 2:
                    torch.cuda.synchronize() if device == "cuda" else None
                    t0 = time.perf_counter()
                out = ck.forward(ck.preprocess(images))
                outs = outs or out
        torch.cuda.synchronize() if device == "cuda" else None
        return outs, args.n / (time.perf_counter() - t0)

    eager = load_checkpoint(f"dir:{folder}", device=device)
    (f0, l0), eager_rate = run(eager)
    compiled = load_checkpoint(f"dir:{folder}", device=device).compile()
    (f1, l1), compiled_rate = run(compiled)
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, dtype {eager.dtype}, "
          f"batch {args.batch}, {args.n} images")
    print(f"eager {eager_rate:.0f} img/s, compiled {compiled_rate:.0f} img/s, ratio {compiled_rate / eager_rate:.2f}")
    print(f"max |feature diff| {(f0.float() - f1.float()).abs().max():.3g}, "
          f"max |logit diff| {(l0.float() - l1.float()).abs().max():.3g}, "
          f"hooks on the backbone after the run: {len(compiled.backbone._forward_hooks)}")


if __name__ == "__main__":
    main()
