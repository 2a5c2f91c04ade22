"""scikit-learn's own estimator checks, for every estimator, default parameters."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from pipeline import estimators

ESTIMATORS = [getattr(estimators, name)() for name in estimators.__all__]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
