"""Stream throughput and memory: pipeline.stream against plain reads, in one run.

Measures, on one machine in one run:

1. throughput over an on-disk store of ``--size-gb`` (default 4) GB:
   - ``zarr sequential``: plain ``zarr_array[chunk]`` reads in store order (the floor
     of what any reader of this store pays: I/O + decompression);
   - ``pipeline.stream (shuffled)`` / ``(store order)``: ``chunks(...)`` over the store,
     with windows, permutations, batching and prefetch;
   - ``pipeline.stream from memory``: the same stream over the same data held in RAM;
   - ``numpy in memory``: slicing batches out of an in-RAM array (the ceiling).
2. peak RSS of fresh processes that generate, then stream, stores of each
   ``--rss-sizes`` GB (default 2.5 and 10): flat in the store size means out-of-core.

Usage::

    python benchmarks/stream.py                       # 4 GB throughput, 2.5 + 10 GB memory
    python benchmarks/stream.py --size-gb 0.5 --rss-sizes 0.25,1   # a quick look

Stores go to ``--dir`` (default benchmarks/_data, git-ignored) and are removed after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import drop_page_cache as _drop_page_cache

N_FEATURES = 1000  # float32 rows of 4 kB
BATCH = 256


def _rate(nbytes, seconds):
    return nbytes / seconds / 2**20


def _time_zarr_sequential(path):
    import zarr

    arr = zarr.open_group(str(path), mode="r")["X"]
    rows = arr.chunks[0]
    t0 = time.perf_counter()
    for start in range(0, arr.shape[0], rows):
        arr[start : start + rows]
    return time.perf_counter() - t0


def _time_stream(X, y, **kw):
    from pipeline.stream import chunks

    t0 = time.perf_counter()
    n = 0
    for c in chunks(X, y, batch_size=BATCH, seed=0, epoch=0, **kw):
        n += int(c.mask.sum())
    assert n == X.shape[0], (n, X.shape[0])
    return time.perf_counter() - t0


def _time_numpy(X):
    """Shuffled mini-batches gathered from an in-RAM array (scikit-learn's way)."""
    perm = np.random.default_rng(0).permutation(len(X))
    t0 = time.perf_counter()
    for start in range(0, len(X), BATCH):
        X[perm[start : start + BATCH]]
    return time.perf_counter() - t0


def throughput(directory, size_gb):
    """Rows of (method, seconds, MB/s) over a store of ``size_gb``."""
    import dask.array as da

    from pipeline.datasets import make_classification_store

    n = int(size_gb * 2**30 / (N_FEATURES * 4))
    path = directory / "throughput.zarr"
    t0 = time.perf_counter()
    ds = make_classification_store(path, n, N_FEATURES, random_state=0, overwrite=True)
    gen_s = time.perf_counter() - t0
    nbytes = ds.X.nbytes
    rows, cold = [("generate the store (make_classification_store)", gen_s)], _drop_page_cache()
    rows.append(("zarr sequential reads", _time_zarr_sequential(path)))
    _drop_page_cache()
    rows.append(("pipeline.stream, shuffled (window=4, prefetch=2)", _time_stream(ds.X, ds.y)))
    _drop_page_cache()
    rows.append(("pipeline.stream, store order", _time_stream(ds.X, ds.y, shuffle=False)))
    X, y = ds.X.compute(), ds.y.compute()  # the same data, now in RAM
    Xm = da.from_array(X, chunks=ds.X.chunks)
    ym = da.from_array(y, chunks=ds.y.chunks)
    rows.append(("pipeline.stream from memory, shuffled", _time_stream(Xm, ym)))
    rows.append(("numpy shuffled batches from memory (X[perm[i:i+256]])", _time_numpy(X)))
    del X, y, Xm, ym
    shutil.rmtree(path)
    return {
        "store_gb": nbytes / 2**30,
        "n_samples": n,
        "chunk_rows": ds.attrs["chunk_rows"],
        "page_cache_dropped": cold,
        "rows": [(name, s, _rate(nbytes, s)) for name, s in rows],
    }


_CHILD = """
import sys, time
from pipeline.datasets import make_classification_store
from pipeline.store import open as open_store
from pipeline.stream import chunks
path, n, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
if what == "generate":
    make_classification_store(path, n, {nf}, random_state=0, overwrite=True)
else:
    ds = open_store(path)
    seen = sum(int(c.mask.sum()) for c in chunks(ds.X, ds.y, batch_size={batch}))
    assert seen == n
# VmHWM is this process's own peak (ru_maxrss would carry the parent's over the fork)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024, time.perf_counter() - t0)
"""


def peak_rss(directory, size_gb):
    """Peak RSS (MB) of fresh processes generating and streaming a store."""
    n = int(size_gb * 2**30 / (N_FEATURES * 4))
    path = directory / f"rss-{size_gb}.zarr"
    out = {"store_gb": size_gb, "n_samples": n}
    code = _CHILD.format(nf=N_FEATURES, batch=BATCH)
    for what in ("generate", "stream"):
        res = subprocess.run(
            [sys.executable, "-c", code, str(path), str(n), what],
            check=True,
            capture_output=True,
            text=True,
        )
        rss, secs = map(float, res.stdout.split())
        out[what] = {"peak_rss_mb": rss, "seconds": secs}
    shutil.rmtree(path)
    return out


def machine():
    import dask
    import zarr

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
    }


def report(result):
    t = result["throughput"]
    lines = [
        f"Store: {t['store_gb']:.2f} GB, {t['n_samples']:,} x {N_FEATURES} float32, "
        f"chunks of {t['chunk_rows']} rows; page cache dropped before disk reads: "
        f"{t['page_cache_dropped']}",
        "",
        "| method | seconds | MB/s | vs zarr sequential |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = dict((name, s) for name, s, _ in t["rows"])["zarr sequential reads"]
    for name, s, mbs in t["rows"]:
        lines.append(f"| {name} | {s:.1f} | {mbs:,.0f} | {base / s:.2f}x |")
    lines += [
        "",
        "| store | generate: peak RSS | seconds | stream: peak RSS | seconds |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rss"]:
        g, s = r["generate"], r["stream"]
        lines.append(
            f"| {r['store_gb']:g} GB | {g['peak_rss_mb']:,.0f} MB | {g['seconds']:.0f} | "
            f"{s['peak_rss_mb']:,.0f} MB | {s['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-gb", type=float, default=4.0)
    p.add_argument("--rss-sizes", default="2.5,10")
    p.add_argument("--dir", default=str(Path(__file__).parent / "_data"))
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "throughput": throughput(directory, args.size_gb),
        "rss": [peak_rss(directory, float(s)) for s in args.rss_sizes.split(",")],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["machine"]))
    print(report(result))


if __name__ == "__main__":
    main()
