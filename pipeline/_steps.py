"""How one step of a Pipeline learns and applies on streamed input.

Shared by :class:`pipeline.Pipeline` and the search graph (which keys one task
per step). A step is treated by what it is, from scikit-learn's tags and ours,
never by its class:

- ``"streams"``: it trains on dask arrays chunk by chunk itself (our networks,
  a nested Pipeline: ``__pipeline_tags__()["streams"]``); its ``fit`` gets the
  lazy input.
- ``"stateless"``: scikit-learn's ``requires_fit=False`` (Normalizer,
  FunctionTransformer...), or a fit that needs only the shape of a sample
  (PolynomialFeatures, random projections): fitted on the first chunk.
- ``"dask"``: dask-native (dask-ml's preprocessing and decomposition): fitted
  on the lazy array.
- ``"partial_fit"``: learns chunk by chunk, one streamed pass (scalers,
  IncrementalPCA; SGD and other incremental last steps, as dask-ml's
  ``Incremental``).
- ``"in_memory"``: anything else, fitted on its input read into memory, if that
  fits ``max_in_memory``; else refused before a byte is read.

A fitted step is applied to a lazy input with :func:`transform_lazy`: one task
per store chunk, so the transformed data never exists whole.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle

import cloudpickle
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.utils import format_bytes, parse_bytes
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.utils import get_tags

from pipeline._inputs import lazy_view

__all__ = [
    "ONLY_SHAPE",
    "estimator_token",
    "fit_step",
    "iter_blocks",
    "memory_limit",
    "step_kind",
    "streams",
    "transform_lazy",
]

# fitted from the shape of a sample alone: the first chunk is all they need
ONLY_SHAPE = frozenset(
    {
        "sklearn.preprocessing._polynomial.PolynomialFeatures",
        "sklearn.random_projection.GaussianRandomProjection",
        "sklearn.random_projection.SparseRandomProjection",
        "sklearn.kernel_approximation.RBFSampler",
        "sklearn.kernel_approximation.SkewedChi2Sampler",
    }
)


def streams(est):
    """Whether ``est`` trains on a dask array chunk by chunk itself (our tag)."""
    tags = getattr(est, "__pipeline_tags__", None)
    return bool(tags is not None and tags().get("streams", False))


def estimator_token(est):
    """A token of an estimator's class and parameters (nested estimators included)."""
    if not isinstance(est, BaseEstimator):
        return tokenize(est)
    params = {
        k: estimator_token(v) if isinstance(v, BaseEstimator) else v
        for k, v in sorted(est.get_params(deep=False).items())
    }
    return tokenize(type(est).__module__, type(est).__qualname__, params)


def _qualname(est):
    return f"{type(est).__module__}.{type(est).__qualname__}"


def step_kind(step):
    """How ``step`` learns on streamed input (see the module docstring)."""
    if streams(step):
        return "streams"
    if not get_tags(step).requires_fit or _qualname(step) in ONLY_SHAPE:
        return "stateless"
    if type(step).__module__.startswith("dask_ml."):
        return "dask"
    if hasattr(step, "partial_fit"):
        return "partial_fit"
    return "in_memory"


def memory_limit(value):
    """Bytes from ``max_in_memory``: an int, a string such as ``"2GB"``, or ``"auto"``
    (a quarter of this machine's physical memory)."""
    if isinstance(value, str) and value == "auto":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    if isinstance(value, str):
        try:
            return parse_bytes(value)
        except ValueError:
            pass
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError(
        f"max_in_memory must be a number of bytes >= 0, a string such as '2GB', or 'auto'; "
        f"got {value!r}"
    )


def _nbytes(*arrays):
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays if a is not None)


def _read_into_memory(step, name, X, y, params, limit):
    """X, y and the sample-aligned params read into memory, if they fit ``limit``."""
    lazy = [a for a in (X, y, *params.values()) if isinstance(a, da.Array)]
    size = _nbytes(*lazy)
    if size > limit:
        raise MemoryError(
            f"step {name!r} ({type(step).__name__}) cannot learn chunk by chunk (it has no "
            f"partial_fit and is not dask-native), and its input is {format_bytes(size)}, "
            f"more than max_in_memory={format_bytes(limit)}: nothing was read. Use a step "
            "that learns chunk by chunk (IncrementalPCA for PCA, StandardScaler, SGD...) "
            "or a dask-ml one (dask_ml.decomposition.PCA), or raise max_in_memory"
        )
    X, y, *values = dask.compute(X, y, *params.values())
    return X, y, dict(zip(params, values, strict=True))


