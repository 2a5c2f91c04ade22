"""Adaptive search: successive halving and Hyperband over ``partial_fit`` epochs.

Each rung is one dask graph (every surviving model of every bracket trains its
next ``partial_fit`` calls and is scored on the held-out part), computed on the
active scheduler; the worst models are dropped between rungs. The budget unit is
one ``partial_fit`` call on the whole training part: an epoch of our networks.
Signatures follow dask-ml's ``HyperbandSearchCV`` / ``SuccessiveHalvingSearchCV``.
"""

from __future__ import annotations

import math
import time

import numpy as np
from sklearn import model_selection as skms
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import train_test_split
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from pipeline import _cvgraph as cg
from pipeline._scheduler import run

__all__ = ["HyperbandSearchCV", "SuccessiveHalvingSearchCV"]


@cg.guarded
def _train_and_score(spec, model, X, y, X_val, y_val):
    """``spec.calls`` more ``partial_fit`` calls, then a score (after every call when
    ``spec.patience``: training stops once the score stops improving by ``tol``)."""
    records, scores = [], list(spec.past_scores)
    for call in range(spec.calls):
        start = time.perf_counter()
        _partial_fit(model, X, y, spec.classes)
        fit_time = time.perf_counter() - start
        if not spec.patience and call < spec.calls - 1:
            records.append({"partial_fit_time": fit_time, "score": None, "score_time": 0.0})
            continue
        start = time.perf_counter()
        score = float(spec.scorer(model, cg._value(X_val), cg._value(y_val)))
        records.append(
            {
                "partial_fit_time": fit_time,
                "score": score,
                "score_time": time.perf_counter() - start,
            }
        )
        scores.append(score)
        if spec.patience and len(scores) > spec.patience:
            if max(scores[-spec.patience :]) <= scores[-spec.patience - 1] + spec.tol:
                break
    return model, records


def _partial_fit(model, X, y, classes):
    if isinstance(X, cg.Lazy) and not cg.streams(model):
        X, y = cg._materialize(X), cg._materialize(y)
    X, y = cg._value(X), cg._value(y)
    if classes is not None:
        model.partial_fit(X, y, classes=classes)
    else:
        model.partial_fit(X, y)


class _Model:
    """A candidate's state between rungs."""

    def __init__(self, model_id, params, estimator, bracket):
        self.id, self.params, self.estimator, self.bracket = model_id, params, estimator, bracket
        self.calls, self.scores, self.fit_times, self.score_times = 0, [], [], []
        self.stopped = False


def _estimator_has(attr):
    def check(self):
        return hasattr(
            self.best_estimator_ if hasattr(self, "best_estimator_") else self.estimator, attr
        )

    return check


