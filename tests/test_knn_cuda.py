"""The TF32 kNN certificate on a real GPU: rounded products, re-ranked and certified, equal a float32
search. On the CPU the `tf32` case runs float32 products, so only a CUDA device tests the rounding."""
import numpy as np
import pytest
import torch

from core.analysis.knn import knn
from tests.test_tsne_torch import clustered_features

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (TF32 rounds only there)")


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_rounded_products_give_the_float32_neighbours(precision):
    X, _ = clustered_features(20_000, 768, seed=3)
    stats = {}
    idx, d2 = knn(X, 15, device="cuda", precision=precision, stats=stats)
    ref_idx, ref_d2 = knn(X, 15, device="cpu")
    same = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(idx, ref_idx)])
    assert same >= 0.999  # ties aside, the same neighbours
    assert np.allclose(d2, ref_d2, rtol=1e-4, atol=1e-3)
    assert 0 <= stats["rows_searched_again"] <= len(X)
