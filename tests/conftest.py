"""Shared fixtures: small arrays and stores, made once per session where possible."""

import numpy as np
import pytest

import pipeline.store as store


@pytest.fixture(scope="session")
def xy():
    """1,003 samples of 3 features whose first column encodes the row index."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1003, 3)).astype("float32")
    X[:, 0] = np.arange(1003)
    return X, np.arange(1003) % 7


@pytest.fixture(scope="session")
def zarr_store(tmp_path_factory, xy):
    path = tmp_path_factory.mktemp("stores") / "xy.zarr"
    return store.write(path, *xy, chunk_rows=100)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as float32 in [0, 1]: (X_train, y_train, X_test, y_test)."""
    from pipeline.datasets import load_digits

    X, y = load_digits()
    return X[:1400], y[:1400], X[1400:], y[1400:]


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory, digits):
    """The training digits in a Zarr store of 7 chunks of 200 rows."""
    path = tmp_path_factory.mktemp("stores") / "digits.zarr"
    return store.write(path, digits[0], digits[1], chunk_rows=200)
