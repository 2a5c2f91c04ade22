"""Normalise what ``pipeline.store.write`` accepts into blocks of whole chunks.

Arrays (numpy, memmap, dask, zarr) are sliced ``chunk_rows`` at a time;
iterables of ``(X_chunk, y_chunk)`` pairs are re-cut into exactly ``chunk_rows``
samples. Every piece is checked against the first (dtype kind, feature shape, y).
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from pipeline._graph import BlockGraph

TARGET_CHUNK_BYTES = 8 * 2**20  # ~8 MB: per-chunk costs (zarr calls, tasks) stay small vs decoding


def is_array(obj):
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__")


def _check_dtype(dtype, name):
    if np.dtype(dtype).kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {np.dtype(dtype)}; stores hold numeric data only "
            "(encode strings/categories as numbers first)"
        )


class _Rows:
    """An array as dask reads it: blocks sliced on demand, never a copy of the whole.

    ``dask.array.from_array`` copies numpy inputs first (and so reads a memmap
    into RAM). A memmap is reopened from its file where it is unpickled, so a
    worker process reads its own blocks from disk.
    """

    def __init__(self, a):
        self.shape, self.dtype, self.ndim = tuple(a.shape), a.dtype, a.ndim
        self._file = None
        if isinstance(a, np.memmap) and a.filename is not None and a.base is not None:
            self._file = (a.filename, a.offset, "C" if a.flags.c_contiguous else "F")
        self._a = a

    def __getstate__(self):
        state = dict(vars(self))
        if self._file is not None:
            state["_a"] = None
        return state

    def __getitem__(self, key):
        if self._a is None:
            name, offset, order = self._file
            self._a = np.memmap(name, self.dtype, "r", offset, self.shape, order)
        return np.asarray(self._a[key])


def lazy_view(a, chunks, name=False):
    """A dask array over in-memory or memory-mapped ``a`` that never copies it whole."""
    if isinstance(a, da.Array):
        return a.rechunk(chunks)
    meta = np.empty((0,) * a.ndim, dtype=a.dtype)
    return da.from_array(_Rows(a), chunks=chunks, name=name, asarray=False, meta=meta)


def _array_pieces(X, y, rows):
    """Yield numpy ``(X, y)`` slices of ``rows`` samples from array-likes."""
    if isinstance(X, da.Array) or isinstance(y, da.Array):
        yield from _dask_pieces(X, y, rows)
        return
    n = X.shape[0]
    for start in range(0, n, rows):
        sl = slice(start, min(start + rows, n))
        yield np.asarray(X[sl]), None if y is None else np.asarray(y[sl])


def _dask_pieces(X, y, rows, per_call=4):
    """Compute dask inputs ``per_call`` chunks of ``rows`` at a time, in parallel."""
    arrays = [_rows_chunked(a, rows) for a in ((X,) if y is None else (X, y))]
    reader = BlockGraph(*arrays)
    for first in range(0, arrays[0].numblocks[0], per_call):
        blocks = range(first, min(first + per_call, arrays[0].numblocks[0]))
        parts = reader.read(blocks)
        for i in range(len(blocks)):
            yield parts[0][i], None if y is None else parts[1][i]


def _rows_chunked(a, rows):
    a = lazy_view(a, (rows, *a.shape[1:]))
    return a.rechunk({0: rows, **{i: -1 for i in range(1, a.ndim)}})


def _pair_pieces(pairs):
    """Yield numpy ``(X, y)`` pieces from an iterable of pairs (or of X chunks)."""
    for item in pairs:
        if isinstance(item, tuple) and len(item) == 2:
            x, yc = item
        else:
            x, yc = item, None
        if not is_array(x):
            x = np.asarray(x)
        yield np.asarray(x), None if yc is None else np.asarray(yc)


def _as_array(obj, name):
    if obj is None or is_array(obj):
        return obj
    if isinstance(obj, (list, tuple)):
        return np.asarray(obj)
    raise TypeError(
        f"{name} must be an array (numpy, memmap, dask or zarr), got {type(obj).__name__}"
    )


def _is_pairs(X, y):
    """True when X is an iterable of chunks rather than one array."""
    if is_array(X):
        return False
    if isinstance(X, (list, tuple)):
        return y is None and len(X) > 0 and isinstance(X[0], tuple)
    return True


def input_pieces(X, y, rows_hint):
    """Normalise write()'s inputs into an iterator of numpy ``(X, y)`` pieces."""
    if _is_pairs(X, y):
        if y is not None:
            raise TypeError("y must be None when X is an iterable of (X_chunk, y_chunk) pairs")
        if isinstance(X, (str, bytes, dict)):
            raise TypeError(
                f"X must be an array or an iterable of (X, y) pairs, got {type(X).__name__}"
            )
        return _pair_pieces(X)
    X, y = _as_array(X, "X"), _as_array(y, "y")
    if X.ndim == 0:
        raise ValueError("X must have a sample axis; got a 0-d array")
    _check_dtype(X.dtype, "X")
    if X.shape[0] == 0:
        raise ValueError(f"X is empty: shape {tuple(X.shape)}")
    if y is not None:
        _check_dtype(y.dtype, "y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D, got shape {tuple(y.shape)}")
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                f"X and y have different lengths: {X.shape[0]} and {y.shape[0]} samples"
            )
    rows = rows_hint or default_chunk_rows(X.shape[1:], X.dtype)
    return _array_pieces(X, y, rows)


