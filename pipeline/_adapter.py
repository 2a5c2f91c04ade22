"""The input adapter: which inputs are read chunk by chunk, and their dask view.

Every consumer (estimators, streams, the Pipeline, model selection, parallel
training, the CLI) asks here, so they agree on what an input is:

============================  ==========  ========================  =================
input                         streamed    dask view                 predict returns
============================  ==========  ========================  =================
numpy, pandas                 no          (in memory)               numpy
``np.memmap``                 yes         one task per ~8 MB rows   numpy
zarr array                    yes         ``da.from_zarr``          dask (lazy)
dask array                    yes         itself                    dask (lazy)
dask DataFrame / Series       yes         ``to_dask_array``         dask (lazy)
``Dataset``, store path       yes         its ``X`` (and ``y``)     dask (lazy)
============================  ==========  ========================  =================

numpy and memmap give numpy back because scikit-learn's own checks pass
read-only memmaps and expect arrays.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
from dask.base import tokenize

from pipeline._inputs import default_chunk_rows, lazy_view
from pipeline._store import Dataset

__all__ = ["as_dask", "dataset_xy", "is_streamed", "opened", "returns_lazy"]


def _package(a):
    return type(a).__module__.split(".")[0]


def _is_store_path(a):
    return isinstance(a, (str, os.PathLike))


def _is_dask_frame(a):
    return _package(a) in ("dask", "dask_expr") and hasattr(a, "to_dask_array")


def is_streamed(a):
    """True for inputs read chunk by chunk rather than held in memory."""
    return (
        isinstance(a, (da.Array, Dataset, np.memmap))
        or _package(a) == "zarr"
        or _is_dask_frame(a)
        or _is_store_path(a)
    )


def returns_lazy(a):
    """Whether predict-like methods give a lazy dask array back for input ``a``."""
    return is_streamed(a) and not isinstance(a, np.memmap)


def dataset_xy(X, y=None):
    """``(X, y)`` with a Dataset or store path ``X`` opened: its y unless ``y`` is given."""
    if _is_store_path(X):
        from pipeline._store import open as open_store

        X = open_store(X)
    if isinstance(X, Dataset):
        return X.X, X.y if y is None else y
    return X, y


def opened(a):
    """``a`` as an estimator takes it: a store path opened (its Dataset), a dask
    DataFrame as a dask array; anything else as given."""
    if _is_store_path(a):
        from pipeline._store import open as open_store

        return open_store(a)
    if _is_dask_frame(a):
        return a.to_dask_array(lengths=True)
    return a


def as_dask(a, name="X", rows=None):
    """The dask view of a streamed input (see the module table).

    Parameters
    ----------
    a : streamed input, or None
    name : str
        What ``a`` is (kept for messages of callers that check it).
    rows : int or tuple of int, optional
        Chunks along axis 0 for memmap input (default about 8 MB each).

    Returns
    -------
    dask.array.Array or None
        Named by content for memmaps (the same file and layout give the same
        graph keys), by the store's uid for stores.
    """
    if a is None:
        return None
    a, _ = dataset_xy(a)
    if isinstance(a, da.Array):
        out = a
    elif _package(a) == "zarr":
        out = da.from_zarr(a)
    elif _is_dask_frame(a):
        out = a.to_dask_array(lengths=True)
    else:
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            a = np.asarray(a)
        rows = rows or default_chunk_rows(a.shape[1:], a.dtype)
        chunks = (rows if isinstance(rows, tuple) else rows, *a.shape[1:])
        prefix = "memmap" if isinstance(a, np.memmap) else "array"
        out = lazy_view(a, chunks, name=f"{prefix}-{tokenize(a)}")
    return out
