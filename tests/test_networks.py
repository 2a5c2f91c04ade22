"""CNN, RNN, AutoEncoder, WideDeep and NeuralNet estimators: what each network adds
to the shared engine (the engine itself is covered by test_estimators.py)."""

import dask.array as da
import equinox as eqx
import jax
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import pipeline
from pipeline import (
    AutoEncoder,
    CNNClassifier,
    NeuralNetClassifier,
    NeuralNetRegressor,
    RNNClassifier,
    RNNRegressor,
    WideDeepClassifier,
    WideDeepRegressor,
)
from pipeline import store as pstore

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL_CNN = dict(
    conv_layers=((8, 3), (16, 3)),
    dense_layers=(32,),
    batch_size=50,
    learning_rate="constant",
    learning_rate_init=3e-3,
    random_state=0,
)


@pytest.fixture(scope="module")
def images(digits):
    X, y, X_te, y_te = digits
    return X.reshape(-1, 8, 8, 1), y, X_te.reshape(-1, 8, 8, 1), y_te


@pytest.fixture(scope="module")
def cnn(images):
    X, y, _, _ = images
    return CNNClassifier(max_iter=8, **SMALL_CNN).fit(X, y)


# ----------------------------------------------------------------------------- CNN


def test_cnn_learns_digit_images(cnn, images):
    _, _, X_te, y_te = images
    assert cnn.score(X_te, y_te) > 0.9
    assert isinstance(cnn.module_, pipeline.nn.CNN) and cnn.n_features_in_ == 8


def test_cnn_reads_flat_samples_through_input_shape(cnn, digits, images):
    flat = CNNClassifier(max_iter=8, input_shape=(8, 8, 1), **SMALL_CNN).fit(*digits[:2])
    for a, b in zip(
        jax.tree_util.tree_leaves(flat.module_), jax.tree_util.tree_leaves(cnn.module_), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # the same network, whatever the layout
    np.testing.assert_array_equal(flat.predict(digits[2]), cnn.predict(images[2]))
    with pytest.raises(ValueError, match=r"input_shape=\(7, 7, 1\) holds 49 values"):
        CNNClassifier(input_shape=(7, 7, 1), max_iter=1).fit(*digits[:2])


def test_cnn_refuses_samples_of_another_shape(cnn, digits):
    with pytest.raises(ValueError, match=r"samples of shape \(8, 8, 1\)"):
        cnn.predict(digits[2].reshape(-1, 8, 4, 2))
    with pytest.raises(ValueError, match="1 or 2 or 3 or 4 dimensions"):
        cnn.fit(np.zeros((10, 2, 2, 2, 2, 2)), np.arange(10) % 2)


def test_cnn_on_signals_with_batch_norm_and_dropout(digits):
    X, y = digits[0], digits[1]
    est = CNNClassifier(
        conv_layers=(8,),
        dense_layers=(16,),
        batch_norm=True,
        dropout=0.1,
        batch_size=50,
        learning_rate_init=3e-3,
        max_iter=8,
        random_state=0,
    ).fit(X, y)  # (n, 64): a one-channel signal
    assert est.module_.sample_shape == (64, 1)
    assert est.score(digits[2], digits[3]) > 0.8


def test_cnn_streams_from_an_image_store(images, tmp_path):
    X, y, X_te, _ = images
    ds = pstore.write(tmp_path / "img.zarr", X, y, chunk_rows=350)
    est = CNNClassifier(max_iter=2, **SMALL_CNN).fit(ds)
    same = CNNClassifier(max_iter=2, **SMALL_CNN).fit(da.from_array(X, chunks=350), y)
    np.testing.assert_array_equal(est.predict(X_te), same.predict(X_te))
    lazy = est.predict_proba(da.from_array(X_te, chunks=100))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), est.predict_proba(X_te), rtol=1e-6)


# ----------------------------------------------------------------------------- RNN


@pytest.mark.parametrize(
    "params",
    [
        dict(cell="lstm"),
        dict(cell="gru", bidirectional=True),
        dict(cell="simple", num_layers=2, dropout=0.1, dense_layers=(16,)),
    ],
)
def test_rnn_cells_learn_digits_row_by_row(digits, params):
    X, y, X_te, y_te = digits
    est = RNNClassifier(
        hidden_size=32,
        max_iter=15,
        learning_rate_init=0.01,
        batch_size=50,
        random_state=0,
        **params,
    )
    est.fit(X.reshape(-1, 8, 8), y)
    assert est.score(X_te.reshape(-1, 8, 8), y_te) > 0.75


