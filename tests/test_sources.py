"""Tests for pipeline/_sources.py: array, .npy, MNIST and CSV readers."""

from __future__ import annotations

import gzip
import pickle

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import datasets, sources, store


def write_csv(path, text):
    path.write_text(text)
    return path


def collect(src):
    """Concatenate a reader's chunks into (X, y)."""
    pairs = list(src)
    X = np.concatenate([x for x, _ in pairs])
    y = None if pairs[0][1] is None else np.concatenate([y for _, y in pairs])
    return X, y


# ----------------------------------------------------------------------------- iter_array


def test_iter_array_chunks():
    X, y = np.arange(20).reshape(10, 2), np.arange(10)
    chunks = list(sources.iter_array(X, y, chunk_rows=4))
    assert [len(x) for x, _ in chunks] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), y)
    assert all(yc is None for _, yc in sources.iter_array(X, chunk_rows=3))


def test_iter_array_validates_on_call():
    with pytest.raises(ValueError, match="different lengths: 10 and 9"):
        sources.iter_array(np.zeros((10, 2)), np.zeros(9), chunk_rows=4)
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer, got 0"):
        sources.iter_array(np.zeros((10, 2)), chunk_rows=0)
    with pytest.raises(ValueError, match="X must have a sample axis; got a 0-d array"):
        sources.iter_array(np.float64(1), chunk_rows=1)
    with pytest.raises(TypeError, match="X must be an array, got None"):
        sources.iter_array(None, chunk_rows=1)
    x = da.ones((10, 2), chunks=5)
    with pytest.raises(ValueError, match=r"unknown chunk sizes .*X.compute_chunk_sizes\(\)"):
        sources.iter_array(x[x[:, 0] > 0], chunk_rows=4)


def test_iter_array_takes_lists():
    chunks = list(sources.iter_array([[1, 2], [3, 4], [5, 6]], [0, 1, 0], chunk_rows=2))
    np.testing.assert_array_equal(chunks[1][0], [[5, 6]])
    np.testing.assert_array_equal(chunks[0][1], [0, 1])


# ----------------------------------------------------------------------------- read_npy


def test_read_npy_round_trip(tmp_path):
    X = np.random.default_rng(0).random((103, 5), dtype=np.float32)
    y = np.arange(103) % 3
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    src = sources.read_npy(tmp_path / "X.npy", tmp_path / "y.npy", chunk_rows=25)
    assert len(src) == 5 and [len(x) for x, _ in src] == [25, 25, 25, 25, 3]
    ds = store.write(tmp_path / "s.zarr", src, chunk_rows=25, attrs=src.attrs())
    np.testing.assert_array_equal(ds.X.compute(), X)
    np.testing.assert_array_equal(ds.y.compute(), y)
    assert ds.attrs["attrs"]["source"] == str(tmp_path / "X.npy")
    assert collect(src)[0].shape == (103, 5)  # re-iterable


def test_read_npy_memory_maps_and_defaults(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((10, 3)))
    src = sources.read_npy(tmp_path / "X.npy")
    assert isinstance(src.X, np.memmap)
    assert src.chunk_rows == store.default_chunk_rows((3,), "float64")
    assert all(y is None for _, y in src)


def test_read_npy_errors(tmp_path):
    np.save(tmp_path / "X.npy", np.zeros((10, 3)))
    np.save(tmp_path / "y.npy", np.zeros(9))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(FileNotFoundError, match="X file '.*missing.npy' does not exist"):
        sources.read_npy(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="y file '.*nope.npy' does not exist"):
        sources.read_npy(tmp_path / "X.npy", tmp_path / "nope.npy")
    with pytest.raises(ValueError, match="junk.npy' is not a readable .npy array"):
        sources.read_npy(tmp_path / "junk.npy")
    with pytest.raises(ValueError, match=r"y.npy' has shape \(9,\), but X file .* \(10, 3\)"):
        sources.read_npy(tmp_path / "X.npy", tmp_path / "y.npy")


# ----------------------------------------------------------------------------- read_mnist


