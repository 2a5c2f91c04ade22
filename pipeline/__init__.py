"""pipeline: out-of-core, lazy-evaluation machine learning.

Chunked Zarr / memmap stores (:mod:`pipeline.store`), chunk streams for training
(:mod:`pipeline.stream`), readers (:mod:`pipeline.sources`) and named datasets
(:mod:`pipeline.datasets`), scikit-learn estimators on JAX networks
(MLPs, CNNs, RNNs, autoencoders, wide & deep and your own equinox modules) saved
and loaded as Zarr groups (:func:`load`), and searches / nested cross-validation as
one merged dask graph (:mod:`pipeline.model_selection`), data-parallel training
on a dask cluster by parameter averaging (:mod:`pipeline.parallel`), and a
scikit-learn :class:`Pipeline` that stays out of core (:func:`make_pipeline`).
"""

from pipeline import datasets, estimators, model_selection, nn, parallel, sources, store, stream
from pipeline._pipeline import Pipeline, make_pipeline
from pipeline.checkpoint import load
from pipeline.estimators import (
    AutoEncoder,
    CNNClassifier,
    CNNRegressor,
    MLPClassifier,
    MLPRegressor,
    NeuralNetClassifier,
    NeuralNetRegressor,
    RNNClassifier,
    RNNRegressor,
    WideDeepClassifier,
    WideDeepRegressor,
)

__version__ = "0.1.0"

__all__ = [
    "AutoEncoder",
    "CNNClassifier",
    "CNNRegressor",
    "MLPClassifier",
    "MLPRegressor",
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "Pipeline",
    "RNNClassifier",
    "RNNRegressor",
    "WideDeepClassifier",
    "WideDeepRegressor",
    "datasets",
    "estimators",
    "load",
    "make_pipeline",
    "model_selection",
    "parallel",
    "nn",
    "sources",
    "store",
    "stream",
    "__version__",
]
