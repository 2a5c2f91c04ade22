"""Grid and randomized search as one merged dask graph.

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
from sklearn.model_selection import check_cv

from pipeline import _cvgraph as cg
from pipeline._reports import ReportMixin
from pipeline._scheduler import run

__all__ = ["GridSearchCV", "RandomizedSearchCV"]


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
