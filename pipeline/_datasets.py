"""Named datasets: MNIST and digits in memory, synthetic classification stores of any size."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline import _store
from pipeline._inputs import check_chunk_rows

__all__ = ["load_digits", "load_mnist", "make_classification_store"]

SPLITS = ("train", "test")
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PKL_NAME = "mnist.pkl.gz"
HOW_TO_GET_MNIST = (
    "Get MNIST on a machine with internet and copy it here: either the four standard IDX "
    f"files ({', '.join(n + '.gz' for names in IDX_NAMES.values() for n in names)}; "
    f"gzip'd or not) or Nielsen's {PKL_NAME}. Put them in ./datasets/ or in a directory "
    "named by the PIPELINE_DATA environment variable, or pass source=. "
    "pipeline never downloads data."
)


# ----------------------------------------------------------------------------- MNIST: finding


def _search_dirs():
    """``(directory, why)`` pairs searched when no source is given, in order."""
    dirs = []
    if os.environ.get("PIPELINE_DATA"):
        dirs.append((Path(os.environ["PIPELINE_DATA"]).expanduser(), "$PIPELINE_DATA"))
    cwd = Path.cwd()
    here = [(cwd / "datasets", "./datasets"), (cwd / "datasets" / "mnist", "./datasets/mnist")]
    return dirs + here


def _either(d, name):
    """``d/name.gz`` or ``d/name``, whichever exists first, else None."""
    return next((p for p in (d / f"{name}.gz", d / name) if p.is_file()), None)


def _find_in_dir(d, split):
    images, labels = (_either(d, n) for n in IDX_NAMES[split])
    if images and labels:
        return ("idx", images, labels)
    return ("pkl", d / PKL_NAME) if (d / PKL_NAME).is_file() else None


def _idx_file_source(p, split):
    """An IDX images file and the labels file beside it."""
    name = p.name
    for other, (images, _) in IDX_NAMES.items():
        if name.startswith(images) and other != split:
            raise ValueError(f"{p} holds MNIST's {other!r} split, but split={split!r} was asked")
    if "images-idx3" not in name:
        raise ValueError(
            f"cannot tell the labels file of {p}: expected a name like {IDX_NAMES[split][0]}"
        )
    stem = name.replace("images-idx3", "labels-idx1").removesuffix(".gz")
    labels = _either(p.parent, stem)
    if labels is None:
        raise FileNotFoundError(f"MNIST labels for {p} not found: expected {p.parent / stem}(.gz)")
    return ("idx", p, labels)


def locate_mnist(source, split):
    """Find MNIST's files for ``split``: ``("idx", images, labels)`` or ``("pkl", path)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source is None:
        places = _search_dirs()
    elif not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path (str or os.PathLike) or None, got {source!r}")
    else:
        p = Path(source).expanduser()
        if p.is_file():
            if ".pkl" in p.name:
                return ("pkl", p)
            return _idx_file_source(p, split)
        if not p.is_dir():
            raise FileNotFoundError(
                f"MNIST source {str(source)!r} does not exist. {HOW_TO_GET_MNIST}"
            )
        places = [(p, "source")]
    for d, _ in places:
        found = _find_in_dir(d, split) if d.is_dir() else None
        if found:
            return found
    looked = "\n".join(f"  {d} ({why})" for d, why in places)
    raise FileNotFoundError(
        f"MNIST {split!r} files not found. Looked in:\n{looked}\n{HOW_TO_GET_MNIST}"
    )


# ----------------------------------------------------------------------------- MNIST: reading


