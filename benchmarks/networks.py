"""CNN, LSTM, autoencoder and wide & deep estimators: accuracy and speed, in one run.

Measures, on one machine in one run:

1. ``cnn``: ``pipeline.CNNClassifier(max_iter=5, random_state=0)``, its other
   parameters at their defaults (conv blocks of 32 and 64 3x3 filters with 2x2
   max-pooling, dense 128, adam, batch 200; the learning-rate schedule is the
   estimator's), trained for 5 epochs from an on-disk Zarr store of MNIST's training
   images, shape (60000, 28, 28, 1) float32 in [0, 1]; test accuracy on MNIST's 10k
   test images after each epoch, the wall time of every epoch (the first compiles)
   and of the whole fit. Target: test accuracy >= 99.0 % (reference: the course's
   DL4J-on-Spark CNN reached 95.65 % after 100 epochs). A probe times a plain
   JAX/optax step of the same module per mini-batch, jitted alone and inside a
   ``lax.scan``, for the library's per-batch time to be read against.
2. ``lstm``: ``pipeline.RNNClassifier(cell="lstm", max_iter=5, random_state=0)`` (hidden 128)
   on MNIST's rows as sequences, (60000, 28, 28) = 28 steps of 28 pixels, 5 epochs
   from a Zarr store; the same measures. Target: test accuracy >= 97.5 %.
3. ``autoencoder``: one-class anomaly detection. For each digit d, fit on the
   training images of d alone, score all 10k test images (``score_samples``: higher
   = more normal) and take the ROC AUC of "is digit d" (the other digits are the
   anomalies). Ours: ``pipeline.AutoEncoder(random_state=0)`` with its defaults
   (784-128-32-128-784, relu, adam, max_iter=200 with scikit-learn's tol stopping).
   Beside it: scikit-learn's ``IsolationForest(random_state=0)`` and PCA
   reconstruction error with 32 components (the autoencoder's code size) and with
   the components that explain 90 % of the variance. Targets: the autoencoder's
   mean AUC > IsolationForest's, and >= PCA(32)'s.
4. ``widedeep``: a synthetic census-like table (100k training rows, 20k test rows,
   seeded): 3 dense columns (age, hours, capital, standardised) and 8 categorical
   columns of census cardinalities (education 16, occupation 14, workclass 8,
   marital 7, relationship 6, race 5, sex 2, native country 41); the label is drawn
   from a logistic model with categorical main effects, 5 pairwise cross effects
   between categorical columns, nonlinear dense effects and an age x marital slope,
   then 5 % of the labels are flipped. Compared on test accuracy, ROC AUC and fit
   time: ``WideDeepClassifier(categorical=<the 8>)`` (crosses="pairs": all 28 pairs),
   our ``MLPClassifier(hidden_layer_sizes=(64, 32))`` on one-hot categoricals + the
   dense columns, both 10 epochs (``max_iter=10``, no early stopping), scikit-learn's
   ``LogisticRegression`` on the same one-hot features (linear, main effects only),
   and on those plus one-hot encodings of all 28 pairwise crosses (the wide part
   alone). The Bayes rate of the generator (its true probabilities) is the ceiling.

The CNN and LSTM epochs run as ``partial_fit`` calls (one epoch each, bit for bit
the same model as ``fit(max_iter=E)``: same shuffles, optimizer state continued),
so the test accuracy after every epoch is measured on the way; scoring time is
not in the epoch times. Every measurement runs in a child process of its own
(``--child``), so each starts from a clean state (compilation included).

Usage::

    PIPELINE_DATA=/path/to/mnist python benchmarks/networks.py --json /tmp/networks.json
    python benchmarks/networks.py --quick                 # a smoke run, about 2 minutes
    python benchmarks/networks.py --only autoencoder      # one section (repeatable)
    python benchmarks/networks.py --only cnn --cnn-epochs 2   # fewer epochs (targets need 5)

The MNIST image and sequence stores go to ``--dir`` (default benchmarks/_data,
git-ignored) and are reused by later runs when complete (``--clean`` removes them
at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import base_parser, child_main, markdown_table, print_totals, run_sections
from _common import drop_page_cache as _drop_page_cache
from mlp import _du_gb, _peak_rss_mb, machine

HERE = Path(__file__).resolve().parent
N_CLASSES = 10
SECTIONS = ("cnn", "lstm", "autoencoder", "widedeep")

TARGETS = {
    "cnn_accuracy": 0.99,  # test accuracy after 5 epochs, at least
    "lstm_accuracy": 0.975,  # test accuracy after 5 epochs, at least
    # autoencoder: mean AUC > IsolationForest's and >= PCA(32)'s (relative targets)
}
CNN_REFERENCE = 0.9565  # the course's DL4J-on-Spark CNN, after 100 epochs

SHAPES = {"cnn": (28, 28, 1), "lstm": (28, 28)}
AE_CODE_SIZE = 32  # AutoEncoder's default code_size: PCA gets as many components

# widedeep: the census-like table
CENSUS_DENSE = ("age", "hours", "capital")
CENSUS_CATEGORICAL = (
    ("education", 16),
    ("occupation", 14),
    ("workclass", 8),
    ("marital", 7),
    ("relationship", 6),
    ("race", 5),
    ("sex", 2),
    ("native_country", 41),
)
CENSUS_CROSSES = (
    ("education", "occupation"),
    ("marital", "relationship"),
    ("occupation", "sex"),
    ("workclass", "education"),
    ("native_country", "race"),
)
CENSUS_FLIP = 0.05  # label noise: this share of labels flipped
CENSUS_POSITIVE = 0.3  # about this share of positive labels before flipping
DEEP = (64, 32)


# ----------------------------------------------------------------------------- data


def _mnist(n_train=None, n_test=None):
    """MNIST as float32 in [0, 1] (n, 784) and int64 labels."""
    from pipeline.datasets import load_mnist

    X, y = load_mnist(split="train")
    Xt, yt = load_mnist(split="test")
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1, (X.dtype, X.max())
    return X[:n_train], y[:n_train], Xt[:n_test], yt[:n_test]


def census(n_train, n_test, seed=0):
    """A census-like table and binary label where crosses and nonlinearity both matter.

    Returns (X_train, y_train, X_test, y_test, p_train, p_test): X float32 with the 3
    standardised dense columns first, then the 8 categorical columns as integer codes
    0..k-1; p the true probability of a positive label (before the label flips, which
    do not change its ranking).
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    age = np.clip(17 + rng.gamma(4.0, 5.5, n), 17, 90)
    hours = np.clip(rng.normal(40, 12, n), 1, 99)
    capital = np.where(rng.random(n) < 0.08, rng.lognormal(8.0, 1.2, n), 0.0)
    codes = {}
    for name, k in CENSUS_CATEGORICAL:
        p = rng.dirichlet(np.full(k, 0.8))  # skewed frequencies, as real categories
        if name == "native_country":
            p = 0.15 * p
            p[0] += 0.85  # one dominant country
        codes[name] = rng.choice(k, size=n, p=p)
    # the true logit: main effects, crosses, nonlinear dense effects, age x marital
    logit = np.zeros(n)
    for name, k in CENSUS_CATEGORICAL:
        logit += rng.normal(0, 0.6, k)[codes[name]]
    for a, b in CENSUS_CROSSES:
        table = rng.normal(0, 1.0, (dict(CENSUS_CATEGORICAL)[a], dict(CENSUS_CATEGORICAL)[b]))
        logit += table[codes[a], codes[b]]
    logit += 1.5 * np.exp(-(((age - 48) / 12) ** 2)) - 0.75  # peaks in mid-career
    logit += 0.8 * np.tanh((hours - 40) / 8)
    logit += 0.5 * np.log1p(capital) / 4
    slope = rng.normal(0, 0.8, dict(CENSUS_CATEGORICAL)["marital"])
    logit += slope[codes["marital"]] * (age - 40) / 15
    lo, hi = -20.0, 20.0  # the intercept that gives CENSUS_POSITIVE positives
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (
            (mid, hi) if (1 / (1 + np.exp(-(logit + mid)))).mean() < CENSUS_POSITIVE else (lo, mid)
        )
    p = 1 / (1 + np.exp(-(logit + lo)))
    y = rng.random(n) < p
    y ^= rng.random(n) < CENSUS_FLIP
    dense = np.column_stack([age, hours, np.log1p(capital)])
    mu, sd = dense[:n_train].mean(0), dense[:n_train].std(0)
    X = np.column_stack([(dense - mu) / sd] + [codes[c] for c, _ in CENSUS_CATEGORICAL])
    X, y = X.astype(np.float32), y.astype(np.int64)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:], p[:n_train], p[n_train:]


