"""A Pipeline saved as one Zarr group: exact round trips, no pickle, nothing unsafe loaded."""

import hashlib
import json

import dask_ml.preprocessing as dask_pre
import numpy as np
import pytest
import skops.io as sio
import zarr
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

import pipeline
from pipeline import MLPClassifier, Pipeline, make_pipeline, store
from pipeline._pipeline_io import FORMAT, save_pipeline
from pipeline._schema import with_checksum

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(X, y, a zarr store of them in chunks of 64 rows)."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(300, 6)) * 3 + 2).astype("float32")
    y = (X[:, 0] + X[:, 1] > 4).astype(np.int64)
    return X, y, store.write(tmp_path_factory.mktemp("io") / "s.zarr", X, y, chunk_rows=64)


def _same_predictions(saved, loaded, X, ds):
    for method in ("predict", "predict_proba"):
        np.testing.assert_array_equal(
            getattr(loaded, method)(X.copy()), getattr(saved, method)(X.copy()), strict=True
        )
        np.testing.assert_array_equal(
            getattr(loaded, method)(ds).compute(), getattr(saved, method)(ds).compute(), strict=True
        )


@pytest.mark.parametrize(
    "steps",
    [
        (StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0)),
        (PCA(3), LogisticRegression()),
        (MinMaxScaler(), "passthrough", None, LogisticRegression()),
    ],
    ids=["scaler+ours", "pca+logistic", "passthrough+none"],
)
def test_round_trip_predicts_bit_for_bit_on_numpy_and_a_store(steps, data, tmp_path):
    X, y, ds = data
    pipe = Pipeline(
        [(f"s{i}", s) for i, s in enumerate(steps)], verbose=False, max_in_memory="64MB"
    ).fit(X, y)
    save_pipeline(pipe, tmp_path / "p")
    loaded = pipeline.load(tmp_path / "p")
    assert type(loaded) is Pipeline and repr(loaded) == repr(pipe)
    assert loaded.max_in_memory == "64MB" and loaded.memory is None
    assert [s if isinstance(s, str) or s is None else type(s) for _, s in loaded.steps] == [
        s if isinstance(s, str) or s is None else type(s) for _, s in pipe.steps
    ]
    _same_predictions(pipe, loaded, X, ds)


def test_a_dask_ml_step_fitted_out_of_core_and_a_nested_pipeline_round_trip(data, tmp_path):
    X, y, ds = data
    pipe = make_pipeline(
        make_pipeline(dask_pre.MinMaxScaler(), FunctionTransformer(np.log1p)),
        LogisticRegression(),
    ).fit(ds)
    save_pipeline(pipe, tmp_path / "p")
    loaded = pipeline.load(tmp_path / "p")
    assert isinstance(loaded[0], Pipeline) and type(loaded[0][0]) is dask_pre.MinMaxScaler
    _same_predictions(pipe, loaded, X, ds)


def test_an_unfitted_pipeline_keeps_its_parameters_and_fits_as_the_original(data, tmp_path):
    X, y, _ = data
    pipe = make_pipeline(
        StandardScaler(with_mean=False),
        MLPClassifier(hidden_layer_sizes=(3,), alpha=0.5),
        transform_input=None,
        verbose=True,
    )
    save_pipeline(pipe, tmp_path / "u")
    loaded = pipeline.load(tmp_path / "u")
    assert repr(loaded) == repr(pipe) and loaded.verbose is True
    assert not hasattr(loaded[-1], "coefs_") and not hasattr(loaded[0], "scale_")


def test_a_step_that_cannot_be_stored_is_named_and_nothing_is_written(data, tmp_path):
    X, y, _ = data
    pipe = Pipeline(
        [
            ("identity", FunctionTransformer(lambda x: x)),
            ("log", FunctionTransformer(np.log1p)),  # a numpy ufunc: fine
            ("tree", DecisionTreeClassifier(max_depth=2)),
        ]
    ).fit(np.abs(X), y)
    with pytest.raises(ValueError, match=r"nothing was written") as info:
        save_pipeline(pipe, tmp_path / "p")
    message = str(info.value)
    assert "step 'identity' (FunctionTransformer): it needs" in message and "<lambda>" in message
    assert "step 'tree'" in message and "sklearn.tree._tree.Tree" in message
    assert "'log'" not in message
    assert list(tmp_path.iterdir()) == []
    cached = Pipeline([("lr", LogisticRegression())], memory="/tmp/cache")
    with pytest.raises(ValueError, match=r"memory='/tmp/cache'.*set_params\(memory=None\)"):
        save_pipeline(cached, tmp_path / "q")
    with pytest.raises(TypeError, match="pipeline.Pipeline"):
        from sklearn.pipeline import make_pipeline as sk_make_pipeline

        save_pipeline(sk_make_pipeline(LogisticRegression()), tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_a_pipeline(data, tmp_path):
    X, y, ds = data
    old = make_pipeline(StandardScaler(), LogisticRegression(C=0.01)).fit(X, y)
    new = make_pipeline(StandardScaler(), LogisticRegression(C=10.0)).fit(X, y)
    model = tmp_path / "m"
    MLPClassifier(hidden_layer_sizes=(2,)).save(model)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for path in (ds.path, model, user):
        with pytest.raises(FileExistsError, match="overwrite replaces only a saved pipeline.Pipeline"):
            save_pipeline(new, path, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine"
    assert type(pipeline.load(model)) is MLPClassifier
    save_pipeline(old, tmp_path / "p")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_pipeline(new, tmp_path / "p")
    save_pipeline(new, tmp_path / "p", overwrite=True)
    assert pipeline.load(tmp_path / "p")[-1].C == 10.0
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="also holds notes.txt"):
        save_pipeline(old, tmp_path / "p", overwrite=True)
    assert (tmp_path / "p" / "notes.txt").read_text() == "mine"


def _attrs(path):
    return json.loads((path / "zarr.json").read_text())


def _set_attrs(path, attrs):
    (path / "zarr.json").write_text(json.dumps(attrs))


def test_hand_edited_metadata_is_refused(data, tmp_path):
    X, y, _ = data
    save_pipeline(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), tmp_path / "p")
    meta = _attrs(tmp_path / "p")
    meta["attributes"][FORMAT]["params"]["max_in_memory"] = "1TB"
    _set_attrs(tmp_path / "p", meta)
    with pytest.raises(ValueError, match="edited or corrupt pipeline metadata"):
        pipeline.load(tmp_path / "p")


