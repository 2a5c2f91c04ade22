"""The ``pipeline`` command: ingest every kind of source, demo, clear errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

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
        [sys.executable, "-m", "pipeline", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "scikit-learn digits" in run.stdout and "1,797 samples" in run.stdout
    assert "streamed one shuffled epoch" in run.stdout and list(tmp_path.iterdir()) == []
