"""pipeline.parallel.fit on a 2-worker LocalCluster: overhead per round, accuracy, scaling.

Measures, on one machine in one run, ``pipeline.parallel.fit`` training
``MLPClassifier(hidden_layer_sizes=(256, 128), random_state=0)`` (adam,
``batch_size='auto'`` = 200) on MNIST's training split (float32 in [0, 1]) read from
a Zarr store written by ``pipeline.store.write`` (default chunks), on
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (spawned worker
processes; the scheduler runs in the client's process, as LocalCluster puts it):

1. ``overhead``: for ``averaging_frequency`` (af) 1, 5, 10, 50 and 2 replicas,

   - the **round time**: the steady epoch time of ``parallel.fit`` divided by its
     rounds, an epoch being ``(wall(max_iter=4) - wall(max_iter=1)) / 3`` (the median
     of 2 such pairs) on a cluster whose workers already compiled every step shape of
     this af (a warm-up task per worker, then a warm-up 1-epoch fit);
   - the **compute time** of a round: ``pipeline._replica.local_steps`` called
     in-process for exactly the replica work of every round of an epoch (its store
     reads included; each replica's sequence with a cold window cache, as a worker
     has), warm, in a child **pinned to one core** (one replica per core is what two
     workers on two cores can get at best); a round's compute is the slower of its
     two replicas, averaged over the epoch's rounds;
   - **overhead fraction** = (round time - compute time) / round time: scheduling,
     transfers, averaging, client and scheduler work, and any parallelism lost;
   - the same compute in a child started with ``MALLOC_TRIM_THRESHOLD_`` as
     distributed's nannies set it for the workers they spawn (65536: every large
     temporary array is mmap'ed and faulted in afresh), and the overhead fraction
     against that;
   - from the task stream of the 4-epoch fit: per round, the replicas' compute on
     the workers, the averaging task, transfer time, the rest (scheduling gaps), and in
     how many rounds the two replicas ran on different workers and at the same time;
   - the bytes of a round's state (parameters + optimizer state + RNG key, pickled:
     what each transfer moves) beside what dask's ``sizeof`` reports for it, the
     number of transfers per round, the store's shuffle windows each replica reads,
     and the CPU seconds per epoch of the client + scheduler process and of each
     worker process;
   - for reference, the steady epoch of single-process ``est.fit`` from the same
     store (both cores).

2. ``accuracy``: ``parallel.fit`` with 2 workers, ``averaging_frequency=10``, and
   ``scale_learning_rate`` False and True, against single-process ``est.fit`` from the
   same store, all ``max_iter`` (default 20) epochs; test accuracy on MNIST's test
   split. Target: parallel within 0.5 points of single-process.

3. ``scaling``: a model of parallel efficiency at 2, 8, 32 and 128 workers for af 1,
   10 and 50, from quantities measured here:

   - ``C(af)``: one replica's ``local_steps`` over af steps on one core, its store
     reads left out (the ``overhead`` section's child, median of full rounds);
   - ``r_w``: reading one shuffle window (``window`` = 4 store chunks, W = 10,496
     rows) into a replica, in the same child; a replica reads whole windows, so it
     reads ``rho = min(N af bs / W, 1 + af bs / W)`` of them per round (bs: batch
     size; its window cache serves the next rounds while N af bs < W);
   - ``A(N)``: ``pipeline._replica.average`` of N shares, in-process (a straight line
     through N = 2 and 8);
   - ``l``: latency of one dependent task hop (a chain of no-op tasks on one worker);
   - ``c``: scheduler cost per task (1,000 independent no-op tasks, wall per task);
   - ``t + S / B``: moving one round's state (S bytes) between the workers (a chain
     of tasks alternating between them, each passing the state on, minus a chain of
     the same hops on one worker; ``t``: the same with a few bytes; B: the localhost
     bandwidth that gives).

   Per round, as ``parallel.fit`` builds its graph, N replicas fetch the average from
   the one worker holding it (fan-out) and the averaging task gathers N - 1 shares onto
   one worker (fan-in); both go through that worker's link, so

       T(N) = C(af) + rho r_w + A(N) + 2 l + 2 t + 2 (N - 1) S / B + (N + 2) c
       efficiency(N) = C(af) / T(N)

   (N + 2 tasks per round: the replicas, the average, the client's loss summary).
   A tree reduction and broadcast would make the transfer term
   ``2 ceil(log2 N) (l + t + S / B)`` and the averaging ``ceil(log2 N) A(2)``, the
   scheduler term staying O(N): ``(2 N + 1) c``. Assumptions: one replica per worker,
   on a core of its own with this machine's speed (a node whose cores all serve one
   replica computes faster, which lowers the efficiency), links of bandwidth B at
   every worker, no stragglers, and the replicas of a round placed on different
   workers (``parallel.fit`` gives each replica a worker of its own; the ``overhead``
   placement row checks it); the model's round time with all replicas queued on one worker,
   ``N C + r_w N af bs / W + A(N) + 2 l + (N + 2) c``, is printed beside the
   measured one at N = 2. Predicted at the measured localhost B and at 1.25 GB/s
   (10 GbE), and once more with C, r_w and A measured under the workers'
   ``MALLOC_TRIM_THRESHOLD_`` (efficiency still against the plain C).

Every measurement runs in a child process of its own (``--child``), started as a
fresh interpreter (not forked), so each starts from a clean state; the cluster's
workers are spawned (JAX is not fork-safe).

Usage::

    PIPELINE_DATA=/path/to/mnist python benchmarks/parallel.py --json /tmp/parallel.json
    python benchmarks/parallel.py --quick         # a smoke run (10k samples), ~2 min
    python benchmarks/parallel.py --only overhead # one section (repeatable)

The MNIST store goes to ``--dir`` (default benchmarks/_data, git-ignored) and is
removed after. Needs ``psutil`` (and ``bokeh`` for the dashboard the cluster starts).
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
import warnings
from pathlib import Path

import numpy as np
from _common import base_parser, child_main, cpu_name, markdown_table, print_totals, run_sections

HERE = Path(__file__).resolve().parent
HIDDEN = (256, 128)
N_WORKERS = 2
SECTIONS = ("overhead", "accuracy", "scaling")
AFS = (1, 5, 10, 50)  # averaging frequencies of the overhead section
SCALING_AFS = (1, 10, 50)
SCALING_NS = (2, 8, 32, 128)  # N=2: the model against the measured round
NET_10GBE = 1.25e9  # bytes per second

TARGETS = {"accuracy_gap_pt": 0.5}  # |parallel - single-process| test accuracy, at most


# ----------------------------------------------------------------------------- helpers


def _mnist(n_train=None, n_test=None):
    """MNIST as float32 in [0, 1] and int64 labels (load_mnist already scales)."""
    from pipeline.datasets import load_mnist

    X, y = load_mnist(split="train")
    Xt, yt = load_mnist(split="test")
    return X[:n_train], y[:n_train], Xt[:n_test], yt[:n_test]


def _estimator(**kw):
    import pipeline

    return pipeline.MLPClassifier(hidden_layer_sizes=HIDDEN, random_state=0, **kw)


def _options(af, scale=False):
    return dict(
        n_workers=N_WORKERS,
        averaging_frequency=af,
        average_optimizer_state=True,
        scale_learning_rate=scale,
    )


def _job(store, af):
    """The Job, first Round and task inputs ``parallel.fit`` builds for this fit
    (``pipeline._parallel._start``, as ``_fit`` calls it), and each round's parts."""
    from pipeline._parallel import _start
    from pipeline._replica import Stored
    from pipeline.store import open as open_store

    ds = open_store(store)
    est = _estimator(max_iter=1)
    data = est._validate_training(ds.X, ds.y, None, reset=True)
    est._initialize(data)
    train = data._replace(X=est._cast(data.X))
    job, start = _start(est, train, _options(af))
    step = N_WORKERS * af
    rounds = math.ceil(job.steps / step)
    pad = getattr(job, "padding", 0)  # all-padding steps of replica 0's last round
    parts = [
        [
            (
                min(job.steps, r * step + w * af),
                min(job.steps, r * step + (w + 1) * af),
                pad if r + 1 == rounds and w == 0 else 0,
            )
            for w in range(N_WORKERS)
        ]
        for r in range(rounds)
    ]
    return job, start, Stored(train.X), Stored(train.Y), parts


