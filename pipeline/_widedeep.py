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
import scipy.sparse
from sklearn.utils._param_validation import Interval, StrOptions

from pipeline import nn
from pipeline._heads import TRAINING_DOC, ClassifierHead, RegressorHead, with_parameters
from pipeline._netio import as_streamed, is_streamed
from pipeline._networks import _LAYER_CONSTRAINTS, Network, _sizes

__all__ = ["WideDeepClassifier", "WideDeepRegressor"]


def _is_frame(X):
    return hasattr(X, "columns") and hasattr(X, "iloc")


def _column_values(col):
    """A column as comparable values: strings for text/object columns, else float64."""
    col = np.asarray(col)
    return col.astype(str) if col.dtype.kind in "OUS" else col.astype(np.float64)


def _categories(col):
    """Sorted distinct values of one column, NaN left out (it encodes as unknown)."""
    values = np.unique(_column_values(col))
    return values[~np.isnan(values)] if values.dtype.kind == "f" else values


def _codes(col, categories):
    """``1 + index`` of each value in ``categories``; 0 for values not among them."""
    col, categories = _column_values(col), np.asarray(categories)
    if len(categories) == 0:
        return np.zeros(len(col))
    idx = np.searchsorted(categories, col)
    hit = categories[np.minimum(idx, len(categories) - 1)] == col
    return np.where(hit, idx + 1, 0).astype(np.float64)


def _encode_block(X, positions, categories):
    """Categorical columns of one (numpy) block replaced by their codes."""
    out = np.array(X, dtype=object if X.dtype.kind in "OUS" else np.float64)
    for p, cats in zip(positions, categories, strict=True):
        out[:, p] = _codes(X[:, p], cats)
    return out


def _encode_frame(X, positions, categories):
    X = X.copy()
    for p, cats in zip(positions, categories, strict=True):
        X[X.columns[p]] = _codes(X.iloc[:, p], cats)
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
        n_features = X.shape[1] if X.ndim == 2 else 0
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
            return [np.unique(_column_values(c)) for c in self.categories]
        if isinstance(X, da.Array):
            return [_categories(u) for u in dask.compute(*[da.unique(X[:, p]) for p in positions])]
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
            return X.rechunk({1: -1}).map_blocks(_encode_block, positions, cats, dtype=np.float64)
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
