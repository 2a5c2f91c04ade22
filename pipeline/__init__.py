"""pipeline: out-of-core, lazy-evaluation machine learning.

Chunked Zarr / memmap stores (:mod:`pipeline.store`), chunk streams for training
(:mod:`pipeline.stream`), readers (:mod:`pipeline.sources`) and named datasets
(:mod:`pipeline.datasets`).
"""

from pipeline import datasets, sources, store, stream

__version__ = "0.1.0"

__all__ = ["datasets", "sources", "store", "stream", "__version__"]
