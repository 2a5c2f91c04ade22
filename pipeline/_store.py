"""Chunked on-disk datasets: write atomically, open lazily as dask arrays.

Two formats share one schema (:mod:`pipeline._schema`):

``"zarr"``
    A Zarr v3 group with arrays ``X`` (n, *features) and ``y`` (n,) or (n, k),
    chunked along the sample axis only, the schema in the group's attributes.
    Local paths and fsspec URLs (``memory://``, ``file://``, ``s3://`` ...).
``"memmap"``
    A local directory of ``X.npy`` / ``y.npy`` that open memory-mapped, and a
    ``schema.json``.

Writes go chunk by chunk (memory stays at a few chunks whatever the data size)
into a temporary sibling that is renamed into place when complete; the schema
is written last, so a store interrupted at any point (an exception, ``kill -9``)
is never accepted by :func:`open`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import fsspec
import numpy as np
import zarr
from dask.base import tokenize
from zarr.core.sync import sync

from pipeline._inputs import (
    PieceChecker,
    blocks_of,
    default_chunk_rows,
    input_pieces,
    is_array,
)
from pipeline._schema import SCHEMA_FILE, SCHEMA_KEY, ClassCollector, check_schema, new_schema
from pipeline._writers import MemmapWriter, ZarrWriter

__all__ = ["Dataset", "ChunkReadError", "write", "open", "default_chunk_rows"]

FORMATS = ("zarr", "memmap")


class ChunkReadError(OSError):
    """A chunk of a store is missing or cannot be decoded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A store opened lazily.

    Attributes
    ----------
    X : dask.array.Array of shape (n_samples, *feature_shape)
        Chunked like the store along axis 0, one task per store chunk.
    y : dask.array.Array of shape (n_samples,) or (n_samples, n_targets), or None
    attrs : dict
        The schema: ``format_version``, ``format``, ``n_samples``, ``chunk_rows``,
        ``dtype``, ``feature_shape``, ``y_dtype``, ``y_shape``, ``classes`` (sorted
        distinct labels of an integer target, else None) and the user's ``attrs``.
    path : str
        Where the store lives (a local path or an fsspec URL).
    """

    X: da.Array
    y: da.Array | None
    attrs: dict = field(repr=False)
    path: str

    def __len__(self):
        return int(self.attrs["n_samples"])

    @property
    def classes(self):
        return self.attrs.get("classes")

    def summary(self):
        """A few human-readable lines describing the store."""
        a = self.attrs
        y = "none" if self.y is None else f"{self.y.dtype} {tuple(self.y.shape)}"
        lines = [
            f"store     {self.path} ({a['format']}, format_version {a['format_version']})",
            f"samples   {len(self):,} in {self.X.numblocks[0]} chunks of {a['chunk_rows']:,} rows",
            f"X         {self.X.dtype} {tuple(self.X.shape)} ({_human_bytes(self.X.nbytes)})",
            f"y         {y}",
        ]
        if a.get("classes") is not None:
            cls = a["classes"]
            shown = ", ".join(map(str, cls[:12])) + (", ..." if len(cls) > 12 else "")
            lines.append(f"classes   {len(cls)}: {shown}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- locations


def _local_path(path):
    """The local ``Path`` behind ``path``, or None for a non-local fsspec URL."""
    if isinstance(path, os.PathLike):
        return Path(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    if "://" in path:
        return None
    return Path(path)


def _is_store_dir(p):
    return (p / "zarr.json").exists() or (p / SCHEMA_FILE).exists()


def _check_destination(path, local, overwrite):
    """Refuse to write over something that exists, unless allowed and safe."""
    if local is not None:
        exists = local.exists()
        replaceable = (
            not exists or _is_store_dir(local) or (local.is_dir() and not any(local.iterdir()))
        )
    else:
        fs, fs_path = fsspec.core.url_to_fs(path)
        exists = fs.exists(fs_path)
        replaceable = not exists or fs.exists(fs_path.rstrip("/") + "/zarr.json")
    if exists and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if exists and not replaceable:
        raise ValueError(f"refusing to overwrite {path}: it exists and is not a pipeline store")


def _remove(location, local):
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
    else:
        fs, fs_path = fsspec.core.url_to_fs(location)
        if fs.exists(fs_path):
            fs.rm(fs_path, recursive=True)


def _publish(tmp, final):
    """Move a finished store at ``tmp`` to ``final``, replacing what is there."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write(
    path, X, y=None, *, chunk_rows=None, format="zarr", overwrite=False, attrs=None, progress=False
):
    """Write samples to a chunked store, chunk by chunk, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination: a local directory, or (zarr only) an fsspec URL.
    X : array-like of shape (n_samples, *feature_shape), or iterable of (X_chunk, y_chunk)
        numpy arrays, ``np.memmap``, dask or zarr arrays; or an iterable of pairs
        of unknown total length (``y_chunk`` may be None, or a bare ``X_chunk``).
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
        Must be None when ``X`` is an iterable of pairs.
    chunk_rows : int, optional
        Samples per chunk; by default about 8 MB of X per chunk.
    format : {"zarr", "memmap"}
    overwrite : bool
        Replace an existing store at ``path`` (never a directory that is not a store).
        Locally the new store is renamed over the old one only once complete. On
        non-local fsspec URLs (no rename there) the old store is removed first: a
        failed write then leaves nothing that opens, and the old data is gone.
    attrs : dict, optional
        JSON-serialisable user metadata kept in the schema under ``"attrs"``.
    progress : bool or str, default=False
        Show a tqdm progress bar over samples written (a str is its description).

    Returns
    -------
    Dataset
        The finished store, opened lazily.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    if attrs is not None:
        json.dumps(attrs)  # fail before writing anything if attrs cannot be stored
    local = _local_path(path)
    if local is None and format == "memmap":
        raise ValueError(f"format='memmap' needs a local path, got {path!r}")
    _check_destination(path, local, overwrite)

    checker = PieceChecker()
    pieces = (checker(x, yc) for x, yc in input_pieces(X, y, chunk_rows))
    first = next(pieces, None)
    if first is None:
        raise ValueError("X is empty: the iterable yielded no chunks")
    rows = int(chunk_rows or default_chunk_rows(first[0].shape[1:], first[0].dtype))
    blocks = blocks_of(_chain_first(first, pieces), rows)

    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        target = local.with_name(f".{local.name}.partial-{uuid.uuid4().hex[:8]}")
        location = str(target)
    else:
        target, location = None, path
        if overwrite:
            _remove(path, None)
    writer_cls = ZarrWriter if format == "zarr" else MemmapWriter
    writer = None
    try:
        x0, y0 = first
        writer = writer_cls(
            location,
            x0.dtype,
            x0.shape[1:],
            None if y0 is None else y0.dtype,
            () if y0 is None else y0.shape[1:],
            rows,
            n_total=_known_length(X),
        )
        classes = ClassCollector(y0.dtype if y0 is not None else "f8")
        for xb, yb in _with_progress(blocks, progress, _known_length(X)):
            writer.append(xb, yb)
            if yb is not None and yb.ndim == 1:
                classes.update(yb)
        if writer.n == 0:
            raise ValueError("X is empty: the input yielded chunks with no samples")
        schema = new_schema(
            fmt=format,
            n_samples=writer.n,
            chunk_rows=rows,
            x_dtype=x0.dtype,
            feature_shape=x0.shape[1:],
            y_dtype=None if y0 is None else y0.dtype,
            y_shape=None if y0 is None else (writer.n, *y0.shape[1:]),
            classes=None if y0 is None or y0.ndim != 1 else classes.classes,
            attrs=attrs,
        )
        writer.finish(schema)
    except BaseException:
        if isinstance(writer, MemmapWriter):
            writer.close()
        _remove(location, target)
        raise
    if target is not None:
        _publish(target, local)
    return open(path)


def _known_length(X):
    return int(X.shape[0]) if is_array(X) else None


def _with_progress(blocks, progress, total):
    """Yield ``blocks`` unchanged, advancing a tqdm bar by their sample counts."""
    if not progress:
        yield from blocks
        return
    from tqdm.auto import tqdm

    desc = progress if isinstance(progress, str) else "writing"
    with tqdm(total=total, unit=" samples", unit_scale=True, desc=desc) as bar:
        for block in blocks:
            yield block
            bar.update(len(block[0]))


def _chain_first(first, rest):
    yield first
    yield from rest


# ----------------------------------------------------------------------------- readers


class _ChunkReader:
    """Array-like over one array of a store that reads whole chunks, for dask.

    Holds only the location (so it pickles small and every worker reads straight
    from the store); opens the array lazily in each process. Turns a missing or
    undecodable chunk into a :class:`ChunkReadError` naming the array and chunk.
    """

    def __init__(self, location, name, fmt, shape, dtype, chunk_rows):
        self.location, self.name, self.fmt = location, name, fmt
        self.shape, self.dtype, self.chunk_rows = tuple(shape), np.dtype(dtype), chunk_rows
        self.ndim = len(self.shape)
        self._array = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    def _open(self):
        if self._array is None:
            if self.fmt == "zarr":
                self._array = zarr.open_group(self.location, mode="r")[self.name]
            else:
                self._array = _open_npy(Path(self.location) / f"{self.name}.npy", self.shape)
        return self._array

    def _chunk_key_exists(self, arr, index):
        key = arr.metadata.encode_chunk_key((index,) + (0,) * (self.ndim - 1))
        return sync(arr.store.exists(f"{arr.path}/{key}" if arr.path else key))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if isinstance(key[0], slice) else slice(key[0], key[0] + 1)
        start, stop, _ = rows.indices(self.shape[0])
        first, last = start // self.chunk_rows, max(start, stop - 1) // self.chunk_rows
        where = f"store {self.location}: array {self.name!r} chunk {first}" + (
            f"-{last}" if last != first else ""
        )
        try:
            arr = self._open()
            if self.fmt == "zarr":
                for i in range(first, last + 1):
                    if not self._chunk_key_exists(arr, i):
                        raise ChunkReadError(
                            f"store {self.location}: array {self.name!r} chunk {i} "
                            f"(rows {i * self.chunk_rows}-{min((i + 1) * self.chunk_rows, self.shape[0]) - 1}) "
                            "is missing"
                        )
            return np.asarray(arr[key])
        except ChunkReadError:
            raise
        except Exception as exc:
            raise ChunkReadError(f"{where} could not be read: {exc}") from exc


def _open_npy(file, shape):
    try:
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ChunkReadError(f"memmap store file {file} is missing") from None
    except (ValueError, OSError) as exc:
        raise ChunkReadError(f"memmap store file {file} is corrupt: {exc}") from exc
    if arr.shape != tuple(shape):
        raise ChunkReadError(f"memmap store file {file} has shape {arr.shape}, schema says {shape}")
    return arr


def _read_schema(path, local):
    """Return ``(format, schema, location)`` for the store at ``path``."""
    if local is not None:
        if not local.exists():
            raise FileNotFoundError(f"no store at {path}: the path does not exist")
        if not local.is_dir():
            raise ValueError(f"{path} is not a pipeline store: it is a file, not a directory")
        if (local / SCHEMA_FILE).exists():
            try:
                schema = json.loads((local / SCHEMA_FILE).read_text())
            except ValueError as exc:
                raise ValueError(f"{path} has a corrupt {SCHEMA_FILE}: {exc}") from None
            return "memmap", check_schema(schema, path), str(local)
        if not (local / "zarr.json").exists():
            raise ValueError(f"{path} is not a pipeline store: no zarr.json or {SCHEMA_FILE} in it")
        location = str(local)
    else:
        location = path
    try:
        group = zarr.open_group(location, mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"no store at {path}") from None
    except Exception as exc:  # zarr raises several types for a missing or foreign group
        if "not found" in str(exc).lower() or type(exc).__name__.endswith("NotFoundError"):
            raise FileNotFoundError(f"no store at {path}") from None
        raise ValueError(f"{path} is not a pipeline store: {exc}") from None
    return "zarr", check_schema(group.attrs.get(SCHEMA_KEY), path), location


def open(path):  # noqa: A001 - the public name is pipeline.store.open
    """Open a store lazily.

    Parameters
    ----------
    path : str or os.PathLike
        A store written by :func:`write`: a local directory or an fsspec URL.

    Returns
    -------
    Dataset
        ``X`` and ``y`` are dask arrays with one task per store chunk; nothing is
        read until they are computed.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is not a complete store, or has an unknown format version.
    """
    local = _local_path(path)
    fmt, schema, location = _read_schema(path, local)
    n, rows = schema["n_samples"], schema["chunk_rows"]
    arrays = {"X": ((n, *schema["feature_shape"]), schema["dtype"])}
    if schema.get("y_dtype") is not None:
        arrays["y"] = (tuple(schema["y_shape"]), schema["y_dtype"])
    dask_arrays = {}
    for name, (shape, dtype) in arrays.items():
        reader = _ChunkReader(location, name, fmt, shape, dtype, rows)
        dask_arrays[name] = da.from_array(
            reader,
            chunks=(rows, *shape[1:]),
            name=f"pipeline-store-{name}-{tokenize(location, schema['uid'], name)}",
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * len(shape), dtype=dtype),
        )
    return Dataset(X=dask_arrays["X"], y=dask_arrays.get("y"), attrs=schema, path=str(path))


def _human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
