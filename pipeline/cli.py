"""The ``pipeline`` command: ingest data, train, search and evaluate models, run the demo.

Also ``python -m pipeline ...``.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from pipeline._atomic import publish_guard

SOURCE_HELP = (
    "a CSV file or glob ('data/*.csv'), a .npy file, 'mnist' or 'mnist:PATH', "
    "'digits', or 'synthetic:N_SAMPLES,N_FEATURES'"
)
CONNECT_TIMEOUT = 10.0  # seconds to reach a dask scheduler (distributed's default is 30)


# ----------------------------------------------------------------------------- destinations


def _location(path):
    """Where ``path`` points, comparable with another: an absolute, symlink-resolved
    ``Path`` for a local path, the URL without trailing slashes for an fsspec URL."""
    from pipeline._atomic import local_path

    local = local_path(path)
    if local is None:
        return str(path).rstrip("/")
    return Path(os.path.abspath(local.expanduser())).resolve()


def _inside(a, b):
    """Whether location ``a`` is strictly inside location ``b``."""
    if isinstance(a, Path) and isinstance(b, Path):
        return b in a.parents
    if isinstance(a, str) and isinstance(b, str):
        return a.startswith(b + "/")
    return False


def _refuse_overlap(dest, dest_name, inputs):
    """Refuse a destination that is, is inside, or holds one of ``inputs``
    (``(name, path)`` pairs), naming both, before any work starts: writing it
    would replace or remove the input."""
    where = _location(dest)
    for name, path in inputs:
        if path is None:
            continue
        other = _location(path)
        if where == other:
            how = "is"
        elif _inside(where, other):
            how = "is inside"
        elif _inside(other, where):
            how = "holds"
        else:
            continue
        raise ValueError(
            f"{dest_name} {dest} {how} the {name} {path}: writing there would destroy "
            "what is read; choose another path"
        )


def _probe_writable(dest, dest_name):
    """Create and remove a directory where ``dest`` would be built (its nearest
    existing parent), so that an unwritable destination fails before any work:
    ``os.access`` says yes to root even in /proc or on a read-only mount. Raises
    ``OSError`` naming ``dest``; a non-local URL is not probed."""
    from pipeline._atomic import local_path

    local = local_path(dest)
    if local is None:
        return
    parent = local.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{local.name}.probe-", dir=parent))
    except OSError as exc:
        raise OSError(
            f"cannot write {dest_name} {dest}: creating a directory in {parent} failed "
            f"({exc.strerror or exc}); choose a writable place"
        ) from None


class _Interrupts:
    """Notice Ctrl-C even where a library turns it into a warning (``est.fit`` returns
    the model trained so far, as scikit-learn's does): SIGINT is recorded, then handed
    to the handler it replaced (Python's raises KeyboardInterrupt). Main thread only."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self._previous = previous
                signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.seen = True
        self._previous(signum, frame)

    def check(self):
        """Raise KeyboardInterrupt if a Ctrl-C was seen (one a library may have swallowed,
        as JAX's garbage-collection callback does): called before anything is published."""
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _connect_timeout(value=None):
    """Seconds to wait for a scheduler: ``value``, else $PIPELINE_CONNECT_TIMEOUT, else 10."""
    if value is None:
        value = os.environ.get("PIPELINE_CONNECT_TIMEOUT", CONNECT_TIMEOUT)
        source = "PIPELINE_CONNECT_TIMEOUT"
    else:
        source = "--connect-timeout"
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise ValueError(f"{source} must be a positive number of seconds, got {value!r}")
    return value


def _check_address(scheduler, option="--scheduler"):
    if "://" not in scheduler:
        raise ValueError(
            f"{option} must be a distributed scheduler's address like tcp://host:8786, "
            f"got {scheduler!r}"
        )


def _connect(scheduler, timeout=None):
    """A ``distributed.Client`` of the scheduler at ``scheduler``, or a clear
    ``ConnectionError`` after ``timeout`` seconds: also where something else listens
    there (an HTTP server, a dashboard), which dask's own handshake waits on forever
    or misreads as a frame of exabytes."""
    from distributed import Client

    timeout = _connect_timeout(timeout)
    hint = "(--connect-timeout or $PIPELINE_CONNECT_TIMEOUT sets the wait)"
    try:
        _handshake(scheduler, timeout)
        return Client(scheduler, timeout=timeout)
    except TimeoutError:
        raise ConnectionError(
            f"cannot reach the dask scheduler at {scheduler} within {timeout:g} s: nothing "
            "there answered as a dask scheduler does; is it running, and is the address "
            f"(host and port) a dask scheduler's? {hint}"
        ) from None
    except _NotDask as exc:
        raise ConnectionError(
            f"{scheduler} is not a dask scheduler: it answered, but not in dask's protocol "
            f"({exc}); is the address right (a scheduler listens on 8786 by default, its "
            "dashboard on 8787)?"
        ) from None
    except OSError as exc:  # distributed: "Timed out trying to connect to ... after N s"
        raise ConnectionError(
            f"cannot reach the dask scheduler at {scheduler} within {timeout:g} s ({exc}); "
            f"is it running, and is the address right? {hint}"
        ) from None


class _NotDask(Exception):
    """What listens at an address answered, but not as a dask server."""


def _handshake(address, timeout):
    """Open a connection to ``address`` and exchange dask's handshake, all within
    ``timeout`` seconds, then close it. Raises ``TimeoutError``, ``OSError`` (nothing
    reachable) or ``_NotDask``. Runs on its own thread: the caller may be in an event loop."""
    import asyncio

    from distributed.comm import CommClosedError, connect
    from distributed.security import Security

    async def shake():
        args = Security().get_connection_args("client")
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout)
        comm.abort()

    outcome = []

    def run():
        try:
            asyncio.run(shake())
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=run, name="pipeline-handshake", daemon=True)
    thread.start()
    thread.join()
    exc = outcome[0] if outcome else None
    if exc is None:
        return
    if isinstance(exc, CommClosedError):  # accepted, then closed or refused the handshake
        raise _NotDask("it closed the connection") from None
    if isinstance(exc, OSError) or not isinstance(exc, Exception):  # timeouts, Ctrl-C
        raise exc
    raise _NotDask(f"an unreadable reply: {type(exc).__name__}") from None  # an EiB "frame"


