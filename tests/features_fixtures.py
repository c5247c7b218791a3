"""The one writer of features parquets for tests that need features of a chosen
structure (clusters, the paper's confusion matrix): no model gives those on demand.
Everything else (maps, evaluations, listings) is what core computes from them.

The table follows docs/CONTRACTS.md and the provenance carries every field
`python -m core extract` writes, so readers meet what core would hand them.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.store import cache as store
from core.store.embeddings import embedding_column

LISTS = ("embedding", "probs")  # (n, k) arrays stored as fixed_size_list<float32>[k]
TYPES = {"row": pa.int64(), "id": pa.string(), "split": pa.string(), "label": pa.int64(), "pred": pa.int64(),
         "confidence": pa.float32()}


def features_table(columns: dict) -> pa.Table:
    """Contract types for ``columns`` (name -> array; ``row`` defaults to 0..n-1, metadata as ``meta_*``)."""
    n = len(columns["label"])
    columns = {"row": np.arange(n), **columns}
    cols = {}
    for name, values in columns.items():
        if name in LISTS:
            cols[name] = embedding_column(values)
        elif name in TYPES:
            cols[name] = pa.array(np.asarray(values).astype(str) if TYPES[name] == pa.string() else values, TYPES[name])
        else:
            cols[name] = pa.array(values)
    return pa.table(cols)


def write_features(cache, table, key: str | None = None, **provenance) -> dict:
    """Write one features run (a pa.Table or a dict of columns) into ``cache/features/``.

    ``provenance`` overrides the defaults (dataset, model, mode, pooling, split, class_names,
    id2label, family, size, base_model, ...). Returns the provenance with ``key`` and ``path``.
    """
    table = table if isinstance(table, pa.Table) else features_table(table)
    has_head = "pred" in table.column_names
    class_names = provenance.pop("class_names", None) or [
        f"class {c}" for c in range(int(max(np.max(table.column("label").to_numpy()), 0)) + 1)]
    prov = dict(kind="features", format=1, dataset="synthetic:test", model="demo:tiny", family="dinov2",
                size="small", mode="full" if has_head else "generic", pooling="cls", split="all",
                class_names=list(class_names), base_model=None, head=None, dtype="float32", device="cpu",
                batch_size=64, image_size=[32, 32], dataset_image_size=32, skipped=[], versions={},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=0.0)
    prov.update(provenance)
    prov.setdefault("dataset_fingerprint", store.key_of(prov["dataset"]))
    prov.setdefault("model_fingerprint", store.key_of(prov["model"]))
    if prov.get("id2label") is None:
        prov["id2label"] = {str(i): c for i, c in enumerate(prov["class_names"])} if has_head else {}
    prov.update(rows=table.num_rows, dim=table.schema.field("embedding").type.list_size, has_head=has_head)
    key = key or store.key_of(prov["dataset_fingerprint"], prov["model_fingerprint"], prov["pooling"],
                              prov["split"], prov["mode"])
    path = store.path_for(store.cache_dir(Path(cache)), "features", key)
    store.write_parquet(path, table, prov)
    return {**prov, "key": key, "path": str(path)}
