"""Class colours (defined in core.analysis.palette, shared with the one-file HTML export)."""
from core.analysis.palette import CLASS_COLOURS, EXTRA_COLOURS, class_colour  # noqa: F401
