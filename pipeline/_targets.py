"""Targets: label encoding, target tables for streaming, and streamed scores.

Training streams carry one target table (in the compute dtype) ``Y`` of shape
``(n_samples, n_targets + 1)``: the encoded targets and, last, the sample
weight. Encoding runs per block (numpy or ``dask.array.map_blocks``), so
labels of a store are never gathered in one place.

Target kinds: ``"multiclass"`` (one column: the class index), ``"binary"`` (one
0/1 column), ``"multilabel"`` (one 0/1 column per label), ``"continuous"``
(one column per output), ``"reconstruction"`` (no column: an autoencoder's target is
its input).

Streamed scores are a reduction in dask's shape (``dask/array/reductions.py``):
:func:`score_chunk` per chunk, :func:`score_combine` over chunks in any grouping and
order, :func:`score_aggregate` once. R² merges per-chunk weighted means and centred
sums of squares with Chan, Golub and LeVeque's update, never ``sum(y**2) - sum(y)**2/W``,
which cancels for targets far from 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.base import tokenize
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from pipeline._inputs import lazy_view

__all__ = [
    "classes_of",
    "encode",
    "score_aggregate",
    "score_chunk",
    "score_combine",
    "target_table",
]


def _is_lazy(a):
    return isinstance(a, da.Array)


def classes_of(y, known=None):
    """``(kind, classes)`` of classification targets ``y`` (numpy or dask).

    ``known``: classes already recorded for the data (a store's schema), used
    instead of a pass over ``y``.
    """
    if y.ndim == 2 and y.shape[1] > 1:
        if _is_lazy(y):
            return "multilabel", np.arange(y.shape[1])
        check_classification_targets(y)
        if type_of_target(y) != "multilabel-indicator":
            raise ValueError(f"Unknown label type: {type_of_target(y)!r} for 2-D y")
        return "multilabel", np.arange(y.shape[1])
    if known is not None:
        classes = np.asarray(known)
    elif _is_lazy(y):
        classes = da.unique(y.ravel()).compute()
    else:
        check_classification_targets(y)
        classes = np.unique(y)
    check_classification_targets(classes)
    if len(classes) == 0:
        raise ValueError("Classifier can't train when no class is present: y is empty.")
    # one class is a binary target that is always 0, as scikit-learn's LabelBinarizer
    return ("binary" if len(classes) <= 2 else "multiclass"), classes


def encode(y, kind, classes, dtype=np.float32):
    """Encode one block of targets: ``dtype`` of shape (n, n_targets)."""
    if kind == "reconstruction":
        return np.zeros((len(y), 0), dtype)
    if kind == "continuous":
        y = np.asarray(y, dtype=dtype)
        if y.size and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        return y.reshape(len(y), -1)
    if kind == "multilabel":
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != len(classes) or not np.isin(y, (0, 1)).all():
            raise ValueError(
                f"multilabel y must be a 0/1 indicator matrix with {len(classes)} "
                f"columns, got shape {y.shape}"
            )
        return y.astype(dtype)
    y = np.asarray(y).reshape(-1)
    idx = np.searchsorted(classes, y)
    idx_in = np.minimum(idx, len(classes) - 1)
    unseen = classes[idx_in] != y
    if unseen.any():
        raise ValueError(
            f"`y` has classes not in `self.classes_`. `self.classes_` has {classes}. "
            f"'y' has {np.unique(y[unseen])} that are not among them."
        )
    return idx_in.astype(dtype).reshape(-1, 1)


def _table_block(y, w, kind, classes, dtype=np.float32):
    Y = encode(y, kind, classes, dtype)
    w = np.ones(len(Y), dtype) if w is None else np.asarray(w, dtype).reshape(-1)
    if len(w) != len(Y):
        raise ValueError(f"sample_weight has {len(w)} entries for {len(Y)} samples")
    return np.concatenate([Y, w[:, None]], axis=1)


def target_table(y, sample_weight, kind, classes=None, dtype=np.float32):
    """``Y`` of shape (n, n_targets + 1), encoded targets then weights; lazy for dask y.

    ``dtype``: the compute dtype (float64 keeps regression targets exact).
    """
    if not _is_lazy(y):
        return _table_block(y, sample_weight, kind, classes, dtype)
    y = (y[:, None] if y.ndim == 1 else y).rechunk({1: -1})
    width = {"binary": 1, "multiclass": 1, "reconstruction": 0}.get(kind, y.shape[1]) + 1
    if sample_weight is None:
        sw = da.ones(y.shape[0], dtype=dtype, chunks=(y.chunks[0],))
    elif _is_lazy(sample_weight):
        sw = sample_weight.rechunk({0: y.chunks[0]})
    else:
        sw = np.asarray(sample_weight)
        sw = lazy_view(sw, (y.chunks[0],), name=f"weights-{tokenize(sw, y.chunks[0])}")
    return da.map_blocks(
        functools.partial(_table_block, kind=kind, classes=classes, dtype=dtype),
        y,
        sw[:, None],
        dtype=dtype,
        chunks=(y.chunks[0], (width,)),
        meta=np.empty((0, width), dtype),
    )


class Moments(NamedTuple):
    """Weighted moments of each column of a set of rows.

    ``mean_hi + mean_lo`` is the weighted mean as an unevaluated sum of two floats
    (``|mean_lo|`` at most half an ulp of ``mean_hi``), so that merging chunks never
    rounds the mean of targets near 1e8 to the 1.5e-8 spacing of floats there: that
    rounding would enter the merged ``m2`` to first order. ``m2`` is the centred sum
    of squares ``sum(w * (t - mean) ** 2)``.
    """

    weight: float
    mean_hi: np.ndarray
    mean_lo: np.ndarray
    m2: np.ndarray


def _two_sum(a, b):
    """Knuth's error-free sum: ``(s, e)`` with ``s = fl(a + b)`` and ``s + e == a + b``."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _moments(T, w):
    """The :class:`Moments` of the columns of ``T``, two passes.

    Parameters
    ----------
    T : ndarray of shape (n, k)
        Float64 values.
    w : ndarray of shape (n,)
        Float64 weights (0 on padding).

    Returns
    -------
    Moments
        Zeros, weight 0, when ``w.sum()`` is 0.
    """
    W = w.sum()
    if W == 0:
        zero = np.zeros(T.shape[1])
        return Moments(W, zero, zero, zero)
    hi = (w @ T) / W
    hi, lo = _two_sum(hi, (w @ (T - hi)) / W)
    return Moments(W, hi, lo, w @ ((T - hi) - lo) ** 2)


def _merge_moments(a, b):
    """Chan, Golub and LeVeque's pairwise update of two :class:`Moments`.

    Parameters
    ----------
    a, b : Moments
        The moments of two disjoint sets of rows.

    Returns
    -------
    Moments
        The moments of their union: weight ``W = wa + wb``, mean ``ma + d * wb / W``
        and ``m2 = m2a + m2b + d**2 * wa * wb / W`` with ``d = mb - ma``. Exact in
        real arithmetic in any grouping and order, and no sum of squares of raw
        values is ever formed; a side of weight 0 is the identity.
    """
    if a.weight == 0:
        return b._replace(weight=a.weight + b.weight, m2=a.m2 + b.m2)
    if b.weight == 0:
        return a._replace(weight=a.weight + b.weight, m2=a.m2 + b.m2)
    W = a.weight + b.weight
    d = (b.mean_hi - a.mean_hi) + (b.mean_lo - a.mean_lo)
    hi, err = _two_sum(a.mean_hi, d * (b.weight / W))
    hi, lo = _two_sum(hi, err + a.mean_lo)
    return Moments(W, hi, lo, a.m2 + b.m2 + d**2 * (a.weight * b.weight / W))


def _pack(moments, sse):
    """The continuous statistics vector ``[W, mean_hi, mean_lo, m2, sse]``."""
    return np.concatenate([[moments.weight], moments.mean_hi, moments.mean_lo, moments.m2, sse])


def _unpack(stats):
    """``(Moments, sse)`` of a continuous statistics vector (views, no copy)."""
    k = (len(stats) - 1) // 4
    cols = [stats[1 + i * k : 1 + (i + 1) * k] for i in range(4)]
    return Moments(stats[0], *cols[:3]), cols[3]


def score_chunk(kind, P, Y, X=None):
    """Sufficient statistics of the score on one chunk (a float64 vector).

    Parameters
    ----------
    kind : str
        The target kind (see the module docstring).
    P : ndarray of shape (n, n_outputs)
        The network's output activations.
    Y : ndarray of shape (n, n_targets + 1)
        The target table rows, the weight last (0 on padding).
    X : ndarray of shape (n, ...), optional
        The inputs (the targets of a reconstruction).

    Returns
    -------
    ndarray of shape (2,) or (1 + 4 * n_targets,)
        Classification: ``[W, sum(w * right)]``; reconstruction:
        ``[W, sum(w * mean squared error)]``; continuous: ``[W, mean_hi (k),
        mean_lo (k), m2 (k), sse (k)]``, the :class:`Moments` of each target and the
        weighted sum of squared errors. Combine chunks with :func:`score_combine`.
    """
    w = Y[:, -1].astype(np.float64)
    if kind == "reconstruction":
        err = ((P - np.asarray(X, np.float64).reshape(len(P), -1)) ** 2).mean(1)
        return np.array([w.sum(), w @ err])
    T = np.asarray(Y[:, :-1], np.float64)
    if kind == "continuous":
        return _pack(_moments(T, w), w @ (T - P) ** 2)
    if kind == "multiclass":
        right = P.argmax(1) == T[:, 0]
    else:
        right = ((P > 0.5) == (T > 0.5)).all(1)
    return np.array([w.sum(), w @ right])


def _combine_pair(kind, a, b):
    """The statistics of two disjoint chunks' rows together."""
    if kind != "continuous":
        return a + b
    (ma, ea), (mb, eb) = _unpack(a), _unpack(b)
    return _pack(_merge_moments(ma, mb), ea + eb)


def score_combine(kind, stats):
    """Combine the statistics of chunks (dask's ``combine`` step of a reduction).

    Parameters
    ----------
    kind : str
        The target kind.
    stats : sequence of ndarray
        :func:`score_chunk` results (or earlier :func:`score_combine` results) of
        disjoint sets of rows, in any order.

    Returns
    -------
    ndarray
        The statistics of all their rows, in :func:`score_chunk`'s layout. The
        combine is associative and commutative (exactly so in real arithmetic, and
        stable in floating point), so any tree of partial combines gives the same
        score; here the tree is balanced, pairwise.
    """
    stats = [np.asarray(s, np.float64) for s in stats]
    if not stats:
        raise ValueError("score_combine needs the statistics of at least one chunk, got none")
    while len(stats) > 1:
        pairs = zip(stats[0::2], stats[1::2], strict=False)
        merged = [_combine_pair(kind, a, b) for a, b in pairs]
        stats = merged + stats[2 * len(merged) :]
    return stats[0]


def score_aggregate(kind, total):
    """The score from combined statistics (dask's ``aggregate`` step).

    Parameters
    ----------
    kind : str
        The target kind.
    total : ndarray
        :func:`score_combine`'s result over every chunk.

    Returns
    -------
    float
        Accuracy (classification; subset accuracy for multilabel), R² averaged over
        outputs (scikit-learn's ``r2_score``: 1.0 for a perfect fit of constant
        targets, else 0.0 for them), or minus the mean squared reconstruction error;
        NaN when the total weight is 0.
    """
    if kind != "continuous":
        ratio = float(total[1] / total[0]) if total[0] > 0 else float("nan")
        return -ratio if kind == "reconstruction" else ratio
    moments, sse = _unpack(total)
    sst = moments.m2
    if not moments.weight > 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - sse / sst, np.where(sse == 0, 1.0, 0.0))
    return float(r2.mean())
