"""MLPClassifier / MLPRegressor: scikit-learn's behaviour, out-of-core, deterministic."""

import pickle
import warnings

import dask
import dask.array as da
import jax
import numpy as np
import pytest
import zarr
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor

from pipeline import MLPClassifier, MLPRegressor
from pipeline import store as pstore

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
FAST = dict(hidden_layer_sizes=(32,), max_iter=3, random_state=0)


def _same_model(a, b):
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def fitted(digits):
    X, y, _, _ = digits
    return MLPClassifier(**FAST).fit(X, y)


def test_accuracy_matches_scikit_learn(digits):
    X, y, X_te, y_te = digits
    ours = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(X, y)
    ref = SkMLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0).fit(X, y)
    assert ours.score(X_te, y_te) >= ref.score(X_te, y_te) - 0.03
    assert ours.score(X_te, y_te) > 0.85


def test_fitted_attributes_have_scikit_learns_shapes(digits):
    X, y = digits[0][:300], digits[1][:300]
    multilabel = np.stack([y % 2, y > 4, y == 0], 1)
    cases = [
        (MLPClassifier, SkMLPClassifier, y),
        (MLPClassifier, SkMLPClassifier, y % 2),
        (MLPClassifier, SkMLPClassifier, multilabel),
        (MLPRegressor, SkMLPRegressor, y.astype(float)),
        (MLPRegressor, SkMLPRegressor, np.stack([y, -y], 1).astype(float)),
    ]
    for ours, theirs, target in cases:
        a = ours(hidden_layer_sizes=(7, 5), max_iter=2, random_state=0).fit(X, target)
        b = theirs(hidden_layer_sizes=(7, 5), max_iter=2, random_state=0).fit(X, target)
        for name in (
            "n_layers_",
            "n_outputs_",
            "out_activation_",
            "n_features_in_",
            "n_iter_",
            "t_",
            "best_validation_score_",
            "validation_scores_",
        ):
            assert getattr(a, name) == getattr(b, name), name
        assert [c.shape for c in a.coefs_] == [c.shape for c in b.coefs_]
        assert [c.shape for c in a.intercepts_] == [c.shape for c in b.intercepts_]
        assert len(a.loss_curve_) == len(b.loss_curve_) and np.isfinite(a.best_loss_)
        assert a.predict(X).shape == b.predict(X).shape
        if hasattr(b, "predict_proba"):
            np.testing.assert_array_equal(a.classes_, b.classes_)
            assert a.predict_proba(X).shape == b.predict_proba(X).shape


def test_streamed_inputs_give_the_same_model_as_numpy(digits, digits_store, tmp_path):
    """numpy, dask, zarr, memmap and a store: one order of samples, one model."""
    X, y = digits[0], digits[1]
    rows = 200
    ref = MLPClassifier(**FAST)
    ref.fit(da.from_array(X, chunks=rows), y)
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mm[:] = X
    z = zarr.open_group(digits_store.path, mode="r")["X"]
    for X_in, y_in in [
        (digits_store.X, digits_store.y),
        (digits_store, None),
        (z, y),
        (da.from_array(X, chunks=rows), da.from_array(y, chunks=rows)),
    ]:
        _same_model(ref, MLPClassifier(**FAST).fit(X_in, y_in))
    assert z.chunks[0] == rows


def test_same_model_on_every_scheduler_and_prefetch_depth(digits_store):
    ref = MLPClassifier(**FAST, prefetch=0).fit(digits_store.X, digits_store.y)
    for scheduler, prefetch in [("sync", 1), ("threads", 3), ("threads", 0)]:
        with dask.config.set(scheduler=scheduler):
            est = MLPClassifier(**FAST, prefetch=prefetch).fit(digits_store.X, digits_store.y)
        _same_model(ref, est)


def test_predict_on_dask_is_lazy_and_independent_of_batching(fitted, digits):
    X = digits[2]
    lazy = fitted.predict_proba(da.from_array(X, chunks=50))
    assert isinstance(lazy, da.Array) and lazy.shape == (len(X), 10)
    full = fitted.predict_proba(X)
    np.testing.assert_array_equal(lazy.compute(), full)
    parts = np.concatenate([fitted.predict_proba(X[:7]), fitted.predict_proba(X[7:])])
    np.testing.assert_array_equal(parts, full)
    labels = fitted.predict(da.from_array(X, chunks=50))
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), fitted.predict(X))
    assert fitted.score(da.from_array(X, chunks=64), digits[3]) == pytest.approx(
        fitted.score(X, digits[3])
    )


