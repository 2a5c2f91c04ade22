"""Readers that yield ``(X_chunk, y_chunk)`` numpy pairs, for :func:`pipeline.store.write`.

Every reader validates its input when called and returns a re-iterable object:
each iteration reads the source again from the start, one chunk at a time, so a
file larger than memory streams straight into a store::

    src = read_csv("data/*.csv", target="label")
    ds = pipeline.store.write("data.zarr", src, attrs=src.attrs())
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline._datasets import locate_mnist, read_located_mnist
from pipeline._inputs import as_array, check_known_chunks
from pipeline._store import default_chunk_rows

__all__ = ["CSVSource", "iter_array", "read_csv", "read_mnist", "read_npy"]

CATEGORICAL_MODES = ("onehot", "codes")
EXACT_INTEGERS = 2**53  # integral float64 values up to this are exact int64 targets


def _check_rows(chunk_rows):
    if (
        isinstance(chunk_rows, bool)
        or not isinstance(chunk_rows, (int, np.integer))
        or (chunk_rows < 1)
    ):
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    return int(chunk_rows)


# ----------------------------------------------------------------------------- arrays


def iter_array(X, y=None, *, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield row slices of ``X`` (and ``y``) as numpy arrays.

    Parameters
    ----------
    X : array-like of shape (n_samples, *feature_shape)
        Anything sliceable along axis 0: numpy, ``np.memmap``, zarr, dask.
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
    chunk_rows : int
        Rows per chunk; the last chunk may be shorter.

    Yields
    ------
    X_chunk : ndarray of shape (chunk_rows, *feature_shape)
    y_chunk : ndarray of shape (chunk_rows, ...) or None
    """
    rows = _check_rows(chunk_rows)
    X, y = as_array(X, "X"), as_array(y, "y")
    if X is None:
        raise TypeError("X must be an array, got None")
    if X.ndim == 0:
        raise ValueError("X must have a sample axis; got a 0-d array")
    check_known_chunks(X, "X")
    check_known_chunks(y, "y")
    n = X.shape[0]
    if y is not None and y.ndim == 0:
        raise ValueError("y must have a sample axis; got a 0-d array")
    if y is not None and y.shape[0] != n:
        raise ValueError(f"X and y have different lengths: {n} and {y.shape[0]} samples")
    return _slices(X, y, n, rows)


def _slices(X, y, n, rows):
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        yield np.asarray(X[start:stop]), None if y is None else np.asarray(y[start:stop])


class _ArrayChunks:
    """Re-iterable row chunks of an ``(X, y)`` pair, with the source for ``attrs``."""

    def __init__(self, X, y, chunk_rows, attrs):
        self.X, self.y, self.chunk_rows, self._attrs = X, y, chunk_rows, attrs

    def __iter__(self):
        return iter_array(self.X, self.y, chunk_rows=self.chunk_rows)

    def __len__(self):
        """The number of chunks (not of samples)."""
        return math.ceil(self.X.shape[0] / self.chunk_rows)

    def attrs(self) -> dict:
        """JSON-able metadata for ``pipeline.store.write(attrs=...)``."""
        return dict(self._attrs)


def _load_npy(path, what):
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} file {str(path)!r} is not a readable .npy array: {exc}") from None
    if arr.ndim == 0:
        raise ValueError(f"{what} file {str(path)!r} holds a 0-d array; it needs a sample axis")
    return arr