def test_rnn_regressor_forecasts_the_next_value():
    t = np.arange(3000) * 0.1
    series = np.sin(t) + 0.5 * np.sin(0.31 * t)
    windows = np.lib.stride_tricks.sliding_window_view(series[:-1], 20)  # (n, 20): univariate
    target = series[20:]
    est = RNNRegressor(cell="gru", hidden_size=16, max_iter=10, random_state=0)
    est.fit(windows[:2500], target[:2500])
    assert est.score(windows[2500:], target[2500:]) > 0.95


def test_rnn_refuses_batch_norm(digits):
    with pytest.raises(ValueError, match="batch_norm=True is not available"):
        RNNClassifier(batch_norm=True, max_iter=1).fit(digits[0].reshape(-1, 8, 8), digits[1])


def test_empty_sequences_and_samples_of_another_shape_are_named():
    rng = np.random.default_rng(0)
    y = np.arange(6) % 2
    for X in (np.zeros((6, 0, 2)), da.zeros((6, 0, 2), chunks=3)):
        with pytest.raises(ValueError, match=r"axis 1 of X \(time steps\) has length 0"):
            RNNClassifier(hidden_size=2, max_iter=1).fit(X, y)
    rnn = RNNClassifier(hidden_size=2, max_iter=1, random_state=0).fit(
        rng.normal(size=(6, 3, 2)), y
    )
    cnn = CNNClassifier(conv_layers=(2,), dense_layers=(2,), max_iter=1, random_state=0)
    cnn.fit(rng.normal(size=(6, 4, 4, 1)), y)
    cases = [(rnn, (2, 4, 2), (4, 2), (3, 2)), (cnn, (2, 5, 5, 1), (5, 5, 1), (4, 4, 1))]
    for est, shape, got, fitted in cases:
        expected = f"samples of shape {got}, but {type(est).__name__} was fitted on samples "
        expected += f"of shape {fitted}"
        for X in (np.ones(shape), da.ones(shape, chunks=1)):
            with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
                est.predict(X)
    univariate = RNNRegressor(hidden_size=2, max_iter=1).fit(np.ones((6, 3)), np.ones(6))
    with pytest.raises(ValueError, match="X has 4 features, .* expecting 3 .*: 4 time steps"):
        univariate.predict(da.ones((2, 4), chunks=1))


# ----------------------------------------------------------------------- AutoEncoder


@pytest.fixture(scope="module")
def zeros_ae(digits):
    X, y = digits[0], digits[1]
    return AutoEncoder(hidden_layer_sizes=(32,), code_size=8, max_iter=40, random_state=0).fit(
        X[y == 0]
    )


def test_autoencoder_scores_other_digits_as_anomalies(zeros_ae, digits):
    X_te, y_te = digits[2], digits[3]
    scores = zeros_ae.score_samples(X_te)
    assert scores.shape == (len(X_te),) and (scores <= 0).all()
    assert roc_auc_score(y_te == 0, scores) > 0.95  # higher = more normal