def _read_bytes(path):
    """The bytes of ``path``, gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path} is a corrupt gzip file: {exc}") from None


def _read_idx(path, ndim):
    """An IDX file of unsigned bytes with ``ndim`` dimensions, as a uint8 array."""
    data = _read_bytes(path)
    head = 4 + 4 * ndim
    if len(data) < head or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes: magic {data[:4].hex()}, "
            f"expected 0000080{ndim}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:head])
    body = np.frombuffer(data, np.uint8, offset=head)
    if body.size != math.prod(dims):
        raise ValueError(
            f"{path} is truncated or corrupt: its header says shape {dims} "
            f"({math.prod(dims)} bytes of data), the file holds {body.size}"
        )
    return body.reshape(dims)


def _load_idx(images_path, labels_path):
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(
            f"MNIST files disagree: {images_path} has {len(images)} images, "
            f"{labels_path} has {len(labels)} labels"
        )
    X = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


def _check_part(part, path, name):
    """One ``(X, y)`` tuple of the pickle, as float32 in [0, 1] and int64."""
    if not (isinstance(part, (tuple, list)) and len(part) == 2):
        raise ValueError(f"{path}: the {name} part is not an (X, y) pair")
    X, y = np.asarray(part[0]), np.asarray(part[1])
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(
            f"{path}: the {name} part has X of shape {X.shape} and y of shape {y.shape}"
        )
    X = X.astype(np.float32) / np.float32(255) if X.dtype.kind in "iu" else X.astype(np.float32)
    return X, y.astype(np.int64)


def _load_pkl(path, split):
    """Nielsen's layout: a gzip'd pickle of (train 50k, validation 10k, test 10k)."""
    try:
        parts = pickle.loads(_read_bytes(path), encoding="latin1")
    except Exception as exc:  # a corrupt pickle raises almost any type
        raise ValueError(f"{path} is not a readable MNIST pickle: {exc}") from None
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3):
        raise ValueError(f"{path} is not Nielsen's MNIST layout: expected 3 (X, y) parts")
    if split == "test":
        return _check_part(parts[2], path, "test")
    X1, y1 = _check_part(parts[0], path, "train")
    X2, y2 = _check_part(parts[1], path, "validation")
    return np.concatenate([X1, X2]), np.concatenate([y1, y2])


def read_located_mnist(found, split):
    """Read what :func:`locate_mnist` found."""
    return _load_idx(found[1], found[2]) if found[0] == "idx" else _load_pkl(found[1], split)


def load_mnist(source=None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST's handwritten digits from local files (never downloads).

    Parameters
    ----------
    source : str or os.PathLike, optional
        A directory holding the files, ``mnist.pkl.gz``, or an IDX images file whose
        labels file sits beside it. By default, the first of ``$PIPELINE_DATA``,
        ``./datasets/`` and ``./datasets/mnist/`` (relative to the current directory)
        that holds the files.
    split : {"train", "test"}
        MNIST's 60,000 training images or its 10,000 test images.

    Returns
    -------
    X : ndarray of shape (n_samples, 784), float32 in [0, 1]
    y : ndarray of shape (n_samples,), int64 labels 0-9

    Raises
    ------
    FileNotFoundError
        No files found; the message lists every place looked and how to get them.
    ValueError
        Bad ``split``; a corrupt file (bad IDX magic, truncated data, image and
        label counts that disagree).

    Notes
    -----
    Two layouts are read: the standard IDX files (``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte``, ``t10k-...`` for test; gzip'd or not), preferred
    when present, and Nielsen's ``mnist.pkl.gz`` (train 50,000 + validation 10,000
    form the training split). Unpickling can run code: ``mnist.pkl.gz`` is the only
    pickle this library reads, and only from a file you pass or place in the data
    directory yourself. Do not load one from a source you do not trust.

    MNIST is by Yann LeCun and Corinna Cortes, under CC BY-SA 3.0.
    """
    return read_located_mnist(locate_mnist(source, split), split)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits.

    Returns
    -------
    X : ndarray of shape (1797, 64), float32 in [0, 1] (pixel counts divided by 16)
    y : ndarray of shape (1797,), int64 labels 0-9
    """
    from sklearn.datasets import load_digits as sk_load_digits

    X, y = sk_load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y.astype(np.int64)


# ----------------------------------------------------------------------------- synthetic


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _is_real(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _master_seed(random_state):
    """An int seed from ``random_state`` (None: fresh OS entropy, recorded in the store)."""
    if random_state is None:
        return int(np.random.default_rng().integers(2**63))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    return _check_int(random_state, "random_state", 0)


def _hypercube_vertices(rng, n, dim):
    """``n`` distinct random vertices of {0, 1}**dim, of shape (n, dim)."""
    if dim <= 30:
        ids = rng.choice(2**dim, size=n, replace=False)
        return (ids[:, None] >> np.arange(dim)) & 1
    while True:
        bits = rng.integers(0, 2, size=(n, dim))
        if len(np.unique(bits, axis=0)) == n:
            return bits


def _design(seed, n_informative, n_redundant, n_classes, class_sep):
    """What every chunk shares: class centroids and mixings, the redundant map."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    centroids = _hypercube_vertices(rng, n_classes, n_informative) * 2.0 * class_sep - class_sep
    mixing = 2 * rng.random((n_classes, n_informative, n_informative)) - 1
    redundant = 2 * rng.random((n_informative, n_redundant)) - 1
    return centroids, mixing, redundant


def _chunk(seed, i, rows, design, n_features, n_classes, flip_y, dtype):
    """Chunk ``i`` of ``rows`` samples: depends only on ``(seed, i, rows)``."""
    centroids, mixing, redundant = design
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, i)))
    n_inf = centroids.shape[1]
    y = rng.integers(n_classes, size=rows)
    Z = rng.standard_normal((rows, n_inf))
    informative = centroids[y]
    for k in range(n_classes):
        rows_k = y == k
        informative[rows_k] += Z[rows_k] @ mixing[k]
    noise = rng.standard_normal((rows, n_features - n_inf - redundant.shape[1]))
    with np.errstate(over="ignore"):
        X = np.concatenate([informative, informative @ redundant, noise], axis=1).astype(dtype)
    if not np.isfinite(X).all():
        raise ValueError(
            f"features overflow {np.dtype(dtype)} (max {np.finfo(dtype).max}): lower "
            "class_sep or use a wider dtype"
        )
    flip = rng.random(rows) < flip_y
    y[flip] = rng.integers(n_classes, size=int(flip.sum()))
    return X, y.astype(np.int64)