def read_npy(path, y_path=None, *, chunk_rows: int | None = None) -> _ArrayChunks:
    """Read ``.npy`` files memory-mapped, in chunks of rows.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file of shape (n_samples, *feature_shape).
    y_path : str or os.PathLike, optional
        A ``.npy`` file of shape (n_samples,) or (n_samples, n_targets).
    chunk_rows : int, optional
        Rows per chunk; by default about 8 MB of X per chunk.

    Returns
    -------
    iterable of (X_chunk, y_chunk)
        Re-iterable; ``y_chunk`` is None without ``y_path``. ``.attrs()`` gives
        ``{"source": path}``.
    """
    X = _load_npy(path, "X")
    y = None if y_path is None else _load_npy(y_path, "y")
    if y is not None and (y.ndim > 2 or y.shape[0] != X.shape[0]):
        raise ValueError(
            f"y file {str(y_path)!r} has shape {y.shape}, but X file {str(path)!r} has shape "
            f"{X.shape}: y must be (n_samples,) or (n_samples, n_targets) with the same n_samples"
        )
    rows = default_chunk_rows(X.shape[1:], X.dtype) if chunk_rows is None else chunk_rows
    return _ArrayChunks(X, y, _check_rows(rows), {"source": os.fspath(path)})


def read_mnist(source=None, split: str = "train", *, chunk_rows: int | None = None) -> _ArrayChunks:
    """Chunks of :func:`pipeline.datasets.load_mnist` (MNIST fits in memory).

    Parameters
    ----------
    source, split
        As for :func:`pipeline.datasets.load_mnist`.
    chunk_rows : int, optional
        Rows per chunk; by default about 8 MB of X per chunk.

    Returns
    -------
    iterable of (X_chunk of shape (chunk_rows, 784) float32, y_chunk of shape (chunk_rows,) int64)
        ``.attrs()`` records the file read and the split.
    """
    found = locate_mnist(source, split)
    X, y = read_located_mnist(found, split)
    rows = default_chunk_rows(X.shape[1:], X.dtype) if chunk_rows is None else chunk_rows
    attrs = {"dataset": "mnist", "split": split, "source": str(found[1])}
    return _ArrayChunks(X, y, _check_rows(rows), attrs)


# ----------------------------------------------------------------------------- CSV files


def _expand(pattern):
    """The sorted files a path or glob names."""
    if not isinstance(pattern, (str, os.PathLike)):
        raise TypeError(f"pattern must be a path or glob (str or os.PathLike), got {pattern!r}")
    p = os.path.expanduser(os.fspath(pattern))
    files = [p] if os.path.isfile(p) else sorted(f for f in glob.glob(p) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"no CSV file matches {os.fspath(pattern)!r}")
    return files


_MALFORMED = (pd.errors.ParserError, UnicodeDecodeError)


def _malformed(file, exc):
    return ValueError(f"CSV file {file!r} is not valid CSV: {str(exc).strip()}")


def _read(file, **kwargs):
    """``pd.read_csv`` whose errors name the file."""
    try:
        return pd.read_csv(file, **kwargs)
    except pd.errors.EmptyDataError:
        raise ValueError(f"CSV file {file!r} is empty: it needs a header line") from None
    except _MALFORMED as exc:
        raise _malformed(file, exc) from None


def _chunks(file, chunk_rows, **kwargs):
    """The chunks of ``file``, a malformed line raising a ValueError that names the file."""
    with _read(file, chunksize=chunk_rows, **kwargs) as reader:
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                return
            except _MALFORMED as exc:
                raise _malformed(file, exc) from None
            yield chunk


def _header(file):
    return list(_read(file, nrows=0).columns)


def _common_columns(files):
    """The header of the first file; every other file must have the same columns."""
    columns = _header(files[0])
    for f in files[1:]:
        other = _header(f)
        if set(other) != set(columns):
            missing = [c for c in columns if c not in other]
            extra = [c for c in other if c not in columns]
            raise ValueError(
                f"CSV file {f!r} has different columns from {files[0]!r}: "
                f"missing {missing}, extra {extra}"
            )
    return columns


def _is_numeric(dtype):
    return pd.api.types.is_numeric_dtype(dtype)


def _text(s):
    """Where a column's values are present and are not numbers (a boolean ndarray)."""
    if _is_numeric(s.dtype):
        return np.zeros(len(s), dtype=bool)
    return (pd.to_numeric(s, errors="coerce").isna() & s.notna()).to_numpy()


