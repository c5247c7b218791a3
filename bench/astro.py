"""Speeds of the astronomy features, each as a ratio to a baseline timed in the same run.

    python bench/astro.py [--n 17736] [--dim 768]

1. sexagesimal strings for every galaxy (map hover): ours (numpy) vs astropy's Angle.to_string;
2. outlier scores (kNN distance k=10 + isolation forest) of n x dim features vs the
   baseline of scikit-learn's brute-force cosine NearestNeighbors alone;
3. the map figure with and without positions on hover (build time and JSON size).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import best_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=17736)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    from astropy import units as u
    from astropy.coordinates import Angle

    from core.analysis import outliers as anomaly
    from core.data import sky

    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(0, 360, args.n), rng.uniform(-90, 90, args.n)
    ours = best_of(lambda: sky.sexagesimal(ra, dec))
    theirs = best_of(lambda: (Angle(ra, unit=u.deg).to_string(unit=u.hourangle, sep="hms", precision=2, pad=True),
                            Angle(dec, unit=u.deg).to_string(unit=u.deg, sep="dms", precision=1, pad=True,
                                                             alwayssign=True)), repeat=1)
    out = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(),
           "sexagesimal": {"ours_s": round(ours, 4), "astropy_s": round(theirs, 4), "ratio": round(ours / theirs, 3)}}

    X = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    from sklearn.neighbors import NearestNeighbors

    base = best_of(lambda: NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute").fit(X).kneighbors(X),
                 repeat=1)
    t_knn = best_of(lambda: anomaly.knn_distance(X, 10), repeat=1)
    t_forest = best_of(lambda: anomaly.isolation_forest(X), repeat=1)
    out["outlier_scores"] = {"knn_s": round(t_knn, 2), "iforest_s": round(t_forest, 2),
                             "sklearn_cosine_knn_baseline_s": round(base, 2),
                             "knn_ratio_to_baseline": round(t_knn / base, 3),
                             "both_ratio_to_baseline": round((t_knn + t_forest) / base, 3)}

    import pandas as pd

    from dashboard.data import MapXY, build_run_data
    from dashboard.figures import map_figure

    labels = rng.integers(0, 10, args.n)
    frame = pd.DataFrame({"row": np.arange(args.n), "id": [f"g10-{i:05d}" for i in range(args.n)],
                          "split": "train", "label": labels, "meta_redshift": rng.uniform(0, 0.2, args.n)})
    run = {"key": "bench", "class_names": [f"class {i}" for i in range(10)], "has_head": False}
    xy = MapXY(rng.normal(size=args.n).astype(np.float32), rng.normal(size=args.n).astype(np.float32), {})
    plain = build_run_data(run, frame)
    with_sky = build_run_data(run, frame.assign(meta_ra=ra, meta_dec=dec))

    def build(data):
        return map_figure(data, xy).to_json()

    build(with_sky)  # the sexagesimal strings are computed once per run (cached on the RunData)
    t_plain, t_sky = best_of(lambda: build(plain)), best_of(lambda: build(with_sky))
    out["map_figure"] = {"without_positions_s": round(t_plain, 3), "with_positions_s": round(t_sky, 3),
                         "ratio": round(t_sky / t_plain, 2), "json_mb_without": round(len(build(plain)) / 1e6, 2),
                         "json_mb_with": round(len(build(with_sky)) / 1e6, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
