"""Wide & deep estimators on tables with categorical columns.

Categorical columns (named by position, or by name for pandas input) hold any
values: ``fit`` learns each column's categories (``categories_``), and every
input is encoded to integer codes (``0`` for a value not seen in training) before
the network, block by block for dask input. The network itself is
:class:`pipeline.nn.WideDeep`.
"""

from __future__ import annotations

import itertools
from numbers import Integral

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse
from sklearn.utils._param_validation import Interval, StrOptions

from pipeline import nn
from pipeline._adapter import as_dask as as_streamed
from pipeline._adapter import is_streamed
from pipeline._heads import TRAINING_DOC, ClassifierHead, RegressorHead, with_parameters
from pipeline._networks import _LAYER_CONSTRAINTS, Network, _sizes

__all__ = ["WideDeepClassifier", "WideDeepRegressor"]


def _is_frame(X):
    return hasattr(X, "columns") and hasattr(X, "iloc")


def _column_values(col):
    """A column as comparable values, and where it is missing.

    Text and object columns become strings, with None, NaN and pandas' NA missing;
    integer columns stay integers; others become float64, with NaN missing. Missing
    values encode as unknown.
    """
    col = np.asarray(col)
    if col.dtype.kind == "O":
        return col.astype(str), np.asarray(pd.isna(col), dtype=bool)
    if col.dtype.kind in "USbiu":
        return col.astype(str) if _is_text(col) else col, np.zeros(col.shape, dtype=bool)
    values = col.astype(np.float64)
    return values, np.isnan(values)


def _is_text(a):
    return a.dtype.kind in "OUS"


def _categories(col):
    """Sorted distinct values of one column, missing values left out."""
    values, missing = _column_values(col)
    return np.unique(values[~missing])


def _comparable(categories, values, where):
    """``categories`` in the kind of ``values``: numbers compare as text with a text
    column; text categories cannot describe a numeric column."""
    categories = np.asarray(categories)
    if len(categories) == 0 or _is_text(categories) == _is_text(values):
        return categories
    if _is_text(values):
        return np.unique(categories.astype(str))
    raise TypeError(
        f"{where} holds numbers ({values.dtype}), but its categories are text "
        f"({categories[:3].tolist()}...): pass the column's values as they are in "
        "categories=, or X with the same column types as in fit"
    )


def _codes(col, categories, where="the categorical column"):
    """``1 + index`` of each value in ``categories``; 0 for missing values and values
    not among them."""
    values, missing = _column_values(col)
    categories = _comparable(categories, values, where)
    if len(categories) == 0:
        return np.zeros(len(values))
    idx = np.searchsorted(categories, values)
    hit = (categories[np.minimum(idx, len(categories) - 1)] == values) & ~missing
    return np.where(hit, idx + 1, 0).astype(np.float64)


def _numbers(out, positions):
    """An object table as float64 (missing values as NaN), naming the columns that
    hold text where numbers are needed."""
    out = np.where(pd.isna(out), np.nan, out)
    try:
        return out.astype(np.float64)
    except (TypeError, ValueError) as e:
        dense = [j for j in range(out.shape[1]) if j not in positions]
        bad = [j for j in dense if not _is_numeric(out[:, j])]
        raise ValueError(
            f"X's column(s) {bad} hold values that are not numbers ({e}); name them in "
            "categorical=, or encode them as numbers"
        ) from e