def _parse_synthetic(spec):
    try:
        n, f = (int(v) for v in spec.split(":", 1)[1].split(","))
    except ValueError:
        raise ValueError(
            f"bad synthetic source {spec!r}; expected synthetic:N_SAMPLES,N_FEATURES"
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
    """Write ``source`` to a store at ``dest``; return the opened Dataset.

    ``dest`` is checked before anything is read: it may not be, be inside, or hold
    the source (or the ``target`` file), and it may hold only a store (replaced
    with ``overwrite``).
    """
    from pipeline import _datasets, _sources
    from pipeline._atomic import check_destination
    from pipeline._store import write

    inputs = [("source", p) for p in _source_paths(source)]
    if target is not None and str(target).endswith(".npy"):
        inputs.append(("target", target))
    _refuse_overlap(dest, "DEST", inputs)
    check_destination(dest, "store", overwrite=overwrite)
    _probe_writable(dest, "DEST")
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
    raise ValueError(f"unknown source {source!r}; expected {SOURCE_HELP}")


def _source_paths(source):
    """The files ``ingest`` reads for ``source`` (none for built-in data)."""
    if source.startswith("synthetic:") or source in ("digits", "mnist"):
        return []
    if source.startswith("mnist:"):
        return [source.split(":", 1)[1]]
    if "*" in source:
        return sorted(glob.glob(source)) or [source]
    return [source]


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


MODELS = ("mlp", "mlp-classifier", "mlp-regressor")


def _estimator(model, ds, **params):
    """An unfitted estimator for ``model``; plain ``mlp`` picks by the store's target."""
    from pipeline import MLPClassifier, MLPRegressor

    if model == "mlp":
        classify = ds.classes is not None or np.dtype(ds.y.dtype).kind in "biuO"
        model = "mlp-classifier" if classify else "mlp-regressor"
    return (MLPClassifier if model == "mlp-classifier" else MLPRegressor)(**params)


def _hidden(spec):
    try:
        sizes = tuple(int(v) for v in spec.split(","))
    except ValueError:
        sizes = ()
    if not sizes:
        raise ValueError(f"--hidden must be comma-separated layer sizes like 256,128, got {spec!r}")
    return sizes


def train(
    store,
    out,
    *,
    model="mlp",
    hidden="256,128",
    epochs=10,
    overwrite=False,
    scheduler=None,
    averaging_frequency=10,
    checkpoint=None,
    connect_timeout=None,
    scale=None,
    pca=None,
    **params,
):
    """Fit a model on the store at ``store`` (streamed from disk) and save it to ``out``.

    ``scale`` (``"standard"``, ``"minmax"`` or ``"maxabs"``) and ``pca`` (a number of
    components, IncrementalPCA) put preprocessing before the network: the whole is a
    :class:`pipeline.Pipeline`, every step learnt in a streamed pass, saved to ``out``
    as one pipeline and applied by ``pipeline evaluate``.

    With ``scheduler`` (a distributed scheduler's address, ``tcp://host:port``) the
    fit is :func:`pipeline.parallel.fit` on that cluster: one replica per worker,
    averaged every ``averaging_frequency`` steps, checkpointed to ``checkpoint``;
    the scheduler must answer within ``connect_timeout`` seconds (default 10).

    ``out`` (and ``checkpoint``) are checked before any work: neither may be, be
    inside or hold the store, and ``out`` may hold only a model (replaced with
    ``overwrite``). A Ctrl-C during training raises ``KeyboardInterrupt`` and saves
    nothing: ``out`` keeps what it held.
    """
    from pipeline._atomic import check_destination, local_path
    from pipeline._store import open as open_store

    # every argument and destination is checked before any work starts
    sizes = _hidden(hidden)
    prefix = _prefix(scale, pca)
    if prefix and scheduler is not None:
        raise ValueError(
            "--scale and --pca train a Pipeline, which runs on this machine; --scheduler "
            "trains the network alone on a cluster. Write a scaled store first, or drop one"
        )
    if scheduler is None and checkpoint is not None:
        raise ValueError("--checkpoint needs --scheduler: it checkpoints parallel training")
    if scheduler is not None:
        _check_address(scheduler)
        connect_timeout = _connect_timeout(connect_timeout)
    _refuse_overlap(out, "--out", [("training store", store)])
    check_destination(out, "pipeline" if prefix else "model", overwrite=overwrite)
    _probe_writable(out, "--out")
    if checkpoint is not None:
        if local_path(checkpoint) is None:
            raise ValueError(f"--checkpoint must be a local directory, got {checkpoint!r}")
        _refuse_overlap(checkpoint, "--checkpoint", [("training store", store), ("--out", out)])
        check_destination(checkpoint, "checkpoint", overwrite=True)  # this fit's is resumed
        _probe_writable(checkpoint, "--checkpoint")
    ds = open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y; train needs labels or targets")
    if pca is not None and pca > int(np.prod(ds.X.shape[1:])):
        raise ValueError(
            f"--pca {pca} asks for more components than {store} has features "
            f"({int(np.prod(ds.X.shape[1:]))})"
        )
    est = _estimator(model, ds, hidden_layer_sizes=sizes, max_iter=epochs, **params)
    if prefix:
        from pipeline import make_pipeline

        est = make_pipeline(*prefix, est)
    t0 = time.perf_counter()
    with _Interrupts() as interrupts:
        if scheduler is None:
            est.fit(ds.X, ds.y)  # Ctrl-C: returns the model so far, with a warning
        else:
            _fit_on_cluster(est, ds, scheduler, averaging_frequency, checkpoint, connect_timeout)
    if interrupts.seen:  # never save a model whose training was cut short
        raise KeyboardInterrupt
    dt = time.perf_counter() - t0
    est.save(out, overwrite=overwrite)
    return est, ds, dt


SCALERS = ("standard", "minmax", "maxabs")


def _prefix(scale, pca):
    """The preprocessing steps of ``--scale`` and ``--pca``: a list, maybe empty."""
    from sklearn.decomposition import IncrementalPCA
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    steps = []
    if scale is not None:
        if scale not in SCALERS:
            raise ValueError(f"--scale must be one of {', '.join(SCALERS)}, got {scale!r}")
        steps.append({"standard": StandardScaler, "minmax": MinMaxScaler,
                      "maxabs": MaxAbsScaler}[scale]())
    if pca is not None:
        if isinstance(pca, bool) or not isinstance(pca, (int, np.integer)) or pca < 1:
            raise ValueError(f"--pca must be a positive number of components, got {pca!r}")
        steps.append(IncrementalPCA(int(pca)))
    return steps


def _fit_on_cluster(est, ds, scheduler, averaging_frequency, checkpoint, connect_timeout=None):
    from pipeline import parallel

    _check_address(scheduler)
    with _connect(scheduler, connect_timeout) as client:
        parallel.fit(
            est,
            ds.X,
            ds.y,
            client=client,
            averaging_frequency=averaging_frequency,
            checkpoint=checkpoint,
        )


def _cmd_train(args):
    params = dict(
        solver=args.solver,
        batch_size=args.batch_size,
        learning_rate_init=args.learning_rate,
        alpha=args.alpha,
        dropout=args.dropout,
        early_stopping=args.early_stopping,
        random_state=args.random_state,
        verbose=not args.quiet,
    )
    est, ds, dt = train(
        args.store,
        args.out,
        model=args.model,
        hidden=args.hidden,
        epochs=args.epochs,
        overwrite=args.overwrite,
        scheduler=args.scheduler,
        averaging_frequency=args.averaging_frequency,
        checkpoint=args.checkpoint,
        connect_timeout=args.connect_timeout,
        scale=args.scale,
        pca=args.pca,
        **params,
    )
    net = est[-1] if hasattr(est, "steps") else est
    n = net.n_iter_ * len(ds)
    print(
        f"{_described(est)}: {net.n_iter_} epochs over {len(ds):,} samples in {dt:.1f} s "
        f"({n / dt:,.0f} samples/s); final training loss {net.loss_:.4f}"
    )
    print(f"saved to {args.out}")


def _described(est):
    if hasattr(est, "steps"):
        return " -> ".join(type(step).__name__ for _, step in est.steps)
    return type(est).__name__


def evaluate(model, store):
    """Metrics of a saved model (or Pipeline) on a store: a printable report and a dict.

    Predictions and targets are read chunk by chunk: the confusion matrix, R², MAE
    and RMSE are accumulated per chunk, so a store of any size is evaluated in the
    memory of a few chunks. A classifier's report covers every class of the model
    and of the store: a class the model was never trained on is reported (its
    recall is 0), with a warning that the model cannot predict it. A classifier on
    continuous targets, or labels of another type than the model's classes (text
    against numbers), is refused. A regressor is scored with R², MAE and RMSE; on a
    store of class labels (integer targets with a ``classes`` schema) these treat
    the labels as numbers, which is right for counts or ratings and meaningless for
    categories, so a warning says so; non-numeric labels are refused.
    """
    from sklearn.utils.multiclass import type_of_target

    from pipeline._store import open as open_store
    from pipeline.checkpoint import load

    est, ds = load(model), open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y to evaluate against")
    name = type(est).__name__
    if not hasattr(est, "classes_"):
        if ds.y.dtype.kind not in "biuf":
            raise ValueError(
                f"{model} is a regressor ({name}), but {store} holds labels of dtype "
                f"{ds.y.dtype}: a regressor cannot be scored on them; evaluate a classifier"
            )
        if ds.classes is not None:
            warnings.warn(
                f"{store} holds class labels ({len(ds.classes)} classes), but {model} is a "
                f"regressor ({name}): R², MAE and RMSE treat the labels as numbers, which "
                "means nothing for categories; evaluate a classifier on this store, or this "
                "model on a store of continuous targets",
                UserWarning,
                stacklevel=2,
            )
        scores = _regression_scores(est.predict(ds.X), ds.y)
        return "\n".join(f"{k:>5}  {v:.4f}" for k, v in scores.items()), scores
    if ds.y.ndim > 1:  # multilabel: one row per label, no single confusion matrix
        return _multilabel_report(est, model, store, ds)
    values = np.asarray(ds.classes) if ds.classes is not None else _distinct(ds.y)
    labels = _report_labels(est, model, store, values, type_of_target(values), ds.y.dtype)
    cm = _confusion_streamed(est.predict(ds.X), ds.y, labels)
    n = int(cm.sum())
    acc = float(np.trace(cm) / n)
    report = _report_from_confusion(cm, labels)
    width = max(5, *(len(str(c)) for c in labels), len(str(cm.max())))
    rows = [
        "confusion matrix (rows: true, columns: predicted)",
        " " * (width + 1) + " ".join(f"{str(c):>{width}}" for c in labels),
    ]
    rows += [
        f"{str(c):>{width}} " + " ".join(f"{v:>{width}}" for v in r)
        for c, r in zip(labels, cm, strict=True)
    ]
    text = f"accuracy {acc:.4f} on {n:,} samples\n\n{report}\n" + "\n".join(rows)
    return text, {"accuracy": acc, "confusion_matrix": cm, "labels": labels}


def _distinct(y):
    """The distinct target values of a store without classes in its schema (one pass)."""
    import dask.array as da

    return np.unique(da.unique(y).compute())


def _pairs(pred, y):
    """``(prediction, target)`` numpy blocks, chunk by chunk, read ahead in a thread."""
    import dask.array as da

    from pipeline._steps import iter_blocks

    pred = da.asarray(pred)
    return iter_blocks([pred, y.rechunk({0: pred.chunks[0]})])


def _confusion_streamed(pred, y, labels):
    """The confusion matrix over ``labels`` (sorted), accumulated chunk by chunk."""
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for pb, yb in _pairs(pred, y):
        np.add.at(cm, (np.searchsorted(labels, yb), np.searchsorted(labels, pb)), 1)
    return cm


def _report_from_confusion(cm, labels, digits=4):
    """scikit-learn's classification report, from a confusion matrix (each cell weighted)."""
    from sklearn import metrics

    i, j = np.nonzero(cm)
    stats = metrics.classification_report(
        labels[i], labels[j], labels=labels, sample_weight=cm[i, j], output_dict=True,
        zero_division=0,
    )
    names = [str(c) for c in labels]
    width = max(len(n) for n in [*names, "weighted avg"])
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in
                                         ("precision", "recall", "f1-score", "support"))
    lines = [head, ""]
    for key, name in zip([str(c) for c in labels], names, strict=True):
        r = stats[key]
        lines.append(f"{name:>{width}s} " + "".join(f" {r[k]:>9.{digits}f}" for k in
                     ("precision", "recall", "f1-score")) + f" {int(round(r['support'])):>9}")
    lines.append("")
    total = int(cm.sum())
    if "accuracy" in stats:
        lines.append(f"{'accuracy':>{width}s} " + " " * 20 + f" {stats['accuracy']:>9.{digits}f}"
                     + f" {total:>9}")
    for avg in ("micro avg", "macro avg", "weighted avg"):
        if avg in stats:
            r = stats[avg]
            lines.append(f"{avg:>{width}s} " + "".join(f" {r[k]:>9.{digits}f}" for k in
                         ("precision", "recall", "f1-score")) + f" {int(round(r['support'])):>9}")
    return "\n".join(lines) + "\n"


