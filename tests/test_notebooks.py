"""The notebooks are saved clean and run top to bottom, on small data, without errors."""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="running the notebooks needs nbformat (pip install '.[test]')"
)
nbclient = pytest.importorskip(
    "nbclient", reason="running the notebooks needs nbclient (pip install '.[test]')"
)
pytest.importorskip(
    "ipykernel", reason="running the notebooks needs ipykernel (pip install '.[test]')"
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Appended to each notebook's cell tagged "parameters": small enough to run in seconds.
SMALL = {
    "01_out_of_core_mlp.ipynb": "N_TRAIN = 3000\nMAX_ITER = 8\n",
    "02_networks.ipynb": (
        "N_TRAIN = 1000\nN_TEST = 1000\nMAX_ITER = 2\nCNN_LAYERS = ((8, 3),)\nRNN_HIDDEN = 16\n"
        "SERIES_LENGTH = 600\nFORECAST_MAX_ITER = 3\nAE_MAX_ITER = 40\n"
        "TABLE_ROWS = 2000\nTABLE_MAX_ITER = 3\n"
    ),
    "03_search_and_nested_cv.ipynb": (
        "N_SAMPLES = 1500\nCHUNK_ROWS = 500\nCV = 2\nOUTER_CV = 2\nN_COMPONENTS = (16, 32)\n"
        "MAX_ITER = 3\nHYPERBAND_MAX_ITER = 3\n"
    ),
    "04_distributed.ipynb": (
        "N_TRAIN = 2000\nN_TEST = 1000\nCHUNK_ROWS = 250\nMAX_ITER = 10\nAVERAGING_FREQUENCY = 2\n"
        "SEARCH_MAX_ITER = 3\n"
    ),
    "05_out_of_core_pipeline.ipynb": (
        "N_SAMPLES = 20_000\nN_TEST = 5_000\nCHUNK_ROWS = 2_500\nMAX_ITER = 2\nN_COMPONENTS = 8\n"
    ),
}


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _outputs(nb, kind):
    """Every output of ``output_type == kind`` in the executed notebook."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    return [o for c in cells for o in c.outputs if o.output_type == kind]


def _stdout(nb):
    return "".join(o.text for o in _outputs(nb, "stream") if o.name == "stdout")


def _kernel_manager(tmp_path):
    """A ``python3`` kernel on this very interpreter (the one with pipeline installed),
    whatever kernelspecs the machine has installed elsewhere."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (pipeline tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _execute(name, tmp_path, monkeypatch):
    """Run notebook ``name`` with its small parameters in ``tmp_path``; the executed notebook."""
    nb = _read(name)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: expected one cell tagged 'parameters'"
    params[0].source += "\n# small-data overrides from tests/test_notebooks.py\n" + SMALL[name]
    # Figures as PNG outputs, headless, whatever backend the environment asks for.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=300,
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return nb


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_saved_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: cell {i} has outputs; save notebooks cleared"
            )
    assert path.name in SMALL, f"{path.name}: add its small-data parameters to SMALL"


