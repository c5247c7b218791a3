"""Clustered features with known structure, cached as features runs
(tests.features_fixtures) for the map tests."""
from __future__ import annotations

import numpy as np

from tests.features_fixtures import write_features as write_run


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
    """Write a features run of ``X`` (n, d) into ``cache/features/`` the way ``extract`` does; returns its key."""
    n = len(X)
    ids = [f"g{i:05d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    columns = {"id": ids, "split": ["train" if i % 5 else "test" for i in range(n)], "label": labels, "embedding": X}
    return write_run(cache, columns, dataset=dataset, model=model, mode=mode, pooling=pooling, split=split,
                     class_names=class_names)["key"]
