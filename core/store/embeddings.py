"""The one way to turn a features table's ``embedding`` column into a matrix, and back.

The mapper, the dashboard's neighbour search and any script read embeddings
through here, so a change of storage (sharded runs, another list type) is made
once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.store import cache as store
from core.errors import UserError


def embedding_matrix(column, dim: int = 0) -> np.ndarray:
    """(n, d) C-contiguous float32 from a pyarrow (fixed-size) list column of
    n embeddings; ``dim`` gives the width of an empty column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if not n:
        return np.zeros((0, int(dim or 0)), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(n, -1), dtype=np.float32)


def embedding_column(matrix, dtype=np.float32) -> pa.FixedSizeListArray:
    """(n, d) array -> a fixed_size_list<``dtype``>[d] column (what features and per-layer runs store)."""
    a = np.ascontiguousarray(matrix, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def read_embeddings(path, dim: int = 0) -> np.ndarray:
    """The (n, d) float32 embeddings of a features run, in its row order."""
    table = store.read_table(path, columns=["embedding"])
    if table is None:
        raise UserError(f"features file {path} is unreadable or incomplete; extract it again")
    return embedding_matrix(table.column("embedding"), dim)
