"""The tasks of a cross-validated search, and the plan that keys them by content.

A candidate on a fold is a chain of tasks: select the fold's rows, fit (and
transform) each step of a ``Pipeline``, fit the last step, score. Every key is
``name-`` plus a token of the task's inputs, so two candidates that share a
prefix with the same parameters on the same fold share its tasks, and the graph
runs them once (dask-ml's ``build_cv_graph`` habit, carried through nested CV).

Values that travel between tasks are numpy arrays (folds of in-memory data),
:class:`Lazy` (folds of dask/zarr data: views, read chunk by chunk by whoever
consumes them) or :class:`Failure` (a fit that raised, when ``error_score`` is
a number: it flows to the scoring task instead of killing the graph).
"""

from __future__ import annotations

import functools
import time
import traceback
import warnings

import numpy as np
from dask.base import tokenize
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing

from pipeline import _adapter, _steps
from pipeline._netio import select_rows
from pipeline._steps import estimator_token

__all__ = ["Lazy", "Failure", "Plan", "fit_pipeline"]


class Lazy:
    """A dask array carried through the graph as a value, not as a dependency."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __getstate__(self):
        return self.array

    def __setstate__(self, array):
        self.array = array


class Failure:
    """A task that raised: the formatted traceback, passed on to the scorer."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __getstate__(self):
        return self.text

    def __setstate__(self, text):
        self.text = text


def _on_worker():
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def guarded(fn):
    """Run task ``fn(spec, *values)``: failures in pass through, exceptions out become
    a :class:`Failure` unless ``spec.raise_errors``. On a distributed worker, lazy
    inputs are read through ``worker_client`` (the task secedes, so reading its
    chunks as cluster tasks cannot deadlock the worker)."""

    @functools.wraps(fn)
    def task(spec, *values):
        for v in values:
            if isinstance(v, Failure):
                return v
        try:
            if any(isinstance(v, Lazy) for v in values) and _on_worker():
                from distributed import worker_client

                with worker_client():
                    return fn(spec, *values)
            return fn(spec, *values)
        except Exception:
            if spec.raise_errors:
                raise
            return Failure(traceback.format_exc())

    return task


# -- steps on in-memory or lazy data: pipeline._steps decides how each learns -----------


def streams(est):
    """Whether ``est`` trains on dask arrays chunk by chunk (our tag)."""
    return _steps.streams(est)


def _value(a):
    return a.array if isinstance(a, Lazy) else a


def _materialize(a):
    return a.array.compute() if isinstance(a, Lazy) else a


def fit_on(est, X, y, params, *, name="estimator", last=True, limit="auto"):
    """Fit ``est`` on a fold: on lazy folds as :func:`pipeline._steps.fit_step` has
    each kind of step learn (streamed, chunk by chunk, or read within ``limit``)."""
    if isinstance(X, Lazy):
        params = {k: _value(v) for k, v in params.items()}
        return _steps.fit_step(
            est, X.array, _value(y), params, name=name, limit=_steps.memory_limit(limit),
            last=last,
        )
    args = (X,) if y is None else (X, _value(y))
    return est.fit(*args, **params)


def transform_on(est, X, name="step"):
    """``est.transform`` of a fold: lazy (one task per chunk) for lazy folds."""
    if not isinstance(X, Lazy):
        return est.transform(X)
    return Lazy(_steps.transform_lazy(est, X.array, name=name))


def fit_transform_on(est, X, y, params, *, name="step", limit="auto"):
    if isinstance(X, Lazy):
        est = fit_on(est, X, y, params, name=name, last=False, limit=limit)
        return est, transform_on(est, X, name)
    Xt = est.fit_transform(X, y, **params) if y is not None else est.fit_transform(X, **params)
    return est, Xt


def _limit(est):
    return getattr(est, "max_in_memory", "auto")


def split_pipeline(est, params):
    """``[(name, step, step_params)]`` of a Pipeline with ``params`` routed to its
    steps, or None where the pipeline cannot be taken apart (a parameter of the
    Pipeline itself, caching, or not a Pipeline)."""
    if not isinstance(est, Pipeline) or est.memory is not None:
        return None
    steps = {name: [name, step, {}] for name, step in est.steps}
    for key, value in params.items():
        name, sep, rest = key.partition("__")
        if name not in steps:
            return None
        if sep:
            steps[name][2][rest] = value
        else:
            steps[name][1] = value
    return [tuple(s) for s in steps.values()]


