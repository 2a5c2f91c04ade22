"""Data-parallel training on dask.distributed by parameter averaging.

``fit(estimator, X, y, client=client, averaging_frequency=10)`` trains one of
pipeline's network estimators with one model replica per worker: each replica
takes ``averaging_frequency`` mini-batch steps on its own contiguous part of
the stream single-process training would read, then the replicas' parameters
are averaged, weighted by samples. With one worker it is ``estimator.fit``,
bit for bit. Rounds are pure dask tasks, so a worker lost mid-fit changes
nothing; a checkpoint directory lets a fit resume after the client dies.
"""

from pipeline._parallel import fit

__all__ = ["fit"]
