"""`python -m core project`: the command line of core.analysis.maps.store."""
from __future__ import annotations

import json

from core.cli import args as shared
from core.analysis.maps import projection as proj
from core.analysis.maps.store import NAMES, cached_projection, features_run, find_features, get_projection
from core.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "project", help="compute (or read from the cache) a 2-D map of cached features",
        description="Make a t-SNE, UMAP or PCA map of cached features and cache it beside them, with its "
        "quality numbers. Choose the features with --dataset and --model (as given to `extract`) or --run KEY "
        "(from `python -m core ls`).",
    )
    shared.add_features_choice(p)
    p.add_argument("--method", choices=proj.METHODS, default="tsne", help="map method (default tsne)")
    p.add_argument("--perplexity", type=float, help="t-SNE perplexity (default 30, as in the paper)")
    p.add_argument("--n-neighbors", type=int, help="UMAP neighbours (default 15)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--align-to", metavar="KEY", help="features key of the map to start from (e.g. the generic "
                   "model's run), so the same galaxy sits in roughly the same place")
    p.add_argument("--json", action="store_true", help="print the provenance as JSON")
    shared.add_cache(p)
    p.set_defaults(func=run)


def _params_from(args) -> dict:
    params = {"seed": args.seed}
    if args.perplexity is not None:
        if args.method != "tsne":
            raise UserError("--perplexity applies to --method tsne only")
        params["perplexity"] = args.perplexity
    if args.n_neighbors is not None:
        if args.method != "umap":
            raise UserError("--n-neighbors applies to --method umap only")
        params["n_neighbors"] = args.n_neighbors
    return params


def run(args) -> int:
    if args.run and (args.dataset or args.model):
        raise UserError("give either --run KEY or --dataset and --model, not both")
    if args.run:
        key = features_run(args.run, args.cache)["key"]
    elif args.dataset and args.model:
        key = find_features(args.dataset, args.model, args.cache)["key"]
    else:
        raise UserError("say which features to map: --dataset SRC --model REF, or --run KEY (see `python -m core ls`)")
    if args.align_to:
        features_run(args.align_to, args.cache)
    params = _params_from(args)
    was_cached = cached_projection(key, args.method, args.cache, params, args.align_to) is not None
    _, prov = get_projection(key, args.method, args.cache, params, args.align_to, progress=not args.json)
    if args.json:
        print(json.dumps(prov, indent=1, default=str))
        return 0
    q, fq = prov["quality"], prov.get("feature_quality")
    how = "cached" if was_cached else f"computed in {prov['seconds']:.1f} s"
    print(f"{NAMES[prov['method']]} map of {prov.get('dataset')} / {prov.get('model')} ({prov['rows']:,} points), {how}")
    print(f"  {prov['path']}")
    print(f"  map: kNN preservation {q['knn_preservation']:.3f}, trustworthiness {q['trustworthiness']:.3f} (k={q['k']})")
    if fq:
        print(f"  features: kNN accuracy {fq['knn_accuracy']:.3f}, silhouette {fq['silhouette']:.3f}")
    return 0