def configured(step, params):
    if step is None or step == "passthrough":
        return None
    return clone(step).set_params(**clone(params, safe=False))


def fit_pipeline(est, X, y, params):
    """Fit ``est`` (a Pipeline is fitted step by step, so lazy folds stay lazy);
    ``params`` are fit parameters, ``step__name`` for a Pipeline."""
    parts = split_pipeline(est, {})
    if parts is None:
        return fit_on(est, X, y, params)
    fitted, last, limit = [], len(parts) - 1, _limit(est)
    for i, (name, step, _) in enumerate(parts):
        step = configured(step, {})
        p = {k.partition("__")[2]: v for k, v in params.items() if k.startswith(name + "__")}
        if step is None:
            fitted.append((name, "passthrough"))
        elif i == last:
            fitted.append((name, fit_on(step, X, y, p, name=name, limit=limit)))
        else:
            step, X = fit_transform_on(step, X, y, p, name=name, limit=limit)
            fitted.append((name, step))
    return clone(est).set_params(steps=fitted)


# -- tasks ------------------------------------------------------------------------------


class Spec:
    """The static arguments of a task (one object: dask does not look inside it)."""

    def __init__(self, raise_errors, token, **fields):
        self.raise_errors, self.token = raise_errors, token
        self.__dict__.update(fields)

    def __dask_tokenize__(self):
        return ("pipeline.Spec", self.token)  # its task's key: unique, and from content


def select(data, rows):
    """Rows of a fold (indices, or a boolean mask for lazy plans): a copy of in-memory
    data, a lazy view of dask data whose every block reads one block of the store."""
    if isinstance(data, Lazy):
        picked = select_rows(data.array, rows)
        nonempty = [i for i, size in enumerate(picked.chunks[0]) if size]
        return Lazy(picked.blocks[nonempty])  # store chunks outside the fold: never read
    return _safe_indexing(data, rows)


@guarded
def fit_step(spec, X, y, *params):
    """Fit one step (a transformer also transforms its training fold)."""
    fit_params = {**spec.static, **dict(zip(spec.param_names, params, strict=True))}
    start = time.perf_counter()
    est = configured(spec.estimator, {})
    where = {"name": spec.name, "limit": spec.limit}
    if spec.last:
        return fit_on(est, X, y, fit_params, **where), None, time.perf_counter() - start
    est, Xt = fit_transform_on(est, X, y, fit_params, **where)
    return est, Xt, time.perf_counter() - start


@guarded
def train_output(spec, fitted):
    """A fitted transformer's output on its own training fold."""
    return fitted[1]


@guarded
def transform_step(spec, fitted, X):
    return transform_on(fitted[0], X, spec.name)


def _scores(scorer, est, X, y):
    """``scorer`` on a fold. On lazy folds a fitted Pipeline is walked step by step
    (transforms stay lazy) and its last step scores streaming (our networks) or
    on the transformed fold in memory (it is the scorer's input anyway)."""
    if isinstance(X, Lazy):
        if isinstance(est, Pipeline):
            for name, step in est.steps[:-1]:
                X = X if step is None or step == "passthrough" else transform_on(step, X, name)
            est = est.steps[-1][1]
        if not streams(est):
            X, y = _materialize(X), _materialize(y)
    X, y = _value(X), _value(y)
    return scorer(est, X) if y is None else scorer(est, X, y)


def _scored(spec, est, X, y):
    """``(scores, errors)`` of ``est`` on a fold, by scikit-learn's ``_score`` rule.

    A scorer that raises (or a metric of a multimetric scorer that fails) scores
    ``spec.error_score`` unless that is ``'raise'``: the fit did not fail, and the
    formatted errors go back to the caller, who warns as scikit-learn does.
    """
    try:
        scores = _scores(spec.scorer, est, X, y)
    except Exception:
        if spec.raise_errors:
            raise
        return spec.error_score, [traceback.format_exc()]
    if not isinstance(scores, dict):
        return scores, []
    failed = {name: text for name, text in scores.items() if isinstance(text, str)}
    return {**scores, **dict.fromkeys(failed, spec.error_score)}, list(failed.values())


