"""openTSNE's neighbour interfaces backed by our exact kNN (:func:`core.analysis.maps.quality.exact_knn`).

A compute-only module: it subclasses openTSNE's classes, so importing it imports
openTSNE (about half a second). :mod:`core.analysis.maps.projection` imports it inside the
functions that compute or place a t-SNE map, never at its own import, so reading
a cached map does not pay for openTSNE.
"""
from __future__ import annotations

import numpy as np
from openTSNE.affinity import PerplexityBasedNN
from openTSNE.nearest_neighbors import KNNIndex

from core.analysis.maps.quality import exact_knn


class ExactNeighbours(KNNIndex):
    """Exact euclidean kNN (chunked BLAS) behind openTSNE's index interface.

    Exact search on the raw features costs a few seconds at Galaxy10's size and
    keeps every true neighbour. Measured on bench/projection.py's 17,736 x 768
    features: Annoy on them gave kNN preservation 0.244 against 0.262 exact, and
    PCA-50 keeps only 52% of each point's true 10 nearest neighbours (PCA-100: 84%)."""

    VALID_METRICS = ["euclidean"]

    def build(self):
        idx, d2 = exact_knn(self.data, self.k)
        return idx, np.sqrt(d2, dtype=np.float64)

    def query(self, query, k):
        idx, d2 = exact_knn(self.data, k, queries=np.asarray(query, dtype=np.float32))
        return idx, np.sqrt(d2, dtype=np.float64)


class MapNeighbours(PerplexityBasedNN):
    """openTSNE's affinity object with our affinities (:mod:`core.analysis.maps.affinities`):
    ``P`` is the map's joint P computed by us (None when the object only places new
    points into an existing map), and the affinities of new points to the map's
    points (``to_new``, openTSNE's placement) are calibrated by us too, their
    neighbours searched on demand, without the all-pairs search a new map needs.
    openTSNE's own calibration underflows on far-apart features (see affinities)."""

    def __init__(self, X, perplexity, n_jobs, P=None, index=None):
        from scipy.sparse import csr_matrix

        self.knn_index = index or ExactNeighbours(X, min(len(X) - 1, int(3 * perplexity)), n_jobs=n_jobs)
        # placing never reads P; openTSNE checks its shape
        self.P = P if P is not None else csr_matrix((len(X), len(X)))
        self.perplexity, self.effective_perplexity_, self.n_jobs, self.verbose = perplexity, perplexity, n_jobs, False
        self.symmetrize, self.knn_kwargs = True, None

    def to_new(self, data, perplexity=None, return_distances=False, k_neighbors="auto"):
        """(m, n) affinities of new points to the map's points, rows summing to 1
        (openTSNE's interface; a perplexity above what k neighbours allow is
        clipped to k / 3, as openTSNE does)."""
        from core.analysis.maps.affinities import new_points_csr

        perplexity = perplexity if perplexity is not None else self.perplexity
        k = min(self.n_samples, int(3 * perplexity)) if k_neighbors == "auto" else int(k_neighbors)
        neighbors, distances = self.knn_index.query(data, k)
        P = new_points_csr(neighbors, np.square(distances), perplexity, self.n_samples)
        return (P, neighbors, distances) if return_distances else P
