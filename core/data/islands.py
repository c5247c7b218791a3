"""Galaxy10-shaped class structure for synthetic features and maps: where the paper's
finetuned models put the classes (Unbarred Tight and Loose Spirals close together,
Disturbed scattered among the others).

The test fixtures (tests/dashboard_fixtures.py) and bench/make_big_run.py (a survey-sized
run without a GPU) both draw their synthetic features runs from here.
"""
from __future__ import annotations

import numpy as np

from core.data.base import GALAXY10_CLASSES

TIGHT, LOOSE, DISTURBED = (list(GALAXY10_CLASSES).index(name)  # 6, 7, 0
                            for name in ("Unbarred Tight Spiral", "Unbarred Loose Spiral", "Disturbed"))


def island_centres(labels, radius: float, loose_weight: float, rng) -> np.ndarray:
    """(n, 2) centre of each galaxy's island in a t-SNE-like picture: one island per class on a
    circle of ``radius``, Loose Spiral moved towards Tight Spiral (keeping ``loose_weight`` of its
    own place), a Disturbed galaxy in a random class's island. Callers add their own spread."""
    k = len(GALAXY10_CLASSES)
    angle = 2 * np.pi * np.arange(k) / k
    centres = np.stack([np.cos(angle), np.sin(angle)], 1) * radius
    centres[LOOSE] = centres[TIGHT] * (1 - loose_weight) + centres[LOOSE] * loose_weight
    own = np.array(labels, copy=True)
    dist = own == DISTURBED
    own[dist] = rng.integers(k, size=int(dist.sum()))
    return centres[own]
