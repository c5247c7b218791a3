"""A GPU t-SNE for comparison (torchdr), on the same 17,736 x 768 clustered features
as bench/projection.py: time and kNN preservation. CPU openTSNE stays the default;
this answers whether a lent GPU is worth using for maps.

    python bench/gpu_tsne.py            # needs CUDA and `pip install torchdr`
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.mapquality import map_quality  # noqa: E402
from projection import clustered_features  # noqa: E402


def main():
    import torch
    import torchdr

    X, _ = clustered_features()
    results = []
    for max_iter in (500, 1000):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        Y = torchdr.TSNE(perplexity=30, max_iter=max_iter, device="cuda", random_state=42).fit_transform(
            torch.from_numpy(X).cuda())
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        Y = Y.detach().float().cpu().numpy() if hasattr(Y, "cpu") else Y
        q = map_quality(X, Y)
        row = dict(device=torch.cuda.get_device_name(), method="torchdr.TSNE", torchdr=torchdr.__version__,
                   max_iter=max_iter, n=len(X), seconds=round(seconds, 2),
                   knn_preservation=round(q["knn_preservation"], 4), trustworthiness=round(q["trustworthiness"], 4))
        results.append(row)
        print(json.dumps(row), flush=True)
    slug = "".join(c if c.isalnum() else "-" for c in torch.cuda.get_device_name().lower()).strip("-")
    out = Path(__file__).parent / "results" / f"gpu-tsne-{slug}.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
