"""scikit-learn estimators on JAX networks that train out-of-core from stores."""

from pipeline._estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
