"""pipeline.stream: coverage, determinism, resume, shapes, bounded read-ahead."""

import json
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stream import Chunk, chunks, epoch_order


def _rows(stream):
    """Row ids (column 0 of X) of the real samples, in stream order."""
    return np.concatenate([c.X[c.mask][:, 0] for c in stream]).astype(np.int64)


def _indexed(n, chunk_rows):
    X = np.stack([np.arange(n), np.arange(n) * 2.0], axis=1).astype("float32")
    return da.from_array(X, chunks=(chunk_rows, 2)), da.from_array(np.arange(n), chunks=chunk_rows)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 700),
    chunk_rows=st.integers(1, 120),
    batch_size=st.integers(1, 64),
    window=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
    shuffle=st.booleans(),
    prefetch=st.integers(0, 3),
)
def test_every_sample_once_in_the_order_of_seed_and_epoch(
    n, chunk_rows, batch_size, window, seed, epoch, shuffle, prefetch
):
    X, y = _indexed(n, chunk_rows)
    stream = chunks(
        X,
        y,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        window=window,
        shuffle=shuffle,
        prefetch=prefetch,
    )
    expected_len = len(stream)
    got = list(stream)
    assert len(got) == expected_len
    rows = np.concatenate([c.X[c.mask][:, 0] for c in got]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    np.testing.assert_array_equal(
        rows, epoch_order(X.chunks[0], shuffle=shuffle, seed=seed, epoch=epoch, window=window)
    )
    if not shuffle:
        np.testing.assert_array_equal(rows, np.arange(n))
    for c in got:  # y travels with X
        np.testing.assert_array_equal(c.y[c.mask], c.X[c.mask][:, 0])
    shapes = {c.X.shape for c in got}
    assert len(shapes) == 1  # static shapes: one compilation
    assert all(c.mask.all() for c in got[:-1])  # only the last chunk is padded


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 500),
    chunk_rows=st.integers(1, 90),
    batch_size=st.integers(1, 40),
    stop_after=st.integers(0, 30),
    seed=st.integers(0, 1000),
)
def test_resume_yields_exactly_the_remainder(n, chunk_rows, batch_size, stop_after, seed):
    X, y = _indexed(n, chunk_rows)
    full = _rows(chunks(X, y, batch_size=batch_size, seed=seed, epoch=3))
    first = chunks(X, y, batch_size=batch_size, seed=seed, epoch=3)
    head = [c for _, c in zip(range(stop_after), first, strict=False)]
    state = first.state()
    first.close()
    rest = list(chunks(X, y, batch_size=batch_size, seed=seed, epoch=3, state=state))
    np.testing.assert_array_equal(_rows(head + rest), full)


def test_chunk_layout_and_padding():
    X, y = _indexed(1003, 100)
    got = list(chunks(X, y, batch_size=32, seed=0, prefetch=0))
    assert isinstance(got[0], Chunk)
    assert got[0].X.shape == (3, 32, 2) and got[0].y.shape == (3, 32)
    assert got[0].mask.shape == (3, 32) and got[0].mask.dtype == bool
    last = got[-1]
    assert last.mask.sum() == 1003 - 96 * (len(got) - 1)
    assert (last.X[~last.mask] == 0).all()  # padding is zeros


def test_epochs_differ_and_seeds_differ():
    X, y = _indexed(500, 50)
    a = _rows(chunks(X, y, batch_size=10, seed=0, epoch=0))
    assert not np.array_equal(a, _rows(chunks(X, y, batch_size=10, seed=0, epoch=1)))
    assert not np.array_equal(a, _rows(chunks(X, y, batch_size=10, seed=1, epoch=0)))
    np.testing.assert_array_equal(a, _rows(chunks(X, y, batch_size=10, seed=0, epoch=0)))