def _local_steps(job, X, Y, start, epoch, part, replica):
    """``pipeline._replica.local_steps`` for one part ``(first, stop, padding)``."""
    from pipeline._replica import local_steps

    first, stop, pad = part
    return local_steps(job, X, Y, start, epoch, first, stop, replica, *([pad] if pad else []))


def _round_bytes(state):
    """Pickled bytes of a Round (what a transfer moves) and dask's sizeof of it."""
    import pickle

    from dask.sizeof import sizeof

    return len(pickle.dumps(state, protocol=5)), int(sizeof(state))


def _warm_worker(job, X, Y, start, parts):
    """Compile every step shape of a fit on this worker (a task pinned to it)."""
    shapes = {}
    for r in (0, len(parts) - 1):
        for w, (a, b, pad) in enumerate(parts[r]):
            shapes.setdefault((b - a, pad), ((a, b, pad), w))
    for part, w in shapes.values():
        _local_steps(job, X, Y, start, 0, part, w)
    return sorted(shapes)


def _noop(i):
    return i


def _relay(x, i):
    return x


def _cpu_s(procs):
    out = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system + t.children_user + t.children_system
    return out


def _intervals_union(spans):
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _rounds_from_stream(data):
    """Group the task stream of a fit into rounds: the ``local_steps`` tasks that
    start after one ``average`` task ends, and the next ``average`` (rounds of a
    fit are a chain: a round's replicas need the average before them)."""

    def name(d):
        k = d["key"] if isinstance(d["key"], str) else str(d["key"])
        return k.split("-")[0]

    def span(d, action="compute"):
        s = [x for x in d["startstops"] if x["action"] == action]
        return (s[0]["start"], s[-1]["stop"]) if s else None

    def moved(d):
        return sum(x["stop"] - x["start"] for x in d["startstops"] if x["action"] == "transfer")

    tasks = [d for d in data if name(d) in ("local_steps", "average", "anchor")]
    tasks.sort(key=lambda d: span(d)[0])
    rounds, current, prev_end = [], [], None
    for d in tasks:
        kind = name(d)
        if kind == "anchor":
            current, prev_end = [], span(d)[1]
        elif kind == "local_steps":
            current.append(d)
        else:
            a, b = span(d)
            reps = [(span(x), x["worker"], moved(x)) for x in current]
            rounds.append(
                {
                    "start": prev_end if prev_end is not None else min(s[0] for s, _, _ in reps),
                    "end": b,
                    "replicas": reps,
                    "average": (a, b, d["worker"], moved(d)),
                }
            )
            current, prev_end = [], b
    return rounds


