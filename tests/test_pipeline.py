"""pipeline.Pipeline: scikit-learn's Pipeline on numpy, out-of-core on streamed input."""

import dask.array as da
import numpy as np
import pytest
from sklearn import pipeline as sk_pipeline
from sklearn.base import clone
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.model_selection import GridSearchCV as SkGridSearchCV
from sklearn.preprocessing import (
    FunctionTransformer,
    MinMaxScaler,
    Normalizer,
    PolynomialFeatures,
    StandardScaler,
)

import pipeline
from pipeline import MLPClassifier, Pipeline, make_pipeline, store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(X, y, path of a zarr store of them in chunks of 128 rows, path of a memmap X)."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1000, 6)) * 3 + 2).astype("float32")
    y = (X[:, 0] + X[:, 1] > 4).astype(np.int64)
    root = tmp_path_factory.mktemp("pipe")
    store.write(root / "s.zarr", X, y, chunk_rows=128)
    np.save(root / "x.npy", X)
    return X, y, root / "s.zarr", root / "x.npy"


def _chunked_scaler(X, rows=128):
    scaler = StandardScaler()
    for i in range(0, len(X), rows):
        scaler.partial_fit(X[i : i + rows])
    return scaler


STEPS = {
    "scale+logistic": (StandardScaler(), LogisticRegression()),
    "minmax+pca+logistic": (MinMaxScaler(), PCA(3), LogisticRegression()),
    "normalize+poly+ridge": (Normalizer(), PolynomialFeatures(2), Ridge()),
}


@pytest.mark.parametrize("steps", list(STEPS.values()), ids=list(STEPS))
def test_on_numpy_it_is_scikit_learns_pipeline(data, steps):
    X, y, _, _ = data
    ours = make_pipeline(*[clone(s) for s in steps]).fit(X, y)
    theirs = sk_pipeline.make_pipeline(*[clone(s) for s in steps]).fit(X, y)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert ours.score(X, y) == theirs.score(X, y)


@pytest.mark.parametrize("kind", ["store", "path", "dask", "zarr", "memmap"])
def test_streamed_inputs_give_the_numpy_model_and_their_output_kind(data, kind):
    X, y, path, npy = data
    ds = store.open(path)
    given = {
        "store": (ds, None),
        "path": (str(path), None),
        "dask": (ds.X, ds.y),
        "zarr": (__import__("zarr").open_group(str(path), mode="r")["X"], y),
        "memmap": (np.load(npy, mmap_mode="r"), y),
    }[kind]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(*given)
    # the scaler learnt chunk by chunk: as partial_fit over the store's chunks
    rows = 128 if kind in ("store", "path", "dask", "zarr") else len(X)
    expect = _chunked_scaler(X, rows)
    np.testing.assert_allclose(model[0].mean_, expect.mean_, rtol=1e-6)
    np.testing.assert_allclose(model[0].var_, expect.var_, rtol=1e-6)
    reference = make_pipeline(expect, LogisticRegression().fit(expect.transform(X), y))
    pred = model.predict(given[0])
    assert isinstance(pred, np.ndarray) == (kind == "memmap")
    np.testing.assert_array_equal(np.asarray(pred), reference.predict(X))
    proba = model.predict_proba(given[0])
    np.testing.assert_allclose(np.asarray(proba), reference.predict_proba(X), rtol=1e-5)
    assert model.score(*given) == pytest.approx(reference.score(X, y), abs=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_our_network_streams_the_fused_prefix_bit_for_bit(data, tmp_path):
    X, y, path, _ = data
    net = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0)
    model = make_pipeline(StandardScaler(), clone(net)).fit(store.open(path))
    scaled = store.write(tmp_path / "scaled.zarr", _chunked_scaler(X).transform(X), y,
                         chunk_rows=128)
    alone = clone(net).fit(scaled)
    np.testing.assert_array_equal(
        model.predict_proba(store.open(path)).compute(), alone.predict_proba(scaled).compute()
    )
    assert model.score(store.open(path)) == alone.score(scaled)


