"""scikit-learn's MLPClassifier and MLPRegressor, out-of-core, on JAX.

Same parameter names, defaults and fitted attributes as
``sklearn.neural_network``; more optimizers, schedules, dropout, batch norm, L1
and gradient clipping on top. ``fit`` on dask, zarr, memmap or store inputs
streams them chunk by chunk; ``predict`` on a dask array stays lazy.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import dask.array as da
import jax
import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call

from pipeline import nn
from pipeline._engine import NeuralNetBase
from pipeline._netio import is_streamed

__all__ = ["MLPClassifier", "MLPRegressor"]

_SKLEARN_SOLVERS = ("lbfgs", "sgd", "adam")


@functools.lru_cache(maxsize=64)
def _treedef(config):
    return jax.tree_util.tree_structure(nn.model_shapes(*config)[0])


def _stochastic(est):
    if est.solver == "lbfgs":
        raise AttributeError(
            f"partial_fit is only available for stochastic optimizers. "
            f"{est.solver} is not stochastic."
        )
    return True


class _MLPBase(NeuralNetBase):
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(nn.ACTIVATIONS))],
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
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "l1": [Interval(Real, 0, None, closed="left")],
        "batch_norm": ["boolean"],
        "clip_norm": [None, Interval(Real, 0, None, closed="neither")],
        "lr_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_decay_epochs": [Interval(Real, 0, None, closed="neither")],
        "warmup_epochs": [Interval(Real, 0, None, closed="left")],
        "prefetch": [Interval(Integral, 0, None, closed="left")],
    }

    def _hidden(self):
        h = self.hidden_layer_sizes
        h = [h] if not hasattr(h, "__iter__") else list(h)
        if any(int(u) <= 0 for u in h):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {h}.")
        return tuple(int(u) for u in h)

    def _model(self, n_features, n_outputs):
        return nn.MLP, dict(
            n_features=int(n_features),
            hidden=self._hidden(),
            n_outputs=int(n_outputs),
            activation=self.activation,
            dropout=float(self.dropout),
            batch_norm=bool(self.batch_norm),
        )

    def _n_layers(self):
        return len(dict(self._config[1])["hidden"]) + 2

    def _export_params(self, params):
        self.coefs_ = [np.array(layer.weight.T) for layer in params.layers]
        self.intercepts_ = [np.array(layer.bias) for layer in params.layers]
        self._norm_params = [(np.array(n.scale), np.array(n.shift)) for n in params.norms]

    def _import_params(self):
        leaves = [a for W, b in zip(self.coefs_, self.intercepts_, strict=False) for a in (W.T, b)]
        leaves += [a for pair in self._norm_params for a in pair]
        return jax.tree_util.tree_unflatten(_treedef(self._config), leaves)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags


def _assign(params):
    """``__init__``'s body: store every argument as an attribute, nothing else."""
    self = params.pop("self")
    params.pop("__class__", None)
    for name, value in params.items():
        setattr(self, name, value)