def test_fit_streams_chunk_by_chunk_and_never_materialises_x(digits):
    X, y = digits[0], digits[1]
    reads = []

    def record(block):
        reads.append(len(block))
        return block

    Xd = da.from_array(X, chunks=100).map_blocks(record, dtype=X.dtype)
    est = MLPClassifier(**{**FAST, "max_iter": 2}, early_stopping=True, validation_fraction=0.2)
    est.fit(Xd, y)
    # each epoch reads every block once for training and once for validation, never all at once
    reads = [n for n in reads if n]  # dask probes a function with an empty block once
    assert len(reads) == 2 * 2 * 14 and max(reads) == 100
    assert len(est.validation_scores_) == 2 and est.best_loss_ is None


def test_early_stopping_restores_the_best_model(digits):
    X, y = digits[0], digits[1]
    est = MLPClassifier(
        hidden_layer_sizes=(32,),
        max_iter=200,
        random_state=0,
        early_stopping=True,
        n_iter_no_change=3,
        learning_rate_init=0.05,
    )
    est.fit(X, y)
    assert est.n_iter_ < 200 and len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)


def test_partial_fit_contract(digits):
    X, y = digits[0], digits[1]
    est = MLPClassifier(**FAST)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        est.partial_fit(X, y)
    est.partial_fit(X[:500], y[:500], classes=np.arange(10))
    assert est.n_iter_ == 1 and est.t_ == 500
    est.partial_fit(da.from_array(X[500:], chunks=128), y[500:])
    assert est.n_iter_ == 1 and est.t_ == len(X)  # per call, as scikit-learn 1.9
    shuffled = MLPClassifier(**FAST).partial_fit(X, y % 3, classes=[2, 0, 1, 1])
    np.testing.assert_array_equal(shuffled.classes_, [0, 1, 2])
    with pytest.raises(ValueError, match="classes not in `self.classes_`"):
        est.partial_fit(X[:20], y[:20] + 10)
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'"):
        MLPClassifier(solver="lbfgs").partial_fit(X, y)
    with pytest.raises(ValueError, match="does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))


def test_partial_fit_keeps_the_optimizer_across_calls_of_any_size(digits):
    X, y = digits[0], digits[1]
    est = MLPClassifier(**FAST, learning_rate="cosine")
    est.partial_fit(X[:300], y[:300], classes=np.arange(10))
    count = int(est._opt_state.count)
    est.partial_fit(X[300:1000], y[300:1000])  # another size: another steps-per-epoch
    assert int(est._opt_state.count) == count + 4  # continued, not restarted (700 / 200)


def test_partial_fit_epochs_equal_fit_epochs(digits):
    X, y = digits[0], digits[1]
    a = MLPClassifier(**FAST).fit(X, y)
    b = MLPClassifier(**FAST)
    for _ in range(3):
        b.partial_fit(X, y, classes=np.arange(10))
    _same_model(a, b)


def test_bad_streamed_input_gets_clear_errors(fitted, digits):
    X, y = digits[0].copy(), digits[1]
    X[777, 3] = np.nan
    est = MLPClassifier(**FAST)
    with pytest.raises(ValueError, match="NaN or infinity: found in training chunk"):
        est.fit(da.from_array(X, chunks=100), y)
    assert not hasattr(est, "coefs_")  # a failed fit leaves no model that looks complete
    fitted_before = [c.copy() for c in fitted.coefs_]
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.partial_fit(da.from_array(X, chunks=100), y)
    for a, b in zip(fitted.coefs_, fitted_before, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.predict(da.from_array(X, chunks=100)).compute()
    with pytest.raises(ValueError, match="X has 5 features, but MLPClassifier is expecting 64"):
        fitted.predict(da.ones((10, 5), chunks=5))
    with pytest.raises(ValueError, match="solver='lbfgs'.*in memory"):
        MLPClassifier(solver="lbfgs").fit(da.from_array(digits[0], chunks=100), y)
    with pytest.raises(ValueError, match="classes not in"):
        fitted.score(da.from_array(digits[0][:10], chunks=5), np.full(10, 42))
    with pytest.raises(ValueError, match="requires y"):
        MLPClassifier().fit(da.from_array(digits[0], chunks=100), None)
    with pytest.raises(TypeError, match="must hold numbers"):
        MLPClassifier().fit(da.from_array(np.array([["a", "b"]] * 4)), np.arange(4) % 2)
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(da.from_array(digits[0], chunks=100), y + 0.5)


def test_streamed_targets_weights_and_samples_get_clear_errors():
    rng = np.random.default_rng(0)
    X, y = da.from_array(rng.normal(size=(8, 3)), chunks=4), np.arange(8) % 2
    tiny = dict(hidden_layer_sizes=(2,), max_iter=1)
    for est in (MLPClassifier(**tiny), MLPRegressor(**tiny)):
        with pytest.raises(ValueError, match=r"y must be 1-D or 2-D.*got shape \(8, 2, 2\)"):
            est.fit(X, da.ones((8, 2, 2), chunks=4))
        with pytest.raises(ValueError, match=r"sample_weight must be 1-D.*got shape \(8, 2\)"):
            est.fit(X, y, sample_weight=np.ones((8, 2)))
        for weights in (
            np.r_[1.0, np.nan, np.ones(6)],
            da.from_array(np.r_[np.ones(5), np.inf, 1, 1], 4),
        ):
            with pytest.raises(ValueError, match="sample_weight contains NaN or infinity"):
                est.fit(X, y, sample_weight=weights)
        for empty in (np.ones((8, 0)), da.ones((8, 0), chunks=4)):
            with pytest.raises(ValueError, match=r"0 feature\(s\).*axis 1 of X \(features\)"):
                est.fit(empty, y)
    est = MLPRegressor(**tiny)
    est.fit(X, y.astype(float), sample_weight=2.0)  # one weight for all, as scikit-learn
    for target in (np.array(["a", "b"] * 4), da.from_array(np.array(["a", "b"] * 4), 4)):
        with pytest.raises(ValueError, match="MLPRegressor predicts numbers, but y holds text"):
            est.fit(X, target)
    labels = da.from_array(np.array([1, None] * 4, dtype=object), chunks=4)
    with pytest.raises(ValueError, match="labels cannot be ordered"):
        MLPClassifier(**tiny).fit(X, labels)


def test_lbfgs_matches_scikit_learn(digits):
    X, y = digits[0][:400], digits[1][:400]
    ours = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), max_iter=80, random_state=0)
    ref = SkMLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), max_iter=80, random_state=0)
    ours.fit(X, y)
    ref.fit(X, y)
    assert ours.loss_ < 0.1 and ours.n_iter_ <= 80 and not hasattr(ours, "loss_curve_")
    assert ours.score(digits[2], digits[3]) >= ref.score(digits[2], digits[3]) - 0.05


