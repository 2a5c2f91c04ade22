"""Jitted training steps, forward passes and full-batch objectives.

A step trains on one stream chunk: a ``lax.scan`` over its mini-batches, pure
in and out::

    params, state, opt_state, key, metrics = step(
        params, state, opt_state, key, X, Y, mask, hyper)

``X`` has shape (n_batches, batch_size, *features), any numeric dtype (cast
to the parameters' dtype inside); ``Y`` (n_batches,
batch_size, n_targets + 1), its last column the sample weights; ``mask`` is
False on padding, and a batch that is all padding changes nothing (the optimizer
step count included). ``hyper`` is ``(alpha, l1)``, traced, so a search over
them reuses one compiled step. ``metrics`` holds the chunk's summed loss, its
sample count and whether all of ``X`` was finite. Builders are cached on their (hashable)
configuration, so every fit with the same shapes and configuration reuses the
compiled code.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from pipeline.nn._optim import make_optimizer, make_schedule

__all__ = [
    "LOSSES",
    "OUTPUT_ACTIVATIONS",
    "as_structure",
    "build",
    "compiled_forward",
    "compiled_init",
    "compiled_objective",
    "compiled_step",
    "model_shapes",
    "penalty",
]


def _weighted_mean(per_sample, w):
    return (per_sample * w).sum() / jnp.maximum(w.sum(), 1e-12)


def _softmax_loss(out, y, w):
    labels = y[..., 0].astype(jnp.int32)
    return _weighted_mean(optax.softmax_cross_entropy_with_integer_labels(out, labels), w)


def _sigmoid_loss(out, y, w):
    return _weighted_mean(optax.sigmoid_binary_cross_entropy(out, y).sum(-1), w)


def _squared_error(out, y, w):
    return _weighted_mean(0.5 * ((out - y) ** 2).mean(-1), w)


def _poisson(out, y, w):
    """Half the Poisson deviance with a log link: ``out`` is log(mean)."""
    dev = jax.scipy.special.xlogy(y, y) - y - y * out + jnp.exp(out)
    return _weighted_mean(dev.sum(-1), w)


LOSSES = {
    "softmax": _softmax_loss,
    "logistic": _sigmoid_loss,
    "identity": _squared_error,
    "exp": _poisson,
    "reconstruct": _squared_error,
}
"""Loss by output activation: log-loss for softmax / logistic, squared error for identity,
Poisson deviance for exp; ``reconstruct`` (autoencoders) is the squared error between
the output and the (clean) input."""

OUTPUT_ACTIVATIONS = {
    "softmax": jax.nn.softmax,
    "logistic": jax.nn.sigmoid,
    "identity": lambda x: x,
    "exp": jnp.exp,
    "reconstruct": lambda x: x,
}


def penalty(params, alpha, l1):
    """``0.5 * alpha * ||W||^2 + l1 * |W|_1`` over the weight matrices (ndim >= 2)."""
    weights = [w for w in jax.tree_util.tree_leaves(params) if w.ndim >= 2]
    l2 = sum(jnp.vdot(w, w) for w in weights)
    return 0.5 * alpha * l2 + l1 * sum(jnp.abs(w).sum() for w in weights)


def _is_shape(x):
    return isinstance(x, jax.ShapeDtypeStruct)


@functools.lru_cache(maxsize=128)
def _shapes(factory, model_kwargs, float_dtype):
    abstract = eqx.filter_eval_shape(
        lambda key: factory(**dict(model_kwargs), key=key), jax.random.key(0)
    )
    return eqx.partition(abstract, _is_shape)


def model_shapes(factory, model_kwargs):
    """(parameter shapes, static skeleton) of ``factory(**model_kwargs, key=...)``.

    Traced abstractly (``eval_shape``): nothing runs and nothing compiles. The
    shapes are a pytree of ``jax.ShapeDtypeStruct`` with the structure of the
    parameters.
    """
    return _shapes(factory, model_kwargs, jax.dtypes.canonicalize_dtype(float))


@functools.lru_cache(maxsize=64)
def _init_fn(factory, model_kwargs, float_dtype):
    def init(key):
        model = factory(**dict(model_kwargs), key=key)
        return jax.tree_util.tree_leaves(eqx.partition(model, eqx.is_array)[0])

    return jax.jit(init)


def as_structure(params, factory, model_kwargs):
    """``params`` (the same leaves) in the structure of :func:`model_shapes`.

    A factory that defines its classes as it runs (a user's builder with a class
    inside) makes a new class at every call: the arrays must then take the
    skeleton's classes before ``eqx.combine`` pairs them.
    """
    treedef = jax.tree_util.tree_structure(model_shapes(factory, model_kwargs)[0])
    return jax.tree_util.tree_unflatten(treedef, jax.tree_util.tree_leaves(params))


def build(factory, model_kwargs, key):
    """``factory(**model_kwargs, key=key)`` split into (arrays, static skeleton).

    The initialisation runs as one compiled call, cached per configuration.
    """
    init = _init_fn(factory, model_kwargs, jax.dtypes.canonicalize_dtype(float))
    return as_structure(init(key), factory, model_kwargs), model_shapes(factory, model_kwargs)[1]


def _skeleton(factory, model_kwargs):
    """``combine(params) -> model``: the arrays put into the static skeleton, in the
    skeleton's structure (see :func:`as_structure`)."""
    shapes, static = model_shapes(factory, model_kwargs)
    treedef = jax.tree_util.tree_structure(shapes)

    def combine(params):
        params = jax.tree_util.tree_unflatten(treedef, jax.tree_util.tree_leaves(params))
        return eqx.combine(params, static)

    return combine