def _score_record(spec, est, X_test, y_test, X_train, y_train):
    """Test (and train) scores of a fitted ``est``, their time and any scoring failures."""
    start = time.perf_counter()
    out = {}
    out["test_scores"], errors = _scored(spec, est, X_test, y_test)
    out["score_time"] = time.perf_counter() - start
    if spec.return_train_score:
        out["train_scores"], more = _scored(spec, est, X_train, y_train)
        errors = errors + more
    out["score_errors"] = errors
    return out


@guarded
def _score_fitted(spec, fitted, fits, X_test, y_test, X_train, y_train):
    out = _score_record(spec, fitted[0], X_test, y_test, X_train, y_train)
    out["fit_time"] = sum(f[2] for f in fits)
    return out


def evaluate(spec, fitted, fits, X_test, y_test, X_train, y_train):
    """scikit-learn's ``_fit_and_score`` record of one candidate on one fold."""
    out = _score_fitted(spec, fitted, fits, X_test, y_test, X_train, y_train)
    if isinstance(out, Failure):
        error = spec.error_score
        out = {"test_scores": error, "fit_time": 0.0, "score_time": 0.0, "fit_error": out.text}
        out["score_errors"] = []
        if spec.return_train_score:
            out["train_scores"] = error
    else:
        out["fit_error"] = None
    out["n_test_samples"] = spec.n_test
    return out


@guarded
def refit(spec, choice, X, y, *params):
    """Fit the chosen candidate on all of ``X`` (the outer training fold in nested CV)."""
    best = choice["best_index"]
    est = clone(spec.estimator).set_params(**clone(choice["results"]["params"][best], safe=False))
    start = time.perf_counter()
    est = fit_pipeline(
        est, X, y, {**spec.static, **dict(zip(spec.param_names, params, strict=True))}
    )
    return est, time.perf_counter() - start


@guarded
def score_refit(spec, fitted, X_test, y_test, X_train, y_train):
    """The outer score of a nested CV fold (``cross_validate``'s record)."""
    est = fitted[0]
    out = _score_record(spec, est, X_test, y_test, X_train, y_train)
    out["fit_time"] = fitted[1]
    out["estimator"] = est
    return out


@guarded
def assemble(spec, *fitted):
    """The fitted estimator of a chain: a Pipeline of its fitted steps, or the one."""
    if spec.names is None:
        return fitted[0][0]
    done = iter(fitted)
    steps = [(name, "passthrough" if absent else next(done)[0]) for name, absent in spec.names]
    return clone(spec.template).set_params(steps=steps)  # the caller's Pipeline class


# -- the plan ---------------------------------------------------------------------------


def as_lazy(a):
    """Streamed inputs (dask, zarr, memmap, stores) as dask arrays; numpy stays None."""
    return _adapter.as_dask(a) if _adapter.is_streamed(a) else None


