"""Your own equinox module inside the engine.

A user's module follows equinox's convention: it is called on *one* sample,
``module(x, key=None) -> output``, with ``x`` of the sample's shape and an
output of ``n_outputs`` values. :class:`Wrapped` maps it over a mini-batch
(``vmap``), with one dropout key per sample while training, and switches
equinox's ``Dropout`` layers to inference mode otherwise.
"""

from __future__ import annotations

import inspect
import math

import equinox as eqx
import jax

__all__ = ["Ref", "Wrapped", "wrap_module"]


class Ref:
    """Hashable by identity: lets a user's module or builder key the compile caches."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, Ref) and other.obj is self.obj

    def __repr__(self):
        return f"Ref({self.obj!r})"


def _takes_key(module):
    try:
        params = inspect.signature(module).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


class Wrapped(eqx.Module):
    """A per-sample equinox module as a batch network of this package."""

    module: eqx.Module
    takes_key: bool = eqx.field(static=True)

    def __init__(self, module):
        self.module, self.takes_key = module, _takes_key(module)

    def __call__(self, x, state, *, key=None, train=False, weight=None):
        module = eqx.nn.inference_mode(self.module, value=not train)
        if train and key is not None and self.takes_key:
            keys = jax.random.split(key, x.shape[0])
            out = jax.vmap(lambda xi, ki: module(xi, key=ki))(x, keys)
        else:
            out = jax.vmap(module)(x)
        return out.reshape(x.shape[0], -1), state


def wrap_module(module, sample_shape, n_outputs, *, key):
    """Build the user's network: ``module`` is an equinox module (used as it is) or a
    callable ``module(in_size, n_outputs, *, key)``; ``in_size`` is the number of
    features for flat samples, else the sample shape."""
    if isinstance(module, Ref):
        module = module.obj
    if not isinstance(module, eqx.Module):
        in_size = sample_shape[0] if len(sample_shape) == 1 else tuple(sample_shape)
        module = module(in_size, n_outputs, key=key)
        if not isinstance(module, eqx.Module):
            raise TypeError(
                f"the module builder must return an equinox Module, got {type(module).__name__}"
            )
    wrapped = Wrapped(module)
    out = eqx.filter_eval_shape(
        lambda m: m(jax.ShapeDtypeStruct((2, *sample_shape), float), (), train=False), wrapped
    )[0]
    if math.prod(out.shape[1:]) != n_outputs:
        raise ValueError(
            f"the module maps one sample of shape {tuple(sample_shape)} to "
            f"{math.prod(out.shape[1:])} values (shape {out.shape[1:]}), but the targets "
            f"need {n_outputs} outputs"
        )
    return wrapped
