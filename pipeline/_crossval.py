"""Cross-validation and nested CV as one merged dask graph.

With one of our searches as the estimator, ``cross_validate`` is nested CV: the
inner searches of every outer fold, their refits and the outer scores are tasks
of one graph, merged like a single search's.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import check_scoring

from pipeline import _cvgraph as cg
from pipeline._scheduler import run
from pipeline._search import (
    GridSearchCV,
    RandomizedSearchCV,
    _Candidates,
    _MergedSearch,
    _splits,
    _target,
)

__all__ = ["NestedCVResults", "cross_val_score", "cross_validate", "nested_cross_validate"]


class NestedCVResults(dict):
    """``cross_validate``'s dict for a nested CV, with ``params`` (chosen per outer
    fold) and :meth:`report` (outer scores beside the chosen parameters)."""

    def report(self, digits=3):
        """A table: one row per outer fold, its test score(s) and the chosen parameters.

        Parameters
        ----------
        digits : int, default=3
            Decimals of the scores.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        scores = {
            k: np.round(v, digits) for k, v in self.items() if k.startswith(("test_", "train_"))
        }
        table = pd.DataFrame(scores)
        params = pd.DataFrame(list(self["params"]))
        table = pd.concat([table, params], axis=1)
        table.index.name = "outer fold"
        return table


def _outer_scorer(estimator, scoring, error_score):
    if scoring is None and isinstance(estimator, _MergedSearch):
        scorers, metric = estimator._get_scorers()
        return scorers._scorers[metric] if hasattr(scorers, "_scorers") else scorers
    return check_scoring(estimator, scoring, raise_exc=error_score == "raise")


def _records(outs, error_score):
    """``cross_validate``'s dict from per-fold records."""
    cg.check_failures(outs, error_score)
    result = {
        "fit_time": np.array([o["fit_time"] for o in outs]),
        "score_time": np.array([o["score_time"] for o in outs]),
    }
    for kind in ("test", "train"):
        if f"{kind}_scores" not in outs[0]:
            continue
        first = next(
            (o[f"{kind}_scores"] for o in outs if isinstance(o[f"{kind}_scores"], dict)), None
        )
        if first is None:
            result[f"{kind}_score"] = np.array([o[f"{kind}_scores"] for o in outs], dtype=float)
            continue
        for name in first:
            result[f"{kind}_{name}"] = np.array(
                [
                    o[f"{kind}_scores"][name]
                    if isinstance(o[f"{kind}_scores"], dict)
                    else o[f"{kind}_scores"]
                    for o in outs
                ],
                dtype=float,
            )
    return result


def cross_validate(
    estimator,
    X,
    y=None,
    *,
    groups=None,
    scoring=None,
    cv=None,
    n_jobs=None,
    verbose=0,
    params=None,
    return_train_score=False,
    return_estimator=False,
    return_indices=False,
    error_score=np.nan,
    scheduler=None,
):
    """scikit-learn's ``cross_validate`` as one dask graph.

    With one of our searches as ``estimator`` this is nested cross-validation:
    the inner searches of all outer folds and their refits are one graph, merged
    like a single search (a Pipeline prefix is fitted once per inner fold).

    Parameters
    ----------
    estimator : estimator, or our GridSearchCV / RandomizedSearchCV
    X : array-like of shape (n_samples, ...), or a dask/zarr array (kept lazy)
    y : array-like of shape (n_samples,) or (n_samples, n_targets), or None
    groups : array-like of shape (n_samples,), default=None
    scoring, cv, return_train_score, return_estimator, return_indices, error_score :
        As in scikit-learn. With a search as estimator, ``scoring=None`` scores
        the outer folds with the search's (refit) scorer.
    params : dict, default=None
        Fit parameters (sample-aligned arrays are split with the folds).
    n_jobs : int, default=None
        Local threads or processes (None or -1: all cores).
    verbose : int, default=0
        > 0 shows a progress bar.
    scheduler : None, str or distributed.Client, default=None
        Where the graph runs (None: the active dask scheduler).

    Returns
    -------
    scores : dict of arrays of shape (n_splits,)
        ``test_score`` (or ``test_<name>``), ``fit_time``, ``score_time``,
        ``train_*``, ``estimator``, ``indices`` as scikit-learn's. Nested:
        a :class:`NestedCVResults` with ``params`` (chosen per outer fold) too.
    """
    params = dict(params or {})
    plan = cg.Plan(X, y, params, raise_errors=error_score == "raise")
    y_mem = _target(y)
    rows = np.arange(plan.n_samples)
    splits = _splits(cv, estimator, rows, y_mem, groups)
    scorer = _outer_scorer(estimator, scoring, error_score)
    nested = isinstance(estimator, _MergedSearch)
    keys = []
    for train, test in splits:
        spec = {
            "scorer": scorer,
            "return_train_score": return_train_score,
            "error_score": error_score,
            "n_test": len(test),
        }
        if nested:
            keys += _nested_fold(plan, estimator, train, test, spec, y_mem, groups)
        else:
            keys.append(plan.candidate(estimator, {}, plan.fold(train), plan.fold(test), spec))
            if return_estimator:
                keys.append(plan.fitted(estimator, {}, plan.fold(train)))
    got = run(
        plan.dsk,
        keys,
        scheduler=scheduler,
        n_jobs=n_jobs,
        progress=bool(verbose),
        desc="cross_validate",
    )
    per = 2 if nested or return_estimator else 1
    outs = [
        _outer_record(got[i], error_score, return_train_score, nested)
        for i in range(0, len(got), per)
    ]
    result = _records(outs, error_score)
    if nested:
        result = _with_choices(result, got[1::2], estimator)
    if return_estimator:
        result["estimator"] = [o.get("estimator") for o in outs] if nested else list(got[1::2])
    if return_indices:
        result["indices"] = {"train": [tr for tr, _ in splits], "test": [te for _, te in splits]}
    return result


