"""Compute whole chunks of dask arrays by index, with work proportional to the request.

``dask.compute(X.blocks[i])`` hands the scheduler (or its optimiser) the whole
graph of ``X`` every call: reading all N chunks that way is O(N^2). Here the
graph is materialised once and culled to the requested keys per read.
"""

from __future__ import annotations

import contextlib

import dask
from dask.base import get_scheduler
from dask.optimization import cull

__all__ = ["BlockGraph", "local_on_worker"]


class BlockGraph:
    """Compute whole store chunks of X (and y) by index, cheaply, many times.

    The arrays' graphs are materialised once; each read culls them to the
    requested blocks (work proportional to the window, not the store) and hands
    that to the active scheduler: one task per store chunk (plus any lazy
    preprocessing on it), run in parallel, on threads or a distributed Client.
    """

    def __init__(self, *arrays):
        self.arrays = arrays
        self.graph = {}
        for a in arrays:
            self.graph.update(a.__dask_graph__())
        self.get = _scheduler(arrays)  # chosen here: reads may run in another thread

    def read(self, blocks):
        """Per array, the list of its computed ``blocks`` (numpy)."""
        keys = [[(a.name, int(b)) + (0,) * (a.ndim - 1) for b in blocks] for a in self.arrays]
        flat = [k for ks in keys for k in ks]
        graph, _ = cull(self.graph, flat)
        got = self.get(graph, flat)
        return [list(got[i * len(blocks) : (i + 1) * len(blocks)]) for i in range(len(keys))]


def local_on_worker():
    """A scope in which dask computes in the calling thread when that thread runs
    a task on a dask worker (see :func:`_scheduler`); elsewhere, no change."""
    if dask.config.get("scheduler", None) is None and _on_worker():
        return dask.config.set(scheduler="synchronous")
    return contextlib.nullcontext()


def _scheduler(arrays):
    """The active scheduler; in a task on a dask worker, the task's own thread.

    A task that hands its reads to the cluster and waits holds the worker thread
    those reads need: with one thread per worker, ``est.fit`` inside
    ``client.submit`` would wait forever.
    """
    if dask.config.get("scheduler", None) is None and _on_worker():
        return dask.get
    return get_scheduler(collections=list(arrays))


def _on_worker():
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True