def test_autoencoder_transform_and_inverse(zeros_ae, digits):
    X = digits[2]
    code = zeros_ae.transform(X)
    assert code.shape == (len(X), 8)
    back = zeros_ae.inverse_transform(code)
    np.testing.assert_allclose(back, zeros_ae.reconstruct(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        -((back - X) ** 2).mean(1), zeros_ae.score_samples(X), rtol=1e-4, atol=1e-6
    )
    assert zeros_ae.score(X) == pytest.approx(zeros_ae.score_samples(X).mean(), rel=1e-5)
    assert list(zeros_ae.get_feature_names_out()[:2]) == ["autoencoder0", "autoencoder1"]
    with pytest.raises(ValueError, match=r"codes of shape \(n_samples, 8\)"):
        zeros_ae.inverse_transform(X)


def test_autoencoder_streams_and_stays_lazy(zeros_ae, digits, tmp_path):
    X = digits[2]
    Xd = da.from_array(X, chunks=100)
    for method in ("transform", "score_samples"):
        lazy = getattr(zeros_ae, method)(Xd)
        assert isinstance(lazy, da.Array)
        np.testing.assert_allclose(lazy.compute(), getattr(zeros_ae, method)(X), rtol=1e-5)
    assert zeros_ae.score(Xd) == pytest.approx(zeros_ae.score(X), rel=1e-5)
    ds = pstore.write(tmp_path / "x.zarr", digits[0], chunk_rows=200)
    streamed = AutoEncoder(code_size=4, max_iter=2, random_state=0).fit(ds)
    same = AutoEncoder(code_size=4, max_iter=2, random_state=0).fit(
        da.from_array(digits[0], chunks=200)
    )
    np.testing.assert_array_equal(streamed.transform(X), same.transform(X))


def test_denoising_autoencoder_trains_on_corrupted_input(digits):
    X = digits[0]
    plain = AutoEncoder(code_size=8, max_iter=10, random_state=0).fit(X)
    noisy = AutoEncoder(code_size=8, max_iter=10, denoising=0.3, random_state=0).fit(X)
    assert noisy.loss_ > plain.loss_  # it rebuilds inputs it only partly saw
    assert noisy.score(digits[2]) > -0.1


# ----------------------------------------------------------------------- wide & deep


def _table(n, seed=0):
    """Two categorical columns whose *combination* decides the label, plus noise."""
    rng = np.random.default_rng(seed)
    job = rng.choice(["clerk", "nurse", "pilot", "chef"], n)
    city = rng.choice(["oslo", "rome", "lima"], n)
    age = rng.normal(size=n)
    y = np.isin(np.char.add(job, city), ["clerkoslo", "nurserome", "pilotlima", "chefoslo"])
    X = pd.DataFrame({"age": age, "job": job, "city": city, "noise": rng.normal(size=n)})
    return X, y.astype(int)


def test_wide_and_deep_learns_a_cross_of_named_columns():
    X, y = _table(4000)
    X_te, y_te = _table(1000, seed=1)
    est = WideDeepClassifier(categorical=["job", "city"], max_iter=30, random_state=0).fit(X, y)
    assert est.score(X_te, y_te) > 0.97
    assert [list(c) for c in est.categories_] == [
        ["chef", "clerk", "nurse", "pilot"],
        ["lima", "oslo", "rome"],
    ]
    assert est.crosses_ == ((0, 1),) and list(est.feature_names_in_) == list(X.columns)
    unseen = est.predict_proba(X_te.assign(job="astronaut"))  # unknown code, no error
    assert unseen.shape == (1000, 2) and np.isfinite(unseen).all()


def test_wide_and_deep_by_position_on_numpy_and_dask():
    X, y = _table(1500)
    A = X.to_numpy()  # object array: strings and floats
    est = WideDeepClassifier(categorical=[1, 2], max_iter=5, random_state=0).fit(A, y)
    codes = np.column_stack(
        [
            X.age,
            X.job.map({"chef": 1, "clerk": 2, "nurse": 3, "pilot": 4}),
            X.city.map({"lima": 1, "oslo": 2, "rome": 3}),
            X.noise,
        ]
    )
    numeric = WideDeepRegressor(categorical=[1, 2], crosses=None, max_iter=3, random_state=0)
    numeric.fit(codes, y.astype(float))
    lazy = numeric.predict(da.from_array(codes, chunks=400))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), numeric.predict(codes), rtol=1e-6)
    assert est.predict(A).shape == (1500,)
    with pytest.raises(ValueError, match="needs a pandas DataFrame"):
        WideDeepClassifier(categorical=["job"]).fit(A, y)
    with pytest.raises(ValueError, match="not categorical"):
        WideDeepClassifier(categorical=[1], crosses=[(1, 2)]).fit(A, y)


def test_wide_and_deep_codes_missing_values_as_unknown_on_numpy_and_dask():
    X = np.array([[0.1, "a"], [0.2, None], [0.3, "b"], [0.4, np.nan]] * 3, dtype=object)
    y = np.array([0, 1, 0, 1] * 3)
    kw = dict(categorical=[1], hidden_layer_sizes=(2,), max_iter=1, random_state=0)
    est = WideDeepClassifier(**kw).fit(X, y)
    assert [list(c) for c in est.categories_] == [["a", "b"]]  # no 'None' nor 'nan'
    frame = pd.DataFrame({"x": X[:, 0].astype(float), "c": ["a", pd.NA, "b", None] * 3})
    assert [list(c) for c in WideDeepClassifier(**kw).fit(frame, y).categories_] == [["a", "b"]]
    unknown = np.array([[0.2, "never seen"], [0.4, "unseen"]], dtype=object)
    np.testing.assert_array_equal(est.predict_proba(X[[1, 3]]), est.predict_proba(unknown))
    lazy = WideDeepClassifier(**kw).fit(da.from_array(X, chunks=(5, 1)), y)  # object dask array
    assert [list(c) for c in lazy.categories_] == [["a", "b"]]
    np.testing.assert_allclose(
        lazy.predict_proba(da.from_array(X, chunks=5)).compute(), est.predict_proba(X)
    )
    X[0, 0] = "oops"
    for data in (X, da.from_array(X, chunks=5)):
        with pytest.raises(ValueError, match=r"column\(s\) \[0\] hold values that are not numbers"):
            WideDeepClassifier(**kw).fit(data, y)
    with pytest.raises(TypeError, match="categorical column 1 holds numbers"):
        WideDeepClassifier(**{**kw, "categories": [["a"]]}).fit(np.ones((12, 2)), y)


# ------------------------------------------------------------------ your own module


class TwoLayer(eqx.Module):
    """A user's per-sample module with dropout."""

    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, n_in, n_out, *, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(n_in, 32, key=k1)
        self.out = eqx.nn.Linear(32, n_out, key=k2)
        self.drop = eqx.nn.Dropout(0.2)

    def __call__(self, x, *, key=None):
        return self.out(self.drop(jax.nn.relu(self.hidden(x)), key=key))


