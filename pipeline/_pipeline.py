"""``pipeline.Pipeline``: scikit-learn's Pipeline, out-of-core.

On numpy input it is scikit-learn's Pipeline, unchanged. On streamed input
(dask, zarr, memmap, a Dataset or a store path; see :mod:`pipeline._adapter`)
every step learns in a streamed pass over the output of the steps before it
(:mod:`pipeline._steps`), and the fitted steps are applied chunk by chunk inside
the next step's stream: each store chunk is read once per pass, and the
transformed data never exists whole.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from sklearn import pipeline as sk_pipeline
from sklearn.base import is_classifier, is_regressor
from sklearn.utils.metaestimators import available_if

from pipeline import _adapter, _steps
from pipeline._cache import PrefixCache
from pipeline._targets import score_aggregate, score_chunk, score_combine

__all__ = ["Pipeline", "make_pipeline"]


def _final_has(attr):
    def check(self):
        getattr(self._final_estimator, attr)
        return True

    return check


class Pipeline(sk_pipeline.Pipeline):
    """A sequence of transforms and a final estimator that stays out of core.

    Parameters
    ----------
    steps : list of (str, estimator)
        As scikit-learn's. Intermediate steps need ``fit`` and ``transform``.
    transform_input, verbose
        As scikit-learn's.
    memory : str, path or joblib.Memory, optional
        As scikit-learn's on in-memory input. On streamed input, the fitted steps
        before the last and their output are kept in ``memory/pipeline-cache`` as a
        saved Pipeline and a store (see :mod:`pipeline._cache`): later refits and
        search candidates with the same prefix on the same data read them instead
        of fitting and transforming again, and the last step's epochs read the
        stored output instead of recomputing it. Keyed by the prefix's parameters and
        the data's identity (a replaced store never hits a stale entry).
    max_in_memory : int, str or "auto", default="auto"
        On streamed input, the most bytes a step that cannot learn chunk by chunk
        (no ``partial_fit``, not dask-native, not ours; e.g. PCA) may read into
        memory to be fitted: a number of bytes, a string such as ``"2GB"``, or
        ``"auto"``, a quarter of this machine's physical memory. Past it, ``fit``
        fails before reading anything, naming the step and what to use instead.

    Notes
    -----
    On streamed input, how each step learns follows from what it is:

    - our networks (and nested Pipelines) stream their own ``fit``, all epochs;
    - transformers with ``partial_fit`` (StandardScaler, MinMaxScaler,
      MaxAbsScaler, IncrementalPCA) learn in one pass, chunk by chunk;
    - a final scikit-learn estimator with ``partial_fit`` (SGDClassifier...) gets
      one streamed pass per ``fit``, as dask-ml's ``Incremental`` gives it;
    - dask-ml's transformers are fitted on the lazy array;
    - stateless steps (Normalizer, FunctionTransformer...) and steps whose fit
      needs only the shape (PolynomialFeatures) are fitted on the first chunk;
    - anything else is read into memory, within ``max_in_memory``.

    ``predict``, ``predict_proba``, ``decision_function``, ``transform`` and
    ``score_samples`` return lazy dask arrays for dask, zarr and store input, and
    numpy for numpy and memmap input; ``score`` streams.
    """

    def __init__(self, steps, *, transform_input=None, memory=None, verbose=False,
                 max_in_memory="auto"):
        super().__init__(steps, transform_input=transform_input, memory=memory, verbose=verbose)
        self.max_in_memory = max_in_memory

    def __pipeline_tags__(self):
        return {"streams": True}

    def save(self, path, *, overwrite=False):
        """Write this Pipeline (fitted or not) to a Zarr group at ``path``; no pickle.

        Our networks are stored as model groups, scikit-learn and dask-ml steps with
        skops (trusted types only); a step that cannot be stored safely is refused,
        named, before anything is written. ``overwrite=True`` replaces only a saved
        Pipeline. Read it back with :func:`pipeline.load`.
        """
        from pipeline._pipeline_io import save_pipeline

        save_pipeline(self, path, overwrite=overwrite)

    # -- fitting ---------------------------------------------------------------------

    def fit(self, X, y=None, **params):
        """Fit every step in turn; streamed input is never read whole.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dask or zarr array, memmap, Dataset or store path
        y : array-like of shape (n_samples,) or (n_samples, n_outputs), optional
            Left out for a Dataset or store path with targets.
        **params
            ``step__param`` fit parameters (``clf__sample_weight``), as scikit-learn's.

        Returns
        -------
        self
        """
        if not _adapter.is_streamed(X):
            return super().fit(X, y, **params)
        self._fit_streamed(X, y, params, "fit")
        return self

    def _fit_streamed(self, X, y, params, method):
        """Fit on streamed input; return the last step's input, lazily."""
        X, y = _adapter.dataset_xy(X, y)
        X, y = _adapter.as_dask(X, "X"), _adapter.as_dask(y, "y", rows=None)
        y = _rows_like(X, y)
        params = {k: _rows_like(X, v) for k, v in params.items()}
        limit = _steps.memory_limit(self.max_in_memory)
        routed = self._check_method_params(method=method, props=params)
        self.steps = list(self.steps)
        self._validate_steps()
        cache = PrefixCache(self.memory) if len(self.steps) > 1 else None
        if cache is not None and cache.root is not None:
            Xt = self._fit_prefix_cached(cache, X, y, routed, limit)
        else:
            Xt = self._fit_prefix(X, y, routed, limit)
        name, last = self.steps[-1]
        if last is not None and last != "passthrough":
            _steps.fit_step(last, Xt, y, dict(routed[name]["fit"]), name=name, limit=limit,
                            last=True)
        return Xt

    def _fit_prefix(self, X, y, routed, limit):
        """Fit every step but the last, in place; return their output, lazily."""
        Xt = X
        for idx, name, step in self._iter(with_final=False, filter_passthrough=False):
            if step is None or step == "passthrough":
                continue
            fitted = _steps.fit_step(
                step, Xt, y, dict(routed[name]["fit"]), name=name, limit=limit
            )
            self.steps[idx] = (name, fitted)
            Xt = _steps.transform_lazy(fitted, Xt, name=name)
        return Xt

    def _fit_prefix_cached(self, cache, X, y, routed, limit):
        """:meth:`_fit_prefix` through ``memory=``: a hit loads the fitted prefix and
        reads its output from the cache instead of fitting and transforming again."""
        prefix = self.steps[:-1]
        params = {name: dict(routed[name]["fit"]) for name, _ in prefix}
        key = cache.key(prefix, X, y, params)
        fitted = cache.load_prefix(key)
        if fitted is None:
            self._fit_prefix(X, y, routed, limit)
            cache.save_prefix(key, self.steps[:-1], self)
        else:
            self.steps[:-1] = fitted

        def output():
            Xt = X
            for _, name, step in self._iter(with_final=False):
                Xt = _steps.transform_lazy(step, Xt, name=name)
            return Xt

        return cache.output(key, output, X.chunks[0])

    @available_if(_final_has("partial_fit"))
    def partial_fit(self, X, y=None, **params):
        """Continue learning on one more batch: each step's ``partial_fit``, in turn.

        Steps without ``partial_fit`` must be fitted already (or stateless) and
        only transform. Used by dask-ml's ``Incremental`` and our Hyperband.

        Parameters
        ----------
        X, y
            A batch (numpy), or streamed input (every chunk in turn).
        **params
            ``step__param`` parameters; ``classes`` goes to the final step.

        Returns
        -------
        self
        """
        classes = params.pop("classes", None)
        if _adapter.is_streamed(X):
            X, y = _adapter.dataset_xy(X, y)
            X, y = _adapter.as_dask(X, "X"), _rows_like(_adapter.as_dask(X, "X"), y)
            if classes is None and y is not None and is_classifier(self._final_estimator):
                classes = np.unique(da.unique(y).compute())
            for xb, yb in _steps.iter_blocks([X, y]):
                self._partial_fit_block(xb, yb, params, classes)
            return self
        return self._partial_fit_block(X, y, params, classes)

    def _partial_fit_block(self, X, y, params, classes):
        self.steps = list(self.steps)
        self._validate_steps()
        Xt = X
        for _, name, step in self._iter(with_final=False, filter_passthrough=False):
            if step is None or step == "passthrough":
                continue
            own = _step_params(params, name)
            if hasattr(step, "partial_fit"):
                step.partial_fit(Xt, y, **own) if y is not None else step.partial_fit(Xt, **own)
            elif not _is_fitted(step):
                step.fit(Xt, y) if y is not None else step.fit(Xt)
            Xt = step.transform(Xt)
        name, last = self.steps[-1]
        if last is not None and last != "passthrough":
            own = _step_params(params, name)
            if classes is not None:
                own["classes"] = classes
            last.partial_fit(Xt, y, **own) if y is not None else last.partial_fit(Xt, **own)
        return self

    def fit_transform(self, X, y=None, **params):
        """Fit, then transform ``X`` with the final step (lazily for streamed input)."""
        if not _adapter.is_streamed(X):
            return super().fit_transform(X, y, **params)
        original = X
        Xt = self._fit_streamed(X, y, params, "fit_transform")
        name, last = self.steps[-1]
        if last is not None and last != "passthrough":
            Xt = _steps.transform_lazy(last, Xt, name=name)
        return Xt if _adapter.returns_lazy(original) else Xt.compute()

    # -- applying --------------------------------------------------------------------

    def _prefix(self, X):
        """Streamed ``X`` through every step but the last, lazily."""
        X, _ = _adapter.dataset_xy(X)
        Xt = _adapter.as_dask(X, "X")
        for _, name, step in self._iter(with_final=False):
            Xt = _steps.transform_lazy(step, Xt, name=name)
        return Xt

    def _apply_last(self, method, X, **params):
        if not _adapter.is_streamed(X):
            return getattr(super(), method)(X, **params)
        Xt = self._prefix(X)
        name, last = self.steps[-1]
        if last is None or last == "passthrough":
            out = Xt
        elif _steps.streams(last):
            out = _adapter.as_dask(getattr(last, method)(Xt, **params))
        else:
            out = _steps.transform_lazy(last, Xt, name=name, method=method)
        return out if _adapter.returns_lazy(X) else out.compute()

    @available_if(_final_has("predict"))
    def predict(self, X, **params):
        """Predictions of the final step; lazy for dask, zarr and store input."""
        return self._apply_last("predict", X, **params)

    @available_if(_final_has("predict_proba"))
    def predict_proba(self, X, **params):
        """Class probabilities of the final step; lazy for dask, zarr and store input."""
        return self._apply_last("predict_proba", X, **params)

    @available_if(_final_has("predict_log_proba"))
    def predict_log_proba(self, X, **params):
        """Log-probabilities of the final step; lazy for dask, zarr and store input."""
        return self._apply_last("predict_log_proba", X, **params)

    @available_if(_final_has("decision_function"))
    def decision_function(self, X, **params):
        """Decision function of the final step; lazy for dask, zarr and store input."""
        return self._apply_last("decision_function", X, **params)

    @available_if(_final_has("score_samples"))
    def score_samples(self, X):
        """Per-sample scores of the final step; lazy for dask, zarr and store input."""
        return self._apply_last("score_samples", X)

    @available_if(sk_pipeline.Pipeline._can_transform)
    def transform(self, X, **params):
        """Every step's transform in turn; lazy for dask, zarr and store input."""
        if not _adapter.is_streamed(X):
            return super().transform(X, **params)
        Xt = self._prefix(X)
        name, last = self.steps[-1]
        if last is not None and last != "passthrough":
            Xt = _steps.transform_lazy(last, Xt, name=name)
        return Xt if _adapter.returns_lazy(X) else Xt.compute()

    @available_if(_final_has("score"))
    def score(self, X, y=None, sample_weight=None, **params):
        """The final step's score; streamed (chunk by chunk) for streamed input.

        Classifiers score accuracy and regressors R², as scikit-learn's; other
        final steps score their input read into memory, within ``max_in_memory``.
        """
        if not _adapter.is_streamed(X):
            return super().score(X, y, sample_weight=sample_weight, **params)
        X, y = _adapter.dataset_xy(X, y)
        Xt = self._prefix(X)
        y = _rows_like(Xt, y)
        w = _rows_like(Xt, sample_weight)
        last = self._final_estimator
        if _steps.streams(last):
            return last.score(Xt, y, sample_weight=w)
        if y is not None and (is_classifier(last) or is_regressor(last)):
            pred = _steps.transform_lazy(last, Xt, name=self.steps[-1][0], method="predict")
            return _streamed_score(is_classifier(last), pred, y, w)
        limit = _steps.memory_limit(self.max_in_memory)
        kw = {} if w is None else {"sample_weight": w}
        Xm, ym, kw = _steps._read_into_memory(last, self.steps[-1][0], Xt, y, kw, limit)
        return last.score(Xm, ym, **kw)


