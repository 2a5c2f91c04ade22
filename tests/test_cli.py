"""The ``pipeline`` command: ingest every kind of source, demo, clear errors."""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import pipeline
import pipeline.store as store
from pipeline.cli import main


def test_ingest_digits(tmp_path, capsys):
    assert main(["ingest", "digits", str(tmp_path / "d.zarr"), "--chunk-rows", "500"]) == 0
    out = capsys.readouterr().out
    assert "1,797 in 4 chunks of 500 rows" in out and "classes   10" in out
    ds = store.open(tmp_path / "d.zarr")
    assert ds.X.shape == (1797, 64) and float(ds.X.max().compute()) <= 1.0


def test_ingest_synthetic_memmap(tmp_path, capsys):
    dest = tmp_path / "s"
    assert (
        main(["ingest", "synthetic:500,8", str(dest), "--chunk-rows", "128", "--format", "memmap"])
        == 0
    )
    ds = store.open(dest)
    assert ds.attrs["format"] == "memmap" and ds.X.shape == (500, 8) and ds.X.chunks[0][0] == 128


def test_ingest_csv_glob_with_target(tmp_path, capsys):
    for i in range(2):
        pd.DataFrame(
            {"a": [1.0, 2.0, 3.0], "color": ["red", "blue", "red"], "label": ["yes", "no", "yes"]}
        ).to_csv(tmp_path / f"part{i}.csv", index=False)
    assert (
        main(["ingest", str(tmp_path / "part*.csv"), str(tmp_path / "t.zarr"), "--target", "label"])
        == 0
    )
    ds = store.open(tmp_path / "t.zarr")
    assert ds.X.shape == (6, 3) and ds.attrs["attrs"]["feature_names"] == [
        "a",
        "color=blue",
        "color=red",
    ]
    assert (
        ds.attrs["attrs"]["target_names"] == ["no", "yes"]
        and ds.y.compute().tolist() == [1, 0, 1] * 2
    )


def test_ingest_npy_with_labels(tmp_path):
    np.save(tmp_path / "X.npy", np.arange(60.0).reshape(20, 3))
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    args = [
        "ingest",
        str(tmp_path / "X.npy"),
        str(tmp_path / "n.zarr"),
        "--target",
        str(tmp_path / "y.npy"),
    ]
    assert main(args) == 0
    np.testing.assert_array_equal(store.open(tmp_path / "n.zarr").y.compute(), np.arange(20) % 2)


def test_ingest_mnist_from_a_path(tmp_path, capsys):
    import gzip
    import pickle

    rng = np.random.default_rng(0)
    split = lambda n: (rng.random((n, 784), dtype="float32"), rng.integers(0, 10, n))  # noqa: E731
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump((split(50), split(10), split(20)), f)
    dest = tmp_path / "m.zarr"
    assert main(["ingest", f"mnist:{tmp_path / 'mnist.pkl.gz'}", str(dest), "--split", "test"]) == 0
    assert store.open(dest).X.shape == (20, 784)


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    store.write(tmp_path / "exists.zarr", np.ones((3, 2)))
    assert main(["ingest", "digits", str(tmp_path / "exists.zarr")]) == 2
    assert "already exists; pass overwrite=True" in capsys.readouterr().err
    assert (
        main(["ingest", "mnist:" + str(tmp_path / "nothing-here"), str(tmp_path / "m.zarr")]) == 2
    )
    assert "pipeline ingest: error:" in capsys.readouterr().err
    assert main(["ingest", "data.parquet", str(tmp_path / "x.zarr")]) == 2
    assert "pipeline ingest: error: unknown source 'data.parquet'" in capsys.readouterr().err
    assert main(["ingest", "synthetic:10", str(tmp_path / "x.zarr")]) == 2
    assert "expected synthetic:N_SAMPLES,N_FEATURES" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "x.zarr").exists()


def test_demo_as_a_user_runs_it(tmp_path):
    env = {"PATH": "", "PIPELINE_DATA": str(tmp_path), "HOME": str(tmp_path)}  # no MNIST: digits
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "scikit-learn digits" in run.stdout and "1,347 in" in run.stdout
    accuracy = float(re.search(r"accuracy (\S+) on 450 samples", run.stdout).group(1))
    assert accuracy > 0.95, run.stdout
    assert "confusion matrix" in run.stdout and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def digit_stores(tmp_path_factory):
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("cli")
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    store.write(tmp / "train.zarr", X[:1400], y[:1400], chunk_rows=256)
    store.write(tmp / "test.zarr", X[1400:], y[1400:], chunk_rows=256)
    return tmp


