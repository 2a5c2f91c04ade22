"""Shuffled, prefetched, deterministic, resumable streams of training chunks.

An epoch's sample order is a pure function of ``(seed, epoch)`` and the store's
chunking: a seeded permutation of the store's chunks, grouped into windows of
``window`` chunks, and a seeded permutation of the samples inside each window.
That sequence is cut into training chunks of ``n_batches * batch_size`` samples,
each reshaped to ``(n_batches, batch_size, *features)`` for one jitted
``lax.scan``. Only the last chunk of an epoch is padded; its ``mask`` marks the
real samples. A background thread reads ``prefetch`` chunks ahead through dask
(one task per store chunk), so reads overlap the consumer's compute, and the
order never depends on how fast anything runs. A stream's ``state()`` names the
data it reads (:func:`data_identity`), and a resume on other data is refused.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import queue
import threading
import weakref
from typing import NamedTuple

import dask.array as da
import numpy as np
from dask.base import tokenize

from pipeline._adapter import as_dask, dataset_xy, is_streamed
from pipeline._graph import BlockGraph
from pipeline._inputs import default_chunk_rows

__all__ = ["Chunk", "ChunkStream", "chunks", "data_identity", "epoch_order"]


class Chunk(NamedTuple):
    """One training chunk.

    Attributes
    ----------
    X : ndarray of shape (n_batches, batch_size, *feature_shape)
    y : ndarray of shape (n_batches, batch_size, *target_shape), or None
    mask : ndarray of bool, shape (n_batches, batch_size)
        False on padding (only in the last chunk of an epoch). A batch may be
        all padding: a training step must then leave its state unchanged.
    """

    X: np.ndarray
    y: np.ndarray | None
    mask: np.ndarray


class _Layout(NamedTuple):
    """Shape and block sizes of an in-memory array: what the stream needs of it."""

    shape: tuple
    chunks: tuple

    @property
    def ndim(self):
        return len(self.shape)


def _layout(a, rows=None):
    """The block layout a numpy array is streamed in (no dask graph is built)."""
    if a is None or a.ndim == 0:
        return None if a is None else _Layout((), ())
    if not isinstance(rows, tuple):
        step = rows or default_chunk_rows(a.shape[1:], a.dtype)
        n = a.shape[0]
        rows = tuple(min(step, n - s) for s in range(0, n, step)) or (0,)
    return _Layout(a.shape, (rows, *((d,) for d in a.shape[1:])))


def _window_plan(block_sizes, *, shuffle, seed, epoch, window):
    """Blocks of each window, in epoch order: a list of index arrays."""
    n = len(block_sizes)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + window] for i in range(0, n, window)]


def epoch_order(block_sizes, *, shuffle=True, seed=0, epoch=0, window=4):
    """The epoch's sample order as global row indices (for tests and tooling).

    Parameters
    ----------
    block_sizes : sequence of int
        Rows in each store chunk (``X.chunks[0]``).

    Returns
    -------
    ndarray of int64, shape (n_samples,)
    """
    starts = np.concatenate([[0], np.cumsum(block_sizes)])
    plan = _window_plan(block_sizes, shuffle=shuffle, seed=seed, epoch=epoch, window=window)
    parts = []
    for w, blocks in enumerate(plan):
        rows = np.concatenate([np.arange(starts[b], starts[b + 1]) for b in blocks])
        parts.append(rows[_within_window(len(rows), shuffle, seed, epoch, w)])
    return np.concatenate(parts)


def _within_window(n, shuffle, seed, epoch, w):
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, w + 1]).permutation(n)


class _Failed(NamedTuple):
    error: BaseException


_DONE = object()


class _Prefetcher:
    """Run a generator in a daemon thread, ``depth`` items ahead of the consumer.

    Holds no reference to the stream that owns it, so an abandoned stream is
    collected and its finalizer stops the thread.
    """

    def __init__(self, items, depth):
        self.queue = queue.Queue(maxsize=depth)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(items,), daemon=True, name="pipeline-stream-prefetch"
        )
        self.thread.start()

    def _run(self, items):
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # hand every failure to the consumer
            self._put(_Failed(exc))

    def _put(self, item):
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        return self.queue.get()

    def stop(self):
        """Stop reading ahead and wait until the thread has ended: on every path, a
        Ctrl-C meanwhile included (it is raised once the thread is gone), so no read is
        left running into interpreter exit."""
        self.stop_event.set()
        interrupted = None
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
            except KeyboardInterrupt as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted


class ChunkStream:
    """Iterator over one epoch's training chunks; see :func:`chunks`.

    ``len(stream)`` is the number of chunks still to come; ``stream.state()`` a
    small dict from which ``chunks(..., state=...)`` yields exactly the chunks
    this stream has not yet yielded, from the same data.
    """

    def __init__(self, items, *, config, total, position, prefetch, identity=None):
        self._config, self._total, self._position = config, total, position
        self._identity = identity  # a callable: the data's identity, computed on first use
        self._items = items
        self._prefetcher = None
        if prefetch > 0:
            self._prefetcher = _Prefetcher(items, prefetch)
            weakref.finalize(self, self._prefetcher.stop)

    def __iter__(self):
        return self

    def __len__(self):
        return self._total - self._position

    def __next__(self):
        get = self._prefetcher.get if self._prefetcher else lambda: next(self._items, _DONE)
        item = get() if self._items is not None else _DONE
        if item is _DONE or isinstance(item, _Failed):
            self.close()
            if item is _DONE:
                raise StopIteration
            raise item.error
        self._position += 1
        return item

    def state(self):
        """A JSON-serialisable dict: where this epoch's stream stands, and on what data.

        Its ``"data"`` entry, ``{"X": ..., "y": ...}``, holds :func:`data_identity`
        of the arrays given to :func:`chunks` (computed on the first call: for
        in-memory arrays a hash of their content, one pass over them).
        """
        data = self._identity() if self._identity is not None else None
        return {**self._config, "data": data, "position": self._position}

    def close(self):
        """Stop reading ahead and release the background thread."""
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None
        self._items = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _MemoryBlocks:
    """``BlockGraph``'s ``read`` for numpy arrays in RAM: views, no dask, no copies."""

    def __init__(self, sizes, *arrays):
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.arrays = arrays

    def read(self, blocks):
        s = self.starts
        return [[a[s[b] : s[b + 1]] for b in blocks] for a in self.arrays]


