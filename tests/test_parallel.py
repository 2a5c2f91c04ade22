"""pipeline.parallel: exactness against single-process training (DL4J's tests), the
weighted average, workers killed mid-fit, a resume after the client dies, checkpoints'
data and destinations, bad input.

One LocalCluster of 2 spawned worker processes serves the module."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import dask
import dask.array as da
import distributed
import numpy as np
import pytest
import zarr

import pipeline
from pipeline import _parallel, parallel
from pipeline._parallel import CHECKPOINT
from pipeline._replica import Round, average
from pipeline.estimators import MLPClassifier, MLPRegressor

SMALL = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0)
LONG = dict(hidden_layer_sizes=(32,), batch_size=20, max_iter=4, random_state=0, tol=0.0)
TINY = dict(hidden_layer_sizes=(8,), batch_size=10, max_iter=3, random_state=0, tol=0.0)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture
def patient(client):
    """The module's client, whose killed workers come back however slowly they
    restart (a LocalCluster gives up on one not back within 15 s), and are all
    back when the test ends."""
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "10 minutes"}):
        yield client
        client.wait_for_workers(2, timeout=300)


@pytest.fixture(scope="module")
def tiny():
    """120 samples of 8 features, two classes: 3 rounds an epoch with TINY, 2 workers, af 2."""
    X = np.random.default_rng(0).normal(size=(120, 8)).astype("float32")
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def _weights(est):
    return est.coefs_ + est.intercepts_


def _assert_same_model(a, b):
    for p, q in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(a._key, b._key)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-6)
    if a.early_stopping:
        assert a.validation_scores_ == b.validation_scores_


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "store"])
def test_one_worker_is_single_process_training_bit_for_bit(client, digits, digits_store, lazy):
    X, y = (digits_store.X, digits_store.y) if lazy else digits[:2]
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    kw = dict(SMALL, batch_size=50, dropout=0.2)  # dropout: the RNG key must follow too
    single = MLPClassifier(**kw).fit(X, y, sample_weight=w)
    for af in (1, 7):
        one = parallel.fit(
            MLPClassifier(**kw),
            digits_store.path if lazy else X,  # a store's path: its X and y
            None if lazy else y,
            sample_weight=w,
            n_workers=1,
            averaging_frequency=af,
        )
        _assert_same_model(one, single)


def test_batch_norm_early_stopping_and_regression(client, digits):
    X, y = digits[0], digits[1].astype("float32")
    kw = dict(SMALL, batch_size=64, batch_norm=True, early_stopping=True, max_iter=4)
    single = MLPRegressor(**kw).fit(X, y)
    one = parallel.fit(MLPRegressor(**kw), X, y, n_workers=1, averaging_frequency=4)
    _assert_same_model(one, single)
    for p, q in zip(one._norm_params, single._norm_params, strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "store"])
def test_two_workers_averaging_every_sgd_step_is_one_double_batch(
    client, digits, digits_store, lazy
):
    X, y = (digits_store.X, digits_store.y) if lazy else digits[:2]
    kw = dict(SMALL, solver="sgd", momentum=0.0, alpha=0.0, shuffle=False, learning_rate_init=0.1)
    double = MLPClassifier(batch_size=64, **kw).fit(X, y)
    two = parallel.fit(MLPClassifier(batch_size=32, **kw), X, y, n_workers=2, averaging_frequency=1)
    for p, q in zip(_weights(two), _weights(double), strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two.loss_curve_, double.loss_curve_, rtol=1e-5)
    assert two.n_iter_ == double.n_iter_ == 3


def test_two_workers_learn_as_well_as_one_process(client, digits):
    X, y, Xt, yt = digits
    single = MLPClassifier(**LONG).fit(X, y)
    for opt in (True, False):  # 2 replicas take half the steps: the rate doubles (Goyal)
        two = parallel.fit(
            MLPClassifier(**LONG),
            X,
            y,
            averaging_frequency=5,
            average_optimizer_state=opt,
            scale_learning_rate=True,
        )
        assert two.score(Xt, yt) > single.score(Xt, yt) - 0.03
        assert two.loss_curve_[-1] < two.loss_curve_[0] / 2


def test_average_is_weighted_by_samples():
    def share(value, count, step):
        tree = {"w": np.full(3, value, np.float32)}
        return Round(
            tree, {}, ({"m": np.float32(value), "n": np.int32(step)},), np.ones(2), 1.0, count
        )

    job = type("J", (), {"average_optimizer_state": True})()
    out = average(job, share(1.0, 30, 7), share(5.0, 10, 6), share(99.0, 0, 6))
    np.testing.assert_allclose(out.params["w"], 2.0)  # (30 * 1 + 10 * 5) / 40; 0 samples: no weight
    assert out.opt_states[0]["m"] == np.float32(2.0) and out.opt_states[0]["n"] == 7
    assert out.count == 40 and out.loss_sum == 3.0
    job.average_optimizer_state = False
    own = average(job, share(1.0, 30, 7), share(5.0, 10, 6))
    assert [o["m"] for o in own.opt_states] == [1.0, 5.0]


def test_learning_rate_scaling(client, digits):
    est = parallel.fit(
        MLPClassifier(**dict(SMALL, max_iter=1, learning_rate_init=0.002)),
        *digits[:2],
        scale_learning_rate=True,
    )
    assert est.n_iter_ == 1
    from pipeline import nn

    assert nn.current_learning_rate(est._opt_state) == pytest.approx(0.004)


@pytest.fixture(scope="module")
def reference(client, digits_store):
    """The long fit without faults: what every interrupted fit must end at."""
    return parallel.fit(
        MLPClassifier(**LONG), digits_store.X, digits_store.y, averaging_frequency=2
    )


def _rounds_done(path):
    try:
        return zarr.open_group(str(path), mode="r").attrs[CHECKPOINT]["progress"][3]
    except Exception:  # not written yet, or being renamed into place
        return 0


def _wait_for(path, rounds, alive=lambda: True, timeout=120):
    deadline = time.monotonic() + timeout
    while _rounds_done(path) < rounds:
        assert alive() and time.monotonic() < deadline, "the fit did not get far enough"
        time.sleep(0.05)


def test_a_worker_killed_mid_fit_changes_nothing(patient, digits_store, reference, tmp_path):
    path, result = tmp_path / "ck", {}

    def run():
        est = MLPClassifier(**LONG)
        result["est"] = parallel.fit(
            est,
            digits_store.X,
            digits_store.y,
            averaging_frequency=2,
            checkpoint=path,
            checkpoint_every=1,
        )

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for(path, 10, thread.is_alive)
    pids = patient.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # its Nanny starts a new one
    thread.join(180)
    assert _rounds_done(path) > 10 and "est" in result
    _assert_same_model(result["est"], reference)


def test_numpy_data_survives_lost_workers(patient, tiny, monkeypatch):
    # after round 1 of epoch 0 one worker dies (the other holds a copy of the data);
    # after round 1 of epoch 1 every worker holding it dies: the client scatters it again
    reference = parallel.fit(MLPClassifier(**TINY), *tiny, averaging_frequency=2)
    faults = {(0, 1): 1, (1, 1): None}  # (epoch, round): how many workers to kill (None: all)
    tally = _parallel._Run.tally

    def tally_then_kill(run, epoch, r, *args):
        progress = tally(run, epoch, r, *args)
        if (epoch, r) in faults:
            pids = list(patient.run(os.getpid, on_error="ignore").values())
            for pid in pids[: faults.pop((epoch, r))]:
                os.kill(pid, signal.SIGKILL)  # its Nanny starts a new one, without the data
        return progress

    monkeypatch.setattr(_parallel._Run, "tally", tally_then_kill)
    with pytest.warns(RuntimeWarning, match="lost its data or tasks .* scattered again"):
        est = parallel.fit(MLPClassifier(**TINY), *tiny, averaging_frequency=2)
    assert not faults
    _assert_same_model(est, reference)


def test_resume_after_the_client_dies(client, digits_store, reference, tmp_path):
    path = tmp_path / "ck"
    script = textwrap.dedent(
        f"""
        import distributed, pipeline
        from pipeline import parallel
        from pipeline.estimators import MLPClassifier
        data = pipeline.store.open({str(digits_store.path)!r})
        with distributed.Client({client.scheduler.address!r}) as c:
            parallel.fit(MLPClassifier(**{LONG!r}), data.X, data.y, averaging_frequency=2,
                         checkpoint={str(path)!r}, checkpoint_every=1)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(path, 12, lambda: proc.poll() is None)
    finally:
        proc.kill()
        proc.wait()
    done = _rounds_done(path)
    assert 12 <= done < 72  # it died mid-fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = parallel.fit(
            MLPClassifier(**LONG),
            digits_store.X,
            digits_store.y,
            averaging_frequency=2,
            checkpoint=path,
            checkpoint_every=1,
        )
    _assert_same_model(resumed, reference)
    again = parallel.fit(  # a finished checkpoint gives its model back
        MLPClassifier(**LONG),
        digits_store.X,
        digits_store.y,
        averaging_frequency=2,
        checkpoint=path,
    )
    _assert_same_model(again, reference)
    with pytest.raises(ValueError, match="other parameters"):
        parallel.fit(
            MLPClassifier(**dict(LONG, alpha=1.0)),
            digits_store.X,
            digits_store.y,
            averaging_frequency=2,
            checkpoint=path,
        )
    with pytest.raises(ValueError, match="different fit"):
        parallel.fit(
            MLPClassifier(**LONG),
            digits_store.X,
            digits_store.y,
            averaging_frequency=3,
            checkpoint=path,
        )


