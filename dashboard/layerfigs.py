"""Figures of the Layers view and attention overlays (no Streamlit here)."""
from __future__ import annotations

import io

import numpy as np
import plotly.graph_objects as go

MODE_COLOURS = {"generic": "#7f7f7f", "head": "#1f77b4", "full": "#d62728", "finetuned": "#d62728"}
MODE_NAMES = {"generic": "generic", "head": "head-only", "full": "full finetune", "finetuned": "finetuned"}
# inferno, five stops: dark where the model does not look, bright yellow where it does
_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def curves_figure(scores_by_mode: dict, kind: str, unit: str = "block", height: int = 360) -> go.Figure:
    """Probe macro F1 (solid) and kNN accuracy (dotted) per block, one colour per mode.
    ``scores_by_mode``: mode -> the ``scores`` rows of ``core.analysis.layers.layer_scores``."""
    fig = go.Figure()
    for mode, rows in scores_by_mode.items():
        rows = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["layer"])
        if not rows:
            continue
        x = [r["layer"] for r in rows]
        colour, name = MODE_COLOURS.get(mode, "#2ca02c"), MODE_NAMES.get(mode, mode)
        fig.add_scatter(x=x, y=[r["macro_f1"] for r in rows], mode="lines+markers", name=f"{name}: probe macro F1",
                        line=dict(color=colour, width=2.5), legendgroup=mode)
        fig.add_scatter(x=x, y=[r["knn_accuracy"] for r in rows], mode="lines+markers",
                        name=f"{name}: kNN accuracy", line=dict(color=colour, dash="dot"), legendgroup=mode)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), title="How separable each "
                      f"{unit} is (test galaxies)", legend=dict(orientation="h", y=-0.25),
                      xaxis=dict(title=unit, dtick=1), yaxis=dict(title="score", range=[0, 1.02]))
    return fig


def cka_figure(cka_by_mode: dict, kind: str, unit: str = "block", height: int = 360) -> go.Figure:
    """Linear CKA with the generic checkpoint, per block, one line per finetuned mode."""
    fig = go.Figure()
    for mode, rows in cka_by_mode.items():
        rows = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["layer"])
        fig.add_scatter(x=[r["layer"] for r in rows], y=[r["cka"] for r in rows], mode="lines+markers",
                        name=f"generic vs {MODE_NAMES.get(mode, mode)}",
                        line=dict(color=MODE_COLOURS.get(mode, "#2ca02c"), width=2.5))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25),
                      title=f"How much finetuning changed each {unit} (CKA, 1 = unchanged)",
                      xaxis=dict(title=unit, dtick=1), yaxis=dict(title="linear CKA", range=[0, 1.02]))
    return fig


def colourmap(values: np.ndarray) -> np.ndarray:
    """(…) floats in 0..1 -> (…, 3) uint8 inferno colours."""
    v = np.clip(np.asarray(values, np.float32), 0, 1) * (len(_STOPS) - 1)
    lo = np.minimum(v.astype(int), len(_STOPS) - 2)
    t = (v - lo)[..., None]
    return (_STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t).round().astype(np.uint8)


def overlay(crop: np.ndarray, heat: np.ndarray, size: int = 160, alpha: float = 0.6) -> np.ndarray:
    """The crop the model saw (S, S, 3) uint8 with a (g, g) attention map laid over it,
    smoothly upsampled and scaled to its own maximum; returns (size, size, 3) uint8."""
    from PIL import Image

    base = np.asarray(Image.fromarray(np.asarray(crop, np.uint8)).resize((size, size), Image.BICUBIC), np.float32)
    h = np.asarray(heat, np.float32)
    h = (h - h.min()) / max(float(h.max() - h.min()), 1e-12)
    h = np.asarray(Image.fromarray(h).resize((size, size), Image.BILINEAR), np.float32)
    out = base * (1 - alpha) + colourmap(h).astype(np.float32) * alpha
    return out.round().clip(0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
