"""Hyperparameter search against scikit-learn and dask-ml: speed and memory, in one run.

Measures, on one machine in one run:

1. ``speed``: a grid search over the last step of a pipeline whose first steps are
   costly and the same for every candidate: ``StandardScaler -> PCA(n_components=50,
   svd_solver="full") -> SGDClassifier(random_state=0, max_iter=20, tol=None)``,
   12 candidates (``alpha`` x 4, ``penalty`` x 3), ``cv=5``, on
   ``make_classification(20000, 300, random_state=0)`` (float64). Wall time of a
   whole ``fit`` (refit included) of

   - scikit-learn's ``GridSearchCV(n_jobs=2)`` (joblib's loky processes),
   - dask-ml's ``GridSearchCV`` at its defaults (``scheduler=None``: dask's threaded
     scheduler, ``n_jobs=-1``: one worker per core; it merges equal pipeline
     prefixes too),
   - ``pipeline.model_selection.GridSearchCV`` at its defaults (the active dask
     scheduler, threads by default; one merged graph),

   each ``--repeats`` (3) times in one child process, the order rotated between
   rounds; the median of each. Targets: ours / scikit-learn <= 0.5 and ours / dask-ml
   <= 1.0. The two dask searches run a second time in each round inside
   ``threadpoolctl.threadpool_limits(1, "blas")``: joblib gives each of scikit-learn's
   loky workers ``cpu_count // n_jobs`` BLAS threads, dask's threads get no limit,
   and 2 threads x 2 OpenBLAS threads on 2 busy cores make every SVD spin. The
   three must agree: same ``best_params_`` and ``cv_results_["params"]``, and
   ``mean_test_score`` equal to ``np.allclose``. A first, untimed round on a
   smaller sample (which also starts loky's workers) runs the same search with
   subclasses of the three steps that log every ``fit``: how many times each library
   fits the scaler, the PCA and the classifier (scikit-learn: 12 x 5 + 1 of each;
   a search that merges prefixes: 5 + 1 scalers and PCAs).
2. ``memory``: ``GridSearchCV(pipeline.MLPClassifier(hidden_layer_sizes=(32,),
   max_iter=1, random_state=0), {"alpha": [1e-4, 1e-3]}, cv=3)`` over the lazy
   ``X, y`` of ``pipeline.store.open`` on a float32 store of 600,000 x 640 (1.5 GB,
   written chunk by chunk by ``make_classification_store``, default chunks), in a
   fresh child process; its peak RSS (the child's own VmHWM, and psutil polling of
   the child and its descendants every 0.1 s: the larger counts). Target: peak RSS <
   budget = store size / 3. Beside it, for reference, the peak RSS of one plain
   ``fit`` + ``score`` of the same estimator over the whole store (no search).

Every measurement runs in a child process of its own (``--child``), started as a
fresh interpreter (not forked), so each starts from a clean state.

Usage::

    python benchmarks/search.py --json /tmp/search.json
    python benchmarks/search.py --quick             # a smoke run; its numbers are not the targets'
    python benchmarks/search.py --memory-rows 2000000   # a larger store (4.8 GiB; budget / 3)
    python benchmarks/search.py --only speed            # one section (repeatable)

dask-ml is not a dependency of the project: install it beside it (``pip install
dask-ml psutil``); without it the dask-ml column stays empty. The memory section's
store goes to ``--dir`` (default benchmarks/_data, git-ignored) and is reused by
later runs when complete (``--clean`` removes it at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from _common import base_parser, child_main, cpu_name, markdown_table, print_totals, run_sections
from _common import drop_page_cache as _drop_page_cache
from sklearn.decomposition import PCA
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
SECTIONS = ("speed", "memory")
LIBS = ("ours", "sklearn", "dask-ml")
BLAS1 = "+blas1"  # variant: the same search inside threadpoolctl.threadpool_limits(1, "blas")

TARGETS = {
    "ours_over_sklearn": 0.5,  # median wall time ours / scikit-learn, at most
    "ours_over_daskml": 1.0,  # median wall time ours / dask-ml, at most
    "budget_fraction": 1 / 3,  # memory budget as a fraction of the store's size
}

# speed section
GRID = {
    "clf__alpha": [1e-5, 1e-4, 1e-3, 1e-2],
    "clf__penalty": ["l2", "l1", "elasticnet"],
}
N_COMPONENTS = 50
SGD_PARAMS = dict(random_state=0, max_iter=20, tol=None)  # tol=None: exactly 20 epochs
CV = 5

# memory section
MEM_FEATURES = 640
MEM_HIDDEN = (32,)
MEM_GRID = {"alpha": [1e-4, 1e-3]}
MEM_CV = 3

FIT_LOG_ENV = "PIPELINE_SEARCH_BENCH_FIT_LOG"


# ----------------------------------------------------------------------------- helpers


def _status_mb(field):
    """A field of /proc/self/status in MiB (VmHWM: peak RSS; VmRSS: current)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _du_gb(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**30


def _log_fit(name):
    """Append ``name`` to the fit log (a file: counts fits in threads and processes)."""
    path = os.environ.get(FIT_LOG_ENV)
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)


