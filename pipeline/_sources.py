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
from pipeline._store import default_chunk_rows

__all__ = ["CSVSource", "iter_array", "read_csv", "read_mnist", "read_npy"]

CATEGORICAL_MODES = ("onehot", "codes")
MAX_TARGET_LABELS = 100_000  # a string target with more distinct values is not a label


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
    n = X.shape[0]
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
    p = os.path.expanduser(os.fspath(pattern))
    files = [p] if os.path.isfile(p) else sorted(f for f in glob.glob(p) if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"no CSV file matches {os.fspath(pattern)!r}")
    return files


def _header(file):
    try:
        return list(pd.read_csv(file, nrows=0).columns)
    except pd.errors.EmptyDataError:
        raise ValueError(f"CSV file {file!r} is empty: it needs a header line") from None


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


def _where(file, row):
    """Where a data row is: ``row`` counts from 0 after the header line."""
    return f"CSV file {file!r}, line {row + 2} (data row {row + 1})"


class _TargetScan:
    """Learn, chunk by chunk, whether a target column is numeric, integral, or labels."""

    def __init__(self, name):
        self.name, self.numeric, self.integral, self.labels = name, True, True, set()

    def update(self, s, file):
        if s.isna().any():
            raise ValueError(f"{_where(file, s.index[s.isna()][0])}: target {self.name!r} is empty")
        num = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
        if self.numeric and np.isnan(num).any():
            if self.labels is None:
                raise ValueError(
                    f"target column {self.name!r} has more than {MAX_TARGET_LABELS} distinct "
                    f"numbers and a non-numeric value at {_where(file, s.index[np.isnan(num)][0])}"
                )
            self.numeric = False
        if self.numeric:
            whole = np.isfinite(num) & (num == np.round(num))
            self.integral = self.integral and bool(whole.all())
        if self.labels is not None:
            self.labels.update(s.unique().tolist())
            if self.numeric and len(self.labels) > MAX_TARGET_LABELS:
                self.labels = None  # regression-like: stop keeping its values


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
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"dtype must be a floating dtype (for NaN), got {self.dtype}")
        self.pattern, self.target, self.mode = os.fspath(pattern), target, categorical
        self.files = _expand(pattern)
        self.columns = _common_columns(self.files)
        self._check_target()
        cat_cols = self._categorical_columns(categorical_columns)
        self._scan(cat_cols)

    def _check_target(self):
        if self.target is not None and self.target not in self.columns:
            raise ValueError(
                f"target column {self.target!r} is not in {self.files[0]!r}; "
                f"available columns: {self.columns}"
            )

    def _categorical_columns(self, given):
        """The given categorical columns, else the non-numeric ones of the first chunk."""
        features = [c for c in self.columns if c != self.target]
        if given is None:
            sample = self._first_rows()
            return [c for c in features if not _is_numeric(sample[c].dtype)]
        given = [given] if isinstance(given, str) else list(given)
        unknown = [c for c in given if c not in features]
        if unknown:
            raise ValueError(
                f"categorical_columns {unknown} are not feature columns of {self.files[0]!r}; "
                f"feature columns: {features}"
            )
        return [c for c in features if c in given]

    def _first_rows(self):
        """The first ``chunk_rows`` rows of the first file that has any."""
        for file in self.files:
            sample = pd.read_csv(file, nrows=self.chunk_rows)
            if len(sample):
                break
        return sample

    def _scan(self, cat_cols):
        """First pass, over the categorical and target columns only."""
        seen = {c: set() for c in cat_cols}
        scan = None if self.target is None else _TargetScan(self.target)
        usecols = cat_cols + ([self.target] if scan else [])
        for file in self.files if usecols else []:
            for chunk in pd.read_csv(file, usecols=usecols, dtype=str, chunksize=self.chunk_rows):
                for c in cat_cols:
                    seen[c].update(chunk[c].dropna().unique().tolist())
                if scan:
                    scan.update(chunk[self.target], file)
        self.categories = {c: sorted(v) for c, v in seen.items()}
        self._target_scan = scan
        self.target_names = None if scan is None or scan.numeric else sorted(scan.labels)

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
            for chunk in pd.read_csv(file, dtype=dtypes, chunksize=self.chunk_rows):
                if len(chunk):
                    yield self._features(chunk, file), self._labels(chunk, file)

    def _features(self, chunk, file):
        X = np.zeros((len(chunk), self.n_features), dtype=self.dtype)
        j = 0
        for c in self.columns:
            if c == self.target:
                continue
            if c not in self.categories:
                X[:, j] = _numeric(chunk[c], file, c)
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
        Column holding y. Numbers stay numbers (int64 when all are integral, else
        float64); text is encoded as int64 codes of the sorted labels
        (``target_names``). An empty target cell is an error.
    categorical : {"onehot", "codes"}
        How categorical columns become features: one 0/1 column per category
        (all zero for a missing value), or one column of integer codes (NaN for a
        missing value).
    categorical_columns : list of str, optional
        The categorical feature columns. By default, those that pandas does not
        read as numeric in the first ``chunk_rows`` rows (of the first file that
        has rows). All other feature columns must be numeric; missing values
        become NaN.
    chunk_rows : int
        Rows read per chunk.
    dtype : floating dtype
        dtype of the X chunks.

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
        Unknown target or categorical column; files with different columns; text
        in a numeric column (when iterating; the message names file, line, column).

    Notes
    -----
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