def test_read_mnist_chunks(tmp_path):
    rng = np.random.default_rng(0)
    parts = tuple(
        (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (4, 2, 3)
    )
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(parts)))
    src = sources.read_mnist(tmp_path, "test", chunk_rows=2)
    X, y = collect(src)
    np.testing.assert_array_equal(X, datasets.load_mnist(tmp_path, "test")[0])
    assert [len(x) for x, _ in src] == [2, 1]
    assert src.attrs() == {
        "dataset": "mnist",
        "split": "test",
        "source": str(tmp_path / "mnist.pkl.gz"),
    }


# ----------------------------------------------------------------------------- read_csv: encoding

CSV = """num,color,size,label
1.5,red,3,cat
2,blue,,dog
3,,1,cat
4,red,2,bird
"""


def test_read_csv_onehot_round_trip(tmp_path):
    src = sources.read_csv(write_csv(tmp_path / "a.csv", CSV), target="label", chunk_rows=3)
    assert src.feature_names == ["num", "color=blue", "color=red", "size"]
    assert src.target_names == ["bird", "cat", "dog"] and src.n_features == 4
    ds = store.write(tmp_path / "s.zarr", src, attrs=src.attrs())
    ds = store.open(tmp_path / "s.zarr")
    expected = [[1.5, 0, 1, 3], [2, 1, 0, np.nan], [3, 0, 0, 1], [4, 0, 1, 2]]
    np.testing.assert_array_equal(ds.X.compute(), np.array(expected, np.float32))
    np.testing.assert_array_equal(ds.y.compute(), [1, 2, 1, 0])
    assert ds.X.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.attrs["attrs"] == {
        "feature_names": src.feature_names,
        "target_names": ["bird", "cat", "dog"],
        "source": str(tmp_path / "a.csv"),
    }


def test_read_csv_codes_round_trip(tmp_path):
    src = sources.read_csv(
        write_csv(tmp_path / "a.csv", CSV), target="label", categorical="codes", dtype="float64"
    )
    assert src.feature_names == ["num", "color", "size"]
    ds = store.write(tmp_path / "s", src, format="memmap")
    X = store.open(tmp_path / "s").X.compute()
    np.testing.assert_array_equal(X[:, 1], [1, 0, np.nan, 1])  # blue=0, red=1, missing=NaN
    assert X.dtype == np.float64 and ds.classes == [0, 1, 2]


def test_read_csv_numeric_targets(tmp_path):
    f = write_csv(tmp_path / "a.csv", "a,k,r\n1,3,0.5\n2,1.0,2\n")
    assert collect(sources.read_csv(f, target="k"))[1].dtype == np.int64
    _, y = collect(sources.read_csv(f, target="r"))
    assert y.dtype == np.float64 and y.tolist() == [0.5, 2.0]
    assert sources.read_csv(f, target="k").target_names is None


def test_read_csv_no_target(tmp_path):
    f = write_csv(tmp_path / "a.csv", CSV)
    src = sources.read_csv(f, categorical_columns=["color", "label"])
    X, y = collect(src)
    assert y is None and X.shape == (4, 1 + 2 + 1 + 3)
    assert store.write(tmp_path / "s.zarr", src).y is None


def test_read_csv_categorical_columns_given(tmp_path):
    f = write_csv(tmp_path / "a.csv", "zip,v\n02139,1\n10001,2\n02139,3\n")
    src = sources.read_csv(f, categorical_columns="zip")
    assert src.feature_names == ["zip=02139", "zip=10001", "v"]  # text kept, leading zero too
    np.testing.assert_array_equal(collect(src)[0][:, :2], [[1, 0], [0, 1], [1, 0]])


def test_read_csv_detects_categories_past_empty_files(tmp_path):
    write_csv(tmp_path / "a.csv", "x,c\n")
    write_csv(tmp_path / "b.csv", "x,c\n1,u\n2,v\n")
    src = sources.read_csv(tmp_path / "*.csv")
    assert src.feature_names == ["x", "c=u", "c=v"]
    np.testing.assert_array_equal(collect(src)[0], [[1, 1, 0], [2, 0, 1]])