def _census_categorical():
    return list(range(len(CENSUS_DENSE), len(CENSUS_DENSE) + len(CENSUS_CATEGORICAL)))


def _one_hot(X_train, X_test, crosses=False):
    """One-hot categoricals (and, with ``crosses``, one-hot pair crosses) + dense."""
    import itertools

    import scipy.sparse
    from sklearn.preprocessing import OneHotEncoder

    cat = _census_categorical()
    nd = len(CENSUS_DENSE)

    def columns(X):
        C = X[:, cat].astype(np.int64)
        if not crosses:
            return C
        pairs = [C[:, i] * 100 + C[:, j] for i, j in itertools.combinations(range(len(cat)), 2)]
        return np.column_stack([C, *pairs])

    enc = OneHotEncoder(handle_unknown="ignore", sparse_output=crosses, dtype=np.float32)
    H_train, H_test = enc.fit_transform(columns(X_train)), enc.transform(columns(X_test))
    if crosses:
        return (
            scipy.sparse.hstack([scipy.sparse.csr_matrix(X_train[:, :nd]), H_train]).tocsr(),
            scipy.sparse.hstack([scipy.sparse.csr_matrix(X_test[:, :nd]), H_test]).tocsr(),
        )
    return np.hstack([X_train[:, :nd], H_train]), np.hstack([X_test[:, :nd], H_test])