def _regression_scores(pred, y):
    """R² (stable chunk combine), MAE and RMSE, averaged over outputs as scikit-learn's."""
    from pipeline._targets import score_aggregate, score_chunk, score_combine

    stats, abs_sum, sq_sum, n = [], 0.0, 0.0, 0
    for pb, yb in _pairs(pred, y):
        P = np.asarray(pb, np.float64).reshape(len(pb), -1)
        T = np.asarray(yb, np.float64).reshape(len(yb), -1)
        stats.append(score_chunk("continuous", P, np.column_stack([T, np.ones(len(T))])))
        abs_sum = abs_sum + np.abs(T - P).sum(0)
        sq_sum = sq_sum + ((T - P) ** 2).sum(0)
        n += len(T)
    r2 = score_aggregate("continuous", score_combine("continuous", stats))
    return {
        "r2": float(r2),
        "mae": float((abs_sum / n).mean()),
        "rmse": float(np.sqrt(sq_sum / n).mean()),
    }


def _multilabel_report(est, model, store, ds):
    """Multilabel stores: per-label report from the label matrix (n_samples x n_labels
    of 0/1, read whole: small beside X)."""
    from sklearn import metrics

    y_true = ds.y.compute()
    labels = _report_labels(est, model, store, y_true, "multilabel-indicator", y_true.dtype)
    y_pred = np.asarray(est.predict(ds.X))
    report = metrics.classification_report(
        y_true, y_pred, target_names=[str(c) for c in labels], digits=4, zero_division=0
    )
    acc = metrics.accuracy_score(y_true, y_pred)
    return f"accuracy {acc:.4f} on {len(y_true):,} samples\n\n{report}", {"accuracy": acc}


