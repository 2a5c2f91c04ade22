"""One place that picks the scheduler and computes a graph (with a progress bar)."""

from __future__ import annotations

import contextlib
import functools
import os

import dask
import numpy as np
from dask.base import get_scheduler
from dask.callbacks import Callback
from tqdm.auto import tqdm

__all__ = ["client_of", "run"]

_LOCAL = {
    "threads",
    "threading",
    "processes",
    "multiprocessing",
    "sync",
    "synchronous",
    "single-threaded",
}
_SCATTER_BYTES = 2**20


def client_of(scheduler):
    """The ``distributed.Client`` that ``scheduler`` names (or the active one), else None."""
    if scheduler is None:
        scheduler = dask.config.get("scheduler", None)
        if scheduler is None:
            try:
                from distributed import get_client

                return get_client()
            except (ImportError, ValueError):
                return None
    if isinstance(scheduler, str):
        if scheduler.lower() in _LOCAL:
            return None
        if scheduler.lower() in ("distributed", "dask.distributed"):
            from distributed import get_client

            return get_client()
        raise ValueError(
            f"scheduler={scheduler!r} is not a dask scheduler; expected one of "
            f"{sorted(_LOCAL)}, 'distributed' or a distributed.Client"
        )
    if "Client" in type(scheduler).__name__ and hasattr(scheduler, "get"):
        return scheduler
    raise TypeError(
        f"scheduler must be None, a scheduler name or a distributed.Client, got {scheduler!r}"
    )


class _Bar(Callback):
    """tqdm over the tasks of a graph run by a local scheduler."""

    def __init__(self, desc):
        super().__init__()
        self.desc = desc

    def _start(self, dsk):
        self.bar = tqdm(total=len(dsk), desc=self.desc, unit="task")

    def _posttask(self, key, result, dsk, state, worker_id):
        self.bar.update(1)

    def _finish(self, dsk, state, errored):
        self.bar.close()


def _scatter(client, dsk):
    """Large in-memory inputs go to the cluster once, as futures, not in the graph."""
    out = dict(dsk)
    for key, value in dsk.items():
        if isinstance(value, np.ndarray) and value.nbytes > _SCATTER_BYTES:
            out[key] = client.scatter(value, hash=False)
    return out


def run(dsk, keys, *, scheduler=None, n_jobs=None, progress=False, desc="search"):
    """Compute ``keys`` of the graph ``dsk`` once, on ``scheduler`` (None: the active
    one: dask's configured scheduler, else a default ``distributed.Client``, else
    threads). ``n_jobs`` bounds local threads/processes (-1 or None: all cores)."""
    client = client_of(scheduler)
    if client is not None:
        futures = client.get(_scatter(client, dsk), keys, sync=False)
        if progress:
            from distributed import progress as cluster_progress

            cluster_progress(futures, notebook=False)
        return list(client.gather(futures))
    name = scheduler or dask.config.get("scheduler", None) or "threads"
    get = get_scheduler(scheduler=name)
    kwargs = {}
    if name in ("threads", "threading", "processes", "multiprocessing") and n_jobs not in (
        None,
        -1,
    ):
        kwargs["num_workers"] = int(n_jobs)
    if name in ("processes", "multiprocessing"):
        share = max(1, (os.cpu_count() or 1) // kwargs.get("num_workers", os.cpu_count() or 1))
        kwargs["initializer"] = functools.partial(_limit_blas, share)
    bar = _Bar(desc) if progress else contextlib.nullcontext()
    with bar, _blas_share(name, kwargs.get("num_workers")):
        return list(get(dsk, keys, **kwargs))


def _limit_blas(threads):
    """A worker process's BLAS threads, for its life (the pool is the run's own)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def _blas_share(name, num_workers):
    """Threads that each call a multi-threaded BLAS oversubscribe the cores (an SVD
    per thread, each spinning as many BLAS threads as cores): give each task its
    share, as joblib does for its workers. Process-wide, for the run only."""
    if name not in ("threads", "threading"):
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    cores = os.cpu_count() or 1
    return threadpool_limits(limits=max(1, cores // (num_workers or cores)), user_api="blas")