def _round_breakdown(rounds):
    """Medians over rounds of a fit's task stream: where a round's time goes."""
    rows = []
    for r in rounds:
        reps = [s for s, _, _ in r["replicas"]]
        busy = sum(b - a for a, b in reps)
        union = _intervals_union(reps)
        a0, a1, _, avg_moved = r["average"]
        moved = sum(m for _, _, m in r["replicas"]) + avg_moved
        wall = r["end"] - r["start"]
        rows.append(
            {
                "wall": wall,
                "replica_busy": busy,
                "replica_phase": union,
                "average": a1 - a0,
                "transfers": moved,
                "gaps": wall - union - (a1 - a0) - moved,
                "distinct_workers": len({w for _, w, _ in r["replicas"]}) == len(r["replicas"]),
                "concurrent": union < busy - 1e-4,
                "n": len(reps),
            }
        )
    full = [x for x in rows if x["n"] == N_WORKERS] or rows  # --quick, af=50: no full round
    med = {k: statistics.median(x[k] for x in full) for k in rows[0] if k not in ("n",)}
    med.update(
        rounds=len(rows),
        full_rounds=len(full),
        distinct_workers=sum(x["distinct_workers"] for x in full),
        concurrent=sum(x["concurrent"] for x in full),
        sum_wall=sum(x["wall"] for x in rows),
        sum_replica_busy=sum(x["replica_busy"] for x in rows),
        sum_replica_phase=sum(x["replica_phase"] for x in rows),
        sum_average=sum(x["average"] for x in rows),
        sum_transfers=sum(x["transfers"] for x in rows),
        sum_gaps=sum(x["gaps"] for x in rows),
    )
    return med


def _recorded(caught):
    """Distinct warnings caught in this process: category and message, shortened."""
    seen = []
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message)[:300]}"
        if text not in seen and w.category.__name__ != "ConvergenceWarning":
            seen.append(text)
    return seen


# ----------------------------------------------------------------------------- children


def _child_compute(spec):
    """``local_steps`` of every round of an epoch, in this process pinned to one core;
    ``average`` of N shares; the bytes of a round's state."""
    os.sched_setaffinity(0, {spec["core"]})  # before JAX starts its thread pool
    import jax

    from pipeline import _replica

    out = {
        "cores_seen": len(os.sched_getaffinity(0)),
        "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        "afs": {},
    }
    window_s = []
    read = _replica.read_window

    def timed_read(*args, **kw):  # runs only on a miss of the worker's window cache
        t0 = time.perf_counter()
        res = read(*args, **kw)
        window_s.append(time.perf_counter() - t0)
        return res

    _replica.read_window = timed_read
    for af in spec["afs"]:
        job, start, X, Y, parts = _job(spec["store"], af)
        passes = []
        for epoch in range(1 + spec["passes"]):  # epoch 0 compiles
            times = np.zeros((len(parts), N_WORKERS))
            reads = np.zeros_like(times)
            window_s.clear()
            for w in range(N_WORKERS):
                _replica._WINDOWS.clear()  # each worker reads its own windows
                for r, round_parts in enumerate(parts):
                    n0, t0 = len(window_s), time.perf_counter()
                    _local_steps(job, X, Y, start, epoch, round_parts[w], w)
                    times[r, w] = time.perf_counter() - t0
                    reads[r, w] = sum(window_s[n0:])
            passes.append((times, list(window_s), reads))
        timed = [(t, ws) for t, ws, _ in passes[1:]]
        steps_only = [t - rd for t, _, rd in passes[1:]]
        full = [r for r, p in enumerate(parts) if all(b - a == af for a, b, _ in p)] or [0]
        out["afs"][str(af)] = {
            "steps_per_epoch": job.steps,
            "rounds": len(parts),
            # a round's compute: its slower replica; mean over the epoch's rounds
            "compute_round_s": statistics.median(t.max(axis=1).mean() for t, _ in timed),
            "compute_epoch_s": statistics.median(t.max(axis=1).sum() for t, _ in timed),
            "compute_all_replicas_epoch_s": statistics.median(t.sum() for t, _ in timed),
            # one replica's full round (af steps), median: mostly without a window read
            "full_round_replica_s": statistics.median(
                float(t[r, w]) for t, _ in timed for r in full for w in range(N_WORKERS)
            ),
            # the same without its window reads: the model's C(af)
            "full_round_compute_s": statistics.median(
                float(t[r, w]) for t in steps_only for r in full for w in range(N_WORKERS)
            ),
            "window_reads_per_epoch": statistics.median(len(ws) for _, ws in timed),
            "window_read_s": statistics.median(x for _, ws in timed for x in ws),
            "read_epoch_s": statistics.median(sum(ws) for _, ws in timed),
            "first_pass_epoch_s": float(passes[0][0].sum()),
        }
    out["window_rows"] = job.window * int(X.array.chunks[0][0])
    out["batch_size"] = job.batch_size
    # averaging: real shares (round 0 of af=10's replicas), N = 2 and 8
    job, start, X, Y, parts = _job(spec["store"], 10)
    shares = [_local_steps(job, X, Y, start, 1, part, w) for w, part in enumerate(parts[0])]
    avg = {}
    for n in (2, 8):
        args = [shares[i % 2] for i in range(n)]
        _replica.average(job, *args)
        times = []
        for _ in range(spec["avg_repeats"]):
            t0 = time.perf_counter()
            _replica.average(job, *args)
            times.append(time.perf_counter() - t0)
        avg[str(n)] = statistics.median(times)
    out["average_s"] = avg
    out["round_bytes"], out["round_dask_sizeof"] = _round_bytes(start)
    out["share_bytes"], out["share_dask_sizeof"] = _round_bytes(shares[0])
    leaves = jax.tree_util.tree_leaves((start.params, start.opt_states))
    out["params_opt_state_nbytes"] = int(sum(np.asarray(x).nbytes for x in leaves))
    out["n_params"] = int(sum(np.asarray(x).size for x in jax.tree_util.tree_leaves(start.params)))
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def _child_single(spec):
    """Steady epoch of single-process ``est.fit`` from the store (both cores)."""
    from pipeline.store import open as open_store

    ds = open_store(spec["store"])
    _estimator(max_iter=1).fit(ds.X, ds.y)  # compile
    wall = {}
    for n in (1, spec["epochs"]):
        t0 = time.perf_counter()
        _estimator(max_iter=n, tol=0.0).fit(ds.X, ds.y)
        wall[n] = time.perf_counter() - t0
    return {
        "fit_1_s": wall[1],
        f"fit_{spec['epochs']}_s": wall[spec["epochs"]],
        "epoch_s": (wall[spec["epochs"]] - wall[1]) / (spec["epochs"] - 1),
        "load_avg_1min": os.getloadavg()[0],
    }


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    return cluster, Client(cluster)


