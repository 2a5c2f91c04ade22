"""Optimizers and learning-rate schedules, all optax.

:func:`make_optimizer` returns an optax ``GradientTransformation`` whose
learning rate sits in its state (``optax.inject_hyperparams``), so a policy
outside the jitted step (scikit-learn's ``learning_rate="adaptive"``) can lower
it between epochs without recompiling, and the current value can be read back
with :func:`current_learning_rate`.
"""

from __future__ import annotations

import numpy as np
import optax

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "current_learning_rate",
    "make_optimizer",
    "make_schedule",
    "set_learning_rate",
]

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop")
SCHEDULES = ("constant", "invscaling", "adaptive", "step", "exponential", "cosine")


def make_schedule(
    kind,
    learning_rate_init,
    *,
    steps_per_epoch,
    total_steps,
    power_t=0.5,
    batch_size=1,
    decay=0.5,
    decay_epochs=5,
    warmup_steps=0,
):
    """A learning-rate schedule: step count -> learning rate, or a float if constant.

    ``invscaling`` follows scikit-learn (``lr / (t + 1) ** power_t`` with ``t``
    the samples seen, here ``step * batch_size``); ``step`` multiplies by
    ``decay`` every ``decay_epochs`` epochs; ``exponential`` does so smoothly;
    ``cosine`` decays to zero over ``total_steps``. ``warmup_steps`` > 0 ramps
    linearly from zero first. ``constant`` and ``adaptive`` give a float.
    """
    lr = float(learning_rate_init)
    if kind in ("constant", "adaptive"):
        sched = lr
    elif kind == "invscaling":
        sched = lambda count: lr / (count * batch_size + 1.0) ** power_t  # noqa: E731
    elif kind in ("step", "exponential"):
        sched = optax.exponential_decay(
            lr,
            transition_steps=max(1, decay_epochs * steps_per_epoch),
            decay_rate=decay,
            staircase=kind == "step",
        )
    elif kind == "cosine":
        sched = optax.cosine_decay_schedule(lr, decay_steps=max(1, total_steps - warmup_steps))
    else:
        raise ValueError(f"learning_rate must be one of {SCHEDULES}, got {kind!r}")
    if warmup_steps > 0:
        body = sched if callable(sched) else optax.constant_schedule(sched)
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup_steps), body], [warmup_steps]
        )
    return sched


def _base(name, learning_rate, *, momentum, nesterov, beta_1, beta_2, epsilon, weight_decay):
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov)
    if name == "adam":
        return optax.adam(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon)
    if name == "adamw":
        return optax.adamw(
            learning_rate, b1=beta_1, b2=beta_2, eps=epsilon, weight_decay=weight_decay
        )
    if name == "adagrad":
        return optax.adagrad(learning_rate)
    if name == "adadelta":
        return optax.adadelta(learning_rate)
    if name == "rmsprop":
        return optax.rmsprop(
            learning_rate, eps=epsilon, momentum=momentum or None, nesterov=nesterov
        )
    raise ValueError(f"solver must be one of {OPTIMIZERS}, got {name!r}")


def make_optimizer(
    name,
    learning_rate,
    *,
    momentum=0.9,
    nesterov=True,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
    weight_decay=0.0,
    clip_norm=None,
):
    """An optax optimizer by name, with its learning rate injected into its state.

    Parameters
    ----------
    name : {"sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop"}
    learning_rate : float or callable
        A float, or a schedule from :func:`make_schedule`.
    momentum, nesterov : SGD's (and RMSProp's) momentum.
    beta_1, beta_2, epsilon : Adam's (and AdamW's) moments and numerical floor; the
        other optimizers keep optax's defaults.
    weight_decay : float
        AdamW's decoupled weight decay.
    clip_norm : float, optional
        Clip gradients to this global norm first.
    """

    def build(learning_rate):
        opt = _base(
            name,
            learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            weight_decay=weight_decay,
        )
        return opt if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), opt)

    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


def current_learning_rate(opt_state):
    """The learning rate the optimizer used last (a float)."""
    return float(opt_state.hyperparams["learning_rate"])


def set_learning_rate(opt_state, value):
    """A copy of ``opt_state`` whose (constant) learning rate is ``value``."""
    old = np.asarray(opt_state.hyperparams["learning_rate"])
    hyper = dict(opt_state.hyperparams, learning_rate=np.asarray(value, dtype=old.dtype))
    return opt_state._replace(hyperparams=hyper)