def _nested_fold(plan, search, train, test, spec, y, groups):
    """Keys of one outer fold: its outer score record and its inner search's choice."""
    work = _Candidates(search, plan, train, y, groups)
    if work.refit is None:
        raise ValueError("nested cross-validation needs the inner search to refit")
    tr, te = plan.fold(train), plan.fold(test)
    score = plan.task("outer", cg.score_refit, spec, work.refit, te["X"], te["y"], tr["X"], tr["y"])
    return [score, work.choice]


def _with_choices(result, choices, search):
    """Nested CV's result: the parameters chosen per outer fold and their inner scores."""
    result = NestedCVResults(result)
    chosen = [c if isinstance(c, dict) else None for c in choices]
    result["params"] = [c and c["results"]["params"][c["best_index"]] for c in chosen]
    result["inner_best_score"] = np.array(
        [
            c["results"][f"mean_test_{c['refit_metric']}"][c["best_index"]]
            if c is not None and not callable(search.refit)
            else np.nan
            for c in chosen
        ]
    )
    return result


def _outer_record(out, error_score, return_train_score, nested):
    if not nested:
        return out
    if isinstance(out, cg.Failure):
        out = {
            "test_scores": error_score,
            "fit_time": 0.0,
            "score_time": 0.0,
            "fit_error": out.text,
            "score_errors": [],
            "estimator": None,
        }
        if return_train_score:
            out["train_scores"] = error_score
        return out
    return {**out, "fit_error": None}


def cross_val_score(
    estimator,
    X,
    y=None,
    *,
    groups=None,
    scoring=None,
    cv=None,
    n_jobs=None,
    verbose=0,
    params=None,
    error_score=np.nan,
    scheduler=None,
):
    """scikit-learn's ``cross_val_score`` as one dask graph (see :func:`cross_validate`).

    Returns
    -------
    scores : ndarray of shape (n_splits,)
    """
    if scoring is not None and not (isinstance(scoring, str) or callable(scoring)):
        raise ValueError("cross_val_score takes one metric; use cross_validate for several")
    result = cross_validate(
        estimator,
        X,
        y,
        groups=groups,
        scoring=scoring,
        cv=cv,
        n_jobs=n_jobs,
        verbose=verbose,
        params=params,
        error_score=error_score,
        scheduler=scheduler,
    )
    return result["test_score"]


def nested_cross_validate(
    estimator,
    param_grid,
    X,
    y=None,
    *,
    outer_cv=5,
    inner_cv=3,
    scoring=None,
    refit=True,
    groups=None,
    n_iter=None,
    random_state=None,
    params=None,
    return_train_score=False,
    return_estimator=False,
    error_score=np.nan,
    n_jobs=None,
    verbose=0,
    scheduler=None,
):
    """Nested cross-validation: a grid search in each outer training fold, scored on
    the outer test fold -- the honest estimate when hyper-parameters are tuned.

    One dask graph: inner folds are selected once, a Pipeline prefix with the
    same parameters is fitted once per inner fold (not per candidate), and the
    inner refits and outer scores are tasks of the same graph.

    Parameters
    ----------
    estimator : estimator or Pipeline
    param_grid : dict or list of dicts
        A grid (``GridSearchCV``), or distributions when ``n_iter`` is given
        (``RandomizedSearchCV`` with ``random_state``).
    X : array-like of shape (n_samples, ...), or a dask/zarr array (kept lazy)
    y : array-like of shape (n_samples,) or (n_samples, n_targets), or None
    outer_cv, inner_cv : int, splitter or iterable
    scoring : str, callable, list or dict, default=None
        The inner search's and the outer folds' scoring; with several metrics,
        ``refit`` names the one that chooses (and scores the outer folds).
    refit : bool, str or callable, default=True

    Returns
    -------
    NestedCVResults
        ``test_score`` (or ``test_<name>``), ``fit_time``, ``score_time``, ``params``
        (the parameters chosen in each outer fold), ``inner_best_score``, and
        ``report()`` to show them side by side.
    """
    common = {
        "scoring": scoring,
        "refit": refit,
        "cv": inner_cv,
        "error_score": error_score,
        "return_train_score": False,
    }
    if n_iter is None:
        search = GridSearchCV(estimator, param_grid, **common)
    else:
        search = RandomizedSearchCV(
            estimator, param_grid, n_iter=n_iter, random_state=random_state, **common
        )
    outer_scoring = None
    if scoring is not None and not (isinstance(scoring, str) or callable(scoring)):
        outer_scoring = scoring
    return cross_validate(
        search,
        X,
        y,
        groups=groups,
        scoring=outer_scoring,
        cv=outer_cv,
        n_jobs=n_jobs,
        verbose=verbose,
        params=params,
        return_train_score=return_train_score,
        return_estimator=return_estimator,
        error_score=error_score,
        scheduler=scheduler,
    )