def _child_cluster(spec):
    """Warm, then time 1- and 4-epoch ``parallel.fit``s per af, with the task stream,
    the workers' transfer logs and every process's CPU time."""
    import psutil
    from distributed import get_task_stream

    from pipeline import parallel
    from pipeline.store import open as open_store

    ds = open_store(spec["store"])
    out = {"afs": {}, "load_avg_1min": [os.getloadavg()[0]]}
    cluster, client = _cluster()
    with cluster, client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workers = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        procs = {"client+scheduler": psutil.Process()}
        procs.update({f"worker {i}": psutil.Process(pids[w]) for i, w in enumerate(workers)})
        E = spec["epochs"]
        for af in spec["afs"]:
            job, start, X, Y, parts = _job(spec["store"], af)
            t0 = time.perf_counter()
            warm = [
                client.submit(_warm_worker, job, X, Y, start, parts, workers=[w], pure=False)
                for w in workers
            ]
            shapes = client.gather(warm)[0]
            parallel.fit(_estimator(max_iter=1), ds.X, ds.y, client=client, averaging_frequency=af)
            warm_s = time.perf_counter() - t0
            fit1, fitE = [], []
            for _ in range(spec["repeats"]):  # the last 4-epoch fit's stream is kept
                t0 = time.perf_counter()
                parallel.fit(
                    _estimator(max_iter=1), ds.X, ds.y, client=client, averaging_frequency=af
                )
                fit1.append(time.perf_counter() - t0)
                client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
                cpu0 = _cpu_s(procs)
                with get_task_stream(client) as ts:
                    t0 = time.perf_counter()
                    est = _estimator(max_iter=E, tol=0.0)
                    parallel.fit(est, ds.X, ds.y, client=client, averaging_frequency=af)
                    fitE.append(time.perf_counter() - t0)
                cpu1 = _cpu_s(procs)
            logs = client.run(lambda dask_worker: list(dask_worker.transfer_incoming_log))
            transfers = [x for log in logs.values() for x in log]
            steps = sorted(
                (d["worker"], d["startstops"][-1]["stop"] - d["startstops"][-1]["start"])
                for d in ts.data
                if str(d["key"]).startswith("local_steps")
            )
            epochs = [(b - a) / (E - 1) for a, b in zip(fit1, fitE, strict=True)]
            out["afs"][str(af)] = {
                "warm_s": warm_s,
                "warm_shapes": shapes,
                "fit_1_s": fit1,
                f"fit_{E}_s": fitE,
                "epoch_s_each": epochs,
                "epoch_s": statistics.median(epochs),
                "n_iter": int(est.n_iter_),
                "rounds_per_epoch": len(parts),
                "stream": _round_breakdown(_rounds_from_stream(ts.data)),
                "replica_tasks_per_worker": {
                    f"worker {i}": sum(1 for x, _ in steps if x == w) for i, w in enumerate(workers)
                },
                "longest_replica_task_s": max(t for _, t in steps),
                "transfers": len(transfers),
                "transfer_s": sum(x["duration"] for x in transfers),
                "transfer_dask_bytes": sum(x["total"] for x in transfers),
                "cpu_s_per_epoch": {k: (cpu1[k] - cpu0[k]) / E for k in procs},
            }
            out["load_avg_1min"].append(os.getloadavg()[0])
        out["warnings"] = _recorded(caught)
    return out