_PARAMS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of shape (n_layers - 2,), default=(100,)
        Units of each hidden layer.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'swish', 'silu', 'gelu'}
        Hidden-layer activation; ``swish``/``silu`` and ``gelu`` are ours.
    solver : {'lbfgs', 'sgd', 'adam', 'adamw', 'adagrad', 'adadelta', 'rmsprop'}
        optax optimizers; ``lbfgs`` is full-batch, in memory (scipy's L-BFGS-B).
    alpha : float, default=1e-4
        L2 penalty, ``0.5 * alpha * ||W||^2`` per mini-batch over its summed sample
        weights, as scikit-learn; with ``solver='adamw'`` the decoupled weight decay.
    batch_size : int or 'auto', default='auto'
        ``min(200, n_samples)`` for 'auto'.
    learning_rate : {'constant', 'invscaling', 'adaptive', 'step', 'exponential', 'cosine'}
        scikit-learn's three (for every solver here, not only 'sgd') and ours:
        ``step`` / ``exponential`` multiply the rate by ``lr_decay`` every
        ``lr_decay_epochs`` epochs (at once / smoothly), ``cosine`` decays it to 0
        over ``max_iter`` epochs.
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose,
    warm_start, momentum, nesterovs_momentum, early_stopping, validation_fraction,
    beta_1, beta_2, epsilon, n_iter_no_change, max_fun
        As scikit-learn's. ``verbose`` shows a progress bar with the loss.
        ``early_stopping`` holds out ``validation_fraction`` of the samples (for
        streamed data lazily, without materialising the rest).
    dropout : float, default=0.0
        Drop probability after each hidden activation, while training.
    l1 : float, default=0.0
        L1 penalty on the weights, scaled like ``alpha``.
    batch_norm : bool, default=False
        Batch-normalise each hidden layer (padding rows never enter the statistics).
    clip_norm : float, optional
        Clip each mini-batch gradient to this global norm.
    lr_decay, lr_decay_epochs : float, default=0.5, 5
        Decay factor and period of the ``step`` and ``exponential`` schedules.
    warmup_epochs : float, default=0
        Linear warm-up of the learning rate over this many epochs.
    prefetch : int, default=2
        Training chunks read ahead in a background thread while the step runs.
"""


class MLPClassifier(ClassifierMixin, _MLPBase):
    __doc__ = (
        """Multi-layer perceptron classifier: scikit-learn's, out-of-core, on JAX.

    A drop-in for ``sklearn.neural_network.MLPClassifier``: log-loss with a
    softmax output (one logistic unit for binary and multilabel targets).
"""
        + _PARAMS_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coefs_ : list of ndarray, the i-th of shape (units[i], units[i + 1])
    intercepts_ : list of ndarray, the i-th of shape (units[i + 1],)
    loss_, best_loss_, loss_curve_, validation_scores_, best_validation_score_,
    n_iter_, t_, n_layers_, n_outputs_, out_activation_, n_features_in_,
    feature_names_in_ : as scikit-learn's.
"""
    )

    _target_kind = "classes"

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
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
        dropout=0.0,
        l1=0.0,
        batch_norm=False,
        clip_norm=None,
        lr_decay=0.5,
        lr_decay_epochs=5,
        warmup_epochs=0.0,
        prefetch=2,
    ):
        _assign(locals())

    def _out_activation(self):
        return "softmax" if self._kind == "multiclass" else "logistic"

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit on X of shape (n_samples, n_features) and labels y; streams dask/zarr input.

        Parameters
        ----------
        X : array-like, dask or zarr array, memmap or Dataset, shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels, or a 0/1 indicator matrix for multilabel targets. Optional
            when X is a Dataset with ``y``.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight)

    @available_if(_stochastic)
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


class MLPRegressor(RegressorMixin, _MLPBase):
    __doc__ = (
        """Multi-layer perceptron regressor: scikit-learn's, out-of-core, on JAX.

    A drop-in for ``sklearn.neural_network.MLPRegressor``: squared error (or
    Poisson deviance with ``loss='poisson'``), identity (exp) output.
"""
        + _PARAMS_DOC.replace(
            "    Parameters\n    ----------\n",
            """    Parameters
    ----------
    loss : {'squared_error', 'poisson'}, default='squared_error'
""",
        )
        + """
    Attributes
    ----------
    coefs_, intercepts_, loss_, best_loss_, loss_curve_, validation_scores_,
    best_validation_score_, n_iter_, t_, n_layers_, n_outputs_, out_activation_,
    n_features_in_, feature_names_in_ : as scikit-learn's.
"""
    )

    _target_kind = None
    _parameter_constraints = {
        **_MLPBase._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
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
        dropout=0.0,
        l1=0.0,
        batch_norm=False,
        clip_norm=None,
        lr_decay=0.5,
        lr_decay_epochs=5,
        warmup_epochs=0.0,
        prefetch=2,
    ):
        _assign(locals())

    def _out_activation(self):
        return "exp" if self.loss == "poisson" else "identity"

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit on X of shape (n_samples, n_features), y of shape (n_samples,) or (n, n_outputs).

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight)

    @available_if(_stochastic)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One pass over (X, y), continuing from the current state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions: shape (n_samples,) or (n_samples, n_outputs); lazy for dask X."""
        P = self._outputs(X)
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