@pytest.mark.parametrize("solver", ["sgd", "adamw", "adagrad", "rmsprop"])
def test_other_solvers_learn(digits, solver):
    X, y = digits[0], digits[1]
    lr = {"sgd": 0.1, "adagrad": 0.05}.get(solver, 0.003)
    est = MLPClassifier(
        hidden_layer_sizes=(32,),
        max_iter=10,
        random_state=0,
        solver=solver,
        learning_rate_init=lr,
        batch_size=50,
    ).fit(X, y)
    assert est.score(digits[2], digits[3]) > 0.8


def test_our_extras_train(digits):
    X, y = digits[0], digits[1]
    est = MLPClassifier(
        hidden_layer_sizes=(32, 32),
        max_iter=10,
        random_state=0,
        dropout=0.1,
        batch_size=50,
        batch_norm=True,
        l1=1e-4,
        clip_norm=1.0,
        learning_rate="cosine",
        warmup_epochs=1,
        activation="gelu",
    ).fit(X, y)
    assert est.score(digits[2], digits[3]) > 0.8


def test_adaptive_learning_rate_divides_by_five(digits):
    X, y = digits[0][:200], digits[1][:200]
    est = MLPClassifier(
        hidden_layer_sizes=(8,),
        solver="sgd",
        learning_rate="adaptive",
        learning_rate_init=1e-5,
        n_iter_no_change=1,
        max_iter=6,
        random_state=0,
    )
    est.fit(X, y)
    from pipeline import nn

    assert nn.current_learning_rate(est._opt_state) == pytest.approx(1e-5 / 25)


