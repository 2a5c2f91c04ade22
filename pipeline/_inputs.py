"""Normalise what ``pipeline.store.write`` accepts into blocks of whole chunks.

Arrays (numpy, memmap, dask, zarr, pandas) are sliced ``chunk_rows`` at a time;
iterables of ``(X_chunk, y_chunk)`` pairs are re-cut into exactly ``chunk_rows``
samples. Every piece is checked against the first (feature shape, y) and cast to
the first piece's dtypes, the store's, only where that changes no value.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

from pipeline._graph import BlockGraph

TARGET_CHUNK_BYTES = 8 * 2**20  # ~8 MB: per-chunk costs (zarr calls, tasks) stay small vs decoding
MAX_CHUNK_BYTES = 2**31 - 1  # a chunk is held whole in memory and compressed as one buffer


def is_array(obj):
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__")


def _check_dtype(dtype, name):
    if np.dtype(dtype).kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {np.dtype(dtype)}; stores hold numeric data only "
            "(encode strings/categories as numbers first)"
        )


def _is_frame(obj):
    """A pandas DataFrame or Series (without importing pandas)."""
    return _package(obj) == "pandas" and hasattr(obj, "to_numpy")


def _package(obj):
    return type(obj).__module__.split(".")[0]


def _frame_to_numpy(frame, name):
    """A DataFrame or Series as one numeric numpy array, naming any non-numeric column."""
    dtypes = frame.dtypes if hasattr(frame, "columns") else {frame.name: frame.dtype}
    bad = {str(c): str(t) for c, t in dict(dtypes).items() if getattr(t, "kind", "O") not in "biuf"}
    if bad:
        raise TypeError(
            f"{name} has non-numeric columns {bad}; stores hold numeric data only "
            "(encode strings/categories as numbers first)"
        )
    return frame.to_numpy()


def _refuse_unsupported(obj, name):
    """Masked and sparse arrays would silently lose their mask or structure."""
    if isinstance(obj, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array; its mask would be lost. Fill the masked values "
            f"first, e.g. {name}.filled(np.nan)"
        )
    if type(obj).__module__.startswith("scipy.sparse"):  # spmatrix and sparray
        raise TypeError(
            f"{name} is a scipy sparse matrix; stores hold dense arrays. Densify it chunk "
            f"by chunk, e.g. yield ({name}[i:j].toarray(), y[i:j]) pairs"
        )


def _to_numpy(obj, name):
    """A piece (array-like) as a numpy array, with clear errors for what cannot be one."""
    _refuse_unsupported(obj, name)
    if _is_frame(obj):
        return _frame_to_numpy(obj, name)
    array_like = is_array(obj) or hasattr(obj, "__array__")
    if not (array_like or isinstance(obj, (list, tuple, int, float, np.generic))):
        raise TypeError(f"{name} is a {type(obj).__name__}, not an array")
    try:
        return np.asarray(obj)
    except ValueError as exc:
        if "inhomogeneous" not in str(exc):
            raise
        raise ValueError(
            f"{name} is a ragged nested sequence: its rows have different lengths "
            f"({str(exc).split('The detected shape was ')[-1].rstrip('.')})"
        ) from None


def check_known_chunks(a, name):
    """A dask array's length must be known to slice and count it."""
    if isinstance(a, da.Array) and any(math.isnan(n) for n in a.shape):
        raise ValueError(
            f"{name} is a dask array with unknown chunk sizes (shape {a.shape}), as boolean "
            f"indexing leaves it; call {name}.compute_chunk_sizes() first"
        )


def _check_features(shape, name):
    """A store holds at least one feature (and one target) per sample."""
    if len(shape) > 1 and 0 in shape[1:]:
        what = "targets" if name.startswith("y") else "features"
        raise ValueError(f"{name} has no {what}: shape {tuple(shape)}")


def _row_bytes(a):
    return int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize


def _check_rows_type(rows):
    if rows is not None and (
        isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1
    ):
        raise ValueError(f"chunk_rows must be a positive integer, got {rows!r}")
    return rows