def _is_text_column(s, file, column):
    """Whether a column's first chunk ``s`` is text (categorical) rather than numbers.

    Text when more than half of its present values are not numbers; numbers when
    all are (or none is present). Anything between is most likely a typo in a
    numeric column: a ValueError names the first value that is not a number.
    """
    text = _text(s)
    n_text, n_present = int(text.sum()), int(s.notna().sum())
    if n_text * 2 > n_present:
        return True
    if n_text:
        row = s.index[text][0]
        raise ValueError(
            f"{_where(file, row)}, column {column!r}: {s[row]!r} is not a number, but "
            f"{n_present - n_text} of the {n_present} values in the first {len(s)} rows are "
            "(a typo?). Fix the value, or name the column in categorical_columns to read "
            "it as categories"
        )
    return False


def _where(file, row):
    """Where a data row is: ``row`` counts from 0 after the header line."""
    return f"CSV file {file!r}, line {row + 2} (data row {row + 1})"


class _TargetScan:
    """Learn, chunk by chunk, a target column's labels, or whether its numbers are integral.

    ``numeric`` is given (False: the target is declared categorical) or decided by
    the first chunk with rows, as for a feature column (:func:`_is_text_column`).
    """

    def __init__(self, name, numeric=None):
        self.name, self.numeric, self.integral, self.labels = name, numeric, True, set()

    def update(self, s, file):
        if s.isna().any():
            raise ValueError(f"{_where(file, s.index[s.isna()][0])}: target {self.name!r} is empty")
        if self.numeric is None and len(s):
            self.numeric = not _is_text_column(s, file, self.name)
        if self.numeric:
            num = _numeric(s, file, self.name)
            whole = np.isfinite(num) & (num == np.round(num)) & (np.abs(num) <= EXACT_INTEGERS)
            self.integral = self.integral and bool(whole.all())
        else:
            self.labels.update(s.unique().tolist())


