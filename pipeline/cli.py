"""The ``pipeline`` command: ingest data, train, search and evaluate models, run the demo.

Also ``python -m pipeline ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

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


MODELS = ("mlp", "mlp-classifier", "mlp-regressor")


def _estimator(model, ds, **params):
    """An unfitted estimator for ``model``; plain ``mlp`` picks by the store's target."""
    from pipeline import MLPClassifier, MLPRegressor

    if model == "mlp":
        classify = ds.classes is not None or np.dtype(ds.y.dtype).kind in "biuO"
        model = "mlp-classifier" if classify else "mlp-regressor"
    return (MLPClassifier if model == "mlp-classifier" else MLPRegressor)(**params)


def _existing_parent(path):
    path = Path(path).absolute().parent
    while not path.exists():
        path = path.parent
    return path


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
    **params,
):
    """Fit a model on the store at ``store`` (streamed from disk) and save it to ``out``.

    With ``scheduler`` (a distributed scheduler's address, ``tcp://host:port``) the
    fit is :func:`pipeline.parallel.fit` on that cluster: one replica per worker,
    averaged every ``averaging_frequency`` steps, checkpointed to ``checkpoint``.
    """
    from pipeline._store import _check_destination, _local_path
    from pipeline._store import open as open_store

    local = _local_path(out)  # fail before training, not after it
    _check_destination(out, local, overwrite)
    if local is not None and not os.access(_existing_parent(local), os.W_OK):
        raise PermissionError(f"cannot write the model to {out}: {local.parent} is not writable")
    ds = open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y; train needs labels or targets")
    est = _estimator(model, ds, hidden_layer_sizes=_hidden(hidden), max_iter=epochs, **params)
    if scheduler is None and checkpoint is not None:
        raise ValueError("--checkpoint needs --scheduler: it checkpoints parallel training")
    t0 = time.perf_counter()
    if scheduler is None:
        est.fit(ds.X, ds.y)
    else:
        _fit_on_cluster(est, ds, scheduler, averaging_frequency, checkpoint)
    dt = time.perf_counter() - t0
    est.save(out, overwrite=overwrite)
    return est, ds, dt


def _fit_on_cluster(est, ds, scheduler, averaging_frequency, checkpoint):
    from distributed import Client

    from pipeline import parallel

    if "://" not in scheduler:
        raise ValueError(
            f"--scheduler must be a distributed scheduler's address like tcp://host:8786, "
            f"got {scheduler!r}"
        )
    with Client(scheduler) as client:
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
        **params,
    )
    n = est.n_iter_ * len(ds)
    print(
        f"{type(est).__name__}: {est.n_iter_} epochs over {len(ds):,} samples in {dt:.1f} s "
        f"({n / dt:,.0f} samples/s); final training loss {est.loss_:.4f}"
    )
    print(f"saved to {args.out}")


def evaluate(model, store):
    """Metrics of a saved model on a store: a printable report (str) and a dict."""
    from sklearn import metrics

    from pipeline._store import open as open_store
    from pipeline.checkpoint import load

    est, ds = load(model), open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y to evaluate against")
    y_true = ds.y.compute()
    y_pred = est.predict(ds.X).compute()
    if not hasattr(est, "classes_"):
        scores = {
            "r2": metrics.r2_score(y_true, y_pred),
            "mae": metrics.mean_absolute_error(y_true, y_pred),
            "rmse": metrics.root_mean_squared_error(y_true, y_pred),
        }
        return "\n".join(f"{k:>5}  {v:.4f}" for k, v in scores.items()), scores
    labels = est.classes_
    report = metrics.classification_report(y_true, y_pred, labels=labels, digits=4, zero_division=0)
    cm = metrics.confusion_matrix(y_true, y_pred, labels=labels)
    acc = metrics.accuracy_score(y_true, y_pred)
    width = max(5, *(len(str(c)) for c in labels), len(str(cm.max())))
    rows = [
        "confusion matrix (rows: true, columns: predicted)",
        " " * (width + 1) + " ".join(f"{str(c):>{width}}" for c in labels),
    ]
    rows += [
        f"{str(c):>{width}} " + " ".join(f"{v:>{width}}" for v in r)
        for c, r in zip(labels, cm, strict=True)
    ]
    text = f"accuracy {acc:.4f} on {len(y_true):,} samples\n\n{report}\n" + "\n".join(rows)
    return text, {"accuracy": acc, "confusion_matrix": cm}


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
    **params,
):
    """Grid search (or nested CV) of a model over the store at ``store``, one dask graph.

    ``scheduler`` is None (threads), a scheduler name, or a distributed scheduler's
    address (then the search runs there as a cluster job).
    """
    from pipeline._store import open as open_store
    from pipeline.model_selection import GridSearchCV, nested_cross_validate

    ds = open_store(store)
    if ds.y is None:
        raise ValueError(f"{store} holds no target y; search needs labels or targets")
    est = _estimator(model, ds, hidden_layer_sizes=_hidden(hidden), max_iter=epochs, **params)
    unknown = set(grid) - set(est.get_params())
    if unknown:
        raise ValueError(f"--param names no parameter of {type(est).__name__}: {sorted(unknown)}")
    client = None
    if scheduler is not None and "://" in scheduler:
        from distributed import Client

        client = scheduler = Client(scheduler)
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
        found.fit(ds.X, ds.y)
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
    se.set_defaults(func=_cmd_search)
    ev = sub.add_parser("evaluate", help="report a saved model's metrics on a store")
    ev.add_argument("model", help="a model saved by pipeline train or est.save")
    ev.add_argument("store", help="a store with targets")
    ev.set_defaults(func=_cmd_evaluate)
    demo = sub.add_parser("demo", help="ingest a built-in dataset, train out-of-core, evaluate")
    demo.add_argument("--epochs", type=int, default=None, help="default: 10 (MNIST), 40 (digits)")
    demo.add_argument("--chunk-rows", type=int, default=None)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv=None):
    """Entry point of the ``pipeline`` console script."""
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError, TypeError) as exc:
        print(f"pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
