"""What every network classifier and regressor shares: parameters, targets, methods.

A network estimator is a head (:class:`ClassifierHead` or :class:`RegressorHead`:
fit, partial_fit, predict, predict_proba, score) on the engine
(:class:`pipeline._engine.NeuralNetBase`) plus a ``_model`` that names the network.
"""

from __future__ import annotations

import inspect
from numbers import Integral, Real

import dask.array as da
import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call

from pipeline import nn
from pipeline._adapter import is_streamed

__all__ = [
    "TRAINING_CONSTRAINTS",
    "TRAINING_DEFAULTS",
    "TRAINING_DOC",
    "ClassifierHead",
    "RegressorHead",
    "assign",
    "stochastic",
    "with_parameters",
]

TRAINING_CONSTRAINTS: dict = {
    "solver": [StrOptions({"lbfgs", *nn.OPTIMIZERS})],
    "alpha": [Interval(Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions(set(nn.SCHEDULES))],
    "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
    "power_t": [Interval(Real, 0, None, closed="left")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [Interval(Real, 0, None, closed="left")],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [Interval(Real, 0, 1, closed="both")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="left")],
    "beta_1": [Interval(Real, 0, 1, closed="left")],
    "beta_2": [Interval(Real, 0, 1, closed="left")],
    "epsilon": [Interval(Real, 0, None, closed="neither")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
    "max_fun": [Interval(Integral, 1, None, closed="left")],
    "l1": [Interval(Real, 0, None, closed="left")],
    "clip_norm": [None, Interval(Real, 0, None, closed="neither")],
    "lr_decay": [Interval(Real, 0, 1, closed="right")],
    "lr_decay_epochs": [Interval(Real, 0, None, closed="neither")],
    "warmup_epochs": [Interval(Real, 0, None, closed="left")],
    "prefetch": [Interval(Integral, 0, None, closed="left")],
}
"""Constraints of the training parameters every network estimator has (the optimizer,
schedule, stopping policy and stream), scikit-learn's MLP names."""


def assign(params):
    """``__init__``'s body: store every argument as an attribute, nothing else."""
    self = params.pop("self")
    params.pop("__class__", None)
    for name, value in params.items():
        setattr(self, name, value)


def stochastic(est):
    """``available_if`` gate of ``partial_fit``: stochastic solvers only."""
    if est.solver == "lbfgs":
        raise AttributeError(
            f"partial_fit is only available for stochastic optimizers. "
            f"{est.solver} is not stochastic."
        )
    return True


class ClassifierHead(ClassifierMixin):
    """Log-loss on a softmax output (one logistic unit for binary and multilabel targets)."""

    _target_kind = "classes"

    def _out_activation(self):
        return "softmax" if self._kind == "multiclass" else "logistic"

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit on samples X and labels y; streams dask, zarr, memmap and store input.

        Parameters
        ----------
        X : array-like, dask or zarr array, memmap or Dataset, shape (n_samples, *features)
            ``(n_samples, n_features)`` for flat networks; images and sequences
            for the networks that take them.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels, or a 0/1 indicator matrix for multilabel targets. Optional
            when X is a Dataset with ``y``.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight)

    @available_if(stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One pass over (X, y), continuing from the current state.

        ``classes`` (all labels that will ever be seen) is required on the first call.
        """
        if _check_partial_fit_first_call(self, classes):
            classes = self.classes_  # sorted and unique (scikit-learn's unique_labels)
            del self.classes_  # set again, with the target kind, by the first fit
            return self._fit(X, y, sample_weight, incremental=True, classes=classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def predict_proba(self, X):
        """Class probabilities: shape (n_samples, n_classes); lazy for dask X."""
        P = self._outputs(X)
        if self._kind != "binary":
            return P
        both = lambda p: np.concatenate([1 - p, p], axis=1)  # noqa: E731
        if isinstance(P, da.Array):
            return P.map_blocks(both, chunks=(P.chunks[0], (2,)), dtype=P.dtype)
        return both(P)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        P = self.predict_proba(X)
        return da.log(P) if isinstance(P, da.Array) else np.log(P)

    def _decode(self, P):
        if self._kind == "multilabel":
            return (P > 0.5).astype(np.int64)
        if len(self.classes_) == 1:  # trained on one class: it, as scikit-learn's
            return np.repeat(self.classes_, len(P))
        idx = P.argmax(1) if self._kind == "multiclass" else (P[:, 0] > 0.5).astype(np.intp)
        return self.classes_[idx]

    def predict(self, X):
        """Predicted labels: shape (n_samples,) (or (n_samples, n_labels)); lazy for dask X."""
        P = self._outputs(X)
        if not isinstance(P, da.Array):
            return self._decode(P)
        if self._kind == "multilabel":
            return P.map_blocks(self._decode, dtype=np.int64)
        return P.map_blocks(
            self._decode,
            drop_axis=1,
            dtype=self.classes_.dtype,
            meta=np.empty((0,), self.classes_.dtype),
        )

    def score(self, X, y=None, sample_weight=None):
        """Mean accuracy (subset accuracy for multilabel); streamed for dask/zarr X.

        ``y`` may be left out when X is a Dataset with targets.
        """
        if is_streamed(X):
            return self._score_streamed(X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class RegressorHead(RegressorMixin):
    """Squared error (or, with ``loss='poisson'``, Poisson deviance) on a linear output."""

    _target_kind = None

    def _out_activation(self):
        return "exp" if getattr(self, "loss", "squared_error") == "poisson" else "identity"

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit on X of shape (n_samples, *features), y of shape (n_samples,) or (n, n_outputs);
        streams dask, zarr, memmap and store input.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight)

    @available_if(stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One pass over (X, y), continuing from the current state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions: shape (n_samples,) or (n_samples, n_outputs), in the dtype the
        network computes in (float32 unless fitted on float64, as scikit-learn's); lazy
        for dask X."""
        P = self._outputs(X).astype(self._dtype)  # computed in it: the cast is exact
        if self.n_outputs_ != 1:
            return P
        return P[:, 0]

    def score(self, X, y=None, sample_weight=None):
        """R² (averaged over outputs); streamed for dask/zarr X.

        ``y`` may be left out when X is a Dataset with targets.
        """
        if is_streamed(X):
            return self._score_streamed(X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


TRAINING_DEFAULTS = dict(
    solver="adam",
    alpha=0.0001,
    batch_size="auto",
    learning_rate="constant",
    learning_rate_init=0.001,
    power_t=0.5,
    max_iter=200,
    shuffle=True,
    random_state=None,
    tol=1e-4,
    verbose=False,
    warm_start=False,
    momentum=0.9,
    nesterovs_momentum=True,
    early_stopping=False,
    validation_fraction=0.1,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
    n_iter_no_change=10,
    max_fun=15000,
    l1=0.0,
    clip_norm=None,
    lr_decay=0.5,
    lr_decay_epochs=5,
    warmup_epochs=0.0,
    prefetch=2,
)
"""The training parameters' defaults (scikit-learn's MLP defaults, and ours)."""

TRAINING_DOC = """    solver, alpha, batch_size, learning_rate, learning_rate_init, power_t, max_iter,
    shuffle, random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
    early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change,
    max_fun, l1, clip_norm, lr_decay, lr_decay_epochs, warmup_epochs, prefetch
        Training, as :class:`MLPClassifier`'s (same names and defaults unless said
        above): the optimizer (optax: 'adam', 'adamw', 'sgd', 'adagrad', 'adadelta',
        'rmsprop'; 'lbfgs' in memory), its schedule, L2 (``alpha``) and L1 penalties,
        gradient clipping, scikit-learn's stopping policy and the stream's read-ahead.
"""


def with_parameters(*positional, **network):
    """Class decorator: an ``__init__`` that only stores its arguments, with an
    explicit signature (what scikit-learn's ``get_params`` reads).

    ``network``: the network's parameters and their defaults, in order, then any
    training default to change; the other training parameters follow with the
    defaults of :data:`TRAINING_DEFAULTS`. ``positional`` names the parameters that
    may also be passed by position (the first ones).
    """
    defaults = {**network, **{k: v for k, v in TRAINING_DEFAULTS.items() if k not in network}}
    kinds = {name: inspect.Parameter.POSITIONAL_OR_KEYWORD for name in positional}
    signature = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [
            inspect.Parameter(name, kinds.get(name, inspect.Parameter.KEYWORD_ONLY), default=value)
            for name, value in defaults.items()
        ]
    )

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature

    def decorate(cls):
        __init__.__qualname__ = f"{cls.__name__}.__init__"
        cls.__init__ = __init__
        return cls

    return decorate