class _Window(NamedTuple):
    """One window as read: its store chunks, and the order its samples are taken in."""

    X: list  # the window's blocks of X, in plan order
    y: list | None
    order: np.ndarray  # indices into the blocks' concatenation, in epoch order


def _read_windows(reader, sizes, has_y, plan, config, transform, skip):
    """Yield each window (:class:`_Window`) in epoch order, skipping ``skip`` samples.

    A window is not concatenated: :func:`_produce` gathers training chunks straight
    from its blocks. Nothing is held between yields, so a window's blocks are
    released once its last sample is in a chunk, before the next window is read.
    """
    unreturned = 0  # bytes read from a store since glibc was last asked to return memory
    for w, blocks in enumerate(plan):
        n = sum(sizes[b] for b in blocks)
        if skip >= n:
            skip -= n
            continue
        if unreturned >= _RETURN_EVERY_BYTES:
            _return_freed_memory()
            unreturned = 0
        if transform is None:
            order = _within_window(n, config["shuffle"], config["seed"], config["epoch"], w)
            win = _Window(*_split_parts(reader.read(blocks), has_y), order[skip:])
        else:
            Xw, yw = transform(*read_window(reader, blocks, n, has_y, config, w, skip))
            win = _Window([Xw], None if yw is None else [yw], np.arange(len(Xw)))
            del Xw, yw
        if not isinstance(reader, _MemoryBlocks):
            unreturned += sum(p.nbytes for p in win.X)
        skip = 0
        yield win
        del win


