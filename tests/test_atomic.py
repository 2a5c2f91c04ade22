"""Atomic directories: what a destination holds, what may replace it, leftovers, races."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import pipeline
from pipeline import _atomic, store
from pipeline._atomic import atomic_dir, check_destination, clean_leftovers, kind_of


@pytest.fixture(params=["renameat2", "plain renames"])
def renames(request, monkeypatch):
    """Each test runs with the kernel's renameat2 and with the fallback."""
    if request.param == "plain renames":
        monkeypatch.setattr(_atomic, "_renameat2", None)
    return request.param


def _make(tmp_path, what):
    p = tmp_path / "dest"
    if what == "file":
        p.write_text("precious")
    elif what == "user dir":
        p.mkdir()
        (p / "thesis.tex").write_text("precious")
    elif what == "empty dir":
        p.mkdir()
    elif what in ("store", "model", "checkpoint"):
        with atomic_dir(p, what) as t:
            (_atomic.Path(t) / "zarr.json").write_text(what)
    return p


@pytest.mark.parametrize("what", ["nothing", "file", "user dir", "empty dir", "store", "model"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_only_an_object_of_the_same_kind_is_replaced(tmp_path, what, overwrite, renames):
    p = _make(tmp_path, what)
    replaceable = what == "nothing" or (overwrite and what in ("empty dir", "store"))
    if replaceable:
        with atomic_dir(p, "store", overwrite=overwrite) as t:
            (_atomic.Path(t) / "zarr.json").write_text("new")
        assert (p / "zarr.json").read_text() == "new" and kind_of(p) == "store"
    else:
        match = "overwrite=True" if what in ("empty dir", "store") else "replaces only"
        with pytest.raises(FileExistsError, match=match):
            check_destination(p, "store", overwrite=overwrite)
        with pytest.raises(FileExistsError, match=match):
            with atomic_dir(p, "store", overwrite=overwrite):
                pytest.fail("refused destinations are refused before any work")
        if what in ("file", "user dir"):
            assert "precious" in (p.read_text() if p.is_file() else (p / "thesis.tex").read_text())
    assert sorted(os.listdir(tmp_path)) == ([] if what == "nothing" and not replaceable else ["dest"])


def test_a_failed_write_leaves_the_old_object_whole(tmp_path, renames):
    p = _make(tmp_path, "model")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(p, "model", overwrite=True) as t:
            (_atomic.Path(t) / "zarr.json").write_text("half")
            raise RuntimeError("boom")
    assert (p / "zarr.json").read_text() == "model" and os.listdir(tmp_path) == ["dest"]


def test_a_foreign_directory_put_there_mid_write_is_swapped_back(tmp_path, monkeypatch):
    p = _make(tmp_path, "model")
    with pytest.raises(FileExistsError, match="left in place"):
        with atomic_dir(p, "model", overwrite=True) as t:
            (_atomic.Path(t) / "zarr.json").write_text("new")
            _atomic.shutil.rmtree(p)
            p.mkdir()
            (p / "thesis.tex").write_text("precious")
            # the foreign directory arrives after the last check, just before the exchange
            monkeypatch.setattr(_atomic, "check_destination", lambda *a, **k: None)
    assert (p / "thesis.tex").read_text() == "precious" and os.listdir(tmp_path) == ["dest"]


def test_leftovers_are_cleaned_only_when_ours_and_abandoned(tmp_path):
    p = tmp_path / "m.zarr"
    parked = tmp_path / ".m.zarr.old-1a2b3c4d"  # a user's file that older code parked
    parked.write_text("precious")
    parked_dir = tmp_path / ".m.zarr.old-5e6f7a8b"
    parked_dir.mkdir()
    (parked_dir / "notes.txt").write_text("precious")
    dead = tmp_path / ".m.zarr.partial-deadbeef"
    dead.mkdir()
    (dead / _atomic._CLAIM).write_text(json.dumps({"kind": "model"}))
    old_store = tmp_path / ".m.zarr.old-0badf00d"  # a replaced store left by a crash
    with atomic_dir(old_store, "store") as t:
        (_atomic.Path(t) / "x").write_text("old")
    alive = tmp_path / ".m.zarr.partial-a11ve000"
    alive.mkdir()
    (alive / _atomic._CLAIM).write_text(json.dumps({"kind": "model"}))
    holder = subprocess.Popen(  # another process writing there: holds its lock
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", alive],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = clean_leftovers(p)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(r.name for r in removed) == sorted([dead.name, old_store.name])
    assert parked.read_text() == "precious" and (parked_dir / "notes.txt").exists()
    assert alive.exists()
    assert clean_leftovers(p) == [alive]  # its writer is gone now


def _writer_script(path, value, overwrite, fmt="zarr"):
    return textwrap.dedent(f"""
        import sys, numpy as np, pipeline.store as store
        try:
            ds = store.write({str(path)!r}, np.full((60, 3), {value}, "f4"), np.arange(60) % 2,
                             chunk_rows=10, format={fmt!r}, overwrite={overwrite})
        except FileExistsError as e:
            print("EXISTS", e); sys.exit(0)
        try:
            print("OWN" if (ds.X.compute() == {value}).all() else "MIXED")
        except store.StoreChangedError:
            print("CHANGED")
    """)


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_writers_exactly_one_wins_and_each_dataset_is_its_own(tmp_path, overwrite):
    path = tmp_path / "s.zarr"
    procs = [
        subprocess.Popen([sys.executable, "-c", _writer_script(path, v, overwrite)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for v in (1, 2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    said = [o[0].split()[0] for o in outs]
    assert "MIXED" not in said
    if not overwrite:
        assert sorted(said) == ["EXISTS", "OWN"]
    value = store.open(path).X.compute()
    assert len(np.unique(value)) == 1 and sorted(os.listdir(tmp_path)) == ["s.zarr"]


@pytest.mark.parametrize("fmt", ["zarr", "memmap"])
def test_sigkill_mid_overwrite_leaves_the_old_store_and_the_next_write_cleans_up(tmp_path, fmt):
    path = tmp_path / "s"
    store.write(path, np.zeros((40, 3), "f4"), np.arange(40) % 2, chunk_rows=10, format=fmt)
    script = textwrap.dedent(f"""
        import numpy as np, pipeline.store as store
        def pieces():
            for i in range(1000):
                if i == 3:
                    print("writing", flush=True)
                yield np.ones((10, 3), "f4"), np.arange(10) % 2
                if i >= 3:
                    import time; time.sleep(0.05)
        store.write({str(path)!r}, pieces(), chunk_rows=10, format={fmt!r}, overwrite=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (store.open(path).X.compute() == 0).all()
    leftovers = [n for n in os.listdir(tmp_path) if ".partial-" in n]
    assert len(leftovers) == 1
    store.write(path, np.full((20, 3), 2, "f4"), chunk_rows=10, format=fmt, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["s"] and (store.open(path).X.compute() == 2).all()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_objects_written_before_markers_still_open_load_and_are_replaceable(tmp_path):
    X, y = np.arange(40, dtype="f4").reshape(20, 2), np.arange(20) % 2
    ds = store.write(tmp_path / "s.zarr", X, y, chunk_rows=5)
    clf = pipeline.MLPClassifier(hidden_layer_sizes=(2,), max_iter=1).fit(X, y)
    clf.save(tmp_path / "m.zarr")
    for p, key in ((tmp_path / "s.zarr", "pipeline"), (tmp_path / "m.zarr", "pipeline-model")):
        (p / _atomic.MARKER).unlink()  # as older code wrote them: no marker, no checksum
        meta = json.loads((p / "zarr.json").read_text())
        del meta["attributes"][key]["checksum"]
        (p / "zarr.json").write_text(json.dumps(meta))
    assert kind_of(tmp_path / "s.zarr") == "store" and kind_of(tmp_path / "m.zarr") == "model"
    np.testing.assert_array_equal(store.open(tmp_path / "s.zarr").X.compute(), X)
    np.testing.assert_array_equal(pipeline.load(tmp_path / "m.zarr").predict(X), clf.predict(X))
    assert ds.X.compute().shape == (20, 2)  # the same store: still readable
    with pytest.raises(FileExistsError, match="replaces only a pipeline model"):
        clf.save(tmp_path / "s.zarr", overwrite=True)
    clf.save(tmp_path / "m.zarr", overwrite=True)
    store.write(tmp_path / "s.zarr", X, y, overwrite=True)


def test_a_reader_never_mixes_two_stores(tmp_path):
    path = tmp_path / "s.zarr"
    ds = store.write(path, np.zeros((100, 2), "f4"), chunk_rows=10)
    first = ds.X.blocks[0].compute()
    done = threading.Event()

    def overwrite():
        store.write(path, np.ones((100, 2), "f4"), chunk_rows=10, overwrite=True)
        done.set()

    threading.Thread(target=overwrite).start()
    done.wait(60)
    assert (first == 0).all()
    with pytest.raises(store.StoreChangedError, match="replaced by another store"):
        ds.X.compute()
    with pytest.raises(store.StoreChangedError, match="open it again"):
        ds.X.blocks[0].compute()
    assert (store.open(path).X.compute() == 1).all()


def test_a_write_interrupted_inside_zarr_leaves_no_partial_behind(tmp_path, monkeypatch):
    """Ctrl-C while zarr's I/O thread writes: its writes in flight settle before the
    partial directory is removed (they re-created it, never to be cleaned)."""
    import time

    from zarr.core import sync as zarr_sync

    real = zarr_sync.sync
    calls = []

    def interrupted(coro, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # a chunk write under way in zarr's loop: Ctrl-C meanwhile
            future = __import__("asyncio").run_coroutine_threadsafe(
                _slow(coro), zarr_sync._get_loop()
            )
            del future
            raise KeyboardInterrupt
        return real(coro, *args, **kwargs)

    async def _slow(coro):
        await __import__("asyncio").sleep(0.3)
        return await coro

    monkeypatch.setattr(zarr_sync, "sync", interrupted)
    for module in ("zarr.api.synchronous", "zarr.core.array", "zarr.core.group"):
        mod = sys.modules.get(module)
        if mod is not None and getattr(mod, "sync", None) is real:
            monkeypatch.setattr(mod, "sync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write(tmp_path / "s.zarr", np.ones((60, 3)), np.arange(60) % 2, chunk_rows=10)
    time.sleep(0.6)  # long after the write in flight would have landed
    assert os.listdir(tmp_path) == []


def test_overwrite_never_takes_along_what_is_not_part_of_the_object(tmp_path, renames):
    p = _make(tmp_path, "model")
    (p / "results.csv").write_text("precious")
    with pytest.raises(FileExistsError, match="also holds results.csv.*move it out"):
        with atomic_dir(p, "model", overwrite=True):
            pytest.fail("refused before any work")
    assert (p / "results.csv").read_text() == "precious"
    with pytest.raises(FileExistsError, match="inside .*dest, a pipeline model"):
        check_destination(p / "inner.zarr", "store")
    assert not (p / "inner.zarr").exists()


def test_a_publish_guard_abandons_the_write_and_keeps_the_old_object(tmp_path):
    p = _make(tmp_path, "store")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with _atomic.publish_guard(interrupted):
            with atomic_dir(p, "store", overwrite=True) as t:
                (_atomic.Path(t) / "zarr.json").write_text("new")
    assert (p / "zarr.json").read_text() == "store" and os.listdir(tmp_path) == ["dest"]


def test_a_symlink_destination_is_refused_and_its_target_kept(tmp_path):
    real = _make(tmp_path, "store")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(FileExistsError, match="symbolic link"):
        check_destination(tmp_path / "link", "store", overwrite=True)
    assert (tmp_path / "link").is_symlink() and (real / "zarr.json").read_text() == "store"