class CSVSource:
    """CSV files read in chunks of rows, encoded as numeric ``(X, y)`` pairs; see :func:`read_csv`.

    Attributes: ``files`` (sorted paths), ``feature_names``, ``n_features``,
    ``categories`` (column -> sorted categories), ``target_names`` (labels of a
    text target in code order, else None).
    """

    def __init__(
        self,
        pattern,
        *,
        target=None,
        categorical="onehot",
        categorical_columns=None,
        chunk_rows=10_000,
        dtype="float32",
    ):
        if categorical not in CATEGORICAL_MODES:
            raise ValueError(f"categorical must be one of {CATEGORICAL_MODES}, got {categorical!r}")
        self.chunk_rows = _check_rows(chunk_rows)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype (for NaN), got {self.dtype or dtype}")
        self.files = _expand(pattern)
        self.pattern, self.target, self.mode = os.fspath(pattern), target, categorical
        self.columns = _common_columns(self.files)
        self._check_target()
        if not [c for c in self.columns if c != self.target]:
            raise ValueError(f"CSV file {self.files[0]!r} has no feature columns: {self.columns}")
        cat_cols, target_numeric = self._column_kinds(categorical_columns)
        self._scan(cat_cols, target_numeric)

    def _check_target(self):
        if self.target is not None and self.target not in self.columns:
            raise ValueError(
                f"target column {self.target!r} is not in {self.files[0]!r}; "
                f"available columns: {self.columns}"
            )

    def _column_kinds(self, given):
        """The categorical feature columns, and whether the target is numeric (None: unknown).

        Declared ones if ``given``; else the feature columns whose first chunk is
        text (see :func:`_is_text_column`), and the target is decided by the scan.
        """
        features = [c for c in self.columns if c != self.target]
        if given is None:
            file, sample = self._first_rows()
            return [c for c in features if _is_text_column(sample[c], file, c)], None
        given = [given] if isinstance(given, str) else list(given)
        unknown = [c for c in given if c not in self.columns or c is None]
        if unknown:
            raise ValueError(
                f"categorical_columns {unknown} are not columns of {self.files[0]!r}; "
                f"columns: {self.columns}"
            )
        target_numeric = None if self.target is None else self.target not in given
        return [c for c in features if c in given], target_numeric

    def _first_rows(self):
        """The first file that has rows, and its first ``chunk_rows`` rows."""
        for file in self.files:
            sample = _read(file, nrows=self.chunk_rows)
            if len(sample):
                break
        return file, sample

    def _scan(self, cat_cols, target_numeric):
        """First pass, over the categorical and target columns only."""
        seen = {c: set() for c in cat_cols}
        scan = None if self.target is None else _TargetScan(self.target, target_numeric)
        usecols = cat_cols + ([self.target] if scan else [])
        for file in self.files if usecols else []:
            for chunk in _chunks(file, self.chunk_rows, usecols=usecols, dtype=str):
                for c in cat_cols:
                    seen[c].update(chunk[c].dropna().unique().tolist())
                if scan:
                    scan.update(chunk[self.target], file)
        self.categories = {c: sorted(v) for c, v in seen.items()}
        self._target_scan = scan
        labels = scan is not None and scan.numeric is False
        self.target_names = sorted(scan.labels) if labels else None

    @property
    def feature_names(self) -> list[str]:
        names = []
        for c in self.columns:
            if c in self.categories and self.mode == "onehot":
                names.extend(f"{c}={v}" for v in self.categories[c])
            elif c != self.target:
                names.append(c)
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def attrs(self) -> dict:
        """JSON-able metadata for ``pipeline.store.write(attrs=...)``."""
        return {
            "feature_names": self.feature_names,
            "target_names": self.target_names,
            "source": self.pattern,
        }

    def __repr__(self):
        return (
            f"CSVSource({self.pattern!r}, files={len(self.files)}, target={self.target!r}, "
            f"n_features={self.n_features}, categorical={self.mode!r})"
        )

    def __iter__(self):
        str_cols = list(self.categories) + ([self.target] if self.target_names is not None else [])
        dtypes = {c: str for c in str_cols}
        for file in self.files:
            for chunk in _chunks(file, self.chunk_rows, dtype=dtypes):
                if len(chunk):
                    yield self._features(chunk, file), self._labels(chunk, file)

    def _features(self, chunk, file):
        X = np.zeros((len(chunk), self.n_features), dtype=self.dtype)
        j = 0
        for c in self.columns:
            if c == self.target:
                continue
            if c not in self.categories:
                X[:, j] = _fits(_numeric(chunk[c], file, c), self.dtype, chunk[c], file, c)
                j += 1
                continue
            codes = _codes(chunk[c], self.categories[c], file, c)
            if self.mode == "codes":
                X[:, j] = np.where(codes >= 0, codes, np.nan)
                j += 1
            else:
                rows = np.flatnonzero(codes >= 0)
                X[rows, j + codes[rows]] = 1
                j += len(self.categories[c])
        return X

    def _labels(self, chunk, file):
        if self.target is None:
            return None
        s = chunk[self.target]
        if self.target_names is not None:
            return _codes(s, self.target_names, file, self.target).astype(np.int64)
        num = _numeric(s, file, self.target)
        return num.astype(np.int64) if self._target_scan.integral else num


