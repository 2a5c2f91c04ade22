"""Wide & deep networks (Cheng et al., 2016) on tables of dense and categorical columns.

The wide part is a linear model on the dense columns, on one-hot categorical
columns and on their crosses (memorisation); the deep part is an MLP on the
dense columns and a learned embedding of every categorical column
(generalisation). Their outputs are summed.

Categorical columns arrive as integer codes ``0..k`` (``0``: a value not seen in
training); the estimator encodes raw values into codes before the network.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from pipeline.nn._mlp import MLP

__all__ = ["WideDeep", "cross_size"]


def cross_size(cardinalities, buckets):
    """Number of wide weights of a cross of columns with these cardinalities: their
    product, hashed into ``buckets`` when larger."""
    return min(math.prod(cardinalities), buckets)


class WideDeep(eqx.Module):
    """Sum of a wide linear model and a deep MLP over embeddings.

    Parameters
    ----------
    n_features : int
        Columns of the table.
    categorical : tuple of int
        Positions of the categorical columns (holding codes ``0..cardinality-1``).
    cardinalities : tuple of int
        Codes per categorical column, the unknown code 0 included.
    crosses : tuple of tuple of int
        Crossed columns of the wide part, as positions in ``categorical``.
    hash_buckets : int
        Largest number of wide weights of one cross (more combinations share them).
    embedding_dim : int
    hidden : tuple of int
        Hidden units of the deep part.
    n_outputs : int
    activation, dropout, batch_norm
        As :class:`MLP`, for the deep part.
    key : jax.random key

    Call with ``x`` of shape (batch, n_features); returns (batch, n_outputs).
    """

    wide_dense: eqx.nn.Linear
    wide_tables: tuple
    embeddings: tuple
    deep: MLP
    categorical: tuple = eqx.field(static=True)
    dense: tuple = eqx.field(static=True)
    cardinalities: tuple = eqx.field(static=True)
    crosses: tuple = eqx.field(static=True)
    hash_buckets: int = eqx.field(static=True)

    def __init__(
        self,
        n_features,
        categorical,
        cardinalities,
        crosses,
        hash_buckets,
        embedding_dim,
        hidden,
        n_outputs,
        *,
        activation,
        dropout=0.0,
        batch_norm=False,
        key,
    ):
        self.categorical, self.cardinalities = tuple(categorical), tuple(cardinalities)
        self.dense = tuple(i for i in range(n_features) if i not in set(categorical))
        self.crosses, self.hash_buckets = tuple(tuple(c) for c in crosses), int(hash_buckets)
        k_wide, k_emb, k_deep = jax.random.split(key, 3)
        self.wide_dense = eqx.nn.Linear(len(self.dense), n_outputs, key=k_wide)
        self.wide_dense = eqx.tree_at(
            lambda lin: (lin.weight, lin.bias),
            self.wide_dense,
            (jnp.zeros_like(self.wide_dense.weight), jnp.zeros_like(self.wide_dense.bias)),
        )
        sizes = list(self.cardinalities) + [
            cross_size([self.cardinalities[j] for j in c], self.hash_buckets) for c in self.crosses
        ]
        self.wide_tables = tuple(jnp.zeros((s, n_outputs)) for s in sizes)
        keys = jax.random.split(k_emb, max(len(self.categorical), 1))
        self.embeddings = tuple(
            jax.random.normal(k, (card, embedding_dim)) / math.sqrt(embedding_dim)
            for k, card in zip(keys, self.cardinalities, strict=False)
        )
        self.deep = MLP(
            len(self.dense) + len(self.categorical) * embedding_dim,
            tuple(hidden),
            n_outputs,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            key=k_deep,
        )

    def _codes(self, x):
        """Integer codes (batch, n_categorical), out-of-range values as unknown (0)."""
        cols = [x[:, j] for j in self.categorical]
        codes = [
            jnp.where((c >= 0) & (c < card), c, 0).astype(jnp.int32)
            for c, card in zip(cols, self.cardinalities, strict=True)
        ]
        return codes

    def _cross(self, codes, cross):
        index = jnp.zeros_like(codes[0])
        for j in cross:  # mixed radix, reduced as it goes: exact below hash_buckets
            index = (index * self.cardinalities[j] + codes[j]) % self.hash_buckets
        return index

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        dense = x[:, list(self.dense)]
        codes = self._codes(x) if self.categorical else []
        indices = codes + [self._cross(codes, c) for c in self.crosses]
        wide = dense @ self.wide_dense.weight.T + self.wide_dense.bias
        for table, index in zip(self.wide_tables, indices, strict=True):
            wide = wide + table[index]
        embedded = [e[c] for e, c in zip(self.embeddings, codes, strict=True)]
        deep, state = self.deep(
            jnp.concatenate([dense, *embedded], axis=1), state, key=key, train=train, weight=weight
        )
        return wide + deep, state

    def initial_state(self):
        return self.deep.initial_state()
