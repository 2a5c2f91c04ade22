"""pipeline.model_selection: scikit-learn's results, merged work (counted), lazy folds,
failures, schedulers (threads, processes, a LocalCluster), adaptive search, reports."""

import os
import sys
import warnings

import cloudpickle
import dask.array as da
import matplotlib
import numpy as np
import pytest
from scipy.stats import loguniform
from sklearn import model_selection as skms
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import make_classification
from sklearn.exceptions import FitFailedWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline import MLPClassifier
from pipeline import model_selection as ms

matplotlib.use("Agg")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for spawned processes


class Recorder(TransformerMixin, BaseEstimator):
    """A scaler that appends a line to ``log`` at every fit (and fails if asked)."""

    def __init__(self, log=None, scale=1.0, fail=False):
        self.log, self.scale, self.fail = log, scale, fail

    def fit(self, X, y=None):
        if self.fail:
            raise RuntimeError("asked to fail")
        with open(self.log, "a") as f:
            f.write(f"{len(X)}\n")
        self.mean_ = np.asarray(X).mean(axis=0)
        return self

    def transform(self, X):
        return (np.asarray(X) - self.mean_) * self.scale


def fits(log):
    return len(open(log).read().split()) if os.path.exists(log) else 0


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(300, 8, n_informative=5, random_state=0)
    return X, y


def _same_results(ours, theirs):
    for key, expected in theirs.items():
        if "time" in key:
            continue
        got = ours[key]
        if key == "params" or isinstance(expected, np.ma.MaskedArray):
            assert list(got) == list(expected), key
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-10, err_msg=key)


GRID = {"clf__C": [0.01, 0.1, 1.0], "clf__fit_intercept": [True, False]}


def _pipe(log):
    return Pipeline([("rec", Recorder(str(log))), ("clf", LogisticRegression())])


def test_grid_search_equals_sklearn_and_fits_the_prefix_once_per_fold(data, tmp_path):
    X, y = data
    ours = ms.GridSearchCV(_pipe(tmp_path / "a"), GRID, cv=3, return_train_score=True).fit(X, y)
    theirs = skms.GridSearchCV(_pipe(tmp_path / "b"), GRID, cv=3, return_train_score=True)
    theirs.fit(X, y)
    _same_results(ours.cv_results_, theirs.cv_results_)
    assert ours.best_params_ == theirs.best_params_ and ours.best_index_ == theirs.best_index_
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X))
    K, k = 6, 3
    assert fits(tmp_path / "a") == k + 1  # once per fold, once for the refit
    assert fits(tmp_path / "b") == K * k + 1


def test_multimetric_and_randomized_equal_sklearn(data):
    X, y = data
    est = Pipeline([("sc", StandardScaler()), ("clf", LogisticRegression())])
    kw = {"scoring": ["accuracy", "roc_auc"], "refit": "roc_auc", "cv": 4}
    ours = ms.GridSearchCV(est, {"clf__C": [0.01, 1.0]}, **kw).fit(X, y)
    theirs = skms.GridSearchCV(est, {"clf__C": [0.01, 1.0]}, **kw).fit(X, y)
    _same_results(ours.cv_results_, theirs.cv_results_)
    assert ours.best_score_ == pytest.approx(theirs.best_score_)
    dist = {"clf__C": loguniform(1e-3, 1e1)}
    ours = ms.RandomizedSearchCV(est, dist, n_iter=4, random_state=0, cv=3).fit(X, y)
    theirs = skms.RandomizedSearchCV(est, dist, n_iter=4, random_state=0, cv=3).fit(X, y)
    _same_results(ours.cv_results_, theirs.cv_results_)


def test_nested_cv_equals_sklearn_and_counts_fits(data, tmp_path):
    X, y = data
    outer = skms.KFold(3, shuffle=True, random_state=1)
    ours = ms.nested_cross_validate(_pipe(tmp_path / "a"), GRID, X, y, outer_cv=outer, inner_cv=3)
    inner = skms.GridSearchCV(_pipe(tmp_path / "b"), GRID, cv=3)
    theirs = skms.cross_val_score(inner, X, y, cv=outer)
    np.testing.assert_allclose(ours["test_score"], theirs, rtol=1e-12)
    assert fits(tmp_path / "a") == 9 + 3  # 3 outer x 3 inner folds, 3 inner refits
    assert fits(tmp_path / "b") == 57  # 3 x (6 candidates x 3 folds + 1)
    assert len(ours["params"]) == 3 and set(ours["params"][0]) == set(GRID)
    table = ours.report()
    assert list(table["test_score"]) == list(ours["test_score"])
    assert set(GRID) <= set(table.columns)
    # our search as the estimator of our cross_validate is the same nested CV
    again = ms.cross_validate(ms.GridSearchCV(_pipe(tmp_path / "c"), GRID, cv=3), X, y, cv=outer)
    np.testing.assert_allclose(again["test_score"], ours["test_score"])
    assert fits(tmp_path / "c") == 12