def test_a_model_step_from_elsewhere_is_refused(data, tmp_path):
    X, y, _ = data
    net = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0)
    save_pipeline(make_pipeline(StandardScaler(), net).fit(X, y), tmp_path / "p")
    step = tmp_path / "p" / "steps" / "1"
    meta = _attrs(step)
    model = meta["attributes"]["pipeline-model"]
    model["params"]["alpha"] = 1.0  # a consistent model, not the one the pipeline saved
    meta["attributes"]["pipeline-model"] = with_checksum(
        {k: v for k, v in model.items() if k != "checksum"}
    )
    _set_attrs(step, meta)
    with pytest.raises(ValueError, match="step 'mlpclassifier' .* is not the one this pipeline"):
        pipeline.load(tmp_path / "p")


def _replace_blob(path, index, blob, *, update_digest):
    steps = zarr.open_group(path / "steps", mode="r+")
    del steps[str(index)]
    steps.create_array(str(index), data=np.frombuffer(blob, dtype=np.uint8))
    if update_digest:  # what someone crafting a file would do: the checksums are not secret
        meta = _attrs(path)
        body = {k: v for k, v in meta["attributes"][FORMAT].items() if k != "checksum"}
        body["steps"][index]["digest"] = hashlib.sha256(blob).hexdigest()
        meta["attributes"][FORMAT] = with_checksum(body)
        _set_attrs(path, meta)


def test_a_skops_step_with_an_untrusted_type_is_refused_at_load(data, tmp_path):
    X, y, _ = data
    save_pipeline(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), tmp_path / "p")
    evil = sio.dumps(FunctionTransformer(print))
    assert sio.get_untrusted_types(data=evil) == ["builtins.print"]
    _replace_blob(tmp_path / "p", 0, evil, update_digest=False)
    with pytest.raises(ValueError, match="step 'standardscaler' .* is not the one this pipeline"):
        pipeline.load(tmp_path / "p")
    _replace_blob(tmp_path / "p", 0, evil, update_digest=True)
    refused = r"refusing to load step 'standardscaler'.*builtins\.print"
    with pytest.raises(ValueError, match=refused):
        pipeline.load(tmp_path / "p")


def test_load_routes_code_to_its_step_and_refuses_other_keywords(data, tmp_path):
    X, y, _ = data
    save_pipeline(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), tmp_path / "p")
    with pytest.raises(TypeError, match="unexpected keyword argument 'module'.*<step>__module="):
        pipeline.load(tmp_path / "p", module=object)
    with pytest.raises(TypeError, match="cannot set module of step 'logisticregression'"):
        pipeline.load(tmp_path / "p", logisticregression__module=object)


def test_a_pipeline_is_not_a_store(data, tmp_path):
    X, y, _ = data
    save_pipeline(make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), tmp_path / "p")
    with pytest.raises(ValueError, match="is not a pipeline store: it holds a saved pipeline.Pipeline .open it with pipeline.load"):
        store.open(tmp_path / "p")


def test_a_network_of_your_code_is_given_back_as_step_module(tmp_path):
    import equinox as eqx

    def build(n_in, n_out, *, key):
        return eqx.nn.MLP(n_in, n_out, 4, 1, key=key)

    X = np.random.default_rng(0).normal(size=(30, 3)).astype("float32")
    net = pipeline.NeuralNetRegressor(module=build, max_iter=1, random_state=0)
    pipe = make_pipeline(StandardScaler(), net).fit(X, X[:, 0])
    save_pipeline(pipe, tmp_path / "p")
    with pytest.raises(ValueError, match=r"pass it back, as pipeline.load\(path, neural.*__module="):
        pipeline.load(tmp_path / "p")
    loaded = pipeline.load(tmp_path / "p", neuralnetregressor__module=build)
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X), strict=True)
