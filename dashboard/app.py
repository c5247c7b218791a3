"""Galaxy embedding explorer: what finetuning did to a vision model's features.

    streamlit run dashboard/app.py                    # cache: $EXPLORER_CACHE or ./cache
    streamlit run dashboard/app.py -- --cache DIR

Reads only what `python -m core` cached; never trains or extracts.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/, not the repo, on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from core.store.cache import cache_dir  # noqa: E402
from dashboard import data as D  # noqa: E402
from dashboard.views.common import guarded, load_catalog  # noqa: E402
from dashboard.views.compare import compare_view  # noqa: E402
from dashboard.views.confusion import confusion_view  # noqa: E402
from dashboard.views.failures import failures_view  # noqa: E402
from dashboard.views.find import find_view  # noqa: E402
from dashboard.views.layers import layers_view  # noqa: E402
from dashboard.views.map import map_view  # noqa: E402
from dashboard.views.neighbours import neighbours_view  # noqa: E402
from dashboard.views.sidebar import damaged_notice, sidebar  # noqa: E402
from dashboard.views.unusual import unusual_view  # noqa: E402

VIEWS = {"Map": map_view, "Confusion": confusion_view, "Failures": failures_view, "Compare": compare_view,
         "Neighbours": neighbours_view, "Find": find_view, "Unusual": unusual_view, "Layers": layers_view}


def cache_from_args() -> Path:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--cache")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return cache_dir(args.cache)


def empty_page(cache: Path) -> None:
    st.info(f"No cached runs in `{cache}` yet, so there is nothing to show.")
    st.markdown("Build the offline demo (synthetic Galaxy10-like galaxies, small checkpoints, their features, "
                "t-SNE maps and scores; a few minutes on a laptop CPU), then reload this page:")
    st.code("python -m core demo\nstreamlit run dashboard/app.py", language="bash")
    st.markdown("Already have a cache elsewhere? `EXPLORER_CACHE=/path/to/cache streamlit run dashboard/app.py` "
                "or `streamlit run dashboard/app.py -- --cache /path/to/cache`.")


def header(ctx) -> None:
    run, data = ctx.run, ctx.data
    parts = [f"**{D.dataset_label(ctx.dataset)}**", f"{data.n:,} galaxies", D.model_label(run),
             f"{ctx.label()} (`{run.get('model')}`)"]
    ev = ctx.catalog.evaluation(run["key"])
    if ev and ev.get("macro_f1") is not None:
        parts.append(f"macro F1 {ev['macro_f1']:.2f}")
    st.markdown(" · ".join(parts))


def main() -> None:
    st.set_page_config(page_title="Galaxy embedding explorer", page_icon="🌌", layout="wide")
    st.html("<style>[data-testid='stMainBlockContainer']{padding-top:2.5rem}</style>")
    st.title("Galaxy embedding explorer")
    st.caption("How finetuning a vision foundation model reorganises what it sees in galaxy images: "
               "maps of its features, where it confuses classes, and which galaxies sit together.")
    cache = cache_from_args()
    catalog = load_catalog(cache)
    if not catalog:
        damaged_notice(catalog)
        empty_page(cache)
        return
    ctx = sidebar(cache, catalog)
    header(ctx)
    tabs = st.tabs(list(VIEWS), key="view", on_change="rerun", bind="query-params")
    for tab, view in zip(tabs, VIEWS.values()):
        if tab.open:
            with tab:
                guarded(view, ctx)


try:
    main()
except Exception as e:  # never a traceback on the page
    logging.getLogger("dashboard").exception("the page failed")
    st.error(f"The explorer hit a problem it could not handle ({type(e).__name__}). "
             "The details are in the server log; try another run in the sidebar or reload.")
