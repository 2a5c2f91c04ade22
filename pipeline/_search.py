"""Grid and randomized search, cross-validation and nested CV as one merged dask graph.

:class:`GridSearchCV` and :class:`RandomizedSearchCV` are scikit-learn's (same
parameters, candidates, ``cv_results_`` and delegation) with another ``fit``: the
candidates x folds (x outer folds) become one graph of content-keyed tasks
(:mod:`pipeline._cvgraph`), computed once on the active dask scheduler.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn import model_selection as skms
from sklearn.base import is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv

from pipeline import _cvgraph as cg
from pipeline._reports import ReportMixin
from pipeline._scheduler import run

__all__ = [
    "GridSearchCV",
    "RandomizedSearchCV",
    "NestedCVResults",
    "cross_validate",
    "cross_val_score",
    "nested_cross_validate",
]


def _candidates(search):
    """The candidate parameters, as scikit-learn's search would evaluate them."""
    found = list(search._candidate_params())
    if not found:
        raise ValueError("No fits were performed. Were there no candidates?")
    return found


def _target(y):
    """``y`` in memory (for splitters and stratification), or None."""
    if y is None:
        return None
    return np.asarray(y.compute() if hasattr(y, "compute") else y)


def _splits(cv, estimator, rows, y, groups):
    """Train/test rows (absolute indices) of ``cv`` applied to the samples ``rows``."""
    y_sub = None if y is None else y[rows]
    g_sub = None if groups is None else np.asarray(groups)[rows]
    cv = check_cv(cv, y_sub, classifier=is_classifier(estimator))
    stand_in = np.zeros((len(rows), 1), dtype=np.int8)
    return [(rows[tr], rows[te]) for tr, te in cv.split(stand_in, y_sub, g_sub)]


class _Candidates:
    """The tasks of a search (candidates x inner folds, choice, refit) on ``rows``."""

    def __init__(self, search, plan, rows, y, groups):
        self.search = search
        self.candidates = _candidates(search)
        self.scorers, self.refit_metric = search._get_scorers()
        self.splits = _splits(search.cv, search.estimator, rows, y, groups)
        fields = {"scorer": self.scorers, "return_train_score": search.return_train_score}
        fields["error_score"] = search.error_score
        self.outs = []
        for params in self.candidates:
            for train, test in self.splits:
                spec = {**fields, "n_test": len(test)}
                self.outs.append(
                    plan.candidate(
                        search.estimator, params, plan.fold(train), plan.fold(test), spec
                    )
                )
        portable = copy.copy(search)
        portable.scheduler = None  # tasks never carry a Client
        spec = {"search": portable, "candidates": self.candidates, "n_splits": len(self.splits)}
        spec["refit_metric"] = self.refit_metric
        self.choice = plan.task("choose", choose, spec, *self.outs)
        self.refit = None
        if search.refit:
            everything = plan.fold(rows)
            names, values, static = plan.fit_params(everything)
            fields = {"estimator": search.estimator, "param_names": names, "static": static}
            self.refit = plan.task(
                "refit", cg.refit, fields, self.choice, everything["X"], everything["y"], *values
            )


@cg.guarded
@cg.quiet
def choose(spec, *outs):
    """The best candidate's index (and the results it was chosen from)."""
    search, outs = spec.search, list(outs)
    cg.check_failures(outs, search.error_score)
    if callable(search.scoring):
        from sklearn.model_selection._validation import _insert_error_scores

        _insert_error_scores(outs, search.error_score)
    results = search._format_results(spec.candidates, spec.n_splits, outs)
    multimetric = isinstance(outs[0]["test_scores"], dict)
    refit_metric = spec.refit_metric
    if callable(search.scoring) and multimetric:
        search._check_refit_for_multimetric(outs[0]["test_scores"])
        refit_metric = search.refit
    best = None
    if search.refit or not multimetric:
        best = int(search._select_best_index(search.refit, refit_metric, results))
    return {
        "results": results,
        "best_index": best,
        "multimetric": multimetric,
        "refit_metric": refit_metric,
    }


class _MergedSearch(ReportMixin):
    """``fit`` as one merged graph, for scikit-learn's search classes."""

    def fit(self, X, y=None, **params):
        """Evaluate every candidate on every fold, choose, refit: one dask graph.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...) or a dask/zarr array
            In-memory data is selected once per fold; dask, zarr and memmap data
            stays lazy (folds are views read chunk by chunk).
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or None
        **params : dict
            Fit parameters; sample-aligned arrays (``sample_weight``) are split
            with the folds. ``groups`` goes to the splitter. Pipelines take
            ``step__name``.

        Returns
        -------
        self : object
        """
        self._validate_params()
        groups = params.pop("groups", None)
        plan = cg.Plan(X, y, params, raise_errors=self.error_score == "raise")
        y_mem = _target(y)
        work = _Candidates(self, plan, np.arange(plan.n_samples), y_mem, groups)
        keys = [*work.outs, work.choice] + ([work.refit] if work.refit else [])
        got = run(
            plan.dsk,
            keys,
            scheduler=self.scheduler,
            n_jobs=self.n_jobs,
            progress=bool(self.verbose),
            desc=type(self).__name__,
        )
        outs, choice = got[: len(work.outs)], got[len(work.outs)]
        self._store(work, outs, choice, got[-1] if work.refit else None)
        self.dask_graph_, self.dask_keys_ = plan.dsk, keys
        return self

    def _store(self, work, outs, choice, refitted):
        cg.check_failures(outs, self.error_score)
        if isinstance(choice, cg.Failure):
            raise RuntimeError(f"choosing the best candidate failed:\n{choice.text}")
        self.multimetric_ = choice["multimetric"]
        self.n_splits_ = len(work.splits)
        if self.refit or not self.multimetric_:
            self.best_index_ = choice["best_index"]
            if not callable(self.refit):
                metric = choice["refit_metric"]
                self.best_score_ = choice["results"][f"mean_test_{metric}"][self.best_index_]
            self.best_params_ = work.candidates[self.best_index_]
        if self.refit:
            if isinstance(refitted, cg.Failure):
                raise RuntimeError(f"refitting the best candidate failed:\n{refitted.text}")
            self.best_estimator_, self.refit_time_ = refitted
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        scorers = work.scorers
        self.scorer_ = getattr(scorers, "_scorers", scorers)
        self.cv_results_ = self._format_results(work.candidates, len(work.splits), outs)


