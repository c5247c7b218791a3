"""Write features parquets in the contract format (docs/CONTRACTS.md) without a model,
so evaluation can be tested end to end from the cache."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.store import cache as store
from tests.features_fixtures import features_table as contract_table
from tests.features_fixtures import write_features as write_run


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
    return contract_table({"id": [f"g{i:04d}" for i in range(n)], "split": list(splits), "label": labels,
                           "embedding": emb, "pred": preds, "confidence": conf, "probs": probs,
                           "meta_redshift": rng.uniform(0, 0.2, n)})


def write_features(cache, table: pa.Table, class_names, model="dir:ckpt", mode="full", family="dinov2",
                   base_model=None, dataset="synthetic:galaxy10", id2label=None, key=None) -> dict:
    """Write one features run into ``cache`` and return its provenance (with key and path)."""
    return write_run(cache, table, key=key or store.key_of(dataset, model, "cls", "all"), class_names=class_names,
                     model=model, mode=mode, family=family, size=None, base_model=base_model, dataset=dataset,
                     id2label=id2label)
