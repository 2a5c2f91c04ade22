"""Data-parallel training on dask.distributed by parameter averaging.

A round takes the next ``n_workers * averaging_frequency`` mini-batches of the
very stream single-process training reads; replica ``w`` gets the ``w``-th
contiguous part, reads it from the store on its worker, and takes
``averaging_frequency`` local steps from the round's starting point; then the
replicas are averaged, weighted by samples (:mod:`pipeline._replica`). Each
epoch is submitted as one chain of pure tasks that starts from an anchor given
by value, so a worker that dies costs at most a rerun of the epoch's lost tasks,
never a different model. Numpy data is scattered to every worker; should every
copy of it be lost, the client scatters it again and reruns the epoch's rounds
from the last state it read. The client reads a few numbers per round (the
loss), the state at the end of each epoch, and the state at each checkpoint.
A checkpoint names the data it was made on, and a resume on other data is refused;
its metadata carries a checksum, and a hand-edited checkpoint is refused too.
"""

from __future__ import annotations

import copy
import math
import os
import uuid
import warnings
from concurrent.futures import CancelledError
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
from pipeline._adapter import as_dask as as_streamed
from pipeline._adapter import is_streamed
from pipeline._atomic import atomic_dir, check_destination, kind_of, local_path, read_marker
from pipeline._engine import CHUNK_ROWS, NeuralNetBase, _DeferredInterrupt
from pipeline._inputs import lazy_view
from pipeline._netio import to_numpy
from pipeline._replica import Job, Round, Stored
from pipeline._schema import verify_checksum, with_checksum
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
_RERUNS = 3  # reruns from one state the client holds before a lost epoch is given up
_WAIT_FOR_WORKERS = 120  # seconds a fit that lost its workers waits for one to come back


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
        scattered to every worker (it lives in their memory: should all copies be
        lost, the client scatters it again and reruns the epoch from the last state
        it read, to the same model).
    y : array-like of shape (n_samples,) or (n_samples, n_targets), optional
        Default: the store's targets.
    sample_weight : array-like of shape (n_samples,), optional
    client : distributed.Client, optional
        An open, synchronous client. Default: the active client.
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
        position, the identity of the training data), replaced atomically. If it
        holds a checkpoint of the same fit on the same data, the fit resumes from
        it, to the same final model (a finished one is returned as it is); a
        checkpoint of another fit or other data is refused. A path that holds
        anything else (a file, a user's directory, another pipeline object) is
        refused before any work starts; an empty directory is used.
    checkpoint_every : int, default=10
    verbose : bool, optional
        Show the dashboard link and a progress bar of rounds and loss (default:
        the estimator's ``verbose``).

    Returns
    -------
    estimator
        The fitted estimator.

    Raises
    ------
    ValueError
        Bad arguments; a closed client; a checkpoint of another fit or other data,
        or one whose metadata was edited (it does not match its checksum).
    ConnectionError
        The client cannot reach its scheduler.
    FileExistsError, PermissionError
        ``checkpoint`` holds something that is not a parallel.fit checkpoint, or
        cannot be written.
    """
    _check_estimator(estimator)
    client = _client(client)
    af = _positive("averaging_frequency", averaging_frequency)
    every = _positive("checkpoint_every", checkpoint_every)
    target = None if checkpoint is None else _checkpoint_dir(checkpoint)
    k = _positive("n_workers", _n_workers(client) if n_workers is None else n_workers)
    options = dict(
        n_workers=k,
        averaging_frequency=af,
        average_optimizer_state=bool(average_optimizer_state),
        scale_learning_rate=bool(scale_learning_rate),
    )
    verbose = estimator.verbose if verbose is None else verbose
    # deferred: Ctrl-C acts while the client waits on the cluster, never inside JAX
    with estimator._rollback(), _DeferredInterrupt() as interrupt:
        run = (client, options, target, every, interrupt)
        return _fit(estimator, (X, y, sample_weight), run, verbose)


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
            client = get_client()
        except ValueError:
            raise ValueError(
                "parallel.fit needs a dask cluster: pass client=Client(...) or start one "
                "first, e.g. Client(LocalCluster(n_workers=2, threads_per_worker=1))"
            ) from None
    if not isinstance(client, Client):
        hint = ""
        if isinstance(client, str):
            hint = f"; connect with distributed.Client({client!r})"
        elif hasattr(client, "scheduler_address"):  # a cluster object
            hint = "; connect with distributed.Client(cluster)"
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}{hint}")
    if client.asynchronous:
        raise ValueError(
            "parallel.fit blocks until the fit ends: pass a synchronous Client "
            "(asynchronous=False), or call it in a thread (await asyncio.to_thread(...))"
        )
    _check_open(client)
    return client


def _check_open(client, cause=None):
    """Refuse a client that is closed or has lost its scheduler, saying which."""
    if client.status == "running":
        return
    if client.status in ("closing", "closed"):
        error = ValueError(
            f"the dask Client is {client.status}: pass an open one (a Client closes with its "
            "`with` block, client.close() or its cluster's close())"
        )
    else:
        error = ConnectionError(
            f"the dask Client is not connected to its scheduler ({_address(client)}, status "
            f"{client.status!r}): is the cluster still running?"
        )
    raise error from cause


def _address(client):
    return getattr(client.scheduler, "address", None) or "address unknown"


def _workers(client):
    """The addresses of the cluster's workers, asked of its scheduler now."""
    from distributed.comm.core import CommClosedError

    try:
        info = client.sync(client.scheduler.identity, n_workers=-1)
    except (OSError, CommClosedError) as exc:
        _check_open(client, exc)
        raise ConnectionError(
            f"cannot reach the dask scheduler at {_address(client)}: {exc}"
        ) from exc
    return sorted(info.get("workers", {}))


def _n_workers(client):
    n = len(_workers(client))
    if n == 0:
        raise ValueError(
            "the dask cluster has no workers yet: start some (or wait for them, "
            "client.wait_for_workers(n)), or pass n_workers"
        )
    return n


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _checkpoint_dir(path):
    """The checkpoint's local path, checked before any work: it may hold nothing,
    an empty directory or a parallel.fit checkpoint (resumed, then replaced)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path (str or os.PathLike), got {type(path).__name__}"
        )
    local = local_path(path)
    if local is None:
        raise ValueError(
            f"checkpoint must be a local directory (written atomically by renaming), got {path!r}"
        )
    check_destination(local, "checkpoint", overwrite=True)
    return local


def _fit(est, data, run, verbose):
    X, y, sample_weight = data
    client, options, target, every, interrupt = run
    if isinstance(X, (str, os.PathLike)):
        X = open_store(X)
    y, sample_weight = _named_by_content(X, y, sample_weight)
    first = not hasattr(est, "_config") or not est.warm_start
    data = est._validate_training(X, y, sample_weight, reset=first)
    with jax.enable_x64(data.X.dtype == np.float64 if first else est._dtype == "float64"):
        if first:
            est._initialize(data)
        data = data._replace(X=est._cast(data.X))
        train, val = est._split(data) if est.early_stopping else (data, None)
        job, start = _start(est, train, options)
        progress = _Progress()
        if target is not None and kind_of(target) == "checkpoint":
            start, progress = _resume(est, target, job, options, _identity(train, job))
        est.n_iter_ = getattr(est, "n_iter_", 0) if progress.rounds_done else 0
        if est.early_stopping and not hasattr(est, "_best_params"):
            est._best_params = to_numpy(start.params)
        run = _Run(client, job, train, options, target, every, interrupt)
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
        fit=uuid.uuid4().hex,
    )
    start = Round(to_numpy(params), to_numpy(est._state), (to_numpy(opt_state),), est._key)
    return job, start


def _named_by_content(X, y, sample_weight):
    """In-memory ``y`` and ``sample_weight`` beside streamed ``X`` as dask arrays cut
    like X's rows and named by their content, so that the data token (and a resume)
    sees the same values as the same data; validation would name them at random.
    What validation would refuse or check eagerly is left to it as it is."""
    if not is_streamed(X):
        return y, sample_weight
    rows = as_streamed(X).chunks[0]
    if any(math.isnan(r) for r in rows):
        return y, sample_weight
    return _by_content(y, rows, "y", (1, 2)), _by_content(sample_weight, rows, "weights", (1,))


def _by_content(a, rows, what, ndims):
    if a is None or is_streamed(a):
        return a
    values = np.asarray(a)
    if values.ndim not in ndims or values.shape[0] != sum(rows):
        return a
    if what == "weights" and (
        values.dtype.kind not in "biuf" or not np.isfinite(values.astype(np.float64)).all()
    ):
        return a
    name = f"in-memory-{what}-{tokenize(values, rows)}"
    return lazy_view(values, (rows, *values.shape[1:]), name=name)


def _data_token(train):
    """The identity of the training data (features, targets, sample weights, after
    the validation split): streamed data by its dask names (a store's come from its
    uid), in-memory data by a hash of its content."""
    if train.streamed:
        return tokenize(train.X.name, train.Y.name)
    return tokenize(train.X, train.Y)


def _identity(train, job):
    """What a checkpoint records of its data: the token, and the data in a few words."""
    if train.streamed:
        what = f"dask arrays {train.X.name} and {train.Y.name}"
    else:
        what = f"in-memory arrays of shapes {train.X.shape} and {train.Y.shape}, content hashed"
    return {"token": job.data_token, "what": what}


def _engine_carry(start):
    """``[params, state, opt_state, key]`` as the engine's bookkeeping takes it."""
    key = jax.random.wrap_key_data(jnp.asarray(start.key))
    return [start.params, start.state, start.opt_states[0], key]


class _Run:
    """The client's side of a fit: submits each epoch's rounds, reads their
    losses in order, keeps the books and writes the checkpoints."""

    def __init__(self, client, job, train, options, target, every, interrupt):
        self.client, self.job, self.train, self.interrupt = client, job, train, interrupt
        self.identity = _identity(train, job)
        self.options, self.target, self.every = options, target, every
        self.k, self.af = options["n_workers"], options["averaging_frequency"]
        self.rounds = math.ceil(job.steps / (self.k * self.af))
        self.ship()
        self.held = None  # (Round, _Progress): the last state the client read
        busy = math.ceil(job.steps / self.af)
        if busy < self.k:
            warnings.warn(
                f"an epoch has {job.steps} mini-batches, fewer than n_workers x "
                f"averaging_frequency = {self.k} x {self.af}: only {busy} of the {self.k} "
                "replicas get data; lower averaging_frequency to train on all of them",
                stacklevel=4,
            )

    def ship(self):
        """Hand the data to the cluster: a store's dask arrays as they are (each
        worker reads its own chunks), numpy arrays scattered to every worker, so
        that losing one worker loses no data."""
        self.workers = _workers(self.client)
        if self.train.streamed:
            self.X, self.Y = Stored(self.train.X), Stored(self.train.Y)
        else:
            arrays = [self.train.X, self.train.Y]
            self.X, self.Y = self.client.scatter(arrays, hash=False, broadcast=True)

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
            _save_checkpoint(self, est, start, done)
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
        """The rest of the epoch from ``start``: ``(start, progress)`` at its end.

        Should the scattered data be lost with every worker that held it (or the
        scheduler forget the fit's tasks), the round futures are cancelled: the
        data is scattered again and the rounds rerun from the last state the
        client read, to the same result (rounds are pure).
        """
        self.held, failures = (start, progress), 0
        while True:
            held = self.held
            try:
                return self.rounds_from(est, *held, bar)
            except CancelledError as exc:
                failures = failures + 1 if self.held is held else 1
                self.recover(exc, failures, est._epochs_seen)
                bar.n = est.n_iter_ + self.held[1].round / self.rounds

    def rounds_from(self, est, start, progress, bar):
        epoch = est._epochs_seen
        futures = self.submit(epoch, progress.round, start)
        stats = [self.client.submit(_replica.summary, f) for f in futures]
        for r, (future, stat) in enumerate(zip(futures, stats, strict=True), progress.round):
            with self.interrupt.waiting():
                summary = stat.result()
            progress = self.tally(epoch, r, progress, summary, bar)
            if r + 1 == self.rounds or (self.target and progress.rounds_done % self.every == 0):
                with self.interrupt.waiting():
                    start = future.result()
                self.held = (start, progress)
                if self.target is not None and r + 1 < self.rounds:
                    _save_checkpoint(self, est, start, progress)
        return start, progress

    def tally(self, epoch, r, progress, summary, bar):
        """``progress`` after round ``r``, whose ``(loss_sum, count, finite)`` was just read."""
        loss, count, finite = summary
        if not finite:
            raise ValueError(
                f"Input X contains NaN or infinity: found in round {r} of {self.rounds} of "
                f"epoch {epoch}. Clean or impute the data first (a lazy dask expression "
                "such as da.nan_to_num(X) works on streamed data)."
            )
        bar.update(1 / self.rounds)
        bar.set_postfix(round=progress.rounds_done + 1, loss=f"{loss / count:.4g}")
        return _Progress(
            r + 1, progress.loss_sum + loss, progress.count + count, progress.rounds_done + 1
        )

    def recover(self, exc, failures, epoch):
        """After a round was cancelled: ship the data again, or say why not."""
        _check_open(self.client, exc)
        if failures > _RERUNS:
            raise RuntimeError(
                f"parallel.fit: the rounds of epoch {epoch} were cancelled {failures} times in "
                f"a row without progress ({exc}); are the workers dying?"
            ) from exc
        try:
            with self.interrupt.waiting():
                self.client.wait_for_workers(1, timeout=_WAIT_FOR_WORKERS)
        except TimeoutError as lost:
            raise RuntimeError(
                f"parallel.fit lost its workers and none came back in {_WAIT_FOR_WORKERS} s"
            ) from lost
        self.ship()
        warnings.warn(
            f"parallel.fit: epoch {epoch} lost its data or tasks ({exc}); the data is scattered "
            f"again and the epoch reruns from round {self.held[1].round}, to the same model",
            RuntimeWarning,
            stacklevel=6,
        )


def _with_learning_rate(start, opt_state):
    """``start`` with the learning rate the stopping policy set (adaptive)."""
    if opt_state is start.opt_states[0]:
        return start
    lr = nn.current_learning_rate(opt_state)
    opts = tuple(nn.set_learning_rate(o, lr) for o in start.opt_states)
    return start._replace(opt_states=to_numpy(opts))


# checkpoints: the estimator as a model group, plus the fit's progress


def _save_checkpoint(run, est, start, progress):
    """Write the checkpoint of ``run`` beside its target, then swap it into place."""
    job, options = run.job, run.options
    with atomic_dir(run.target, "checkpoint", overwrite=True) as tmp:
        group = zarr.open_group(tmp, mode="a", zarr_format=3)
        snapshot = copy.copy(est)
        snapshot._store_carry(_engine_carry(start))
        _write_group(snapshot, str(Path(tmp) / "model"))
        replicas = _write_tree(group, "replicas", list(start.opt_states[1:]))
        best = _write_tree(group, "best", est._best_params) if est.early_stopping else 0
        meta = {
            "version": CHECKPOINT_VERSION,
            "progress": [float(v) if isinstance(v, float) else int(v) for v in progress],
            "stream": {  # where the next round reads, for people and tools
                "epoch": int(est._epochs_seen),
                "batch": progress.round * options["n_workers"] * options["averaging_frequency"],
                "batch_size": job.batch_size,
            },
            "job": _fingerprint(job, options),
            "data": run.identity,
            "arrays": {"replicas": replicas, "best": best},
        }
        group.attrs[CHECKPOINT] = with_checksum(meta)  # a hand edit is refused on resume


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


def _resume(est, target, job, options, identity):
    """The Round and progress a checkpoint holds; its books go into ``est``.

    A checkpoint written before data identities were recorded is resumed unchecked.
    Its metadata and its model's must match their checksums, which a checkpoint with
    a marker was written with (older ones have neither).
    """
    try:
        meta = zarr.open_group(str(target), mode="r").attrs[CHECKPOINT]
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{target} is not a parallel.fit checkpoint: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{target} is not a parallel.fit checkpoint: {CHECKPOINT} is no mapping")
    marked = read_marker(target) is not None
    verify_checksum(meta, target, "parallel.fit checkpoint", required=marked)
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{target} has checkpoint version {meta.get('version')!r}")
    group, model_meta = _open_model_group(target / "model")
    verify_checksum(model_meta, target / "model", "model", required=marked)
    if model_meta["params"] != _params_json(est):
        raise ValueError(
            f"{target} holds a checkpoint of an estimator with other parameters; "
            "remove it or choose another checkpoint directory"
        )
    saved_data = meta.get("data")
    if saved_data is not None and saved_data.get("token") != identity["token"]:
        raise ValueError(
            f"{target} holds a checkpoint of a fit on other data: it was made on "
            f"{saved_data.get('what')} (identity {saved_data.get('token')}), this fit is on "
            f"{identity['what']} (identity {identity['token']}); remove it or choose another "
            "checkpoint directory"
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