@functools.lru_cache(maxsize=64)
def compiled_init(optimizer_kwargs, schedule_kwargs):
    """The jitted ``init`` of the optimizer :func:`compiled_step` uses (same keys)."""
    optimizer = make_optimizer(
        **dict(optimizer_kwargs), learning_rate=make_schedule(**dict(schedule_kwargs))
    )
    return jax.jit(optimizer.init)


def _batch_loss(combine, out_activation):
    loss = LOSSES[out_activation]

    def f(params, state, x, y, mask, key, hyper):
        model = combine(params)
        w = y[..., -1] * mask
        out, state = model(x, state, key=key, train=True, weight=w)
        n = jnp.maximum(w.sum(), 1e-12)
        target = x.reshape(out.shape) if out_activation == "reconstruct" else y[..., :-1]
        return loss(out, target, w) + penalty(params, *hyper) / n, state

    return f


@functools.lru_cache(maxsize=64)
def compiled_step(
    factory, model_kwargs, out_activation, optimizer_kwargs, schedule_kwargs, scan=True
):
    """The jitted chunk step for one configuration (all arguments hashable).

    ``optimizer_kwargs`` and ``schedule_kwargs`` are sorted ``(name, value)``
    tuples for :func:`make_optimizer` and :func:`make_schedule`. A constant
    learning rate is read from the optimizer state, so it need not be part of
    the key: pass the state from ``make_optimizer(...).init(params)``.

    ``scan=False`` compiles a step without control flow for chunks of one
    mini-batch (``X`` of shape (1, batch_size, ...)): XLA's CPU convolutions run
    3-12x slower inside a loop or a conditional, so convolutional networks take
    one call per mini-batch instead.
    """
    loss_fn = _batch_loss(_skeleton(factory, model_kwargs), out_activation)
    optimizer = make_optimizer(
        **dict(optimizer_kwargs), learning_rate=make_schedule(**dict(schedule_kwargs))
    )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(hyper, carry, batch):
        params, state, opt_state, key = carry
        x, y, mask = batch
        key, sub = jax.random.split(key)

        def update(_):
            (loss, new_state), grads = grad_fn(params, state, x, y, mask, sub, hyper)
            updates, new_opt = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_state, new_opt, loss

        def skip(_):
            return (
                params,
                state,
                opt_state,
                jnp.zeros((), jax.tree_util.tree_leaves(params)[0].dtype),
            )

        if scan:
            params, state, opt_state, loss = jax.lax.cond(mask.any(), update, skip, None)
        else:  # the same choice as a select: no control flow around the network
            chosen = jax.tree_util.tree_map(
                lambda a, b: jnp.where(mask.any(), a, b), update(None), skip(None)
            )
            params, state, opt_state, loss = chosen
        return (params, state, opt_state, key), (loss, mask.sum())

    def step(params, state, opt_state, key, X, Y, mask, hyper):
        X = X.astype(jax.tree_util.tree_leaves(params)[0].dtype)  # stores may hold uint8
        carry = (params, state, opt_state, key)
        if scan:
            carry, (losses, counts) = jax.lax.scan(
                functools.partial(one, hyper), carry, (X, Y, mask), unroll=2
            )
        else:
            carry, (loss, count) = one(hyper, carry, (X[0], Y[0], mask[0]))
            losses, counts = loss[None], count[None]
        metrics = {
            "loss_sum": (losses * counts).sum(),
            "count": counts.sum(),
            "finite": jnp.isfinite(X).all(),  # fused into the read of X: costs nothing
        }
        return (*carry, metrics)

    return jax.jit(step, donate_argnums=(0, 1, 2))


@functools.lru_cache(maxsize=64)
def compiled_forward(factory, model_kwargs, out_activation, method=None):
    """Jitted inference: (params, state, X of shape (n, *features)) -> (n, n_outputs).

    ``method``: call this method of the network instead, ``method(X, state) -> (n, k)``
    (e.g. an autoencoder's ``encode``); no output activation is applied.
    """
    combine = _skeleton(factory, model_kwargs)
    act = OUTPUT_ACTIVATIONS[out_activation]

    def forward(params, state, X):
        model = combine(params)
        if method is not None:
            return getattr(model, method)(X, state)
        return act(model(X, state, train=False)[0])

    return jax.jit(forward)


@functools.lru_cache(maxsize=64)
def compiled_objective(factory, model_kwargs, out_activation):
    """Jitted full-batch loss and gradient (for L-BFGS): returns ((loss, state), grads)."""
    loss_fn = _batch_loss(_skeleton(factory, model_kwargs), out_activation)

    def objective(params, state, X, Y, mask, hyper):
        return jax.value_and_grad(loss_fn, has_aux=True)(params, state, X, Y, mask, None, hyper)

    return jax.jit(objective)