def test_a_checkpoint_names_its_data(client, tiny, tmp_path):
    X, y = tiny
    path, kw = tmp_path / "ck", dict(TINY, max_iter=1)
    first = parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)
    data = zarr.open_group(str(path), mode="r").attrs[CHECKPOINT]["data"]
    assert "in-memory arrays" in data["what"] and data["token"]
    again = parallel.fit(  # numpy data is named by its content
        MLPClassifier(**kw), X.copy(), y.copy(), averaging_frequency=2, checkpoint=path
    )
    _assert_same_model(again, first)
    other = X.copy()
    other[5, 2] += 1.0  # the same size, one value changed
    for data in [(other, y), (X, 1 - y), (da.from_array(X, chunks=40), y)]:
        with pytest.raises(ValueError, match="fit on other data: it was made on in-memory"):
            parallel.fit(MLPClassifier(**kw), *data, averaging_frequency=2, checkpoint=path)
    with pytest.raises(ValueError, match="other data"):  # sample weights are data too
        w = np.full(len(y), 2.0)
        parallel.fit(
            MLPClassifier(**kw), X, y, sample_weight=w, averaging_frequency=2, checkpoint=path
        )
    group = zarr.open_group(str(path), mode="r+")  # a checkpoint written before identities
    meta = dict(group.attrs[CHECKPOINT])  # (and before markers and checksums):
    del meta["data"], meta["checksum"]
    group.attrs[CHECKPOINT] = meta
    (path / "pipeline.json").unlink()
    unchecked = parallel.fit(MLPClassifier(**kw), other, y, averaging_frequency=2, checkpoint=path)
    _assert_same_model(unchecked, first)  # accepted as it is: it cannot be checked


