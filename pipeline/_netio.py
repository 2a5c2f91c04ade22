"""Array plumbing of the network estimators: streamed inputs, row selection,
device transfers and frozen predictors."""

from __future__ import annotations

import math

import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
from dask.base import tokenize

from pipeline import nn
from pipeline._adapter import is_streamed
from pipeline._store import Dataset

__all__ = [
    "PREDICT_ROWS",
    "InputChecks",
    "Predictor",
    "check_finite_window",
    "check_known_chunks",
    "select_rows",
    "to_device",
    "to_numpy",
]

PREDICT_ROWS = 1024  # inference runs on blocks of this many rows, padded: one compilation


def check_known_chunks(a, name):
    if isinstance(a, da.Array) and any(math.isnan(c) for c in a.chunks[0]):
        raise ValueError(
            f"{name} has unknown chunk sizes (as after boolean indexing of a dask array); "
            f"call {name}.compute_chunk_sizes() first, or index it with a numpy mask"
        )


def check_finite_window(Xw, Yw, dtype=np.float32):
    """Stream transform: features as ``dtype``, refusing NaN and infinity."""
    Xw = np.asarray(Xw, dtype=dtype)
    if not np.isfinite(Xw).all():
        bad = np.unique(np.nonzero(~np.isfinite(Xw.reshape(len(Xw), -1)))[0])
        raise ValueError(
            f"Input X contains NaN or infinity: {len(bad)} of the {len(Xw)} samples in one "
            "streamed window have non-finite features; clean or impute the data first."
        )
    return Xw, Yw


def _shape(a):
    """``a``'s shape without reading it (a Dataset's X's); () when ``a`` has none."""
    a = a.X if isinstance(a, Dataset) else a
    return tuple(a.shape) if hasattr(a, "shape") else ()


def check_samples(est, X, reset):
    """Refuse samples that hold no values and, once fitted, n-D samples of another
    shape than in fit (scikit-learn would count them as features)."""
    shape = _shape(X)
    if len(shape) < 2 or any(math.isnan(d) for d in shape):
        return
    name, sample = type(est).__name__, tuple(int(d) for d in shape[1:])
    if 0 in sample:
        axis = sample.index(0)
        names = est._axis_names or (("features",) if len(sample) == 1 else ())
        what = f" ({names[axis]})" if axis < len(names) else ""
        raise ValueError(
            f"Found array with 0 feature(s) (shape={shape}) while a minimum of 1 is required "
            f"by {name}: axis {axis + 1} of X{what} has length 0"
        )
    fitted = getattr(est, "_feature_shape", None)
    if reset or fitted is None or not est._nd() or sample == tuple(fitted):
        return
    if len(sample) == 1 and len(fitted) == 1:  # scikit-learn's words, and what they count
        names = est._axis_names
        what = f": {sample[0]} {names[0]}, fitted on {fitted[0]}" if names else ""
        raise ValueError(
            f"X has {sample[0]} features, but {name} is expecting {fitted[0]} features as "
            f"input{what}."
        )
    raise ValueError(
        f"X has samples of shape {sample}, but {name} was fitted on samples of shape "
        f"{tuple(fitted)} (X of shape {shape}, n_samples first)"
    )


def check_column(a, name):
    """Refuse targets ``y`` that are not 1-D or 2-D and weights that are not 1-D."""
    shape = _shape(a) or np.asarray(a).shape
    if name == "sample_weight" and len(shape) != 1:
        raise ValueError(f"sample_weight must be 1-D, of shape (n_samples,); got shape {shape}")
    if name == "y" and len(shape) not in (1, 2):
        raise ValueError(
            f"y must be 1-D or 2-D, of shape (n_samples,) or (n_samples, n_outputs); "
            f"got shape {shape}"
        )


def check_finite_weights(w, block_info=None):
    """``w`` (sample weights; one dask block with ``block_info``) if all finite."""
    bad = ~np.isfinite(np.asarray(w, dtype=np.float64))
    if bad.any():
        start = block_info[0]["array-location"][0][0] if block_info else 0
        raise ValueError(
            f"Input sample_weight contains NaN or infinity: {int(bad.sum())} weight(s) in "
            f"rows {start}..{start + len(w) - 1}, the first at row "
            f"{start + int(np.flatnonzero(bad)[0])}"
        )
    return w


