"""The engine under every network estimator: inputs, streaming fit, prediction.

One path serves every network (:class:`NeuralNetBase`): validate inputs (numpy
in memory; dask, zarr, memmaps and stores streamed), encode targets into one
table (:mod:`pipeline._targets`), stream chunks (:func:`pipeline.stream.chunks`)
into the jitted chunk step (:mod:`pipeline.nn`), and apply scikit-learn's
stopping policy between epochs. A subclass says which network to build and how
its parameters map to fitted attributes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import sys
import threading
import warnings
from typing import NamedTuple

import dask.array as da
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.optimize
from dask.base import tokenize
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import (
    _check_n_features,
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)
from tqdm.auto import tqdm

from pipeline import nn
from pipeline._adapter import as_dask as as_streamed
from pipeline._adapter import is_streamed, opened, returns_lazy
from pipeline._graph import local_on_worker
from pipeline._netio import (
    PREDICT_ROWS,
    Predictor,
    check_finite_window,
    check_known_chunks,
    select_rows,
    to_device,
    to_numpy,
)
from pipeline._store import Dataset
from pipeline._stream import chunks
from pipeline._targets import classes_of, score_aggregate, score_chunk, score_combine, target_table

__all__ = ["NeuralNetBase"]

# JAX dispatches steps without a bound, and each queued step holds its own copy of its
# chunk: a device slower than the stream would queue the whole epoch in memory
STEPS_IN_FLIGHT = 2

CHUNK_ROWS = 4096  # training chunks hold at least about this many samples


class _Data(NamedTuple):
    """Validated training data: X (numpy float32 or dask), target table Y, length."""

    X: object
    Y: object
    n: int
    streamed: bool


_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (sys.modules["pipeline"], sys.modules["sklearn"])
)


def _caller_level():
    """``stacklevel`` for a warning to point at the first frame outside pipeline and
    scikit-learn (the user's call), however deep inside the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _kind(spec):
    return dict(spec[1])["kind"]


class _DeferredInterrupt:
    """Ctrl-C during training acts between two steps, never inside JAX.

    A ``KeyboardInterrupt`` raised inside a jitted call abandons XLA work that
    goes on in XLA's own threads: a compilation interrupted this way finishes
    later against a client that interpreter exit has torn down (a segfault at
    exit), and an interrupted step has already consumed the carry's donated
    buffers. So while this context is active (in the main thread, where Python
    handles signals), SIGINT only records itself; :meth:`check`, called after a
    step or an epoch, hands it to the handler it replaced (by default Python's,
    which raises ``KeyboardInterrupt``). Inside :meth:`waiting` (waiting for the
    next chunk, no JAX work running) it is handed on at once. Chaining to the
    replaced handler lets a caller that installed its own (the CLI) know.
    """

    def __init__(self):
        self._previous = None
        self._pending = None
        self._raised = None  # raised while waiting, not yet seen to end the wait
        self._waiting = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):  # leave SIG_IGN / SIG_DFL / foreign C handlers alone
                self._previous = previous
                signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            if exc_type is None:
                self.check()  # never lose a Ctrl-C: one after the last check acts here

    def _handler(self, signum, frame):
        self._pending = (signum, frame)
        if self._waiting:
            try:
                self.check()
            except KeyboardInterrupt:
                self._raised = (signum, frame)
                raise

    def check(self):
        """Hand on a SIGINT received since the last check (raises KeyboardInterrupt)."""
        if self._pending is not None:
            (signum, frame), self._pending = self._pending, None
            self._previous(signum, frame)

    @contextlib.contextmanager
    def waiting(self):
        """A stretch where an interrupt may act at once (no JAX work in flight)."""
        self.check()
        self._waiting, self._raised = True, None
        try:
            yield
        except KeyboardInterrupt:
            self._raised = None
            raise
        finally:
            self._waiting = False
        if self._raised is not None:  # swallowed (raised inside a finalizer): hand it on again
            self._pending, self._raised = self._raised, None