class CountingScaler(StandardScaler):
    # TransformerMixin.fit_transform calls fit: one log line per fit either way
    def fit(self, X, y=None, sample_weight=None):
        _log_fit("scaler")
        return super().fit(X, y, sample_weight=sample_weight)


class CountingPCA(PCA):
    # PCA.fit and PCA.fit_transform both call _fit, neither calls the other
    def fit(self, X, y=None):
        _log_fit("pca")
        return super().fit(X, y)

    def fit_transform(self, X, y=None):
        _log_fit("pca")
        return super().fit_transform(X, y)


class CountingSGD(SGDClassifier):
    def fit(self, X, y, coef_init=None, intercept_init=None, sample_weight=None):
        _log_fit("clf")
        return super().fit(
            X, y, coef_init=coef_init, intercept_init=intercept_init, sample_weight=sample_weight
        )


def _pipeline(counting=False):
    from sklearn.pipeline import Pipeline

    scaler, pca, sgd = (
        (CountingScaler, CountingPCA, CountingSGD)
        if counting
        else (StandardScaler, PCA, SGDClassifier)
    )
    return Pipeline(
        [
            ("scale", scaler()),
            ("pca", pca(n_components=N_COMPONENTS, svd_solver="full")),
            ("clf", sgd(**SGD_PARAMS)),
        ]
    )


def _search(lib, estimator, grid, cv):
    if lib == "sklearn":
        from sklearn.model_selection import GridSearchCV

        return GridSearchCV(estimator, grid, cv=cv, n_jobs=2)
    if lib == "dask-ml":
        from dask_ml.model_selection import GridSearchCV

        return GridSearchCV(estimator, grid, cv=cv)
    from pipeline.model_selection import GridSearchCV

    return GridSearchCV(estimator, grid, cv=cv)


def _available(lib):
    """None if ``lib``'s GridSearchCV imports, else the error as a string."""
    module = {
        "ours": "pipeline.model_selection",
        "sklearn": "sklearn.model_selection",
        "dask-ml": "dask_ml.model_selection",
    }[lib]
    try:
        __import__(module)
        return None
    except Exception as exc:  # ImportError, or a peer broken by the installed dask
        return f"{type(exc).__name__}: {exc}"


def _summary(search):
    res = search.cv_results_
    return {
        "best_params": {k: _jsonable(v) for k, v in search.best_params_.items()},
        "best_score": float(search.best_score_),
        "params": [{k: _jsonable(v) for k, v in p.items()} for p in res["params"]],
        "mean_test_score": [float(s) for s in res["mean_test_score"]],
    }


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def _scheduler_note(lib):
    if lib == "sklearn":
        return "joblib loky, n_jobs=2 (processes)"
    import dask

    active = dask.config.get("scheduler", None)
    if lib == "dask-ml":
        from dask_ml.model_selection._search import _normalize_n_jobs

        workers = _normalize_n_jobs(-1)  # None: the threaded pool's default, one per core
        return (
            f"scheduler=None -> {active or 'dask.threaded.get'}, n_jobs=-1 -> "
            f"{workers or os.cpu_count()} workers"
        )
    return f"scheduler=None -> the active one: {active or 'threads (dask default)'}"