def test_an_edited_checkpoint_is_refused(client, tiny, tmp_path):
    X, y = tiny
    path, kw = tmp_path / "ck", dict(TINY, max_iter=2)
    parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)
    group = zarr.open_group(str(path), mode="r+")
    saved = dict(group.attrs[CHECKPOINT])
    edited = dict(saved, progress=[0, *saved["progress"][1:4], 0])  # "not finished, epoch 0"
    group.attrs[CHECKPOINT] = edited
    with pytest.raises(ValueError, match=f"{path}.* checksum does not match"):
        parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)
    del edited["checksum"]  # a checkpoint with a marker is written with one
    group.attrs[CHECKPOINT] = edited
    with pytest.raises(ValueError, match=f"{path}.* checksum was removed"):
        parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)
    group.attrs[CHECKPOINT] = saved
    model = zarr.open_group(str(path / "model"), mode="r+")
    meta = dict(model.attrs["pipeline-model"])
    del meta["checksum"]  # the model's own, inside a checkpoint with a marker
    model.attrs["pipeline-model"] = meta
    with pytest.raises(ValueError, match="model metadata: its checksum was removed"):
        parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)


def test_streamed_X_with_in_memory_targets_resumes(client, digits_store, tmp_path):
    # in-memory y and sample weights beside a store's X are named by their content
    X, y = digits_store.X, np.asarray(digits_store.y.compute())
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    other_y, other_w = y.copy(), w.copy()
    other_y[3], other_w[7] = (y[3] + 1) % 10, w[7] + 1.0
    kw = dict(SMALL, max_iter=1)

    def fit(path, y, w):
        est = MLPClassifier(**kw)
        return parallel.fit(est, X, y, sample_weight=w, averaging_frequency=2, checkpoint=path)

    for path, weights, others in [
        (tmp_path / "y", None, [(other_y, None), (y, w)]),
        (tmp_path / "yw", w, [(y, other_w), (other_y, w), (y, None)]),
    ]:
        first = fit(path, y, weights)
        again = fit(path, y.copy(), None if weights is None else weights.copy())
        _assert_same_model(again, first)  # resumed: the same values, other arrays
        for data in others:
            with pytest.raises(ValueError, match="fit on other data"):
                fit(path, *data)