def _aligned(value, n):
    """Whether a fit parameter is per sample (sliced with the chunks)."""
    return hasattr(value, "shape") and len(getattr(value, "shape", ())) >= 1 and value.shape[0] == n


def _align(value, rows):
    """A per-sample parameter as a dask array chunked like the input."""
    if isinstance(value, da.Array):
        return value.rechunk({0: rows})
    value = np.asarray(value)
    return lazy_view(value, (rows, *value.shape[1:]), name=f"array-{tokenize(value)}")


def iter_blocks(arrays, *, min_rows=1):
    """Numpy blocks of dask arrays chunked alike along axis 0, in order.

    The next block is read in a background thread while the caller works on
    this one. A last block shorter than ``min_rows`` is merged into the one
    before (IncrementalPCA needs ``n_components`` rows per call).

    Yields
    ------
    tuple of ndarray
        One block of each array (None stays None).
    """
    sizes = next(a for a in arrays if a is not None).chunks[0]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    bounds = [[int(starts[i]), int(starts[i + 1])] for i in range(len(sizes))]
    while len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_rows:
        bounds[-2][1] = bounds.pop()[1]

    def read(lo, hi):
        return dask.compute(*[None if a is None else a[lo:hi] for a in arrays])

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pipeline-blocks") as pool:
        ahead = pool.submit(read, *bounds[0])
        for nxt in [*bounds[1:], None]:
            block = ahead.result()
            ahead = pool.submit(read, *nxt) if nxt is not None else None
            yield block


def _min_rows(step):
    n = getattr(step, "n_components", None)
    return n if isinstance(n, (int, np.integer)) and n > 0 else 1


def _incremental(step, X, y, params, last):
    """One streamed pass of ``step.partial_fit`` over the chunks."""
    rows = X.chunks[0]
    n = X.shape[0]
    aligned = {k: _align(v, rows) for k, v in params.items() if _aligned(v, n)}
    static = {k: v for k, v in params.items() if k not in aligned}
    if last and is_classifier(step) and "classes" not in static:
        static["classes"] = np.unique(da.unique(y).compute()) if y is not None else None
    names = list(aligned)
    min_rows = 1 if last else _min_rows(step)
    seen = 0
    for xb, yb, *values in iter_blocks([X, y, *aligned.values()], min_rows=min_rows):
        kwargs = {**static, **dict(zip(names, values, strict=True))}
        try:
            if yb is None:
                step.partial_fit(xb, **kwargs)
            else:
                step.partial_fit(xb, yb, **kwargs)
        except Exception as exc:
            exc.add_note(f"(in {type(step).__name__}.partial_fit on samples {seen}-"
                         f"{seen + len(xb) - 1}, streamed)")
            raise
        seen += len(xb)
    return step


def _first_chunk(X, y):
    hi = X.chunks[0][0]
    return dask.compute(X[:hi], None if y is None else y[:hi])


def fit_step(step, X, y, params, *, name, limit, last=False):
    """Fit ``step`` on lazy ``X`` (a dask array) as its kind allows; return it.

    Parameters
    ----------
    step : estimator
        Fitted in place, as scikit-learn's Pipeline does.
    X : dask.array.Array of shape (n_samples, ...)
        The output of the steps before it, lazily.
    y : dask.array.Array or None
    params : dict
        The step's fit parameters (sample-aligned ones are streamed with X).
    name : str
        The step's name, for messages.
    limit : int
        Bytes an ``"in_memory"`` step may read.
    last : bool
        The final step (an incremental classifier gets ``classes``).
    """
    kind = step_kind(step)
    if kind == "streams":
        return step.fit(X, y, **params) if y is not None else step.fit(X, **params)
    return _settled(_fit_by_kind(step, kind, X, y, params, name, limit, last))