def test_your_own_module_gets_the_machinery(digits, tmp_path):
    X, y, X_te, y_te = digits
    est = NeuralNetClassifier(TwoLayer, max_iter=20, learning_rate_init=0.01, random_state=0)
    est.fit(X, y)
    assert isinstance(est.module_.module, TwoLayer)
    assert est.score(X_te, y_te) > 0.85
    first = est.predict_proba(X_te[:5])
    np.testing.assert_array_equal(first, est.predict_proba(X_te[:5]))  # dropout off
    est.save(tmp_path / "m.zarr")
    with pytest.raises(ValueError, match="module=<test_networks.TwoLayer>"):
        pipeline.load(tmp_path / "m.zarr")
    back = pipeline.load(tmp_path / "m.zarr", module=TwoLayer)
    np.testing.assert_array_equal(back.predict_proba(X_te), est.predict_proba(X_te))


def test_a_module_instance_and_a_wrong_output_size(digits):
    X, y = digits[0], digits[1].astype(float)
    module = eqx.nn.MLP(64, 1, width_size=16, depth=1, key=jax.random.key(3))
    est = NeuralNetRegressor(module, max_iter=5, random_state=0).fit(X, y)
    assert est.predict(X).shape == (len(X),)
    assert est.module is module  # the parameter is not fitted in place
    with pytest.raises(ValueError, match="maps one sample of shape \\(64,\\) to 1 values"):
        NeuralNetClassifier(module, max_iter=1).fit(X, digits[1])


def _builder_with_a_class_inside(in_size, n_outputs, *, key):
    class Local(eqx.Module):
        linear: eqx.nn.Linear

        def __call__(self, x, *, key=None):
            return self.linear(x)

    return Local(eqx.nn.Linear(in_size, n_outputs, key=key))


class WithBatchNorm(eqx.Module):
    linear: eqx.nn.Linear
    bn: eqx.nn.BatchNorm

    def __init__(self, n_in, n_out, *, key):
        self.linear = eqx.nn.Linear(n_in, n_out, key=key)
        self.bn = eqx.nn.BatchNorm(n_out, axis_name="batch", mode="batch")

    def __call__(self, x, state, *, key=None):
        return self.bn(self.linear(x), state)


def test_your_own_module_built_with_a_local_class_or_refused_clearly(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    est = NeuralNetClassifier(_builder_with_a_class_inside, max_iter=2, random_state=0)
    est.fit(X, y).fit(X, y)  # the builder runs again: a new class each time
    np.testing.assert_array_equal(est.predict(da.from_array(X, chunks=8)).compute(), est.predict(X))
    est.save(tmp_path / "m.zarr")
    back = pipeline.load(tmp_path / "m.zarr", module=_builder_with_a_class_inside)
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    with pytest.raises(TypeError, match="equinox layers with state at .bn.*LayerNorm"):
        NeuralNetClassifier(WithBatchNorm, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match=r"the module failed on one sample of shape \(3,\)"):
        NeuralNetClassifier(lambda n, k, *, key: eqx.nn.Linear(4, k, key=key)).fit(X, y)
    with pytest.raises(TypeError, match=r"callable as module\(in_size, n_outputs, \*, key\)"):
        NeuralNetClassifier(lambda n: None).fit(X, y)


# -------------------------------------------------------------- save / load, all nets


@pytest.mark.parametrize(
    "make, data",
    [
        (lambda: CNNClassifier(max_iter=1, **SMALL_CNN), "images"),
        (lambda: RNNRegressor(hidden_size=8, max_iter=1, random_state=0), "sequences"),
        (lambda: AutoEncoder(code_size=4, max_iter=1, random_state=0), "flat"),
        (
            lambda: WideDeepClassifier(categorical=["job", "city"], max_iter=1, random_state=0),
            "table",
        ),
    ],
)
def test_saved_networks_predict_and_train_on_identically(make, data, digits, tmp_path):
    X, y = {
        "images": (digits[0].reshape(-1, 8, 8, 1), digits[1]),
        "sequences": (digits[0].reshape(-1, 8, 8), digits[1].astype(float)),
        "flat": (digits[0], None),
        "table": _table(500),
    }[data]
    est = make().fit(X, y)
    est.save(tmp_path / "m.zarr")
    back = pipeline.load(tmp_path / "m.zarr")
    out = "transform" if data == "flat" else "predict"
    np.testing.assert_array_equal(getattr(back, out)(X), getattr(est, out)(X))
    est.partial_fit(X, y)
    back.partial_fit(X, y)
    np.testing.assert_array_equal(getattr(back, out)(X), getattr(est, out)(X))