def _child_accuracy(spec):
    """Test accuracy of 2-worker ``parallel.fit`` (scale_learning_rate False, True)."""
    from pipeline import parallel
    from pipeline.store import open as open_store

    _, _, Xt, yt = _mnist(1, spec["n_test"])
    ds = open_store(spec["store"])
    out = {"runs": {}}
    cluster, client = _cluster()
    with cluster, client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scale in (False, True):
            est = _estimator(max_iter=spec["epochs"])
            t0 = time.perf_counter()
            parallel.fit(
                est,
                ds.X,
                ds.y,
                client=client,
                averaging_frequency=spec["af"],
                scale_learning_rate=scale,
            )
            out["runs"][str(scale)] = {
                "fit_s": time.perf_counter() - t0,
                "accuracy": float(est.score(Xt, yt)),
                "n_iter": int(est.n_iter_),
                "loss_curve": [float(v) for v in est.loss_curve_],
            }
        out["warnings"] = _recorded(caught)
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def _child_accuracy_single(spec):
    from pipeline.store import open as open_store

    _, _, Xt, yt = _mnist(1, spec["n_test"])
    ds = open_store(spec["store"])
    est = _estimator(max_iter=spec["epochs"])
    t0 = time.perf_counter()
    est.fit(ds.X, ds.y)
    return {
        "fit_s": time.perf_counter() - t0,
        "accuracy": float(est.score(Xt, yt)),
        "n_iter": int(est.n_iter_),
        "loss_curve": [float(v) for v in est.loss_curve_],
    }


def _child_micro(spec):
    """No-op task throughput and chain latency; moving a round's state between workers."""
    import psutil

    cluster, client = _cluster()
    out = {}
    with cluster, client:
        a, b = sorted(client.scheduler_info()["workers"])
        me = psutil.Process()

        def timed(make):
            t0, c0 = time.perf_counter(), sum(me.cpu_times()[:2])
            client.gather(make())
            return time.perf_counter() - t0, sum(me.cpu_times()[:2]) - c0

        m = spec["n_tasks"]
        runs = [timed(lambda: client.map(_noop, range(m), pure=False)) for _ in range(3)]
        out["task_s"] = statistics.median(w for w, _ in runs[1:]) / m
        out["task_client_scheduler_cpu_s"] = statistics.median(c for _, c in runs[1:]) / m

        def chain(n, payload, alternate):
            def make():
                x = client.submit(_relay, payload, -1, workers=[a], pure=False)
                for i in range(n):
                    w = (b if i % 2 == 0 else a) if alternate else a
                    x = client.submit(_relay, x, i, workers=[w], pure=False)
                return [client.submit(len, x, workers=[a], pure=False)]

            return make

        n = spec["chain"]
        job, start, *_ = _job(spec["store"], 10)
        tiny = [0] * 4
        hops = {}
        for name, payload, alt in (
            ("same_worker", tiny, False),
            ("alternating_tiny", tiny, True),
            ("alternating_state", start, True),
        ):
            timed(chain(5, payload, alt))  # warm
            hops[name] = statistics.median(timed(chain(n, payload, alt))[0] / n for _ in range(3))
        client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
        timed(chain(n, start, True))
        logs = client.run(lambda dask_worker: list(dask_worker.transfer_incoming_log))
        out["logged_state_transfer_s"] = statistics.median(
            x["duration"] for log in logs.values() for x in log
        )
        out["hop_s"] = hops
        out["state_bytes"] = _round_bytes(start)[0]
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


CHILDREN = {
    "compute": _child_compute,
    "single": _child_single,
    "cluster": _child_cluster,
    "accuracy": _child_accuracy,
    "accuracy_single": _child_accuracy_single,
    "micro": _child_micro,
}