def _is_numeric(col):
    try:
        col.astype(np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _encode_block(X, positions, categories):
    """One (numpy) block as float64, its categorical columns replaced by their codes."""
    X = np.asarray(X)
    text = _is_text(X)
    out = np.array(X, dtype=object if text else np.float64)
    for p, cats in zip(positions, categories, strict=True):
        out[:, p] = _codes(X[:, p], cats, f"categorical column {p}")
    return _numbers(out, positions) if text else out


def _block_categories(X, positions):
    """Each categorical column's distinct values in one block."""
    return [_categories(X[:, p]) for p in positions]


def _streamed_categories(X, positions):
    """Each categorical column's categories, in one pass over the blocks of dask ``X``."""
    blocks = X.rechunk({1: -1}).to_delayed().ravel()
    found = dask.compute(*[dask.delayed(_block_categories)(b, positions) for b in blocks])
    return [np.unique(np.concatenate([f[i] for f in found])) for i in range(len(positions))]


def _encode_frame(X, positions, categories):
    X = X.copy()
    for p, cats in zip(positions, categories, strict=True):
        X[X.columns[p]] = _codes(X.iloc[:, p], cats, f"categorical column {X.columns[p]!r}")
    return X


class _WideDeep(Network):
    _parameter_constraints = {
        **Network._parameter_constraints,
        **_LAYER_CONSTRAINTS,
        "categorical": [None, "array-like"],
        "crosses": [None, StrOptions({"pairs"}), "array-like"],
        "categories": [StrOptions({"auto"}), list],
        "embedding_dim": [Interval(Integral, 1, None, closed="left")],
        "hash_buckets": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    }

    # ------------------------------------------------------------ categories

    def _position(self, ref, X, n_features):
        if isinstance(ref, str):
            if not _is_frame(X):
                raise ValueError(
                    f"column {ref!r} is named, which needs a pandas DataFrame; X is a "
                    f"{type(X).__name__}: name columns by position instead"
                )
            if ref not in list(X.columns):
                raise ValueError(f"column {ref!r} is not in X's columns {list(X.columns)}")
            return list(X.columns).index(ref)
        if not isinstance(ref, Integral) or not 0 <= ref < n_features:
            raise ValueError(f"column {ref!r} is not a column of X (it has {n_features})")
        return int(ref)

    def _resolve_columns(self, X):
        """(positions of the categorical columns, crosses as indices among them)."""
        if X.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} takes a table X of shape (n_samples, n_features); "
                f"got X of shape {X.shape}"
            )
        n_features = X.shape[1]
        positions = tuple(self._position(c, X, n_features) for c in (self.categorical or ()))
        if len(set(positions)) != len(positions):
            raise ValueError(f"categorical names a column twice: {self.categorical!r}")
        if self.crosses is None:
            crosses = ()
        elif isinstance(self.crosses, str):  # "pairs"
            crosses = tuple(itertools.combinations(range(len(positions)), 2))
        else:
            crosses = tuple(self._cross(c, X, n_features, positions) for c in self.crosses)
        return positions, crosses

    def _cross(self, cross, X, n_features, positions):
        indices = []
        for ref in cross:
            p = self._position(ref, X, n_features)
            if p not in positions:
                raise ValueError(f"crosses names column {ref!r}, which is not categorical")
            indices.append(positions.index(p))
        if len(indices) < 2:
            raise ValueError(f"a cross needs at least two columns, got {cross!r}")
        return tuple(indices)

    def _learn_categories(self, X, positions):
        if self.categories != "auto":
            if len(self.categories) != len(positions):
                raise ValueError(
                    f"categories has {len(self.categories)} lists for {len(positions)} "
                    "categorical columns"
                )
            return [_categories(c) for c in self.categories]
        if isinstance(X, da.Array):
            return _streamed_categories(X, positions)
        cols = [X.iloc[:, p] if _is_frame(X) else X[:, p] for p in positions]
        return [_categories(c) for c in cols]

    def _prepare_X(self, X, reset):
        """Categorical columns as codes; a DataFrame keeps its column names."""
        if scipy.sparse.issparse(X):
            raise TypeError(
                f"{type(self).__name__} does not accept sparse data: dense data is required "
                "(X.toarray(), or a dask array of dense blocks)"
            )
        if is_streamed(X):
            X = as_streamed(X)
        elif not _is_frame(X):
            X = np.asarray(X)
        if reset:
            self.categorical_columns_, self.crosses_ = self._resolve_columns(X)
            self.categories_ = self._learn_categories(X, self.categorical_columns_)
        positions, cats = self.categorical_columns_, self.categories_
        if not positions or X.ndim != 2:
            return X
        if isinstance(X, da.Array):
            return X.rechunk({1: -1}).map_blocks(
                _encode_block, positions, cats, dtype=np.float64, meta=np.empty((0, 0))
            )
        return (
            _encode_frame(X, positions, cats) if _is_frame(X) else _encode_block(X, positions, cats)
        )

    def _model(self, feature_shape, n_outputs):
        return nn.WideDeep, dict(
            n_features=int(feature_shape[0]),
            categorical=tuple(int(p) for p in self.categorical_columns_),
            cardinalities=tuple(len(c) + 1 for c in self.categories_),
            crosses=tuple(tuple(int(i) for i in c) for c in self.crosses_),
            hash_buckets=int(self.hash_buckets),
            embedding_dim=int(self.embedding_dim),
            hidden=_sizes(self.hidden_layer_sizes, "hidden_layer_sizes"),
            n_outputs=int(n_outputs),
            activation=self.activation,
            dropout=float(self.dropout),
            batch_norm=bool(self.batch_norm),
        )