def _streamed_score(classifier, pred, y, w):
    """Accuracy or R² of lazy predictions, one chunk at a time (a stable combine)."""
    w = da.ones(y.shape[0], chunks=(y.chunks[0],)) if w is None else w.astype(np.float64)
    if classifier:
        right = (pred == y) if y.ndim == 1 else (pred == y).all(axis=1)
        hit, total = dask.compute((right * w).sum(), w.sum())
        return float(hit / total)
    P = pred.reshape(pred.shape[0], -1).astype(np.float64)
    T = y.reshape(y.shape[0], -1).astype(np.float64)
    table = da.concatenate([T, w[:, None]], axis=1).rechunk({1: -1})
    P = P.rechunk({0: table.chunks[0], 1: -1})
    stats = da.map_blocks(
        lambda p, t: score_chunk("continuous", p, t)[None], P, table,
        chunks=((1,) * P.numblocks[0], (1 + 4 * T.shape[1],)), dtype=np.float64,
    ).compute()
    return float(score_aggregate("continuous", score_combine("continuous", list(stats))))


def _rows_like(X, a):
    """``a`` (None, numpy or dask, sample-aligned with X) chunked like X along axis 0."""
    if a is None or not hasattr(a, "shape") or not a.shape or a.shape[0] != X.shape[0]:
        return a
    if isinstance(a, da.Array):
        return a.rechunk({0: X.chunks[0]})
    return _adapter.as_dask(np.asarray(a), rows=X.chunks[0])


def _step_params(params, name):
    prefix = name + "__"
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _is_fitted(step):
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(step)
    except NotFittedError:
        return False
    return True


def make_pipeline(*steps, memory=None, transform_input=None, verbose=False,
                  max_in_memory="auto"):
    """A :class:`Pipeline` of ``steps``, named after their classes (scikit-learn's rule).

    Unlike ``sklearn.pipeline.make_pipeline``, whose scikit-learn steps read lazy
    data into memory, this Pipeline stays out of core on dask, zarr, memmap and
    store input.
    """
    return Pipeline(
        sk_pipeline._name_estimators(steps),
        memory=memory,
        transform_input=transform_input,
        verbose=verbose,
        max_in_memory=max_in_memory,
    )