def test_regressor_learns_and_float64_trains_in_float64():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.01 * rng.normal(size=600)
    est = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X, y)
    assert est.score(X, y) > 0.95 and est.coefs_[0].dtype == np.float64
    streamed = MLPRegressor(hidden_layer_sizes=(32,), max_iter=5, random_state=0)
    streamed.fit(da.from_array(X.astype(np.float32), chunks=100), y)
    assert streamed.coefs_[0].dtype == np.float32
    assert streamed.score(da.from_array(X, chunks=100), y) == pytest.approx(
        streamed.score(X, y), abs=1e-4
    )
    poisson = MLPRegressor(loss="poisson", hidden_layer_sizes=(8,), max_iter=50, random_state=0)
    poisson.fit(X, np.exp(X[:, 0] / 2))
    assert poisson.out_activation_ == "exp" and (poisson.predict(X) > 0).all()


def test_pickle_holds_numpy_not_device_state(fitted, digits):
    clone = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(clone.predict_proba(digits[2]), fitted.predict_proba(digits[2]))
    leaves = jax.tree_util.tree_leaves(vars(fitted))
    assert not any(isinstance(leaf, jax.Array) for leaf in leaves)


def test_verbose_shows_a_progress_bar_with_the_loss(digits, capsys):
    MLPClassifier(**FAST, verbose=True).fit(digits[0], digits[1])
    err = capsys.readouterr().err
    assert "3.0/3 epochs" in err and "loss=" in err


def test_verbose_prints_scikit_learns_iteration_lines_when_not_a_terminal(digits, capsys):
    """Log parsers read scikit-learn's lines from stdout; capsys's stdout is no terminal."""
    est = MLPClassifier(**FAST, verbose=True, early_stopping=True).fit(digits[0], digits[1])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        f"Iteration 1, loss = {est.loss_curve_[0]:.8f}",
        f"Validation score: {est.validation_scores_[0]:f}",
    ]
    assert sum(line.startswith("Iteration") for line in lines) == est.n_iter_ == 3


def test_float32_and_float64_fits_start_alike_and_agree(digits):
    """The initial draw does not depend on the dtype (scikit-learn's contract), so both
    fits follow the same path; a float32 regressor predicts float32, as scikit-learn's."""
    X, y = digits[0][:300].astype(np.float64), digits[1][:300]
    start = dict(hidden_layer_sizes=(5, 3), random_state=1, max_iter=1, learning_rate_init=1e-12)
    a, b = MLPRegressor(**start).fit(X, y), MLPRegressor(**start).fit(X.astype(np.float32), y)
    for x, x32 in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        assert x.dtype == np.float64 and x32.dtype == np.float32
        np.testing.assert_allclose(x, x32, rtol=1e-6, atol=1e-9)
    # scikit-learn's test_mlp_regressor_dtypes_casting, at a seed where rounding does
    # not change the trajectory (see tests/test_sklearn_mlp.py)
    fit = dict(alpha=1e-5, hidden_layer_sizes=(5, 3), random_state=2, max_iter=150, tol=1e-3)
    p64 = MLPRegressor(**fit).fit(X, y).predict(digits[2].astype(np.float64))
    p32 = MLPRegressor(**fit).fit(X.astype(np.float32), y).predict(digits[2])
    assert p32.dtype == np.float32 and p64.dtype == np.float64
    np.testing.assert_allclose(p64, p32, rtol=5e-4)


def test_lbfgs_max_fun_warns():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 10)), rng.normal(size=200)
    est = MLPRegressor(solver="lbfgs", hidden_layer_sizes=50, tol=0.0, max_fun=10, random_state=1)
    with pytest.warns(ConvergenceWarning, match="TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"):
        est.fit(X, y)
    assert est.n_iter_ <= 10


