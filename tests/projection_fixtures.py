"""Features parquets in the exact contract format (docs/CONTRACTS.md), written
without the extraction engine, and clustered features with known structure."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from core import cache as store


def blobs(n=400, d=32, n_classes=4, spread=1.0, seed=0, scattered=None):
    """``n`` points in ``n_classes`` gaussian blobs with unit noise; two centres
    lie about ``spread * sqrt(d)`` apart (two points of one blob: ``sqrt(2d)``).
    ``scattered`` = a class whose points sit in every blob (like Disturbed
    galaxies). Returns (X float32, labels int64)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)) * spread / np.sqrt(2)  # first: same seed, same blobs
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    X = centres[labels] + rng.normal(size=(n, d))
    if scattered is not None:
        hit = labels == scattered
        X[hit] = centres[rng.integers(0, n_classes, hit.sum())] + rng.normal(size=(hit.sum(), d)) * 1.5
    return X.astype(np.float32), labels.astype(np.int64)


def write_features(cache, X, labels, ids=None, dataset="synthetic:test", model="demo:tiny", mode="generic",
                   pooling="cls", split="all", class_names=None) -> str:
    """Write a features parquet into ``cache/features/`` the way ``extract`` does; returns its key."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    ids = [f"g{i:05d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    class_names = class_names or [f"class {c}" for c in range(int(max(labels.max(), 0)) + 1)]
    key = store.key_of("features", dataset, model, mode, pooling, split)
    table = pa.table({
        "row": pa.array(np.arange(n), pa.int64()),
        "id": pa.array(ids, pa.string()),
        "split": pa.array(["train" if i % 5 else "test" for i in range(n)], pa.string()),
        "label": pa.array(np.asarray(labels), pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d),
    })
    prov = dict(
        kind="features", dataset=dataset, dataset_fingerprint=f"fp-{dataset}", model=model,
        model_fingerprint=f"fp-{model}", family="dinov2", mode=mode, pooling=pooling, split=split, rows=n,
        dim=d, has_head=False, class_names=class_names, id2label={}, dtype="float32", device="cpu",
        versions={}, skipped=[], created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=0.0,
    )
    store.write_parquet(store.path_for(store.cache_dir(cache), "features", key), table, prov)
    return key