def test_a_step_that_must_be_read_whole_is_refused_before_a_byte_is_read(data):
    X, y, path, _ = data

    def explode(block):
        raise AssertionError("a chunk was read")

    lazy = store.open(path).X.map_blocks(explode, dtype="float32")
    with pytest.raises(MemoryError, match=r"step 'pca' \(PCA\) cannot learn chunk by chunk.*"
                       r"IncrementalPCA"):
        make_pipeline(PCA(2), LogisticRegression(), max_in_memory="1kB").fit(lazy, y)
    with pytest.raises(ValueError, match="max_in_memory must be"):
        make_pipeline(PCA(2), LogisticRegression(), max_in_memory="lots").fit(lazy, y)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_made_by_a_step_names_the_step(data):
    X, y, path, _ = data
    log = FunctionTransformer(np.log)  # X holds negative values: log gives NaN
    with pytest.raises(ValueError, match=r"step 'functiontransformer' .*produced NaN"):
        make_pipeline(log, LogisticRegression()).fit(store.open(path))


def test_sample_weight_is_routed_on_streamed_input(data):
    X, y, path, _ = data
    w = np.where(np.arange(len(y)) % 3 == 0, 0.0, 2.0)
    model = make_pipeline(MinMaxScaler(), LogisticRegression())
    model.fit(store.open(path).X, store.open(path).y, logisticregression__sample_weight=w)
    reference = make_pipeline(MinMaxScaler(), LogisticRegression())
    reference.fit(X, y, logisticregression__sample_weight=w)
    np.testing.assert_allclose(model[-1].coef_, reference[-1].coef_, rtol=1e-4)
    assert model.score(store.open(path), sample_weight=w) == pytest.approx(
        reference.score(X, y, sample_weight=w)
    )


def test_incremental_last_step_gets_one_pass_with_every_class(data):
    X, y, path, _ = data
    model = make_pipeline(StandardScaler(), SGDClassifier(random_state=0)).fit(str(path))
    manual_scaler = _chunked_scaler(X)
    manual = SGDClassifier(random_state=0)
    for i in range(0, len(X), 128):
        manual.partial_fit(manual_scaler.transform(X[i : i + 128]), y[i : i + 128], classes=[0, 1])
    np.testing.assert_allclose(model[-1].coef_, manual.coef_, rtol=1e-5)


def test_incremental_pca_merges_a_short_last_chunk(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(260, 8)).astype("float32")  # chunks 128, 128, 4: 4 < 5 components
    ds = store.write(tmp_path / "s.zarr", X, chunk_rows=128)
    model = make_pipeline(IncrementalPCA(5)).fit(ds)
    assert model[0].n_samples_seen_ == 260
    out = model.transform(ds)
    assert isinstance(out, da.Array) and out.shape == (260, 5)


def test_partial_fit_continues_every_step(data):
    X, y, _, _ = data
    model = make_pipeline(StandardScaler(), SGDClassifier(random_state=0))
    scaler, sgd = StandardScaler(), SGDClassifier(random_state=0)
    for i in range(0, 600, 200):
        model.partial_fit(X[i : i + 200], y[i : i + 200], classes=[0, 1])
        scaler.partial_fit(X[i : i + 200])
        sgd.partial_fit(scaler.transform(X[i : i + 200]), y[i : i + 200], classes=[0, 1])
    np.testing.assert_allclose(model[0].mean_, scaler.mean_)
    np.testing.assert_allclose(model[-1].coef_, sgd.coef_)


