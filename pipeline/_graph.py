"""Compute whole chunks of dask arrays by index, with work proportional to the request.

``dask.compute(X.blocks[i])`` hands the scheduler (or its optimiser) the whole
graph of ``X`` every call: reading all N chunks that way is O(N^2). Here the
graph is materialised once and culled to the requested keys per read.
"""

from __future__ import annotations

from dask.base import get_scheduler
from dask.optimization import cull

__all__ = ["BlockGraph"]


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

    def read(self, blocks):
        """Per array, the list of its computed ``blocks`` (numpy)."""
        keys = [[(a.name, int(b)) + (0,) * (a.ndim - 1) for b in blocks] for a in self.arrays]
        flat = [k for ks in keys for k in ks]
        graph, _ = cull(self.graph, flat)
        got = get_scheduler(collections=list(self.arrays))(graph, flat)
        return [list(got[i * len(blocks) : (i + 1) * len(blocks)]) for i in range(len(keys))]