def test_shuffle_mixes_across_chunks_of_a_window():
    X, y = _indexed(400, 100)
    first = next(chunks(X, y, batch_size=100, n_batches=1, window=4, seed=5)).X[0, :, 0]
    assert len(np.unique(first // 100)) > 1  # samples of several store chunks


def test_order_does_not_depend_on_read_speed_or_scheduler(zarr_store):
    ref = _rows(chunks(zarr_store.X, zarr_store.y, batch_size=16, seed=9, prefetch=0))

    def slow(X, y):
        time.sleep(np.random.default_rng().uniform(0, 0.01))
        return X, y

    for prefetch in (1, 4):
        with dask.config.set(scheduler="threads"):
            got = chunks(
                zarr_store.X, zarr_store.y, batch_size=16, seed=9, prefetch=prefetch, transform=slow
            )
            np.testing.assert_array_equal(_rows(got), ref)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(
            _rows(chunks(zarr_store.X, zarr_store.y, batch_size=16, seed=9)), ref
        )


def test_accepts_numpy_and_datasets(zarr_store, xy):
    from_np = _rows(chunks(xy[0], xy[1], batch_size=50, shuffle=False))
    np.testing.assert_array_equal(from_np, np.arange(1003))
    from_ds = list(chunks(zarr_store, batch_size=50, shuffle=False))
    assert from_ds[0].y is not None and _rows(from_ds).tolist() == list(range(1003))
    no_y = next(chunks(xy[0], batch_size=50))
    assert no_y.y is None


def test_transform_runs_on_windows():
    X, y = _indexed(100, 10)
    got = list(chunks(X, y, batch_size=10, transform=lambda a, b: (a * 0 + 1, b % 2)))
    assert all((c.X[c.mask] == 1).all() and set(c.y[c.mask]) <= {0, 1} for c in got)


def test_errors_in_reading_reach_the_consumer():
    def broken(X, y):
        raise RuntimeError("decode failed")

    X, y = _indexed(100, 10)
    with pytest.raises(RuntimeError, match="decode failed"):
        list(chunks(X, y, batch_size=10, transform=broken))


def test_read_ahead_is_bounded_and_stops_on_close():
    X, y = _indexed(10_000, 100)
    reads = []

    def count(a, b):
        reads.append(len(a))
        return a, b

    stream = chunks(X, y, batch_size=100, n_batches=1, window=1, prefetch=2, transform=count)
    next(stream)
    time.sleep(0.3)
    assert len(reads) <= 1 + 2 + 2  # consumed + queued + one in hand
    stream.close()
    assert not any(t.name == "pipeline-stream-prefetch" for t in threading.enumerate())


def test_abandoned_stream_releases_its_thread():
    import gc

    X, y = _indexed(5_000, 100)
    stream = chunks(X, y, batch_size=100, n_batches=1, prefetch=2)
    next(stream)
    del stream
    gc.collect()
    time.sleep(0.3)
    assert not any(t.name == "pipeline-stream-prefetch" for t in threading.enumerate())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(batch_size=8, window=0), "window"),
        (dict(batch_size=8, prefetch=-1), "prefetch"),
        (dict(batch_size=8, seed=-3), "seed"),
        (dict(batch_size=8, state={"nope": 1}), "state must be a dict"),
    ],
)
def test_bad_arguments(kwargs, match):
    X, y = _indexed(50, 10)
    with pytest.raises(ValueError, match=match):
        chunks(X, y, **kwargs)


def test_state_from_another_stream_is_refused():
    X, y = _indexed(50, 10)
    state = chunks(X, y, batch_size=8, seed=1).state()
    with pytest.raises(ValueError, match="seed: saved 1, now 2"):
        chunks(X, y, batch_size=8, seed=2, state=state)
    with pytest.raises(ValueError, match=r"position.\] is 1000, but this stream has only 7 chunks"):
        chunks(X, y, batch_size=8, seed=1, state={**state, "position": 1000})


def test_state_names_its_data_and_refuses_other_data(tmp_path):
    import zarr

    from pipeline import store

    X, y = _indexed(50, 10)
    Xn, yn = X.compute(), y.compute()
    ds = store.write(tmp_path / "s.zarr", Xn, yn, chunk_rows=10)
    z = zarr.open_array(tmp_path / "z.zarr", mode="w", shape=Xn.shape, dtype=Xn.dtype)
    z[:] = Xn
    other = Xn.copy()
    other[7, 1] += 1  # same shape, one value changed
    cases = [  # (data, the same data given again, other data of the same size)
        ((X, y), (da.from_array(Xn, chunks=(10, 2)), y), (da.from_array(other, chunks=10), y)),
        ((Xn, yn), (Xn.copy(), yn.copy()), (other, yn)),  # numpy: by content
        ((Xn, None), (Xn.copy(), None), (Xn, yn)),  # y given or not
        ((ds.X, ds.y), (store.open(tmp_path / "s.zarr").X, ds.y), (X, y)),  # a store: by uid
        ((z, yn), (zarr.open_array(tmp_path / "z.zarr", mode="r"), yn), (Xn, yn)),
    ]
    for data, same, differ in cases:
        stream = chunks(*data, batch_size=8, seed=1, prefetch=0)
        next(stream)
        state = stream.state()
        assert set(state["data"]) == {"X", "y"}
        assert state == json.loads(json.dumps(state))  # JSON as it is
        assert len(list(chunks(*same, batch_size=8, seed=1, state=state))) == len(stream)
        with pytest.raises(ValueError, match="other data"):
            chunks(*differ, batch_size=8, seed=1, state=state)
    old = {k: v for k, v in state.items() if k != "data"}  # a state from before identities
    assert len(list(chunks(other, yn, batch_size=8, seed=1, state=old))) == len(stream)
    store.write(tmp_path / "s.zarr", other, yn, chunk_rows=10, overwrite=True)
    state = chunks(ds, batch_size=8, seed=1).state()
    with pytest.raises(ValueError, match="X: saved 'pipeline-store-X-"):  # rewritten: new uid
        chunks(store.open(tmp_path / "s.zarr"), batch_size=8, seed=1, state=state)


