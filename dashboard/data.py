"""What the dashboard reads from the cache, as plain Python (no Streamlit here),
in one namespace for the views (``from .. import data as D``).

Each concern lives in its own module: `catalog` (the cached runs grouped by
dataset, model and mode, and their names), `rundata` (one run's galaxies,
predictions and map), `subsets` (a split, a confusion cell, class counts),
`selection` (chart selections, CSV export), `palette` (class colours).
Scores, confusion and nearest neighbours are computed by `core.analysis.evaluation`
only; embeddings are read by `core.store.embeddings` only.
"""
from __future__ import annotations

from core.store.embeddings import read_embeddings
from core.analysis.evaluation import (classification_report, confusion_matrix, knn_neighbours, per_class_delta,
                             prediction_mapping, row_norms, scores_from_confusion)

from .catalog import (DEMO_GENERIC_NOTE, FAMILY_NAMES, METHODS, MODE_HELP, MODES, Catalog, checkpoint_label,
                      dataset_label, is_demo_generic, is_random_stand_in, model_label, run_mode)
from .palette import CLASS_COLOURS, EXTRA_COLOURS, class_colour
from .rundata import MapXY, RunData, align_projection, build_run_data, read_projection, read_run
from .selection import cell_from_selection, rows_from_selection, selection_csv
from .subsets import cell_positions, class_counts, default_split, split_mask, split_scores

__all__ = [
    "read_embeddings", "classification_report", "confusion_matrix", "knn_neighbours", "per_class_delta",
    "prediction_mapping", "row_norms", "scores_from_confusion",
    "FAMILY_NAMES", "METHODS", "MODE_HELP", "MODES", "Catalog", "checkpoint_label", "dataset_label",
    "is_random_stand_in", "model_label", "run_mode", "DEMO_GENERIC_NOTE", "is_demo_generic",
    "CLASS_COLOURS", "EXTRA_COLOURS", "class_colour",
    "MapXY", "RunData", "align_projection", "build_run_data", "read_projection", "read_run",
    "cell_from_selection", "rows_from_selection", "selection_csv",
    "cell_positions", "class_counts", "default_split", "split_mask", "split_scores",
]
