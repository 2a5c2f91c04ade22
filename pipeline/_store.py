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
import uuid
import zlib
from builtins import open as builtins_open
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from zarr.core.sync import sync

from pipeline._atomic import (
    MARKER,
    atomic_dir,
    check_destination,
    kind_of,
    local_path,
    read_marker,
    url_fs,
)
from pipeline._inputs import (
    PieceChecker,
    blocks_of,
    default_chunk_rows,
    input_pieces,
    is_array,
)
from pipeline._schema import (
    SCHEMA_FILE,
    SCHEMA_KEY,
    ClassCollector,
    array_metadata_digest,
    check_arrays,
    check_schema,
    new_schema,
)
from pipeline._writers import MemmapWriter, ZarrWriter

__all__ = ["Dataset", "ChunkReadError", "StoreChangedError", "write", "open", "default_chunk_rows"]

FORMATS = ("zarr", "memmap")


class ChunkReadError(OSError):
    """A chunk of a store is missing or cannot be decoded."""


class StoreChangedError(RuntimeError):
    """The store at a Dataset's path was replaced (or removed) after it was opened."""


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

    Every read checks that ``path`` still holds this store (its ``uid``): a read
    after the store was replaced raises :class:`StoreChangedError`.
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

    @property
    def uid(self):
        """The store's identity: a new one each time a store is written."""
        return self.attrs["uid"]

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

_local_path = local_path  # the name other modules import