def test_a_single_class_is_learned_and_predicted_as_scikit_learns():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.full(20, "only")
    ours = MLPClassifier(**FAST).fit(X, y)
    ref = SkMLPClassifier(**FAST).fit(X, y)
    assert ours.classes_.tolist() == ref.classes_.tolist() == ["only"]
    assert ours.predict(X).tolist() == ref.predict(X).tolist() == ["only"] * 20
    assert ours.predict_proba(X).shape == ref.predict_proba(X).shape == (20, 2)
    MLPClassifier(**FAST, early_stopping=True).fit(X, y)  # the split stratifies one class


def test_coefs_set_by_hand_are_the_start_of_a_warm_start():
    X, y = np.array([[0.6, 0.8, 0.7], [0.1, 0.2, 0.3]]), np.array([0, 1])
    est = MLPClassifier(hidden_layer_sizes=2, warm_start=True, max_iter=1, solver="sgd")
    est.coefs_ = [np.full((3, 2), 0.1), np.full((2, 1), 0.2)]
    est.intercepts_ = [np.zeros(2), np.ones(1)]
    before = [a.copy() for a in est.coefs_]
    est.fit(X, y)
    assert est.coefs_[0].dtype == np.float64
    assert np.abs(est.coefs_[0] - before[0]).max() < 0.01  # one small step from them
    est = MLPClassifier(hidden_layer_sizes=3, warm_start=True)
    est.coefs_, est.intercepts_ = [np.zeros((3, 2)), np.zeros((2, 1))], [np.zeros(2), np.ones(1)]
    with pytest.raises(ValueError, match=r"expected \[\(\(3, 3\), \(3,\)\)"):
        est.fit(X, y)
    est = MLPClassifier(hidden_layer_sizes=2)  # no warm start: drawn afresh, as scikit-learn
    est.coefs_, est.intercepts_ = [np.zeros((3, 3))], [np.zeros(3)]
    assert est.fit(X, y).coefs_[0].shape == (3, 2)


def test_convergence_warning_and_non_finite_weights(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="Maximum iterations"):
            MLPClassifier(**FAST).fit(digits[0], digits[1])
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        MLPRegressor(
            hidden_layer_sizes=(4,),
            max_iter=2,
            learning_rate_init=1e3,
            solver="sgd",
            random_state=0,
        ).fit(digits[0] * 1e30, digits[1] * 1e30)


def test_store_with_uint8_features_is_cast_per_chunk(tmp_path, digits):
    X = (digits[0] * 16).astype(np.uint8)
    ds = pstore.write(tmp_path / "u8.zarr", X, digits[1], chunk_rows=300)
    est = MLPClassifier(**FAST).fit(ds.X, ds.y)
    assert est.coefs_[0].dtype == np.float32 and est.predict(ds.X).dtype == digits[1].dtype


def test_fit_and_lazy_predict_on_a_distributed_cluster(digits_store):
    """Workers (spawned processes) read the store and run predict; the model is the same."""
    from distributed import Client, LocalCluster

    ref = MLPClassifier(**FAST).fit(digits_store.X, digits_store.y)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        est = MLPClassifier(**FAST).fit(digits_store.X, digits_store.y)
        labels = est.predict(digits_store.X).compute()
    _same_model(ref, est)
    np.testing.assert_array_equal(labels, ref.predict(digits_store.X).compute())


def test_a_second_fit_reuses_the_compiled_step(digits):
    """Same shapes and configuration: no new compilation, whatever alpha or the seed."""
    from pipeline import nn

    X, y = digits[0][:400], digits[1][:400]
    first = MLPClassifier(**FAST).fit(X, y)
    step = nn.compiled_step(*first._config, first.out_activation_, *first._opt_spec, True)
    compiled = step._cache_size()
    MLPClassifier(**{**FAST, "random_state": 1}, alpha=0.1, l1=1e-3).fit(X, y)
    assert step._cache_size() == compiled >= 1