# ----------------------------------------------------------------------------- children


def _network(net, epochs):
    import pipeline

    if net == "cnn":
        return pipeline.CNNClassifier(max_iter=epochs, random_state=0)
    return pipeline.RNNClassifier(cell="lstm", max_iter=epochs, random_state=0)


def _child_seq_fit(spec):
    """E epochs (partial_fit) from the store: per-epoch wall/CPU time and test accuracy."""
    from pipeline.store import open as open_store

    _, _, Xt, yt = _mnist(1, spec["n_test"])
    Xt = Xt.reshape(-1, *SHAPES[spec["net"]])
    dropped = _drop_page_cache()
    ds = open_store(spec["store"])
    clf = _network(spec["net"], spec["epochs"])
    classes = np.arange(N_CLASSES)
    epoch_s, epoch_cpu_s, accuracy, score_s = [], [], [], []
    for _ in range(spec["epochs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        clf.partial_fit(ds.X, ds.y, classes=classes)
        epoch_s.append(time.perf_counter() - t0)
        epoch_cpu_s.append(time.process_time() - c0)
        t0 = time.perf_counter()
        accuracy.append(float(clf.score(Xt, yt)))
        score_s.append(time.perf_counter() - t0)
        print(
            f"  {spec['net']} epoch {len(epoch_s)}: {epoch_s[-1]:.1f} s, "
            f"test accuracy {accuracy[-1]:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "params": {k: v for k, v in clf.get_params().items() if k != "module"},
        "n_train": len(ds),
        "n_test": len(Xt),
        "epochs": spec["epochs"],
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "fit_s": sum(epoch_s),
        "accuracy": accuracy,
        "score_s": score_s,
        "loss_curve": [float(v) for v in clf.loss_curve_],
        "t": int(clf.t_),
        "page_cache_dropped": dropped,
        "peak_rss_mb": _peak_rss_mb(),
        "load_avg_1min": os.getloadavg()[0],
    }


def _child_step_probe(spec):
    """Seconds per mini-batch (200) of a plain JAX/optax Adam step of the fitted
    network's module (``module_``) and the same loss: jitted alone and called once per
    mini-batch (``straight``), and in a ``lax.scan`` over ``spec['batches']``
    mini-batches (``scan``). The library's own per-batch time, from its steady epochs,
    is set beside them in the report.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    bs, nb = 200, spec["batches"]
    X, y, _, _ = _mnist(nb * bs, 1)
    X = X.reshape(-1, *SHAPES[spec["net"]])
    clf = _network(spec["net"], 1).fit(X[:bs], y[:bs])
    Xb, yb = jnp.asarray(X.reshape(nb, bs, *X.shape[1:])), jnp.asarray(y.reshape(nb, bs))
    params, static = eqx.partition(clf.module_, eqx.is_array)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    state = clf.module_.initial_state()
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss(p, x, t):
        out, _ = eqx.combine(p, static)(x, state, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(out, t).mean()

    def one(p, o, x, t):
        value, grads = jax.value_and_grad(loss)(p, x, t)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    straight = jax.jit(one)

    @jax.jit
    def scanned(p, o, X_, T):
        def body(c, b):
            p, o, value = one(*c, *b)
            return (p, o), value

        return jax.lax.scan(body, (p, o), (X_, T))

    def best(f):
        jax.block_until_ready(f())  # compiles
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t0)
        return min(times) / nb

    return {
        "batches": nb,
        "straight": best(lambda: [straight(params, opt_state, Xb[i], yb[i]) for i in range(nb)]),
        "scan": best(lambda: scanned(params, opt_state, Xb, yb)),
    }


def _child_anomaly(spec):
    """One method over the digits: fit on digit d's training images, AUC on the test set."""
    from sklearn.metrics import roc_auc_score

    X, y, Xt, yt = _mnist(spec["n_train"], spec["n_test"])
    method = spec["method"]
    rows = []
    for d in spec["digits"]:
        Xd = X[y == d]
        t0 = time.perf_counter()
        row = {"digit": d, "n_fit": len(Xd)}
        if method == "autoencoder":
            import pipeline

            kw = {} if spec["max_iter"] is None else {"max_iter": spec["max_iter"]}
            est = pipeline.AutoEncoder(random_state=0, **kw).fit(Xd)
            row["fit_s"] = time.perf_counter() - t0
            scores = est.score_samples(Xt)
            row.update(
                n_iter=int(est.n_iter_), final_loss=float(est.loss_), params=est.get_params()
            )
        elif method == "isolation_forest":
            from sklearn.ensemble import IsolationForest

            est = IsolationForest(random_state=0).fit(Xd)
            row["fit_s"] = time.perf_counter() - t0
            scores = est.score_samples(Xt)
        else:  # "pca32" or "pca90": minus the mean squared reconstruction error
            from sklearn.decomposition import PCA

            est = PCA(AE_CODE_SIZE if method == "pca32" else 0.9, random_state=0).fit(Xd)
            row["fit_s"] = time.perf_counter() - t0
            R = est.inverse_transform(est.transform(Xt))
            scores = -((Xt - R) ** 2).mean(1)
            row["n_components"] = int(est.n_components_)
        row["auc"] = float(roc_auc_score(yt == d, scores))
        rows.append(row)
    return {
        "method": method,
        "rows": rows,
        "mean_auc": float(np.mean([r["auc"] for r in rows])),
        "fit_s": float(sum(r["fit_s"] for r in rows)),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child_widedeep(spec):
    """Fit one model on the census-like table; test accuracy, ROC AUC, fit seconds."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    X, y, Xt, yt, _, _ = census(spec["n_train"], spec["n_test"], spec["seed"])
    model, out = spec["model"], {}
    t0 = time.perf_counter()
    if model == "widedeep":
        import pipeline

        est = pipeline.WideDeepClassifier(
            categorical=_census_categorical(),
            hidden_layer_sizes=DEEP,
            max_iter=spec["epochs"],
            random_state=0,
        ).fit(X, y)
        out["n_crosses"] = len(est.crosses_)
        t_refit = time.perf_counter()
        est.fit(X, y)  # compiled now: the fit without JAX's compilation
        out["refit_s"] = time.perf_counter() - t_refit
    else:
        t_enc = time.perf_counter()
        X, Xt = _one_hot(X, Xt, crosses=model == "logreg_crosses")
        out["encode_s"] = time.perf_counter() - t_enc
        out["n_features"] = int(X.shape[1])
        if model == "mlp":
            import pipeline

            est = pipeline.MLPClassifier(
                hidden_layer_sizes=DEEP, max_iter=spec["epochs"], random_state=0
            ).fit(X, y)
            t_refit = time.perf_counter()
            est.fit(X, y)  # compiled now
            out["refit_s"] = time.perf_counter() - t_refit
        else:
            from sklearn.linear_model import LogisticRegression

            est = LogisticRegression(max_iter=2000).fit(X, y)
    out["fit_s"] = time.perf_counter() - t0 - out.get("refit_s", 0.0)  # one-hot included
    out["n_iter"] = int(np.max(est.n_iter_))
    p = est.predict_proba(Xt)[:, 1]
    out["accuracy"] = float(accuracy_score(yt, p > 0.5))
    out["auc"] = float(roc_auc_score(yt, p))
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


CHILDREN = {
    "seq_fit": _child_seq_fit,
    "step_probe": _child_step_probe,
    "anomaly": _child_anomaly,
    "widedeep": _child_widedeep,
}


def _run_child(spec):
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec, sort_keys=True)],
        stdout=subprocess.PIPE,
        stderr=None,  # the children's progress lines go straight to ours
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if res.returncode:
        raise RuntimeError(f"child {spec} failed (exit {res.returncode}); its stderr is above")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sections


class Config:
    def __init__(self, args):
        q = self.quick = args.quick
        self.dir = Path(args.dir)
        self.clean = args.clean
        self.n_test = 2_000 if q else None
        self.cnn_train = args.cnn_train or (2_000 if q else None)
        self.cnn_epochs = args.cnn_epochs or (1 if q else 5)
        self.lstm_train = args.lstm_train or (5_000 if q else None)
        self.lstm_epochs = args.lstm_epochs or (1 if q else 5)
        self.ae_train = 10_000 if q else None
        self.ae_max_iter = args.ae_max_iter  # None: the estimator's default (200)
        self.digits = args.digits or ((0, 1) if q else (0, 1, 3, 7, 9))
        self.census_train, self.census_test = (20_000, 5_000) if q else (100_000, 20_000)
        self.census_epochs = 2 if q else 10
        self.probe_batches = 3
        self.probe_repeats = 1 if q else 2


def mnist_store(cfg, net, n_train):
    """MNIST's training images in this network's sample shape, written once and reused."""
    import pipeline
    from pipeline.store import open as open_store

    X, y, _, _ = _mnist(n_train, 1)
    X = X.reshape(-1, *SHAPES[net])
    path = cfg.dir / f"mnist-{net}-{'x'.join(map(str, X.shape))}.zarr"
    try:  # complete: write renames a store into place only once it is whole
        ds = open_store(path)
        if ds.X.shape == X.shape and np.array_equal(np.asarray(ds.y[:]), y):
            return {
                "path": path,
                "n": len(X),
                "written": False,
                "write_s": None,
                "chunk_rows": ds.attrs.get("chunk_rows"),
                "disk_mb": _du_gb(path) * 1024,
            }
    except Exception:  # missing or unreadable: (re)write
        pass
    t0 = time.perf_counter()
    ds = pipeline.store.write(path, X, y, overwrite=True)
    return {
        "path": path,
        "n": len(X),
        "written": True,
        "write_s": time.perf_counter() - t0,
        "chunk_rows": ds.attrs.get("chunk_rows"),
        "disk_mb": _du_gb(path) * 1024,
    }


def _seq_section(cfg, net, n_train, epochs, probe):
    store = mnist_store(cfg, net, n_train)
    res = _run_child(
        {
            "kind": "seq_fit",
            "net": net,
            "store": str(store["path"]),
            "n_test": cfg.n_test,
            "epochs": epochs,
        }
    )
    steady = res["epoch_s"][1:]
    res.update(
        store={k: (str(v) if k == "path" else v) for k, v in store.items()},
        first_epoch_s=res["epoch_s"][0],
        steady_epoch_s=statistics.median(steady) if steady else None,
        fit_s_per_epoch=res["fit_s"] / epochs,
        samples_per_s=res["n_train"] * epochs / res["fit_s"],
        final_accuracy=res["accuracy"][-1],
    )
    if probe:
        try:
            res["step_probe"] = _run_child(
                {
                    "kind": "step_probe",
                    "net": net,
                    "batches": cfg.probe_batches,
                    "repeats": cfg.probe_repeats,
                }
            )
        except RuntimeError as e:  # a diagnostic only
            res["step_probe"] = {"error": str(e)}
    if cfg.clean:
        shutil.rmtree(store["path"])
    return res


def cnn(cfg):
    return _seq_section(cfg, "cnn", cfg.cnn_train, cfg.cnn_epochs, probe=True)


def lstm(cfg):
    return _seq_section(cfg, "lstm", cfg.lstm_train, cfg.lstm_epochs, probe=False)


def autoencoder(cfg):
    out = {"digits": list(cfg.digits)}
    for method in ("autoencoder", "isolation_forest", "pca32", "pca90"):
        out[method] = _run_child(
            {
                "kind": "anomaly",
                "method": method,
                "digits": list(cfg.digits),
                "n_train": cfg.ae_train,
                "n_test": cfg.n_test,
                "max_iter": cfg.ae_max_iter,
            }
        )
    return out


def widedeep(cfg):
    from sklearn.metrics import accuracy_score, roc_auc_score

    _, _, _, yt, _, pt = census(cfg.census_train, cfg.census_test, 0)
    out = {
        "n_train": cfg.census_train,
        "n_test": cfg.census_test,
        "epochs": cfg.census_epochs,
        "positive_share_test": float(yt.mean()),
        "bayes": {
            "accuracy": float(accuracy_score(yt, pt > 0.5)),
            "auc": float(roc_auc_score(yt, pt)),
        },
    }
    for model in ("widedeep", "mlp", "logreg", "logreg_crosses"):
        out[model] = _run_child(
            {
                "kind": "widedeep",
                "model": model,
                "n_train": cfg.census_train,
                "n_test": cfg.census_test,
                "epochs": cfg.census_epochs,
                "seed": 0,
            }
        )
    return out


RUN = {"cnn": cnn, "lstm": lstm, "autoencoder": autoencoder, "widedeep": widedeep}


# ----------------------------------------------------------------------------- report


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def report(result):
    """Markdown tables: the main one (measure, ours, peer, ratio, target, verdict), then
    the autoencoder's AUC per digit and the wide & deep comparison."""
    rows, T = [], TARGETS
    tables = []

    def add(section, measure, ours, ref="", ratio="", target="", ok=None, note=""):
        verdict = "" if ok is None else _verdict(ok) + note
        rows.append((section, measure, ours, ref, ratio, target, verdict))

    for net, target, peer in (
        ("cnn", T["cnn_accuracy"], f"{CNN_REFERENCE:.2%} (DL4J on Spark, 100 epochs)"),
        ("lstm", T["lstm_accuracy"], ""),
    ):
        if net not in result:
            continue
        r = result[net]
        acc, e = r["final_accuracy"], r["epochs"]
        add(
            net,
            f"test accuracy after {e} epoch{'s' * (e > 1)} ({r['n_train']:,} training samples "
            f"from the Zarr store, {r['n_test']:,} test)",
            f"**{acc:.2%}**",
            peer,
            f"{100 * (acc - CNN_REFERENCE):+.2f} pt" if net == "cnn" else "",
            f">= {target:.1%} after 5 epochs",
            acc >= target,
            "" if e >= 5 else f" (after {e} of the 5 epochs)",
        )
        add(net, "test accuracy after each epoch", ", ".join(f"{a:.2%}" for a in r["accuracy"]))
        add(
            net,
            "epoch seconds: 1st (compiles) / steady (median of the rest)",
            f"{r['first_epoch_s']:.1f} / "
            + ("-" if r["steady_epoch_s"] is None else f"{r['steady_epoch_s']:.1f}"),
        )
        add(
            net,
            "whole fit: seconds, per epoch, samples/s (fresh process)",
            f"{r['fit_s']:.0f} s, {r['fit_s_per_epoch']:.1f} s/epoch, {r['samples_per_s']:,.0f}/s",
        )
        add(
            net,
            "epoch CPU seconds, all threads (wall time above moves with the machine's load)",
            ", ".join(f"{c:.0f}" for c in r["epoch_cpu_s"]),
        )
        add(net, "peak RSS of that process", f"{r['peak_rss_mb']:,.0f} MB")
        p = r.get("step_probe")
        if p and "error" not in p:
            steady = r["steady_epoch_s"]
            ours = None if steady is None else steady / -(-r["n_train"] // 200)
            add(
                net,
                "seconds per mini-batch of 200: ours (steady epoch / batches) vs a plain "
                "JAX/optax Adam step of the same module, jitted, one call per batch "
                f"(in a lax.scan of {p['batches']} batches: {p['scan']:.3f})",
                "-" if ours is None else f"{ours:.3f}",
                f"{p['straight']:.3f}",
                "" if ours is None else f"{ours / p['straight']:.2f}x",
            )
        elif p:
            add(net, "step probe", "failed (see JSON)")
    if "autoencoder" in result:
        a = result["autoencoder"]
        ae, iso, pca, pca90 = (a[m] for m in ("autoencoder", "isolation_forest", "pca32", "pca90"))
        add(
            "autoencoder",
            f"mean ROC AUC over digits {a['digits']} vs IsolationForest",
            f"**{ae['mean_auc']:.4f}**",
            f"{iso['mean_auc']:.4f}",
            f"{ae['mean_auc'] - iso['mean_auc']:+.4f}",
            "> IsolationForest",
            ae["mean_auc"] > iso["mean_auc"],
        )
        add(
            "autoencoder",
            f"mean ROC AUC vs PCA({AE_CODE_SIZE}) reconstruction error",
            f"**{ae['mean_auc']:.4f}**",
            f"{pca['mean_auc']:.4f}",
            f"{ae['mean_auc'] - pca['mean_auc']:+.4f}",
            f">= PCA({AE_CODE_SIZE})",
            ae["mean_auc"] >= pca["mean_auc"],
        )
        add(
            "autoencoder",
            "mean ROC AUC vs PCA(90% variance)",
            f"{ae['mean_auc']:.4f}",
            f"{pca90['mean_auc']:.4f}",
            f"{ae['mean_auc'] - pca90['mean_auc']:+.4f}",
        )
        add(
            "autoencoder",
            "fit seconds, all digits (AE / IsolationForest / PCA32 / PCA90)",
            f"{ae['fit_s']:.1f}",
            f"{iso['fit_s']:.1f} / {pca['fit_s']:.1f} / {pca90['fit_s']:.1f}",
        )
        lines = [
            "| digit | training images | AutoEncoder AUC (epochs) | IsolationForest | "
            f"PCA({AE_CODE_SIZE}) | PCA(90%) (components) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r_ae, r_if, r_p, r_p9 in zip(
            ae["rows"], iso["rows"], pca["rows"], pca90["rows"], strict=True
        ):
            lines.append(
                f"| {r_ae['digit']} | {r_ae['n_fit']:,} | {r_ae['auc']:.4f} ({r_ae['n_iter']}) | "
                f"{r_if['auc']:.4f} | {r_p['auc']:.4f} | {r_p9['auc']:.4f} ({r_p9['n_components']}) |"
            )
        lines.append(
            f"| mean | | **{ae['mean_auc']:.4f}** | {iso['mean_auc']:.4f} | {pca['mean_auc']:.4f} | "
            f"{pca90['mean_auc']:.4f} |"
        )
        tables.append("\n".join(lines))
    if "widedeep" in result:
        w = result["widedeep"]
        wd, mlp_, lr, lrx = (w[m] for m in ("widedeep", "mlp", "logreg", "logreg_crosses"))
        add(
            "widedeep",
            f"test ROC AUC, wide & deep vs MLP on one-hot ({w['epochs']} epochs each)",
            f"**{wd['auc']:.4f}**",
            f"{mlp_['auc']:.4f}",
            f"{wd['auc'] - mlp_['auc']:+.4f}",
        )
        add(
            "widedeep",
            "test ROC AUC, wide & deep vs LogisticRegression on one-hot",
            f"{wd['auc']:.4f}",
            f"{lr['auc']:.4f}",
            f"{wd['auc'] - lr['auc']:+.4f}",
        )
        add(
            "widedeep",
            "test ROC AUC, wide & deep vs LogisticRegression on one-hot + all pair crosses",
            f"{wd['auc']:.4f}",
            f"{lrx['auc']:.4f}",
            f"{wd['auc'] - lrx['auc']:+.4f}",
        )
        lines = [
            f"| model ({w['n_train']:,} train / {w['n_test']:,} test rows) | test accuracy | "
            "test ROC AUC | fit seconds: fresh process / again, compiled | epochs / iterations |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| WideDeepClassifier (8 categorical, {wd['n_crosses']} pair crosses, deep {DEEP}) | "
            f"**{wd['accuracy']:.2%}** | **{wd['auc']:.4f}** | {wd['fit_s']:.1f} / {wd['refit_s']:.1f} | "
            f"{wd['n_iter']} |",
            f"| MLPClassifier {DEEP} on one-hot ({mlp_['n_features']} features) | "
            f"{mlp_['accuracy']:.2%} | {mlp_['auc']:.4f} | {mlp_['fit_s']:.1f} / {mlp_['refit_s']:.1f} | "
            f"{mlp_['n_iter']} |",
            f"| sklearn LogisticRegression on one-hot ({lr['n_features']} features) | "
            f"{lr['accuracy']:.2%} | {lr['auc']:.4f} | {lr['fit_s']:.1f} | {lr['n_iter']} |",
            f"| sklearn LogisticRegression on one-hot + 28 pair crosses ({lrx['n_features']:,}) | "
            f"{lrx['accuracy']:.2%} | {lrx['auc']:.4f} | {lrx['fit_s']:.1f} | {lrx['n_iter']} |",
            f"| Bayes rate (the generator's true probabilities) | {w['bayes']['accuracy']:.2%} | "
            f"{w['bayes']['auc']:.4f} | | |",
        ]
        tables.append("\n".join(lines))
    columns = ["section", "measure", "pipeline", "peer / reference", "difference / ratio"]
    main_table = markdown_table([*columns, "target", "result"], rows)
    return "\n\n".join([main_table, *tables])


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="small data, 1 epoch: a smoke run")
    p.add_argument("--cnn-epochs", type=int, help="CNN epochs (default 5; quick 1)")
    p.add_argument("--cnn-train", type=int, help="CNN training samples (default all 60000)")
    p.add_argument("--lstm-epochs", type=int, help="LSTM epochs (default 5; quick 1)")
    p.add_argument("--lstm-train", type=int, help="LSTM training samples (default all 60000)")
    p.add_argument("--ae-max-iter", type=int, help="AutoEncoder max_iter (default: its own, 200)")
    p.add_argument("--digits", type=int, nargs="+", help="autoencoder digits (default 0 1 3 7 9)")
    p.add_argument("--clean", action="store_true", help="remove the MNIST stores at the end")
    args = p.parse_args()
    if args.child:
        return child_main(args.child, CHILDREN)
    cfg = Config(args)
    cfg.dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "quick": cfg.quick, "targets": TARGETS, "argv": sys.argv[1:]}
    print(json.dumps(result["machine"]), flush=True)
    run_sections(args.only or SECTIONS, RUN, cfg, result, args.json)
    if cfg.quick:
        print(
            "QUICK RUN (2k CNN / 5k LSTM / 10k autoencoder MNIST samples, 2k test, 1 epoch; "
            "20k census rows, 2 epochs): the targets are for the full run"
        )
    print(report(result))
    print_totals(result)


if __name__ == "__main__":
    main()
