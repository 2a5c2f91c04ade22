"""The input adapter: every input kind gives every consumer the numpy result.

All inputs here hold one chunk (fewer rows than a default chunk), so every kind is
cut alike and must give the same model and the same predictions as numpy.
"""

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import zarr
from sklearn.base import clone
from sklearn.preprocessing import StandardScaler

from pipeline import MLPClassifier, make_pipeline, store, stream
from pipeline import model_selection as ms
from pipeline._adapter import as_dask, is_streamed, returns_lazy

N, F = 300, 6
NET = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, batch_size=50, random_state=0)
KINDS = ["numpy", "memmap", "zarr", "dask", "dataset", "path", "pandas", "dask-frame"]
LAZY_OUT = {"zarr", "dask", "dataset", "path", "dask-frame"}


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(N, F)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def inputs(arrays, tmp_path_factory):
    """``kind -> (X, y)`` as a user would pass them (y None where X carries it)."""
    X, y = arrays
    root = tmp_path_factory.mktemp("kinds")
    np.save(root / "x.npy", X)
    z = zarr.create_array(str(root / "x.zarr"), shape=X.shape, chunks=X.shape, dtype=X.dtype)
    z[:] = X
    ds = store.write(root / "s.zarr", X, y)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(F)])
    return {
        "numpy": (X, y),
        "memmap": (np.load(root / "x.npy", mmap_mode="r"), y),
        "zarr": (z, y),
        "dask": (da.from_array(X, chunks=X.shape), da.from_array(y, chunks=N)),
        "dataset": (ds, None),
        "path": (str(root / "s.zarr"), None),
        "pandas": (frame, y),
        "dask-frame": (dd.from_pandas(frame, npartitions=1), y),
    }


def _numpy(a):
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


@pytest.fixture(scope="module")
def reference(arrays):
    X, y = arrays
    net = clone(NET).fit(X, y)
    pipe = make_pipeline(StandardScaler(), clone(NET)).fit(X, y)
    return {"net": net.predict_proba(X), "pipe": pipe.predict_proba(X)}


@pytest.mark.parametrize("kind", KINDS)
def test_the_adapter_classifies_every_kind(inputs, kind):
    X, _ = inputs[kind]
    assert is_streamed(X) == (kind not in ("numpy", "pandas"))
    assert returns_lazy(X) == (kind in LAZY_OUT)
    if is_streamed(X):
        view = as_dask(X)
        assert isinstance(view, da.Array) and view.shape == (N, F)
        assert as_dask(X).name == view.name  # named by content or identity, not at random


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_estimators_give_the_numpy_model_and_their_output_kind(inputs, reference, kind):
    X, y = inputs[kind]
    net = clone(NET).fit(X, y) if y is not None else clone(NET).fit(X)
    out = net.predict_proba(X)
    assert isinstance(out, da.Array) == (kind in LAZY_OUT)
    np.testing.assert_allclose(_numpy(out), reference["net"], rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_the_pipeline_gives_the_numpy_model_and_its_output_kind(inputs, reference, kind):
    X, y = inputs[kind]
    pipe = make_pipeline(StandardScaler(), clone(NET))
    pipe = pipe.fit(X, y) if y is not None else pipe.fit(X)
    out = pipe.predict_proba(X)
    assert isinstance(out, da.Array) == (kind in LAZY_OUT)
    np.testing.assert_allclose(_numpy(out), reference["pipe"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_streams_read_the_same_chunks(inputs, arrays, kind):
    X, y = inputs[kind]
    got = list(stream.chunks(X, y, batch_size=50, seed=1))
    expected = list(stream.chunks(*arrays, batch_size=50, seed=1))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["numpy", "memmap", "zarr", "dask", "dataset"])
def test_searches_score_every_kind_as_numpy(inputs, arrays, kind):
    X, y = inputs[kind]
    if kind == "dataset":
        X, y = X.X, X.y
    scores = ms.cross_val_score(clone(NET), X, y, cv=3)
    expected = ms.cross_val_score(clone(NET), *arrays, cv=3)
    np.testing.assert_allclose(scores, expected)
