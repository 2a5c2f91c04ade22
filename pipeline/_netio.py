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
from pipeline._inputs import default_chunk_rows, lazy_view
from pipeline._store import Dataset

__all__ = [
    "PREDICT_ROWS",
    "Predictor",
    "as_streamed",
    "check_finite_window",
    "check_known_chunks",
    "is_streamed",
    "select_rows",
    "to_device",
    "to_numpy",
]

PREDICT_ROWS = 1024  # inference runs on blocks of this many rows, padded: one compilation


def is_streamed(X):
    """True for inputs that are read chunk by chunk rather than held in memory."""
    return isinstance(X, (da.Array, Dataset, np.memmap)) or type(X).__module__.startswith("zarr")


def as_streamed(X):
    """A dask array view of a streamed input (dask, zarr array, Dataset, memmap)."""
    if isinstance(X, Dataset):
        return X.X
    if isinstance(X, da.Array):
        return X
    if type(X).__module__.startswith("zarr"):
        return da.from_zarr(X)
    rows = default_chunk_rows(X.shape[1:], X.dtype)
    return lazy_view(X, (rows, *X.shape[1:]), name=f"memmap-{tokenize(X)}")


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
