"""Convolutional, recurrent and bring-your-own networks as scikit-learn estimators.

Each is a head (classifier or regressor) on the engine plus ``_model``: which
equinox network to build for the data's sample shape. Everything else (streaming
from stores, ``partial_fit``, early stopping, lazy predict, save/load) is the
engine's, shared with the MLP.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import equinox as eqx
import jax
from sklearn.utils._param_validation import Interval, StrOptions

from pipeline import nn
from pipeline._engine import NeuralNetBase
from pipeline._heads import (
    TRAINING_CONSTRAINTS,
    TRAINING_DOC,
    ClassifierHead,
    RegressorHead,
    with_parameters,
)
from pipeline._netio import InputChecks
from pipeline.nn._custom import Ref

__all__ = [
    "CNNClassifier",
    "CNNRegressor",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "Network",
    "RNNClassifier",
    "RNNRegressor",
]


def _sizes(value, name):
    """A tuple of positive ints from an int or a sequence of them."""
    values = [value] if isinstance(value, Integral) else list(value)
    if not all(isinstance(v, Integral) and v > 0 for v in values):
        raise ValueError(f"{name} must hold positive integers, got {value!r}")
    return tuple(int(v) for v in values)


class Network(InputChecks, NeuralNetBase):
    """A network estimator whose fitted network is ``module_``: the trained equinox
    module (numpy arrays), callable as the network's batch protocol describes."""

    _parameter_constraints: dict = dict(TRAINING_CONSTRAINTS)
    _feature_ndim = (1,)

    def _export_params(self, params):
        params = nn.as_structure(params, *self._config)
        self.module_ = eqx.combine(params, nn.model_shapes(*self._config)[1])

    def _import_params(self):
        return eqx.partition(self.module_, eqx.is_array)[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = False
        return tags


_ARCHITECTURE_DOC = """\
    activation : str, default='relu'
        Hidden activation: 'relu', 'tanh', 'logistic', 'identity', 'swish'/'silu', 'gelu'.
    dropout : float, default=0.0
        Drop probability after each hidden block, while training.
    batch_norm : bool, default=False
        Batch-normalise every hidden layer (padding rows never enter the statistics).
"""

_LAYER_CONSTRAINTS = {
    "activation": [StrOptions(set(nn.ACTIVATIONS))],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "batch_norm": ["boolean"],
}


# --------------------------------------------------------------------------- CNN


class _CNN(Network):
    _parameter_constraints = {
        **Network._parameter_constraints,
        **_LAYER_CONSTRAINTS,
        "conv_layers": ["array-like"],
        "pool_size": [Interval(Integral, 1, None, closed="left")],
        "dense_layers": ["array-like", Interval(Integral, 1, None, closed="left")],
        "input_shape": [None, "array-like"],
    }
    _feature_ndim = (1, 2, 3, 4)
    _scan_batches = False  # XLA's CPU convolutions are slow inside loops

    def _conv_layers(self):
        layers = []
        for entry in self.conv_layers:
            filters, kernel = (entry, 3) if isinstance(entry, Integral) else tuple(entry)
            layers.append(_sizes((filters, kernel), "each of conv_layers (filters, kernel)"))
        return tuple(layers)

    def _model(self, feature_shape, n_outputs):
        return nn.CNN, dict(
            sample_shape=nn.sample_shape(feature_shape, self.input_shape),
            conv_layers=self._conv_layers(),
            pool_size=int(self.pool_size),
            dense_layers=_sizes(self.dense_layers, "dense_layers"),
            n_outputs=int(n_outputs),
            activation=self.activation,
            dropout=float(self.dropout),
            batch_norm=bool(self.batch_norm),
        )


_CNN_DOC = (
    """
    Parameters
    ----------
    conv_layers : sequence of (filters, kernel_size) or filters, default=((32, 3), (64, 3))
        One block per entry: convolution ('same' padding), [batch norm],
        activation, max-pooling, [dropout]. A bare int is a 3-wide kernel.
    pool_size : int, default=2
        Max-pooling window and stride after each block (1: none).
    dense_layers : sequence of int, default=(128,)
        Hidden units of the fully connected head.
    input_shape : tuple of int, optional
        Shape to read each (flat) sample as, channels last, e.g. ``(28, 28, 1)``
        for MNIST's 784 pixels. By default samples of shape ``(H, W, C)`` are
        images, ``(T, C)`` signals, ``(d,)`` one-channel signals and
        ``(D, H, W, C)`` volumes.
    learning_rate, learning_rate_init : default='cosine', 0.002
        Adam's step decays to 0 over ``max_iter`` epochs (set ``max_iter`` to the
        epochs you train for): MNIST reaches 99.15% in 5 epochs, where a constant
        0.001 gives 98.90%.
"""
    + _ARCHITECTURE_DOC
    + TRAINING_DOC
)

_CNN_DEFAULTS = dict(
    conv_layers=((32, 3), (64, 3)),
    pool_size=2,
    dense_layers=(128,),
    input_shape=None,
    activation="relu",
    dropout=0.0,
    batch_norm=False,
    learning_rate="cosine",
    learning_rate_init=0.002,
)


@with_parameters("conv_layers", **_CNN_DEFAULTS)
class CNNClassifier(ClassifierHead, _CNN):
    __doc__ = (
        """Convolutional network classifier for images and signals, out-of-core, on JAX.

    X of shape (n_samples, H, W, C) (channels last), (n_samples, T, C), or
    (n_samples, d) with ``input_shape``; every input an MLP takes (numpy, dask,
    zarr, memmaps, stores) streamed the same way. The defaults (two 3x3 conv
    blocks of 32 and 64 filters with 2x2 max-pooling, a dense layer of 128, Adam)
    suit MNIST-sized images.
"""
        + _CNN_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : pipeline.nn.CNN
        The trained network (numpy arrays).
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_,
    n_iter_, t_, n_outputs_, out_activation_, n_features_in_ : as MLPClassifier's.
"""
    )


@with_parameters("conv_layers", **_CNN_DEFAULTS)
class CNNRegressor(RegressorHead, _CNN):
    __doc__ = (
        """Convolutional network regressor (squared error), out-of-core, on JAX.

    Inputs as :class:`CNNClassifier`; y of shape (n_samples,) or (n_samples, n_outputs).
"""
        + _CNN_DOC
        + """
    Attributes
    ----------
    module_ : pipeline.nn.CNN
    loss_, loss_curve_, n_iter_, t_, n_outputs_, n_features_in_ : as MLPRegressor's.
"""
    )


# --------------------------------------------------------------------------- RNN


class _RNN(Network):
    _parameter_constraints = {
        **Network._parameter_constraints,
        **_LAYER_CONSTRAINTS,
        "cell": [StrOptions(set(nn.CELLS))],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "num_layers": [Interval(Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "dense_layers": ["array-like", Interval(Integral, 1, None, closed="left")],
    }
    _feature_ndim = (1, 2)
    _axis_names = ("time steps", "features")

    def _check_solver_options(self):
        if self.batch_norm:
            raise ValueError(
                "batch_norm=True is not available for recurrent networks; use dropout or "
                "gradient clipping (clip_norm)"
            )
        super()._check_solver_options()

    def _model(self, feature_shape, n_outputs):
        return nn.RNN, dict(
            n_features=int(feature_shape[1]) if len(feature_shape) == 2 else 1,
            cell=self.cell,
            hidden_size=int(self.hidden_size),
            num_layers=int(self.num_layers),
            bidirectional=bool(self.bidirectional),
            dense_layers=_sizes(self.dense_layers, "dense_layers"),
            n_outputs=int(n_outputs),
            activation=self.activation,
            dropout=float(self.dropout),
        )


_RNN_DOC = (
    """
    Parameters
    ----------
    cell : {'lstm', 'gru', 'simple'}, default='lstm'
        The recurrent cell (equinox's LSTMCell and GRUCell; 'simple' is Elman's).
    hidden_size : int, default=128
        Units of each recurrent layer, per direction.
    num_layers : int, default=1
        Stacked recurrent layers.
    bidirectional : bool, default=False
        Also read each sequence backwards.
    dense_layers : sequence of int, default=()
        Hidden units between the last state and the output.
    activation : str, default='tanh'
        Activation of the dense layers.
    dropout : float, default=0.0
        Drop probability between recurrent layers and in the head, while training.
    batch_norm : bool, default=False
        Not available for recurrent networks (kept for a uniform parameter set).
    clip_norm : float, default=1.0
        Gradients are clipped to this global norm (recurrent nets need it more).
    learning_rate_init : float, default=0.002
        Adam's step for recurrent nets: with clipping, twice the MLP's 0.001 trains
        MNIST's rows to 98.4% in 5 epochs, where 0.001 reaches 97.4%.
"""
    + TRAINING_DOC
)

_RNN_DEFAULTS = dict(
    cell="lstm",
    hidden_size=128,
    num_layers=1,
    bidirectional=False,
    dense_layers=(),
    activation="tanh",
    dropout=0.0,
    batch_norm=False,
    clip_norm=1.0,
    learning_rate_init=0.002,
)


@with_parameters("cell", **_RNN_DEFAULTS)
class RNNClassifier(ClassifierHead, _RNN):
    __doc__ = (
        """Recurrent network classifier of sequences (many-to-one), out-of-core, on JAX.

    X of shape (n_samples, T, n_features), or (n_samples, T) for univariate
    sequences; every input an MLP takes, streamed the same way.
"""
        + _RNN_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : pipeline.nn.RNN
    loss_, loss_curve_, n_iter_, t_, n_outputs_, n_features_in_ : as MLPClassifier's.
"""
    )


@with_parameters("cell", **_RNN_DEFAULTS)
class RNNRegressor(RegressorHead, _RNN):
    __doc__ = (
        """Recurrent network regressor (many-to-one): forecasting and sequence regression.

    X as :class:`RNNClassifier`; y of shape (n_samples,) or (n_samples, n_outputs):
    for forecasting, the next value(s) of the series after each window of X.
"""
        + _RNN_DOC
        + """
    Attributes
    ----------
    module_ : pipeline.nn.RNN
    loss_, loss_curve_, n_iter_, t_, n_outputs_, n_features_in_ : as MLPRegressor's.
"""
    )


# ---------------------------------------------------------------- your own module


def _relu(x):  # module-level functions pickle; jax.nn.relu does not
    return jax.nn.relu(x)


def _flatten(x):
    return x.reshape(-1)


def _identity(x):
    return x


def default_module(in_size, n_outputs, *, key):
    """The network of ``module=None``: one hidden layer of 100 ReLU units."""
    mlp = eqx.nn.MLP(
        in_size if isinstance(in_size, int) else math.prod(in_size),
        n_outputs,
        width_size=100,
        depth=1,
        activation=_relu,
        final_activation=_identity,
        key=key,
    )
    return mlp if isinstance(in_size, int) else eqx.nn.Sequential([eqx.nn.Lambda(_flatten), mlp])


class _UserNet(Network):
    _parameter_constraints = {**Network._parameter_constraints, "module": [None, callable]}
    _feature_ndim = (1, 2, 3, 4)

    def _model(self, feature_shape, n_outputs):
        module = default_module if self.module is None else self.module
        if not (isinstance(module, eqx.Module) or callable(module)):
            raise TypeError(f"module must be an equinox Module or a builder, got {module!r}")
        return nn.wrap_module, dict(
            module=Ref(module), sample_shape=tuple(feature_shape), n_outputs=int(n_outputs)
        )


_USER_DOC = (
    """
    Parameters
    ----------
    module : equinox.Module or callable, optional
        The network, in equinox's per-sample convention: called as
        ``module(x, key=key)`` on one sample ``x`` (a dropout key while training),
        it returns the sample's ``n_outputs`` values (logits for classifiers). Either
        a module (its arrays are the starting weights) or a builder
        ``module(in_size, n_outputs, *, key)`` called at ``fit`` with the number of
        features (or the sample shape for n-D samples) and of outputs. equinox's
        ``Dropout`` layers are switched off for prediction. Layers with equinox
        ``State`` (``BatchNorm``) are refused (TypeError); use ``LayerNorm``, or our
        networks' ``batch_norm=True``. A builder may define its module's class
        inside itself, but such a fitted estimator does not pickle (Python cannot
        pickle local classes): define the class at module level to search with
        processes or on a cluster. Default: one hidden layer of 100 ReLU units.
"""
    + TRAINING_DOC
)


@with_parameters("module", module=None)
class NeuralNetClassifier(ClassifierHead, _UserNet):
    __doc__ = (
        """Your own equinox network as a classifier, with all of the engine's machinery.

    Streaming from stores, ``partial_fit``, early stopping, lazy predict on dask,
    progress and save/load, as :class:`MLPClassifier`. ``pipeline.load`` of a saved
    one needs the module back: ``pipeline.load(path, module=...)``.
"""
        + _USER_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    module_ : pipeline.nn.Wrapped
        The trained network; ``module_.module`` is your module with trained weights.
    loss_, loss_curve_, n_iter_, t_, n_outputs_, n_features_in_ : as MLPClassifier's.
"""
    )


@with_parameters("module", module=None)
class NeuralNetRegressor(RegressorHead, _UserNet):
    __doc__ = (
        """Your own equinox network as a regressor (squared error), with all of the
    engine's machinery (see :class:`NeuralNetClassifier`).
"""
        + _USER_DOC
        + """
    Attributes
    ----------
    module_ : pipeline.nn.Wrapped
    loss_, loss_curve_, n_iter_, t_, n_outputs_, n_features_in_ : as MLPRegressor's.
"""
    )