def test_train_then_evaluate_a_saved_model(digit_stores, capsys):
    tmp = digit_stores
    args = ["train", str(tmp / "train.zarr"), "--hidden", "64", "--epochs", "30", "--quiet"]
    assert main([*args, "--out", str(tmp / "m.zarr")]) == 0
    out = capsys.readouterr().out
    assert "MLPClassifier: 30 epochs over 1,400 samples" in out and "saved to" in out
    assert main(["evaluate", str(tmp / "m.zarr"), str(tmp / "test.zarr")]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy (\S+) on 397 samples", out).group(1))
    assert accuracy > 0.8 and "macro avg" in out and "confusion matrix" in out
    loaded = pipeline.load(tmp / "m.zarr")
    assert loaded.hidden_layer_sizes == (64,) and loaded.n_iter_ == 30
    # an existing model is refused before any training; --overwrite replaces it
    assert main([*args, "--out", str(tmp / "m.zarr")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_train_and_evaluate_errors(digit_stores, capsys):
    tmp = digit_stores
    store.write(tmp / "unlabelled.zarr", np.ones((10, 3), np.float32))
    assert main(["train", str(tmp / "unlabelled.zarr"), "--out", str(tmp / "u.zarr")]) == 2
    assert "holds no target y" in capsys.readouterr().err
    assert main(["train", str(tmp / "train.zarr"), "--hidden", "a,b", "--out", "x"]) == 2
    assert "--hidden must be comma-separated" in capsys.readouterr().err
    train = ["train", str(tmp / "train.zarr"), "--out", str(tmp / "p.zarr")]
    assert main([*train, "--checkpoint", str(tmp / "ck")]) == 2
    assert "--checkpoint needs --scheduler" in capsys.readouterr().err
    assert main([*train, "--scheduler", "localhost"]) == 2
    assert "tcp://host:8786" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "missing.zarr"), str(tmp / "test.zarr")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "train.zarr"), str(tmp / "test.zarr")]) == 2
    assert "is not a pipeline model" in capsys.readouterr().err


def test_search_and_nested_cv_over_a_store(digit_stores, capsys):
    tmp = digit_stores
    args = ["search", str(tmp / "train.zarr"), "--hidden", "16", "--epochs", "3", "--cv", "2"]
    grid = ["--param", "alpha=1e-4;1.0", "--param", "learning_rate_init=0.01"]
    assert main([*args, *grid, "--out", str(tmp / "best.zarr")]) == 0
    out = capsys.readouterr().out
    assert "test score" in out and "best {" in out and "best model saved to" in out
    assert pipeline.load(tmp / "best.zarr").learning_rate_init == 0.01
    assert main([*args, *grid, "--nested", "2"]) == 0
    out = capsys.readouterr().out
    assert "outer fold" in out and "outer test score" in out
    assert main([*args, "--param", "nonsense=1"]) == 2
    assert "names no parameter of MLPClassifier" in capsys.readouterr().err
    assert main([*args, "--param", "alpha"]) == 2
    assert "--param must look like NAME=VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------- destinations, errors, Ctrl-C


def _marker(path):
    import json

    return json.loads((path / "pipeline.json").read_text())


@pytest.fixture(scope="module")
def good_model(digit_stores):
    """A small saved classifier (trained on digits 0-4 only) and its store."""
    from pipeline import MLPClassifier

    ds = store.open(digit_stores / "train.zarr")
    X, y = ds.X.compute(), ds.y.compute()
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    with pytest.warns(Warning):
        est.fit(X[y < 5], y[y < 5])
    est.save(digit_stores / "good.zarr")
    return digit_stores / "good.zarr"


