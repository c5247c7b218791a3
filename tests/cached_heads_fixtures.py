"""A tiny cached features run whose head lists the classes in another order than the dataset
(id2label reversed), for the analyses that read a run's predictions."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def write_reversed_head_run(cache, key: str, probs: np.ndarray, labels, mode: str = "head", prefix: str = "g"):
    """Write ``features/<key>.parquet``: dataset classes a, b, c...; the head's output j is class k-1-j,
    so its ``pred`` and ``probs`` columns are in reversed order. ``probs`` (n, k) are per dataset class."""
    from core.store import cache as store

    n, k = probs.shape
    names = [chr(ord("a") + i) for i in range(k)]
    head = probs[:, ::-1].astype(np.float32)
    table = pa.table({"row": np.arange(n), "id": [f"{prefix}{i}" for i in range(n)],
                      "split": np.where(np.arange(n) % 2 == 0, "test", "train"), "label": np.asarray(labels),
                      "pred": head.argmax(1), "confidence": head.max(1),
                      "embedding": pa.array([[0.0, 1.0]] * n, pa.list_(pa.float32(), 2)),
                      "probs": pa.array(head.tolist(), pa.list_(pa.float32(), k))})
    store.write_parquet(store.cache_dir(cache) / "features" / f"{key}.parquet", table,
                        {"kind": "features", "dataset": "x", "model": key, "mode": mode, "class_names": names,
                         "dim": 2, "rows": n, "has_head": True,
                         "id2label": {str(j): names[k - 1 - j] for j in range(k)}})
    return next(r for r in store.list_runs(cache) if r["kind"] == "features" and r["key"] == key)