def test_read_csv_reiterable_and_chunked(tmp_path):
    f = write_csv(tmp_path / "a.csv", "a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(10)))
    src = sources.read_csv(f, target="b", chunk_rows=4)
    assert [len(x) for x, _ in src] == [4, 4, 2]
    np.testing.assert_array_equal(collect(src)[0], collect(src)[0])


# ----------------------------------------------------------------------------- read_csv: many files


def test_read_csv_glob_categories_consistent(tmp_path):
    write_csv(tmp_path / "part-2.csv", "label,color,x\nno,blue,3\nno,green,4\n")
    write_csv(tmp_path / "part-1.csv", "x,color,label\n1,red,yes\n2,red,yes\n")
    write_csv(tmp_path / "other.txt", "x,color,label\n9,pink,maybe\n")
    src = sources.read_csv(tmp_path / "part-*.csv", target="label", chunk_rows=1)
    assert src.files == [str(tmp_path / "part-1.csv"), str(tmp_path / "part-2.csv")]
    assert src.feature_names == ["x", "color=blue", "color=green", "color=red"]
    ds = store.write(tmp_path / "s.zarr", src)
    np.testing.assert_array_equal(
        ds.X.compute(), [[1, 0, 0, 1], [2, 0, 0, 1], [3, 1, 0, 0], [4, 0, 1, 0]]
    )
    np.testing.assert_array_equal(ds.y.compute(), [1, 1, 0, 0])  # no=0, yes=1


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    colors=st.lists(st.sampled_from(["red", "green", "blue", "teal"]), min_size=2, max_size=30),
    split=st.integers(1, 29),
    chunk_rows=st.integers(1, 7),
)
def test_read_csv_matches_pandas(tmp_path, colors, split, chunk_rows):
    """Whatever the files and chunks, one-hot columns equal pandas' get_dummies of the whole."""
    df = pd.DataFrame({"x": np.arange(len(colors), dtype=float), "c": colors})
    split = min(split, len(colors) - 1)
    df[:split].to_csv(tmp_path / "p0.csv", index=False)
    df[split:].to_csv(tmp_path / "p1.csv", index=False)
    X, _ = collect(sources.read_csv(tmp_path / "p*.csv", chunk_rows=chunk_rows))
    expected = pd.get_dummies(df, columns=["c"], prefix_sep="=", dtype=np.float32)
    np.testing.assert_array_equal(X, expected.to_numpy())


# ----------------------------------------------------------------------------- read_csv: errors


def test_read_csv_no_match(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV file matches '.*nothing-\\*.csv'"):
        sources.read_csv(tmp_path / "nothing-*.csv")


def test_read_csv_unknown_target(tmp_path):
    f = write_csv(tmp_path / "a.csv", CSV)
    columns = r"\['num', 'color', 'size', 'label'\]"
    with pytest.raises(ValueError, match=r"target column 'y' .*available columns: " + columns):
        sources.read_csv(f, target="y")


def test_read_csv_unknown_categorical_column(tmp_path):
    f = write_csv(tmp_path / "a.csv", CSV)
    with pytest.raises(ValueError, match=r"categorical_columns \['shape'\] are not columns of"):
        sources.read_csv(f, target="label", categorical_columns=["color", "shape"])


def test_read_csv_text_in_numeric_column(tmp_path):
    f = write_csv(tmp_path / "a.csv", "a,b\n1,2\n2,3\n3,oops\n")
    src = sources.read_csv(f, chunk_rows=2)  # 'b' looks numeric in the first chunk
    where = r"a.csv', line 4 \(data row 3\), column 'b': 'oops' is not a number"
    with pytest.raises(ValueError, match=where):
        list(src)


def test_read_csv_files_with_different_columns(tmp_path):
    write_csv(tmp_path / "a.csv", "x,y\n1,2\n")
    write_csv(tmp_path / "b.csv", "x,z\n1,2\n")
    with pytest.raises(ValueError, match=r"b.csv' has different .*missing \['y'\], extra \['z'\]"):
        sources.read_csv(tmp_path / "*.csv")


def test_read_csv_empty_file(tmp_path):
    f = write_csv(tmp_path / "a.csv", "")
    with pytest.raises(ValueError, match="a.csv' is empty: it needs a header line"):
        sources.read_csv(f)


def test_read_csv_empty_target(tmp_path):
    f = write_csv(tmp_path / "a.csv", "x,t\n1,a\n2,\n")
    with pytest.raises(ValueError, match=r"line 3 \(data row 2\): target 't' is empty"):
        sources.read_csv(f, target="t")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"categorical": "dummies"},
            r"categorical must be one of \('onehot', 'codes'\), got 'dummi",
        ),
        ({"chunk_rows": 0}, "chunk_rows must be a positive integer, got 0"),
        ({"dtype": "int32"}, "dtype must be a floating dtype \\(for NaN\\), got int32"),
    ],
)
def test_read_csv_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sources.read_csv(write_csv(tmp_path / "a.csv", CSV), **kwargs)


