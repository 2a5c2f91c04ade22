"""pipeline: out-of-core, lazy-evaluation machine learning.

Chunked Zarr / memmap stores (:mod:`pipeline.store`), chunk streams
(:mod:`pipeline.stream`), sources and datasets (:mod:`pipeline.sources`,
:mod:`pipeline.datasets`).
"""

from pipeline import store

__version__ = "0.1.0"

__all__ = ["store", "__version__"]
