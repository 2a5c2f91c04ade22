"""pipeline.store: round trips, schema, atomicity and clear errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest
import zarr

import pipeline.store as store
from pipeline.store import ChunkReadError


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
@pytest.mark.parametrize(
    "shape,yshape", [((250, 5), (250,)), ((250, 6, 4, 2), (250,)), ((250, 7, 3), (250, 2))]
)
def test_round_trip_any_feature_shape(tmp_path, fmt, shape, yshape):
    rng = np.random.default_rng(1)
    X = rng.normal(size=shape).astype("float32")
    y = rng.integers(0, 3, size=yshape)
    ds = store.write(tmp_path / "s", X, y, chunk_rows=64, format=fmt)
    assert len(ds) == 250 and ds.X.chunks[0] == (64, 64, 64, 58)
    assert ds.attrs["feature_shape"] == list(shape[1:]) and ds.attrs["format"] == fmt
    np.testing.assert_array_equal(ds.X.compute(), X)
    np.testing.assert_array_equal(ds.y.compute(), y)
    reopened = store.open(tmp_path / "s")
    np.testing.assert_array_equal(reopened.X[100:130].compute(), X[100:130])
    assert reopened.classes == ([0, 1, 2] if len(yshape) == 1 else None)


@pytest.mark.parametrize(
    "make",
    [
        lambda X, p: X,
        lambda X, p: da.from_array(X, chunks=77),
        lambda X, p: zarr.create_array(str(p / "src.zarr"), data=X, chunks=(50, 4)),
        lambda X, p: _memmap(X, p / "src.npy"),
    ],
    ids=["numpy", "dask", "zarr", "memmap"],
)
def test_accepts_every_array_kind(tmp_path, make):
    X = np.arange(900, dtype="float64").reshape(225, 4)
    ds = store.write(tmp_path / "s.zarr", make(X, tmp_path), np.arange(225.0), chunk_rows=100)
    np.testing.assert_array_equal(ds.X.compute(), X)
    assert ds.classes is None  # float target: regression, no classes


def _memmap(X, path):
    np.save(path, X)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
def test_iterable_of_unknown_length_is_rechunked(tmp_path, fmt):
    rng = np.random.default_rng(2)
    parts = [(rng.normal(size=(n, 3)), rng.integers(0, 2, n)) for n in (10, 130, 1, 77)]
    ds = store.write(tmp_path / "s", iter(parts), chunk_rows=50, format=fmt)
    assert ds.X.chunks[0] == (50, 50, 50, 50, 18)
    np.testing.assert_array_equal(ds.X.compute(), np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(ds.y.compute(), np.concatenate([p[1] for p in parts]))


def test_x_only_and_user_attrs(tmp_path):
    ds = store.write(tmp_path / "s.zarr", np.ones((10, 2)), attrs={"source": "test"})
    assert ds.y is None and ds.attrs["attrs"] == {"source": "test"}
    assert "no" not in ds.summary().split("\n")[0]


def test_default_chunks_are_about_eight_megabytes():
    rows = store.default_chunk_rows((784,), "float32")
    assert 6 * 2**20 <= rows * 784 * 4 <= 10 * 2**20
    assert store.default_chunk_rows((10**7,), "float64") == 1


def test_fsspec_memory_url():
    X = np.arange(40.0).reshape(20, 2)
    store.write("memory://tests/mem.zarr", X, chunk_rows=8, overwrite=True)
    np.testing.assert_array_equal(store.open("memory://tests/mem.zarr").X.compute(), X)


def test_same_store_same_graph_keys_different_store_different(tmp_path, zarr_store):
    again = store.open(zarr_store.path)
    assert again.X.name == zarr_store.X.name and again.y.name == zarr_store.y.name
    relative = store.open(os.path.relpath(zarr_store.path))  # the same data, however named
    assert relative.X.name == zarr_store.X.name
    other = store.write(tmp_path / "o.zarr", np.ones((5, 3)))
    assert other.X.name != zarr_store.X.name


def test_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    store.write(path, np.zeros((5, 2)))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        store.write(path, np.ones((5, 2)))
    ds = store.write(path, np.ones((7, 2)), overwrite=True)
    assert len(ds) == 7 and sorted(os.listdir(tmp_path)) == ["s.zarr"]


def test_refuses_to_overwrite_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="thesis.tex.*replaces only a pipeline store"):
            store.write(tmp_path / "mine", np.ones((3, 2)), overwrite=overwrite)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["mine"]


@pytest.mark.parametrize(
    "X,y,error,match",
    [
        (np.zeros((0, 3)), None, ValueError, "empty"),
        (np.zeros((5, 3)), np.zeros(4), ValueError, "different lengths: 5 and 4"),
        (np.array([["a", "b"]] * 3), None, TypeError, "numeric"),
        (np.array([[object()]] * 3), None, TypeError, "dtype object"),
        (np.zeros((5, 3)), np.array(["a"] * 5), TypeError, "y has dtype"),
        (np.zeros((5, 3)), np.zeros((5, 2, 2)), ValueError, "1-D or 2-D"),
        (iter([]), None, ValueError, "empty"),
        (
            iter([(np.zeros((4, 3)), np.zeros(4)), (np.zeros((4, 2)), np.zeros(4))]),
            None,
            ValueError,
            "chunk 1 of the input has X features",
        ),
        (iter([(np.zeros((4, 3)), np.zeros(3))]), None, ValueError, "chunk 0 of the input"),
        ("data.csv", None, TypeError, "got str"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, X, y, error, match):
    with pytest.raises(error, match=match):
        store.write(tmp_path / "s.zarr", X, y)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        store.write(tmp_path / "s", np.ones((2, 2)), format="hdf5")
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        store.write(tmp_path / "s", np.ones((2, 2)), chunk_rows=0)
    with pytest.raises(ValueError, match="needs a local path"):
        store.write("memory://x", np.ones((2, 2)), format="memmap")
    with pytest.raises(TypeError, match="not JSON serializable"):
        store.write(tmp_path / "s", np.ones((2, 2)), attrs={"f": object()})
    assert os.listdir(tmp_path) == []


def test_exception_in_source_leaves_nothing(tmp_path):
    def source():
        yield np.ones((100, 3)), np.ones(100)
        raise RuntimeError("source broke")

    for fmt in ("zarr", "memmap"):
        with pytest.raises(RuntimeError, match="source broke"):
            store.write(tmp_path / "s", source(), chunk_rows=10, format=fmt)
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
def test_sigkill_mid_write_leaves_nothing_that_opens(tmp_path, fmt):
    script = textwrap.dedent(f"""
        import sys, time, numpy as np, pipeline.store as store
        def source():
            for i in range(1000):
                yield np.ones((50, 4)), np.ones(50)
                if i == 3:
                    print("writing", flush=True)
                time.sleep(0.01)
        store.write(sys.argv[1], source(), chunk_rows=20, format="{fmt}")
    """)
    target = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(FileNotFoundError, match="no store"):
        store.open(target)
    (partial,) = os.listdir(tmp_path)  # the unfinished temporary sibling
    assert partial.startswith(".s.partial-")
    with pytest.raises(ValueError, match="not a (complete )?pipeline store"):
        store.open(tmp_path / partial)


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no store at"):
        store.open(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError, match="no store at"):
        store.open("memory://tests/definitely-missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a pipeline store: no zarr.json"):
        store.open(tmp_path / "plain")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        store.open(tmp_path / "f.txt")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a complete pipeline store"):
        store.open(tmp_path / "foreign.zarr")


def test_unknown_format_version(tmp_path):
    store.write(tmp_path / "s.zarr", np.ones((3, 2)))
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs["pipeline"] = {**group.attrs["pipeline"], "format_version": 99}
    with pytest.raises(ValueError, match="format_version 99"):
        store.open(tmp_path / "s.zarr")
    store.write(tmp_path / "m", np.ones((3, 2)), format="memmap")
    schema = json.loads((tmp_path / "m" / "schema.json").read_text())
    (tmp_path / "m" / "schema.json").write_text(json.dumps({**schema, "format_version": 0}))
    with pytest.raises(ValueError, match="format_version 0"):
        store.open(tmp_path / "m")


def test_missing_chunk_names_array_and_chunk(tmp_path, xy):
    ds = store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    os.remove(tmp_path / "s.zarr" / "X" / "c" / "3" / "0")
    np.testing.assert_array_equal(ds.X.blocks[2].compute(), xy[0][200:300])  # others still read
    with pytest.raises(ChunkReadError, match=r"array 'X' chunk 3 \(rows 300-399\) is missing"):
        ds.X.compute()


def test_corrupt_chunk_names_array_and_chunk(tmp_path, xy):
    ds = store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    chunk = tmp_path / "s.zarr" / "y" / "c" / "5"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(ChunkReadError, match="array 'y' chunk 5 could not be read"):
        ds.y.compute()


def test_truncated_memmap_file(tmp_path, xy):
    ds = store.write(tmp_path / "m", *xy, format="memmap")
    with open(tmp_path / "m" / "X.npy", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(ChunkReadError, match="X.npy is corrupt"):
        ds.X.compute()


def test_memmap_store_is_a_valid_npy_directory(tmp_path, xy):
    store.write(tmp_path / "m", *xy, format="memmap")
    X = np.load(tmp_path / "m" / "X.npy", mmap_mode="r")
    assert isinstance(X, np.memmap) and X.shape == xy[0].shape
    np.testing.assert_array_equal(X, xy[0])


def test_dataset_pickles_small_for_workers(zarr_store):
    import pickle

    blob = pickle.dumps(zarr_store.X)
    assert len(blob) < 20_000  # the graph holds the store location, not the data
    np.testing.assert_array_equal(pickle.loads(blob).compute(), zarr_store.X.compute())


def test_dask_input_is_read_once_per_chunk_in_few_calls(tmp_path, zarr_store, monkeypatch):
    from pipeline._store import _ChunkReader

    reads = []
    original = _ChunkReader.__getitem__
    monkeypatch.setattr(_ChunkReader, "__getitem__", lambda s, k: reads.append(k) or original(s, k))
    lazy = zarr_store.X * 2  # a store's dask array, with preprocessing on top
    copy = store.write(tmp_path / "copy.zarr", lazy, zarr_store.y, chunk_rows=100)
    assert len(reads) == 2 * 11  # X and y: each of the 11 source chunks once
    np.testing.assert_array_equal(copy.X.compute(), zarr_store.X.compute() * 2)


def _edit_schema(path, fmt, **changes):
    if fmt == "memmap":
        schema = json.loads((path / "schema.json").read_text())
        (path / "schema.json").write_text(json.dumps({**schema, **changes}))
    else:
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"]["pipeline"].update(changes)
        (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
@pytest.mark.parametrize(
    "edit",
    [{"n_samples": 900}, {"dtype": "<f8"}, {"feature_shape": [1, 3]}, {"classes": [0, 1]},
     {"chunk_rows": 50}],
)
def test_hand_edited_schemas_are_refused(tmp_path, xy, fmt, edit):
    path = tmp_path / "s"
    store.write(path, *xy, chunk_rows=100, format=fmt)
    _edit_schema(path, fmt, **edit)
    with pytest.raises(ValueError, match="edited or corrupt store metadata"):
        store.open(path)
    if "classes" not in edit:  # without a checksum (older stores) the arrays still disagree
        (path / "pipeline.json").unlink()
        if fmt == "memmap":
            schema = json.loads((path / "schema.json").read_text())
            del schema["checksum"]
            (path / "schema.json").write_text(json.dumps(schema))
        else:
            meta = json.loads((path / "zarr.json").read_text())
            del meta["attributes"]["pipeline"]["checksum"]
            (path / "zarr.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="corrupt pipeline store: array 'X' has"):
            store.open(path)


def test_corrupt_memmap_chunk_names_array_and_chunk(tmp_path, xy):
    ds = store.write(tmp_path / "m", *xy, chunk_rows=100, format="memmap")
    offset = 4096 + 5 * 100 * 8  # y is int64: chunk 5 starts 500 rows in
    with open(tmp_path / "m" / "y.npy", "r+b") as f:
        f.seek(offset + 3)
        byte = f.read(1)
        f.seek(offset + 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    np.testing.assert_array_equal(ds.y.blocks[4].compute(), xy[1][400:500])
    with pytest.raises(ChunkReadError, match=r"array 'y' chunk 5 \(rows 500-599\) is corrupt"):
        ds.y.compute()
    with pytest.raises(ChunkReadError, match="chunk 5"):
        ds.y[550:551].compute()  # a slice inside the chunk is checked too


def test_truncated_memmap_store_is_refused_on_open(tmp_path, xy):
    store.write(tmp_path / "m", *xy, format="memmap")
    with open(tmp_path / "m" / "X.npy", "r+b") as f:
        f.truncate(5000)
    with pytest.raises(ValueError, match="truncated"):
        store.open(tmp_path / "m")


def test_missing_fsspec_driver_is_named():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install s3fs"):
            store.open("s3://bucket/data.zarr")
    else:
        pytest.skip("s3fs is installed")


def test_zarr_chunk_copied_over_another_is_caught(tmp_path, xy):
    # a valid chunk in the wrong place passes zstd's checksum; the store's CRCs catch it
    ds = store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    chunks = tmp_path / "s.zarr" / "X" / "c"
    (chunks / "4" / "0").write_bytes((chunks / "2" / "0").read_bytes())
    np.testing.assert_array_equal(ds.X.blocks[2].compute(), xy[0][200:300])
    with pytest.raises(ChunkReadError, match=r"array 'X' chunk 4 \(rows 400-499\) is corrupt"):
        ds.X.compute()


def test_edited_zarr_array_metadata_is_refused(tmp_path, xy):
    store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    meta_file = tmp_path / "s.zarr" / "X" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"][0]["configuration"]["endian"] = "big"  # every value reads byte-swapped
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"array 'X' \(X/zarr.json.*was edited"):
        store.open(tmp_path / "s.zarr")


def test_edited_marker_uid_is_refused_on_open(tmp_path, xy):
    store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    marker_file = tmp_path / "s.zarr" / "pipeline.json"
    marker_file.write_text(json.dumps({**json.loads(marker_file.read_text()), "uid": "0" * 32}))
    with pytest.raises(ValueError, match="corrupt pipeline store: its pipeline.json names uid"):
        store.open(tmp_path / "s.zarr")


def test_truncated_zarr_json_is_called_corrupt(tmp_path, xy):
    store.write(tmp_path / "s.zarr", *xy, chunk_rows=100)
    text = (tmp_path / "s.zarr" / "zarr.json").read_text()
    (tmp_path / "s.zarr" / "zarr.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="corrupt pipeline store: its zarr.json is not valid JSON"):
        store.open(tmp_path / "s.zarr")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_open_names_another_pipeline_object(tmp_path, xy):
    from pipeline import MLPRegressor

    X, y = xy
    MLPRegressor(hidden_layer_sizes=(2,), max_iter=1).fit(X[:50], y[:50]).save(tmp_path / "m")
    with pytest.raises(ValueError, match=r"holds a pipeline model \(open it with pipeline.load\)"):
        store.open(tmp_path / "m")


def test_attrs_are_stored_as_json_or_refused_before_writing(tmp_path):
    ds = store.write(tmp_path / "a.zarr", np.ones((3, 2)), attrs={1: "one", "t": (1, 2)})
    assert ds.attrs["attrs"] == {"1": "one", "t": [1, 2]}
    assert store.open(tmp_path / "a.zarr").attrs["attrs"] == {"1": "one", "t": [1, 2]}
    for bad in ({"x": float("nan")}, {"x": object()}, ["not", "a", "dict"]):
        with pytest.raises(TypeError, match="attrs must be"):
            store.write(tmp_path / "b.zarr", np.ones((3, 2)), attrs=bad)
        assert not (tmp_path / "b.zarr").exists()


def test_one_dimensional_x_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"X must be at least 2-D.*reshape\(-1, 1\)"):
        store.write(tmp_path / "s.zarr", np.arange(10.0))
    assert not (tmp_path / "s.zarr").exists()


def test_second_writer_to_a_url_is_refused_and_the_first_store_is_whole():
    url = "memory://tests/two-writers.zarr"
    refused = []

    def source():
        for i in range(4):
            if i == 2:  # a second writer arrives mid-write
                with pytest.raises(FileExistsError, match="being written now") as info:
                    store.write(url, np.ones((30, 3), "f4"), overwrite=True)
                refused.append(info)
            yield np.full((10, 3), i, "f4"), np.full(10, i)

    store.write(url, source(), chunk_rows=10, overwrite=True)
    assert refused
    np.testing.assert_array_equal(store.open(url).y.compute(), np.repeat(np.arange(4), 10))


def test_overwrite_at_a_url_never_removes_files_that_are_not_the_stores():
    import fsspec

    url, fs = "memory://tests/with-notes.zarr", fsspec.filesystem("memory")
    store.write(url, np.ones((20, 2)), chunk_rows=5)
    fs.pipe_file("/tests/with-notes.zarr/notes.txt", b"mine")
    with pytest.raises(FileExistsError, match="also holds notes.txt"):
        store.write(url, np.zeros((20, 2)), chunk_rows=5, overwrite=True)
    assert fs.cat_file("/tests/with-notes.zarr/notes.txt") == b"mine"
    np.testing.assert_array_equal(store.open(url).X.compute(), np.ones((20, 2)))
