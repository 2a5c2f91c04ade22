"""MLP estimators against scikit-learn: accuracy, speed, out-of-core, memory, in one run.

Measures, on one machine in one run, ``pipeline.MLPClassifier`` beside
``sklearn.neural_network.MLPClassifier`` with the same settings
(``hidden_layer_sizes=(256, 128)``, adam, ``batch_size='auto'`` = 200, relu,
``random_state=0``) on MNIST as float32 in [0, 1]:

1. ``accuracy``: ours trained for 10 epochs from an on-disk Zarr store of MNIST's
   training split, then ``score`` on its test split; scikit-learn's on the same
   data in memory. Target: ours >= 98.0 %.
2. ``speed``:
   - steady-state epoch time, the median of epochs 2..N of ``partial_fit`` (the first
     one compiles); target: ours >= 2.5x faster than scikit-learn;
   - a whole 10-epoch ``fit`` in a fresh process (compilation included: JAX's cache
     lives in the process), data in memory; target: ours >= 1.5x faster;
   - the fraction of this machine's float32 matmul peak (a jitted N x N matmul) that
     our training reaches: counted training FLOPs per sample times samples per second.
3. ``out-of-core``: ``fit`` from the store (page cache dropped first, when the kernel
   lets us) against ``fit`` on the same data as numpy, both compiled already;
   target: on-disk speed / in-memory speed >= 0.95.
4. ``memory``: peak RSS (VmHWM) of a fresh process running a 1-epoch ``fit`` over a
   synthetic store of ``--size-gb`` (default 10) GiB; target <= 1.5 GB. And the peak
   anonymous memory (RssAnon, sampled every 20 ms; the page cache of the store is not
   counted) above the process's own after ``import pipeline`` and JAX's backend start,
   for hidden (64,) at batch 1000 and (256, 128) at the default batch size, on a
   1.5 GiB store and the ``--size-gb`` one; target <= 400 MB above, whatever the size.

Every timed fit runs in a child process of its own (``--child``), so each starts
from a clean state and no library's thread pools disturb another's.

Usage::

    PIPELINE_DATA=/path/to/mnist python benchmarks/mlp.py --json /tmp/mlp_bench.json
    python benchmarks/mlp.py --quick                  # a smoke run in about a minute
    python benchmarks/mlp.py --only speed             # one section

The MNIST store goes to ``--dir`` (default benchmarks/_data, git-ignored) and is
removed after; the large synthetic store of ``memory`` is kept there and reused by
later runs (``--clean`` removes it at the end).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    PeakSampler,
    base_parser,
    child_main,
    cpu_name,
    markdown_table,
    print_totals,
    run_sections,
    status_mb,
)
from _common import drop_page_cache as _drop_page_cache

HERE = Path(__file__).resolve().parent
HIDDEN = (256, 128)
N_CLASSES = 10
SECTIONS = ("accuracy", "speed", "out-of-core", "memory")

TARGETS = {
    "accuracy": 0.98,  # test accuracy, at least
    "epoch_speedup": 2.5,  # scikit-learn steady epoch / ours, at least
    "fit_speedup": 1.5,  # scikit-learn 10-epoch fit / ours (compile included), at least
    "ooc_ratio": 0.95,  # on-disk speed / in-memory speed, at least
    "peak_rss_mb": 1536.0,  # peak RSS of a 1-epoch fit over the big store, at most
    "rss_anon_above_mb": 400.0,  # peak RssAnon of a fit above its start, any store size, at most
    "store_gb": 10.0,  # the big store, at least
}

# memory section: a small, fast network over wide float32 rows
RSS_FEATURES = 1000
RSS_HIDDEN = (64,)
RSS_BATCH = 1000
RSS_CONFIGS = ((RSS_HIDDEN, RSS_BATCH), (HIDDEN, "auto"))  # (hidden_layer_sizes, batch_size)
RSS_SMALL_GB = 1.5  # the store measured beside --size-gb's


# ----------------------------------------------------------------------------- helpers


def _peak_rss_mb():
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's over fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


_rss_mb, _PeakSampler = status_mb, PeakSampler


def _du_gb(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**30


def _mnist(n_train=None, n_test=None):
    """MNIST as float32 in [0, 1] and int64 labels (load_mnist already scales)."""
    from pipeline.datasets import load_mnist

    X, y = load_mnist(split="train")
    Xt, yt = load_mnist(split="test")
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1, (X.dtype, X.max())
    return X[:n_train], y[:n_train], Xt[:n_test], yt[:n_test]


def _estimator(lib, **kw):
    params = dict(hidden_layer_sizes=HIDDEN, random_state=0)
    params.update(kw)
    if lib == "ours":
        import pipeline

        return pipeline.MLPClassifier(**params)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(**params)


def train_flops_per_sample(sizes):
    """FLOPs of one training sample through dense layers ``sizes`` (input first).

    Forward: 2 * in * out per layer (one multiply-add). Backward: the weight
    gradient of every layer (2 * in * out) and the input gradient of every layer but
    the first (2 * in * out). Biases, activations, the loss and the optimizer update
    are O(units), left out.
    """
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=False)]
    forward = 2 * sum(macs)
    backward = 2 * sum(macs) + 2 * sum(macs[1:])
    return forward + backward


# ----------------------------------------------------------------------------- children


def _child_fit(spec):
    """Time ``fit`` (fresh process: ours compiles here), score, then steady epochs."""
    X, y, Xt, yt = _mnist(spec["n_train"], spec["n_test"])
    out = {"n_train": len(X), "n_test": len(Xt)}
    if spec["input"] == "store":
        from pipeline.store import open as open_store

        out["page_cache_dropped"] = _drop_page_cache()
        ds = open_store(spec["store"])
        Xf, yf = ds.X, ds.y
    else:
        Xf, yf = X, y
    clf = _estimator(spec["lib"], max_iter=spec["fit_epochs"])
    t0, c0 = time.perf_counter(), time.process_time()
    clf.fit(Xf, yf)
    out["fit_s"] = time.perf_counter() - t0
    out["fit_cpu_s"] = time.process_time() - c0
    out["n_iter"] = int(clf.n_iter_)
    out["final_loss"] = float(clf.loss_)
    t0 = time.perf_counter()
    out["accuracy"] = float(clf.score(Xt, yt))
    out["score_s"] = time.perf_counter() - t0
    if spec.get("steady_epochs"):
        # a second estimator: ours reuses the compiled step, so only epoch 1 of a
        # *first* partial_fit in a process would compile; time every epoch anyway
        clf = _estimator(spec["lib"])
        classes = np.arange(N_CLASSES)
        times, cpu = [], []
        for _ in range(1 + spec["steady_epochs"]):
            t0, c0 = time.perf_counter(), time.process_time()
            clf.partial_fit(X, y, classes=classes)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out["epoch_s"], out["epoch_cpu_s"] = times, cpu
    out["peak_rss_mb"] = _peak_rss_mb()
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def _child_first_epoch(spec):
    """The first ``partial_fit`` epoch of a fresh process (compilation included)."""
    X, y, _, _ = _mnist(spec["n_train"], 1)
    clf = _estimator(spec["lib"])
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        clf.partial_fit(X, y, classes=np.arange(N_CLASSES))
        times.append(time.perf_counter() - t0)
    return {"epoch_s": times}


def _child_out_of_core(spec):
    """Steady ``fit`` from the store (page cache dropped) vs from numpy, alternated."""
    from pipeline.store import open as open_store

    X, y, _, _ = _mnist(spec["n_train"], 1)
    ds = open_store(spec["store"])
    # compile once (one chunk shape for both inputs: checked below by timing)
    for Xf, yf in ((ds.X, ds.y), (X, y)):
        _estimator("ours", max_iter=1).fit(Xf, yf)
    rows, dropped = [], True
    for _ in range(spec["repeats"]):
        row = {}
        for name, Xf, yf in (("disk", ds.X, ds.y), ("memory", X, y)):
            if name == "disk":
                dropped &= _drop_page_cache()
            clf = _estimator("ours", max_iter=spec["epochs"])
            t0 = time.perf_counter()
            clf.fit(Xf, yf)
            row[name] = time.perf_counter() - t0
            assert clf.n_iter_ == spec["epochs"], clf.n_iter_
        rows.append(row)
    return {"rows": rows, "page_cache_dropped": dropped, "peak_rss_mb": _peak_rss_mb()}


def _child_memory(spec):
    """Peak RSS, and peak RssAnon above the start, of a 1-epoch fit over a store, from a
    fresh process. The start is taken after ``import pipeline`` and JAX's backend start."""
    import jax

    import pipeline
    from pipeline.store import open as open_store

    dropped = _drop_page_cache()
    rss_start = _rss_mb()
    jax.numpy.zeros(1).block_until_ready()  # the backend starts (threads, allocator)
    anon_start = _rss_mb("RssAnon")
    ds = open_store(spec["store"])
    clf = pipeline.MLPClassifier(
        hidden_layer_sizes=tuple(spec.get("hidden", RSS_HIDDEN)),
        batch_size=spec.get("batch_size", RSS_BATCH),
        max_iter=1,
        random_state=0,
    )
    t0 = time.perf_counter()
    with _PeakSampler() as anon:
        clf.fit(ds.X, ds.y)
    fit_s = time.perf_counter() - t0
    return {
        "fit_s": fit_s,
        "n_iter": int(clf.n_iter_),
        "loss": float(clf.loss_),
        "rss_after_imports_mb": rss_start,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_anon_start_mb": anon_start,
        "peak_rss_anon_mb": anon.peak_mb,
        "rss_anon_above_mb": anon.peak_mb - anon_start,
        "page_cache_dropped": dropped,
    }