def _fit_by_kind(step, kind, X, y, params, name, limit, last):
    if kind == "stateless":
        x0, y0 = _first_chunk(X, y)
        return step.fit(x0, y0) if y0 is not None else step.fit(x0)
    if kind == "dask":
        step = step.fit(X, y, **params) if y is not None else step.fit(X, **params)
        return _computed_attributes(step)
    if kind == "partial_fit" and (not last or is_classifier(step) or is_regressor(step)):
        return _incremental(step, X, y, params, last)
    Xm, ym, params = _read_into_memory(step, name, X, y, params, limit)
    return step.fit(Xm, ym, **params) if ym is not None else step.fit(Xm, **params)


def _settled(step):
    """``step`` with its fitted arrays C-contiguous: a view left by the fit (IncrementalPCA's
    ``components_``) would take another BLAS path than the same array saved and loaded
    (or cached), and transform differently in the last bits."""
    for name, value in vars(step).items():
        if name.endswith("_") and isinstance(value, np.ndarray) and not value.flags.c_contiguous:
            setattr(step, name, np.ascontiguousarray(value))
    return step


def _computed_attributes(step):
    """``step`` with fitted attributes left as dask arrays (dask-ml's PCA ``mean_``)
    computed, in one pass: a lazy one would re-read the training data at every
    transform, and from a store that may have been replaced since."""
    lazy = {k: v for k, v in vars(step).items() if k.endswith("_") and isinstance(v, da.Array)}
    for name, value in zip(lazy, dask.compute(*lazy.values()), strict=True):
        setattr(step, name, value)
    return step


def _step_token(step):
    """A token of a fitted step's content (cloudpickle: local classes too)."""
    return tokenize(cloudpickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL))


def _densify(a):
    return a.toarray() if hasattr(a, "toarray") else np.asarray(a)


def _guarded(block, step):
    """The block a step may see: a copy for dask-ml (its scalers transform in place),
    else read-only, so that no step rewrites the caller's data (a memmap's file)."""
    if type(step).__module__.startswith("dask_ml."):
        return np.array(block)
    view = np.asarray(block).view()
    view.flags.writeable = False
    return view


def _apply(block, step, name, method):
    try:
        out = _densify(getattr(step, method)(_guarded(block, step)))
    except Exception as exc:
        exc.add_note(f"(in step {name!r}, {type(step).__name__}.{method} of a chunk of "
                     f"{len(block)} samples, streamed)")
        raise
    if out.dtype.kind in "fc" and not np.isfinite(out).all():
        if np.isfinite(np.asarray(block, np.float64)).all():
            raise ValueError(
                f"step {name!r} ({type(step).__name__}) produced NaN or infinity from "
                f"finite input in a chunk of {len(block)} samples (a log of 0, a division by "
                "a zero scale...): fix the step or the data"
            )
    return out


def _probe(step, X, method):
    """``step``'s output for one sample: zeros, or the first sample if zeros fail."""
    try:
        return _densify(getattr(step, method)(np.zeros((1, *X.shape[1:]), X.dtype)))
    except Exception:  # noqa: BLE001 - a step may refuse zeros (a log); use real data
        return _densify(getattr(step, method)(X[:1].compute()))


def transform_lazy(step, X, *, name, method="transform"):
    """``step.<method>`` over lazy ``X``, one task per chunk; nothing is read now.

    Returns
    -------
    dask.array.Array
        Chunked like ``X`` along axis 0, whole along the others, named by the
        fitted step and ``X`` (the same fitted step on the same data is one key).
    """
    X = X.rechunk({i: -1 for i in range(1, X.ndim)})
    probe = _probe(step, X, method)
    axes = {}
    if probe.ndim < X.ndim:
        axes["drop_axis"] = list(range(probe.ndim, X.ndim))
    elif probe.ndim > X.ndim:
        axes["new_axis"] = list(range(X.ndim, probe.ndim))
    chunks = (X.chunks[0], *((s,) for s in probe.shape[1:]))
    return da.map_blocks(
        _apply,
        X,
        step,
        name,
        method,
        chunks=chunks,
        dtype=probe.dtype,
        meta=np.empty((0,) * probe.ndim, probe.dtype),
        name=f"pipeline-{method}-{name}-{tokenize(_step_token(step), X.name)}",
        **axes,
    )