# ----------------------------------------------------------------------------- children


def _child_speed(spec):
    """Count fits on a small sample (untimed warm-up), then time rotated rounds."""
    from sklearn.datasets import make_classification

    out = {"libs": {}, "order": [], "load_avg_1min": [os.getloadavg()[0]]}
    libs = [lib for lib in LIBS if not spec["missing"].get(lib)]

    # 1. fit counts (and warm-up: imports, loky's workers)
    Xc, yc = make_classification(spec["n_count"], spec["n_features"], random_state=0)
    log = Path(os.environ[FIT_LOG_ENV])
    for lib in libs:
        rec = out["libs"].setdefault(lib, {"scheduler": _scheduler_note(lib)})
        log.write_text("")
        t0 = time.perf_counter()
        try:
            _search(lib, _pipeline(counting=True), GRID, CV).fit(Xc, yc)
        except Exception:
            rec["error"] = traceback.format_exc()[-4000:]
            continue
        rec["count_fit_s"] = time.perf_counter() - t0
        lines = log.read_text().split()
        rec["fits"] = {name: lines.count(name) for name in ("scaler", "pca", "clf")}
    libs = [lib for lib in libs if "error" not in out["libs"][lib]]
    # the dask searches again with BLAS at 1 thread inside them (scikit-learn's loky
    # workers get cpu_count // n_jobs = 1 from joblib; dask's threads get no limit)
    libs += [f"{lib}{BLAS1}" for lib in ("ours", "dask-ml") if lib in libs]
    for lib in libs:
        out["libs"].setdefault(lib, {"scheduler": _scheduler_note(lib.removesuffix(BLAS1))})

    # 2. timed rounds, order rotated
    from threadpoolctl import threadpool_limits

    X, y = make_classification(spec["n_samples"], spec["n_features"], random_state=0)
    out["n_samples"], out["n_features"], out["dtype"] = len(X), X.shape[1], str(X.dtype)
    for r in range(spec["repeats"]):
        order = libs[r % len(libs) :] + libs[: r % len(libs)] if libs else []
        out["order"].append(order)
        for lib in order:
            rec = out["libs"][lib]
            if "error" in rec:
                continue
            search = _search(lib.removesuffix(BLAS1), _pipeline(), GRID, CV)
            limit = (
                threadpool_limits(limits=1, user_api="blas")
                if lib.endswith(BLAS1)
                else contextlib.nullcontext()
            )
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                with limit:
                    search.fit(X, y)
            except Exception:
                rec["error"] = traceback.format_exc()[-4000:]
                continue
            rec.setdefault("wall_s", []).append(time.perf_counter() - t0)
            rec.setdefault("cpu_s", []).append(time.process_time() - c0)
            if r == 0:
                rec.update(_summary(search))
        out["load_avg_1min"].append(os.getloadavg()[0])
    return out


def _child_memory(spec):
    """Peak RSS of a grid search of our MLP over a store's lazy X, y."""
    rss_start = _status_mb("VmRSS")
    import pipeline
    from pipeline.model_selection import GridSearchCV
    from pipeline.store import open as open_store

    dropped = _drop_page_cache()
    ds = open_store(spec["store"])
    rss_imports = _status_mb("VmRSS")
    search = GridSearchCV(
        pipeline.MLPClassifier(
            hidden_layer_sizes=MEM_HIDDEN, max_iter=spec["max_iter"], random_state=0
        ),
        MEM_GRID,
        cv=MEM_CV,
    )
    t0 = time.perf_counter()
    search.fit(ds.X, ds.y)
    fit_s = time.perf_counter() - t0
    out = _summary(search)
    out.update(
        fit_s=fit_s,
        scheduler=_scheduler_note("ours"),
        rss_start_mb=rss_start,
        rss_after_imports_mb=rss_imports,
        peak_rss_mb=_status_mb("VmHWM"),
        page_cache_dropped=dropped,
        load_avg_1min=os.getloadavg()[0],
    )
    return out