def _run_child(spec, cache={}):  # noqa: B006 - a per-run memo of identical children
    key = json.dumps(spec, sort_keys=True)
    if key not in cache:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        if spec.get("malloc_trim"):  # read by glibc at start: set before the process
            env["MALLOC_TRIM_THRESHOLD_"] = str(spec["malloc_trim"])
        res = subprocess.run(
            [sys.executable, __file__, "--child", key], capture_output=True, text=True, env=env
        )
        if res.returncode:
            raise RuntimeError(f"child {spec} failed:\n{res.stderr[-4000:]}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        lines = [ln for ln in res.stderr.splitlines() if "WARNING" in ln or "Warning" in ln]
        out["stderr_warnings"] = sorted({ln.split(" - ", 2)[-1][:200] for ln in lines})
        cache[key] = out
    return cache[key]


# ----------------------------------------------------------------------------- sections


class Config:
    def __init__(self, args):
        self.quick = args.quick
        self.dir = Path(args.dir)
        self.n_train = 10_000 if args.quick else None
        self.n_test = 2_000 if args.quick else None
        self.epochs = 2 if args.quick else 4  # the overhead section's timed fit
        self.repeats = 1 if args.quick else 2  # pairs of timed fits (1 and 4 epochs)
        self.passes = 1 if args.quick else 2  # timed in-process replays of an epoch
        self.accuracy_epochs = args.accuracy_epochs or (2 if args.quick else 20)
        self.n_tasks = 200 if args.quick else 1000
        self.chain = 20 if args.quick else 100


_MNIST_STORE: dict = {}


def mnist_store(cfg):
    """Write MNIST's training split (float32 in [0, 1]) to a Zarr store, once per run."""
    memo = _MNIST_STORE
    if "path" not in memo:
        import pipeline

        X, y, _, _ = _mnist(cfg.n_train, 1)
        path = cfg.dir / f"parallel-mnist-{len(X)}.zarr"
        ds = pipeline.store.write(path, X, y, overwrite=True)
        memo.update(path=path, n=len(X), chunk_rows=ds.attrs["chunk_rows"])
    return memo


def _worker_malloc_trim():
    """MALLOC_TRIM_THRESHOLD_ that distributed's nannies set for the workers they spawn."""
    import dask
    import distributed  # noqa: F401 - loads distributed's config defaults

    env = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    return env.get("MALLOC_TRIM_THRESHOLD_")


def _compute(cfg, worker_env=False):
    """The in-process compute child: this process's malloc, or the workers'."""
    store = mnist_store(cfg)
    spec = {"kind": "compute", "store": str(store["path"]), "afs": list(AFS), "core": 0}
    spec.update(passes=cfg.passes, avg_repeats=20)
    if worker_env:
        spec["malloc_trim"] = _worker_malloc_trim()
    return _run_child(spec)


def overhead(cfg):
    store = mnist_store(cfg)
    comp = _compute(cfg)
    comp_w = _compute(cfg, worker_env=True)
    single = _run_child({"kind": "single", "store": str(store["path"]), "epochs": 3})
    clus = _run_child(
        {
            "kind": "cluster",
            "store": str(store["path"]),
            "afs": list(AFS),
            "epochs": cfg.epochs,
            "repeats": cfg.repeats,
        }
    )
    rows = {}
    for af in AFS:
        c, cw, m = comp["afs"][str(af)], comp_w["afs"][str(af)], clus["afs"][str(af)]
        round_s = m["epoch_s"] / m["rounds_per_epoch"]
        rows[str(af)] = {
            "round_s": round_s,
            "compute_round_s": c["compute_round_s"],
            "compute_round_worker_env_s": cw["compute_round_s"],
            "overhead_fraction": (round_s - c["compute_round_s"]) / round_s,
            "overhead_fraction_vs_worker_env": (round_s - cw["compute_round_s"]) / round_s,
            "epoch_s": m["epoch_s"],
            "compute_epoch_s": c["compute_epoch_s"],
            "speedup_vs_single_process": single["epoch_s"] / m["epoch_s"],
        }
    return {
        "n_train": store["n"],
        "chunk_rows": store["chunk_rows"],
        "rows": rows,
        "compute": comp,
        "compute_worker_env": comp_w,
        "single_process": single,
        "cluster": clus,
    }


def accuracy(cfg):
    store = mnist_store(cfg)
    spec = {"store": str(store["path"]), "n_test": cfg.n_test, "epochs": cfg.accuracy_epochs}
    single = _run_child(dict(spec, kind="accuracy_single"))
    par = _run_child(dict(spec, kind="accuracy", af=10))
    gaps = {k: 100 * (r["accuracy"] - single["accuracy"]) for k, r in par["runs"].items()}
    return {
        "n_train": store["n"],
        "epochs": cfg.accuracy_epochs,
        "af": 10,
        "single_process": single,
        "parallel": par,
        "gap_pt": gaps,
        "passed": {k: abs(g) <= TARGETS["accuracy_gap_pt"] for k, g in gaps.items()},
    }


def _model(p, af, n, bandwidth, placement="star", worker_env=False):
    """Seconds per round of N replicas and the efficiency C / T (the docstring's model).

    ``placement``: "star" (replicas on N workers, as parallel.fit's graph asks), "tree"
    (a tree reduction and broadcast), "serial" (all replicas queued on the worker
    holding the average, what the scheduler did in the ``overhead`` runs).
    """
    m = p["worker_env"] if worker_env else p["in_process"]
    C, Wr, bs = m["C"][str(af)], p["window_rows"], p["batch_size"]
    hop, lat, S, c = p["l"], p["t"], p["S"], p["c"]
    avg = lambda k: max(m["A2"] + m["A1"] * (k - 2), 0.0)  # noqa: E731
    if placement == "serial":  # one worker's window cache serves every replica
        return n * C + m["r_w"] * n * af * bs / Wr + avg(n) + 2 * hop + (n + 2) * c
    reads = m["r_w"] * min(n * af * bs / Wr, 1 + af * bs / Wr)
    if placement == "tree":
        L = math.ceil(math.log2(n)) if n > 1 else 0
        comm = L * avg(2) + 2 * L * (hop + lat + S / bandwidth) + (2 * n + 1) * c
    else:
        comm = avg(n) + 2 * (hop + lat) + 2 * (n - 1) * S / bandwidth + (n + 2) * c
    return C + reads + comm


def _model_inputs(comp, comp_w, micro):
    hop = micro["hop_s"]
    S = comp["round_bytes"]
    lat = max(hop["alternating_tiny"] - hop["same_worker"], 0.0)  # t
    state_s = max(hop["alternating_state"] - hop["same_worker"], lat + 1e-6)  # t + S / B

    def side(cp):
        a2, a8 = cp["average_s"]["2"], cp["average_s"]["8"]
        return {
            "C": {af: rec["full_round_compute_s"] for af, rec in cp["afs"].items()},
            "r_w": statistics.median(rec["window_read_s"] for rec in cp["afs"].values()),
            "A2": a2,
            "A1": (a8 - a2) / 6,
        }

    return {
        "S": S,
        "t": lat,
        "l": hop["same_worker"],
        "c": micro["task_s"],
        "B_localhost": S / (state_s - lat),
        "window_rows": comp["window_rows"],
        "batch_size": comp["batch_size"],
        "in_process": side(comp),
        "worker_env": side(comp_w),
    }


def scaling(cfg):
    store = mnist_store(cfg)
    comp, comp_w = _compute(cfg), _compute(cfg, worker_env=True)
    micro = _run_child(
        {"kind": "micro", "store": str(store["path"]), "n_tasks": cfg.n_tasks, "chain": cfg.chain}
    )
    p = _model_inputs(comp, comp_w, micro)
    pred = {}
    for af in SCALING_AFS:
        C0 = p["in_process"]["C"][str(af)]
        for name, B, placement, env in SCENARIOS:
            bw = p["B_localhost"] if B is None else B
            for n in SCALING_NS:
                T = _model(p, af, n, bw, placement, env)
                pred[f"{af}/{name}/{n}"] = {"round_s": T, "efficiency": C0 / T}
        for placement in ("star", "serial"):
            pred[f"{af}/n2-{placement}"] = _model(p, af, 2, p["B_localhost"], placement, True)
    return {"params": p, "micro": micro, "predictions": pred}


# (label, bandwidth (None: the measured localhost one), placement, workers' malloc env)
SCENARIOS = (
    ("localhost B, star", None, "star", False),
    ("10 GbE, star", NET_10GBE, "star", False),
    ("10 GbE, tree", NET_10GBE, "tree", False),
    ("10 GbE, star, workers' malloc", NET_10GBE, "star", True),
)

RUN = {"overhead": overhead, "accuracy": accuracy, "scaling": scaling}


# ----------------------------------------------------------------------------- report


def machine():
    import dask
    import distributed
    import jax
    import zarr

    cpu = cpu_name()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "zarr": zarr.__version__,
        "workers_malloc_trim_threshold": _worker_malloc_trim(),
        "load_avg_at_start": os.getloadavg(),
    }