# ------------------------------------------------------------------------- read_csv: column types


def test_read_csv_typo_in_numeric_column_is_refused_not_one_hot_encoded(tmp_path):
    f = write_csv(tmp_path / "a.csv", "x,y\n1.5,0\n2.x,1\n3,0\n")
    where = r"a.csv', line 3 \(data row 2\), column 'x': '2.x' is not a number, but 2 of the 3"
    with pytest.raises(ValueError, match=where + ".*name the column in categorical_columns"):
        sources.read_csv(f)
    src = sources.read_csv(f, categorical_columns=["x"])  # declared: its values are categories
    assert src.feature_names == ["x=1.5", "x=2.x", "x=3", "y"]


def test_read_csv_column_types_rule(tmp_path):
    f = write_csv(tmp_path / "a.csv", "n,c,half,empty\n1,a,1,\nNA,b,x,\n3,7,2,\n4,d,y,\n")
    with pytest.raises(ValueError, match=r"line 3 \(data row 2\), column 'half': 'x'"):
        sources.read_csv(f)  # half numbers, half not: refused, not guessed
    src = sources.read_csv(f, categorical_columns=["c", "half"])
    assert src.feature_names[:4] == ["n", "c=7", "c=a", "c=b"]
    assert src.feature_names[-1] == "empty"
    g = write_csv(tmp_path / "b.csv", "n,c,empty\n1,a,\nNA,b,\n3,7,\n")
    src = sources.read_csv(g)  # 'c' is mostly text: categorical; 'empty' has no value: numeric
    assert src.feature_names == ["n", "c=7", "c=a", "c=b", "empty"]
    h = write_csv(tmp_path / "h.csv", "x,y\n")
    assert sources.read_csv(h).feature_names == ["x", "y"]  # no rows: numeric, not 0 features


def test_read_csv_target_types(tmp_path):
    f = write_csv(tmp_path / "a.csv", "x,y\n1,0\n2,1x\n3,0\n4,1\n")
    with pytest.raises(ValueError, match=r"line 3 \(data row 2\), column 'y': '1x' is not a num"):
        sources.read_csv(f, target="y")
    src = sources.read_csv(f, target="y", categorical_columns=["y"])  # declared: labels
    assert src.target_names == ["0", "1", "1x"] and collect(src)[1].tolist() == [0, 2, 0, 1]
    g = write_csv(tmp_path / "b.csv", "x,y\n1,0\n2,1\n3,oops\n")
    with pytest.raises(ValueError, match=r"b.csv', line 4 \(data row 3\), column 'y': 'oops'"):
        sources.read_csv(g, target="y", chunk_rows=2)  # found by the first pass, not later
    h = write_csv(tmp_path / "c.csv", "x,y\n1,12345678901234567890\n2,3\n")
    y = collect(sources.read_csv(h, target="y"))[1]
    assert y.dtype == np.float64 and y[0] == 12345678901234567890  # too big for int64: not wrapped


def test_read_csv_value_that_overflows_dtype_is_refused(tmp_path):
    f = write_csv(tmp_path / "a.csv", "x,y\n1,2\n70000,1\n")
    src = sources.read_csv(f, dtype="float16")
    with pytest.raises(ValueError, match=r"line 3 \(data row 2\), column 'x': '70000' overflows"):
        list(src)


def test_read_csv_malformed_and_bad_arguments_name_what(tmp_path):
    f = write_csv(tmp_path / "a.csv", "x,y\n1,2\n3,4,5\n")
    with pytest.raises(ValueError, match=r"a.csv' is not valid CSV: .*line 3"):
        sources.read_csv(f)
    g = write_csv(tmp_path / "b.csv", "y\n1\n")
    with pytest.raises(ValueError, match=r"b.csv' has no feature columns: \['y'\]"):
        sources.read_csv(g, target="y")
    with pytest.raises(TypeError, match="pattern must be a path or glob .* got None"):
        sources.read_csv(None)
    with pytest.raises(ValueError, match="dtype must be a floating dtype .* got nope"):
        sources.read_csv(f, dtype="nope")