class InputChecks:
    """What every network estimator checks of its raw inputs before the engine reads
    them, on numpy and streamed data alike: a sample holds values (and, once fitted,
    has the shape it had in fit); targets are 1-D or 2-D, weights 1-D and finite.

    A mixin placed before :class:`pipeline._engine.NeuralNetBase`; ``_axis_names``
    names the sample axes in messages.
    """

    _axis_names: tuple = ()

    def _prepare_X(self, X, reset):
        if self._nd() and not (hasattr(X, "shape") or is_streamed(X)):
            X = np.asarray(X)  # a nested list of n-D samples: its shape is checked
        check_samples(self, X, reset)
        return super()._prepare_X(X, reset)

    def _streamed_like(self, X, a, name):
        if name == "sample_weight" and (np.isscalar(a) or getattr(a, "ndim", 1) == 0):
            # one weight for every sample, as scikit-learn
            a = np.full(X.shape[0], a, dtype=np.float64)
        check_column(a, name)
        if name == "sample_weight" and not is_streamed(a):
            check_finite_weights(a)
        a = super()._streamed_like(X, a, name)
        if name == "sample_weight":
            a = a.map_blocks(check_finite_weights, dtype=a.dtype, meta=np.empty((0,), a.dtype))
        return a

    def _encode_kind(self, y, *, reset, classes, known):
        if self._target_kind is None and np.dtype(y.dtype).kind in "US":
            raise ValueError(
                f"{type(self).__name__} predicts numbers, but y holds text (dtype {y.dtype}): "
                "convert y to numbers, or use a classifier for labels"
            )
        try:
            return super()._encode_kind(y, reset=reset, classes=classes, known=known)
        except TypeError as e:
            if not isinstance(y, da.Array) or np.dtype(y.dtype).kind != "O":
                raise
            raise ValueError(
                f"y's labels cannot be ordered ({e}): they mix numbers and text, or hold "
                "None; labels must be all numbers or all text"
            ) from e


def _take(block, keep):
    return block[keep]


def select_rows(a, keep):
    """``a[keep]`` for a boolean numpy ``keep``, block by block: each output block
    reads exactly one block of ``a`` (dask's own boolean indexing re-cuts blocks)."""
    sizes = a.chunks[0]
    bounds = np.cumsum((0, *sizes))
    out = tuple(int(keep[s:e].sum()) for s, e in zip(bounds[:-1], bounds[1:], strict=True))
    index = "i" + "abcdefgh"[: a.ndim - 1]
    return da.blockwise(
        _take,
        index,
        a,
        index,
        da.from_array(keep, chunks=(sizes,)),
        "i",
        adjust_chunks={"i": out},
        dtype=a.dtype,
        meta=np.empty((0,) * a.ndim, a.dtype),
    )


def to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def to_device(tree):
    return jax.tree_util.tree_map(jnp.asarray, tree)


class Predictor:
    """A fitted network frozen for inference: configuration and numpy parameters.

    What a lazy ``predict`` puts in its graph: it pickles small (numpy inside),
    its dask token comes from its content, and refitting the estimator later
    does not change it.
    """

    def __init__(self, config, out_activation, n_outputs, dtype, params, state, method=None):
        self.config, self.out_activation = config, out_activation
        self.n_outputs, self.dtype = n_outputs, dtype
        self.params, self.state, self.method = params, state, method

    def __dask_tokenize__(self):
        factory, kwargs = self.config
        leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves((self.params, self.state))]
        return tokenize(
            factory.__module__,
            factory.__qualname__,
            kwargs,
            self.out_activation,
            self.method,
            self.dtype,
            leaves,
        )

    def __call__(self, X):
        """Outputs of shape (n, n_outputs) for X of shape (n, *features) in ``dtype``.

        Rows run in padded blocks of ``PREDICT_ROWS``: one compiled program, and a
        row's output never depends on the rows around it.
        """
        with jax.enable_x64(self.dtype == "float64"):
            forward = nn.compiled_forward(*self.config, self.out_activation, self.method)
            params, state = to_device(self.params), to_device(self.state)
            out = np.empty((len(X), self.n_outputs), dtype=self.dtype)
            for start in range(0, len(X), PREDICT_ROWS):
                block = X[start : start + PREDICT_ROWS]
                real = len(block)
                if real < PREDICT_ROWS:
                    pad = np.zeros((PREDICT_ROWS - real, *block.shape[1:]), block.dtype)
                    block = np.concatenate([block, pad])
                out[start : start + real] = np.asarray(forward(params, state, block))[:real]
        return out

    def block(self, Xb):
        """One dask block: checked for NaN/inf, cast, predicted."""
        Xb, _ = check_finite_window(Xb, None, self.dtype)
        return self(np.ascontiguousarray(Xb))