def _check_destination(path, local, overwrite):
    """Refuse to write a store over something that exists, unless allowed and safe."""
    check_destination(path, "store", overwrite=overwrite)


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
        The first chunk sets the store's dtypes; a later chunk is cast only where
        its values survive (same kind, in range), else ``ValueError`` naming it.
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
        Must be None when ``X`` is an iterable of pairs.
    chunk_rows : int, optional
        Samples per chunk; by default about 8 MB of X per chunk.
    format : {"zarr", "memmap"}
    overwrite : bool
        Replace an existing store at ``path``; never anything else (a model, a
        file, a directory of other files: ``FileExistsError`` before any work).
        Locally the new store is swapped in for the old one in one step once
        complete; of two writers to one new path exactly one wins. On
        non-local fsspec URLs (object stores have no rename) the store is written
        in place: the old store is removed first, so a failed write leaves nothing
        that opens and the old data is gone; a second writer arriving while one
        writes is refused, and chunks mixed by two writers that raced past that
        check fail their checksums on read instead of reading silently.
    attrs : dict, optional
        JSON-serialisable user metadata kept in the schema under ``"attrs"``, as JSON
        stores it (keys become strings); anything else is a ``TypeError`` before any work.
    progress : bool or str, default=False
        Show a tqdm progress bar over samples written (a str is its description).

    Returns
    -------
    Dataset
        The finished store, opened lazily: always this write's own (reads raise
        :class:`StoreChangedError` once another write replaced it).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if chunk_rows is not None and (not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    if attrs is not None:
        attrs = _as_json(attrs)  # fail before writing anything if attrs cannot be stored
    local = _local_path(path)
    if local is None and format == "memmap":
        raise ValueError(f"format='memmap' needs a local path, got {path!r}")
    check_destination(path, "store", overwrite=overwrite)

    checker = PieceChecker()
    pieces = (checker(x, yc) for x, yc in input_pieces(X, y, chunk_rows))
    first = next(pieces, None)
    if first is None:
        raise ValueError("X is empty: the iterable yielded no chunks")
    rows = int(chunk_rows or default_chunk_rows(first[0].shape[1:], first[0].dtype))
    blocks = blocks_of(_chain_first(first, pieces), rows)
    uid = uuid.uuid4().hex
    with atomic_dir(path, "store", overwrite=overwrite, uid=uid) as location:
        schema = _write_blocks(location, format, first, blocks, rows, uid, attrs, progress, X)
    return _dataset(path, location if local is None else str(local), schema)


def _write_blocks(location, format, first, blocks, rows, uid, attrs, progress, X):
    """Write ``blocks`` into a new store at ``location``; return its schema."""
    x0, y0 = first
    writer_cls = ZarrWriter if format == "zarr" else MemmapWriter
    writer = writer_cls(
        location,
        x0.dtype,
        x0.shape[1:],
        None if y0 is None else y0.dtype,
        () if y0 is None else y0.shape[1:],
        rows,
        n_total=_known_length(X),
    )
    with writer:
        classes = ClassCollector(y0.dtype if y0 is not None else "f8")
        for xb, yb in _with_progress(blocks, progress, _known_length(X)):
            writer.append(xb, yb)
            if yb is not None and yb.ndim == 1:
                classes.update(yb)
        if writer.n == 0:
            raise ValueError("X is empty: the input yielded chunks with no samples")
        schema = new_schema(
            fmt=format,
            uid=uid,
            n_samples=writer.n,
            chunk_rows=rows,
            x_dtype=x0.dtype,
            feature_shape=x0.shape[1:],
            y_dtype=None if y0 is None else y0.dtype,
            y_shape=None if y0 is None else (writer.n, *y0.shape[1:]),
            classes=None if y0 is None or y0.ndim != 1 else classes.classes,
            attrs=attrs,
            checksums=writer.checksums,
            array_metadata=writer.array_metadata(),
        )
        writer.finish(schema)
    return schema


def _as_json(attrs):
    """``attrs`` as JSON stores and reads it back (keys become strings), or TypeError."""
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict, got {type(attrs).__name__}")
    try:
        return json.loads(json.dumps(attrs, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"attrs must be JSON-serialisable (no NaN or infinity): {exc}") from None


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


def _current_uid(location, fmt):
    """The uid of the store at ``location`` now (None when no store is there)."""
    marker = read_marker(location)
    if marker is not None:
        return marker.get("uid")
    try:  # a store written before markers: its schema says
        if fmt == "memmap":
            return json.loads((Path(location) / SCHEMA_FILE).read_text()).get("uid")
        return zarr.open_group(location, mode="r").attrs.get(SCHEMA_KEY, {}).get("uid")
    except Exception:  # noqa: BLE001 - gone or unreadable: not the store we opened
        return None


class _ChunkReader:
    """Array-like over one array of a store that reads whole chunks, for dask.

    Holds only the location (so it pickles small and every worker reads straight
    from the store); opens the array lazily in each process. Turns a missing or
    undecodable chunk into a :class:`ChunkReadError` naming the array and chunk,
    and checks after every read that the store is still the one opened (its uid),
    else :class:`StoreChangedError`. Chunks are checked against the CRC-32
    checksums written with the store (zarr stores from before these checksums
    rely on zstd's own).
    """

    def __init__(self, location, name, fmt, shape, dtype, chunk_rows, uid, checksums=None):
        self.location, self.name, self.fmt = location, name, fmt
        self.shape, self.dtype, self.chunk_rows = tuple(shape), np.dtype(dtype), chunk_rows
        self.uid, self.checksums = uid, checksums
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

    def _rows(self, i):
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.shape[0])

    def _check_unchanged(self):
        now = _current_uid(self.location, self.fmt)
        if now != self.uid:
            what = "removed" if now is None else "replaced by another store"
            raise StoreChangedError(
                f"store {self.location} was {what} after it was opened (uid {self.uid} then, "
                f"{now} now); open it again to read the new data"
            )

    def _check_present(self, arr, first, last):
        """Refuse a zarr chunk that is missing (zarr would read its fill value)."""
        for i in range(first, last + 1):
            if not self._chunk_key_exists(arr, i):
                start, stop = self._rows(i)
                raise ChunkReadError(
                    f"store {self.location}: array {self.name!r} chunk {i} "
                    f"(rows {start}-{stop - 1}) is missing"
                )

    def _read_chunks(self, arr, key, first, last):
        """Whole chunks, each checked against its checksum, then the rows asked for."""
        if self.fmt == "zarr":
            self._check_present(arr, first, last)
        lo, hi = self._rows(first)[0], self._rows(last)[1]
        block = np.asarray(arr[lo:hi]) if self.fmt == "zarr" else np.array(arr[lo:hi])
        if self.checksums is not None:
            for i in range(first, last + 1):
                start, stop = (r - lo for r in self._rows(i))
                if zlib.crc32(np.ascontiguousarray(block[start:stop]).data) != self.checksums[i]:
                    raise ChunkReadError(
                        f"store {self.location}: array {self.name!r} chunk {i} (rows "
                        f"{start + lo}-{stop + lo - 1}) is corrupt: its checksum does not match"
                    )
        rows, rest = key[0], key[1:]
        start, stop, step = rows.indices(self.shape[0])
        return block[(slice(start - lo, stop - lo, step), *rest)]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if isinstance(key[0], slice) else slice(key[0], key[0] + 1)
        key = (rows, *key[1:])
        start, stop, _ = rows.indices(self.shape[0])
        first, last = start // self.chunk_rows, max(start, stop - 1) // self.chunk_rows
        where = f"store {self.location}: array {self.name!r} chunk {first}" + (
            f"-{last}" if last != first else ""
        )
        try:
            out = self._read_chunks(self._open(), key, first, last)
        except ChunkReadError:
            self._check_unchanged()  # a chunk missing because the store was replaced
            raise
        except MemoryError:  # this process is out of memory: the store is fine
            raise
        except Exception as exc:
            self._check_unchanged()
            raise ChunkReadError(f"{where} could not be read: {exc}") from exc
        self._check_unchanged()
        return out


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


def _npy_layout(file):
    """``(shape, dtype, data bytes present, data bytes needed)`` of a ``.npy`` file."""
    with builtins_open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
        offset = f.tell()
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return tuple(shape), dtype, Path(file).stat().st_size - offset, needed


def _stored_arrays(fmt, location, schema, path):
    """What the store's arrays really are: ``{name: (shape, dtype, chunk rows)}``."""
    names = ["X"] + (["y"] if schema.get("y_dtype") is not None else [])
    found = {}
    for name in names:
        try:
            if fmt == "zarr":
                arr = zarr.open_group(location, mode="r")[name]
                digest = (schema.get("array_metadata") or {}).get(name)
                if digest is not None and digest != array_metadata_digest(arr):
                    raise ValueError(
                        f"the metadata of its array {name!r} ({name}/zarr.json: codecs, "
                        "endianness, fill value...) was edited since it was written"
                    )
                found[name] = (tuple(arr.shape), arr.dtype, arr.chunks[0])
            else:
                shape, dtype, present, needed = _npy_layout(Path(location) / f"{name}.npy")
                if present != needed:
                    raise ValueError(
                        f"its {name}.npy holds {present} bytes of data, its header needs {needed}"
                        " (truncated or edited)"
                    )
                found[name] = (shape, dtype, schema["chunk_rows"])
        except (KeyError, FileNotFoundError) as exc:
            raise ValueError(f"{path} is not a complete pipeline store: array {name!r} is missing"
                             f" ({exc})") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is a corrupt pipeline store: {exc}") from None
    return found


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
            return "memmap", check_schema(schema, path, marked=_marked(local)), str(local)
        if not (local / "zarr.json").exists():
            raise ValueError(f"{path} is not a pipeline store: no zarr.json or {SCHEMA_FILE} in it")
        try:
            json.loads((local / "zarr.json").read_text())
        except ValueError as exc:
            raise ValueError(f"{path} is a corrupt pipeline store: its zarr.json is not valid "
                             f"JSON (truncated or edited): {exc}") from None
        location = str(local)
    else:
        location = path
        url_fs(path)  # a clear error when the URL's driver (s3fs, gcsfs...) is missing
    try:
        group = zarr.open_group(location, mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(f"no store at {path}") from None
    except ImportError:
        raise
    except Exception as exc:  # zarr raises several types for a missing or foreign group
        if "not found" in str(exc).lower() or type(exc).__name__.endswith("NotFoundError"):
            raise FileNotFoundError(f"no store at {path}") from None
        raise ValueError(f"{path} is not a pipeline store: {exc}") from None
    schema = check_schema(group.attrs.get(SCHEMA_KEY), path, marked=_marked(location))
    return "zarr", schema, location


def _marked(location):
    """Whether the store has a marker: written by a version that always checksums."""
    return read_marker(location) is not None


def open(path):  # noqa: A001 - the public name is pipeline.store.open
    """Open a store lazily, checking its metadata against its arrays.

    Parameters
    ----------
    path : str or os.PathLike
        A store written by :func:`write`: a local directory or an fsspec URL.

    Returns
    -------
    Dataset
        ``X`` and ``y`` are dask arrays with one task per store chunk; nothing is
        read until they are computed. Reads raise :class:`StoreChangedError` once
        the store at ``path`` has been replaced.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is not a complete store, has an unknown format version, or its
        metadata was edited, truncated or disagrees with its arrays.
    ImportError
        ``path`` is a URL whose fsspec driver (s3fs, gcsfs, ...) is not installed.
    """
    local = _local_path(path)
    kind = kind_of(path)
    if kind not in (None, "store"):
        what = "a saved pipeline.Pipeline" if kind == "pipeline" else f"a pipeline {kind}"
        raise ValueError(
            f"{path} is not a pipeline store: it holds {what}"
            + (" (open it with pipeline.load)" if kind in ("model", "pipeline") else "")
        )
    fmt, schema, location = _read_schema(path, local)
    marker = read_marker(location)
    if marker is not None and marker.get("corrupt"):
        raise ValueError(f"{path} is a corrupt pipeline store: its {MARKER} is not valid JSON")
    if marker is not None and marker.get("uid") != schema["uid"]:
        raise ValueError(
            f"{path} is a corrupt pipeline store: its {MARKER} names uid "
            f"{marker.get('uid')!r}, its schema {schema['uid']!r} (edited by hand?)"
        )
    check_arrays(schema, _stored_arrays(fmt, location, schema, path), path)
    return _dataset(path, location, schema)


def _dataset(path, location, schema):
    """The lazy Dataset over the store at ``location`` described by ``schema``."""
    fmt, n, rows = schema["format"], schema["n_samples"], schema["chunk_rows"]
    arrays = {"X": ((n, *schema["feature_shape"]), schema["dtype"])}
    if schema.get("y_dtype") is not None:
        arrays["y"] = (tuple(schema["y_shape"]), schema["y_dtype"])
    checksums = schema.get("checksums") or {}
    dask_arrays = {}
    for name, (shape, dtype) in arrays.items():
        reader = _ChunkReader(
            location, name, fmt, shape, dtype, rows, schema["uid"], checksums.get(name)
        )
        dask_arrays[name] = da.from_array(
            reader,
            chunks=(rows, *shape[1:]),
            name=f"pipeline-store-{name}-{tokenize(schema['uid'], name)}",  # the data, wherever it is
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