class _AdaptiveSearch(MetaEstimatorMixin, BaseEstimator):
    """The rung loop shared by Hyperband and successive halving."""

    def _brackets(self):
        """``[(bracket id, n models, initial calls, number of rungs)]``."""
        raise NotImplementedError

    def _check(self):
        if not hasattr(self.estimator, "partial_fit"):
            raise TypeError(
                f"{type(self).__name__} trains with partial_fit, which "
                f"{type(self.estimator).__name__} does not have"
            )
        if not isinstance(self.aggressiveness, numbers_integral()) or self.aggressiveness < 2:
            raise ValueError(f"aggressiveness must be an integer >= 2, got {self.aggressiveness!r}")

    def fit(self, X, y=None, **fit_params):
        """Train and drop candidates rung by rung; the best model is kept.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), or a dask/zarr array (kept lazy)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        **fit_params : dict
            Unused (``partial_fit`` takes the data only); accepted for API parity.

        Returns
        -------
        self : object
        """
        self._check()
        start = time.perf_counter()
        scorer = check_scoring(self.estimator, self.scoring)
        data = self._split(X, y)
        classes = np.unique(cg._materialize(data[1])) if is_classifier(self.estimator) else None
        brackets = self._brackets()
        models = self._models(brackets)
        self.history_ = []
        alive = {b[0]: [m for m in models if m.bracket == b[0]] for b in brackets}
        for rung in range(max(b[3] for b in brackets)):
            todo = self._todo(alive, brackets, rung)
            if not todo:
                break
            self._rung(todo, data, scorer, classes, start)
            alive = self._survivors(alive, brackets, rung)
        self._results(models, scorer, brackets)
        return self

    def _todo(self, alive, brackets, rung):
        """``[(model, more calls)]`` of the models that train in this rung."""
        todo = []
        for b, _, r, rungs in brackets:
            if rung < rungs:
                target = min(self._calls(r, rung), self._max_calls())
                todo += [
                    (m, target - m.calls) for m in alive[b] if not m.stopped and target > m.calls
                ]
        return todo

    def _survivors(self, alive, brackets, rung):
        """The best ``1/aggressiveness`` of each bracket that has rungs left."""
        out = dict(alive)
        for b, _, _, rungs in brackets:
            if rung < rungs - 1 and alive[b]:
                keep = max(1, math.floor(len(alive[b]) / self.aggressiveness))
                out[b] = sorted(alive[b], key=lambda m: -m.scores[-1])[:keep]
        return out

    def _calls(self, r, rung):
        return int(round(r * self.aggressiveness**rung))

    def _max_calls(self):
        return self.max_iter if self.max_iter is not None else np.inf

    def _split(self, X, y):
        plan = cg.Plan(X, y, {}, raise_errors=True)
        rows = np.arange(plan.n_samples)
        test_size = 0.15 if self.test_size is None else self.test_size
        stratify = cg._materialize(y) if is_classifier(self.estimator) and not plan.lazy else None
        train, test = train_test_split(
            rows, test_size=test_size, random_state=self.random_state, stratify=stratify
        )
        tr, te = plan.fold(train), plan.fold(test)
        if y is None:
            X_train, X_val = run(plan.dsk, [tr["X"], te["X"]], scheduler="synchronous")
            return X_train, None, X_val, None
        return run(plan.dsk, [tr["X"], tr["y"], te["X"], te["y"]], scheduler="synchronous")

    def _models(self, brackets):
        n_total = sum(b[1] for b in brackets)
        sampler = skms.ParameterSampler(self.parameters, n_total, random_state=self.random_state)
        params = list(sampler)
        models, i = [], 0
        for b, n, *_ in brackets:
            for p in params[i : i + n]:
                est = clone(self.estimator).set_params(**clone(p, safe=False))
                models.append(_Model(len(models), p, est, b))
            i += n
        return models

    def _rung(self, todo, data, scorer, classes, start):
        """Train and score ``todo`` ``[(model, calls)]`` as one graph on the scheduler."""
        dsk = dict(zip(("X", "y", "X_val", "y_val"), data, strict=True))
        keys = []
        for m, calls in todo:
            key = f"train-{m.id}-{m.calls}"
            spec = cg.Spec(
                True,
                key,
                calls=calls,
                classes=classes,
                scorer=scorer,
                patience=self._patience(),
                tol=self.tol,
                past_scores=m.scores,
            )
            dsk[key] = (_train_and_score, spec, m.estimator, "X", "y", "X_val", "y_val")
            keys.append(key)
        got = run(
            dsk,
            keys,
            scheduler=self.scheduler,
            progress=bool(self.verbose),
            desc=f"{type(self).__name__} rung",
        )
        for (m, calls), (est, records) in zip(todo, got, strict=True):
            m.estimator = est
            for rec in records:
                m.calls += 1
                m.fit_times.append(rec["partial_fit_time"])
                if rec["score"] is None:
                    continue
                m.scores.append(rec["score"])
                m.score_times.append(rec["score_time"])
                self.history_.append(
                    {
                        "model_id": m.id,
                        "params": m.params,
                        "partial_fit_calls": m.calls,
                        "partial_fit_time": rec["partial_fit_time"],
                        "score": rec["score"],
                        "score_time": rec["score_time"],
                        "bracket": m.bracket,
                        "elapsed_wall_time": time.perf_counter() - start,
                    }
                )
            m.stopped = len(records) < calls

    def _patience(self):
        if self.patience is False or self.patience is None:
            return 0
        if self.patience is True:
            return max(1, (self.max_iter or 1) // self.aggressiveness)
        return int(self.patience)

    def _results(self, models, scorer, brackets):
        scores = np.array([m.scores[-1] for m in models])
        order = np.argsort(-scores, kind="stable")
        rank = np.empty(len(models), dtype=np.int32)
        rank[order] = np.arange(1, len(models) + 1)
        results = {
            "model_id": np.array([m.id for m in models]),
            "params": [m.params for m in models],
            "bracket": np.array([m.bracket for m in models]),
            "partial_fit_calls": np.array([m.calls for m in models]),
            "test_score": scores,
            "rank_test_score": rank,
            "mean_partial_fit_time": np.array([np.mean(m.fit_times) for m in models]),
            "std_partial_fit_time": np.array([np.std(m.fit_times) for m in models]),
            "mean_score_time": np.array([np.mean(m.score_times) for m in models]),
            "std_score_time": np.array([np.std(m.score_times) for m in models]),
        }
        for name in dict.fromkeys(k for m in models for k in m.params):
            results[f"param_{name}"] = np.ma.MaskedArray(
                [m.params.get(name) for m in models],
                mask=[name not in m.params for m in models],
                dtype=object,
            )
        self.cv_results_ = results
        self.model_history_ = {
            m.id: [h for h in self.history_ if h["model_id"] == m.id] for m in models
        }
        self.best_index_ = int(order[0])
        self.best_score_ = float(scores[self.best_index_])
        self.best_params_ = models[self.best_index_].params
        self.best_estimator_ = models[self.best_index_].estimator
        self.scorer_, self.n_splits_, self.multimetric_ = scorer, 1, False
        self.metadata_ = {
            "n_models": len(models),
            "partial_fit_calls": int(sum(m.calls for m in models)),
            "brackets": [
                {
                    "bracket": b,
                    "n_models": n,
                    "partial_fit_calls": int(sum(m.calls for m in models if m.bracket == b)),
                }
                for b, n, *_ in brackets
            ],
        }

    def report(self, digits=3):
        """The models as a table, best first: parameters, bracket, epochs, score.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        check_is_fitted(self, "cv_results_")
        r = self.cv_results_
        table = pd.DataFrame(list(r["params"]))
        for key in ("bracket", "partial_fit_calls", "test_score", "rank_test_score"):
            table[key] = r[key]
        table["test_score"] = table["test_score"].round(digits)
        table.index = pd.Index(r["model_id"], name="model")
        return table.sort_values("rank_test_score", kind="stable")

    def score(self, X, y=None):
        """``scorer_`` of the best model on ``(X, y)``."""
        check_is_fitted(self, "best_estimator_")
        return self.scorer_(self.best_estimator_, X, y)

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    @available_if(_estimator_has("transform"))
    def transform(self, X):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.transform(X)

    @property
    def classes_(self):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.classes_


def numbers_integral():
    import numbers

    return numbers.Integral


class SuccessiveHalvingSearchCV(_AdaptiveSearch):
    """Successive halving over ``partial_fit`` calls (dask-ml's signature).

    ``n_initial_parameters`` candidates (sampled from ``parameters``) each get
    ``n_initial_iter`` ``partial_fit`` calls and a score on a held-out part; the
    best ``1/aggressiveness`` go on with ``aggressiveness`` times more calls, and
    so on until one is left or ``max_iter`` calls are reached. Each rung is one
    dask graph on ``scheduler`` (None: the active one, a Client included).

    Parameters
    ----------
    estimator : estimator with ``partial_fit``
    parameters : dict
        Lists or scipy distributions, as ``RandomizedSearchCV``'s.
    n_initial_parameters : int, default=10
    n_initial_iter : int, default=None
        Calls before the first score (None: 1).
    max_iter : int, default=None
        Most calls a model gets (None: no limit but the halving).
    aggressiveness : int, default=3
    test_size : float, default=None
        Held-out fraction for scoring (None: 0.15).
    patience, tol : int or bool, float
        Stop a model whose score has not improved by ``tol`` in ``patience`` calls.
    random_state : int, RandomState or None
    scoring : str or callable, default=None
    verbose : bool or int, default=False
        Progress bar per rung.
    prefix : str, default=""
        Unused (dask-ml's log prefix); kept for the signature.
    scheduler : None, str or distributed.Client, default=None
    """

    def __init__(
        self,
        estimator,
        parameters,
        n_initial_parameters=10,
        n_initial_iter=None,
        max_iter=None,
        aggressiveness=3,
        test_size=None,
        patience=False,
        tol=1e-3,
        random_state=None,
        scoring=None,
        verbose=False,
        prefix="",
        scheduler=None,
    ):
        self.estimator = estimator
        self.parameters = parameters
        self.n_initial_parameters = n_initial_parameters
        self.n_initial_iter = n_initial_iter
        self.max_iter = max_iter
        self.aggressiveness = aggressiveness
        self.test_size = test_size
        self.patience = patience
        self.tol = tol
        self.random_state = random_state
        self.scoring = scoring
        self.verbose = verbose
        self.prefix = prefix
        self.scheduler = scheduler

    def _brackets(self):
        n, r = int(self.n_initial_parameters), int(self.n_initial_iter or 1)
        if n < 1 or r < 1:
            raise ValueError("n_initial_parameters and n_initial_iter must be >= 1")
        rungs = 1 + _log_floor(n, self.aggressiveness)
        if self.max_iter is not None:
            rungs = min(rungs, 1 + _log_floor(self.max_iter / r, self.aggressiveness))
        return [(0, n, r, rungs)]


def _log_floor(x, base):
    """floor(log_base(x)) for x >= 1, exact for powers of ``base``."""
    k = 0
    while base ** (k + 1) <= x:
        k += 1
    return k


class HyperbandSearchCV(_AdaptiveSearch):
    """Hyperband (Li et al. 2018) over ``partial_fit`` calls (dask-ml's signature).

    Brackets of successive halving that trade many short trainings for few long
    ones, run side by side: each rung of all brackets is one dask graph. No
    model gets more than ``max_iter`` calls; ``metadata`` tells the budget first.

    Parameters
    ----------
    estimator : estimator with ``partial_fit``
    parameters : dict
        Lists or scipy distributions.
    max_iter : int, default=81
        Most ``partial_fit`` calls (epochs for our networks) a model gets.
    aggressiveness : int, default=3
    patience, tol : int or bool, float
    test_size : float, default=None
        Held-out fraction for scoring (None: 0.15).
    random_state, scoring, verbose, prefix, scheduler
        As in :class:`SuccessiveHalvingSearchCV`.
    """

    def __init__(
        self,
        estimator,
        parameters,
        max_iter=81,
        aggressiveness=3,
        patience=False,
        tol=1e-3,
        test_size=None,
        random_state=None,
        scoring=None,
        verbose=False,
        prefix="",
        scheduler=None,
    ):
        self.estimator = estimator
        self.parameters = parameters
        self.max_iter = max_iter
        self.aggressiveness = aggressiveness
        self.patience = patience
        self.tol = tol
        self.test_size = test_size
        self.random_state = random_state
        self.scoring = scoring
        self.verbose = verbose
        self.prefix = prefix
        self.scheduler = scheduler

    def _brackets(self):
        if not isinstance(self.max_iter, numbers_integral()) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        eta, R = self.aggressiveness, self.max_iter
        s_max = _log_floor(R, eta)
        B = (s_max + 1) * R
        out = []
        for s in reversed(range(s_max + 1)):
            n = math.ceil(B / R * eta**s / (s + 1))
            r = max(1, R // eta**s)
            out.append((s, n, r, s + 1))
        return out

    @property
    def metadata(self):
        """The planned budget: models, ``partial_fit`` calls, per bracket."""
        brackets = []
        for b, n, r, rungs in self._brackets():
            calls, alive, done = 0, n, 0
            for i in range(rungs):
                target = min(r * self.aggressiveness**i, self.max_iter)
                calls += alive * (target - done)
                done = target
                alive = max(1, math.floor(alive / self.aggressiveness))
            brackets.append({"bracket": b, "n_models": n, "partial_fit_calls": calls})
        return {
            "n_models": sum(b["n_models"] for b in brackets),
            "partial_fit_calls": sum(b["partial_fit_calls"] for b in brackets),
            "brackets": brackets,
        }