def test_length_mismatch_and_empty():
    X, y = _indexed(50, 10)
    with pytest.raises(ValueError, match="different lengths: 50 and 49"):
        chunks(X, y[:49], batch_size=8)
    with pytest.raises(ValueError, match="empty"):
        chunks(np.zeros((0, 3)), batch_size=8)


def test_one_read_per_store_chunk_per_epoch_even_under_preprocessing(tmp_path, monkeypatch):
    import pipeline.store as store
    from pipeline._store import _ChunkReader

    reads = []
    original = _ChunkReader.__getitem__
    monkeypatch.setattr(_ChunkReader, "__getitem__", lambda s, k: reads.append(k) or original(s, k))
    ds = store.write(tmp_path / "s.zarr", np.random.rand(2000, 5), np.arange(2000), chunk_rows=100)
    lazy = (ds.X * 2 + 1).astype("float32")  # preprocessing as a dask expression
    got = [c.X[c.mask][:, 0] for c in chunks(lazy, ds.y, batch_size=50, prefetch=0)]
    assert len(reads) == 2 * 20  # X and y, each chunk once
    expected = np.sort(ds.X[:, 0].compute() * 2 + 1)
    np.testing.assert_allclose(np.sort(np.concatenate(got)), expected, rtol=1e-6)


def test_same_order_through_a_distributed_client(zarr_store):
    from distributed import Client

    ref = _rows(chunks(zarr_store.X, zarr_store.y, batch_size=16, seed=4, prefetch=0))
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        got = _rows(chunks(zarr_store.X, zarr_store.y, batch_size=16, seed=4))
    np.testing.assert_array_equal(got, ref)


def test_feature_axes_split_into_several_chunks_are_joined():
    X = da.from_array(np.arange(600.0).reshape(100, 6), chunks=(10, 2))
    got = list(chunks(X, batch_size=10, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([c.X[c.mask] for c in got]), X.compute())


def test_each_read_hands_the_scheduler_only_its_window(monkeypatch):
    import pipeline._graph as impl

    sizes = []
    real = impl.get_scheduler

    def recording(**kw):
        get = real(**kw) or dask.threaded.get
        return lambda graph, keys: sizes.append(len(graph)) or get(graph, keys)

    monkeypatch.setattr(impl, "get_scheduler", recording)
    X, y = _indexed(20_000, 10)  # 2,000 store chunks
    lazy = X * 2  # two graph layers for X, one for y
    list(chunks(lazy, y, batch_size=10, window=4))
    assert len(sizes) == 500 and max(sizes) <= 4 * 3  # the window's tasks, not the store's


def test_close_joins_the_prefetch_thread_even_if_interrupted(monkeypatch):
    # a Ctrl-C while close() waits must not leave a read running into interpreter exit
    X, y = _indexed(5_000, 100)
    stream = chunks(X, y, batch_size=100, n_batches=1, prefetch=2)
    next(stream)
    prefetcher = stream._prefetcher
    real_get, calls = prefetcher.queue.get, []

    def interrupted_get(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_get(*args, **kwargs)

    monkeypatch.setattr(prefetcher.queue, "get", interrupted_get)
    with pytest.raises(KeyboardInterrupt):
        stream.close()
    assert not prefetcher.thread.is_alive()


def test_an_interrupted_consumer_releases_the_thread():
    X, y = _indexed(5_000, 100)
    with pytest.raises(KeyboardInterrupt):
        with chunks(X, y, batch_size=100, n_batches=1, prefetch=2) as stream:
            for i, _ in enumerate(stream):
                if i == 2:
                    raise KeyboardInterrupt
    assert stream._prefetcher is None
    assert not any(t.name == "pipeline-stream-prefetch" for t in threading.enumerate())
