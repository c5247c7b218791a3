"""`python -m core anomalies`: the command line of core.analysis.outliers."""
from __future__ import annotations

import numpy as np

from core.cli import args as shared
from core.analysis.outliers import DEFAULTS, METHODS, get_anomalies, ranks, score_against
from core.errors import UserError
from core.store import cache as store


def add_parser(sub):
    p = sub.add_parser(
        "anomalies", help="outlier scores (kNN distance, isolation forest; 0-5) of a cached features run",
        description="Score every galaxy of a features run by how unusual its features are (0-5, 5 = weirdest, "
        "as Astronomaly scales them), cache the scores and list the weirdest galaxies. With --against, rank "
        "another run's galaxies (e.g. the real photos) against this one.")
    shared.add_features_choice(p)
    p.add_argument("--against", metavar="RUN", help="features key of another run of the same checkpoint to rank")
    p.add_argument("--k", type=int, default=DEFAULTS["k"], help="neighbours of the kNN score (default 10)")
    p.add_argument("--top", type=int, default=10, help="how many of the weirdest galaxies to print")
    shared.add_cache(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from core.analysis.maps.store import features_run, load_features

    if args.k < 1:
        raise UserError("--k must be a positive integer")
    run = shared.chosen_features_run(args)
    df, prov = get_anomalies(run["key"], args.cache, progress=True, k=args.k)
    names = run.get("class_names") or []
    labels = store.read_table(run["path"], columns=["label"]).column("label").to_numpy()  # not the features
    combined = (df["knn"] + df["iforest"]).to_numpy()
    print(f"{len(df)} galaxies of {run.get('dataset')} with {run.get('model')}; scores 0-5, 5 = weirdest")
    for name in ("knn", "iforest"):
        print(f"  {METHODS[name]}: median {df[name].median():.2f}")
    print(f"weirdest {min(args.top, len(df))} (kNN + isolation forest):")
    for i in np.argsort(-combined, kind="stable")[: args.top]:
        lab = int(labels[i])
        print(f"  {df['id'].iloc[i]:>14}  kNN {df['knn'].iloc[i]:.2f}  forest {df['iforest'].iloc[i]:.2f}  "
              f"{names[lab] if 0 <= lab < len(names) else 'unlabelled'}")
    for c in sorted(set(labels[labels >= 0].tolist())):
        r = ranks(combined, labels == c)
        print(f"  class {names[c] if c < len(names) else c}: {len(r)} galaxies, median rank {int(np.median(r))} "
              f"of {len(df)}, {int((r <= len(df) // 10).sum())} in the weirdest 10%")
    if args.against:
        other = features_run(args.against, args.cache)
        if other.get("dim") != run.get("dim"):
            raise UserError(f"--against run has {other.get('dim')}-d features, this run {run.get('dim')}-d")
        _, X_ref = load_features(run)
        rows_new, X_new = load_features(other)
        s = score_against(X_ref, X_new, k=args.k)
        print(f"{len(s)} galaxies of {other.get('dataset')} ranked against it: median percentile "
              f"kNN {s['knn_percentile'].median():.0f}, forest {s['iforest_percentile'].median():.0f}; "
              f"{int((s['knn_percentile'] >= 90).sum())} above the 90th kNN percentile")
    return 0
