"""Tests for pipeline/_datasets.py: MNIST loading (IDX and pkl.gz), digits, synthetic stores."""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline import datasets, store
from pipeline._datasets import IDX_NAMES

SHARED_MNIST = Path(__file__).parents[1].parent / "shared" / "data" / "mnist.pkl.gz"
SIZES = {"train": 5, "test": 3}


# ----------------------------------------------------------------------------- fabricated MNIST


def idx_bytes(array, magic_ndim=None):
    """An IDX file of unsigned bytes holding ``array``."""
    ndim = array.ndim if magic_ndim is None else magic_ndim
    header = bytes([0, 0, 0x08, ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path, array, gz):
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_images(split):
    rng = np.random.default_rng(SIZES[split])
    return rng.integers(0, 256, size=(SIZES[split], 28, 28), dtype=np.uint8), rng.integers(
        0, 10, size=SIZES[split], dtype=np.uint8
    )


def make_idx_dir(d, gz_train=True):
    """Train files gzip'd, test files plain: both forms are read."""
    d.mkdir(parents=True, exist_ok=True)
    for split, (images_name, labels_name) in IDX_NAMES.items():
        images, labels = fake_images(split)
        gz = gz_train and split == "train"
        suffix = ".gz" if gz else ""
        write_idx(d / (images_name + suffix), images, gz)
        write_idx(d / (labels_name + suffix), labels, gz)
    return d


def make_pkl(path):
    """A tiny file in Nielsen's layout: ((X, y) train, validation, test)."""
    rng = np.random.default_rng(0)
    parts = tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (4, 2, 3)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(parts)))
    return parts


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PIPELINE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- MNIST: IDX


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_idx_dir(tmp_path, split):
    d = make_idx_dir(tmp_path / "mnist")
    X, y = datasets.load_mnist(d, split=split)
    images, labels = fake_images(split)
    assert X.shape == (SIZES[split], 784) and X.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_allclose(X, images.reshape(-1, 784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    assert 0 <= X.min() and X.max() <= 1


def test_load_mnist_idx_images_file(tmp_path):
    d = make_idx_dir(tmp_path)
    X, y = datasets.load_mnist(d / "t10k-images-idx3-ubyte", split="test")
    assert X.shape == (3, 784)
    np.testing.assert_array_equal(y, fake_images("test")[1])


def test_load_mnist_idx_file_of_other_split(tmp_path):
    d = make_idx_dir(tmp_path)
    with pytest.raises(ValueError, match="'test' split, but split='train'"):
        datasets.load_mnist(d / "t10k-images-idx3-ubyte", split="train")


def test_load_mnist_idx_labels_missing(tmp_path):
    d = make_idx_dir(tmp_path)
    (d / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        datasets.load_mnist(d / "train-images-idx3-ubyte.gz")


def test_load_mnist_bad_magic(tmp_path):
    d = make_idx_dir(tmp_path, gz_train=False)
    bad = d / "train-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(fake_images("train")[0], magic_ndim=2))
    with pytest.raises(ValueError, match=f"{bad}.*magic 00000802, expected 00000803"):
        datasets.load_mnist(d)


def test_load_mnist_truncated(tmp_path):
    d = make_idx_dir(tmp_path, gz_train=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match=f"{f} is truncated.*shape \\(5, 28, 28\\)"):
        datasets.load_mnist(d)


def test_load_mnist_count_mismatch(tmp_path):
    d = make_idx_dir(tmp_path, gz_train=False)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(ValueError, match="5 images.*train-labels-idx1-ubyte has 4 labels"):
        datasets.load_mnist(d)


def test_load_mnist_corrupt_gzip(tmp_path):
    d = make_idx_dir(tmp_path)
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"{f} is a corrupt gzip file"):
        datasets.load_mnist(d)


# ----------------------------------------------------------------------------- MNIST: pkl.gz


def test_load_mnist_pkl(tmp_path):
    parts = make_pkl(tmp_path / "mnist.pkl.gz")
    X, y = datasets.load_mnist(tmp_path / "mnist.pkl.gz")
    np.testing.assert_array_equal(X, np.concatenate([parts[0][0], parts[1][0]]))
    np.testing.assert_array_equal(y, np.concatenate([parts[0][1], parts[1][1]]))
    X, y = datasets.load_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(X, parts[2][0])
    assert X.dtype == np.float32 and y.dtype == np.int64


def test_load_mnist_pkl_corrupt(tmp_path):
    f = tmp_path / "mnist.pkl.gz"
    f.write_bytes(gzip.compress(b"not a pickle"))
    with pytest.raises(ValueError, match=f"{f} is not a readable MNIST pickle"):
        datasets.load_mnist(f)
    f.write_bytes(gzip.compress(pickle.dumps((1, 2))))
    with pytest.raises(ValueError, match="expected 3 \\(X, y\\) parts"):
        datasets.load_mnist(f)


def test_load_mnist_idx_preferred_over_pkl(tmp_path):
    make_pkl(make_idx_dir(tmp_path) / "mnist.pkl.gz")
    assert datasets.load_mnist(tmp_path)[0].shape == (5, 784)


# ----------------------------------------------------------------------------- MNIST: search


def test_load_mnist_search_order(no_env, monkeypatch):
    make_pkl(no_env / "datasets" / "mnist" / "mnist.pkl.gz")
    assert datasets.load_mnist()[0].shape == (6, 784)  # ./datasets/mnist/
    make_idx_dir(no_env / "datasets")
    assert datasets.load_mnist()[0].shape == (5, 784)  # ./datasets/ comes first
    env = no_env / "env"
    make_pkl(env / "mnist.pkl.gz")
    monkeypatch.setenv("PIPELINE_DATA", str(env))
    assert datasets.load_mnist()[0].shape == (6, 784)  # $PIPELINE_DATA comes first


def test_load_mnist_not_found_says_where_and_how(no_env, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA", str(no_env / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist()
    msg = str(info.value)
    places = [no_env / "nowhere", no_env / "datasets", no_env / "datasets" / "mnist"]
    how = [
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "mnist.pkl.gz",
        "PIPELINE_DATA",
        "./datasets/",
        "never downloads",
    ]
    for expected in [*map(str, places), *how]:
        assert expected in msg


def test_load_mnist_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        datasets.load_mnist(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"Looked in:\n  {tmp_path} "):
        datasets.load_mnist(tmp_path)


def test_load_mnist_source_not_a_path():
    with pytest.raises(TypeError, match="source must be a path .* got 3"):
        datasets.load_mnist(3)


def test_load_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split must be one of \\('train', 'test'\\), got 'valid'"):
        datasets.load_mnist(tmp_path, split="valid")


@pytest.mark.skipif(not SHARED_MNIST.exists(), reason=f"{SHARED_MNIST} not present")
def test_load_mnist_real_file():
    for split, n in (("train", 60_000), ("test", 10_000)):
        X, y = datasets.load_mnist(SHARED_MNIST, split=split)
        assert X.shape == (n, 784) and X.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert X.min() == 0 and 0.99 < X.max() <= 1
        assert set(np.unique(y)) == set(range(10))


def test_load_digits():
    X, y = datasets.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 1
    assert set(np.unique(y)) == set(range(10))


# ----------------------------------------------------------------------------- synthetic stores


def make(path, n=1000, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("chunk_rows", 128)
    return datasets.make_classification_store(path, n, **kw)


def test_make_classification_store_contents(tmp_path):
    ds = make(tmp_path / "a.zarr", 1000, n_features=7, n_classes=3)
    X, y = ds.X.compute(), ds.y.compute()
    assert X.shape == (1000, 7) and X.dtype == np.float32 and y.dtype == np.int64
    assert ds.X.chunks[0][0] == 128 and ds.classes == [0, 1, 2]
    attrs = ds.attrs["attrs"]
    assert attrs["generator"] == "make_classification_store" and attrs["random_state"] == 0
    assert (attrs["n_informative"], attrs["n_redundant"], attrs["n_classes"]) == (2, 2, 3)
    assert np.isfinite(X).all()


def test_make_classification_store_deterministic(tmp_path):
    a = make(tmp_path / "a.zarr", n_classes=4, n_informative=3)
    b = make(tmp_path / "b", n_classes=4, n_informative=3, format="memmap")
    c = make(tmp_path / "c.zarr", n_classes=4, n_informative=3, random_state=1)
    Xa = a.X.compute()
    np.testing.assert_array_equal(Xa, b.X.compute())
    np.testing.assert_array_equal(a.y.compute(), b.y.compute())
    assert not np.array_equal(Xa, c.X.compute())
    # how the store is read does not matter
    np.testing.assert_array_equal(a.X.rechunk(300).compute(), Xa)
    np.testing.assert_array_equal(np.concatenate([a.X[:77].compute(), a.X[77:].compute()]), Xa)
    # chunk i depends on (random_state, i) only: a longer store starts with the same rows
    longer = make(tmp_path / "d.zarr", 1500, n_classes=4, n_informative=3)
    np.testing.assert_array_equal(longer.X[:1000].compute(), Xa)


def test_make_classification_store_seed_recorded(tmp_path):
    a = make(tmp_path / "a.zarr", 300, random_state=None)
    seed = a.attrs["attrs"]["random_state"]
    assert isinstance(seed, int)
    b = make(tmp_path / "b.zarr", 300, random_state=seed)
    np.testing.assert_array_equal(a.X.compute(), b.X.compute())


def test_make_classification_store_balanced(tmp_path):
    ds = make(tmp_path / "a.zarr", 30_000, n_classes=3, chunk_rows=None)
    counts = np.bincount(ds.y.compute())
    assert counts.min() > 9_500 and counts.max() < 10_500
    assert ds.attrs["chunk_rows"] == store.default_chunk_rows((20,), "float32")


@pytest.mark.parametrize("n_classes, n_informative, min_accuracy", [(2, None, 0.8), (4, 5, 0.6)])
def test_make_classification_store_learnable(tmp_path, n_classes, n_informative, min_accuracy):
    from sklearn.linear_model import LogisticRegression

    ds = make(
        tmp_path / "a.zarr", 2000, n_classes=n_classes, n_informative=n_informative, class_sep=1.5
    )
    X, y = ds.X.compute(), ds.y.compute()
    model = LogisticRegression(max_iter=1000).fit(X[:1500], y[:1500])
    assert model.score(X[1500:], y[1500:]) > min_accuracy  # chance is 1 / n_classes


def test_make_classification_store_memory_flat(tmp_path):
    """32 MB of data written with a few chunks of memory."""
    tracemalloc.start()
    try:
        make(tmp_path / "a.zarr", 400_000, chunk_rows=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_samples": 0}, "n_samples must be an integer >= 1, got 0"),
        ({"n_features": 0}, "n_features must be an integer >= 1, got 0"),
        ({"n_classes": 1}, "n_classes must be an integer >= 2, got 1"),
        ({"n_features": 3, "n_informative": 4}, "n_informative=4 must be <= n_features=3"),
        (
            {"n_classes": 5, "n_informative": 2},
            "n_classes=5 needs 2\\*\\*n_informative >= n_classes",
        ),
        ({"class_sep": -1.0}, "class_sep must be a finite number >= 0, got -1.0"),
        ({"flip_y": 1.5}, "flip_y must be a number in \\[0, 1\\], got 1.5"),
        ({"dtype": "int32"}, "dtype must be a floating dtype, got int32"),
        ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1, got 0"),
        ({"random_state": -3}, "random_state must be an integer >= 0, got -3"),
        ({"dtype": "nope"}, "dtype must be a floating dtype, got 'nope'"),
        ({"chunk_rows": 10**12}, "chunk_rows=1,000,000,000,000 makes chunks of .* <= "),
        ({"n_features": 10**9}, "one sample takes 4,000,000,000 bytes"),
        ({"dtype": "float16", "class_sep": 1e6}, r"features overflow float16 \(max 65504.0\)"),
    ],
)
def test_make_classification_store_validates(tmp_path, kwargs, message):
    kwargs = {"n_samples": 10, "random_state": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        datasets.make_classification_store(tmp_path / "a.zarr", **kwargs)
    assert not (tmp_path / "a.zarr").exists()


def test_make_classification_store_progress(tmp_path, capsys):
    make(tmp_path / "a.zarr", 300, progress="generating")
    assert "generating" in capsys.readouterr().err