def _report_labels(est, model, store, values, target_type, dtype):
    """The classes a classifier's report covers: the model's and the store's
    (``values``: the store's distinct targets, or the label matrix when multilabel)."""
    name, classes = type(est).__name__, np.asarray(est.classes_)
    if target_type in ("continuous", "continuous-multioutput"):
        raise ValueError(
            f"{model} is a classifier ({name}), but {store} holds continuous targets "
            f"(dtype {dtype}, e.g. {np.ravel(values)[:3].tolist()}); evaluate a "
            "regressor on it"
        )
    if target_type == "multilabel-indicator":
        return classes
    numeric = lambda a: a.dtype.kind in "biuf"  # noqa: E731
    values = np.asarray(values)
    if numeric(classes) != numeric(values):
        raise ValueError(
            f"{model} predicts classes {_shown(classes)} ({classes.dtype}), but {store} holds "
            f"labels {_shown(values)} ({dtype}): they cannot match"
        )
    labels = np.union1d(classes, values)
    unseen = np.setdiff1d(labels, classes)
    if len(unseen):
        warnings.warn(
            f"{store} holds {len(unseen)} class(es) {model} was never trained on: "
            f"{_shown(unseen)}; the model cannot predict them (their recall is 0). They are "
            "in the report and the confusion matrix",
            UserWarning,
            stacklevel=3,
        )
    return labels


