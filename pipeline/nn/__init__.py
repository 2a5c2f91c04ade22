"""Networks and training steps: equinox modules, optax optimizers, jitted chunk steps.

Nothing in here knows about scikit-learn; the estimators in
:mod:`pipeline.estimators` are built on top of it.
"""

from pipeline.nn._autoencoder import AutoEncoderNet
from pipeline.nn._cnn import CNN, sample_shape
from pipeline.nn._custom import Wrapped, wrap_module
from pipeline.nn._mlp import ACTIVATIONS, MLP, BatchNorm, NormStats, initial_state
from pipeline.nn._optim import (
    OPTIMIZERS,
    SCHEDULES,
    current_learning_rate,
    make_optimizer,
    make_schedule,
    set_learning_rate,
)
from pipeline.nn._rnn import CELLS, RNN
from pipeline.nn._train import (
    LOSSES,
    OUTPUT_ACTIVATIONS,
    as_structure,
    build,
    compiled_forward,
    compiled_init,
    compiled_objective,
    compiled_step,
    model_shapes,
    penalty,
)
from pipeline.nn._widedeep import WideDeep

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "CNN",
    "RNN",
    "AutoEncoderNet",
    "WideDeep",
    "Wrapped",
    "LOSSES",
    "MLP",
    "OPTIMIZERS",
    "OUTPUT_ACTIVATIONS",
    "SCHEDULES",
    "BatchNorm",
    "NormStats",
    "as_structure",
    "build",
    "compiled_forward",
    "compiled_init",
    "compiled_objective",
    "compiled_step",
    "current_learning_rate",
    "initial_state",
    "make_optimizer",
    "make_schedule",
    "model_shapes",
    "penalty",
    "sample_shape",
    "set_learning_rate",
    "wrap_module",
]
