"""`python -m core export`: one self-contained HTML file of a map (core.analysis.export)."""
from __future__ import annotations

import sys

from core.cli import args as shared
from core.analysis.export import write_html
from core.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "export", help="write one self-contained HTML file of a run's map: opens offline, no server",
        description="Write the map of a features run as ONE HTML file that opens from disk in Chromium or Firefox "
                    "with no network: WebGL map, class legend and highlighting, hover with id, class, prediction, "
                    "confidence, RA/Dec and a thumbnail, a confusion matrix whose cells ring their galaxies, "
                    "and your title and note. No cache path or machine name goes into it.")
    shared.add_run(p, required=True)
    p.add_argument("--method", default="tsne", choices=["tsne", "umap", "pca"], help="which cached map (default tsne)")
    p.add_argument("--map", metavar="KEY", help="a specific cached map (projection key) instead of --method")
    p.add_argument("--out", metavar="FILE.html", help="output file (default: galaxy-map-KEY.html)")
    p.add_argument("--title", help="title shown at the top")
    p.add_argument("--note", default="", help="a note shown under the title")
    p.add_argument("--highlight", action="append", default=[], metavar="CLASS",
                   help="draw this class in colour and the rest grey (repeat for several)")
    p.add_argument("--cell", nargs=2, metavar=("TRUE", "PREDICTED"),
                   help="ring the galaxies of this confusion cell, e.g. --cell 'Unbarred Tight Spiral' "
                        "'Unbarred Loose Spiral'")
    p.add_argument("--no-thumbnails", action="store_true", help="leave the thumbnails out (smallest file)")
    p.add_argument("--thumb-budget-mb", type=float, default=11.0,
                   help="thumbnails for every galaxy while they fit this size, a random sample beyond (default 11)")
    shared.add_cache(p)
    p.set_defaults(func=run)


def run(args) -> int:
    out = args.out or f"galaxy-map-{args.run}.html"
    if args.thumb_budget_mb < 0:
        raise UserError("--thumb-budget-mb must be 0 or more")
    stats = write_html(out, args.run, cache=args.cache, method=args.method, map_key=args.map, title=args.title,
                       note=args.note, highlight=args.highlight, cell=tuple(args.cell) if args.cell else None,
                       thumbnails=not args.no_thumbnails, thumb_budget_mb=args.thumb_budget_mb,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {stats['path']}: {stats['bytes'] / 2 ** 20:.1f} MB, {stats['galaxies']:,} galaxies, "
          f"thumbnails for {stats['thumbnails']:,} ({stats['seconds']} s); open it in a browser, no server needed")
    return 0
