"""Out-of-core Pipeline: time and memory of make_pipeline(scaler, network) against the bare network.

Sections (each fit runs in a fresh process, one at a time):

- ``large``: ``make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=2))`` over a
  store of >= 6 GB (float32, 512 features) against the bare MLPClassifier on the same
  store: wall time and peak RSS, as ratios (targets: <= 1.15x time, <= 1.1x and
  <= 1.5 GB peak RSS).
- ``peers``: on a ~1.5 GB store (400,000 x 1,000), ours beside scikit-learn's Pipeline
  (its StandardScaler reads the dask array into memory) and a Pipeline whose scaler is
  dask-ml's.
- ``ipca``: ``StandardScaler, IncrementalPCA(50), MLPClassifier(max_iter=3)`` on the
  1.5 GB store, without and with ``memory=`` (the prefix's output cached as a store).
- ``bad-input``: what a user sees for a step that cannot stream past ``max_in_memory``,
  a step that raises mid-stream, NaN made by a step, and a corrupt cache entry.

Run on a quiet machine: ``python benchmarks/pipeline_bench.py [--quick] [--json out.json]``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this file is named after what it measures, so its folder must not shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("_common", HERE / "_common.py")
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
base_parser, child_main, cpu_name = _common.base_parser, _common.child_main, _common.cpu_name
markdown_table, print_totals = _common.markdown_table, _common.print_totals
run_sections = _common.run_sections
PeakSampler, status_mb = _common.PeakSampler, _common.status_mb

SECTIONS = ["large", "peers", "ipca", "bad-input"]
LARGE_FEATURES, PEER_FEATURES = 512, 1000
TARGETS = {"time_ratio": 1.15, "rss_ratio": 1.10, "peak_rss_gb": 1.5}


# ----------------------------------------------------------------------------- children


def _model(spec):
    from sklearn.decomposition import IncrementalPCA
    from sklearn.preprocessing import StandardScaler

    import pipeline

    net = pipeline.MLPClassifier(
        hidden_layer_sizes=tuple(spec["hidden"]), max_iter=spec["epochs"], random_state=0
    )
    kind = spec["model"]
    if kind == "bare":
        return net
    if kind == "ours":
        return pipeline.make_pipeline(StandardScaler(), net)
    if kind == "sklearn":
        from sklearn.pipeline import make_pipeline

        return make_pipeline(StandardScaler(), net)
    if kind == "daskml-in-sklearn":
        from dask_ml.preprocessing import StandardScaler as DaskScaler
        from sklearn.pipeline import make_pipeline

        return make_pipeline(DaskScaler(), net)
    if kind == "daskml-in-ours":
        from dask_ml.preprocessing import StandardScaler as DaskScaler

        return pipeline.make_pipeline(DaskScaler(), net)
    if kind == "ipca":
        return pipeline.make_pipeline(
            StandardScaler(), IncrementalPCA(50), net, memory=spec.get("memory")
        )
    raise ValueError(kind)


def _child_fit(spec):
    import jax

    import pipeline

    jax.numpy.zeros(1).block_until_ready()  # the backend is up: part of the baseline
    base_rss, base_anon = status_mb("VmRSS"), status_mb("RssAnon")
    ds = pipeline.store.open(spec["store"])
    model = _model(spec)
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        model.fit(ds.X, ds.y)
        fit_s = time.perf_counter() - t0
    return {
        "fit_s": fit_s,
        "rss_after_imports_mb": base_rss,
        "anon_after_imports_mb": base_anon,
        "peak_rss_mb": status_mb("VmHWM"),
        "peak_anon_mb": sampler.peak_mb,
        "peak_anon_above_start_mb": sampler.peak_mb - base_anon,
    }


def _child_bad(spec):
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    import pipeline

    ds = pipeline.store.open(spec["store"])

    def fails_mid_stream(X):
        if X[0, 0] > 1e9 or fails_mid_stream.calls > 2:
            raise RuntimeError("a step that raises on its fourth chunk")
        fails_mid_stream.calls += 1
        return X

    fails_mid_stream.calls = 0
    cases = {
        "non-streamable step past max_in_memory": pipeline.make_pipeline(
            PCA(10), SGDClassifier(), max_in_memory="100MB"
        ),
        "a step that raises mid-stream": pipeline.make_pipeline(
            FunctionTransformer(fails_mid_stream), SGDClassifier()
        ),
        "NaN made by a step": pipeline.make_pipeline(
            StandardScaler(), FunctionTransformer(np.log), SGDClassifier()
        ),
    }
    out = {}
    for name, model in cases.items():
        t0 = time.perf_counter()
        try:
            model.fit(ds)
            out[name] = {"error": None}
        except Exception as exc:  # noqa: BLE001 - what the user sees is the measurement
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        out[name]["seconds"] = time.perf_counter() - t0
    return out


CHILDREN = {"fit": _child_fit, "bad": _child_bad}


def _run_child(spec):
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if res.returncode:
        raise RuntimeError(f"child {spec} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sections


def _store(cfg, gb, n_features):
    """A classification store of at least ``gb`` GiB, reused when one is there."""
    from pipeline.datasets import make_classification_store
    from pipeline.store import open as open_store

    n = math.ceil(gb * 2**30 / (n_features * 4))
    path = cfg.dir / f"pipe-{n}x{n_features}.zarr"
    try:
        if len(open_store(path)) == n:
            return path, n
    except Exception:  # noqa: BLE001 - missing or unreadable: write it again
        pass
    need = gb * 1.05 + 2
    free = shutil.disk_usage(cfg.dir).free / 2**30
    if free < need:
        raise RuntimeError(f"{free:.1f} GB free under {cfg.dir}; a {gb:g} GB store needs {need:.1f}")
    make_classification_store(path, n, n_features, random_state=0, overwrite=True)
    return path, n


def _fits(store, models, hidden, epochs, extra=None):
    return {
        m: _run_child({"kind": "fit", "store": str(store), "model": m, "hidden": hidden,
                       "epochs": epochs, **(extra or {})})
        for m in models
    }


def large(cfg):
    path, n = _store(cfg, cfg.large_gb, LARGE_FEATURES)
    runs = _fits(path, ["bare", "ours"], [64], 2)
    bare, ours = runs["bare"], runs["ours"]
    return {
        "store": str(path),
        "n_samples": n,
        "store_gb": n * LARGE_FEATURES * 4 / 2**30,
        **runs,
        "time_ratio": ours["fit_s"] / bare["fit_s"],
        "rss_ratio": ours["peak_rss_mb"] / bare["peak_rss_mb"],
    }


def peers(cfg):
    path, n = _store(cfg, cfg.peer_gb, PEER_FEATURES)
    models = ["bare", "ours", "daskml-in-ours", "daskml-in-sklearn", "sklearn"]
    runs = _fits(path, models, [64], 1)
    return {"store": str(path), "n_samples": n, "store_gb": n * PEER_FEATURES * 4 / 2**30, **runs}


def ipca(cfg):
    path, n = _store(cfg, cfg.peer_gb, PEER_FEATURES)
    cache = cfg.dir / "ipca-cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs = {
        "no cache": _run_child({"kind": "fit", "store": str(path), "model": "ipca",
                                "hidden": [64], "epochs": 3}),
        "memory= (cold)": _run_child({"kind": "fit", "store": str(path), "model": "ipca",
                                      "hidden": [64], "epochs": 3, "memory": str(cache)}),
        "memory= (warm)": _run_child({"kind": "fit", "store": str(path), "model": "ipca",
                                      "hidden": [64], "epochs": 3, "memory": str(cache)}),
    }
    shutil.rmtree(cache, ignore_errors=True)
    return {"store": str(path), "n_samples": n, **runs}


def bad_input(cfg):
    path, _ = _store(cfg, cfg.peer_gb, PEER_FEATURES)
    return _run_child({"kind": "bad", "store": str(path)})


RUN = {"large": large, "peers": peers, "ipca": ipca, "bad-input": bad_input}


# ----------------------------------------------------------------------------- report


def report(result):
    print(f"machine: {result['machine']}")
    if "large" in result:
        r = result["large"]
        print(f"\nlarge: {r['store_gb']:.1f} GiB store, {r['n_samples']:,} x {LARGE_FEATURES}")
        rows = [
            [k, "", f"{r[k]['fit_s']:.1f}", f"{r[k]['peak_rss_mb']:.0f}",
             f"{r[k]['peak_anon_above_start_mb']:.0f}", ""]
            for k in ("bare", "ours")
        ]
        rows.append(["ratio ours / bare", "", f"{r['time_ratio']:.3f}", f"{r['rss_ratio']:.3f}",
                     "", f"targets <= {TARGETS['time_ratio']}, <= {TARGETS['rss_ratio']}"])
        print(markdown_table(["run", "", "fit s", "peak RSS MB", "anon above start MB", "note"],
                             rows))
    for name in ("peers", "ipca"):
        if name in result:
            r = result[name]
            runs = {k: v for k, v in r.items() if isinstance(v, dict)}
            base = runs.get("bare") or runs.get("no cache")
            rows = [
                [k, "", f"{v['fit_s']:.1f}", f"{v['fit_s'] / base['fit_s']:.2f}",
                 f"{v['peak_rss_mb']:.0f}", ""]
                for k, v in runs.items() if "fit_s" in v
            ]
            print(f"\n{name}: {r['n_samples']:,} samples")
            print(markdown_table(["run", "", "fit s", "x first", "peak RSS MB", ""], rows))
    if "bad-input" in result:
        print("\nbad input:")
        for k, v in result["bad-input"].items():
            if isinstance(v, dict):
                print(f"- {k} ({v['seconds']:.1f} s): {v['error']}")
    print_totals(result)


class Config:
    def __init__(self, args):
        self.dir = Path(args.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.large_gb = 0.5 if args.quick else args.large_gb
        self.peer_gb = 0.2 if args.quick else 1.5


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="small stores (0.5 / 0.2 GB)")
    p.add_argument("--large-gb", type=float, default=6.0)
    args = p.parse_args()
    if args.child:
        return child_main(args.child, CHILDREN)
    cfg = Config(args)
    result = {"machine": {"cpu": cpu_name(), "cpus": os.cpu_count(),
                          "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                          "load_avg_at_start": os.getloadavg()}}
    run_sections(args.only or SECTIONS, RUN, cfg, result, args.json)
    report(result)


if __name__ == "__main__":
    main()