def _ms(s):
    return f"{1000 * s:.1f}"


def _overhead_table(o):
    clus, comp, comp_w = o["cluster"]["afs"], o["compute"], o["compute_worker_env"]
    rows = []

    def add(measure, cell, note=""):
        rows.append(("overhead", measure, *[cell(str(af)) for af in AFS], note))

    R = o["rows"]
    add("rounds per epoch", lambda a: str(clus[a]["rounds_per_epoch"]))
    add("**round time**, ms (steady epoch / rounds)", lambda a: f"**{_ms(R[a]['round_s'])}**")
    add(
        "steady epoch s of each timed pair of fits",
        lambda a: ", ".join(f"{x:.2f}" for x in clus[a]["epoch_s_each"]),
    )
    add(
        "**compute time**, ms: local_steps in-process, 1 core, slower replica, mean",
        lambda a: f"**{_ms(R[a]['compute_round_s'])}**",
        "store reads included",
    )
    add(
        "**overhead fraction** (round - compute) / round",
        lambda a: f"**{R[a]['overhead_fraction']:.0%}**",
    )
    add(
        "compute time with the workers' MALLOC_TRIM_THRESHOLD_, ms; overhead fraction then",
        lambda a: (
            f"{_ms(R[a]['compute_round_worker_env_s'])}; "
            f"{R[a]['overhead_fraction_vs_worker_env']:.0%}"
        ),
        f"= {comp_w['malloc_trim_threshold']}, set by distributed's nanny",
    )
    add(
        "epoch s: parallel.fit / its compute / est.fit (1 process, 2 cores)",
        lambda a: (
            f"{R[a]['epoch_s']:.2f} / {R[a]['compute_epoch_s']:.2f} / "
            f"{o['single_process']['epoch_s']:.2f}"
        ),
    )
    s = {a: clus[a]["stream"] for a in clus}
    add(
        "task stream, median round, ms: replicas' compute (time covered) + average + "
        "transfers + gaps",
        lambda a: (
            f"{_ms(s[a]['replica_phase'])} + {_ms(s[a]['average'])} + "
            f"{_ms(s[a]['transfers'])} + {_ms(s[a]['gaps'])} = {_ms(s[a]['wall'])}"
        ),
    )
    add(
        "one replica, full round, median ms: on a worker / in-process / in-process, "
        "workers' malloc",
        lambda a: (
            f"{_ms(s[a]['replica_busy'] / N_WORKERS)} / "
            f"{_ms(comp['afs'][a]['full_round_replica_s'])} / "
            f"{_ms(comp_w['afs'][a]['full_round_replica_s'])}"
        ),
    )
    add(
        "window reads per epoch (both replicas) x ms each, in-process",
        lambda a: (
            f"{comp['afs'][a]['window_reads_per_epoch']} x {_ms(comp['afs'][a]['window_read_s'])}"
        ),
    )
    add(
        "rounds whose 2 replicas ran on 2 workers / at the same time / all rounds",
        lambda a: f"{s[a]['distinct_workers']} / {s[a]['concurrent']} / {s[a]['full_rounds']}",
    )
    add(
        "transfers between workers per round; their seconds per epoch",
        lambda a: (
            f"{clus[a]['transfers'] / (clus[a]['rounds_per_epoch'] * clus[a]['n_iter']):.2f}"
            f"; {clus[a]['transfer_s'] / clus[a]['n_iter']:.2f}"
        ),
        f"S = {comp['round_bytes'] / 1e6:.2f} MB pickled; dask's sizeof: "
        f"{comp['round_dask_sizeof']:,} B",
    )
    add(
        "CPU s per epoch: client+scheduler / worker 0 / worker 1",
        lambda a: " / ".join(f"{v:.2f}" for v in clus[a]["cpu_s_per_epoch"].values()),
    )
    cols = ["section", "measure", *[f"af={af}" for af in AFS], "note"]
    return markdown_table(cols, rows)


