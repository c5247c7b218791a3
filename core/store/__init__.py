"""Layer 1, store: the parquet cache on disk.

Keys, atomic single-file writes and checks (``files``), sharded runs (``shards``), the cache front that lists
and reads both kinds (``cache``), embedding columns (``embeddings``).
May import: core.errors only.
"""