def _shown(values, n=10):
    values = [v.item() if hasattr(v, "item") else v for v in values]
    return str(values[:n])[:-1] + (", ...]" if len(values) > n else "]")


def _grid(specs):
    """``["alpha=1e-4;1e-3", "hidden_layer_sizes=(64,);(128,64)"]`` -> a parameter grid."""
    import ast

    def value(text):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    grid = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--param must look like NAME=VALUE;VALUE..., got {spec!r}")
        grid[name.strip()] = [value(v.strip()) for v in values.split(";")]
    return grid


def _check_candidates(est, grid):
    """Validate every candidate of ``grid`` as ``fit`` would, before any fit: a
    ``ValueError`` naming the candidate and what is wrong (``alpha='abc'``)."""
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    for candidate in ParameterGrid(grid):
        trial = clone(est).set_params(**candidate)
        try:
            trial._validate_params()  # scikit-learn's _parameter_constraints
            trial._check_solver_options()  # what they cannot say (lbfgs with dropout)
        except (ValueError, TypeError) as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in candidate.items())
            raise ValueError(f"--param gives an invalid candidate ({shown}): {exc}") from None


def search(
    store,
    grid,
    *,
    model="mlp",
    hidden="256,128",
    epochs=10,
    cv=3,
    nested=None,
    scoring=None,
    scheduler=None,
    out=None,
    overwrite=False,
    connect_timeout=None,
    **params,
):
    """Grid search (or nested CV) of a model over the store at ``store``, one dask graph.

    ``scheduler`` is None (threads), a scheduler name, or a distributed scheduler's
    address (then the search runs there as a cluster job; it must answer within
    ``connect_timeout`` seconds, default 10). ``out`` is checked before any work, as
    :func:`train` checks it; a Ctrl-C saves nothing.
    """
    from pipeline._atomic import check_destination
    from pipeline._store import open as open_store
    from pipeline.model_selection import GridSearchCV, nested_cross_validate

    if out is not None:
        _refuse_overlap(out, "--out", [("training store", store)])
        check_destination(out, "model", overwrite=overwrite)
        _probe_writable(out, "--out")
    if scheduler is not None and "://" in scheduler:
        connect_timeout = _connect_timeout(connect_timeout)
    ds = open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y; search needs labels or targets")
    est = _estimator(model, ds, hidden_layer_sizes=_hidden(hidden), max_iter=epochs, **params)
    unknown = set(grid) - set(est.get_params())
    if unknown:
        raise ValueError(f"--param names no parameter of {type(est).__name__}: {sorted(unknown)}")
    _check_candidates(est, grid)
    client = None
    if scheduler is not None and "://" in scheduler:
        client = scheduler = _connect(scheduler, connect_timeout)
    try:
        if nested:
            result = nested_cross_validate(
                est,
                grid,
                ds.X,
                ds.y,
                outer_cv=nested,
                inner_cv=cv,
                scoring=scoring,
                scheduler=scheduler,
            )
            return result, result.report()
        found = GridSearchCV(est, grid, cv=cv, scoring=scoring, scheduler=scheduler)
        with _Interrupts() as interrupts:
            found.fit(ds.X, ds.y)
        if interrupts.seen:  # a refit cut short by Ctrl-C is never saved
            raise KeyboardInterrupt
        if out is not None:
            found.best_estimator_.save(out, overwrite=overwrite)
        return found, found.report()
    finally:
        if client is not None:
            client.close()


