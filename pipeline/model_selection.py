"""Search, cross-validation and nested CV as one lazily merged dask graph.

Candidates x folds (x outer folds) are one graph of content-keyed tasks: a
Pipeline prefix with the same parameters on the same fold is fitted once, each
fold is selected once, and the graph is computed once on the active dask
scheduler (threads, processes, synchronous or a ``distributed.Client``).
"""

from pipeline._adaptive import HyperbandSearchCV, SuccessiveHalvingSearchCV
from pipeline._crossval import (
    NestedCVResults,
    cross_val_score,
    cross_validate,
    nested_cross_validate,
)
from pipeline._search import GridSearchCV, RandomizedSearchCV

__all__ = [
    "GridSearchCV",
    "HyperbandSearchCV",
    "NestedCVResults",
    "RandomizedSearchCV",
    "SuccessiveHalvingSearchCV",
    "cross_val_score",
    "cross_validate",
    "nested_cross_validate",
]
