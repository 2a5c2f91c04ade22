"""Convolutional networks: conv / pool blocks, then a fully connected head.

Called on a whole mini-batch in channels-last layout: images of shape
``(batch, H, W, C)``, signals of shape ``(batch, T, C)``; flat samples of shape
``(batch, d)`` are a one-channel signal of length ``d``, or are reshaped to
``input_shape``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from pipeline.nn._mlp import ACTIVATIONS, MLP, BatchNorm, init_bound, init_layer, norm_state

__all__ = ["CNN", "sample_shape"]

# channels last throughout: XLA's CPU convolutions are fastest with (*spatial, in, out)
# kernels, so equinox's (out, in, *spatial) weights are transposed at the call (free).
_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def sample_shape(feature_shape, input_shape=None):
    """The channels-last shape one sample is convolved in.

    ``(d,)`` becomes ``(d, 1)`` (a one-channel signal) unless ``input_shape`` names
    another shape with the same number of values.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or min(input_shape) < 1 or len(input_shape) > 4:
            raise ValueError(
                f"input_shape must hold 1 to 4 positive sizes (channels last), got {input_shape}"
            )
        if math.prod(input_shape) != math.prod(feature_shape):
            raise ValueError(
                f"input_shape={input_shape} holds {math.prod(input_shape)} values, but each "
                f"sample has {math.prod(feature_shape)} (feature shape {feature_shape})"
            )
        return input_shape
    return feature_shape + (1,) if len(feature_shape) == 1 else feature_shape


def _conv(n_spatial, c_in, c_out, kernel, key, activation):
    fan_in = c_in * kernel**n_spatial
    bound = init_bound(fan_in, c_out * kernel**n_spatial, activation)
    return init_layer(
        eqx.nn.Conv, n_spatial, c_in, c_out, kernel, key=key, bound=bound, zero_bias=True
    )


def _pooled(size, pool):
    return -(-size // pool)  # "SAME" pooling keeps the ceiling: nothing shrinks to 0


class CNN(eqx.Module):
    """Convolution blocks (conv, [batch norm], activation, max-pool, [dropout]) and an MLP.

    Parameters
    ----------
    sample_shape : tuple of int
        Channels-last shape of one sample, ``(*spatial, channels)`` with 1 to 3
        spatial dimensions (see :func:`sample_shape`).
    conv_layers : tuple of (filters, kernel_size)
        One block per entry; "same" padding, stride 1.
    pool_size : int
        Max-pooling window and stride after each block (1: no pooling).
    dense_layers : tuple of int
        Hidden units of the fully connected head.
    n_outputs : int
    activation : str
        One of :data:`ACTIVATIONS`.
    dropout : float
        Drop probability after each block and each hidden dense layer (training only).
    batch_norm : bool
        Batch-normalise every conv and hidden dense layer.
    key : jax.random key

    Call with ``x`` of shape (batch, *features) whose values fill ``sample_shape``;
    returns (batch, n_outputs) pre-activations and the updated state.
    """

    convs: tuple
    norms: tuple
    head: MLP
    drop: eqx.nn.Dropout
    sample_shape: tuple = eqx.field(static=True)
    pool_size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        sample_shape,
        conv_layers,
        pool_size,
        dense_layers,
        n_outputs,
        *,
        activation,
        dropout=0.0,
        batch_norm=False,
        key,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        n_spatial = len(sample_shape) - 1
        if n_spatial not in _LAYOUTS:
            raise ValueError(
                f"a CNN takes samples of shape (*spatial, channels) with 1 to 3 spatial "
                f"dimensions, got sample shape {sample_shape}"
            )
        conv_key, head_key = jax.random.split(key)
        keys = jax.random.split(conv_key, max(len(conv_layers), 1))
        spatial, c_in, convs = list(sample_shape[:-1]), sample_shape[-1], []
        for (c_out, kernel), k in zip(conv_layers, keys, strict=False):
            convs.append(_conv(n_spatial, c_in, c_out, kernel, k, activation))
            spatial, c_in = [_pooled(s, pool_size) for s in spatial], c_out
        self.convs = tuple(convs)
        self.norms = tuple(BatchNorm(c) for c, _ in conv_layers) if batch_norm else ()
        self.head = MLP(
            math.prod(spatial) * c_in,
            tuple(dense_layers),
            n_outputs,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            key=head_key,
        )
        self.drop = eqx.nn.Dropout(float(dropout))
        self.sample_shape, self.pool_size, self.activation = (
            tuple(sample_shape),
            pool_size,
            activation,
        )

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        conv_state, head_state = state
        x = x.reshape(x.shape[0], *self.sample_shape)
        act = ACTIVATIONS[self.activation]
        dropping = train and key is not None and self.drop.p > 0
        keys = (
            jax.random.split(key, len(self.convs) + 1)
            if key is not None
            else [None] * (len(self.convs) + 1)
        )
        new_state = []
        for i, conv in enumerate(self.convs):
            x = self._convolve(conv, x)
            if self.norms:
                x, stats = self._normalise(i, x, conv_state[i], train, weight)
                new_state.append(stats)
            x = self._pool(act(x))
            if dropping:
                x = self.drop(x, key=keys[i])
        out, head_state = self.head(
            x.reshape(x.shape[0], -1), head_state, key=keys[-1], train=train, weight=weight
        )
        return out, (tuple(new_state), head_state)

    def _convolve(self, conv, x):
        n_spatial = x.ndim - 2
        kernel = jnp.moveaxis(conv.weight, (0, 1), (-1, -2))  # (*spatial, in, out)
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1,) * n_spatial,
            padding="SAME",
            dimension_numbers=_LAYOUTS[n_spatial],
        )
        return y + conv.bias.reshape(-1)

    def _normalise(self, i, x, stats, train, weight):
        """Per-channel batch norm over the batch and every position."""
        positions = math.prod(x.shape[1:-1])
        w = None if weight is None else jnp.repeat(weight, positions)
        flat, stats = self.norms[i](x.reshape(-1, x.shape[-1]), stats, train=train, weight=w)
        return flat.reshape(x.shape), stats

    def _pool(self, x):
        """Max-pooling, window = stride = ``pool_size``, ragged edges padded ("SAME").

        A reshape and a max rather than ``reduce_window``, whose gradient is several
        times slower on CPU.
        """
        p = self.pool_size
        if p == 1:
            return x
        spatial = x.shape[1:-1]
        pad = [(0, 0)] + [(0, -s % p) for s in spatial] + [(0, 0)]
        x = jnp.pad(x, pad, constant_values=-jnp.inf) if any(h for _, h in pad) else x
        blocks = [d for s in spatial for d in (-(-s // p), p)]
        x = x.reshape(x.shape[0], *blocks, x.shape[-1])
        return x.max(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))

    def initial_state(self):
        return norm_state(self.norms), self.head.initial_state()