def _cmd_search(args):
    import pandas as pd

    grid = _grid(args.param)
    with warnings.catch_warnings():  # a fixed epoch budget per candidate is the point
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        found, table = search(
            args.store,
            grid,
            model=args.model,
            hidden=args.hidden,
            epochs=args.epochs,
            cv=args.cv,
            nested=args.nested,
            scoring=args.scoring,
            scheduler=args.scheduler,
            out=args.out,
            overwrite=args.overwrite,
            connect_timeout=args.connect_timeout,
            random_state=args.random_state,
        )
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(table.to_string())
    n = len(found["params"]) if args.nested else len(table)
    kind = "outer folds of a nested CV" if args.nested else "candidates of a grid search"
    print(f"{n} {kind} in {time.perf_counter() - t0:.1f} s")
    if args.nested:
        print(
            f"outer test score {np.mean(found['test_score']):.4f} "
            f"± {np.std(found['test_score']):.4f}"
        )
    else:
        print(f"best {found.best_params_}: {found.best_score_:.4f}")
        if args.out:
            print(f"best model saved to {args.out}")


def _cmd_evaluate(args):
    print(evaluate(args.model, args.store)[0])


def _demo_data():
    """MNIST when it can be found locally, else scikit-learn's digits (with a held-out split)."""
    from sklearn.model_selection import train_test_split

    from pipeline import _datasets

    try:
        train = _datasets.load_mnist(split="train")
        test = _datasets.load_mnist(split="test")
        return "MNIST", train, test, 10
    except FileNotFoundError:
        X, y = _datasets.load_digits()
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
        return "scikit-learn digits (MNIST not found locally)", (X_tr, y_tr), (X_te, y_te), 40