def _child_memory_fit(spec):
    """Reference: peak RSS of one fit + score of the same estimator, no search."""
    rss_start = _status_mb("VmRSS")
    import pipeline
    from pipeline.store import open as open_store

    dropped = _drop_page_cache()
    ds = open_store(spec["store"])
    rss_imports = _status_mb("VmRSS")
    clf = pipeline.MLPClassifier(
        hidden_layer_sizes=MEM_HIDDEN, max_iter=spec["max_iter"], random_state=0
    )
    t0 = time.perf_counter()
    clf.fit(ds.X, ds.y)
    fit_s = time.perf_counter() - t0
    peak_fit = _status_mb("VmHWM")
    t0 = time.perf_counter()
    score = float(clf.score(ds.X, ds.y))
    return {
        "fit_s": fit_s,
        "score_s": time.perf_counter() - t0,
        "train_score": score,
        "rss_start_mb": rss_start,
        "rss_after_imports_mb": rss_imports,
        "peak_rss_after_fit_mb": peak_fit,
        "peak_rss_mb": _status_mb("VmHWM"),
        "page_cache_dropped": dropped,
    }


CHILDREN = {"speed": _child_speed, "memory": _child_memory, "memory_fit": _child_memory_fit}


def _poll_peak(proc, stop, result):
    """Largest RSS sum of ``proc`` and its descendants, sampled every 0.1 s."""
    import psutil

    try:
        p = psutil.Process(proc.pid)
    except psutil.Error:
        return
    peak = 0
    while not stop.is_set():
        try:
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            break
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        peak = max(peak, total)
        result["polled_peak_mb"] = peak / 2**20
        stop.wait(0.1)