def _return_freed_memory():
    """Hand the pages glibc's arenas hold free back to the system (elsewhere: nothing).

    Called before a window is read, every ``_RETURN_EVERY_BYTES`` read from a store
    (a call takes milliseconds), once the previous window's blocks are gone: the
    holes that decoding leaves in the reader threads' arenas would otherwise stay
    resident (a 1.6 GB epoch peaked 80 MB higher without it).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _bound_allocator():
    """Give large blocks mappings of their own, for the rest of the process (glibc only).

    A streamed epoch decodes megabytes per store chunk in the reader's threads (dask's
    workers, zarr's codec threads) and copies every training chunk into XLA buffers.
    glibc starts by mapping such blocks on their own, but at the first free of one it
    raises its mmap threshold to that block's size and its trim threshold to twice it:
    from then on they come from the allocating thread's arena, and each arena keeps up
    to twice the largest block free at its top, which ``malloc_trim`` does not return
    for the threads' arenas. With an arena per thread, memory grew with the data read:
    1.2 GB above the start over a 1.6 GB store. Fixed thresholds (what
    ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set) keep such blocks out
    of the arenas. Done once, by the first stream over streamed data, and not at all
    when the user set either variable or glibc tunables.
    """
    global _BOUNDED
    if _LIBC is None or _BOUNDED or _ALLOCATOR_SET_BY_USER:
        return
    _BOUNDED = True
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc only: AttributeError elsewhere
    except (AttributeError, OSError):
        return None
    return libc


_LIBC = _glibc()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD = 4 << 20
_RETURN_EVERY_BYTES = 64 << 20
_ALLOCATOR_SET_BY_USER = any(
    v in os.environ for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
)
_BOUNDED = False


def _split_parts(parts, has_y):
    return parts[0], parts[1] if has_y else None


def read_window(reader, blocks, n, has_y, config, w, skip=0):
    """Window ``w`` of the epoch (its ``blocks``, ``n`` samples) in epoch order,
    from its ``skip``-th sample on: ``(X, y)`` numpy arrays (``y`` None without)."""
    parts = reader.read(blocks)
    perm = _within_window(n, config["shuffle"], config["seed"], config["epoch"], w)[skip:]
    Xw = _gather(parts[0], perm)
    return Xw, _gather(parts[1], perm) if has_y else None


def _gather(parts, perm):
    """``np.concatenate(parts)[perm]`` in one copy: scatter each part into place."""
    if len(perm) == sum(len(p) for p in parts) and len(parts) > 1:
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(len(perm))
        out = np.empty((len(perm), *parts[0].shape[1:]), dtype=parts[0].dtype)
        start = 0
        for p in parts:
            out[inverse[start : start + len(p)]] = p
            start += len(p)
        return out
    return (np.concatenate(parts) if len(parts) > 1 else parts[0])[perm]


def _produce(windows, batch_size, n_batches):
    """Gather the windows' samples into training chunks; only the last is padded.

    Each chunk is a buffer of its own (:func:`_empty`), filled from at most two
    windows' blocks: the stream holds the blocks of one window (two at a window's
    edge) and the chunks read ahead, never a concatenated or permuted window.
    """
    rows = batch_size * n_batches
    windows, out, filled = iter(windows), None, 0
    while (win := next(windows, None)) is not None:
        start = 0
        while start < len(win.order):
            if out is None:
                out, filled = _chunk_buffers(win, rows), 0
            take = min(rows - filled, len(win.order) - start)
            order = win.order[start : start + take]
            for buf, parts in zip(out, (win.X, win.y), strict=False):
                _gather_into(buf[filled : filled + take], parts, order)
            filled, start = filled + take, start + take
            if filled == rows:
                yield _fold(out, rows, rows, batch_size)
                out = None
        del win  # release this window's blocks before the next is read
    if out is not None:
        yield _fold(out, filled, rows, batch_size)


def _chunk_buffers(win, rows):
    """Uninitialised ``(X, y)`` buffers of ``rows`` samples shaped as ``win``'s blocks."""
    return tuple(_empty((rows, *p[0].shape[1:]), p[0].dtype) for p in (win.X, win.y) if p)