class Plan:
    """The graph of a run, built up by content-keyed tasks.

    ``data`` are the sample-aligned inputs (``X``, ``y`` and array fit parameters),
    each put in the graph once; ``select`` keys a fold's rows of one of them.
    """

    def __init__(self, X, y, fit_params, *, raise_errors):
        self.dsk = {}
        self.raise_errors = raise_errors
        self.lazy = as_lazy(X) is not None
        self.n_samples = X.shape[0] if hasattr(X, "shape") else len(X)
        n_y = None if y is None else (y.shape[0] if hasattr(y, "shape") else len(y))
        if n_y is not None and n_y != self.n_samples:
            raise ValueError(
                f"X and y have different numbers of samples: {self.n_samples} and {n_y}"
            )
        self.keys = {"X": self._put("X", X), "y": None if y is None else self._put("y", y)}
        self.static = {}
        for name, value in fit_params.items():
            if _aligned(value, self.n_samples):
                self.keys[name] = self._put(name, value)
            else:
                self.static[name] = value

    def _put(self, name, a):
        lazy = as_lazy(a) if self.lazy else None
        value = Lazy(lazy) if lazy is not None else a
        key = f"data-{name}-" + tokenize(lazy if lazy is not None else a)
        self.dsk[key] = value
        return key

    def task(self, name, fn, spec_fields, *inputs, token=None):
        key = f"{name}-" + (token or tokenize(name, *inputs))
        if key not in self.dsk:
            self.dsk[key] = (fn, Spec(self.raise_errors, key, **spec_fields), *inputs)
        return key

    def select(self, name, rows, token):
        """The key of ``name``'s ``rows`` (a boolean mask for lazy plans)."""
        if self.keys.get(name) is None:
            return None
        key = f"select-{name}-" + tokenize(self.keys[name], token)
        if key not in self.dsk:
            self.dsk[key] = (select, self.keys[name], rows)
        return key

    def fold(self, rows):
        """Keys of a fold's X, y and array fit parameters. Lazy plans select with a
        boolean mask (a byte per sample, store order kept), in-memory ones by index
        (scikit-learn's order, so results equal its own)."""
        token = tokenize(rows)
        if self.lazy:
            keep = np.zeros(self.n_samples, dtype=bool)
            keep[rows] = True
            rows = keep
        return {name: self.select(name, rows, token) for name in self.keys}

    def fit_params(self, fold, prefix=""):
        """Fit parameters named ``prefix`` + name: ``(names, keys of their folds, static)``."""
        names = [n for n in self.keys if n not in ("X", "y") and n.startswith(prefix)]
        static = {n[len(prefix) :]: v for n, v in self.static.items() if n.startswith(prefix)}
        return [n[len(prefix) :] for n in names], [fold[n] for n in names], static

    def chain(self, estimator, params, train):
        """Fit tasks of ``estimator`` with ``params`` on a train fold, merged by content.

        Returns ``(steps, fits)``: per step ``(fitted key, train-output key or None)``,
        and the keys of the fit tasks (for their times).
        """
        parts = split_pipeline(estimator, params) or [("", estimator, params)]
        X_key, steps, fits = train["X"], [], []
        for i, (name, step, step_params) in enumerate(parts):
            est = configured(step, step_params)
            if est is None:
                steps.append(None)
                continue
            last = i == len(parts) - 1
            names, values, static = self.fit_params(train, f"{name}__" if name else "")
            fields = {"estimator": est, "last": last, "param_names": names, "static": static,
                      "name": name or type(est).__name__, "limit": _limit(estimator)}
            token = tokenize(estimator_token(est), X_key, train["y"], last, names, values, static,
                             fields["limit"])
            key = self.task("fit", fit_step, fields, X_key, train["y"], *values, token=token)
            fits.append(key)
            X_key = None if last else self.task("train", train_output, {}, key)
            steps.append((key, X_key, fields["name"]))
        return steps, fits

    def fitted(self, estimator, params, train):
        """The key of ``estimator`` with ``params`` fitted on a train fold (chain tasks shared)."""
        steps, _ = self.chain(estimator, params, train)
        parts = split_pipeline(estimator, params)
        names = (
            None
            if parts is None
            else [(p[0], s is None) for p, s in zip(parts, steps, strict=True)]
        )
        keys = [s[0] for s in steps if s is not None]
        return self.task("assemble", assemble, {"names": names, "template": estimator}, *keys)

    def through(self, steps, X_key):
        """Keys of ``X_key`` transformed by every fitted step but the last."""
        for step in steps[:-1]:
            if step is not None:
                X_key = self.task("transform", transform_step, {"name": step[2]}, step[0], X_key)
        return X_key

    def candidate(self, estimator, params, train, test, spec_fields):
        """The key of the evaluation record of one candidate on one fold."""
        steps, fits = self.chain(estimator, params, train)
        X_train = train["X"]
        for step in steps[:-1]:
            X_train = X_train if step is None else step[1]
        X_test = self.through(steps, test["X"])
        last = steps[-1][0] if steps[-1] is not None else None
        if last is None:
            raise ValueError("the last step of a Pipeline in a search cannot be 'passthrough'")
        return self.task(
            "score", evaluate, spec_fields, last, fits, X_test, test["y"], X_train, train["y"]
        )


def _aligned(value, n):
    return hasattr(value, "shape") and len(getattr(value, "shape", ())) > 0 and value.shape[0] == n


def check_failures(outs, error_score):
    """scikit-learn's warnings (a scorer failed: UserWarning; some fits failed:
    FitFailedWarning) or error (all fits failed), from the records ``outs``."""
    from sklearn.model_selection._validation import _warn_or_raise_about_fit_failures

    for out in outs:
        for text in out.get("score_errors") or ():
            warnings.warn(
                "Scoring failed. The score on this train-test partition for these "
                f"parameters will be set to {error_score}. Details: \n{text}",
                UserWarning,
                stacklevel=3,
            )
    _warn_or_raise_about_fit_failures(outs, error_score)


def quiet(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return run
