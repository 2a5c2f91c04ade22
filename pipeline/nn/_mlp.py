"""Fully connected networks: equinox layers, masked batch norm, fitting initialisation.

A network here is an equinox module called on a whole mini-batch::

    out, new_state = model(x, state, key=key, train=True, weight=weight)

with ``x`` of shape ``(batch, *features)``; ``state`` holds what training
updates without gradients (batch-norm running statistics) and ``weight`` of shape
``(batch,)`` is zero on padding, so padded rows never reach the statistics.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACTIVATIONS", "BatchNorm", "MLP", "NormStats", "initial_state"]

ACTIVATIONS = {
    "identity": lambda x: x,
    "logistic": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
}
_HE = frozenset({"relu", "swish", "silu", "gelu"})


class NormStats(NamedTuple):
    """Running statistics of one batch-norm layer, each of shape (features,)."""

    mean: jax.Array
    var: jax.Array


class BatchNorm(eqx.Module):
    """Batch normalisation over axis 0 that ignores zero-weight (padding) rows.

    equinox's ``BatchNorm`` normalises over a ``vmap`` axis and cannot leave out
    the padding of a stream's last batch; this one takes the batch whole.
    """

    scale: jax.Array
    shift: jax.Array
    momentum: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, size, *, momentum=0.9, eps=1e-5):
        self.scale = jnp.ones(size)
        self.shift = jnp.zeros(size)
        self.momentum, self.eps = momentum, eps

    def __call__(self, x, stats, *, train, weight):
        """x of shape (batch, features) -> (normalised x, updated NormStats)."""
        if train:
            total = weight.sum()
            w = (weight / jnp.maximum(total, 1e-12))[:, None]
            mean = (w * x).sum(0)
            var = (w * (x - mean) ** 2).sum(0)
            m = jnp.where(total > 0, self.momentum, 1.0)
            stats = NormStats(m * stats.mean + (1 - m) * mean, m * stats.var + (1 - m) * var)
        else:
            mean, var = stats
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale + self.shift, stats


def init_bound(fan_in, fan_out, activation, is_output=False):
    """Half-width of the uniform initialisation of a layer feeding ``activation``:
    He for ReLU-like hidden layers, else Glorot (scikit-learn's, factor 2 for logistic)."""
    if activation in _HE and not is_output:
        return math.sqrt(6.0 / fan_in)
    return math.sqrt((2.0 if activation == "logistic" else 6.0) / (fan_in + fan_out))


def init_layer(layer_type, *args, key, bound, zero_bias, **kwargs):
    """An equinox layer (``Linear``, ``Conv``) with weight and bias drawn uniformly
    in ``[-bound, bound]`` (bias zero if ``zero_bias``) in one draw; equinox's own
    initialisation is never run (the layer's skeleton comes from ``eval_shape``)."""
    layer = eqx.filter_eval_shape(layer_type, *args, key=key, **kwargs)
    n_w, n_b = math.prod(layer.weight.shape), math.prod(layer.bias.shape)
    u = jax.random.uniform(key, (n_w + n_b,), minval=-bound, maxval=bound)
    weight, bias = u[:n_w].reshape(layer.weight.shape), u[n_w:].reshape(layer.bias.shape)
    if zero_bias:
        bias = jnp.zeros_like(bias)
    return eqx.tree_at(lambda lyr: (lyr.weight, lyr.bias), layer, (weight, bias))


def _linear(fan_in, fan_out, key, activation, is_output):
    """A Linear layer initialised for its activation (see :func:`init_bound`); ReLU-like
    layers start with zero biases."""
    bound = init_bound(fan_in, fan_out, activation, is_output)
    return init_layer(
        eqx.nn.Linear, fan_in, fan_out, key=key, bound=bound, zero_bias=activation in _HE
    )


class MLP(eqx.Module):
    """A multi-layer perceptron on flat features.

    Parameters
    ----------
    n_features : int
    hidden : tuple of int
        Units of each hidden layer.
    n_outputs : int
    activation : str
        One of :data:`ACTIVATIONS` (scikit-learn's names plus swish/silu, gelu).
    dropout : float
        Drop probability after each hidden activation (training only).
    batch_norm : bool
        Normalise each hidden layer's pre-activations.
    key : jax.random key

    Call with ``x`` of shape (batch, n_features); returns the output layer's
    pre-activations of shape (batch, n_outputs) and the updated state.
    """

    layers: tuple
    norms: tuple
    drop: eqx.nn.Dropout
    activation: str = eqx.field(static=True)

    def __init__(
        self, n_features, hidden, n_outputs, *, activation, dropout=0.0, batch_norm=False, key
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        sizes = [n_features, *hidden, n_outputs]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            _linear(a, b, k, activation, i == len(sizes) - 2)
            for i, (a, b, k) in enumerate(zip(sizes[:-1], sizes[1:], keys, strict=False))
        )
        self.norms = tuple(BatchNorm(h) for h in hidden) if batch_norm else ()
        self.drop = eqx.nn.Dropout(float(dropout))
        self.activation = activation

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        act = ACTIVATIONS[self.activation]
        dropping = train and key is not None and self.drop.p > 0
        keys = jax.random.split(key, len(self.layers)) if dropping else None
        new_state = []
        for i, layer in enumerate(self.layers[:-1]):
            x = x @ layer.weight.T + layer.bias
            if self.norms:
                x, stats = self.norms[i](x, state[i], train=train, weight=weight)
                new_state.append(stats)
            x = act(x)
            if dropping:
                x = self.drop(x, key=keys[i])
        last = self.layers[-1]
        return x @ last.weight.T + last.bias, tuple(new_state)

    def initial_state(self):
        return norm_state(self.norms)


def norm_state(norms):
    """Fresh running statistics (numpy) of a tuple of :class:`BatchNorm` layers."""
    return tuple(
        NormStats(np.zeros(n.shift.shape, n.shift.dtype), np.ones(n.scale.shape, n.scale.dtype))
        for n in norms
    )


def initial_state(model):
    """The non-trainable state a fresh ``model`` starts from (numpy; ``()`` if none).

    ``model`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves (see
    :func:`pipeline.nn.model_shapes`); nothing is compiled. A network with state
    defines ``initial_state()``.
    """
    make = getattr(model, "initial_state", None)
    return make() if callable(make) else ()
