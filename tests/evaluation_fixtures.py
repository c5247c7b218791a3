"""Write features parquets in the contract format (docs/CONTRACTS.md) without a model,
so evaluation can be tested end to end from the cache."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from core import cache as store


def features_table(labels, preds, confidence, splits, dim: int = 8, n_classes: int | None = None, seed: int = 0):
    """A features table: row, id, split, label, embedding, pred, confidence, probs, meta_redshift."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    n = len(labels)
    k = n_classes or int(max(labels.max(), preds.max()) + 1)
    rng = np.random.default_rng(seed)
    conf = np.asarray(confidence, dtype=np.float32)
    probs = np.full((n, k), 0.0, dtype=np.float32)
    probs[np.arange(n), preds] = conf
    probs += ((1 - conf) / max(k - 1, 1))[:, None] * (probs == 0)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    return pa.table(
        {
            "row": pa.array(np.arange(n), pa.int64()),
            "id": pa.array([f"g{i:04d}" for i in range(n)], pa.string()),
            "split": pa.array(list(splits), pa.string()),
            "label": pa.array(labels, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
            "pred": pa.array(preds, pa.int64()),
            "confidence": pa.array(conf, pa.float32()),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel(), pa.float32()), k),
            "meta_redshift": pa.array(rng.uniform(0, 0.2, n), pa.float64()),
        }
    )


def write_features(cache, table: pa.Table, class_names, model="dir:ckpt", mode="full", family="dinov2",
                   base_model=None, dataset="synthetic:galaxy10", id2label=None, key=None) -> dict:
    """Write one features run into ``cache`` and return its provenance (with key and path)."""
    dim = table.schema.field("embedding").type.list_size
    prov = {
        "kind": "features",
        "dataset": dataset,
        "dataset_fingerprint": "d" * 16,
        "model": model,
        "model_fingerprint": store.key_of(model),
        "family": family,
        "mode": mode,
        "pooling": "cls",
        "split": "all",
        "rows": table.num_rows,
        "dim": dim,
        "has_head": "pred" in table.column_names,
        "class_names": list(class_names),
        "id2label": id2label if id2label is not None else {str(i): c for i, c in enumerate(class_names)},
        "dtype": "float32",
        "device": "cpu",
        "versions": {},
        "skipped": [],
        "created": "2025-01-01T00:00:00",
        "seconds": 0.1,
    }
    if base_model:
        prov["base_model"] = base_model
    key = key or store.key_of(dataset, model, "cls", "all")
    path = store.path_for(store.cache_dir(cache), "features", key)
    store.write_parquet(path, table, prov)
    return {**prov, "key": key, "path": str(path)}