def _numeric(s, file, column):
    """A column as float64; NaN passes through, text raises naming where it is."""
    if _is_numeric(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() & s.notna()
    if bad.any():
        row = s.index[bad.to_numpy()][0]
        raise ValueError(
            f"{_where(file, row)}, column {column!r}: {s[row]!r} is not a number "
            "(if the column is categorical, name it in categorical_columns)"
        )
    return num.to_numpy(dtype=np.float64, na_value=np.nan)


def _fits(num, dtype, s, file, column):
    """``num`` unchanged if ``dtype`` holds its values without overflowing, else a ValueError."""
    with np.errstate(over="ignore"):
        overflow = np.isfinite(num) & ~np.isfinite(num.astype(dtype))
    if overflow.any():
        row = s.index[overflow][0]
        raise ValueError(
            f"{_where(file, row)}, column {column!r}: {str(s[row])!r} overflows {dtype} (max "
            f"{np.finfo(dtype).max}); pass a wider dtype, e.g. dtype='float64'"
        )
    return num


def _codes(s, categories, file, column):
    """Integer codes of a text column in ``categories`` order; -1 for a missing value."""
    codes = pd.Index(categories).get_indexer(s)
    unseen = (codes < 0) & s.notna().to_numpy()
    if unseen.any():
        row = s.index[unseen][0]
        raise ValueError(
            f"{_where(file, row)}, column {column!r}: {s[row]!r} was not seen in the first "
            "pass over the files (did a file change while it was being read?)"
        )
    return codes


def read_csv(
    pattern,
    *,
    target: str | None = None,
    categorical: str = "onehot",
    categorical_columns=None,
    chunk_rows: int = 10_000,
    dtype="float32",
) -> CSVSource:
    """Read CSV files in chunks of rows, encoded as numeric ``(X, y)`` pairs.

    Parameters
    ----------
    pattern : str or os.PathLike
        A CSV file, or a glob such as ``"data/part-*.csv"`` (files read in sorted
        order). All files must have the same columns (in any order).
    target : str, optional
        Column holding y. A numeric target (see "Column types") stays numbers:
        int64 when all are integral (and at most 2**53), else float64. A
        categorical target is encoded as int64 codes of its sorted labels
        (``target_names``). An empty target cell is an error.
    categorical : {"onehot", "codes"}
        How categorical columns become features: one 0/1 column per category
        (all zero for a missing value), or one column of integer codes (NaN for a
        missing value).
    categorical_columns : str or list of str, optional
        The categorical columns; every other column is numeric. May name the
        target, to read it as labels even when they look like numbers. By
        default, inferred (see "Column types").
    chunk_rows : int
        Rows read per chunk.
    dtype : floating dtype
        dtype of the X chunks; a number it cannot hold (it would become inf) is
        an error naming file, line and column.

    Returns
    -------
    CSVSource
        Re-iterable pairs (X_chunk of shape (chunk_rows, n_features), y_chunk of shape
        (chunk_rows,) or None), with ``feature_names``, ``target_names``,
        ``n_features`` and ``attrs()``.

    Raises
    ------
    FileNotFoundError
        No file matches ``pattern``.
    ValueError
        Unknown target or categorical column; no feature column; files with
        different columns or malformed lines; a numeric column with text in it
        (a typo, most likely: the message names file, line, column and value).

    Notes
    -----
    Column types. Unless ``categorical_columns`` is given, each column's type is
    decided from its values in the first ``chunk_rows`` rows (of the first file
    that has rows), missing values (empty, "NA", "nan", ...) not counted:

    - all numbers (or no value at all): numeric;
    - more than half not numbers: categorical;
    - mostly numbers but some not: refused with a ValueError naming the first
      value that is not a number, where it is, and the two ways out (fix the
      value, or name the column in ``categorical_columns``). A typo such as
      "2.x" in a numeric column never one-hot encodes the column.

    A numeric column with text in a later row is refused the same way, when it
    is read (while iterating; for the target, in the first pass). pandas' own
    ``read_csv`` would read such a column as text instead.

    Categories must agree across chunks and files, so the reader first makes one
    cheap pass over only the categorical and target columns to collect them.
    """
    return CSVSource(
        pattern,
        target=target,
        categorical=categorical,
        categorical_columns=categorical_columns,
        chunk_rows=chunk_rows,
        dtype=dtype,
    )