def _accuracy_table(a):
    s, runs = a["single_process"], a["parallel"]["runs"]
    rows = [("accuracy", "est.fit, 1 process", f"{s['accuracy']:.2%}", "", f"{s['fit_s']:.0f}", "")]
    for key, label in (
        ("False", "scale_learning_rate=False"),
        ("True", "scale_learning_rate=True"),
    ):
        r = runs[key]
        rows.append(
            (
                "accuracy",
                f"parallel.fit, 2 workers, af={a['af']}, {label}",
                f"{r['accuracy']:.2%}",
                f"{a['gap_pt'][key]:+.2f} pt",
                f"{r['fit_s']:.0f}",
                "PASS" if a["passed"][key] else "FAIL",
            )
        )
    cols = ["section", "run", f"test accuracy, {a['epochs']} epochs", "vs 1 process", "fit s"]
    return markdown_table([*cols, f"within {TARGETS['accuracy_gap_pt']} pt"], rows)


def _scaling_table(sc, overhead=None):
    p, pred = sc["params"], sc["predictions"]
    rows = []
    for af in SCALING_AFS:
        for name, *_ in SCENARIOS:
            cells = [f"{pred[f'{af}/{name}/{n}']['efficiency']:.0%}" for n in SCALING_NS]
            C = p["in_process"]["C"][str(af)]
            rows.append((f"af={af}", name, *cells, f"C = {_ms(C)} ms"))
    cols = ["af", "links, topology", *[f"N={n}" for n in SCALING_NS], "compute per round"]
    lines = [markdown_table(cols, rows), ""]
    ip, we = p["in_process"], p["worker_env"]
    lines.append(
        f"Model inputs: S = {p['S'] / 1e6:.2f} MB; B(localhost) = {p['B_localhost'] / 1e6:.0f} "
        f"MB/s; per-transfer latency t = {_ms(p['t'])} ms; dependent hop l = {_ms(p['l'])} ms; "
        f"scheduler per task c = {_ms(p['c'])} ms; window read r_w = {_ms(ip['r_w'])} ms "
        f"({_ms(we['r_w'])} with the workers' malloc) per {p['window_rows']:,} rows; A(N) = "
        f"{_ms(ip['A2'])} + {_ms(ip['A1'])} (N - 2) ms ({_ms(we['A2'])} + {_ms(we['A1'])} "
        "(N - 2) with the workers' malloc)."
    )
    if overhead:
        cells = []
        for af in SCALING_AFS:
            measured = overhead["rows"][str(af)]["round_s"]
            cells.append(
                f"af={af}: measured {_ms(measured)} ms; model, replicas on one worker "
                f"{_ms(pred[f'{af}/n2-serial'])} ms, on two {_ms(pred[f'{af}/n2-star'])} ms"
            )
        lines.append("Check at N=2 (workers' malloc, localhost): " + "; ".join(cells) + ".")
    return "\n".join(lines)


def report(result):
    """Markdown tables: overhead per af; accuracy; scaling predictions."""
    out = []
    if "overhead" in result:
        out.append(_overhead_table(result["overhead"]))
    if "accuracy" in result:
        out.append(_accuracy_table(result["accuracy"]))
    if "scaling" in result:
        out.append(_scaling_table(result["scaling"], result.get("overhead")))
    return "\n\n".join(out)


def _remove_mnist_store():
    store = _MNIST_STORE.get("path")
    if store is not None and Path(store).exists():
        shutil.rmtree(store)


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="10k samples, 2 epochs: a smoke run")
    p.add_argument("--accuracy-epochs", type=int, help="max_iter of the accuracy fits (20)")
    args = p.parse_args()
    if args.child:
        return child_main(args.child, CHILDREN)
    cfg = Config(args)
    cfg.dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "quick": cfg.quick, "targets": TARGETS}
    print(json.dumps(result["machine"]), flush=True)
    run_sections(args.only or SECTIONS, RUN, cfg, result, args.json, cleanup=_remove_mnist_store)
    if cfg.quick:
        print("QUICK RUN (10k MNIST samples, 2 epochs): the numbers are not the full run's")
    print(report(result))
    print_totals(result)


if __name__ == "__main__":
    main()
