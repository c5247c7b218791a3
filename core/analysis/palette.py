"""Class colours: one fixed colour per class index, so a class keeps its colour
across runs and views."""
from __future__ import annotations

# No grey in it: grey means "not highlighted".
CLASS_COLOURS = ["#d62728", "#ff7f0e", "#1f77b4", "#17becf", "#9467bd",
                 "#2ca02c", "#8c564b", "#e377c2", "#bcbd22", "#393b79"]
EXTRA_COLOURS = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                 "#9edae5", "#637939", "#8c6d31", "#843c39"]


def class_colour(i: int) -> str:
    palette = CLASS_COLOURS + EXTRA_COLOURS
    return palette[i % len(palette)]
