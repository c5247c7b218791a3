"""Layer 3, models: checkpoint references -> backbone (+ head).

``load`` (hf:, dir:, demo:, timm: references, fingerprints, loading), ``checkpoint`` (what a loaded checkpoint
is), ``timm``, ``preprocess``, ``pooling``, ``heads``, ``saving``, ``modes`` (generic / head / full).
May import: core.data, core.store, core.errors.
"""
