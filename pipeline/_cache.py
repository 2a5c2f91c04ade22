"""``memory=`` for streamed input: a fitted prefix and its output, kept as stores.

scikit-learn's ``memory`` pickles each fitted transformer and its output with
joblib; out of core the output is as big as the data, so here an entry is two
pipeline objects in the ``memory`` directory, both written atomically:

- ``<key>.pipeline``: the fitted prefix, saved as a :class:`pipeline.Pipeline`
  (skops and model groups, no pickle);
- ``<key>.zarr``: the prefix's output, a store chunked like the input, whose
  attributes name the key and the uid of the prefix it was made by.

The key is a token of the prefix's steps and parameters (unfitted), their fit
parameters, and the identity of X and y (a store's comes from its uid, so a
replaced store never hits a stale entry). Later epochs read the output store; a
refit or a search candidate with the same prefix on the same data loads the
prefix and reads the store instead of fitting and transforming again. An entry
that does not check out (edited, corrupt, another key under this name) is an
error naming it, never used and never silently replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from dask.base import tokenize

from pipeline._atomic import read_marker

__all__ = ["PrefixCache"]

_ATTR = "pipeline-cache"


# dask layers whose names change with their data: a store's (its uid), a memmap's (its
# file's path, size and mtime), numpy's (its content, hashed)
_IDENTIFIED = ("pipeline-store-", "memmap-", "array-", "in-memory-", "weights-")


def _identity(a, what):
    """``a``'s dask name, if every source its graph reads has an identity that changes
    with its data; else ValueError (a zarr array rewritten in place keeps its name)."""
    graph = a.__dask_graph__()
    roots = [k for k, deps in graph.dependencies.items() if not deps]
    unknown = [r for r in roots if not r.removeprefix("original-").startswith(_IDENTIFIED)]
    if unknown:
        raise ValueError(
            f"memory= keys its entries by the identity of the data, and {what} is read from "
            f"{unknown[0].removeprefix('original-')}, whose name does not change when its "
            "data does (a zarr array or files rewritten in place would hit a stale entry). "
            "Write it to a store first (pipeline.store.write: its uid changes with every "
            "write), pass numpy or a memmap, or use memory=None"
        )
    return a.name


def _directory(memory):
    """The cache directory of a ``memory`` parameter (a path or a joblib.Memory)."""
    location = getattr(memory, "location", memory)
    if location is None:
        return None
    if not isinstance(location, (str, os.PathLike)):
        raise TypeError(
            f"memory must be None, a directory path or a joblib.Memory, got {type(memory).__name__}"
        )
    return Path(location) / "pipeline-cache"


class PrefixCache:
    """The entries of one ``memory`` directory (see the module docstring)."""

    def __init__(self, memory):
        self.root = _directory(memory)

    @staticmethod
    def key(steps, X, y, params):
        """The token of a prefix ``[(name, unfitted step)]`` on ``X``/``y``."""
        from pipeline._steps import estimator_token

        names = [(name, estimator_token(step)) for name, step in steps]
        data = [_identity(X, "X"), None if y is None else _identity(y, "y")]
        return "prefix-" + tokenize(names, data, params)

    def _paths(self, key):
        return self.root / f"{key}.pipeline", self.root / f"{key}.zarr"

    def load_prefix(self, key):
        """The fitted prefix steps ``[(name, step)]`` of ``key``, or None on a miss."""
        from pipeline._pipeline_io import load_pipeline

        path, _ = self._paths(key)
        if not path.exists():
            return None
        try:
            return list(load_pipeline(path).steps)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise ValueError(
                f"the memory= cache entry {path} is corrupt or was edited ({exc}); remove it "
                "and fit again"
            ) from exc

    def save_prefix(self, key, steps, template):
        """Keep the fitted prefix ``steps`` of ``key`` (a Pipeline like ``template``)."""
        from pipeline._pipeline_io import save_pipeline

        path, _ = self._paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        prefix = template.__class__(list(steps), max_in_memory=template.max_in_memory)
        try:
            save_pipeline(prefix, path, overwrite=True)
        except ValueError as exc:
            raise ValueError(
                f"memory= keeps the fitted steps before the last as a saved Pipeline, and "
                f"this one cannot be stored safely: {exc}. Use memory=None, or steps that "
                "can be saved"
            ) from exc

    def output(self, key, make, rows):
        """The prefix's output of ``key`` as a dask array cut in ``rows`` (the input's
        chunks): the cached store's X, written from ``make()`` (a lazy dask array,
        chunk by chunk) on a miss."""
        from pipeline import _store

        prefix, path = self._paths(key)
        marker = read_marker(prefix)
        uid = None if marker is None else marker.get("uid")
        if path.exists():
            if uid is None:
                raise ValueError(
                    f"the memory= cache entry {path} is incomplete: the fitted steps it was "
                    f"made by ({prefix.name}) are missing; remove it and fit again"
                )
            try:
                ds = _store.open(path)
            except (ValueError, OSError) as exc:
                raise ValueError(
                    f"the memory= cache entry {path} is corrupt ({exc}); remove it and fit again"
                ) from exc
            recorded = ds.attrs.get("attrs", {}).get(_ATTR, {})
            if recorded != {"key": key, "prefix": uid}:
                raise ValueError(
                    f"the memory= cache entry {path} belongs to another prefix or another fit "
                    f"of it (it records {recorded}, expected key {key} and prefix {uid}); "
                    "remove it and fit again"
                )
            return ds.X
            return _like(ds.X, rows)
        Xt = make()
        ds = _store.write(
            path, Xt, chunk_rows=Xt.chunks[0][0], overwrite=True,
            attrs={_ATTR: {"key": key, "prefix": uid}},
        )
        return _like(ds.X, rows)


def _like(X, rows):
    """The cached output cut in the input's rows (its chunks decide the stream's order)."""
    return X if X.chunks[0] == tuple(rows) else X.rechunk({0: tuple(rows)})