def _cmd_demo(args):
    from pipeline._store import write

    name, (X, y), (X_te, y_te), epochs = _demo_data()
    epochs = args.epochs or epochs
    with tempfile.TemporaryDirectory(prefix="pipeline-demo-") as tmp:
        t0 = time.perf_counter()
        ds = write(Path(tmp) / "train.zarr", X, y, chunk_rows=args.chunk_rows)
        write(Path(tmp) / "test.zarr", X_te, y_te, chunk_rows=args.chunk_rows)
        print(f"1. ingested {name} into Zarr stores in {time.perf_counter() - t0:.2f} s")
        print("   " + ds.summary().replace("\n", "\n   "))
        print(
            f"2. training MLPClassifier(hidden_layer_sizes=(256, 128), max_iter={epochs}) "
            "out-of-core, streamed from the store"
        )
        with warnings.catch_warnings():  # a fixed epoch budget is the point here
            warnings.simplefilter("ignore", ConvergenceWarning)
            est, _, dt = train(
                ds.path,
                Path(tmp) / "model.zarr",
                hidden="256,128",
                epochs=epochs,
                random_state=0,
                verbose=not args.quiet,
            )
        print(
            f"   {est.n_iter_} epochs in {dt:.1f} s "
            f"({est.n_iter_ * len(ds) / dt:,.0f} samples/s), final loss {est.loss_:.4f}"
        )
        text, scores = evaluate(Path(tmp) / "model.zarr", Path(tmp) / "test.zarr")
        print(f"3. evaluated the saved model on {len(y_te):,} held-out samples\n")
        print("   " + text.replace("\n", "\n   "))
        print("   the stores and the model are removed on exit")


