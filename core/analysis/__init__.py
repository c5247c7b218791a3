"""Layer 5, analysis: what features runs say.

Evaluation (F1, confusion, ΔF1), kNN, outliers, attention maps, per-block probes/CKA (``layers``) and
``maps`` (t-SNE / UMAP / PCA, map quality, the map store).
May import: core.extract, core.models, core.data, core.store, core.errors.
"""