def test_train_refuses_destinations_before_any_work(digit_stores, good_model, capsys, monkeypatch):
    import pipeline._store

    tmp, train = digit_stores, str(digit_stores / "train.zarr")
    uid = _marker(tmp / "train.zarr")["uid"]
    monkeypatch.setattr(pipeline._store, "open", lambda *a: pytest.fail("work started"))
    args = ["train", train, "--quiet", "--overwrite", "--out"]
    assert main([*args, train]) == 2
    assert f"--out {train} is the training store {train}" in capsys.readouterr().err
    assert main([*args, train + "/model"]) == 2
    assert f"is inside the training store {train}" in capsys.readouterr().err
    assert main([*args, str(tmp / "test.zarr")]) == 2  # a store, not a model
    assert "it holds a pipeline store" in capsys.readouterr().err
    (tmp / "a-file").write_text("thesis")
    assert main([*args, str(tmp / "a-file" / "m.zarr")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work")
    cluster = ["--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp / "new.zarr"), "--checkpoint"]
    assert main(["train", train, *cluster, str(tmp / "mine")]) == 2  # not after a 10 s wait
    assert "refusing to write a pipeline checkpoint" in capsys.readouterr().err
    assert main(["train", train, *cluster, str(tmp / "new.zarr")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["search", train, "--param", "alpha=1", "--out", train, "--overwrite"]) == 2
    assert "is the training store" in capsys.readouterr().err
    assert (tmp / "mine" / "thesis.tex").read_text() == "years of work"
    assert _marker(tmp / "train.zarr")["uid"] == uid and not (tmp / "new.zarr").exists()


def test_ingest_refuses_a_dest_that_is_or_holds_its_source(tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.arange(60.0).reshape(20, 3))
    np.save(tmp_path / "y.npy", np.arange(20) % 2)
    X, y = str(tmp_path / "X.npy"), str(tmp_path / "y.npy")
    assert main(["ingest", X, X, "--overwrite"]) == 2
    assert f"DEST {X} is the source {X}" in capsys.readouterr().err
    assert main(["ingest", X, y, "--target", y, "--overwrite"]) == 2
    assert f"is the target {y}" in capsys.readouterr().err
    assert main(["ingest", f"mnist:{tmp_path}", str(tmp_path / "m.zarr"), "--overwrite"]) == 2
    assert f"is inside the source {tmp_path}" in capsys.readouterr().err
    assert np.load(X).shape == (20, 3) and np.load(y).shape == (20,)


def test_unreachable_scheduler_is_one_clear_line(digit_stores, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    out = str(digit_stores / "never.zarr")
    args = ["train", str(digit_stores / "train.zarr"), "--out", out, "--scheduler", address]
    assert main([*args, "--connect-timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the dask scheduler at {address} within 1 s" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("PIPELINE_CONNECT_TIMEOUT", "soon")
    assert main(args) == 2
    assert "PIPELINE_CONNECT_TIMEOUT must be a positive number" in capsys.readouterr().err


def test_corrupt_chunk_is_one_clear_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    store.write(tmp_path / "s.zarr", rng.random((600, 4)), np.arange(600) % 2, chunk_rows=200)
    chunk = tmp_path / "s.zarr" / "X" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    args = ["train", str(tmp_path / "s.zarr"), "--hidden", "4", "--epochs", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "m.zarr")]) == 1
    err = capsys.readouterr().err
    assert "pipeline train: error:" in err and "array 'X' chunk 1 could not be read" in err
    assert "Traceback" not in err and not (tmp_path / "m.zarr").exists()


def test_evaluate_reports_classes_the_model_never_saw(digit_stores, good_model, capsys):
    assert main(["evaluate", str(good_model), str(digit_stores / "test.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "holds 5 class(es)" in err and "[5, 6, 7, 8, 9]" in err
    assert "cannot predict them" in err
    report = out[out.index("precision") : out.index("accuracy", out.index("precision"))]
    rows = [line.split()[0] for line in report.strip().splitlines()[1:] if line.strip()]
    assert rows == [str(c) for c in range(10)]
    assert len(out[out.index("confusion matrix") :].strip().splitlines()) == 2 + 10


def test_evaluate_refuses_or_warns_on_the_wrong_kind_of_target(tmp_path, capsys):
    from pipeline import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.random((200, 3)).astype(np.float32)
    store.write(tmp_path / "labels.zarr", X, (X[:, 0] * 3).astype(int))
    store.write(tmp_path / "values.zarr", X, X[:, 0] * 3)
    fast = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with pytest.warns(Warning):
        MLPRegressor(**fast).fit(X, X[:, 0]).save(tmp_path / "reg.zarr")
        MLPClassifier(**fast).fit(X, (X[:, 0] * 3).astype(int)).save(tmp_path / "clf.zarr")
    reg, clf = str(tmp_path / "reg.zarr"), str(tmp_path / "clf.zarr")
    assert main(["evaluate", reg, str(tmp_path / "labels.zarr")]) == 0
    out, err = capsys.readouterr()
    assert "r2" in out and "is a regressor (MLPRegressor)" in err and "class labels" in err
    assert main(["evaluate", clf, str(tmp_path / "values.zarr")]) == 2
    assert "is a classifier (MLPClassifier), but" in capsys.readouterr().err


def _fake_fit_then(monkeypatch, swallow):
    """est.fit and parallel.fit replaced by a Ctrl-C in mid-training: raised on, or
    turned into a warning and a return (as est.fit does, after scikit-learn)."""
    import contextlib
    import os
    import signal
    import threading

    import pipeline.cli
    import pipeline.parallel
    from pipeline import MLPClassifier

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python handles signals in the main thread only")

    def interrupted(est, *args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            if not swallow:
                raise
        return est

    monkeypatch.setattr(MLPClassifier, "fit", interrupted)
    monkeypatch.setattr(pipeline.parallel, "fit", interrupted)
    monkeypatch.setattr(pipeline.cli, "_connect", lambda *a: contextlib.nullcontext())


@pytest.mark.parametrize("swallow", [True, False])
def test_ctrl_c_in_train_saves_nothing_and_exits_130(
    digit_stores, good_model, capsys, monkeypatch, swallow
):
    import signal

    _fake_fit_then(monkeypatch, swallow)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        uid = _marker(good_model)["uid"]
        args = ["train", str(digit_stores / "train.zarr"), "--out", str(good_model), "--overwrite"]
        for extra in ([], ["--scheduler", "tcp://127.0.0.1:1"]):
            assert main([*args, *extra]) == 130
            assert f"interrupted: nothing was saved; {good_model} is as it was" in (
                capsys.readouterr().err
            )
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert _marker(good_model)["uid"] == uid
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_as_a_user_presses_it(digit_stores, good_model, tmp_path):
    # a real process, SIGINT while its first step compiles and runs: exit 130, the good
    # model untouched, no traceback, no segfault at exit (it was 139 in 3 of 4 runs)
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, sys\n"
        "from pipeline import nn\n"
        "from pipeline.cli import main\n"
        "real = nn.compiled_step\n"
        "def compiled_step(*args, **kwargs):\n"
        "    step = real(*args, **kwargs)\n"
        "    def interrupted(*a):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        return step(*a)\n"
        "    return interrupted\n"
        "nn.compiled_step = compiled_step\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    uid = _marker(good_model)["uid"]
    args = ["train", str(digit_stores / "train.zarr"), "--hidden", "16", "--epochs", "3"]
    run = subprocess.run(
        [sys.executable, str(script), *args, "--quiet", "--out", str(good_model), "--overwrite"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 130, run.stderr
    assert "pipeline train: warning: Training interrupted by user" in run.stderr
    assert "nothing was saved" in run.stderr and "Traceback" not in run.stderr
    assert _marker(good_model)["uid"] == uid
    assert pipeline.load(good_model).n_iter_ == 5


@pytest.fixture(params=["garbage", "silent", "close"])
def not_a_scheduler(request):
    """A tcp:// address where something that is not a dask scheduler listens: it
    answers as an HTTP server does, says nothing, or closes every connection."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held, mode = [], request.param

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            if mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if mode == "close":
                conn.close()
            else:
                held.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield mode, f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_an_address_that_is_not_a_scheduler_fails_within_the_timeout(
    digit_stores, capsys, monkeypatch, not_a_scheduler
):
    import time

    from pipeline import MLPClassifier

    mode, address = not_a_scheduler
    monkeypatch.setattr(MLPClassifier, "fit", lambda *a, **k: pytest.fail("fit ran"))
    out = str(digit_stores / "never.zarr")
    train = ["train", str(digit_stores / "train.zarr"), "--out", out, "--scheduler", address]
    search = ["search", str(digit_stores / "train.zarr"), "--param", "alpha=1", "--scheduler"]
    for args in (train, [*search, address]):
        t0 = time.perf_counter()
        assert main([*args, "--connect-timeout", "1"]) == 1  # it hung, or was 2.8 EiB
        assert time.perf_counter() - t0 < 1 + 5  # opening the store, importing distributed
        err = capsys.readouterr().err
        unreached = f"cannot reach the dask scheduler at {address} within 1 s"
        not_dask = f"{address} is not a dask scheduler: it answered, but not in dask's"
        expected = {"silent": [unreached], "garbage": [not_dask]}.get(mode, [unreached, not_dask])
        assert any(e in err for e in expected), err  # close: as it happens to be seen
        assert "Traceback" not in err and "EiB" not in err and len(err.strip().splitlines()) == 1
    assert not (digit_stores / "never.zarr").exists()


def test_connect_reaches_a_real_scheduler():
    import distributed

    from pipeline.cli import _connect

    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as c:
        with _connect(c.scheduler_address, 5) as client:
            assert client.scheduler_info()["address"] == c.scheduler_address


def test_search_refuses_a_bad_parameter_value_before_any_fit(digit_stores, capsys, monkeypatch):
    from pipeline import MLPClassifier

    monkeypatch.setattr(MLPClassifier, "fit", lambda *a, **k: pytest.fail("fit ran"))
    args = ["search", str(digit_stores / "train.zarr"), "--hidden", "4", "--epochs", "1"]
    assert main([*args, "--param", "alpha=1e-4;abc"]) == 2
    err = capsys.readouterr().err
    assert "--param gives an invalid candidate (alpha='abc')" in err
    assert "The 'alpha' parameter of MLPClassifier must be" in err
    assert main([*args, "--param", "solver=lbfgs;adam", "--param", "dropout=0.5", "--nested", "2"])
    err = capsys.readouterr().err
    assert "(dropout=0.5, solver='lbfgs')" in err and "supports neither dropout" in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_unwritable_destination_fails_before_any_work(digit_stores, capsys, monkeypatch):
    import pipeline._datasets
    import pipeline._store

    # as for root: os.access says yes everywhere, but nothing can be created in /proc
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    monkeypatch.setattr(pipeline._store, "open", lambda *a: pytest.fail("work started"))
    monkeypatch.setattr(pipeline._datasets, "load_digits", lambda: pytest.fail("work started"))
    train = ["train", str(digit_stores / "train.zarr"), "--quiet"]
    search = ["search", str(digit_stores / "train.zarr"), "--param", "alpha=1"]
    checkpoint = ["--scheduler", "tcp://127.0.0.1:1", "--out", str(digit_stores / "n.zarr")]
    runs = {
        "--out /proc/pipeline-x": [*train, "--out", "/proc/pipeline-x"],
        "--checkpoint /proc/pipeline-x": [*train, *checkpoint, "--checkpoint", "/proc/pipeline-x"],
        "--out /proc/pipeline-x/m.zarr": [*search, "--out", "/proc/pipeline-x/m.zarr"],
        "DEST /proc/pipeline-x": ["ingest", "digits", "/proc/pipeline-x"],
    }
    for named, args in runs.items():
        assert main(args) == 1, named
        err = capsys.readouterr().err
        assert f"error: cannot write {named}: creating a directory in /proc failed" in err
        assert len(err.strip().splitlines()) == 1
    assert not (digit_stores / "n.zarr").exists()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_train_with_scale_and_pca_saves_a_pipeline_that_evaluate_applies(digit_stores, capsys):
    from sklearn import metrics

    tmp = digit_stores
    args = ["train", str(tmp / "train.zarr"), "--hidden", "32", "--epochs", "10", "--quiet"]
    out = tmp / "scaled.zarr"
    assert main([*args, "--scale", "minmax", "--pca", "12", "--out", str(out)]) == 0
    assert "MinMaxScaler -> IncrementalPCA -> MLPClassifier: 10 epochs" in capsys.readouterr().out
    model = pipeline.load(out)
    assert isinstance(model, pipeline.Pipeline) and model[1].n_components_ == 12
    assert main(["evaluate", str(out), str(tmp / "test.zarr")]) == 0
    shown = capsys.readouterr().out
    test = store.open(tmp / "test.zarr")
    y, pred = test.y.compute(), model.predict(test.X).compute()
    # the chunk-by-chunk report is scikit-learn's on the whole arrays
    expected = metrics.classification_report(y, pred, labels=np.arange(10), digits=4,
                                             zero_division=0)
    assert expected in shown
    assert f"accuracy {metrics.accuracy_score(y, pred):.4f} on 397 samples" in shown
    # refused before any work: too many components, a Pipeline on a cluster
    assert main([*args, "--pca", "65", "--out", str(tmp / "x.zarr")]) == 2
    assert "more components than" in capsys.readouterr().err
    cluster = ["--scale", "standard", "--scheduler", "tcp://127.0.0.1:1"]
    assert main([*args, *cluster, "--out", str(tmp / "x.zarr")]) == 2
    assert not (tmp / "x.zarr").exists()


def test_evaluate_streams_a_regressor_as_scikit_learn_scores_it(tmp_path, capsys):
    from sklearn import metrics

    from pipeline import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(700, 5)).astype(np.float32)
    y = X @ np.arange(1.0, 6.0) + 3.0
    store.write(tmp_path / "v.zarr", X, y, chunk_rows=128)
    with pytest.warns(Warning):
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    reg.save(tmp_path / "r.zarr")
    assert main(["evaluate", str(tmp_path / "r.zarr"), str(tmp_path / "v.zarr")]) == 0
    shown = capsys.readouterr().out
    pred = reg.predict(X)
    for name, value in (("r2", metrics.r2_score(y, pred)),
                        ("mae", metrics.mean_absolute_error(y, pred)),
                        ("rmse", metrics.root_mean_squared_error(y, pred))):
        assert f"{name:>5}  {value:.4f}" in shown
