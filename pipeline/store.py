"""Chunked Zarr / memmap stores: :func:`write` atomically, :func:`open` lazily.

>>> import numpy as np, pipeline
>>> ds = pipeline.store.write("data.zarr", np.ones((1000, 8)), np.arange(1000) % 2)  # doctest: +SKIP
>>> ds = pipeline.store.open("data.zarr")  # doctest: +SKIP
>>> ds.X  # a dask array, one task per store chunk  # doctest: +SKIP
"""

from pipeline._atomic import kind_of
from pipeline._store import (
    ChunkReadError,
    Dataset,
    StoreChangedError,
    default_chunk_rows,
    open,
    write,
)

__all__ = [
    "ChunkReadError",
    "Dataset",
    "StoreChangedError",
    "default_chunk_rows",
    "kind_of",
    "open",
    "write",
]