def default_chunk_rows(feature_shape, dtype, target_bytes=TARGET_CHUNK_BYTES):
    """Rows per chunk so that one chunk of X holds about ``target_bytes``.

    Rounded down to a multiple of 64 rows when that many fit.
    """
    row_bytes = max(1, int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, target_bytes // row_bytes)
    return int(rows // 64 * 64) if rows >= 64 else int(rows)


def blocks_of(pieces, rows):
    """Re-cut a stream of ``(X, y)`` pieces into blocks of exactly ``rows`` samples.

    The last block may be shorter; ``y`` may be None throughout. Blocks are
    views where a piece holds a whole block. Holds at most one block plus one
    piece in memory.
    """
    xs, ys, held = [], [], 0
    for x, y in pieces:
        xs.append(x)
        ys.append(y)
        held += len(x)
        while held >= rows:
            yield _take(xs, rows), None if y is None else _take(ys, rows)
            held -= rows
    if held:
        yield _take(xs, held), None if ys[0] is None else _take(ys, held)


def _take(parts, n):
    """Remove and return the first ``n`` rows of a list of arrays (in place)."""
    out, got = [], 0
    while got < n:
        head, need = parts[0], n - got
        if len(head) <= need:
            out.append(parts.pop(0))
            got += len(head)
        else:
            out.append(head[:need])
            parts[0] = head[need:]
            got = n
    return out[0] if len(out) == 1 else np.concatenate(out)


class PieceChecker:
    """Check that every piece agrees with the first on dtype, feature shape and y."""

    def __init__(self):
        self.first = None
        self.index = -1

    def __call__(self, x, y):
        self.index += 1
        where = f"chunk {self.index} of the input"
        if x.ndim == 0:
            raise ValueError(f"{where}: X must have a sample axis; got a 0-d array")
        _check_dtype(x.dtype, f"X ({where})")
        if y is not None:
            _check_dtype(y.dtype, f"y ({where})")
            if y.ndim not in (1, 2):
                raise ValueError(f"{where}: y must be 1-D or 2-D, got shape {y.shape}")
            if len(y) != len(x):
                raise ValueError(f"{where}: X and y have different lengths: {len(x)} and {len(y)}")
        sig = (x.shape[1:], y is None, None if y is None else y.shape[1:])
        if self.first is None:
            self.first = sig
            self.x_dtype, self.y_dtype = x.dtype, None if y is None else y.dtype
        elif sig != self.first:
            raise ValueError(
                f"{where} has X features {x.shape[1:]} and y {'absent' if y is None else y.shape[1:]}, "
                f"but the first chunk had X features {self.first[0]} and y "
                f"{'absent' if self.first[1] else self.first[2]}"
            )
        return x, y
