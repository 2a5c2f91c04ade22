"""Writers that append whole chunks to a store being built (zarr or memmap).

Each has ``append(X_block, y_block)`` (a block is one store chunk: ``rows``
samples, the last may be shorter), ``n`` (samples written), ``checksums`` (the
CRC-32 of each chunk, per array), ``array_metadata()`` and ``finish(schema)``, which writes the schema last; each is a context manager that
releases its files.
"""

from __future__ import annotations

import builtins
import json
import os
import zlib
from pathlib import Path

import numpy as np
import zarr

from pipeline._schema import SCHEMA_FILE, SCHEMA_KEY, array_metadata_digest

NPY_HEADER_BYTES = 4096  # reserved .npy header, so a file of unknown length can stream


class ZarrWriter:
    """Append whole chunks to a zarr group's X and y arrays.

    With ``n_total`` known the arrays are created at full size (no metadata
    rewrite per chunk); otherwise they grow chunk by chunk.
    """

    def __init__(self, location, x_dtype, feature_shape, y_dtype, y_tail, rows, n_total=None):
        # mode "a": the directory exists (atomic_dir made it) and holds its claim file
        self.group = zarr.open_group(location, mode="a", zarr_format=3)
        codec = zarr.codecs.ZstdCodec(level=1, checksum=True)  # checksums catch corruption
        config = {"write_empty_chunks": True}  # every chunk exists, so absence is an error
        shapes = {"X": (x_dtype, tuple(feature_shape))}
        if y_dtype is not None:
            shapes["y"] = (y_dtype, tuple(y_tail))
        self.arrays = {
            name: self.group.create_array(
                name,
                shape=(n_total or 0, *tail),
                chunks=(rows, *tail),
                dtype=dtype,
                compressors=codec,
                config=config,
            )
            for name, (dtype, tail) in shapes.items()
        }
        self.n = 0
        # CRC-32 of each decoded chunk: zstd's own checksum catches a damaged chunk,
        # these catch a valid chunk in the wrong place (copied over another)
        self.checksums = {name: [] for name in self.arrays}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def append(self, x, y):
        stop = self.n + len(x)
        for name, block in (("X", x), ("y", y)):
            if name in self.arrays:
                arr = self.arrays[name]
                block = np.ascontiguousarray(block, arr.dtype)
                self.checksums[name].append(zlib.crc32(block.data))
                if stop > arr.shape[0]:
                    arr.resize((stop, *arr.shape[1:]))
                arr[self.n : stop] = block
        self.n = stop

    def array_metadata(self):
        """``{name: digest}`` of each array's metadata as stored (codecs, endianness...)."""
        return {
            name: array_metadata_digest(zarr.open_array(self.group.store, path=arr.path, mode="r"))
            for name, arr in self.arrays.items()
        }

    def finish(self, schema):
        self.group.attrs.update({SCHEMA_KEY: schema})


def _npy_header(dtype, shape):
    """A version-1.0 ``.npy`` header padded to exactly ``NPY_HEADER_BYTES``."""
    d = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    body = repr(d).encode("latin1")
    magic = np.lib.format.magic(1, 0)
    pad = NPY_HEADER_BYTES - len(magic) - 2 - len(body) - 1
    return (
        magic + np.uint16(NPY_HEADER_BYTES - len(magic) - 2).tobytes() + body + b" " * pad + b"\n"
    )


class MemmapWriter:
    """Stream raw rows into ``.npy`` files whose header is patched at the end."""

    def __init__(self, location, x_dtype, feature_shape, y_dtype, y_tail, rows, n_total=None):
        self.dir = Path(location)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = {"X": (x_dtype, tuple(feature_shape))}
        if y_dtype is not None:
            self.meta["y"] = (y_dtype, tuple(y_tail))
        self.files = {name: builtins.open(self.dir / f"{name}.npy", "wb") for name in self.meta}
        for f in self.files.values():
            f.write(b"\0" * NPY_HEADER_BYTES)
        self.n = 0
        self.checksums = {name: [] for name in self.meta}  # CRC-32 of each chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def array_metadata(self):
        """None: a ``.npy`` header holds only what the schema checks (shape, dtype)."""
        return None

    def append(self, x, y):
        for name, block in (("X", x), ("y", y)):
            if name in self.files:
                data = np.ascontiguousarray(block, self.meta[name][0]).data
                self.checksums[name].append(zlib.crc32(data))
                self.files[name].write(data)
        self.n += len(x)

    def finish(self, schema):
        for name, f in self.files.items():
            dtype, tail = self.meta[name]
            f.seek(0)
            f.write(_npy_header(dtype, (self.n, *tail)))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        tmp = self.dir / (SCHEMA_FILE + ".tmp")
        tmp.write_text(json.dumps(schema, indent=1))
        os.replace(tmp, self.dir / SCHEMA_FILE)

    def close(self):
        for f in self.files.values():
            f.close()