def test_a_lazy_prediction_is_bound_to_the_model_it_came_from(fitted, digits):
    X = digits[2]
    est = MLPClassifier(**FAST).fit(digits[0], digits[1])
    lazy, now = est.predict_proba(da.from_array(X, chunks=100)), est.predict_proba(X)
    est.partial_fit(digits[0], digits[1])
    np.testing.assert_array_equal(lazy.compute(), now)
    assert lazy.name != est.predict_proba(da.from_array(X, chunks=100)).name


def test_review_edge_cases(digits):
    X, y = digits[0][:300], digits[1][:300]
    est = MLPClassifier(**FAST, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same"):
        est.fit(X[y < 5], y[y < 5])
    dX = da.from_array(X, chunks=100)
    with pytest.raises(ValueError, match="unknown chunk sizes.*compute_chunk_sizes"):
        MLPClassifier(**FAST).fit(dX[dX[:, 10] >= 0], y)
    with pytest.raises(ValueError, match="X has 300, y has 100"):
        MLPClassifier(**FAST).fit(dX, y[:100])
    with pytest.raises(ValueError, match="sample_weight has 7"):
        MLPClassifier(**FAST).fit(dX, y, sample_weight=np.ones(7))


def test_float64_targets_stay_exact():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = 1e8 + X @ np.array([1.0, 2.0, 3.0, 4.0]) * 10
    est = MLPRegressor(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=30, random_state=0)
    est.fit(X, y)
    assert est.score(da.from_array(X, chunks=100), y) == pytest.approx(est.score(X, y), rel=1e-9)


@pytest.fixture
def sigint_in_step(monkeypatch):
    """``sigint_in_step(k)``: the next fits send SIGINT to this process while their
    k-th training step runs (counted over all of them), as a Ctrl-C would."""
    import os
    import signal
    import threading

    from pipeline import nn

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python handles signals in the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    real, calls, at = nn.compiled_step, [], []

    def compiled_step(*args, **kwargs):
        step = real(*args, **kwargs)

        def interrupted_step(*a):
            calls.append(1)
            if len(calls) in at:
                os.kill(os.getpid(), signal.SIGINT)  # lands inside the step
            return step(*a)

        return interrupted_step

    monkeypatch.setattr(nn, "compiled_step", compiled_step)
    yield lambda k: (at.clear(), at.append(len(calls) + k))
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_ends_fit_with_the_state_of_the_last_step(tmp_path, sigint_in_step):
    import signal

    rng = np.random.default_rng(0)
    X = rng.normal(size=(10_000, 8)).astype(np.float32)
    ds = pstore.write(tmp_path / "s.zarr", X, (X[:, 0] > 0).astype(int), chunk_rows=2000)
    params = dict(hidden_layer_sizes=(16,), batch_size=200, random_state=0)  # 3 steps an epoch
    one_epoch = MLPClassifier(**params, max_iter=1).fit(ds.X, ds.y)

    sigint_in_step(3)  # the last step of the first epoch: the epoch never ends
    est = MLPClassifier(**params, max_iter=5)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        assert est.fit(ds.X, ds.y) is est
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert est.n_iter_ == 0 and est.t_ == 0 and est.loss_curve_ == []
    assert not hasattr(est, "loss_")  # as scikit-learn's MLP: no epoch, no loss
    _same_model(est, one_epoch)  # the state of the last step, bit for bit
    assert np.isin(est.predict(X[:50]), [0, 1]).all()

    sigint_in_step(2)  # inside the second epoch
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est.fit(ds.X, ds.y)
    assert est.n_iter_ == 0
    sigint_in_step(5)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est.fit(ds.X, ds.y)
    assert est.n_iter_ == 1 and len(est.loss_curve_) == 1 and est.loss_ == est.loss_curve_[0]
    assert est.score(ds.X, ds.y) > 0.6  # it learned for an epoch and a step


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finalizer_is_handed_on_again():
    import os
    import signal
    import threading

    from pipeline._engine import _DeferredInterrupt

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python handles signals in the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:

        class Finalized:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)  # its KeyboardInterrupt is only printed

        deferred = _DeferredInterrupt()
        with pytest.raises(KeyboardInterrupt), deferred:
            with deferred.waiting():
                Finalized()
            deferred.check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
