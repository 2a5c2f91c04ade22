"""Tests for pipeline/_inputs.py: what store.write accepts, its dtypes and its clear errors."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from pipeline import store
from pipeline._inputs import MAX_CHUNK_BYTES, cast_exactly


def chunks(*pairs):
    return iter(pairs)


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    "value, dtype, match",
    [
        (np.array([1.0, 2.0]), np.int64, "floats never go into an integer dtype"),
        (np.array([300]), np.int8, r"300 is outside int8's range \[-128, 127\]"),
        (np.array([-1]), np.uint8, r"-1 is outside uint8's range"),
        (np.array([2**63], np.uint64), np.int64, "outside int64's range"),
        (np.array([1e300]), np.float32, r"1e\+300 overflows float32"),
        (np.array([2**24 + 1]), np.float32, "16777217 is not exactly representable in float32"),
        (np.array([2**53 + 1]), np.float64, "not exactly representable in float64"),
        (np.array([70000]), np.float16, "not exactly representable in float16"),
        (np.array([0, 1]), np.bool_, "only bool goes into a bool dtype"),
    ],
)
def test_cast_exactly_refuses_value_changes(value, dtype, match):
    with pytest.raises(ValueError, match=match):
        cast_exactly(value, np.dtype(dtype), "chunk 1 of the input: X")


@pytest.mark.parametrize(
    "value, dtype",
    [
        (np.array([-128, 127]), np.int8),
        (np.array([255], np.int64), np.uint8),
        (np.array([2**24, -(2**53), 2**60]), np.float64),  # 2**60 is exact though large
        (np.array([0.1, np.nan, -np.inf, 3e38]), np.float32),  # rounded, never overflowing
        (np.array([True, False]), np.float32),
    ],
)
def test_cast_exactly_accepts_what_keeps_values(value, dtype):
    out = cast_exactly(value, np.dtype(dtype), "X")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, value.astype(dtype))


@pytest.mark.parametrize(
    "pairs, match",
    [
        (
            [(np.ones((2, 2), np.int8), None), (np.full((2, 2), 300.0), None)],
            "chunk 1 of the input: X has dtype float64, but the store's dtype, set by the first "
            "chunk, is int8; .* cast them all to float64",
        ),
        (
            [(np.ones((2, 2), np.float32), None), (np.full((2, 2), 1e300), None)],
            r"chunk 1 of the input: X has dtype float64, .* is float32; .*1e\+300 overflows",
        ),
        (
            [(np.ones((2, 2)), np.array([1, 2], np.int8))] * 2
            + [(np.ones((2, 2)), np.array([300, 1]))],
            r"chunk 2 of the input: y has dtype int64, .* is int8; .*300 is outside",
        ),
        (
            [(np.ones((2, 2)), np.array([1, 2])), (np.ones((2, 2)), np.array([1.5, 2.0]))],
            "chunk 1 of the input: y has dtype float64, .* is int64",
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
def test_later_chunk_that_would_change_values_is_refused(tmp_path, pairs, match, fmt):
    with pytest.raises(ValueError, match=match):
        store.write(tmp_path / "s", iter(pairs), chunk_rows=3, format=fmt)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
def test_later_chunks_cast_exactly_and_classes_are_what_is_stored(tmp_path, fmt):
    pairs = chunks(
        (np.array([[1], [2]], np.int16), np.array([0, 1], np.int8)),
        (np.array([[30000], [-5]]), np.array([127, -128])),  # int64 values in range
        (np.array([[7]], np.uint8), np.array([True])),
    )
    ds = store.write(tmp_path / "s", pairs, chunk_rows=3, format=fmt)  # blocks mix the pieces
    assert ds.X.dtype == np.int16 and ds.y.dtype == np.int8
    np.testing.assert_array_equal(ds.X.compute().ravel(), [1, 2, 30000, -5, 7])
    y = store.open(tmp_path / "s").y.compute()
    np.testing.assert_array_equal(y, [0, 1, 127, -128, 1])
    assert ds.classes == sorted(np.unique(y).tolist()) == [-128, 0, 1, 127]


def test_float_chunks_round_to_the_store_precision(tmp_path):
    pairs = chunks((np.zeros((1, 2), np.float32), None), (np.array([[0.1, np.nan]]), None))
    X = store.write(tmp_path / "s", pairs).X.compute()
    np.testing.assert_array_equal(X, np.array([[0, 0], [0.1, np.nan]], np.float32))


# ----------------------------------------------------------------------------- chunk sizes


def test_dask_array_of_unknown_length_is_refused_with_the_fix(tmp_path):
    x = da.random.random((100, 3), chunks=20)
    fix = r"X is a dask array with unknown chunk sizes .*call X.compute_chunk_sizes\(\) first"
    with pytest.raises(ValueError, match=fix):
        store.write(tmp_path / "s", x[x[:, 0] > 0.5])
    y = da.ones(100, chunks=20)
    with pytest.raises(ValueError, match=r"y is a dask array with unknown chunk sizes"):
        store.write(tmp_path / "s", x, y[x[:, 0] > 0.5])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
@pytest.mark.parametrize("pairs", [False, True])
def test_huge_chunk_rows_is_refused_with_the_limit(tmp_path, fmt, pairs):
    X = np.ones((10, 3))
    src = chunks((X, None)) if pairs else X
    limit = f"{MAX_CHUNK_BYTES // 24:,}"
    match = f"chunk_rows=1,000,000,000,000 makes chunks of .* use chunk_rows <= {limit}"
    with pytest.raises(ValueError, match=match):
        store.write(tmp_path / "s", src, chunk_rows=10**12, format=fmt)
    assert os.listdir(tmp_path) == []


def test_sample_larger_than_a_chunk_may_hold_is_refused(tmp_path):
    X = da.zeros((2, 600_000_000), dtype=np.float32, chunks=(1, 10**6))  # never computed
    with pytest.raises(ValueError, match="one sample takes 2,400,000,000 bytes"):
        store.write(tmp_path / "s", X)
    assert os.listdir(tmp_path) == []


def test_bool_chunk_rows_is_refused(tmp_path):
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer, got True"):
        store.write(tmp_path / "s", np.ones((4, 2)), chunk_rows=True)


# ----------------------------------------------------------------------------- what is accepted


@pytest.mark.parametrize(
    "X, y, error, match",
    [
        (5, None, TypeError, "X must be an array or an iterable of .* got int"),
        (None, None, TypeError, "got NoneType"),
        ([[1, 2], [3]], None, ValueError, "X is a ragged nested sequence"),
        (np.ones((4, 2)), [[1], [2, 3], [4], [5]], ValueError, "y is a ragged nested sequence"),
        (np.ones((5, 0)), None, ValueError, r"X has no features: shape \(5, 0\)"),
        (np.ones((5, 2)), np.ones((5, 0)), ValueError, "y has no targets"),
        (np.ma.ones((3, 2)), None, TypeError, r"masked array; .*X.filled\(np.nan\)"),
        (scipy.sparse.csr_matrix(np.ones((3, 2))), None, TypeError, "X is a scipy sparse matrix"),
        (pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), None, TypeError, "non-numeric columns {'b'"),
        (chunks((np.ones((2, 2)),) * 3), None, ValueError, "chunk 0 of the input is a tuple of 3"),
        (chunks(np.ones((2, 2)), None), None, TypeError, "chunk 1 of the input is a NoneType"),
        (chunks("abc"), None, TypeError, "chunk 0 of the input is a str"),
        (chunks([np.ones((2, 2)), np.ones(2)]), None, TypeError, "pair as a tuple"),
        (chunks((np.ones((2, 0)), None)), None, ValueError, r"X \(chunk 0 of the input\) has no"),
        (chunks((np.ma.ones((2, 2)), None)), None, TypeError, r"X \(chunk 0 of the input\) is a m"),
    ],
)
def test_bad_inputs_are_refused_clearly(tmp_path, X, y, error, match):
    with pytest.raises(error, match=match):
        store.write(tmp_path / "s.zarr", X, y)
    assert os.listdir(tmp_path) == []


def test_pandas_inputs_are_stored_as_their_values(tmp_path):
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [3, 4, 5]})
    ds = store.write(tmp_path / "s", df, df["b"])
    np.testing.assert_array_equal(ds.X.compute(), df.to_numpy())
    assert ds.classes == [3, 4, 5]
    ds = store.write(tmp_path / "t", ((c[["a"]], c["b"]) for c in (df[:2], df[2:])))
    np.testing.assert_array_equal(ds.y.compute(), [3, 4, 5])