def _run_child(spec, env=None, poll=False):
    """Run ``spec`` in a fresh interpreter; its last stdout line is the JSON result."""
    child_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    polled, stop = {}, threading.Event()
    poller = None
    if poll:
        poller = threading.Thread(target=_poll_peak, args=(proc, stop, polled), daemon=True)
        poller.start()
    stdout, stderr = proc.communicate()
    stop.set()
    if poller is not None:
        poller.join()
    if proc.returncode:
        raise RuntimeError(f"child {spec['kind']} failed:\n{stderr[-4000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(polled)
    return res


# ----------------------------------------------------------------------------- sections


class Config:
    def __init__(self, args):
        self.quick = args.quick
        self.dir = Path(args.dir)
        self.repeats = args.repeats or 3
        self.n_samples = 5_000 if args.quick else 20_000
        self.n_features = 300
        self.n_count = 5_000  # the fit-counting warm-up round
        self.mem_rows = args.memory_rows or (60_000 if args.quick else 600_000)
        self.mem_max_iter = 1
        self.clean = args.clean


def _agreement(libs):
    """best_params_ equal, params in the same order, mean_test_score allclose (vs sklearn)."""
    ref = libs.get("sklearn")
    out = {}
    for lib, rec in libs.items():
        if lib == "sklearn" or ref is None or "mean_test_score" not in rec:
            continue
        same_params = rec["params"] == ref["params"]
        a, b = np.array(rec["mean_test_score"]), np.array(ref["mean_test_score"])
        out[lib] = {
            "same_best_params": rec["best_params"] == ref["best_params"],
            "same_params_order": same_params,
            "mean_test_score_allclose": bool(same_params and np.allclose(a, b)),
            "max_abs_diff": float(np.max(np.abs(a - b))) if same_params else None,
        }
    return out


def speed(cfg):
    missing = {lib: _available(lib) for lib in LIBS}
    with tempfile.NamedTemporaryFile(prefix="search-fits-", suffix=".log", delete=False) as f:
        log = f.name
    try:
        res = _run_child(
            {
                "kind": "speed",
                "n_samples": cfg.n_samples,
                "n_features": cfg.n_features,
                "n_count": cfg.n_count,
                "repeats": cfg.repeats,
                "missing": {k: v for k, v in missing.items() if v},
            },
            env={FIT_LOG_ENV: log},
        )
    finally:
        os.unlink(log)
    for lib, why in missing.items():
        if why:
            res["libs"][lib] = {"error": f"not importable: {why}"}
    for rec in res["libs"].values():
        if rec.get("wall_s"):
            rec["median_s"] = statistics.median(rec["wall_s"])
            rec["median_cpu_s"] = statistics.median(rec["cpu_s"])
    med = {lib: rec.get("median_s") for lib, rec in res["libs"].items()}
    if med.get("ours") and med.get("sklearn"):
        res["ours_over_sklearn"] = med["ours"] / med["sklearn"]
    if med.get("ours") and med.get("dask-ml"):
        res["ours_over_daskml"] = med["ours"] / med["dask-ml"]
    ob, db = med.get("ours" + BLAS1), med.get("dask-ml" + BLAS1)
    if ob and med.get("sklearn"):
        res["ours_blas1_over_sklearn"] = ob / med["sklearn"]
    if ob and db:
        res["ours_blas1_over_daskml_blas1"] = ob / db
    res["agreement_vs_sklearn"] = _agreement(res["libs"])
    res.update(
        grid=GRID,
        cv=CV,
        n_candidates=len(GRID["clf__alpha"]) * len(GRID["clf__penalty"]),
        n_components=N_COMPONENTS,
        sgd=SGD_PARAMS,
    )
    return res


def _mem_store(cfg):
    """The memory section's store: reused when a complete one of this size exists."""
    from pipeline.datasets import make_classification_store
    from pipeline.store import open as open_store

    n = cfg.mem_rows
    path = cfg.dir / f"search-rss-{n}x{MEM_FEATURES}.zarr"
    try:
        ds = open_store(path)
        if len(ds) == n and ds.X.shape[1:] == (MEM_FEATURES,):
            return {"path": path, "ds": ds, "generated": False, "generate_s": None}
    except Exception:  # missing or unreadable: (re)generate
        pass
    need_gb = n * MEM_FEATURES * 4 / 2**30 * 1.05 + 1
    free_gb = shutil.disk_usage(cfg.dir).free / 2**30
    if free_gb < need_gb:
        raise RuntimeError(f"{free_gb:.1f} GB free under {cfg.dir}, the store needs {need_gb:.1f}")
    t0 = time.perf_counter()
    ds = make_classification_store(path, n, MEM_FEATURES, random_state=0, overwrite=True)
    return {"path": path, "ds": ds, "generated": True, "generate_s": time.perf_counter() - t0}


def memory(cfg):
    why = _available("ours")
    if why:
        return {"error": f"not importable: {why}"}
    store = _mem_store(cfg)
    ds = store["ds"]
    nbytes = ds.X.nbytes + ds.y.nbytes
    budget_mb = nbytes / 2**20 * TARGETS["budget_fraction"]
    res = _run_child(
        {"kind": "memory", "store": str(store["path"]), "max_iter": cfg.mem_max_iter}, poll=True
    )
    res["peak_mb"] = max(res["peak_rss_mb"], res.get("polled_peak_mb", 0.0))
    ref = _run_child(
        {"kind": "memory_fit", "store": str(store["path"]), "max_iter": cfg.mem_max_iter},
        poll=True,
    )
    ref["peak_mb"] = max(ref["peak_rss_mb"], ref.get("polled_peak_mb", 0.0))
    res["plain_fit"] = ref
    res.update(
        store=str(store["path"]),
        n_samples=len(ds),
        n_features=MEM_FEATURES,
        chunk_rows=ds.attrs["chunk_rows"],
        store_mb=nbytes / 2**20,
        store_disk_mb=_du_gb(store["path"]) * 1024,
        budget_mb=budget_mb,
        passed=res["peak_mb"] < budget_mb,
        generated=store["generated"],
        generate_s=store["generate_s"],
        hidden_layer_sizes=list(MEM_HIDDEN),
        grid=MEM_GRID,
        cv=MEM_CV,
        max_iter=cfg.mem_max_iter,
    )
    if cfg.clean:
        shutil.rmtree(store["path"])
    return res


RUN = {"speed": speed, "memory": memory}


# ----------------------------------------------------------------------------- report


def machine():
    import dask
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
    versions = {}
    for name in ("distributed", "dask_ml", "jax", "psutil"):
        try:
            versions[name] = __import__(name).__version__
        except Exception as exc:
            versions[name] = f"unavailable ({type(exc).__name__})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "sklearn": sklearn.__version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        **versions,
        "load_avg_at_start": os.getloadavg(),
    }


