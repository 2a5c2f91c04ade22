"""Shared fixtures: small arrays and stores, made once per session where possible."""

import os
import shutil
import tempfile

# One JAX compilation cache for the whole run, set before JAX is imported: the xdist
# workers, notebook kernels, CLI subprocesses and cluster workers inherit it, so a
# network configuration compiles once per run instead of once per process.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
else:
    _JAX_CACHE = None

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pipeline.store as store  # noqa: E402


def pytest_unconfigure(config):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


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