_WIDE_DEEP_DOC = (
    """
    Parameters
    ----------
    categorical : sequence of int or str, optional
        The categorical columns, by position, or by name for a pandas DataFrame.
        They may hold any values (numbers, strings); the other columns are dense
        numbers (scale them as for any network).
    crosses : 'pairs', None or sequence of column tuples, default='pairs'
        Crossed categorical columns of the wide part: every pair, none, or the
        tuples given (by position or name).
    categories : 'auto' or list of array-like, default='auto'
        The values of each categorical column; 'auto' learns them in ``fit`` (a
        pass over streamed data). Others, and missing values, share the unknown code.
    embedding_dim : int, default=8
        Size of each categorical column's embedding in the deep part.
    hash_buckets : int, default=10000
        Most weights of one cross; larger crosses share them by hashing.
    hidden_layer_sizes : sequence of int, default=(64, 32)
        Hidden units of the deep part.
"""
    + """    activation, dropout, batch_norm
        As the MLP's, for the deep part.
"""
    + TRAINING_DOC
)

_WIDE_DEEP_DEFAULTS = dict(
    categorical=None,
    crosses="pairs",
    categories="auto",
    embedding_dim=8,
    hash_buckets=10000,
    hidden_layer_sizes=(64, 32),
    activation="relu",
    dropout=0.0,
    batch_norm=False,
)

_WIDE_DEEP_ATTRIBUTES = """
    categorical_columns_ : tuple of int
        Positions of the categorical columns.
    categories_ : list of ndarray
        The known values of each categorical column (code ``i + 1`` for the i-th).
    crosses_ : tuple of tuple of int
        The crosses, as indices into ``categorical_columns_``.
    module_ : pipeline.nn.WideDeep
        The trained network.
"""


@with_parameters("categorical", **_WIDE_DEEP_DEFAULTS)
class WideDeepClassifier(ClassifierHead, _WideDeep):
    __doc__ = (
        """Wide & deep classifier (Cheng et al., 2016) for tables with categorical columns.

    A linear model on the dense columns, the one-hot categorical columns and their
    crosses (memorisation), summed with an MLP on the dense columns and embeddings
    of the categorical ones (generalisation); softmax (logistic) log-loss.
    numpy, pandas, dask, zarr and stores, streamed as every network here.
"""
        + _WIDE_DEEP_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
"""
        + _WIDE_DEEP_ATTRIBUTES
    )


@with_parameters("categorical", **_WIDE_DEEP_DEFAULTS)
class WideDeepRegressor(RegressorHead, _WideDeep):
    __doc__ = (
        """Wide & deep regressor (squared error) for tables with categorical columns.

    As :class:`WideDeepClassifier`, with a linear output.
"""
        + _WIDE_DEEP_DOC
        + """
    Attributes
    ----------
"""
        + _WIDE_DEEP_ATTRIBUTES
    )
