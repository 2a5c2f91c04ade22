"""The ``pipeline`` command: ingest every kind of source, demo, clear errors."""

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
    with pytest.raises(SystemExit, match="unknown source"):
        main(["ingest", "data.parquet", str(tmp_path / "x.zarr")])
    with pytest.raises(SystemExit, match="synthetic:N_SAMPLES,N_FEATURES"):
        main(["ingest", "synthetic:10", str(tmp_path / "x.zarr")])
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
