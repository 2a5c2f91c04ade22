"""scikit-learn's MLPClassifier and MLPRegressor, out-of-core, on JAX.

Same parameter names, defaults and fitted attributes as
``sklearn.neural_network``; more optimizers, schedules, dropout, batch norm, L1
and gradient clipping on top. ``fit`` on dask, zarr, memmap or store inputs
streams them chunk by chunk; ``predict`` on a dask array stays lazy.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import jax
import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from pipeline import nn
from pipeline._engine import NeuralNetBase
from pipeline._heads import TRAINING_CONSTRAINTS, ClassifierHead, RegressorHead, assign
from pipeline._netio import InputChecks

__all__ = ["MLPClassifier", "MLPRegressor"]


@functools.lru_cache(maxsize=64)
def _treedef(config):
    return jax.tree_util.tree_structure(nn.model_shapes(*config)[0])


class _MLPBase(InputChecks, NeuralNetBase):
    _draw_float32 = True  # as scikit-learn's MLP: float32 and float64 fits start alike
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(nn.ACTIVATIONS))],
        **TRAINING_CONSTRAINTS,
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "batch_norm": ["boolean"],
    }

    def _hidden(self):
        h = self.hidden_layer_sizes
        h = [h] if not hasattr(h, "__iter__") else list(h)
        if any(int(u) <= 0 for u in h):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {h}.")
        return tuple(int(u) for u in h)

    def _model(self, feature_shape, n_outputs):
        return nn.MLP, dict(
            n_features=int(feature_shape[0]),
            hidden=self._hidden(),
            n_outputs=int(n_outputs),
            activation=self.activation,
            dropout=float(self.dropout),
            batch_norm=bool(self.batch_norm),
        )

    def _set_architecture_attributes(self):
        self.n_layers_ = len(dict(self._config[1])["hidden"]) + 2

    def _export_params(self, params):
        self.coefs_ = [np.array(layer.weight.T) for layer in params.layers]
        self.intercepts_ = [np.array(layer.bias) for layer in params.layers]
        self._norm_params = [(np.array(n.scale), np.array(n.shift)) for n in params.norms]

    def _given_params(self, drawn):
        """``coefs_`` and ``intercepts_`` set by hand before a warm start or the first
        ``partial_fit``, as scikit-learn's MLP takes them (batch norm, if any, as drawn)."""
        if not (hasattr(self, "coefs_") and hasattr(self, "intercepts_")):
            return drawn
        coefs = [np.asarray(W, self._dtype) for W in self.coefs_]
        intercepts = [np.asarray(b, self._dtype) for b in self.intercepts_]
        want = [(lyr.weight.T.shape, lyr.bias.shape) for lyr in drawn.layers]
        got = [(W.shape, b.shape) for W, b in zip(coefs, intercepts, strict=False)]
        if got != want or len(coefs) != len(intercepts):
            raise ValueError(
                "coefs_ and intercepts_ set before fitting must have the network's shapes "
                f"(coefs_, intercepts_ per layer): expected {want}, got "
                f"{[W.shape for W in coefs]}, {[b.shape for b in intercepts]}"
            )
        self.coefs_, self.intercepts_ = coefs, intercepts
        self._norm_params = [(np.asarray(n.scale), np.asarray(n.shift)) for n in drawn.norms]
        return self._import_params()

    def _import_params(self):
        leaves = [a for W, b in zip(self.coefs_, self.intercepts_, strict=False) for a in (W.T, b)]
        leaves += [a for pair in self._norm_params for a in pair]
        return jax.tree_util.tree_unflatten(_treedef(self._config), leaves)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags


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


class MLPClassifier(ClassifierHead, _MLPBase):
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
        assign(locals())


class MLPRegressor(RegressorHead, _MLPBase):
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
        assign(locals())