def test_out_of_core_mlp_notebook(tmp_path, monkeypatch):
    nb = _execute("01_out_of_core_mlp.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)

    assert not _outputs(nb, "error")
    dataset = re.search(r"dataset: (\w+)", out)
    assert dataset and dataset.group(1) in {"mnist", "digits"}, out
    accuracy = re.search(r"test accuracy: ([0-9.]+)", out)
    assert accuracy, out
    # Ten classes: chance is 0.1; these parameters reach ~0.87 (digits) and ~0.9 (MNIST).
    assert float(accuracy.group(1)) > 0.5, f"{dataset.group(1)}: {accuracy.group(0)}"
    assert "same predictions = True" in out
    results = [o.data.get("text/plain", "") for o in _outputs(nb, "execute_result")]
    assert any(r.startswith("dask.array<") for r in results), "lazy X and predictions shown"
    pngs = [o for o in _outputs(nb, "display_data") if "image/png" in o.data]
    assert len(pngs) >= 2, "expected the loss curve and the confusion matrix as figures"
    assert not list((tmp_path / "work").iterdir()), "the notebook leaves files behind"


def test_networks_notebook(tmp_path, monkeypatch):
    nb = _execute("02_networks.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)

    assert not _outputs(nb, "error")
    dataset = re.search(r"dataset: (\w+)", out)
    assert dataset and dataset.group(1) in {"mnist", "digits"}, out
    scores = {
        name: float(m.group(1))
        for name in ("CNN test accuracy", "LSTM test accuracy", "autoencoder AUC")
        if (m := re.search(rf"{name}: ([0-9.]+)", out))
    }
    assert len(scores) == 3, out
    # Tiny runs: the CNN beats chance (0.1) and the autoencoder ranks its digit above the rest.
    assert scores["CNN test accuracy"] > 0.25 and scores["autoencoder AUC"] > 0.6, scores
    assert re.search(r"GRU one-step forecast R2: -?[0-9.]+", out), out
    # input_shape reads flat rows as the same images; the reloaded module predicts the same.
    assert out.count("same predictions = True") == 2, out
    assert "module=<__main__.ResidualMLP>" in out, "loading without the module says what to pass"
    results = [o.data.get("text/plain", "") for o in _outputs(nb, "execute_result")]
    assert any(r.startswith("dask.array<") for r in results), "lazy sequences and predictions shown"
    pngs = [o for o in _outputs(nb, "display_data") if "image/png" in o.data]
    assert len(pngs) >= 5, "confusion matrix, misclassified digits, forecast, anomalies"
    assert not list((tmp_path / "work").iterdir()), "the notebook leaves files behind"


def test_search_and_nested_cv_notebook(tmp_path, monkeypatch):
    nb = _execute("03_search_and_nested_cv.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)

    assert not _outputs(nb, "error")
    dataset = re.search(r"dataset: (\w+)", out)
    assert dataset and dataset.group(1) in {"mnist", "digits"}, out
    # Merged graph: the Pipeline's first step is fitted once per fold (k = 2) and once to
    # refit, where scikit-learn fits it K*k + 1 = 9 times; the same on the cluster.
    assert "FitLog fitted: 3 times here, 9 times by scikit-learn" in out
    assert "fit tasks: 14 here, 24 in scikit-learn" in out
    assert "same cv_results_ as scikit-learn: True" in out
    assert "same cv_results_ on the cluster: True" in out
    assert "FitLog fitted 3 times by the workers" in out
    assert re.search(r"dashboard: https?://", out), out
    scores = {
        name: float(m.group(1))
        for name in ("nested CV estimate", "plain search best_score_")
        if (m := re.search(rf"{name}: ([0-9.]+)", out))
    }
    assert len(scores) == 2, out
    # Ten classes: chance is 0.1; these parameters reach ~0.85 (digits) and ~0.93 (MNIST).
    assert min(scores.values()) > 0.5, scores
    assert "budget as planned: True" in out
    tables = [o for o in _outputs(nb, "execute_result") if "text/html" in o.data]
    assert len(tables) >= 5, "search report, graph's tasks, nested CV, Hyperband budget and report"
    pngs = [o for o in _outputs(nb, "display_data") if "image/png" in o.data]
    assert len(pngs) >= 3, "expected the boxplots, the merged graph and Hyperband's curves"
    assert not list((tmp_path / "work").iterdir()), "the notebook leaves files behind"


def test_distributed_notebook(tmp_path, monkeypatch):
    nb = _execute("04_distributed.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)

    assert not _outputs(nb, "error")
    dataset = re.search(r"dataset: (\w+)", out)
    assert dataset and dataset.group(1) in {"mnist", "digits"}, out
    assert re.search(r"dashboard: https?://", out), out
    assert "parallel.fit: 2 replicas; dashboard: http" in out, "verbose=True shows the dashboard"
    accuracies = dict(re.findall(r"^(.+): test accuracy ([0-9.]+)", out, flags=re.M))
    assert len(accuracies) == 3, out
    # Ten classes: chance is 0.1; these parameters reach ~0.8 (digits) and ~0.85 (MNIST).
    assert min(map(float, accuracies.values())) > 0.5, accuracies
    assert "n_workers=1 equals est.fit bit for bit: True" in out
    assert re.search(r"the finished checkpoint's model in [0-9.]+ s: same = True", out), out
    assert "checkpoint of an estimator with other parameters" in out
    best = re.search(r"best \{.*\}: accuracy ([0-9.]+)", out)
    assert best and float(best.group(1)) > 0.5, out
    tables = [o for o in _outputs(nb, "execute_result") if "text/html" in o.data]
    assert len(tables) >= 2, "the fits' comparison and the search report"
    assert not list((tmp_path / "work").iterdir()), "the notebook leaves files behind"


def test_out_of_core_pipeline_notebook(tmp_path, monkeypatch):
    # On two busy cores OpenBLAS's threads spin against each other: IncrementalPCA's SVDs take
    # seconds instead of milliseconds. One thread each, in the kernel and in its children.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    nb = _execute("05_out_of_core_pipeline.ipynb", tmp_path, monkeypatch)
    out = _stdout(nb)

    assert not _outputs(nb, "error")
    found = re.search(r"^summary: (\{.*\})$", out, flags=re.M)
    assert found, out
    summary = json.loads(found.group(1))
    ours, theirs = summary["ours"], summary["sklearn"]
    # Our Pipeline's fit ran to the end in a child capped at start-up + budget (RLIMIT_DATA).
    assert ours["error"] is None, ours
    assert 0 < ours["growth"] < summary["budget"], ours
    # scikit-learn's Pipeline read the training rows into memory: its growth is at least them.
    assert theirs["error"] is None, theirs
    assert theirs["growth"] >= summary["train_bytes"], (theirs, summary["train_bytes"])
    assert summary["predict_lazy"] is True
    results = [o.data.get("text/plain", "") for o in _outputs(nb, "execute_result")]
    assert any(r.startswith("dask.array<") for r in results), "lazy predictions shown"
    # Two well-separated classes: chance is 0.5; these parameters reach ~0.9.
    assert summary["accuracy"] > 0.7, summary
    assert summary["round_trip"] is True and "same predictions after save/load: True" in out
    assert summary["cache_entries"] == 2 and summary["same_cached"] is True, summary
    assert re.search(r"first fit [0-9.]+ s, second fit [0-9.]+ s", out), out
    assert "MemoryError: step 'pca' (PCA)" in out, "max_in_memory refuses PCA, naming it"
    assert not list((tmp_path / "work").iterdir()), "the notebook leaves files behind"
