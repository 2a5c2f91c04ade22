"""Targets: label encoding, target tables for streaming, and streamed scores.

Training streams carry one target table (in the compute dtype) ``Y`` of shape
``(n_samples, n_targets + 1)``: the encoded targets and, last, the sample
weight. Encoding runs per block (numpy or ``dask.array.map_blocks``), so
labels of a store are never gathered in one place.

Target kinds: ``"multiclass"`` (one column: the class index), ``"binary"`` (one
0/1 column), ``"multilabel"`` (one 0/1 column per label), ``"continuous"``
(one column per output), ``"reconstruction"`` (no column: an autoencoder's target is
its input).
"""

from __future__ import annotations

import functools

import dask.array as da
import numpy as np
from sklearn.utils.multiclass import check_classification_targets, type_of_target

from pipeline._inputs import lazy_view

__all__ = ["classes_of", "encode", "score_aggregate", "score_chunk", "target_table"]


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
    if len(classes) < 2:
        raise ValueError(
            f"Classifier can't train when only one class is present: y has the single class "
            f"{classes.tolist()}; a classifier needs at least 2 classes."
        )
    return ("binary" if len(classes) == 2 else "multiclass"), classes


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
        sw = lazy_view(np.asarray(sample_weight), (y.chunks[0],))
    return da.map_blocks(
        functools.partial(_table_block, kind=kind, classes=classes, dtype=dtype),
        y,
        sw[:, None],
        dtype=dtype,
        chunks=(y.chunks[0], (width,)),
        meta=np.empty((0, width), dtype),
    )


def score_chunk(kind, P, Y, X=None):
    """Sufficient statistics of the score on one chunk (a float64 vector).

    ``P``: the network's output activations, shape (n, n_outputs); ``Y``: the
    target table rows (weight 0 on padding); ``X``: the inputs (for reconstructions).
    """
    w = Y[:, -1].astype(np.float64)
    if kind == "reconstruction":
        err = ((P - np.asarray(X, np.float64).reshape(len(P), -1)) ** 2).mean(1)
        return np.array([w.sum(), w @ err])
    T = Y[:, :-1]
    if kind == "continuous":
        d = T - P
        return np.concatenate([[w.sum()], w @ T, w @ T**2, w @ d**2]).astype(np.float64)
    if kind == "multiclass":
        right = P.argmax(1) == T[:, 0]
    else:
        right = ((P > 0.5) == (T > 0.5)).all(1)
    return np.array([w.sum(), w @ right])


def score_aggregate(kind, total):
    """Accuracy (classification; subset accuracy for multilabel), R² averaged over outputs,
    or minus the mean squared reconstruction error."""
    if kind == "reconstruction":
        return -float(total[1] / total[0]) if total[0] > 0 else float("nan")
    if kind != "continuous":
        return float(total[1] / total[0]) if total[0] > 0 else float("nan")
    k = (len(total) - 1) // 3
    W, sy, syy, sse = total[0], total[1 : 1 + k], total[1 + k : 1 + 2 * k], total[1 + 2 * k :]
    sst = syy - sy**2 / W
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - sse / sst, np.where(sse == 0, 1.0, 0.0))
    return float(r2.mean())
