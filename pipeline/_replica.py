"""What a dask worker runs in a round of parameter averaging: pure functions.

A replica's task gets the round's starting point (parameters, optimizer state,
RNG key), the epoch and the range of mini-batches it owns, reads exactly those
samples of the epoch's stream from the store itself, and returns where its
local steps ended. :func:`average` combines the replicas, weighted by the
samples each one trained on. The same inputs give the same outputs on any
worker, so a task lost with its worker runs again to the same result.
"""

from __future__ import annotations

import collections
import functools
import threading
from typing import Any, NamedTuple

import dask
import dask.array as da
import dask.sizeof
import jax
import jax.numpy as jnp
import numpy as np

from pipeline import nn
from pipeline._graph import BlockGraph
from pipeline._netio import to_device, to_numpy
from pipeline._stream import (
    _layout,
    _MemoryBlocks,
    _one_chunk_across_features,
    _shape,
    _window_plan,
    read_window,
)

__all__ = ["Job", "Round", "Stored", "anchor", "average", "local_steps", "summary"]


class Job(NamedTuple):
    """Everything about a fit that its replicas share (small, hashable values).

    ``steps`` is the epoch's number of mini-batches; ``padding`` the all-padding
    batches single-process training runs after them (its last chunk is padded to
    whole batches), in which only the RNG key advances: replica 0 advances it as
    much at the end of an epoch, so one replica follows ``est.fit``'s key exactly.
    ``fit`` is unique to one call of ``parallel.fit``: what a worker caches of the
    data never outlives it (the values under a dask name may change between fits).
    """

    config: tuple
    out_activation: str
    spec: tuple
    scan: bool
    dtype: str
    penalties: tuple
    batch_size: int
    shuffle: bool
    seed: int
    window: int
    n_samples: int
    steps: int
    padding: int
    data_token: str
    average_optimizer_state: bool
    fit: str


class Stored:
    """A dask array handed to a task as it is (not computed by the scheduler)."""

    def __init__(self, array):
        self.array = array

    def __dask_tokenize__(self):
        return ("stored", self.array.name)  # dask names come from content


class Round(NamedTuple):
    """The state after a round, and what it cost: the next round's input.

    ``opt_states`` holds one optimizer state, or one per replica when replicas
    keep their own; ``key`` is the raw data of the carried JAX key.
    """

    params: Any
    state: Any
    opt_states: tuple
    key: np.ndarray
    loss_sum: float = 0.0
    count: int = 0
    finite: bool = True


@dask.sizeof.sizeof.register(Round)
def _sizeof_round(r):
    """Its arrays' bytes (dask's default counts an equinox module as 56 bytes),
    so the scheduler weighs moving a round correctly."""
    return sum(np.asarray(a).nbytes for a in jax.tree_util.tree_leaves(tuple(r)))


def anchor(start):
    """A round to start from, given by value: a task without dependencies, so a
    worker's death never sends the scheduler further back than this."""
    return start


def summary(result):
    """``(loss_sum, count, finite)`` of a round: the few bytes the client reads."""
    return result.loss_sum, result.count, result.finite


_CACHE_LOCK = threading.Lock()
_READERS: collections.OrderedDict = collections.OrderedDict()
_WINDOWS: collections.OrderedDict = collections.OrderedDict()


def _cached(cache, key, make, size):
    """``cache[key]``, made on a miss. Keys start with their fit's id; another fit's
    entries are dropped (a dask array rewritten in place keeps its name)."""
    with _CACHE_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _CACHE_LOCK:
        for stale in [k for k in cache if k[0] != key[0]]:
            del cache[stale]
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


def _reader(job, X, Y):
    """(store chunk sizes, block reader) of the training data, as ``chunks`` sees it."""
    if not isinstance(X, da.Array):
        sizes = _layout(X).chunks[0]
        return sizes, _MemoryBlocks(sizes, X, Y)
    X, Y = _one_chunk_across_features(X), _one_chunk_across_features(Y)
    if Y.chunks[0] != X.chunks[0]:
        Y = Y.rechunk({0: X.chunks[0]})
    return X.chunks[0], BlockGraph(X, Y)


def _rows(job, X, Y, epoch, lo, hi):
    """Samples ``lo:hi`` of the epoch's order: ``(X, Y)`` numpy arrays.

    The shuffled windows they fall in are read once per worker process and kept
    (a few of them), as neighbouring replicas and rounds read the same windows.
    """
    data = (job.fit, job.data_token)
    sizes, reader = _cached(_READERS, data, lambda: _reader(job, X, Y), 2)
    config = dict(shuffle=job.shuffle, seed=job.seed, epoch=epoch)
    plan = _window_plan(sizes, shuffle=job.shuffle, seed=job.seed, epoch=epoch, window=job.window)
    starts = np.cumsum([0] + [sum(sizes[b] for b in blocks) for blocks in plan])
    parts = []
    for w, blocks in enumerate(plan):
        a, b = max(lo, starts[w]), min(hi, starts[w + 1])
        if a < b:
            n = int(starts[w + 1] - starts[w])
            key = (*data, job.shuffle, job.seed, job.window, epoch, w)
            read = functools.partial(read_window, reader, blocks, n, True, config, w)
            Xw, Yw = _cached(_WINDOWS, key, read, 3)
            parts.append((Xw[a - starts[w] : b - starts[w]], Yw[a - starts[w] : b - starts[w]]))
    if not parts:
        return np.zeros((0, *X.shape[1:]), X.dtype), np.zeros((0, *Y.shape[1:]), Y.dtype)
    Xs, Ys = zip(*parts, strict=True)
    return np.concatenate(Xs), np.concatenate(Ys)