_CONNECT_TIMEOUT_ARG = dict(
    type=float,
    default=None,
    metavar="SECONDS",
    help="with a tcp:// --scheduler: how long to wait for it "
    "(default $PIPELINE_CONNECT_TIMEOUT or 10)",
)


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
    tr = sub.add_parser("train", help="fit a model out-of-core on a store and save it")
    tr.add_argument("store", help="the training store (a directory or an fsspec URL)")
    tr.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="mlp: a classifier for labelled stores, else a regressor",
    )
    tr.add_argument("--hidden", default="256,128", help="hidden layer sizes (default 256,128)")
    tr.add_argument("--epochs", type=int, default=10, help="max_iter (default 10)")
    tr.add_argument("--batch-size", type=int, default=200)
    tr.add_argument("--solver", default="adam", help="adam, sgd, adamw, adagrad, adadelta, rmsprop")
    tr.add_argument("--learning-rate", type=float, default=0.001, help="learning_rate_init")
    tr.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--early-stopping", action="store_true")
    tr.add_argument("--random-state", type=int, default=0)
    tr.add_argument(
        "--scale", choices=SCALERS, default=None,
        help="scale the features first (learnt in one streamed pass, saved with the model)",
    )
    tr.add_argument(
        "--pca", type=int, default=None, metavar="N",
        help="reduce to N components first (IncrementalPCA, streamed; saved with the model)",
    )
    tr.add_argument("--out", required=True, help="where to save the model (a Zarr group)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing model")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument(
        "--scheduler",
        default=None,
        help="a dask scheduler's address (tcp://host:8786): train there by parameter averaging",
    )
    tr.add_argument(
        "--averaging-frequency",
        type=int,
        default=10,
        help="with --scheduler: local steps per round",
    )
    tr.add_argument(
        "--checkpoint", default=None, help="with --scheduler: a directory to checkpoint and resume"
    )
    tr.add_argument("--connect-timeout", **_CONNECT_TIMEOUT_ARG)
    tr.set_defaults(func=_cmd_train)
    se = sub.add_parser("search", help="grid search or nested CV of a model over a store")
    se.add_argument("store", help="the training store (a directory or an fsspec URL)")
    se.add_argument(
        "--param",
        action="append",
        required=True,
        help="NAME=VALUE;VALUE... (repeat for a grid), e.g. alpha=1e-4;1e-3",
    )
    se.add_argument("--model", choices=MODELS, default="mlp")
    se.add_argument("--hidden", default="256,128", help="hidden layer sizes (default 256,128)")
    se.add_argument("--epochs", type=int, default=10, help="max_iter (default 10)")
    se.add_argument("--cv", type=int, default=3, help="(inner) folds (default 3)")
    se.add_argument("--nested", type=int, default=None, help="outer folds: nested CV")
    se.add_argument("--scoring", default=None, help="a scikit-learn scorer name")
    se.add_argument(
        "--scheduler",
        default=None,
        help="threads (default), processes, synchronous, or tcp://HOST:PORT",
    )
    se.add_argument("--random-state", type=int, default=0)
    se.add_argument("--out", default=None, help="save the best model there (a Zarr group)")
    se.add_argument("--overwrite", action="store_true", help="replace an existing model")
    se.add_argument("--connect-timeout", **_CONNECT_TIMEOUT_ARG)
    se.set_defaults(func=_cmd_search)
    ev = sub.add_parser(
        "evaluate",
        help="report a saved model's metrics on a store",
        description="A classifier's report covers its classes and the store's (a class the "
        "model never saw is reported, with a warning); a classifier on continuous targets "
        "is refused; a regressor on class labels is scored with a warning.",
    )
    ev.add_argument("model", help="a model saved by pipeline train or est.save")
    ev.add_argument("store", help="a store with targets")
    ev.set_defaults(func=_cmd_evaluate)
    demo = sub.add_parser("demo", help="ingest a built-in dataset, train out-of-core, evaluate")
    demo.add_argument("--epochs", type=int, default=None, help="default: 10 (MNIST), 40 (digits)")
    demo.add_argument("--chunk-rows", type=int, default=None)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    return p


# the library's errors that come from what the user asked for: exit 2, one line
USAGE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    TypeError,
)


def _failures():
    """Errors of the data or the environment, not of the command line: exit 1, one line
    (a corrupt chunk, a store replaced while read, an unreachable scheduler, a full disk,
    a missing fsspec driver)."""
    from pipeline._store import ChunkReadError, StoreChangedError

    return (ChunkReadError, StoreChangedError, OSError, ImportError)


def _interrupted(args):
    """What a Ctrl-C left, in a few words."""
    dest = getattr(args, "out", None) or getattr(args, "dest", None)
    if args.command in ("train", "search", "ingest"):
        kept = f"; {dest} is as it was" if dest else ""
        return f"interrupted: nothing was saved{kept}"
    return "interrupted"


def _show_warning(prefix):
    def show(message, category, filename, lineno, file=None, line=None):
        kind = "warning" if category is UserWarning else category.__name__
        print(f"{prefix}: {kind}: {message}", file=sys.stderr if file is None else file)

    return show


def main(argv=None):
    """Entry point of the ``pipeline`` console script.

    Returns the exit status: 0, 2 for a usage error (bad arguments, a missing input,
    a destination that is refused), 1 for a failure (a corrupt or replaced store, an
    unreachable scheduler or an address that is not one, a destination directory that
    cannot be created, another I/O error), 130 after Ctrl-C. Errors are one line
    on stderr, ``pipeline COMMAND: error: ...``.
    """
    args = _parser().parse_args(argv)
    prefix = f"pipeline {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(prefix)
        try:
            with _Interrupts() as interrupts, publish_guard(interrupts.check):
                args.func(args)
            interrupts.check()  # one seen but swallowed after the last write: still 130
        except KeyboardInterrupt:
            print(f"{prefix}: {_interrupted(args)}", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader left (| head): quiet, as a killed writer
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except USAGE_ERRORS as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return 2
        except _failures() as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return 1
    return 0
