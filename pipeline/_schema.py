"""The store schema: what a complete store records about itself.

A store's schema is a small JSON document written *last*, once every chunk is on
disk; its presence is what marks a store as complete. ``open`` refuses a store
without one, and a store whose ``format_version`` this code does not know.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid

import numpy as np

FORMAT_VERSION = 1
SCHEMA_KEY = "pipeline"  # key of the schema in a zarr group's attributes
SCHEMA_FILE = "schema.json"  # the schema file of a memmap store
MAX_CLASSES = 1000  # an integer target with more distinct values is not categorical


def metadata_checksum(meta):
    """SHA-256 of a metadata dictionary without its own ``"checksum"`` entry."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def with_checksum(meta):
    """``meta`` with a ``"checksum"`` entry that catches hand edits and truncation."""
    return {**meta, "checksum": metadata_checksum(meta)}


def verify_checksum(meta, where, what, *, required=False):
    """Refuse metadata whose checksum does not match, or is missing where ``required``
    (an object with a marker was written with one; older objects have neither)."""
    if required and "checksum" not in meta:
        raise ValueError(
            f"{where} has edited or corrupt {what} metadata: its checksum was removed (the "
            "file was changed by hand or damaged); write it again"
        )
    if "checksum" in meta and meta["checksum"] != metadata_checksum(meta):
        raise ValueError(
            f"{where} has edited or corrupt {what} metadata: its checksum does not match its "
            "content (the file was changed by hand, truncated, or damaged); write it again"
        )


def array_metadata_digest(array):
    """SHA-256 of a zarr array's metadata (shape, codecs, endianness, fill value...)."""
    text = json.dumps(array.metadata.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def new_schema(
    *,
    fmt,
    n_samples,
    chunk_rows,
    x_dtype,
    feature_shape,
    y_dtype,
    y_shape,
    classes,
    attrs,
    uid=None,
    checksums=None,
    array_metadata=None,
):
    """Return the schema dictionary of a finished store (JSON-serialisable).

    ``checksums`` maps an array name to the CRC-32 of each of its decoded chunks;
    ``array_metadata`` maps it to :func:`array_metadata_digest` (zarr stores). The
    schema carries a checksum of itself (:func:`with_checksum`), so neither can be
    removed unnoticed.
    """
    schema = {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "uid": uid or uuid.uuid4().hex,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "n_samples": int(n_samples),
        "chunk_rows": int(chunk_rows),
        "dtype": np.dtype(x_dtype).str,
        "feature_shape": [int(d) for d in feature_shape],
        "y_dtype": None if y_dtype is None else np.dtype(y_dtype).str,
        "y_shape": None if y_shape is None else [int(d) for d in y_shape],
        "classes": classes,
        "attrs": dict(attrs or {}),
    }
    if checksums is not None:
        schema["checksums"] = checksums
    if array_metadata is not None:
        schema["array_metadata"] = array_metadata
    return with_checksum(schema)


def check_schema(schema, where, *, marked=False):
    """Validate a schema read from ``where``; return it or raise ``ValueError``."""
    if not isinstance(schema, dict) or "format_version" not in schema:
        raise ValueError(
            f"{where} is not a complete pipeline store: it has no schema "
            "(the write that made it did not finish, or it was not written by pipeline.store.write)"
        )
    version = schema["format_version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has store format_version {version!r}; this version of pipeline reads "
            f"format_version {FORMAT_VERSION} only"
        )
    missing = {"n_samples", "chunk_rows", "dtype", "feature_shape", "uid", "format"} - set(schema)
    if missing:
        raise ValueError(f"{where} has a corrupt schema: missing {sorted(missing)}")
    verify_checksum(schema, where, "store", required=marked)
    return schema


def check_arrays(schema, found, where):
    """Refuse a store whose arrays are not what its schema says.

    ``found`` maps each array name to its real ``(shape, dtype, chunk_rows)``.
    """
    expect = {"X": ((schema["n_samples"], *schema["feature_shape"]), schema["dtype"])}
    if schema.get("y_dtype") is not None:
        expect["y"] = (tuple(schema.get("y_shape") or ()), schema["y_dtype"])
    for name, (shape, dtype) in expect.items():
        real_shape, real_dtype, rows = found[name]
        problems = []
        if tuple(real_shape) != tuple(shape):
            problems.append(f"shape {tuple(real_shape)}, the schema says {tuple(shape)}")
        if np.dtype(real_dtype) != np.dtype(dtype):
            problems.append(f"dtype {np.dtype(real_dtype)}, the schema says {np.dtype(dtype)}")
        if rows != schema["chunk_rows"]:
            problems.append(f"chunks of {rows} rows, the schema says {schema['chunk_rows']}")
        sums = (schema.get("checksums") or {}).get(name)
        n_chunks = -(-schema["n_samples"] // schema["chunk_rows"])
        if sums is not None and len(sums) != n_chunks:
            problems.append(f"{len(sums)} chunk checksums, the schema's chunks are {n_chunks}")
        if problems:
            raise ValueError(
                f"{where} is a corrupt pipeline store: array {name!r} has " + "; ".join(problems)
            )


class ClassCollector:
    """Collect the distinct values of an integer or boolean target, chunk by chunk.

    Gives up (``classes`` is ``None``) for float targets and for more than
    ``MAX_CLASSES`` distinct values, which are regression-like, not categorical.
    """

    def __init__(self, dtype):
        kind = np.dtype(dtype).kind
        self._values = set() if kind in "biu" else None

    def update(self, y_chunk):
        if self._values is None:
            return
        self._values.update(np.unique(y_chunk).tolist())
        if len(self._values) > MAX_CLASSES:
            self._values = None

    @property
    def classes(self):
        return None if self._values is None else sorted(self._values)