class NeuralNetBase(BaseEstimator):
    """Shared machinery of the network estimators (not for direct use).

    Subclasses define ``_model(n_features, n_outputs) -> (factory, kwargs)``,
    ``_export_params(params)`` / ``_import_params()``, and ``_target_kind``.
    """

    _feature_ndim = (1,)  # the dimensions one sample may have: (1,) for flat vectors
    _scan_batches = True  # False: one jitted call per mini-batch (see nn.compiled_step)
    _draw_float32 = False  # True: initial parameters drawn in float32 whatever the data

    def __pipeline_tags__(self):
        """Our tags beside scikit-learn's: ``streams``, fit trains on dask arrays chunk by
        chunk (a Pipeline hands it lazy input, not a materialised one)."""
        return {"streams": True}

    def save(self, path, *, overwrite=False):
        """Write this estimator to a Zarr group (arrays + JSON); read it with
        :func:`pipeline.load`. No pickle is involved either way."""
        from pipeline.checkpoint import save

        save(self, path, overwrite=overwrite)

    # ------------------------------------------------------------------ inputs

    def _validate_X(self, X, reset):
        """Numpy (validated) or a dask array (checked by shape and dtype), in the
        layout the network reads; the feature shape is locked at ``reset``."""
        X = self._prepare_X(opened(X), reset)
        if not is_streamed(X):
            X = validate_data(
                self, X, reset=reset, dtype=(np.float64, np.float32), allow_nd=self._nd()
            )
        else:
            X = self._validate_streamed_X(X, reset)
        return self._check_feature_shape(X, reset)

    def _nd(self):
        return tuple(self._feature_ndim) != (1,)

    def _prepare_X(self, X, reset):
        """Hook: turn raw input (e.g. a DataFrame with categories) into numbers."""
        return X

    def _validate_streamed_X(self, X, reset):
        X = as_streamed(X)
        ndims = tuple(1 + d for d in self._feature_ndim)
        if X.ndim not in ndims:
            raise ValueError(
                f"Expected an array with {' or '.join(map(str, ndims))} dimensions, of shape "
                f"(n_samples, {'n_features' if not self._nd() else '*feature_shape'}); "
                f"got shape {X.shape}"
            )
        check_known_chunks(X, "X")
        if np.dtype(X.dtype).kind not in "biuf":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if X.shape[0] == 0:
            raise ValueError(
                f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required."
            )
        _check_n_features(self, X, reset=reset)
        if any(len(c) > 1 for c in X.chunks[1:]):
            X = X.rechunk({i: -1 for i in range(1, X.ndim)})  # whole samples per block
        return X

    def _check_feature_shape(self, X, reset):
        shape = tuple(int(d) for d in X.shape[1:])
        if self._nd() and X.ndim - 1 not in self._feature_ndim:
            raise ValueError(
                f"{type(self).__name__} takes samples with "
                f"{' or '.join(map(str, self._feature_ndim))} dimensions, got X of shape "
                f"{X.shape}"
            )
        if reset:
            self._feature_shape = shape
        elif shape != tuple(getattr(self, "_feature_shape", shape)):
            raise ValueError(
                f"X has samples of shape {shape}, but {type(self).__name__} was fitted on "
                f"samples of shape {tuple(self._feature_shape)}"
            )
        return X

    def _validate_training(self, X, y, sample_weight, *, reset, classes=None):
        """Validate (X, y, sample_weight) and build the target table: a :class:`_Data`."""
        X = opened(X)
        if isinstance(X, Dataset) and y is None:
            known, y = X.classes, X.y
        else:
            known = None
        if not is_streamed(X):
            X, y = validate_data(
                self,
                self._prepare_X(X, reset),
                y,
                reset=reset,
                dtype=(np.float64, np.float32),  # as scikit-learn: float32 stays, else float64
                multi_output=True,
                y_numeric=self._target_kind is None,
                allow_nd=self._nd(),
            )
            X = self._check_feature_shape(X, reset)
            if y.ndim == 2 and y.shape[1] == 1:
                y = column_or_1d(y, warn=True)
            if sample_weight is not None:
                sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float32)
            streamed = False
        else:
            if y is None:
                raise ValueError(
                    f"{type(self).__name__} requires y to be passed, but the target y is None"
                )
            X = self._validate_X(X, reset)
            y = self._streamed_like(X, y, "y")
            if sample_weight is not None:
                sample_weight = self._streamed_like(X, sample_weight, "sample_weight")
            streamed = True
        kind = self._encode_kind(y, reset=reset, classes=classes, known=known)
        dtype = self._data_dtype(X) if reset else self._dtype
        Y = target_table(y, sample_weight, kind, getattr(self, "classes_", None), dtype=dtype)
        return _Data(X, Y, int(X.shape[0]), streamed)

    @staticmethod
    def _data_dtype(X):
        """The compute dtype: float64 for float64 data (as scikit-learn), else float32."""
        return "float64" if X.dtype == np.float64 else "float32"

    @staticmethod
    def _streamed_like(X, a, name):
        """``a`` (y or sample weights) as a dask array cut like X's rows, length checked."""
        a = as_streamed(a) if is_streamed(a) else np.asarray(a)
        check_known_chunks(a, name)
        if a.shape[0] != X.shape[0]:
            raise ValueError(
                f"Found input variables with inconsistent numbers of samples: X has "
                f"{X.shape[0]}, {name} has {a.shape[0]}"
            )
        return a if isinstance(a, da.Array) else as_streamed(a, rows=X.chunks[0])  # by content

    def _encode_kind(self, y, *, reset, classes, known):
        """Target kind; for classifiers, set or check ``classes_``."""
        if self._target_kind is None:
            self._kind = "continuous"
            return self._kind
        if reset:
            kind, cls = classes_of(y, known=classes if classes is not None else known)
            self.classes_, self._kind = cls, kind
        elif self.warm_start and classes is None and not isinstance(y, da.Array):
            seen = classes_of(y)[1] if self._kind != "multilabel" else self.classes_
            if set(seen.tolist()) != set(self.classes_.tolist()):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the "
                    f"previous call to fit. Previously got {self.classes_}, `y` has {seen}"
                )
        return self._kind

    # ------------------------------------------------------------------ fitting

    def _model_config(self, feature_shape, n_outputs):
        factory, kwargs = self._model(tuple(feature_shape), n_outputs)
        return factory, tuple(sorted(kwargs.items()))

    def _initialize(self, data, *, warm=False):
        """Fresh fitted state for ``data``; ``warm`` (a warm start or partial_fit on an
        estimator not fitted yet) starts from :meth:`_given_params` instead of the draw."""
        self._dtype = self._data_dtype(data.X)
        rs = check_random_state(self.random_state)
        self._seed = int(rs.randint(np.iinfo(np.int32).max))
        n_outputs = self._n_outputs(data.Y)
        self.n_outputs_ = n_outputs
        self._config = self._model_config(self._feature_shape, n_outputs)
        key = jax.random.wrap_key_data(np.array([0, self._seed], np.uint32))  # = key(seed)
        draw = jax.enable_x64(False) if self._draw_float32 else contextlib.nullcontext()
        with draw:  # the MLP's: drawn in float32 for every dtype, then cast (its fits on
            params, _ = nn.build(*self._config, key)  # float32 and float64 start alike)
        params = jax.tree_util.tree_map(self._cast_param, to_numpy(params))
        self._export_params(self._given_params(params) if warm else params)
        self._state = nn.initial_state(nn.model_shapes(*self._config)[0])
        self._key = np.array([1, self._seed], np.uint32)  # training's own stream (dropout)
        self._epochs_seen = 0
        self.n_iter_, self.t_ = 0, 0
        self.out_activation_ = self._out_activation()
        self._set_architecture_attributes()
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = self.best_validation_score_ = None

    def _cast_param(self, a):
        return a.astype(self._dtype) if np.issubdtype(a.dtype, np.floating) else a

    def _given_params(self, drawn):
        """Hook: the parameters a warm start of an unfitted estimator begins from (the
        MLP's ``coefs_`` / ``intercepts_`` set by hand, as scikit-learn's); ``drawn``."""
        return drawn

    def _set_architecture_attributes(self):
        """Hook: fitted attributes that describe the network (the MLP's ``n_layers_``)."""

    def _n_outputs(self, Y):
        if self._kind == "multiclass":
            return len(self.classes_)
        if self._kind == "reconstruction":
            return math.prod(self._feature_shape)
        return int(Y.shape[1]) - 1

    def _fit(self, X, y, sample_weight=None, *, incremental=False, classes=None):
        first = not hasattr(self, "_config") or not (self.warm_start or incremental)
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._check_solver_options()
        # local: est.fit inside a cluster task; deferred: Ctrl-C never lands inside JAX
        with self._rollback(), local_on_worker(), _DeferredInterrupt() as interrupt:
            return self._fit_or_raise(X, y, sample_weight, first, incremental, classes, interrupt)

    @contextlib.contextmanager
    def _rollback(self):
        """A fit that fails leaves the estimator as it found it."""
        before = {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}
        try:
            yield
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise

    def _fit_or_raise(self, X, y, sample_weight, first, incremental, classes, interrupt):
        data = self._validate_training(X, y, sample_weight, reset=first, classes=classes)
        with jax.enable_x64(data.X.dtype == np.float64 if first else self._dtype == "float64"):
            if first:
                self._initialize(data, warm=self.warm_start or incremental)
            data = data._replace(X=self._cast(data.X))
            if self.solver == "lbfgs":
                self._fit_lbfgs(data, interrupt)
            else:
                self._fit_stochastic(data, incremental, interrupt)
        self._check_finite_params()
        return self

    def _check_finite_params(self):
        if not all(np.isfinite(a).all() for a in jax.tree_util.tree_leaves(self._import_params())):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )

    def _cast(self, X):
        """In-memory X in the compute dtype (streamed X is cast chunk by chunk)."""
        return X if isinstance(X, da.Array) else X.astype(self._dtype, copy=False)

    def _precision(self):
        """The scope in which this estimator's JAX code runs: 64-bit for float64 data,
        as scikit-learn computes in the data's dtype."""
        return jax.enable_x64(self._dtype == "float64")

    def _window_check(self):
        return functools.partial(check_finite_window, dtype=self._dtype)

    def _check_solver_options(self):
        dropout, batch_norm = getattr(self, "dropout", 0.0), getattr(self, "batch_norm", False)
        if self.solver == "lbfgs" and (dropout > 0 or batch_norm):
            raise ValueError(
                "solver='lbfgs' optimises the full-batch loss and supports neither "
                f"dropout (got {dropout}) nor batch_norm (got {batch_norm}); use a "
                "stochastic solver such as 'adam'"
            )

    def _hyper(self):
        l2 = 0.0 if self.solver == "adamw" else float(self.alpha)
        return (jnp.asarray(l2, self._dtype), jnp.asarray(self.l1, self._dtype))

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is "
                "going to be clipped",
                stacklevel=_caller_level(),
            )
        return int(np.clip(self.batch_size, 1, n))

    def _optimizer_spec(self, batch_size, steps_per_epoch):
        """(optimizer kwargs, schedule kwargs, learning rate to start the state with)."""
        opt = dict(
            name=self.solver,
            momentum=float(self.momentum),
            nesterov=bool(self.nesterovs_momentum),
            beta_1=float(self.beta_1),
            beta_2=float(self.beta_2),
            epsilon=float(self.epsilon),
            weight_decay=float(self.alpha) if self.solver == "adamw" else 0.0,
            clip_norm=None if self.clip_norm is None else float(self.clip_norm),
        )
        kind = self.learning_rate
        warmup = int(round(self.warmup_epochs * steps_per_epoch))
        sched = dict(
            kind=kind,
            learning_rate_init=float(self.learning_rate_init),
            steps_per_epoch=steps_per_epoch,
            warmup_steps=warmup,
            total_steps=self.max_iter * steps_per_epoch,
            power_t=float(self.power_t),
            batch_size=batch_size,
            decay=float(self.lr_decay),
            decay_epochs=float(self.lr_decay_epochs),
        )
        if kind in ("constant", "adaptive") and warmup == 0:
            # the rate lives in the optimizer state: one compiled step for every rate
            sched = dict(kind="constant", learning_rate_init=1.0, steps_per_epoch=1, total_steps=1)
        return tuple(sorted(opt.items())), tuple(sorted(sched.items()))

    def _optimizer_state(self, params, spec, fresh):
        """partial_fit continues the optimizer (moments, step count) as long as the
        optimizer is the same; a schedule that depends on the data size (steps per
        epoch) is re-derived from the step count, so chunks of any size keep it."""
        old, self._opt_spec = getattr(self, "_opt_spec", None), spec
        if not fresh and old is not None and old[0] == spec[0] and _kind(old) == _kind(spec):
            return to_device(self._opt_state)
        state = nn.compiled_init(*spec)(params)
        if dict(spec[1])["kind"] == "constant" and dict(spec[1])["learning_rate_init"] == 1.0:
            state = nn.set_learning_rate(state, self.learning_rate_init)  # see _optimizer_spec
        return state

    def _fit_stochastic(self, data, incremental, interrupt):
        train, val = self._split(data) if self.early_stopping else (data, None)
        bs = self._batch_size(train.n)
        n_batches = max(1, math.ceil(CHUNK_ROWS / bs))
        if train.streamed:
            n_batches = max(n_batches, train.X.chunks[0][0] // bs)
        if not self._scan_batches:
            n_batches = 1
        spec = self._optimizer_spec(bs, math.ceil(train.n / bs))
        step = nn.compiled_step(*self._config, self.out_activation_, *spec, self._scan_batches)
        params = to_device(self._import_params())
        carry = [
            params,
            to_device(self._state),
            self._optimizer_state(params, spec, fresh=not incremental),
            jax.random.wrap_key_data(jnp.asarray(self._key)),
        ]
        epochs, hyper = 1 if incremental else self.max_iter, self._hyper()
        self.n_iter_ = 0  # epochs of this call, as scikit-learn counts (t_ keeps the total)
        if self.early_stopping and not hasattr(self, "_best_params"):
            self._best_params = to_numpy(params)  # a warm start's (or a loaded model's) best
        bar = tqdm(
            total=epochs,
            disable=not self.verbose,
            desc=type(self).__name__,
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]",
        )
        # As scikit-learn's MLP: Ctrl-C before training starts raises KeyboardInterrupt
        # (the fit is rolled back); during training it ends the fit with a warning and
        # keeps the state of the last step (early stopping: the best so far, which before
        # the first epoch ends is the starting point). A fit interrupted before its first
        # epoch ends has n_iter_ 0, an empty loss_curve_ and no loss_, as scikit-learn's.
        try:
            interrupt.check()
        except KeyboardInterrupt:
            bar.close()
            raise
        interrupted = False
        try:
            for _ in range(epochs):
                loss = self._epoch(step, carry, hyper, train, bs, n_batches, bar, interrupt)
                stop = self._end_epoch(loss, train.n, carry, val, bar)
                interrupt.check()
                if stop or incremental:
                    break
            else:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                    "reached and the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=_caller_level(),
                )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        self._store_carry(carry)  # waits for the steps in flight
        if self.early_stopping:
            self._export_params(self._best_params)
        try:
            interrupt.check()  # one that came after the last step is reported too
        except KeyboardInterrupt:
            interrupted = True
        if interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=_caller_level())

    def _store_carry(self, carry):
        params, state, opt_state, key = carry
        self._export_params(to_numpy(params))
        self._state, self._opt_state = to_numpy(state), to_numpy(opt_state)
        self._key = np.asarray(jax.random.key_data(key))

    def _epoch(self, step, carry, hyper, train, batch_size, n_batches, bar, interrupt):
        """One pass over ``train``, updating ``carry`` in place; the mean training loss.
        Ctrl-C (``interrupt``) acts while waiting for a chunk or between two steps."""
        stream = chunks(
            train.X,
            train.Y,
            batch_size=batch_size,
            shuffle=self.shuffle,
            seed=self._seed,
            epoch=self._epochs_seen,
            prefetch=self.prefetch if train.streamed else 0,  # RAM needs no read-ahead
            n_batches=n_batches,
        )
        metrics, total = [], len(stream)
        with stream:
            while True:
                with interrupt.waiting():
                    c = next(stream, None)
                if c is None:
                    break
                *carry[:], m = step(*carry, c.X, c.y, c.mask, hyper)  # in place: an
                # interrupted fit keeps the last state (the old buffers were donated)
                metrics.append((m["loss_sum"], m["finite"]))  # no sync: the device runs ahead
                c = m = None  # the step holds its own copy of the chunk
                if len(metrics) > STEPS_IN_FLIGHT:  # ... but only a few steps ahead
                    with interrupt.waiting():
                        jax.block_until_ready(metrics[-STEPS_IN_FLIGHT - 1])
                bar.update(1 / total)
                interrupt.check()
        losses, finite = zip(*jax.device_get(metrics), strict=True)
        if not all(finite):
            raise ValueError(
                f"Input X contains NaN or infinity: found in training chunk {finite.index(False)}"
                f" of {total} of epoch {self._epochs_seen}. Clean or impute the data first (a "
                "lazy dask expression such as da.nan_to_num(X) works on streamed data)."
            )
        self._epochs_seen += 1
        return float(sum(losses)) / train.n

    def _end_epoch(self, loss, n, carry, val, bar):
        """scikit-learn's bookkeeping and stopping policy; True to stop."""
        self.n_iter_ += 1
        self.t_ += n
        self.loss_ = loss
        self.loss_curve_.append(loss)
        log = self.verbose and not _is_terminal(sys.stdout)  # scikit-learn's lines, for logs
        if log:
            print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
        if val is not None:
            score = self._streamed_score(
                val.X, val.Y, val.streamed, params=carry[0], state=carry[1]
            )
            self.validation_scores_.append(score)
            if log:
                print("Validation score: %f" % score)
            improved = score >= self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params = to_numpy(carry[0])
            bar.set_postfix(loss=f"{loss:.4g}", val=f"{score:.4f}", refresh=False)
        else:
            improved = loss <= self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, loss)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        bar.n = self.n_iter_ if bar.total else bar.n
        bar.refresh()
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        if self.learning_rate == "adaptive":
            lr = nn.current_learning_rate(carry[2])
            if lr > 1e-6:
                carry[2] = nn.set_learning_rate(carry[2], lr / 5.0)
                self._no_improvement_count = 0
                return False
        return True

    def _split(self, data):
        """Hold out ``validation_fraction`` of the samples (lazily for streamed data)."""
        too_small = ValueError(
            "The validation set is too small. Increase 'validation_fraction' "
            "or the size of your dataset."
        )
        if not data.streamed:
            # as scikit-learn: split first (stratified for a binary target, on its 0/1
            # column as booleans, which scikit-learn's error messages name), then check
            stratify = data.Y[:, :1] > 0.5 if self._kind == "binary" else None
            X_tr, X_val, Y_tr, Y_val = train_test_split(
                data.X,
                data.Y,
                random_state=self._seed,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            if len(X_val) < 2:
                raise too_small
            return _Data(X_tr, Y_tr, len(X_tr), False), _Data(X_val, Y_val, len(X_val), False)
        n_val = math.ceil(self.validation_fraction * data.n)
        if n_val < 2 or data.n - n_val < 1:
            raise too_small
        held = np.zeros(data.n, dtype=bool)
        held[np.random.default_rng([self._seed, 1]).permutation(data.n)[:n_val]] = True
        return tuple(
            _Data(select_rows(data.X, m), select_rows(data.Y, m), int(m.sum()), True)
            for m in (~held, held)
        )

    def _fit_lbfgs(self, data, interrupt):
        if data.streamed:
            raise ValueError(
                "solver='lbfgs' optimises the loss of the whole dataset at once and needs it in "
                f"memory, but X is streamed ({type(data.X).__name__} of shape {data.X.shape}). "
                "Use a stochastic solver ('adam', 'sgd', ...) to train out-of-core, or pass "
                "np.asarray(X) if the data fits in memory."
            )
        objective = nn.compiled_objective(*self._config, self.out_activation_)
        params = to_device(self._import_params())
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        state, X = to_device(self._state), jnp.asarray(data.X)
        Y = jnp.asarray(data.Y, X.dtype)
        mask, hyper = jnp.ones(data.n, bool), self._hyper()

        def fun(v):
            (loss, _), grads = objective(
                unravel(jnp.asarray(v, self._dtype)), state, X, Y, mask, hyper
            )
            value = float(loss), np.asarray(jax.flatten_util.ravel_pytree(grads)[0], np.float64)
            interrupt.check()  # Ctrl-C between two evaluations, never inside JAX
            return value

        # as scikit-learn's lbfgs, Ctrl-C raises KeyboardInterrupt (the fit is rolled back)
        res = scipy.optimize.minimize(
            fun,
            np.asarray(flat, np.float64),
            method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )
        self.n_iter_ = _check_optimize_result("lbfgs", res, self.max_iter)
        self.loss_ = float(res.fun)
        self._export_params(to_numpy(unravel(jnp.asarray(res.x, self._dtype))))

    # --------------------------------------------------------------- prediction

    def _predictor(self, params=None, state=None, *, method=None, n_outputs=None):
        """A frozen snapshot of the network for inference (see :class:`Predictor`);
        ``method`` (with its ``n_outputs``) calls another method of the network."""
        params = self._import_params() if params is None else params
        state = self._state if state is None else state
        n_outputs = self.n_outputs_ if n_outputs is None else n_outputs
        return Predictor(
            self._config, self.out_activation_, n_outputs, self._dtype, params, state, method
        )

    def _outputs(self, X, *, method=None, n_outputs=None):
        """Output activations: numpy (n, n_outputs) for in-memory X, lazy for dask X.

        A lazy result is bound to the model as it is now: refitting the estimator
        later does not change what it computes.
        """
        check_is_fitted(self)
        lazy_in = returns_lazy(X)
        X = self._validate_X(X, reset=False)
        return self._apply(self._predictor(method=method, n_outputs=n_outputs), X, lazy_in)

    def _apply(self, predictor, X, lazy_in):
        """``predictor`` over validated X: numpy float64, or lazy when ``lazy_in``."""
        if not isinstance(X, da.Array):
            return predictor(X.astype(self._dtype, copy=False)).astype(np.float64)
        k = predictor.n_outputs
        lazy = X.map_blocks(
            predictor.block,
            dtype=self._dtype,
            chunks=(X.chunks[0], (k,)),
            drop_axis=list(range(2, X.ndim)) or None,
            name=f"pipeline-forward-{tokenize(X.name, predictor)}",
            meta=np.empty((0, k), self._dtype),
        ).astype(np.float64)
        return lazy if lazy_in else lazy.compute()

    def _streamed_score(self, X, Y, streamed, *, params=None, state=None):
        """The estimator's score over (X, Y), chunk by chunk: combine, then aggregate."""
        predictor = self._predictor(params, state)
        parts = []
        stream = chunks(
            X,
            Y,
            batch_size=PREDICT_ROWS,
            shuffle=False,
            n_batches=1,
            prefetch=self.prefetch,
            transform=self._window_check() if streamed else None,
        )
        with stream:
            for c in stream:
                P = predictor(np.asarray(c.X[0], self._dtype))
                Yc = np.where(c.mask[0][:, None], c.y[0], 0.0)
                parts.append(score_chunk(self._kind, P, Yc, c.X[0]))
        return score_aggregate(self._kind, score_combine(self._kind, parts))

    # -------------------------------------------------------------- scoring

    def _score_streamed(self, X, y, sample_weight):
        X = opened(X)
        if isinstance(X, Dataset) and y is None:
            y = X.y
        if y is None:
            raise ValueError(f"{type(self).__name__}.score needs y: X holds no targets")
        X = self._validate_X(X, reset=False)
        y = self._streamed_like(X, y, "y")
        if sample_weight is not None:
            sample_weight = self._streamed_like(X, sample_weight, "sample_weight")
        classes = getattr(self, "classes_", None)
        Y = target_table(y, sample_weight, self._kind, classes, dtype=self._dtype)
        with self._precision(), local_on_worker():
            return self._streamed_score(X, Y, True)