_EXTRA_DOC = """
    This search builds one dask graph for all candidates and folds (and the refit)
    and computes it once: identical work -- a Pipeline prefix with the same
    parameters on the same fold, a fold's selection -- has one key and runs once.

    Additional parameters
    ---------------------
    scheduler : None, str or distributed.Client, default=None
        Where the graph runs: None is the active dask scheduler (a default
        ``distributed.Client`` if one exists, else threads); "threads",
        "processes", "synchronous", or a Client.
    n_jobs : int, default=None
        Local threads or processes (None or -1: all cores); ignored on a Client.
    verbose : int, default=0
        > 0 shows a progress bar of tasks done (tqdm, or dask's on a Client).

    Additional attributes
    ---------------------
    dask_graph_ : dict
        The merged graph that was computed (``visualize()`` draws it).
    """


class GridSearchCV(_MergedSearch, skms.GridSearchCV):
    __doc__ = (skms.GridSearchCV.__doc__ or "").split("\n\n")[0] + "\n" + _EXTRA_DOC

    _parameter_constraints = {
        **skms.GridSearchCV._parameter_constraints,
        "scheduler": "no_validation",
    }

    def __init__(
        self,
        estimator,
        param_grid,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        pre_dispatch="2*n_jobs",
        error_score=np.nan,
        return_train_score=False,
        scheduler=None,
    ):
        super().__init__(
            estimator,
            param_grid,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.scheduler = scheduler

    def _candidate_params(self):
        return skms.ParameterGrid(self.param_grid)


class RandomizedSearchCV(_MergedSearch, skms.RandomizedSearchCV):
    __doc__ = (skms.RandomizedSearchCV.__doc__ or "").split("\n\n")[0] + "\n" + _EXTRA_DOC

    _parameter_constraints = {
        **skms.RandomizedSearchCV._parameter_constraints,
        "scheduler": "no_validation",
    }

    def __init__(
        self,
        estimator,
        param_distributions,
        *,
        n_iter=10,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        pre_dispatch="2*n_jobs",
        random_state=None,
        error_score=np.nan,
        return_train_score=False,
        scheduler=None,
    ):
        super().__init__(
            estimator,
            param_distributions,
            n_iter=n_iter,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            pre_dispatch=pre_dispatch,
            random_state=random_state,
            error_score=error_score,
            return_train_score=return_train_score,
        )
        self.scheduler = scheduler

    def _candidate_params(self):
        return skms.ParameterSampler(
            self.param_distributions, self.n_iter, random_state=self.random_state
        )


# -- cross-validation -------------------------------------------------------------------


class NestedCVResults(dict):
    """``cross_validate``'s dict for a nested CV, with ``params`` (chosen per outer
    fold) and :meth:`report` (outer scores beside the chosen parameters)."""

    def report(self):
        """A table: one row per outer fold, its test score(s) and the chosen parameters.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        scores = {k: v for k, v in self.items() if k.startswith(("test_", "train_"))}
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
    keys, searches = [], []
    for train, test in splits:
        spec = {
            "scorer": scorer,
            "return_train_score": return_train_score,
            "error_score": error_score,
            "n_test": len(test),
        }
        if nested:
            work = _Candidates(estimator, plan, train, y_mem, None if groups is None else groups)
            if work.refit is None:
                raise ValueError("nested cross-validation needs the inner search to refit")
            searches.append(work)
            tr, te = plan.fold(train), plan.fold(test)
            keys.append(
                plan.task(
                    "outer", cg.score_refit, spec, work.refit, te["X"], te["y"], tr["X"], tr["y"]
                )
            )
            keys.append(work.choice)
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
        result = NestedCVResults(result)
        choices = got[1::2]
        result["params"] = [
            c["results"]["params"][c["best_index"]] if isinstance(c, dict) else None
            for c in choices
        ]
        result["inner_best_score"] = np.array(
            [
                c["results"][f"mean_test_{c['refit_metric']}"][c["best_index"]]
                if isinstance(c, dict) and not callable(estimator.refit)
                else np.nan
                for c in choices
            ]
        )
    if return_estimator:
        result["estimator"] = [o.get("estimator") for o in outs] if nested else list(got[1::2])
    if return_indices:
        result["indices"] = {"train": [tr for tr, _ in splits], "test": [te for _, te in splits]}
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
