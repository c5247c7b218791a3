"""`python -m core index`: build (or check) a features run's nearest-neighbour index."""
from __future__ import annotations

import time

from core.cli import args as shared
from core.analysis.knn_index import METRICS, cached_index, get_index


def add_parser(sub):
    p = sub.add_parser(
        "index", help="build a features run's nearest-neighbour index (faiss IVF-PQ) before opening it",
        description="Build the run's kNN index once (it is cached beside the run, with the features laid out for "
        "the exact re-rank), so the dashboard's Neighbours, Find and outlier scores answer from it at once. Runs of "
        "200,000 galaxies or more use it; a 10M-galaxy run takes tens of minutes on two cores. Prints the recall@10 "
        "measured against exact search, the size and the build time.")
    shared.add_features_choice(p)
    p.add_argument("--metric", default="cosine", choices=METRICS, help="distance (default cosine, as the "
                   "dashboard's outlier scores and Find use; Neighbours offers both)")
    shared.add_cache(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    run = shared.chosen_features_run(args)
    t = time.perf_counter()
    hit = cached_index(run, args.metric, args.cache)
    index = hit or get_index(run, args.metric, args.cache, progress=True)
    m = index.meta
    vec = m.get("vectors") or {}
    print(f"{'cached' if hit else 'built'}: {m['library']} {m['metric']} index of {run['key']} "
          f"({m['rows']:,} x {m['dim']}), {m.get('bytes_per_galaxy')} bytes per galaxy, recall@10 "
          f"{m['recall_at_10']} on {m['recall_queries']} queries; build {m['seconds']['total']:.0f} s, "
          f"peak RSS {m['peak_rss_mb']:.0f} MB" + (f"; re-rank vectors {vec['bytes'] / 1e9:.2f} GB ({vec['dtype']})"
                                                   if vec.get("bytes") else "")
          + (f"; opened in {time.perf_counter() - t:.1f} s" if hit else ""))
    print(f"  {index.path}")
    return 0
