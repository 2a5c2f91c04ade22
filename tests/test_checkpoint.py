"""Models as Zarr groups: exact round trips, continued training, no pickle, atomic."""

import json

import numpy as np
import pytest

import pipeline
import pipeline.checkpoint as checkpoint
from pipeline import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def labelled(digits):
    X, y = digits[0][:600], digits[1][:600]
    return X, np.array(list("abcdefghij"))[y]


@pytest.mark.parametrize(
    "est",
    [
        MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=3, random_state=0, batch_norm=True),
        MLPClassifier(hidden_layer_sizes=(16,), max_iter=4, random_state=0, early_stopping=True),
        MLPRegressor(hidden_layer_sizes=(16,), max_iter=3, random_state=0, solver="sgd"),
    ],
    ids=["batch-norm", "early-stopping", "regressor-sgd"],
)
def test_round_trip_predicts_and_trains_on_identically(est, labelled, tmp_path):
    X, y = labelled
    y = y if isinstance(est, MLPClassifier) else np.arange(len(X)) % 7 * 1.5
    est.fit(X, y)
    est.save(tmp_path / "m.zarr")
    loaded = pipeline.load(tmp_path / "m.zarr")
    assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
    for name in (
        "n_iter_",
        "t_",
        "loss_",
        "loss_curve_",
        "best_loss_",
        "validation_scores_",
        "out_activation_",
        "n_layers_",
        "n_outputs_",
        "n_features_in_",
    ):
        assert getattr(loaded, name) == getattr(est, name), name
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    if not est.early_stopping:
        est.partial_fit(X, y)
        loaded.partial_fit(X, y)
        for a, b in zip(est.coefs_, loaded.coefs_, strict=True):
            np.testing.assert_array_equal(a, b)


def test_unfitted_estimator_round_trips(tmp_path):
    MLPRegressor(hidden_layer_sizes=(3, 2), alpha=0.5).save(tmp_path / "u.zarr")
    loaded = pipeline.load(tmp_path / "u.zarr")
    assert loaded.hidden_layer_sizes == (3, 2) and loaded.alpha == 0.5
    assert not hasattr(loaded, "coefs_")


def test_the_file_is_arrays_and_json_only(labelled, tmp_path):
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(*labelled)
    est.save(tmp_path / "m.zarr")
    root = tmp_path / "m.zarr"
    files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    # zarr metadata (JSON) and chunk files ("c/..."), nothing else
    assert files and all(p.name in ("zarr.json", "pipeline.json") or "c" in p.parts for p in files)
    attrs = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["pipeline-model"]["class"] == "MLPClassifier"
    assert attrs["pipeline-model"]["params"]["hidden_layer_sizes"] == [4]