def test_cross_validate_equals_sklearn(data):
    X, y = data
    est = Pipeline([("sc", StandardScaler()), ("clf", LogisticRegression(C=0.1))])
    kw = {"cv": 4, "scoring": ["accuracy", "neg_log_loss"], "return_train_score": True}
    ours = ms.cross_validate(est, X, y, return_estimator=True, return_indices=True, **kw)
    theirs = skms.cross_validate(est, X, y, return_estimator=True, return_indices=True, **kw)
    for key in ("test_accuracy", "test_neg_log_loss", "train_accuracy"):
        np.testing.assert_allclose(ours[key], theirs[key])
    for a, b in zip(ours["estimator"], theirs["estimator"], strict=True):
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X))
    np.testing.assert_array_equal(ours["indices"]["test"][1], theirs["indices"]["test"][1])
    np.testing.assert_allclose(
        ms.cross_val_score(est, X, y, cv=3), skms.cross_val_score(est, X, y, cv=3)
    )


def test_failing_candidates_follow_error_score(data, tmp_path):
    X, y = data
    est = _pipe(tmp_path / "a")
    grid = {"rec__fail": [False, True], "clf__C": [0.1, 1.0]}
    with pytest.warns(FitFailedWarning, match="asked to fail"):
        search = ms.GridSearchCV(est, grid, cv=3, error_score=-1.0).fit(X, y)
    failed = [p["rec__fail"] for p in search.cv_results_["params"]]
    scores = search.cv_results_["mean_test_score"]
    assert all((s == -1.0) == f for s, f in zip(scores, failed, strict=True))
    assert search.best_params_["rec__fail"] is False
    with pytest.raises(RuntimeError, match="asked to fail"):
        ms.GridSearchCV(est, grid, cv=3, error_score="raise").fit(X, y)
    with pytest.raises(ValueError, match="fits failed"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms.GridSearchCV(est, {"rec__fail": [True]}, cv=3).fit(X, y)


def _broken_scorer(est, X, y):
    raise RuntimeError("scorer broke")


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_a_failing_scorer_scores_error_score_as_sklearn(data):
    X, y = data
    est, grid = LogisticRegression(), {"C": [0.1, 1.0]}
    for scoring, refit in (
        (_broken_scorer, True),
        ({"bad": _broken_scorer, "acc": "accuracy"}, "acc"),
    ):
        kw = {"cv": 2, "scoring": scoring, "refit": refit}
        with pytest.warns(UserWarning, match="Scoring failed(.|\n)*scorer broke"):
            ours = ms.GridSearchCV(est, grid, **kw).fit(X, y)
        with pytest.warns(UserWarning, match="Scoring failed"):
            theirs = skms.GridSearchCV(est, grid, **kw).fit(X, y)
        _same_results(ours.cv_results_, theirs.cv_results_)
        assert set(ours.cv_results_) == set(theirs.cv_results_)
        assert ours.best_index_ == theirs.best_index_
    assert np.isnan(ours.cv_results_["mean_test_bad"]).all()
    with pytest.warns(UserWarning, match="Scoring failed"):
        scores = ms.cross_validate(est, X, y, cv=2, scoring=_broken_scorer)
    assert np.isnan(scores["test_score"]).all()
    with pytest.raises(RuntimeError, match="scorer broke"):
        ms.GridSearchCV(est, grid, cv=2, scoring=_broken_scorer, error_score="raise").fit(X, y)


def _blas_threads(spec):
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def test_tasks_get_their_share_of_blas_threads():
    from pipeline._scheduler import run

    dsk = {"a": (_blas_threads, None)}
    assert run(dsk, ["a"], scheduler="processes", n_jobs=os.cpu_count()) == [1]
    assert run(dsk, ["a"], scheduler="threads", n_jobs=os.cpu_count()) == [1]


def test_processes_scheduler_gives_same_results_and_counts(data, tmp_path):
    X, y = data
    grid = {"clf__C": [0.1, 1.0], "clf__fit_intercept": [True, False]}
    threads = ms.GridSearchCV(_pipe(tmp_path / "t"), grid, cv=3).fit(X, y)
    procs = ms.GridSearchCV(_pipe(tmp_path / "p"), grid, cv=3, scheduler="processes", n_jobs=2)
    procs.fit(X, y)
    _same_results(procs.cv_results_, threads.cv_results_)
    assert fits(tmp_path / "p") == 3 + 1


@pytest.fixture(scope="module")
def lazy_data():
    X, y = make_classification(1200, 10, n_informative=6, random_state=0)
    return da.from_array(X.astype(np.float32), chunks=200), da.from_array(y, chunks=200)


NET = MLPClassifier(
    hidden_layer_sizes=(8,), max_iter=4, batch_size=100, learning_rate_init=0.03, random_state=0
)


def test_lazy_folds_stream_into_our_networks(lazy_data):
    X, y = lazy_data
    pipe = Pipeline([("sc", StandardScaler()), ("net", NET)])
    search = ms.GridSearchCV(pipe, {"net__alpha": [1e-4, 1e-1]}, cv=3).fit(X, y)
    selected = [k for k in search.dask_graph_ if k.startswith("data-X")]
    assert len(selected) == 1 and not isinstance(search.dask_graph_[selected[0]], np.ndarray)
    assert np.all(search.cv_results_["mean_test_score"] > 0.75)
    assert isinstance(search.best_estimator_, Pipeline)
    assert search.score(X.compute(), y.compute()) > 0.75
    again = ms.GridSearchCV(pipe, {"net__alpha": [1e-4, 1e-1]}, cv=3, scheduler="synchronous")
    _same_results(again.fit(X, y).cv_results_, search.cv_results_)


def test_lazy_folds_give_sklearns_results_with_sklearn_steps(lazy_data):
    """Unshuffled folds skip whole store chunks; the scaler learns chunk by chunk
    (partial_fit), the final step sees the transformed fold: scikit-learn's numbers."""
    X, y = lazy_data
    pipe = Pipeline([("sc", StandardScaler()), ("clf", LogisticRegression())])
    grid = {"clf__C": [0.1, 1.0]}
    ours = ms.GridSearchCV(pipe, grid, cv=3).fit(X, y)
    theirs = skms.GridSearchCV(pipe, grid, cv=3).fit(X.compute(), y.compute())
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fold read whole into a scikit-learn check
        nested = ms.nested_cross_validate(pipe, grid, X, y, outer_cv=3, inner_cv=2)
    expected = skms.cross_val_score(
        skms.GridSearchCV(pipe, grid, cv=2), X.compute(), y.compute(), cv=3
    )
    np.testing.assert_allclose(nested["test_score"], expected)


def test_same_results_on_a_local_cluster(lazy_data):
    distributed = pytest.importorskip("distributed")
    X, y = lazy_data
    Xm, ym = X.compute(), y.compute()
    grid = {"net__alpha": [1e-4, 1e-1]}
    pipe = Pipeline([("sc", StandardScaler()), ("net", NET)])
    local = ms.GridSearchCV(pipe, grid, cv=3).fit(Xm, ym)
    hb = ms.HyperbandSearchCV(NET, {"alpha": [1e-5, 1e-3, 1e-1]}, max_iter=3, random_state=0)
    hb.fit(Xm, ym)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with distributed.Client(cluster) as client:
            remote = ms.GridSearchCV(pipe, grid, cv=3).fit(Xm, ym)
            lazy = ms.GridSearchCV(pipe, grid, cv=3, scheduler=client).fit(X, y)
            hb_remote = ms.HyperbandSearchCV(
                NET, {"alpha": [1e-5, 1e-3, 1e-1]}, max_iter=3, random_state=0
            ).fit(Xm, ym)
    _same_results(remote.cv_results_, local.cv_results_)
    assert np.all(lazy.cv_results_["mean_test_score"] > 0.75)
    np.testing.assert_allclose(hb_remote.cv_results_["test_score"], hb.cv_results_["test_score"])


def test_hyperband_budget_and_results(data):
    X, y = data
    est = SGDClassifier(random_state=0)
    search = ms.HyperbandSearchCV(
        est, {"alpha": loguniform(1e-6, 1e-1)}, max_iter=9, aggressiveness=3, random_state=0
    )
    planned = search.metadata
    search.fit(X, y)
    assert search.metadata_ == planned
    assert planned["n_models"] == len(search.cv_results_["params"]) == 9 + 5 + 3
    assert search.cv_results_["partial_fit_calls"].max() == 9
    assert search.best_score_ == search.cv_results_["test_score"].max()
    assert search.best_estimator_.score is not None and search.predict(X).shape == (300,)
    assert list(search.report()["rank_test_score"])[:3] == [1, 2, 3]
    sha = ms.SuccessiveHalvingSearchCV(
        est,
        {"alpha": loguniform(1e-6, 1e-1)},
        n_initial_parameters=9,
        n_initial_iter=2,
        random_state=0,
    )
    sha.fit(X, y)
    calls = sorted(sha.cv_results_["partial_fit_calls"])
    assert calls == [2] * 6 + [6] * 2 + [18]  # 9 models, 3 go on, 1 goes on
    with pytest.raises(TypeError, match="partial_fit"):
        ms.HyperbandSearchCV(LogisticRegression(), {"C": [1.0]}).fit(X, y)


def test_our_networks_in_sklearn_halving_search(data):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = data
    net = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    search = HalvingGridSearchCV(
        net,
        {"alpha": [1e-4, 1e-2, 1.0]},
        cv=3,
        factor=3,
        resource="max_iter",
        max_resources=9,
        min_resources=1,
    )
    search.fit(X.astype(np.float32), y)
    assert search.n_iterations_ == 2 and search.best_estimator_.max_iter == 3


def test_reports_plots_and_graph(data, capsys):
    X, y = data
    est = Pipeline([("sc", StandardScaler()), ("clf", LogisticRegression())])
    search = ms.GridSearchCV(est, GRID, cv=3, return_train_score=True, verbose=1).fit(X, y)
    assert "task" in capsys.readouterr().err  # the progress bar
    table = search.report()
    assert list(table.index)[0] == search.best_index_
    assert table["test score"].iloc[0].startswith(f"{search.best_score_:.3f} ± ")
    fig = search.boxplot_parameters(display_train=True)
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == list(GRID)
    assert len(search.visualize().axes[0].collections) >= 4  # task kinds drawn
    kinds = {k.split("-")[0] for k in search.dask_graph_}
    assert {"data", "select", "fit", "score", "choose", "refit"} <= kinds
    # StandardScaler fitted once per fold for all 6 candidates
    fitted = [k for k in search.dask_graph_ if k.startswith("fit-")]
    assert len(fitted) == 3 + 6 * 3
    with pytest.raises(ValueError, match="scheduler"):
        ms.GridSearchCV(est, GRID, scheduler="nonsense").fit(X, y)
    with pytest.raises(ValueError, match="different numbers of samples: 300 and 200"):
        ms.GridSearchCV(est, GRID).fit(X, y[:200])
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        ms.nested_cross_validate(est, {"clf__nope": [1]}, X, y)


@pytest.mark.parametrize("kind", ["memmap", "zarr", "store"])
def test_searches_over_our_pipeline_stay_lazy_on_every_streamed_input(lazy_data, kind, tmp_path):
    import zarr

    from pipeline import make_pipeline, store

    X, y = (a.compute() for a in lazy_data)
    if kind == "memmap":
        np.save(tmp_path / "x.npy", X)
        given = np.load(tmp_path / "x.npy", mmap_mode="r")
    elif kind == "zarr":
        given = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(200, 10),
                                  dtype=X.dtype)
        given[:] = X
    else:
        given = store.write(tmp_path / "s.zarr", X, y, chunk_rows=200).X
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    grid = {"logisticregression__C": [0.1, 1.0]}
    ours = ms.GridSearchCV(pipe, grid, cv=3).fit(given, y)
    selected = [k for k in ours.dask_graph_ if k.startswith("data-X")]
    assert not isinstance(ours.dask_graph_[selected[0]], np.ndarray)  # a lazy view, not a copy
    theirs = skms.GridSearchCV(pipe, grid, cv=3).fit(X, y)
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"]
    )
    assert type(ours.best_estimator_) is type(pipe)
    nested = ms.nested_cross_validate(pipe, grid, given, y, outer_cv=3, inner_cv=2)
    expected = skms.cross_val_score(skms.GridSearchCV(pipe, grid, cv=2), X, y, cv=3)
    np.testing.assert_allclose(nested["test_score"], expected)