def _jax_matmul(matmul, a, b):
    return lambda: matmul(a, b).block_until_ready()


def _np_matmul(a, b):
    return lambda: a @ b


def _child_peak(spec):
    """Best float32 GFLOP/s of a jitted JAX matmul (and numpy's BLAS, for reference)."""
    import jax
    import jax.numpy as jnp

    out = {}
    matmul = jax.jit(jnp.matmul)
    for n in spec["sizes"]:
        ka, kb = jax.random.split(jax.random.key(0))
        a = jax.random.normal(ka, (n, n), jnp.float32)
        b = jax.random.normal(kb, (n, n), jnp.float32)
        an, bn = np.asarray(a), np.asarray(b)
        for lib, f in (("jax", _jax_matmul(matmul, a, b)), ("numpy", _np_matmul(an, bn))):
            f()  # compile / warm up
            times = []
            for _ in range(spec["repeats"]):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            out[f"{lib}_{n}"] = 2 * n**3 / min(times) / 1e9
    return out


CHILDREN = {
    "fit": _child_fit,
    "first_epoch": _child_first_epoch,
    "out_of_core": _child_out_of_core,
    "memory": _child_memory,
    "peak": _child_peak,
}


def _run_child(spec, cache={}):  # noqa: B006 - a per-run memo of identical children
    key = json.dumps(spec, sort_keys=True)
    if key not in cache:
        res = subprocess.run(
            [sys.executable, __file__, "--child", key],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        if res.returncode:
            raise RuntimeError(f"child {spec} failed:\n{res.stderr[-4000:]}")
        cache[key] = json.loads(res.stdout.strip().splitlines()[-1])
    return cache[key]


# ----------------------------------------------------------------------------- sections


class Config:
    def __init__(self, args):
        self.quick = args.quick
        self.dir = Path(args.dir)
        self.n_train = 10_000 if args.quick else None
        self.n_test = 2_000 if args.quick else None
        self.fit_epochs = 2 if args.quick else 10
        self.steady_epochs = args.steady_epochs or (2 if args.quick else 5)
        self.ooc_epochs = 1 if args.quick else 3
        self.ooc_repeats = 1 if args.quick else 5
        self.size_gb = args.size_gb if args.size_gb is not None else (0.25 if args.quick else 10.0)
        self.clean = args.clean


_MNIST_STORE: dict = {}


def mnist_store(cfg):
    """Write MNIST's training split (float32 in [0, 1]) to a Zarr store, once per run."""
    memo = _MNIST_STORE
    if "path" not in memo:
        import pipeline

        X, y, _, _ = _mnist(cfg.n_train, 1)
        path = cfg.dir / f"mnist-train-{len(X)}.zarr"
        t0 = time.perf_counter()
        ds = pipeline.store.write(path, X, y, overwrite=True)
        memo.update(
            path=path,
            write_s=time.perf_counter() - t0,
            n=len(X),
            chunk_rows=ds.attrs["chunk_rows"],
            disk_mb=_du_gb(path) * 1024,
        )
    return memo


def _fit_spec(cfg, lib, input, steady=False, store=None):
    spec = {
        "kind": "fit",
        "lib": lib,
        "input": input,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "fit_epochs": cfg.fit_epochs,
        "steady_epochs": cfg.steady_epochs if steady else 0,
    }
    if store:
        spec["store"] = str(store)
    return spec


def accuracy(cfg):
    store = mnist_store(cfg)
    ours = _run_child(_fit_spec(cfg, "ours", "store", store=store["path"]))
    sk = _run_child(_fit_spec(cfg, "sklearn", "numpy", steady=True))
    return {
        "store": {k: (str(v) if k == "path" else v) for k, v in store.items()},
        "ours_from_store": ours,
        "sklearn_in_memory": sk,
    }


def speed(cfg):
    sk = _run_child(_fit_spec(cfg, "sklearn", "numpy", steady=True))
    ours = _run_child(_fit_spec(cfg, "ours", "numpy", steady=True))
    first = _run_child({"kind": "first_epoch", "lib": "ours", "n_train": cfg.n_train})
    sizes = (2048,) if cfg.quick else (2048, 4096)
    peak = _run_child({"kind": "peak", "sizes": list(sizes), "repeats": 3 if cfg.quick else 6})
    n = ours["n_train"]
    flops = train_flops_per_sample((784, *HIDDEN, N_CLASSES))
    ours_epoch = statistics.median(ours["epoch_s"][1:])
    sk_epoch = statistics.median(sk["epoch_s"][1:])
    jax_peak = max(v for k, v in peak.items() if k.startswith("jax"))
    np_peak = max(v for k, v in peak.items() if k.startswith("numpy"))
    ours_gflops = flops * n / ours_epoch / 1e9
    sk_gflops = flops * n / sk_epoch / 1e9
    return {
        "n_train": n,
        "ours_in_memory": ours,
        "sklearn_in_memory": sk,
        "ours_first_epochs_fresh_process": first["epoch_s"],
        "ours_epoch_s": ours_epoch,
        "sklearn_epoch_s": sk_epoch,
        "epoch_speedup": sk_epoch / ours_epoch,
        "ours_epoch_cpu_s": statistics.median(ours["epoch_cpu_s"][1:]),
        "sklearn_epoch_cpu_s": statistics.median(sk["epoch_cpu_s"][1:]),
        "fit_speedup": sk["fit_s"] / ours["fit_s"],
        "compile_overhead_s": first["epoch_s"][0] - ours_epoch,
        "matmul_gflops": peak,
        "train_flops_per_sample": flops,
        "ours_gflops": ours_gflops,
        "sklearn_gflops": sk_gflops,
        "ours_fraction_of_jax_peak": ours_gflops / jax_peak,
        "sklearn_fraction_of_numpy_peak": sk_gflops / np_peak,
    }


def out_of_core(cfg):
    store = mnist_store(cfg)
    res = _run_child(
        {
            "kind": "out_of_core",
            "store": str(store["path"]),
            "n_train": cfg.n_train,
            "epochs": cfg.ooc_epochs,
            "repeats": cfg.ooc_repeats,
        }
    )
    ratios = [r["memory"] / r["disk"] for r in res["rows"]]
    res.update(
        epochs=cfg.ooc_epochs,
        disk_epoch_s=statistics.median(r["disk"] for r in res["rows"]) / cfg.ooc_epochs,
        memory_epoch_s=statistics.median(r["memory"] for r in res["rows"]) / cfg.ooc_epochs,
        ratios=ratios,
        ratio=statistics.median(ratios),
        store_disk_mb=store["disk_mb"],
        chunk_rows=store["chunk_rows"],
    )
    return res


def _big_store(cfg, size_gb=None):
    """A memory section's store of ``size_gb`` (default: ``--size-gb``) GiB: reused when a
    valid one of this size exists."""
    from pipeline.datasets import make_classification_store
    from pipeline.store import open as open_store

    size_gb = cfg.size_gb if size_gb is None else size_gb
    n = math.ceil(size_gb * 2**30 / (RSS_FEATURES * 4))  # GiB, at least
    path = cfg.dir / f"mlp-rss-{n}x{RSS_FEATURES}.zarr"
    try:
        ds = open_store(path)
        if len(ds) == n and ds.X.shape[1:] == (RSS_FEATURES,):
            return {"path": path, "n": n, "generated": False, "generate_s": None}
    except Exception:  # missing or unreadable: (re)generate
        pass
    free_gb = shutil.disk_usage(cfg.dir).free / 2**30
    need_gb = size_gb * 1.05 + 2  # noise features barely compress; leave 2 GB spare
    if free_gb < need_gb:
        fit_gb = max(0.0, (free_gb - 2) / 1.05)
        raise RuntimeError(
            f"{free_gb:.1f} GB free under {cfg.dir}, a {size_gb:g} GB store needs about "
            f"{need_gb:.1f} GB; rerun with --size-gb {fit_gb:.1f} or less (the target asks >= 10)"
        )
    t0 = time.perf_counter()
    make_classification_store(path, n, RSS_FEATURES, random_state=0, overwrite=True)
    return {"path": path, "n": n, "generated": True, "generate_s": time.perf_counter() - t0}


def _rss_anon_rows(cfg, big):
    """Peak RssAnon above the start for each of RSS_CONFIGS, on a 1.5 GiB store and the
    big one (quick: the big one only, 0.25 GiB)."""
    rows = []
    for size_gb in sorted({cfg.size_gb} if cfg.quick else {RSS_SMALL_GB, cfg.size_gb}):
        store = big if size_gb == cfg.size_gb else _big_store(cfg, size_gb)
        for hidden, batch_size in RSS_CONFIGS:
            spec = {"store": str(store["path"]), "hidden": list(hidden), "batch_size": batch_size}
            res = _run_child({"kind": "memory", **spec})  # the same child as above: memoised
            rows.append(
                dict(
                    store_gb=store["n"] * RSS_FEATURES * 4 / 2**30,
                    hidden_layer_sizes=list(hidden),
                    batch_size=batch_size,
                    fit_s=res["fit_s"],
                    rss_anon_start_mb=res["rss_anon_start_mb"],
                    peak_rss_anon_mb=res["peak_rss_anon_mb"],
                    rss_anon_above_mb=res["rss_anon_above_mb"],
                )
            )
        if store is not big and cfg.clean:
            shutil.rmtree(store["path"])
    return rows


def memory(cfg):
    store = _big_store(cfg)
    spec = {"store": str(store["path"]), "hidden": list(RSS_HIDDEN), "batch_size": RSS_BATCH}
    res = _run_child({"kind": "memory", **spec})
    nbytes = store["n"] * RSS_FEATURES * 4
    res.update(
        store=str(store["path"]),
        n_samples=store["n"],
        n_features=RSS_FEATURES,
        store_gb=nbytes / 2**30,
        store_disk_gb=_du_gb(store["path"]),
        generated=store["generated"],
        generate_s=store["generate_s"],
        mb_per_s=nbytes / 2**20 / res["fit_s"],
        samples_per_s=store["n"] / res["fit_s"],
        hidden_layer_sizes=list(RSS_HIDDEN),
        batch_size=RSS_BATCH,
        rss_anon=_rss_anon_rows(cfg, store),
    )
    if cfg.clean:
        shutil.rmtree(store["path"])
    return res


RUN = {"accuracy": accuracy, "speed": speed, "out-of-core": out_of_core, "memory": memory}


# ----------------------------------------------------------------------------- report


def machine():
    import dask
    import equinox
    import jax
    import jaxlib
    import optax
    import sklearn
    import zarr
    from threadpoolctl import threadpool_info

    cpu = cpu_name()
    np.ones((2, 2)) @ np.ones((2, 2))  # load numpy's BLAS so threadpoolctl sees it
    blas = [
        f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_backend": jax.default_backend(),
        "equinox": equinox.__version__,
        "optax": optax.__version__,
        "sklearn": sklearn.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "load_avg_at_start": os.getloadavg(),
    }


def report(result):
    """A markdown table: measure, ours, scikit-learn (or reference), ratio, target, verdict."""
    rows, T = [], TARGETS

    def add(section, measure, ours, ref="", ratio="", target="", ok=None):
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        rows.append((section, measure, ours, ref, ratio, target, verdict))

    if "accuracy" in result:
        a = result["accuracy"]
        o, s = a["ours_from_store"], a["sklearn_in_memory"]
        acc = o["accuracy"]
        add(
            "accuracy",
            f"test accuracy after {o['n_iter']} epochs (ours fit from the Zarr store)",
            f"{acc:.2%}",
            f"{s['accuracy']:.2%}",
            f"{acc - s['accuracy']:+.2%}",
            f">= {T['accuracy']:.1%}",
            acc >= T["accuracy"],
        )
        add(
            "accuracy",
            "fit seconds (ours: from store, fresh process; sklearn: in memory)",
            f"{o['fit_s']:.1f}",
            f"{s['fit_s']:.1f}",
            f"{s['fit_s'] / o['fit_s']:.2f}x",
        )
    if "speed" in result:
        p = result["speed"]
        o, s = p["ours_in_memory"], p["sklearn_in_memory"]
        oe, se = o["epoch_s"][1:], s["epoch_s"][1:]
        add(
            "speed",
            f"steady epoch seconds (median of the {len(oe)} after the 1st)",
            f"{p['ours_epoch_s']:.2f}",
            f"{p['sklearn_epoch_s']:.2f}",
            f"{p['epoch_speedup']:.2f}x",
            f">= {T['epoch_speedup']}x",
            p["epoch_speedup"] >= T["epoch_speedup"],
        )
        add(
            "speed",
            "steady epoch seconds, fastest / slowest of those",
            f"{min(oe):.2f} / {max(oe):.2f}",
            f"{min(se):.2f} / {max(se):.2f}",
        )
        add(
            "speed",
            "steady epoch CPU seconds, all threads (less sensitive to other load)",
            f"{p['ours_epoch_cpu_s']:.2f}",
            f"{p['sklearn_epoch_cpu_s']:.2f}",
            f"{p['sklearn_epoch_cpu_s'] / p['ours_epoch_cpu_s']:.2f}x",
        )
        add(
            "speed",
            f"whole {o['n_iter']}-epoch fit seconds, fresh process (compile included)",
            f"{o['fit_s']:.1f}",
            f"{s['fit_s']:.1f}",
            f"{p['fit_speedup']:.2f}x",
            f">= {T['fit_speedup']}x",
            p["fit_speedup"] >= T["fit_speedup"],
        )
        first = p["ours_first_epochs_fresh_process"]
        add(
            "speed",
            "1st epoch of a fresh process (ours: compiles) / its 2nd, seconds",
            f"{first[0]:.1f} / {first[1]:.1f}",
            f"{s['epoch_s'][0]:.1f} / {s['epoch_s'][1]:.1f}",
        )
        mm = p["matmul_gflops"]

        def by_size(lib):
            return ", ".join(
                f"{k.split('_')[1]}: {v:.0f}" for k, v in mm.items() if k.startswith(lib)
            )

        add(
            "speed",
            "float32 matmul peak GFLOP/s by size (ours: jax jit; sklearn: numpy BLAS)",
            by_size("jax"),
            by_size("numpy"),
        )
        add(
            "speed",
            f"training GFLOP/s at the median epoch "
            f"({p['train_flops_per_sample'] / 1e6:.2f} MFLOP/sample) and share of that peak",
            f"{p['ours_gflops']:.1f} ({p['ours_fraction_of_jax_peak']:.0%})",
            f"{p['sklearn_gflops']:.1f} ({p['sklearn_fraction_of_numpy_peak']:.0%})",
        )
        add(
            "speed",
            "test accuracy of these in-memory fits",
            f"{o['accuracy']:.2%}",
            f"{s['accuracy']:.2%}",
        )
    if "out-of-core" in result:
        c = result["out-of-core"]
        add(
            "out-of-core",
            "steady epoch seconds of fit: ours from the store (page cache "
            f"dropped: {c['page_cache_dropped']}) vs ours on numpy; ratio: disk speed / memory "
            f"speed, median of {len(c['ratios'])} pairs",
            f"{c['disk_epoch_s']:.2f}",
            f"{c['memory_epoch_s']:.2f} (ours, numpy)",
            f"{c['ratio']:.3f}",
            f">= {T['ooc_ratio']}",
            c["ratio"] >= T["ooc_ratio"],
        )
        add("out-of-core", "ratio of each pair", ", ".join(f"{r:.2f}" for r in c["ratios"]))
    if "memory" in result:
        m = result["memory"]
        add(
            "memory",
            f"store {m['n_samples']:,} x {m['n_features']} float32",
            f"{m['store_gb']:.2f} GiB ({m['store_disk_gb']:.2f} GiB on disk)",
            f"generated in {m['generate_s']:.0f} s" if m["generated"] else "reused",
            "",
            f">= {T['store_gb']:g} GiB",
            m["store_gb"] >= T["store_gb"],
        )
        add(
            "memory",
            f"1-epoch fit, hidden {tuple(m['hidden_layer_sizes'])}, batch "
            f"{m['batch_size']}: seconds, MB/s, samples/s",
            f"{m['fit_s']:.0f} s, {m['mb_per_s']:.0f} MB/s, {m['samples_per_s']:,.0f}/s",
        )
        add(
            "memory",
            "peak RSS (VmHWM) of that fit's fresh process",
            f"{m['peak_rss_mb']:,.0f} MB",
            f"(after imports: {m['rss_after_imports_mb']:.0f} MB)",
            "",
            f"<= {T['peak_rss_mb']:,.0f} MB",
            m["peak_rss_mb"] <= T["peak_rss_mb"],
        )
        for r in m.get("rss_anon", []):
            add(
                "memory",
                f"peak RssAnon above the start (after imports and JAX's start), 1-epoch fit "
                f"over {r['store_gb']:.2f} GiB, hidden {tuple(r['hidden_layer_sizes'])}, "
                f"batch {r['batch_size']}",
                f"{r['rss_anon_above_mb']:,.0f} MB",
                f"(start {r['rss_anon_start_mb']:.0f} MB; fit {r['fit_s']:.0f} s)",
                "",
                f"<= {T['rss_anon_above_mb']:,.0f} MB",
                r["rss_anon_above_mb"] <= T["rss_anon_above_mb"],
            )
    columns = ["section", "measure", "pipeline", "scikit-learn", "ratio", "target", "result"]
    return markdown_table(columns, rows)


def _remove_mnist_store():
    store = _MNIST_STORE.get("path")
    if store is not None and Path(store).exists():
        shutil.rmtree(store)


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="small data, few epochs: a smoke run")
    p.add_argument("--size-gb", type=float, help="memory section's store in GiB (default 10)")
    p.add_argument("--steady-epochs", type=int, help="epochs timed after the first (default 5)")
    p.add_argument("--clean", action="store_true", help="remove the big store at the end")
    args = p.parse_args()
    if args.child:
        return child_main(args.child, CHILDREN)
    cfg = Config(args)
    cfg.dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "quick": cfg.quick, "targets": TARGETS}
    print(json.dumps(result["machine"]), flush=True)
    sys.stdout.flush()
    run_sections(args.only or SECTIONS, RUN, cfg, result, args.json, cleanup=_remove_mnist_store)
    if cfg.quick:
        print(
            "QUICK RUN (10k MNIST samples, 2 epochs, 0.25 GB store): the targets are for "
            "the full run"
        )
    print(report(result))
    print_totals(result)


if __name__ == "__main__":
    main()