def _fmt_s(rec):
    if rec.get("error"):
        return "error"
    if not rec.get("wall_s"):
        return ""
    runs = ", ".join(f"{t:.1f}" for t in rec["wall_s"])
    return f"**{rec['median_s']:.2f}** ({runs})"


def report(result):
    """A markdown table: measure, ours, scikit-learn, dask-ml, ratio, target, verdict."""
    rows, T = [], TARGETS

    def add(section, measure, ours="", sk="", dm="", ratio="", target="", ok=None):
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        rows.append((section, measure, ours, sk, dm, ratio, target, verdict))

    if "speed" in result:
        s = result["speed"]
        libs = s["libs"]
        o, k, d = (libs.get(lib, {}) for lib in ("ours", "sklearn", "dask-ml"))
        add(
            "speed",
            f"GridSearchCV wall seconds, median of {len(s['order'])} (each run): "
            f"{s['n_candidates']} candidates x cv={s['cv']}, {s['n_samples']:,} x "
            f"{s['n_features']} {s['dtype']}",
            _fmt_s(o),
            _fmt_s(k),
            _fmt_s(d),
        )
        if "ours_over_sklearn" in s:
            r = s["ours_over_sklearn"]
            add(
                "speed",
                "ours / scikit-learn (median wall time)",
                ratio=f"{r:.2f}",
                target=f"<= {T['ours_over_sklearn']}",
                ok=r <= T["ours_over_sklearn"],
            )
        if "ours_over_daskml" in s:
            r = s["ours_over_daskml"]
            add(
                "speed",
                "ours / dask-ml (median wall time)",
                ratio=f"{r:.2f}",
                target=f"<= {T['ours_over_daskml']}",
                ok=r <= T["ours_over_daskml"],
            )
        ob, db = libs.get("ours" + BLAS1, {}), libs.get("dask-ml" + BLAS1, {})
        if ob or db:
            add(
                "speed",
                "the same, dask searches inside threadpool_limits(1, 'blas') (joblib gives "
                "scikit-learn's loky workers 1 BLAS thread each; dask threads get none)",
                _fmt_s(ob),
                "(as above)",
                _fmt_s(db),
            )
        for key, label in (
            ("ours_blas1_over_sklearn", "ours (BLAS 1 thread) / scikit-learn"),
            ("ours_blas1_over_daskml_blas1", "ours / dask-ml, both BLAS 1 thread"),
        ):
            if key in s:
                add("speed", label + " (median wall time)", ratio=f"{s[key]:.2f}")

        def cpu(rec):
            return f"{rec['median_cpu_s']:.1f}" if rec.get("median_cpu_s") else ""

        add(
            "speed",
            "CPU seconds of the process, median (threads; scikit-learn's work runs in loky "
            "workers, not counted); BLAS 1 thread after the slash",
            " / ".join(x for x in (cpu(o), cpu(ob)) if x),
            "",
            " / ".join(x for x in (cpu(d), cpu(db)) if x),
        )
        if any("fits" in rec for rec in (o, k, d)):

            def fits(rec):
                f = rec.get("fits")
                return f"{f['scaler']} / {f['pca']} / {f['clf']}" if f else ""

            add(
                "speed",
                "fits of scaler / PCA / SGD in one search, refit included (counted)",
                fits(o),
                fits(k),
                fits(d),
                target=f"PCA: {CV} + 1 (merged)",
                ok=o["fits"]["pca"] == CV + 1 if "fits" in o else None,
            )
        agree = s["agreement_vs_sklearn"]
        if agree:

            def agrees(lib):
                a = agree.get(lib)
                if not a:
                    return ""
                return (
                    f"best_params_ {'same' if a['same_best_params'] else 'DIFFERENT'}; "
                    f"mean_test_score {'allclose' if a['mean_test_score_allclose'] else 'DIFFERS'}"
                    + (
                        f" (max diff {a['max_abs_diff']:.1e})"
                        if a["max_abs_diff"] is not None
                        else ""
                    )
                )

            add(
                "speed",
                "agreement with scikit-learn",
                agrees("ours"),
                "best: "
                + ", ".join(f"{name}={v}" for name, v in k.get("best_params", {}).items())
                + (f" ({k['best_score']:.4f})" if "best_score" in k else ""),
                agrees("dask-ml"),
                ok=all(
                    a["same_best_params"] and a["mean_test_score_allclose"] for a in agree.values()
                ),
            )
        add(
            "speed",
            "scheduler",
            o.get("scheduler", ""),
            k.get("scheduler", ""),
            d.get("scheduler", ""),
        )
        for lib, rec in libs.items():
            if rec.get("error"):
                first = rec["error"].strip().splitlines()[-1][:200].replace("|", "/")
                add("speed", f"{lib} error", first)
    if "memory" in result:
        m = result["memory"]
        if m.get("error"):
            add("memory", "error", m["error"][:200].replace("|", "/"))
        else:
            add(
                "memory",
                f"store {m['n_samples']:,} x {m['n_features']} float32 (+ int64 y), chunks of "
                f"{m['chunk_rows']:,} rows",
                f"{m['store_mb']:,.0f} MiB ({m['store_disk_mb']:,.0f} MiB on disk)",
                f"generated in {m['generate_s']:.0f} s" if m["generated"] else "reused",
            )
            add(
                "memory",
                f"GridSearchCV(MLPClassifier{tuple(m['hidden_layer_sizes'])}, max_iter="
                f"{m['max_iter']}), {m['grid']}, cv={m['cv']}, over the store's lazy X, y: "
                "seconds, best",
                f"{m['fit_s']:.0f} s, "
                + ", ".join(f"{k}={v}" for k, v in m["best_params"].items())
                + f" ({m['best_score']:.4f})",
            )
            add(
                "memory",
                "peak RSS of that fresh process (VmHWM / psutil polling, 0.1 s) vs budget "
                "= store / 3",
                f"**{m['peak_mb']:,.0f} MiB** ({m['peak_rss_mb']:,.0f} / "
                f"{m.get('polled_peak_mb', float('nan')):,.0f}; after imports "
                f"{m['rss_after_imports_mb']:.0f})",
                "",
                "",
                f"{m['peak_mb'] / m['store_mb']:.2f} of the store",
                f"< {m['budget_mb']:,.0f} MiB",
                m["passed"],
            )
            f = m["plain_fit"]
            add(
                "memory",
                "reference, no search: peak RSS of one fit + score of the same estimator "
                "over the whole store, fresh process (after the fit alone); ratio: search / this",
                f"{f['peak_mb']:,.0f} MiB ({f['peak_rss_after_fit_mb']:,.0f}; fit "
                f"{f['fit_s']:.0f} s, score {f['score_s']:.0f} s)",
                "",
                "",
                f"{m['peak_mb'] / f['peak_mb']:.2f}x",
            )
    columns = ["section", "measure", "pipeline", "scikit-learn", "dask-ml", "ratio", "target"]
    return markdown_table([*columns, "result"], rows)


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="small data: a smoke run")
    p.add_argument("--repeats", type=int, help="timed rounds of the speed section (default 3)")
    p.add_argument("--memory-rows", type=int, help="rows of the memory store (default 600,000)")
    p.add_argument("--clean", action="store_true", help="remove the memory store at the end")
    args = p.parse_args()
    if args.child:
        return child_main(args.child, CHILDREN)
    cfg = Config(args)
    cfg.dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "quick": cfg.quick, "targets": TARGETS}
    print(json.dumps(result["machine"]), flush=True)
    run_sections(args.only or SECTIONS, RUN, cfg, result, args.json)
    if cfg.quick:
        print(
            f"QUICK RUN ({cfg.n_samples:,} samples for speed, a {cfg.mem_rows:,}-row store for "
            "memory): the targets are for the full run"
        )
    print(report(result))
    print_totals(result)


if __name__ == "__main__":
    main()
