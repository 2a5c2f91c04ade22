"""Autoencoders: an MLP encoder to a linear code and a mirrored MLP decoder.

Called on a whole mini-batch of flat samples ``(batch, n_features)``; returns the
reconstruction. With ``denoising > 0`` training corrupts the input by zeroing
that fraction of its values (Vincent et al.'s masking noise) and learns to
restore the clean input.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from pipeline.nn._mlp import MLP

__all__ = ["AutoEncoderNet"]


class AutoEncoderNet(eqx.Module):
    """``decoder(encoder(x))`` with ``encoder``: n_features → hidden... → code_size.

    Parameters
    ----------
    n_features : int
    hidden : tuple of int
        Hidden units of the encoder, outermost first; the decoder mirrors them.
    code_size : int
        Units of the code (linear, no activation).
    activation, dropout, batch_norm
        As :class:`MLP`, for both halves.
    denoising : float
        Fraction of input values zeroed while training.
    key : jax.random key
    """

    encoder: MLP
    decoder: MLP
    denoising: float = eqx.field(static=True)

    def __init__(
        self,
        n_features,
        hidden,
        code_size,
        *,
        activation,
        dropout=0.0,
        batch_norm=False,
        denoising=0.0,
        key,
    ):
        k1, k2 = jax.random.split(key)
        common = dict(activation=activation, dropout=dropout, batch_norm=batch_norm)
        self.encoder = MLP(n_features, tuple(hidden), code_size, key=k1, **common)
        self.decoder = MLP(code_size, tuple(reversed(hidden)), n_features, key=k2, **common)
        self.denoising = float(denoising)

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        keys = jax.random.split(key, 3) if key is not None else (None,) * 3
        if train and keys[0] is not None and self.denoising > 0:
            x = jnp.where(jax.random.bernoulli(keys[0], self.denoising, x.shape), 0, x)
        code, enc = self.encoder(x, state[0], key=keys[1], train=train, weight=weight)
        out, dec = self.decoder(code, state[1], key=keys[2], train=train, weight=weight)
        return out, (enc, dec)

    def encode(self, x, state):
        """The code of ``x``: (batch, code_size) (inference)."""
        return self.encoder(x, state[0])[0]

    def decode(self, code, state):
        """Reconstructions of codes (batch, code_size): (batch, n_features) (inference)."""
        return self.decoder(code, state[1])[0]

    def errors(self, x, state):
        """Mean squared reconstruction error of each sample: (batch, 1) (inference)."""
        out = self(x, state)[0]
        return ((out - x.reshape(out.shape)) ** 2).mean(-1, keepdims=True)

    def initial_state(self):
        return self.encoder.initial_state(), self.decoder.initial_state()
