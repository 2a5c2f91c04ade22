"""scikit-learn estimators on JAX networks that train out-of-core from stores."""

from pipeline._autoencoder import AutoEncoder
from pipeline._estimators import MLPClassifier, MLPRegressor
from pipeline._networks import (
    CNNClassifier,
    CNNRegressor,
    NeuralNetClassifier,
    NeuralNetRegressor,
    RNNClassifier,
    RNNRegressor,
)
from pipeline._widedeep import WideDeepClassifier, WideDeepRegressor

__all__ = [
    "AutoEncoder",
    "CNNClassifier",
    "CNNRegressor",
    "MLPClassifier",
    "MLPRegressor",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "RNNClassifier",
    "RNNRegressor",
    "WideDeepClassifier",
    "WideDeepRegressor",
]