def _unwrap(a):
    return a.array if isinstance(a, Stored) else a


def local_steps(job, X, Y, start, epoch, first, stop, replica, padding=0):
    """Mini-batches ``first:stop`` of ``epoch``, trained from round ``start``.

    Parameters
    ----------
    job : Job
    X, Y : Stored dask arrays or numpy arrays, shape (n_samples, ...)
        The training data and its target table (targets, then sample weights).
    start : Round
        Where the round begins.
    epoch, first, stop : int
        This replica's part of the epoch's stream, in mini-batches.
    replica : int
        Its index: replica 0 carries the RNG key on, the others fold their index in.
    padding : int, default=0
        All-padding steps to take after them (the key advances, nothing else).

    Returns
    -------
    Round
        The local state after the steps, with the loss summed over the samples
        trained on and their count (0 for a replica with nothing left to read).
    """
    opt_state = start.opt_states[replica if len(start.opt_states) > 1 else 0]
    if stop <= first:
        return Round(start.params, start.state, (opt_state,), start.key)
    X, Y, bs = _unwrap(X), _unwrap(Y), job.batch_size
    with dask.config.set(scheduler="synchronous"):  # reads stay in this task
        Xr, Yr = _rows(job, X, Y, epoch, first * bs, min(stop * bs, job.n_samples))
    chunk = _shape(Xr, Yr, (stop - first) * bs, bs)
    with jax.enable_x64(job.dtype == "float64"):
        key = jax.random.wrap_key_data(jnp.asarray(start.key))
        if replica:
            key = jax.random.fold_in(key, replica)
        step = nn.compiled_step(*job.config, job.out_activation, *job.spec, job.scan)
        hyper = tuple(jnp.asarray(h, job.dtype) for h in job.penalties)
        carry = [to_device(start.params), to_device(start.state), to_device(opt_state), key]
        width = len(chunk.X) if job.scan else 1
        metrics = []
        for i in range(0, len(chunk.X), width):
            batch = (chunk.X[i : i + width], chunk.y[i : i + width], chunk.mask[i : i + width])
            *carry[:], m = step(*carry, *batch, hyper)
            metrics.append((m["loss_sum"], m["count"], m["finite"]))
        loss, count, finite = zip(*jax.device_get(metrics), strict=True)
        params, state, opt_state, key = carry
        for _ in range(padding):
            key = jax.random.split(key)[0]  # what a step on an all-padding batch does
        return Round(
            to_numpy(params),
            to_numpy(state),
            (to_numpy(opt_state),),
            np.asarray(jax.random.key_data(key)),
            float(sum(loss)),
            int(sum(count)),
            bool(all(finite)),
        )


def _weighted_mean(weights):
    total = float(sum(weights))

    def mean(*leaves):
        first = np.asarray(leaves[0])
        if first.dtype.kind != "f":
            return first  # step counts: replica 0 took the most steps
        acc = sum(w * np.asarray(leaf, np.float64) for w, leaf in zip(weights, leaves, strict=True))
        return (acc / total).astype(first.dtype)

    return mean


def average(job, *shares):
    """The replicas' parameters (and state, and optionally optimizer state)
    averaged, weighted by the samples each trained on; losses summed.

    Replicas that trained on nothing carry no weight. One replica is returned
    as it is, so a one-worker fit is single-process training, bit for bit.
    """
    live = [s for s in shares if s.count > 0] or list(shares[:1])
    loss = float(sum(s.loss_sum for s in shares))
    count = int(sum(s.count for s in shares))
    finite = all(s.finite for s in shares)
    own = tuple(s.opt_states[0] for s in shares)
    if len(live) == 1:
        params, state, opt = live[0].params, live[0].state, live[0].opt_states
    else:
        mean = _weighted_mean([s.count for s in live])
        params = jax.tree_util.tree_map(mean, *[s.params for s in live])
        state = jax.tree_util.tree_map(mean, *[s.state for s in live])
        opt = (jax.tree_util.tree_map(mean, *[s.opt_states[0] for s in live]),)
    if not job.average_optimizer_state and len(shares) > 1:
        opt = own
    return Round(params, state, opt, shares[0].key, loss, count, finite)