def _empty(shape, dtype):
    """An uninitialised array; a large one in an anonymous memory map of its own.

    Training chunks are megabytes, made in the prefetch thread and released
    wherever the consumer drops them. From ``malloc``, glibc may serve them from
    an arena and keep them there once freed (see :func:`_bound_allocator`, which a
    user's own allocator settings turn off); a mapping of its own goes back to
    the system when the array is released, from any thread, whatever the settings.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _OWN_MAPPING_BYTES or dtype.hasobject:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


_OWN_MAPPING_BYTES = 1 << 20
_GATHER_ROWS_BYTES = 1 << 20  # rows gathered per step: bounds the temporaries


def _gather_into(out, parts, order):
    """``out[:] = np.concatenate(parts)[order]``, without the concatenation.

    Rows are gathered in steps of about a megabyte, so temporaries stay small.
    """
    starts = np.cumsum([0] + [len(p) for p in parts])
    row_bytes = max(1, out[:1].nbytes)
    step = max(1, _GATHER_ROWS_BYTES // row_bytes)
    for a in range(0, len(order), step):
        rows = order[a : a + step]
        which = np.searchsorted(starts, rows, side="right") - 1
        for i, part in enumerate(parts):
            to = np.flatnonzero(which == i) if len(parts) > 1 else slice(None)
            out[a : a + step][to] = part[rows[to] - starts[i]]


def _fold(out, filled, rows, batch_size):
    """A :class:`Chunk` of the ``rows``-sample buffers ``out`` (X, then y if any),
    their first ``filled`` samples real and the rest zeroed padding."""
    for buf in out:
        buf[filled:] = 0
    nb = rows // batch_size
    X, y = out[0], out[1] if len(out) > 1 else None
    return Chunk(
        X=X.reshape(nb, batch_size, *X.shape[1:]),
        y=None if y is None else y.reshape(nb, batch_size, *y.shape[1:]),
        mask=(np.arange(rows) < filled).reshape(nb, batch_size),
    )


def _shape(Xc, yc, rows, batch_size):
    """Pad to ``rows`` samples and fold into ``(rows // batch_size, batch_size, ...)``."""
    mask = np.arange(rows) < len(Xc)
    if len(Xc) < rows:
        Xc, yc = _pad(Xc, rows), None if yc is None else _pad(yc, rows)
    nb = rows // batch_size
    return Chunk(
        X=Xc.reshape(nb, batch_size, *Xc.shape[1:]),
        y=None if yc is None else yc.reshape(nb, batch_size, *yc.shape[1:]),
        mask=mask.reshape(nb, batch_size),
    )


def _pad(a, rows):
    pad = np.zeros((rows - len(a), *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([a, pad])


def _one_chunk_across_features(a):
    if any(len(c) > 1 for c in a.chunks[1:]):
        return a.rechunk({i: -1 for i in range(1, a.ndim)})
    return a


def data_identity(a):
    """A string naming the data in array ``a``, the same in every process (None for None).

    - a dask array (a store's, a Dataset's): its name. Dask names come from
      content, and a pipeline store's from its ``uid``, which a rewrite changes;
    - a zarr array: its store location, shape, dtype and chunks. Its content is
      not hashed, as that would read the whole array;
    - numpy arrays, memory maps and other array-likes: a hash of their content
      (dask's ``tokenize``, one pass over the data): in-memory data has no other
      name that survives the process, and a memory map's file can be rewritten
      in place.
    """
    if a is None:
        return None
    if isinstance(a, da.Array):
        return a.name
    if type(a).__module__.startswith("zarr"):
        where = getattr(a, "store_path", None) or (getattr(a, "store", None), a.path)
        return "zarr-" + tokenize(str(where), a.shape, str(a.dtype), a.chunks)
    return "content-" + tokenize(np.asarray(a))


def _identity_of(X, y):
    """A callable returning ``{"X": ..., "y": ...}`` identities, computed once."""
    return functools.cache(lambda: {"X": data_identity(X), "y": data_identity(y)})


def _check_data(state, identity):
    """Refuse a state saved from other data; a state without ``"data"`` (written
    before streams named their data) cannot be checked and is accepted."""
    saved = state.get("data")
    if saved is None:
        return
    now = identity()
    differ = [k for k in ("X", "y") if saved.get(k) != now[k]]
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in differ)
        raise ValueError(f"state was saved from a stream over other data ({detail})")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def chunks(
    X,
    y=None,
    *,
    batch_size,
    shuffle=True,
    seed=0,
    epoch=0,
    window=4,
    prefetch=2,
    n_batches=None,
    transform=None,
    state=None,
):
    """Stream one epoch of training chunks from (lazy) arrays.

    Parameters
    ----------
    X : dask array, numpy array, zarr array or Dataset, shape (n_samples, *feature_shape)
        Chunked along axis 0 (a store's chunks). A ``Dataset`` supplies ``y`` too.
    y : array of shape (n_samples,) or (n_samples, n_targets), optional
    batch_size : int
        Samples per mini-batch.
    shuffle : bool, default=True
        False yields the samples in store order.
    seed, epoch : int
        The order is a pure function of these (and the store's chunking).
    window : int, default=4
        Store chunks whose samples are shuffled together.
    prefetch : int, default=2
        Training chunks read ahead by a background thread (0: read on demand).
    n_batches : int, optional
        Mini-batches per training chunk; default: as many as fill one store chunk.
    transform : callable, optional
        ``transform(X_window, y_window) -> (X_window, y_window)`` on numpy arrays,
        run in the background thread (e.g. label encoding); must keep the length.
    state : dict, optional
        ``stream.state()`` of an earlier stream: yield only what it had not yet.
        It must come from a stream with the same settings over the same data
        (:func:`data_identity` of X and y); a state saved before streams named
        their data has no ``"data"`` entry, and its data cannot be checked.

    Returns
    -------
    ChunkStream
        Iterator of :class:`Chunk` ``(X, y, mask)`` with ``X`` of shape
        ``(n_batches, batch_size, *feature_shape)``. Memory is bounded by about
        ``prefetch + 2`` training chunks and two windows of store chunks, whatever
        the data size, as long as the consumer lets go of the chunks it is given.

    Raises
    ------
    ValueError
        Bad arguments, or a ``state`` from another stream or other data.
    """
    X, y = dataset_xy(X, y)  # a Dataset or a store path: its X and y
    identity = _identity_of(X, y)
    if not (is_streamed(X) or is_streamed(y)):  # in memory: sliced, no dask graph
        X, y = (None if a is None else np.asarray(a) for a in (X, y))
        in_memory = [a for a in (X, y) if a is not None]
        as_view = _layout
    else:
        in_memory, as_view = None, as_dask
        _bound_allocator()
    X = as_view(X)
    y = as_view(y, rows=X.chunks[0] if X is not None and X.ndim else None)
    if X.ndim == 0 or any(math.isnan(c) for c in X.chunks[0]):
        raise ValueError("X must be an array with known chunk sizes along axis 0")
    if X.shape[0] == 0:
        raise ValueError(f"X is empty: shape {X.shape}")
    X = _one_chunk_across_features(X)
    if y is not None:
        y = _one_chunk_across_features(y)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X and y have different lengths: {X.shape[0]} and {y.shape[0]}")
        if y.chunks[0] != X.chunks[0]:
            y = y.rechunk({0: X.chunks[0]})
    batch_size = _check_int("batch_size", batch_size, 1)
    window = _check_int("window", window, 1)
    prefetch = _check_int("prefetch", prefetch, 0)
    seed, epoch = _check_int("seed", seed, 0), _check_int("epoch", epoch, 0)
    if n_batches is None:
        n_batches = max(1, X.chunks[0][0] // batch_size)
    n_batches = min(_check_int("n_batches", n_batches, 1), math.ceil(X.shape[0] / batch_size))
    config = dict(
        batch_size=batch_size,
        n_batches=n_batches,
        shuffle=bool(shuffle),
        seed=seed,
        epoch=epoch,
        window=window,
        n_samples=int(X.shape[0]),
    )
    rows = batch_size * n_batches
    total = math.ceil(X.shape[0] / rows)
    position = 0 if state is None else _resume_position(state, config, total)
    if state is not None:
        _check_data(state, identity)
    plan = _window_plan(X.chunks[0], shuffle=shuffle, seed=seed, epoch=epoch, window=window)
    if in_memory:
        reader = _MemoryBlocks(X.chunks[0], *in_memory)
    else:
        reader = BlockGraph(X) if y is None else BlockGraph(X, y)
    windows = _read_windows(
        reader, X.chunks[0], y is not None, plan, config, transform, skip=position * rows
    )
    items = _produce(windows, batch_size, n_batches)
    return ChunkStream(
        items, config=config, total=total, position=position, prefetch=prefetch, identity=identity
    )


def _resume_position(state, config, total):
    """Check a saved ``state()`` against this stream's configuration (``total`` chunks)."""
    if not isinstance(state, dict) or "position" not in state:
        raise ValueError(f"state must be a dict from ChunkStream.state(), got {state!r}")
    differ = {k: (state.get(k), v) for k, v in config.items() if state.get(k) != v}
    if differ:
        detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"state was saved from a different stream ({detail})")
    position = _check_int("state['position']", state["position"], 0)
    if position > total:
        raise ValueError(
            f"state['position'] is {position}, but this stream has only {total} chunks "
            "(edited, or saved from another stream)"
        )
    return position
