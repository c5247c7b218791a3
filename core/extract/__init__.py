"""Layer 4, extract: images -> features runs.

One per-batch extractor (``batches``) and two schedulers: threads in this process (``features``) and Ray Data
actors (``ray``); per-layer features (``layers``); one uploaded image (``upload``).
May import: core.models, core.data, core.store, core.errors.
"""