def _chunks(seed, n_samples, rows, *args):
    """Yield the store's chunks; a short last chunk is the start of a full one."""
    for i, start in enumerate(range(0, n_samples, rows)):
        X, y = _chunk(seed, i, rows, *args)
        yield X[: n_samples - start], y[: n_samples - start]


def _check_classification(
    n_samples, n_features, n_informative, n_classes, class_sep, flip_y, dtype
):
    _check_int(n_samples, "n_samples", 1)
    _check_int(n_features, "n_features", 1)
    _check_int(n_classes, "n_classes", 2)
    if n_informative is None:
        n_informative = min(n_features, max(2, math.ceil(math.log2(n_classes))))
    n_informative = _check_int(n_informative, "n_informative", 1)
    if n_informative > n_features:
        raise ValueError(f"n_informative={n_informative} must be <= n_features={n_features}")
    if 2**n_informative < n_classes:
        raise ValueError(
            f"n_classes={n_classes} needs 2**n_informative >= n_classes (one hypercube vertex "
            f"per class), but n_informative={n_informative}; raise n_informative"
        )
    if not (_is_real(class_sep) and np.isfinite(class_sep) and class_sep >= 0):
        raise ValueError(f"class_sep must be a finite number >= 0, got {class_sep!r}")
    if not (_is_real(flip_y) and 0 <= flip_y <= 1):
        raise ValueError(f"flip_y must be a number in [0, 1], got {flip_y!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from None
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return n_informative


def make_classification_store(
    path,
    n_samples: int,
    n_features: int = 20,
    *,
    n_informative: int | None = None,
    n_classes: int = 2,
    class_sep: float = 1.0,
    flip_y: float = 0.01,
    chunk_rows: int | None = None,
    dtype="float32",
    format: str = "zarr",
    overwrite: bool = False,
    random_state=None,
    progress=False,
) -> _store.Dataset:
    """Generate a classification problem of any size straight into a store.

    Like :func:`sklearn.datasets.make_classification` with one cluster per class,
    but written chunk by chunk, so memory stays at a few chunks whatever ``n_samples``.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write the store (see :func:`pipeline.store.write`).
    n_samples : int
    n_features : int
        Informative, then redundant (``min(2, n_features - n_informative)`` random
        linear combinations of the informative ones), then Gaussian noise features.
    n_informative : int, optional
        By default ``max(2, ceil(log2(n_classes)))``, at most ``n_features``.
    n_classes : int
        Classes are balanced in expectation; labels 0 .. n_classes - 1.
    class_sep : float
        Class centroids sit on distinct vertices of the hypercube ``[-class_sep,
        class_sep] ** n_informative``; each class has its own random covariance.
    flip_y : float
        Probability that a label is replaced by a random class.
    chunk_rows : int, optional
        Rows per chunk; by default about 8 MB of X per chunk.
    dtype : floating dtype
    format : {"zarr", "memmap"}
    overwrite : bool
    random_state : int, numpy.random.Generator or None
        Master seed; None draws one, recorded in the store's
        ``attrs["attrs"]["random_state"]``. The data depend only on it and on
        ``chunk_rows`` (chunk ``i`` is drawn from ``SeedSequence(seed, spawn_key=(1, i))``),
        and a smaller ``n_samples`` gives a prefix of a larger one.
    progress : bool or str
        Show a progress bar while writing (see :func:`pipeline.store.write`).

    Returns
    -------
    Dataset
        X of shape (n_samples, n_features) in ``dtype``, y of shape (n_samples,) int64.
    """
    n_informative = _check_classification(
        n_samples, n_features, n_informative, n_classes, class_sep, flip_y, dtype
    )
    seed = _master_seed(random_state)
    rows = _store.default_chunk_rows((n_features,), dtype) if chunk_rows is None else chunk_rows
    rows = _check_int(rows, "chunk_rows", 1)
    check_chunk_rows(rows, np.empty((0, n_features), dtype))  # before a chunk is drawn
    n_redundant = min(2, n_features - n_informative)
    design = _design(seed, n_informative, n_redundant, n_classes, class_sep)
    chunks = _chunks(seed, n_samples, rows, design, n_features, n_classes, flip_y, dtype)
    attrs = {
        "generator": "make_classification_store",
        "random_state": seed,
        "n_samples": n_samples,
        "n_features": n_features,
        "n_informative": n_informative,
        "n_redundant": n_redundant,
        "n_classes": n_classes,
        "class_sep": float(class_sep),
        "flip_y": float(flip_y),
    }
    return _store.write(
        path,
        chunks,
        chunk_rows=rows,
        format=format,
        overwrite=overwrite,
        attrs=attrs,
        progress=progress,
    )