def test_a_store_rewritten_in_place_is_read_again(client, tiny, tmp_path):
    # the same dask name (da.from_zarr of one zarr array) over new values: the workers'
    # caches of the first fit's windows must not feed the second fit
    X, y = tiny
    new = np.random.default_rng(1).normal(size=X.shape).astype("float32")

    def write(name, values):
        z = zarr.open_array(tmp_path / name, mode="w", shape=X.shape, chunks=(40, 8), dtype="f4")
        z[:] = values
        return z

    z = write("X.zarr", X)
    lazy_y = da.from_array(y, chunks=40)
    Xd = da.from_zarr(z)
    old = parallel.fit(MLPClassifier(**TINY), Xd, lazy_y, averaging_frequency=2)
    z[:] = new
    assert da.from_zarr(z).name == Xd.name
    rewritten = parallel.fit(MLPClassifier(**TINY), Xd, lazy_y, averaging_frequency=2)
    fresh = da.from_zarr(write("new.zarr", new))
    expected = parallel.fit(MLPClassifier(**TINY), fresh, lazy_y, averaging_frequency=2)
    _assert_same_model(rewritten, expected)
    assert not np.array_equal(rewritten.coefs_[0], old.coefs_[0])


def test_ctrl_c_acts_between_rounds_never_inside_jax(client, tiny, tmp_path):
    X, y = tiny
    path, kw = tmp_path / "ck", dict(TINY, early_stopping=True, n_iter_no_change=10)
    reference = parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2)
    est, ended = MLPClassifier(**kw), []
    end_epoch = est._end_epoch

    def interrupted_end_epoch(*args):  # Ctrl-C while the client scores the validation set
        os.kill(os.getpid(), signal.SIGINT)
        out = end_epoch(*args)
        ended.append(est.n_iter_)
        return out

    est._end_epoch = interrupted_end_epoch
    with pytest.raises(KeyboardInterrupt):
        parallel.fit(est, X, y, averaging_frequency=2, checkpoint=path, checkpoint_every=1)
    assert len(ended) == 1  # the epoch's end ran whole; the interrupt came after it
    assert not hasattr(est, "coefs_")  # the estimator is as it was
    resumed = parallel.fit(MLPClassifier(**kw), X, y, averaging_frequency=2, checkpoint=path)
    _assert_same_model(resumed, reference)


def test_checkpoint_destinations_are_checked_before_training(client, tiny, tmp_path):
    X, y = tiny
    thesis = tmp_path / "mydir"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    data = tmp_path / "data.zarr"
    pipeline.store.write(data, X, y)
    for path, what in [(thesis, "thesis.tex"), (notes, "a file"), (data, "a pipeline store")]:
        est = MLPClassifier(**TINY)
        with pytest.raises(FileExistsError, match=what):
            parallel.fit(est, X, y, averaging_frequency=2, checkpoint=path)
        assert not hasattr(est, "coefs_")
    assert (thesis / "thesis.tex").read_text() == "years of work"
    assert notes.read_text() == "mine"
    assert pipeline.store.open(data).X.shape == X.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zarr", "mydir", "notes.txt"]
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        parallel.fit(MLPClassifier(**TINY), X, y, checkpoint=5)
    (tmp_path / "empty").mkdir()  # an empty directory is used
    est = MLPClassifier(**dict(TINY, max_iter=1))
    parallel.fit(est, X, y, averaging_frequency=2, checkpoint=tmp_path / "empty")
    assert _rounds_done(tmp_path / "empty") == 3


