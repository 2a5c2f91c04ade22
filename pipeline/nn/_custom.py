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


def _stateful_layers(module):
    """Where ``module`` holds equinox state (``eqx.nn.StateIndex``: BatchNorm,
    SpectralNorm): key paths such as ``.bn``."""
    found = jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex)
    )[0]
    paths = [
        jax.tree_util.keystr(p[:-1]) for p, leaf in found if isinstance(leaf, eqx.nn.StateIndex)
    ]
    return list(dict.fromkeys(p or "the module itself" for p in paths))


def _check_stateless(module):
    where = _stateful_layers(module)
    if where:
        raise TypeError(
            f"the module ({type(module).__name__}) holds equinox layers with state at "
            f"{', '.join(where)} (eqx.nn.BatchNorm, or another layer with an eqx.nn.StateIndex), "
            "which NeuralNetClassifier / NeuralNetRegressor do not thread through training. "
            "Use a stateless normalisation (eqx.nn.LayerNorm, eqx.nn.GroupNorm), or "
            "MLPClassifier / CNNClassifier with batch_norm=True"
        )


def _build(builder, in_size, n_outputs, key):
    """Call the user's ``builder(in_size, n_outputs, *, key)``, checking its signature."""
    try:
        inspect.signature(builder).bind(in_size, n_outputs, key=key)
    except TypeError as e:
        raise TypeError(
            f"module must be an equinox Module or a builder callable as "
            f"module(in_size, n_outputs, *, key); {builder!r} cannot be ({e})"
        ) from e
    except ValueError:
        pass  # no signature to inspect (a builtin): call it and see
    module = builder(in_size, n_outputs, key=key)
    if not isinstance(module, eqx.Module):
        raise TypeError(
            f"the module builder must return an equinox Module, got {type(module).__name__}"
        )
    return module


def _output_shape(wrapped, sample_shape):
    """The shape of the wrapped module's output on a batch of two samples (traced)."""
    batch = jax.ShapeDtypeStruct((2, *sample_shape), float)
    try:
        return eqx.filter_eval_shape(lambda m: m(batch, (), train=False), wrapped)[0].shape
    except Exception as e:
        raise ValueError(
            f"the module failed on one sample of shape {tuple(sample_shape)} "
            f"({type(e).__name__}: {e}); it is called as module(x) on one sample x "
            "(mapped over the batch with jax.vmap), and must accept that shape"
        ) from e


def wrap_module(module, sample_shape, n_outputs, *, key):
    """Build the user's network: ``module`` is an equinox module (used as it is) or a
    callable ``module(in_size, n_outputs, *, key)``; ``in_size`` is the number of
    features for flat samples, else the sample shape."""
    if isinstance(module, Ref):
        module = module.obj
    if not isinstance(module, eqx.Module):
        in_size = sample_shape[0] if len(sample_shape) == 1 else tuple(sample_shape)
        module = _build(module, in_size, n_outputs, key)
    _check_stateless(module)
    wrapped = Wrapped(module)
    shape = _output_shape(wrapped, sample_shape)
    if math.prod(shape[1:]) != n_outputs:
        raise ValueError(
            f"the module maps one sample of shape {tuple(sample_shape)} to "
            f"{math.prod(shape[1:])} values (shape {shape[1:]}), but the targets "
            f"need {n_outputs} outputs"
        )
    return wrapped