def check_chunk_rows(rows, x, y=None):
    """Refuse ``chunk_rows`` whose chunks (of ``x`` or ``y``) could not be held in memory.

    ``rows`` may be None (the default: about 8 MB, at least one sample); ``x``
    and ``y`` need only ``shape`` and ``dtype``.
    """
    _check_rows_type(rows)
    row_bytes = max(_row_bytes(a) for a in (x, y) if a is not None and a.ndim >= 1)
    if row_bytes > MAX_CHUNK_BYTES:
        raise ValueError(
            f"one sample takes {row_bytes:,} bytes (X's features of shape {tuple(x.shape[1:])}, "
            f"{np.dtype(x.dtype)}), more than a chunk may hold: {MAX_CHUNK_BYTES:,} bytes (2 GiB)"
        )
    if rows is None:
        return None
    if int(rows) * row_bytes > MAX_CHUNK_BYTES:
        raise ValueError(
            f"chunk_rows={int(rows):,} makes chunks of {int(rows) * row_bytes:,} bytes "
            f"({row_bytes:,} bytes per sample); a chunk is held whole in memory and may be at "
            f"most {MAX_CHUNK_BYTES:,} bytes (2 GiB): use chunk_rows <= "
            f"{MAX_CHUNK_BYTES // row_bytes:,}, or leave it unset for chunks of about 8 MB"
        )
    return int(rows)


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


def _split_item(item, i):
    """An item of a pairs iterable as ``(X_chunk, y_chunk or None)``."""
    where = f"chunk {i} of the input"
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(
                f"{where} is a tuple of {len(item)} items; expected an (X_chunk, y_chunk) pair"
            )
        x, yc = item
        return _to_numpy(x, f"X ({where})"), None if yc is None else _to_numpy(yc, f"y ({where})")
    if isinstance(item, list) and len(item) == 2 and all(is_array(v) for v in item):
        if item[0].shape[1:] != item[1].shape[1:]:  # not two rows of one X chunk
            raise TypeError(
                f"{where} is a list of two arrays of shapes {item[0].shape} and "
                f"{item[1].shape}; yield an (X_chunk, y_chunk) pair as a tuple"
            )
    if item is None or isinstance(item, (str, bytes, dict)):
        raise TypeError(
            f"{where} is a {type(item).__name__}; expected an array or an (X_chunk, y_chunk) pair"
        )
    return _to_numpy(item, f"X ({where})"), None


def _pair_pieces(pairs, rows):
    """Yield numpy ``(X, y)`` pieces from an iterable of pairs (or of X chunks)."""
    for i, item in enumerate(pairs):
        x, yc = _split_item(item, i)
        if i == 0 and x.ndim >= 1:
            check_chunk_rows(rows, x, yc)
        yield x, yc


def as_array(obj, name):
    if obj is None:
        return obj
    _refuse_unsupported(obj, name)
    if _is_frame(obj):
        return _frame_to_numpy(obj, name)
    if is_array(obj):
        return obj
    if isinstance(obj, (list, tuple)):
        return _to_numpy(obj, name)
    raise TypeError(
        f"{name} must be an array (numpy, memmap, dask or zarr), got {type(obj).__name__}"
    )


def _is_pairs(X, y):
    """True when X is an iterable of chunks rather than one array."""
    if is_array(X) or _is_frame(X) or isinstance(X, np.ma.MaskedArray):
        return False
    if isinstance(X, (list, tuple)):
        return y is None and len(X) > 0 and isinstance(X[0], tuple)
    return not type(X).__module__.startswith("scipy.sparse")


def input_pieces(X, y, rows_hint):
    """Normalise write()'s inputs into an iterator of numpy ``(X, y)`` pieces.

    Raises, before reading any data, for inputs that are not arrays or pairs,
    arrays that cannot be stored (0-d, non-numeric, empty, no features, dask
    arrays of unknown length, X and y of different lengths), and a ``rows_hint``
    (``chunk_rows``) whose chunks would exceed ``MAX_CHUNK_BYTES``.
    """
    if _is_pairs(X, y):
        if y is not None:
            raise TypeError("y must be None when X is an iterable of (X_chunk, y_chunk) pairs")
        if X is None or isinstance(X, (str, bytes, dict)) or not hasattr(X, "__iter__"):
            raise TypeError(
                f"X must be an array or an iterable of (X, y) pairs, got {type(X).__name__}"
            )
        _check_rows_type(rows_hint)  # the chunk size is checked at the first piece
        return _pair_pieces(X, rows_hint)
    X, y = as_array(X, "X"), as_array(y, "y")
    if X.ndim == 0:
        raise ValueError("X must have a sample axis; got a 0-d array")
    _check_dtype(X.dtype, "X")
    check_known_chunks(X, "X")
    if X.shape[0] == 0:
        raise ValueError(f"X is empty: shape {tuple(X.shape)}")
    _check_features(X.shape, "X")
    if y is not None:
        _check_dtype(y.dtype, "y")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D or 2-D, got shape {tuple(y.shape)}")
        check_known_chunks(y, "y")
        _check_features(y.shape, "y")
        if y.shape[0] != X.shape[0]:
            raise ValueError(
                f"X and y have different lengths: {X.shape[0]} and {y.shape[0]} samples"
            )
    rows = check_chunk_rows(rows_hint, X, y) or default_chunk_rows(X.shape[1:], X.dtype)
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


