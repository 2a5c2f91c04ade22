"""Recurrent networks: stacked (bidirectional) LSTM, GRU or simple cells, many-to-one.

Called on a whole mini-batch of sequences of shape ``(batch, T, F)`` (flat
samples ``(batch, T)`` are univariate sequences). Each layer projects the inputs
of all time steps in one matrix product, then a ``lax.scan`` runs the recurrence
over time on the whole batch. The cells' parameters are equinox's
``LSTMCell`` / ``GRUCell`` (same layout and gate order, same initialisation).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from pipeline.nn._mlp import ACTIVATIONS, MLP

__all__ = ["CELLS", "RNN"]


class SimpleCell(eqx.Module):
    """Elman cell ``h' = tanh(W_ih x + W_hh h + b)``, initialised as equinox's cells."""

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array

    def __init__(self, input_size, hidden_size, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        lim = hidden_size**-0.5
        u = lambda k, shape: jax.random.uniform(k, shape, minval=-lim, maxval=lim)  # noqa: E731
        self.weight_ih = u(k1, (hidden_size, input_size))
        self.weight_hh = u(k2, (hidden_size, hidden_size))
        self.bias = u(k3, (hidden_size,))


CELLS = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell, "simple": SimpleCell}


def _make_cell(kind, input_size, hidden_size, key):
    """A cell initialised as equinox does, except that an LSTM's forget gate starts
    with bias 1 (Jozefowicz et al., 2015; Keras's ``unit_forget_bias``): it remembers
    from the start, and learns long dependencies sooner."""
    cell = CELLS[kind](input_size, hidden_size, key=key)
    if kind != "lstm":
        return cell
    forget = slice(hidden_size, 2 * hidden_size)  # gate order i, f, g, o
    return eqx.tree_at(lambda c: c.bias, cell, cell.bias.at[forget].add(1.0))


def _lstm_step(cell, carry, xw):
    h, c = carry
    i, f, g, o = jnp.split(xw + h @ cell.weight_hh.T, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_step(cell, h, xw):
    r_x, z_x, n_x = jnp.split(xw, 3, axis=-1)
    r_h, z_h, n_h = jnp.split(h @ cell.weight_hh.T, 3, axis=-1)
    reset, update = jax.nn.sigmoid(r_x + r_h), jax.nn.sigmoid(z_x + z_h)
    new = jnp.tanh(n_x + reset * (n_h + cell.bias_n))
    h = new + update * (h - new)
    return h, h


def _simple_step(cell, h, xw):
    h = jnp.tanh(xw + h @ cell.weight_hh.T)
    return h, h


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "simple": _simple_step}
_FULL_UNROLL = 32  # sequences up to this long run as straight-line code


def _run(kind, cell, xs, reverse):
    """All hidden states of ``cell`` over time-major ``xs`` (T, batch, F): (T, batch, H)."""
    hidden = cell.weight_hh.shape[1]
    xw = xs @ cell.weight_ih.T + cell.bias  # every time step's input projection at once
    h0 = jnp.zeros((xs.shape[1], hidden), xs.dtype)
    carry = (h0, h0) if kind == "lstm" else h0
    step = functools.partial(_STEPS[kind], cell)
    # unrolled: XLA's CPU kernels run slower inside a loop (2x for float64 here)
    unroll = True if xs.shape[0] <= _FULL_UNROLL else 8
    _, hs = jax.lax.scan(step, carry, xw, reverse=reverse, unroll=unroll)
    return hs


class RNN(eqx.Module):
    """Stacked recurrent layers read to the end, then an MLP head on the last state.

    Parameters
    ----------
    n_features : int
        Features per time step.
    cell : {'lstm', 'gru', 'simple'}
    hidden_size : int
        Units of every recurrent layer (per direction).
    num_layers : int
    bidirectional : bool
        Also read each sequence backwards; the directions' states are concatenated.
    dense_layers : tuple of int
        Hidden units of the head between the last state and the outputs.
    n_outputs : int
    activation : str
        The head's hidden activation.
    dropout : float
        Drop probability between recurrent layers and in the head (training only).
    key : jax.random key

    Call with ``x`` of shape (batch, T, n_features) or (batch, T); returns
    (batch, n_outputs) and the (empty) state.
    """

    cells: tuple
    head: MLP
    drop: eqx.nn.Dropout
    kind: str = eqx.field(static=True)

    def __init__(
        self,
        n_features,
        cell,
        hidden_size,
        num_layers,
        bidirectional,
        dense_layers,
        n_outputs,
        *,
        activation="tanh",
        dropout=0.0,
        key,
    ):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        directions = 2 if bidirectional else 1
        keys = jax.random.split(key, num_layers * directions + 1)
        sizes = [n_features] + [hidden_size * directions] * (num_layers - 1)
        self.cells = tuple(
            tuple(
                _make_cell(cell, size, hidden_size, keys[layer * directions + d])
                for d in range(directions)
            )
            for layer, size in enumerate(sizes)
        )
        self.head = MLP(
            hidden_size * directions,
            tuple(dense_layers),
            n_outputs,
            activation=activation,
            dropout=dropout,
            key=keys[-1],
        )
        self.drop = eqx.nn.Dropout(float(dropout))
        self.kind = cell

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        if x.ndim == 2:
            x = x[..., None]
        xs = jnp.swapaxes(x, 0, 1)  # time-major
        dropping = train and key is not None and self.drop.p > 0
        keys = (
            jax.random.split(key, len(self.cells) + 1)
            if key is not None
            else [None] * (len(self.cells) + 1)
        )
        for i, layer in enumerate(self.cells):
            if i and dropping:
                xs = self.drop(xs, key=keys[i])
            runs = [_run(self.kind, cell, xs, reverse=d == 1) for d, cell in enumerate(layer)]
            xs = jnp.concatenate(runs, axis=-1)
        hidden = self.cells[-1][0].weight_hh.shape[1]
        last = xs[-1, :, :hidden]  # many-to-one: the forward direction's state at the end,
        if len(self.cells[-1]) > 1:  # the backward direction's at the start
            last = jnp.concatenate([last, xs[0, :, hidden:]], axis=-1)
        return self.head(last, state, key=keys[-1], train=train, weight=weight)

    def initial_state(self):
        return self.head.initial_state()