def test_unusable_clients(tiny):
    X, y = tiny
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with pytest.raises(TypeError, match=r"distributed.Client\(cluster\)"):
            parallel.fit(MLPClassifier(**TINY), X, y, client=cluster)
        with distributed.Client(cluster) as empty:
            with pytest.raises(ValueError, match="no workers yet"):
                parallel.fit(MLPClassifier(**TINY), X, y, client=empty)
        closed = distributed.Client(cluster)
        closed.close()
        with pytest.raises(ValueError, match="Client is closed: pass an open one"):
            parallel.fit(MLPClassifier(**TINY), X, y, client=closed)


def test_bad_input(client, digits):
    X, y = digits[:2]
    with pytest.raises(TypeError, match="network estimators"):
        parallel.fit(object(), X, y)
    with pytest.raises(ValueError, match="lbfgs"):
        parallel.fit(MLPClassifier(solver="lbfgs"), X, y)
    with pytest.raises(ValueError, match="averaging_frequency must be an integer >= 1, got 0"):
        parallel.fit(MLPClassifier(), X, y, averaging_frequency=0)
    with pytest.raises(TypeError, match=r"connect with distributed.Client\('tcp://nowhere'\)"):
        parallel.fit(MLPClassifier(), X, y, client="tcp://nowhere")
    with pytest.raises(ValueError, match="local directory"):
        parallel.fit(MLPClassifier(), X, y, checkpoint="s3://bucket/ck")
    bad = X.copy()
    bad[700, 3] = np.nan
    est = MLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="NaN"):
        parallel.fit(est, da.from_array(bad, chunks=200), y)
    assert not hasattr(est, "coefs_")  # a failed fit leaves no model behind


def test_needs_a_cluster(digits, monkeypatch):
    def no_client():
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "get_client", no_client)  # as in a fresh process
    with pytest.raises(ValueError, match="needs a dask cluster"):
        parallel.fit(MLPClassifier(), *digits[:2])


def test_verbose_shows_the_dashboard_and_rounds(client, digits, capsys):
    with pytest.warns(UserWarning, match="only 1 of the 2 replicas get data"):  # 7 batches
        parallel.fit(MLPClassifier(**dict(SMALL, max_iter=1)), *digits[:2], verbose=True)
    out = capsys.readouterr()
    assert client.dashboard_link in out.out
    assert "epochs" in out.err and "loss=" in out.err


def test_pipeline_train_on_a_cluster(client, digits, digits_store, tmp_path, capsys):
    from pipeline.cli import main

    args = ["train", str(digits_store.path), "--hidden", "16", "--epochs", "2", "--quiet"]
    cluster = ["--scheduler", client.scheduler.address, "--averaging-frequency", "1"]
    checkpoint = ["--checkpoint", str(tmp_path / "ck")]
    assert main([*args, *cluster, *checkpoint, "--out", str(tmp_path / "m.zarr")]) == 0
    assert "MLPClassifier: 2 epochs over 1,400 samples" in capsys.readouterr().out
    model = pipeline.load(tmp_path / "m.zarr")
    kw = dict(hidden_layer_sizes=(16,), max_iter=2, batch_size=200, random_state=0)
    same = parallel.fit(MLPClassifier(**kw), digits_store.X, digits_store.y, averaging_frequency=1)
    for p, q in zip(_weights(model), _weights(same), strict=True):
        np.testing.assert_array_equal(p, q)
    assert _rounds_done(tmp_path / "ck") == 2 * 4  # 7 steps an epoch, 2 a round


def _fit_in_a_task(path):
    from pipeline import store

    data = store.open(path)
    est = MLPClassifier(**dict(SMALL, max_iter=1)).fit(data.X, data.y)
    return est.n_iter_, est.score(data.X, data.y)


def test_fit_inside_a_task_reads_its_store_in_the_task(client, digits_store):
    # the stream's reads used to go to the cluster and wait for a thread the task held
    future = client.submit(_fit_in_a_task, str(digits_store.path), pure=False)
    n_iter, score = future.result(timeout=120)
    assert n_iter == 1 and 0 < score <= 1
