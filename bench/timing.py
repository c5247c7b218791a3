"""What the bench scripts share to time a workload and say under which load it ran
(imported by name: a script's own folder, bench/, is first on its path)."""
from __future__ import annotations

import os
import time


def load() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages, rounded: printed beside every number."""
    return [round(x, 2) for x in os.getloadavg()]


def best_of(fn, repeat: int = 3) -> float:
    """The fastest of ``repeat`` wall-clock timings of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