# ----------------------------------------------------------------------------- dtypes


def _value_change(a, dtype):
    """Why casting ``a`` to ``dtype`` would change a value (None if it changes none)."""
    src, dst = a.dtype, np.dtype(dtype)
    int_to_float = src.kind in "iu" and dst.kind == "f"  # numpy calls int64 -> float64 safe
    if a.size == 0 or (np.can_cast(src, dst, "safe") and not int_to_float):
        return None
    if dst.kind == "b":
        return "only bool goes into a bool dtype"
    if src.kind == "f" and dst.kind in "iu":
        return "floats never go into an integer dtype"
    if dst.kind in "iu":  # integers into narrower or other-signed integers
        lo, hi, info = int(a.min()), int(a.max()), np.iinfo(dst)
        out = lo if lo < info.min else hi if hi > info.max else None
        if out is not None:
            return f"{out} is outside {dst.name}'s range [{info.min}, {info.max}]"
        return None
    if int_to_float:  # exact up to 2**(nmant + 1); beyond that, each value is checked
        exact = 2 ** (np.finfo(dst).nmant + 1)
        if -exact <= int(a.min()) and int(a.max()) <= exact:
            return None
        for v in a[(a > exact) | (a < -exact)].tolist():
            with np.errstate(over="ignore"):
                f = float(np.asarray(v).astype(dst))
            if not math.isfinite(f) or int(f) != v:
                return f"{v} is not exactly representable in {dst.name}"
        return None
    with np.errstate(over="ignore"):  # floats into narrower floats: rounded, never overflowing
        overflow = np.isfinite(a) & ~np.isfinite(a.astype(dst))
    if overflow.any():
        return f"{a[overflow].flat[0].item()!r} overflows {dst.name} (max {np.finfo(dst).max})"
    return None


def cast_exactly(a, dtype, name):
    """``a`` cast to ``dtype`` if that changes no value, else a ValueError naming both dtypes.

    Accepted: any safe cast; integers into integers in range; integers into
    floats that represent them exactly; floats into narrower floats without
    overflow (rounded to the narrower precision, NaN and inf kept). Refused:
    floats into integers and anything but bool into bool.
    """
    if a.dtype == dtype:
        return a
    why = _value_change(a, dtype)
    if why is not None:
        wide = np.result_type(a.dtype, dtype)
        raise ValueError(
            f"{name} has dtype {a.dtype}, but the store's dtype, set by the first chunk, is "
            f"{np.dtype(dtype)}; casting would change values ({why}). Give every chunk one "
            f"dtype, e.g. cast them all to {wide}"
        )
    return a.astype(dtype)


class PieceChecker:
    """Check that every piece agrees with the first on feature shape and y; cast its dtypes.

    The first piece sets the store's dtypes; a later piece is cast to them only
    where that changes no value (see :func:`cast_exactly`), so what comes out,
    and what is collected from it (classes), is exactly what is stored.
    """

    def __init__(self):
        self.first = None
        self.index = -1

    def __call__(self, x, y):
        self.index += 1
        where = f"chunk {self.index} of the input"
        if x.ndim < 2:
            raise ValueError(
                f"{where}: X must be at least 2-D, (n_samples, *feature_shape); got shape "
                f"{x.shape}. Reshape it with X.reshape(-1, 1) for a single feature, or "
                "X.reshape(1, -1) for a single sample"
            )
        _check_dtype(x.dtype, f"X ({where})")
        if y is not None:
            _check_dtype(y.dtype, f"y ({where})")
            if y.ndim not in (1, 2):
                raise ValueError(f"{where}: y must be 1-D or 2-D, got shape {y.shape}")
            if len(y) != len(x):
                raise ValueError(f"{where}: X and y have different lengths: {len(x)} and {len(y)}")
        sig = (x.shape[1:], y is None, None if y is None else y.shape[1:])
        if self.first is None:
            _check_features(x.shape, f"X ({where})")
            if y is not None:
                _check_features(y.shape, f"y ({where})")
            self.first = sig
            self.x_dtype, self.y_dtype = x.dtype, None if y is None else y.dtype
            return x, y
        if sig != self.first:
            raise ValueError(
                f"{where} has X features {x.shape[1:]} and y "
                f"{'absent' if y is None else y.shape[1:]}, "
                f"but the first chunk had X features {self.first[0]} and y "
                f"{'absent' if self.first[1] else self.first[2]}"
            )
        x = cast_exactly(x, self.x_dtype, f"{where}: X")
        return x, None if y is None else cast_exactly(y, self.y_dtype, f"{where}: y")
