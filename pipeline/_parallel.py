"""Data-parallel training on dask.distributed by parameter averaging.

A round takes the next ``n_workers * averaging_frequency`` mini-batches of the
very stream single-process training reads; replica ``w`` gets the ``w``-th
contiguous part, reads it from the store on its worker, and takes
``averaging_frequency`` local steps from the round's starting point; then the
replicas are averaged, weighted by samples (:mod:`pipeline._replica`). Each
epoch is submitted as one chain of pure tasks that starts from an anchor given
by value, so a worker that dies costs at most a rerun of the epoch's lost tasks,
never a different model. The client reads a few numbers per round (the loss),
the state at the end of each epoch, and the state at each checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import zarr
from dask.base import tokenize
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from pipeline import _replica, nn
from pipeline._engine import CHUNK_ROWS, NeuralNetBase
from pipeline._netio import to_numpy
from pipeline._replica import Job, Round, Stored
from pipeline._atomic import atomic_dir
from pipeline._store import _local_path
from pipeline._store import open as open_store
from pipeline.checkpoint import (
    _open_model_group,
    _params_json,
    _read_tree,
    _restore,
    _write_group,
    _write_tree,
)

__all__ = ["fit"]

CHECKPOINT = "pipeline-parallel-checkpoint"
CHECKPOINT_VERSION = 1


class _Progress(NamedTuple):
    """Where a fit stands inside its current epoch (all a checkpoint adds)."""

    round: int = 0  # the next round of the epoch
    loss_sum: float = 0.0
    count: int = 0
    rounds_done: int = 0  # over the whole fit
    finished: int = 0  # 1: the fit ended here (a resume returns this model)


def fit(
    estimator,
    X,
    y=None,
    *,
    sample_weight=None,
    client=None,
    n_workers=None,
    averaging_frequency=10,
    average_optimizer_state=True,
    scale_learning_rate=False,
    checkpoint=None,
    checkpoint_every=10,
    verbose=None,
):
    """Fit ``estimator`` on a dask cluster by parameter averaging.

    Parameters
    ----------
    estimator : one of pipeline's network estimators, with a stochastic solver
        Fitted in place (and returned), as ``estimator.fit`` would be.
    X : store path, Dataset, zarr array, dask array or array-like, shape (n_samples, ...)
        Stored data is read by the workers straight from the store (a local path
        or an fsspec URL the workers can reach), each its own part; numpy data is
        scattered to the cluster once (it lives in the workers' memory, so losing a
        worker loses it: a fit that must survive faults reads a store).
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
        Default: the store's targets.
    sample_weight : array-like of shape (n_samples,), optional
    client : distributed.Client, optional
        Default: the active client.
    n_workers : int, optional
        Replicas per round (default: the cluster's workers when the fit starts).
        The model depends on this number, not on which workers run the tasks.
    averaging_frequency : int, default=10
        Local mini-batch steps of each replica between averages (1: synchronous
        data-parallel SGD).
    average_optimizer_state : bool, default=True
        Average the optimizer state too (weighted by samples); False: each
        replica keeps its own.
    scale_learning_rate : bool, default=False
        Multiply the learning rate by ``n_workers`` (Goyal et al.'s linear
        scaling; combine with the estimator's ``warmup_epochs``, 5 in the paper).
    checkpoint : str or os.PathLike, optional
        A local directory: a Zarr group written every ``checkpoint_every`` rounds
        and at the end (parameters, optimizer state, RNG key, round, stream
        position). If it holds a checkpoint of the same fit, the fit resumes from
        it, to the same final model.
    checkpoint_every : int, default=10
    verbose : bool, optional
        Show the dashboard link and a progress bar of rounds and loss (default:
        the estimator's ``verbose``).

    Returns
    -------
    estimator
        The fitted estimator.
    """
    _check_estimator(estimator)
    client = _client(client)
    k = _positive("n_workers", _n_workers(client) if n_workers is None else n_workers)
    af = _positive("averaging_frequency", averaging_frequency)
    every = _positive("checkpoint_every", checkpoint_every)
    target = None if checkpoint is None else _checkpoint_dir(checkpoint)
    options = dict(
        n_workers=k,
        averaging_frequency=af,
        average_optimizer_state=bool(average_optimizer_state),
        scale_learning_rate=bool(scale_learning_rate),
    )
    verbose = estimator.verbose if verbose is None else verbose
    with estimator._rollback():
        return _fit(estimator, (X, y, sample_weight), client, options, target, every, verbose)


def _check_estimator(est):
    if not isinstance(est, NeuralNetBase):
        raise TypeError(
            f"parallel.fit trains pipeline's network estimators, got {type(est).__name__}"
        )
    if est.solver == "lbfgs":
        raise ValueError(
            "solver='lbfgs' optimises the full-batch loss and cannot be averaged across "
            "workers; use a stochastic solver such as 'sgd' or 'adam'"
        )
    est._check_solver_options()


def _client(client):
    from distributed import Client, get_client

    if client is None:
        try:
            return get_client()
        except ValueError:
            raise ValueError(
                "parallel.fit needs a dask cluster: pass client=Client(...) or start one "
                "first, e.g. Client(LocalCluster(n_workers=2, threads_per_worker=1))"
            ) from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    return client


def _n_workers(client):
    return len(client.scheduler_info(n_workers=-1)["workers"])


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _checkpoint_dir(path):
    local = _local_path(path)
    if local is None:
        raise ValueError(
            f"checkpoint must be a local directory (written atomically by renaming), got {path!r}"
        )
    return local


def _fit(est, data, client, options, target, every, verbose):
    X, y, sample_weight = data
    if isinstance(X, (str, os.PathLike)):
        X = open_store(X)
    first = not hasattr(est, "_config") or not est.warm_start
    data = est._validate_training(X, y, sample_weight, reset=first)
    with jax.enable_x64(data.X.dtype == np.float64 if first else est._dtype == "float64"):
        if first:
            est._initialize(data)
        data = data._replace(X=est._cast(data.X))
        train, val = est._split(data) if est.early_stopping else (data, None)
        job, start = _start(est, train, options)
        progress = _Progress()
        if target is not None and _is_checkpoint(target):
            start, progress = _resume(est, target, job, options)
        est.n_iter_ = getattr(est, "n_iter_", 0) if progress.rounds_done else 0
        if est.early_stopping and not hasattr(est, "_best_params"):
            est._best_params = to_numpy(start.params)
        Xa, Ya = _ship(client, train)
        run = _Run(client, job, Xa, Ya, options, target, every)
        start = run.epochs(est, start, progress, train.n, val, verbose)
        est._store_carry(_engine_carry(start))
        if est.early_stopping:
            est._export_params(est._best_params)
    est._check_finite_params()
    return est


def _padding(est, train, bs):
    """All-padding mini-batches at the end of a single-process epoch (its last
    chunk is padded to whole chunks), so one replica advances the key the same way."""
    n_batches = max(1, math.ceil(CHUNK_ROWS / bs))
    if train.streamed:
        n_batches = max(n_batches, train.X.chunks[0][0] // bs)
    if not est._scan_batches:
        n_batches = 1
    steps = math.ceil(train.n / bs)
    n_batches = min(n_batches, steps)
    return math.ceil(steps / n_batches) * n_batches - steps


def _start(est, train, options):
    """The fit's Job and its first Round."""
    k = options["n_workers"]
    bs = est._batch_size(train.n)
    local_steps = math.ceil(math.ceil(train.n / bs) / k)  # per replica per epoch
    spec = est._optimizer_spec(bs, local_steps)
    in_state = dict(spec[1])["kind"] == "constant" and dict(spec[1])["learning_rate_init"] == 1.0
    if options["scale_learning_rate"] and not in_state:
        sched = dict(spec[1], learning_rate_init=dict(spec[1])["learning_rate_init"] * k)
        spec = (spec[0], tuple(sorted(sched.items())))
    params = est._import_params()
    opt_state = est._optimizer_state(jax.tree_util.tree_map(jnp.asarray, params), spec, True)
    if options["scale_learning_rate"] and in_state:
        opt_state = nn.set_learning_rate(opt_state, est.learning_rate_init * k)
    job = Job(
        config=est._config,
        out_activation=est.out_activation_,
        spec=spec,
        scan=bool(est._scan_batches),
        dtype=str(est._dtype),
        penalties=tuple(float(h) for h in est._hyper()),
        batch_size=bs,
        shuffle=bool(est.shuffle),
        seed=int(est._seed),
        window=4,
        n_samples=int(train.n),
        steps=math.ceil(train.n / bs),
        padding=_padding(est, train, bs),
        data_token=_data_token(train),
        average_optimizer_state=options["average_optimizer_state"],
    )
    start = Round(to_numpy(params), to_numpy(est._state), (to_numpy(opt_state),), est._key)
    return job, start


def _data_token(train):
    if train.streamed:
        return tokenize(train.X.name, train.Y.name)
    return tokenize(train.X, train.Y)


def _ship(client, train):
    """What tasks get as X and Y: a store's dask arrays as they are (each worker
    reads its own chunks), numpy arrays scattered to the cluster once."""
    if train.streamed:
        return Stored(train.X), Stored(train.Y)
    return client.scatter([train.X, train.Y], hash=False)


def _engine_carry(start):
    """``[params, state, opt_state, key]`` as the engine's bookkeeping takes it."""
    key = jax.random.wrap_key_data(jnp.asarray(start.key))
    return [start.params, start.state, start.opt_states[0], key]


class _Run:
    """The client's side of a fit: submits each epoch's rounds, reads their
    losses in order, keeps the books and writes the checkpoints."""

    def __init__(self, client, job, X, Y, options, target, every):
        self.client, self.job, self.X, self.Y = client, job, X, Y
        self.options, self.target, self.every = options, target, every
        self.k, self.af = options["n_workers"], options["averaging_frequency"]
        self.rounds = math.ceil(job.steps / (self.k * self.af))
        self.workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        busy = math.ceil(job.steps / self.af)
        if busy < self.k:
            warnings.warn(
                f"an epoch has {job.steps} mini-batches, fewer than n_workers x "
                f"averaging_frequency = {self.k} x {self.af}: only {busy} of the {self.k} "
                "replicas get data; lower averaging_frequency to train on all of them",
                stacklevel=4,
            )

    def home(self, replica):
        """The worker a replica prefers: each replica on its own (dask would put
        them all next to the average they read), the same one every round (its
        shuffled windows are cached there). Any other worker takes over if it dies."""
        return [self.workers[replica % len(self.workers)]] if self.workers else None

    def epochs(self, est, start, progress, n, val, verbose):
        if verbose:
            print(f"parallel.fit: {self.k} replicas; dashboard: {self.client.dashboard_link}")
        bar = tqdm(
            total=est.max_iter,
            initial=est.n_iter_,
            disable=not verbose,
            desc=f"{type(est).__name__} x{self.k}",
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]",
        )
        try:
            while est.n_iter_ < est.max_iter and not progress.finished:
                start, progress = self.epoch(est, start, progress, bar)
                loss = progress.loss_sum / n
                est._epochs_seen += 1
                carry = _engine_carry(start)
                stop = est._end_epoch(loss, n, carry, val, bar)
                start = _with_learning_rate(start, carry[2])
                progress = _Progress(rounds_done=progress.rounds_done)
                if stop:
                    break
            else:
                if progress.finished:
                    return start
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({est.max_iter}) "
                    "reached and the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
        finally:
            bar.close()
        if self.target is not None and not progress.finished:
            done = progress._replace(finished=1)
            _save_checkpoint(self.target, est, start, done, self.job, self.options)
        return start

    def submit(self, epoch, begin, start):
        """The epoch's rounds from ``begin`` on, chained: a list of round futures."""
        client, job, step = self.client, self.job, self.k * self.af
        with warnings.catch_warnings():  # once an epoch, the state itself is the task
            warnings.filterwarnings("ignore", message="Sending large graph")
            prev = client.submit(_replica.anchor, start, key=f"anchor-{tokenize(job, start)}")
        futures = []
        for r in range(begin, self.rounds):
            parts = [
                (
                    min(job.steps, r * step + w * self.af),
                    min(job.steps, r * step + (w + 1) * self.af),
                )
                for w in range(self.k)
            ]
            pad = job.padding if r + 1 == self.rounds else 0
            shares = [
                client.submit(
                    _replica.local_steps,
                    *(job, self.X, self.Y, prev, epoch, a, b, w, pad * (w == 0)),
                    workers=self.home(w),
                    allow_other_workers=True,
                )
                for w, (a, b) in enumerate(parts)
            ]
            prev = client.submit(_replica.average, job, *shares)
            futures.append(prev)
        return futures

    def epoch(self, est, start, progress, bar):
        epoch = est._epochs_seen
        futures = self.submit(epoch, progress.round, start)
        stats = [self.client.submit(_replica.summary, f) for f in futures]
        for r, (future, stat) in enumerate(zip(futures, stats, strict=True), progress.round):
            loss, count, finite = stat.result()
            if not finite:
                raise ValueError(
                    f"Input X contains NaN or infinity: found in round {r} of {self.rounds} of "
                    f"epoch {epoch}. Clean or impute the data first (a lazy dask expression "
                    "such as da.nan_to_num(X) works on streamed data)."
                )
            progress = _Progress(
                r + 1, progress.loss_sum + loss, progress.count + count, progress.rounds_done + 1
            )
            bar.update(1 / self.rounds)
            bar.set_postfix(round=progress.rounds_done, loss=f"{loss / count:.4g}")
            if r + 1 == self.rounds or (self.target and progress.rounds_done % self.every == 0):
                start = future.result()
                if self.target is not None and r + 1 < self.rounds:
                    _save_checkpoint(self.target, est, start, progress, self.job, self.options)
        return start, progress


def _with_learning_rate(start, opt_state):
    """``start`` with the learning rate the stopping policy set (adaptive)."""
    if opt_state is start.opt_states[0]:
        return start
    lr = nn.current_learning_rate(opt_state)
    opts = tuple(nn.set_learning_rate(o, lr) for o in start.opt_states)
    return start._replace(opt_states=to_numpy(opts))


# checkpoints: the estimator as a model group, plus the fit's progress


def _is_checkpoint(target):
    return (target / "zarr.json").exists()


def _save_checkpoint(target, est, start, progress, job, options):
    """Write the checkpoint next to ``target``, then rename it into place."""
    with atomic_dir(target, "checkpoint", overwrite=True) as tmp:
        group = zarr.open_group(tmp, mode="a", zarr_format=3)
        snapshot = copy.copy(est)
        snapshot._store_carry(_engine_carry(start))
        _write_group(snapshot, str(Path(tmp) / "model"))
        replicas = _write_tree(group, "replicas", list(start.opt_states[1:]))
        best = _write_tree(group, "best", est._best_params) if est.early_stopping else 0
        group.attrs[CHECKPOINT] = {
            "version": CHECKPOINT_VERSION,
            "progress": [float(v) if isinstance(v, float) else int(v) for v in progress],
            "stream": {  # where the next round reads, for people and tools
                "epoch": int(est._epochs_seen),
                "batch": progress.round * options["n_workers"] * options["averaging_frequency"],
                "batch_size": job.batch_size,
            },
            "job": _fingerprint(job, options),
            "arrays": {"replicas": replicas, "best": best},
        }


def _fingerprint(job, options):
    """What must match for a checkpoint to continue this fit."""
    return {
        "options": options,
        "batch_size": job.batch_size,
        "n_samples": job.n_samples,
        "steps": job.steps,
        "seed": job.seed,
        "shuffle": job.shuffle,
    }


def _resume(est, target, job, options):
    """The Round and progress a checkpoint holds; its books go into ``est``."""
    try:
        meta = zarr.open_group(str(target), mode="r").attrs[CHECKPOINT]
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{target} is not a parallel.fit checkpoint: {exc}") from None
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{target} has checkpoint version {meta.get('version')!r}")
    group, model_meta = _open_model_group(target / "model")
    if model_meta["params"] != _params_json(est):
        raise ValueError(
            f"{target} holds a checkpoint of an estimator with other parameters; "
            "remove it or choose another checkpoint directory"
        )
    now = _fingerprint(job, options)
    if meta["job"] != now:
        differ = {k: (meta["job"].get(k), v) for k, v in now.items() if meta["job"].get(k) != v}
        raise ValueError(
            f"{target} holds a checkpoint of a different fit ({differ}, as saved and now); "
            "remove it or choose another checkpoint directory"
        )
    saved = _restore(type(est), group, model_meta, {})
    books = {k: v for k, v in vars(saved).items() if k not in est.get_params(deep=False)}
    vars(est).update(books)
    root = zarr.open_group(str(target), mode="r")
    extra = meta["arrays"]
    opts = (est._opt_state,)
    if extra["replicas"]:
        template = [est._opt_state] * (extra["replicas"] // _leaves(est._opt_state))
        opts += tuple(_read_tree(root, "replicas", extra["replicas"], template))
    if extra["best"]:
        est._best_params = _read_tree(root, "best", extra["best"], est._import_params())
    start = Round(est._import_params(), est._state, opts, est._key)
    return start, _Progress(*meta["progress"])


def _leaves(tree):
    return len(jax.tree_util.tree_leaves(tree))