def test_load_refuses_what_is_not_a_model(tmp_path, zarr_store):
    with pytest.raises(FileNotFoundError, match="no model at"):
        pipeline.load(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="holds a pipeline store .open it with pipeline.store.open"):
        pipeline.load(zarr_store.path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt is not a pipeline model: it is a file"):
        pipeline.load(tmp_path / "notes.txt")
    MLPRegressor().save(tmp_path / "m.zarr")
    meta = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())
    meta["attributes"]["pipeline-model"]["class"] = "os.system"
    (tmp_path / "m.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="edited or corrupt model metadata"):
        pipeline.load(tmp_path / "m.zarr")
    with pytest.raises(ValueError, match="checksum"):  # removing the checksum is refused
        del meta["attributes"]["pipeline-model"]["checksum"]
        (tmp_path / "m.zarr" / "zarr.json").write_text(json.dumps(meta))
        pipeline.load(tmp_path / "m.zarr")
    (tmp_path / "m.zarr" / "pipeline.json").unlink()  # as a model saved before checksums
    with pytest.raises(ValueError, match="unknown model class 'os.system'"):
        pipeline.load(tmp_path / "m.zarr")


def test_save_is_atomic_and_refuses_to_overwrite(labelled, tmp_path, monkeypatch):
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(*labelled)
    est.save(tmp_path / "m.zarr")
    with pytest.raises(FileExistsError, match="already exists"):
        est.save(tmp_path / "m.zarr")

    def crash(group, name, tree):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_tree", crash)
    with pytest.raises(OSError, match="disk full"):
        est.save(tmp_path / "new.zarr")
    with pytest.raises(OSError, match="disk full"):
        est.save(tmp_path / "m.zarr", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]
    monkeypatch.undo()
    np.testing.assert_array_equal(
        pipeline.load(tmp_path / "m.zarr").predict(labelled[0]), est.predict(labelled[0])
    )
    with pytest.raises(TypeError, match="pipeline's estimators"):
        checkpoint.save(object(), tmp_path / "o.zarr")


def test_save_never_replaces_a_store_or_a_users_directory(labelled, tmp_path, zarr_store):
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(*labelled)
    with pytest.raises(FileExistsError, match="holds a pipeline store.*replaces only a pipeline model"):
        est.save(zarr_store.path, overwrite=True)
    assert len(pipeline.store.open(zarr_store.path).X.compute()) == len(zarr_store)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        est.save(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_load_blames_the_callers_mistakes_on_the_call_not_the_file(labelled, tmp_path):
    import equinox as eqx

    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(*labelled)
    est.save(tmp_path / "m.zarr")
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        pipeline.load(tmp_path / "m.zarr", foo=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'module'"):
        pipeline.load(tmp_path / "m.zarr", module=print)
    with pytest.raises(TypeError, match="cannot set alpha=.*set_params"):
        pipeline.load(tmp_path / "m.zarr", alpha=1.0)

    def build(n_in, n_out, *, key):
        return eqx.nn.MLP(n_in, n_out, 4, 1, key=key)

    def other(n_in, n_out, *, key):
        return eqx.nn.MLP(n_in, n_out, 3, 2, key=key)

    X = np.random.default_rng(0).normal(size=(30, 3)).astype("float32")
    pipeline.NeuralNetRegressor(module=build, max_iter=1).fit(X, X[:, 0]).save(tmp_path / "n.zarr")
    with pytest.raises(ValueError, match="code you passed.*does not fit the model saved"):
        pipeline.load(tmp_path / "n.zarr", module=other)
    assert pipeline.load(tmp_path / "n.zarr", module=build).predict(X).shape == (30,)


def test_an_edited_class_is_refused_even_without_a_checksum(labelled, tmp_path):
    for est, other in (
        (MLPClassifier(hidden_layer_sizes=(4,), max_iter=1), "MLPRegressor"),
        (MLPRegressor(hidden_layer_sizes=(4,), max_iter=1), "MLPClassifier"),
    ):
        y = labelled[1] if other == "MLPRegressor" else np.arange(len(labelled[0])) * 1.0
        est.fit(labelled[0], y).save(tmp_path / "m.zarr", overwrite=True)
        meta = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())
        meta["attributes"]["pipeline-model"]["class"] = other
        del meta["attributes"]["pipeline-model"]["checksum"]  # as a file from before checksums
        (tmp_path / "m.zarr" / "zarr.json").write_text(json.dumps(meta))
        (tmp_path / "m.zarr" / "pipeline.json").unlink()
        with pytest.raises(ValueError, match=f"names class {other}, but holds"):
            pipeline.load(tmp_path / "m.zarr")


def test_corrupt_or_edited_models_are_refused_clearly(labelled, tmp_path):
    import shutil

    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, random_state=0).fit(*labelled)
    est.save(tmp_path / "m.zarr")
    assert est.classes_.dtype.kind == "U" and not (tmp_path / "m.zarr" / "classes").exists()

    def broken(edit):
        shutil.copytree(tmp_path / "m.zarr", tmp_path / "b.zarr", dirs_exist_ok=True)
        edit(tmp_path / "b.zarr")
        with pytest.raises(ValueError, match="not a readable pipeline model|edited or corrupt"):
            pipeline.load(tmp_path / "b.zarr")
        shutil.rmtree(tmp_path / "b.zarr")

    def drop_chunk(p):
        next(
            c for c in (p / "params" / "0").rglob("*") if c.is_file() and c.name != "zarr.json"
        ).unlink()

    def garble_chunk(p):
        chunk = next(
            c for c in (p / "params" / "0").rglob("*") if c.is_file() and c.name != "zarr.json"
        )
        chunk.write_bytes(b"garbage" * 10)

    def edit_features(p):
        meta = json.loads((p / "zarr.json").read_text())
        meta["attributes"]["pipeline-model"]["fitted"]["n_features_in_"] = 10
        (p / "zarr.json").write_text(json.dumps(meta))

    def truncate(p):
        (p / "zarr.json").write_text((p / "zarr.json").read_text()[:40])

    for edit in (drop_chunk, garble_chunk, edit_features, truncate):
        broken(edit)
    wide = MLPRegressor(hidden_layer_sizes=np.array([3]), max_iter=1).fit(
        *labelled[:1], [0.0] * 600
    )
    wide.save(tmp_path / "w.zarr")
    assert pipeline.load(tmp_path / "w.zarr").hidden_layer_sizes == (3,)