def test_scikit_learns_tools_see_a_pipeline(data):
    X, y, _, _ = data
    model = make_pipeline(StandardScaler(), LogisticRegression(), max_in_memory="1GB")
    copy = clone(model)
    assert isinstance(copy, Pipeline) and copy.get_params()["max_in_memory"] == "1GB"
    copy.set_params(logisticregression__C=0.5)
    assert copy[-1].C == 0.5
    search = SkGridSearchCV(model, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert isinstance(search.best_estimator_, Pipeline)
    assert pipeline.Pipeline is Pipeline and isinstance(make_pipeline(Ridge()), Pipeline)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_memory_caches_the_prefix_and_its_output_bit_for_bit(data, tmp_path):
    X, y, path, _ = data

    def model(memory):
        net = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
        return make_pipeline(StandardScaler(), IncrementalPCA(3), net, memory=memory)

    plain = model(None).fit(store.open(path))
    cold = model(tmp_path / "mem").fit(store.open(path))
    entries = sorted(p.suffix for p in (tmp_path / "mem" / "pipeline-cache").iterdir())
    assert entries == [".pipeline", ".zarr"]
    warm = model(tmp_path / "mem")
    calls = []
    warm.steps[1][1].partial_fit = lambda *a, **k: calls.append(1)  # a hit never fits
    warm.fit(store.open(path))
    assert not calls
    expect = plain.predict_proba(store.open(path)).compute()
    for other in (cold, warm):
        np.testing.assert_array_equal(other.predict_proba(store.open(path)).compute(), expect)
    # a replaced store is other data: a new entry, never the stale one
    store.write(tmp_path / "other.zarr", X[::-1].copy(), y[::-1].copy(), chunk_rows=128)
    model(tmp_path / "mem").fit(store.open(tmp_path / "other.zarr"))
    assert len(list((tmp_path / "mem" / "pipeline-cache").iterdir())) == 4


def test_a_corrupt_or_foreign_cache_entry_is_an_error_naming_it(data, tmp_path):
    import shutil

    X, y, path, _ = data
    model = make_pipeline(StandardScaler(), LogisticRegression(), memory=tmp_path / "mem")
    model.fit(store.open(path))
    cache = tmp_path / "mem" / "pipeline-cache"
    entry = next(cache.glob("*.zarr"))
    other = make_pipeline(MinMaxScaler(), LogisticRegression(), memory=tmp_path / "mem")
    other.fit(store.open(path))
    foreign = next(p for p in cache.glob("*.zarr") if p != entry)
    shutil.rmtree(entry)
    shutil.copytree(foreign, entry)  # another prefix's output under this key
    with pytest.raises(ValueError, match=r"cache entry .* belongs to another prefix"):
        clone(model).fit(store.open(path))
    (entry / "zarr.json").write_text("{")
    with pytest.raises(ValueError, match=r"cache entry .* is corrupt"):
        clone(model).fit(store.open(path))


@pytest.mark.parametrize("steps", [(StandardScaler(), LogisticRegression())], ids=["scaler"])
def test_a_memmap_opened_for_writing_is_never_written(data, tmp_path, steps):
    X, y, _, _ = data
    np.save(tmp_path / "x.npy", X)
    writable = np.load(tmp_path / "x.npy", mmap_mode="r+")

    class InPlace(StandardScaler):
        def transform(self, X, copy=None):
            X -= self.mean_.astype(X.dtype)  # a careless step: refused, not obeyed
            return X

    with pytest.raises(ValueError, match="read-only"):
        make_pipeline(InPlace(), LogisticRegression()).fit(writable, y)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), X)


def test_memory_refuses_data_whose_name_outlives_its_content(data, tmp_path):
    import zarr

    X, y, _, _ = data
    z = zarr.create_array(str(tmp_path / "z.zarr"), shape=X.shape, chunks=(128, 6), dtype=X.dtype)
    z[:] = X  # rewritten in place later, da.from_zarr would keep its name
    model = make_pipeline(StandardScaler(), LogisticRegression(), memory=tmp_path / "mem")
    with pytest.raises(ValueError, match="memory= keys its entries by the identity of the data"):
        model.fit(z, y)
    assert not (tmp_path / "mem").exists()
