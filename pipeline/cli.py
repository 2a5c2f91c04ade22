"""The ``pipeline`` command: ``pipeline ingest SOURCE DEST``, ``pipeline demo``.

Also ``python -m pipeline ...``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SOURCE_HELP = (
    "a CSV file or glob ('data/*.csv'), a .npy file, 'mnist' or 'mnist:PATH', "
    "'digits', or 'synthetic:N_SAMPLES,N_FEATURES'"
)


def _parse_synthetic(spec):
    try:
        n, f = (int(v) for v in spec.split(":", 1)[1].split(","))
    except ValueError:
        raise SystemExit(
            f"pipeline ingest: bad synthetic source {spec!r}; expected synthetic:N_SAMPLES,N_FEATURES"
        ) from None
    return n, f


def ingest(
    source,
    dest,
    *,
    target=None,
    chunk_rows=None,
    format="zarr",
    split="train",
    overwrite=False,
    progress=True,
):
    """Write ``source`` to a store at ``dest``; return the opened Dataset."""
    from pipeline import _datasets, _sources
    from pipeline._store import write

    common = dict(chunk_rows=chunk_rows, format=format, overwrite=overwrite, progress=progress)
    if source.startswith("synthetic:"):
        n, f = _parse_synthetic(source)
        return _datasets.make_classification_store(dest, n, f, **common)
    if source == "digits":
        X, y = _datasets.load_digits()
        return write(dest, X, y, attrs={"source": "digits"}, **common)
    if source == "mnist" or source.startswith("mnist:"):
        path = source.split(":", 1)[1] if ":" in source else None
        X, y = _datasets.load_mnist(path, split=split)
        return write(dest, X, y, attrs={"source": "mnist", "split": split}, **common)
    if source.endswith(".npy"):
        reader = _sources.read_npy(source, target, chunk_rows=chunk_rows)
        return write(dest, reader, attrs={"source": source}, **common)
    if source.endswith(".csv") or "*" in source:
        reader = _sources.read_csv(source, target=target)
        return write(dest, reader, attrs=reader.attrs(), **common)
    raise SystemExit(f"pipeline ingest: unknown source {source!r}; expected {SOURCE_HELP}")


def _cmd_ingest(args):
    t0 = time.perf_counter()
    ds = ingest(
        args.source,
        args.dest,
        target=args.target,
        chunk_rows=args.chunk_rows,
        format=args.format,
        split=args.split,
        overwrite=args.overwrite,
    )
    print(ds.summary())
    print(f"written in {time.perf_counter() - t0:.1f} s")


def _demo_data():
    """MNIST when it can be found locally, else scikit-learn's digits."""
    from pipeline import _datasets

    try:
        X, y = _datasets.load_mnist(split="train")
        return "MNIST (train split)", X, y
    except FileNotFoundError:
        X, y = _datasets.load_digits()
        return "scikit-learn digits (MNIST not found locally)", X, y


def _cmd_demo(args):
    from pipeline._store import write
    from pipeline._stream import chunks

    name, X, y = _demo_data()
    with tempfile.TemporaryDirectory(prefix="pipeline-demo-") as tmp:
        t0 = time.perf_counter()
        ds = write(Path(tmp) / "demo.zarr", X, y, chunk_rows=args.chunk_rows)
        print(f"1. ingested {name} into a Zarr store in {time.perf_counter() - t0:.2f} s")
        print("   " + ds.summary().replace("\n", "\n   "))
        t0 = time.perf_counter()
        n_seen, n_chunks, counts = 0, 0, np.zeros(10, dtype=np.int64)
        for chunk in chunks(ds.X, ds.y, batch_size=args.batch_size, seed=0, epoch=0):
            n_chunks += 1
            n_seen += int(chunk.mask.sum())
            counts += np.bincount(chunk.y[chunk.mask].astype(np.int64), minlength=10)
        dt = time.perf_counter() - t0
        print(
            f"2. streamed one shuffled epoch: {n_chunks} chunks of {chunk.X.shape[0]} batches x "
            f"{chunk.X.shape[1]} samples, {n_seen:,} samples in {dt:.2f} s "
            f"({n_seen / dt:,.0f} samples/s, {ds.X.nbytes / dt / 2**20:,.0f} MB/s)"
        )
        if n_seen != len(ds):
            raise SystemExit(f"demo failed: streamed {n_seen} samples, the store holds {len(ds)}")
        print(f"   samples per class: {counts.tolist()}; the store is removed on exit")


def _parser():
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    ing = sub.add_parser("ingest", help="write a data source to a chunked store")
    ing.add_argument("source", help=SOURCE_HELP)
    ing.add_argument("dest", help="the store to create: a directory or an fsspec URL")
    ing.add_argument("--target", help="CSV: the target column; .npy: the labels .npy file")
    ing.add_argument("--chunk-rows", type=int, default=None, help="samples per chunk")
    ing.add_argument("--format", choices=("zarr", "memmap"), default="zarr")
    ing.add_argument("--split", choices=("train", "test"), default="train", help="MNIST split")
    ing.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ing.set_defaults(func=_cmd_ingest)
    demo = sub.add_parser("demo", help="ingest a built-in dataset and stream it")
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--chunk-rows", type=int, default=None)
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv=None):
    """Entry point of the ``pipeline`` console script."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as exc:
        print(f"pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
