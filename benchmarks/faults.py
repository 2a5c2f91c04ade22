"""Fault scenarios: interrupts, two writers, readers during overwrites, destinations, metadata.

Runs each scenario on tiny data (stores of 1,600 x 8 float32 in 40 chunks, MLPs of a
few dozen units) and reports what the user sees (the exception and the first line of
its message, or a command's exit status and its error line) and what became of the
state that was there before (column "old state"):

- ``intact``: the destination holds the complete old object (it opens or loads, with
  the same content and uid as before), or a complete new one where that is a correct
  outcome (the signal came after the write finished, an allowed overwrite, a resumed
  fit); a refused write removed and changed nothing; a reader or loader refused what it
  could not read correctly;
- ``LOST``: the old object (or the user's file) is gone, damaged or replaced by
  something else;
- ``WRONG``: something silently wrong: a reader got another store's or mixed data,
  edited or corrupt metadata was accepted, a writer's Dataset read another writer's
  data, a failed write left an incomplete object at the path, a resumed fit ended in
  another model.

The column "failed checks" lists what else went wrong: the next write to the same path
must succeed and leave no ``.NAME.partial-*`` / ``.NAME.old-*`` sibling; ``pipeline
train`` must exit 130 on SIGINT (and never die of a signal or segfault); a refused
destination must be refused before any work (no chunk of the input consumed, no
training, no task on the cluster) with ``FileExistsError`` (API) or exit 2 and an
``error:`` line (CLI); a reader of a replaced store must raise ``StoreChangedError``;
edited or corrupt files must be refused with ``ValueError`` or ``ChunkReadError``
naming the file.

Sections (``--only``):

1. ``metadata``: hand-edited store schemas (``n_samples``, ``dtype``,
   ``feature_shape``, ``classes``; zarr and memmap; also with the schema's checksum
   deleted as well, for the fields the arrays can contradict), truncated
   ``zarr.json`` / ``schema.json``, a flipped byte in a zarr chunk and in a memmap
   chunk, a removed zarr chunk, a truncated ``X.npy``; a model whose class or
   ``n_features_in_`` was edited (with and without its checksum), a truncated model
   ``zarr.json``, a flipped byte in a weight chunk.
2. ``destinations``: ``store.write``, ``est.save``, ``pipeline ingest`` and ``pipeline
   train --out`` onto an existing store, model, a user's directory holding a file, and a
   plain file, with and without overwrite; ``parallel.fit(checkpoint=)`` and ``pipeline
   train --scheduler ... --checkpoint`` onto the same kinds; ``pipeline train`` with
   ``--out`` equal to, or inside, its input store. Only a same-kind destination with
   overwrite may be replaced.
3. ``writers``: two processes write one path at once (zarr and memmap; overwrite False
   and True, and True over an existing store).
4. ``readers``: a Dataset opened before an overwrite, read after it (stepwise) or while
   the store is overwritten three times (concurrently); in the same process and in
   another one; zarr and memmap.
5. ``interrupts``: SIGKILL and SIGINT at seeded random points of ``store.write`` (zarr
   and memmap, a new path and ``overwrite=True`` over a store), ``est.save(path,
   overwrite=True)`` over a model, ``pipeline train STORE --out good.zarr --overwrite``
   over a good model (and, SIGINT only, ``--out`` a new path: nothing may be saved
   there but the fully trained model), and ``pipeline.parallel.fit(...,
   checkpoint=DIR)`` in a child script that starts ``LocalCluster(n_workers=2,
   threads_per_worker=1)`` under ``if __name__ == "__main__":``. After each, the path
   is checked, then written again (the next write: a new store; the reference model
   saved over ``good.zarr``; the fit run again with the same checkpoint on the
   parent's own LocalCluster, which must resume to the model of an uninterrupted fit).

How interrupts are delivered. The Python-API operations run in children forked from a
``multiprocessing`` forkserver that imported pipeline once; a child reports each point
it reaches over a pipe (``store.write``: each chunk its input yields, then the end of
the input; ``save``: its start, with the duration of a warm-up save of the same model),
and the parent sends the signal a seeded random delay after the chosen point (0-5 ms
after a chunk, 0-130% of a save). ``pipeline train`` runs as the console script in a
session of its own, the points being its progress bar's epochs (0-150 ms after epoch k,
or after the bar's last epoch: the save). ``parallel.fit`` points are the k-th
checkpoint seen on disk (+0-100 ms), or 0.2-1 s after the fit starts. SIGKILL goes to
the process (``kill -9``, the OOM killer, a batch system), then to its process group to
end a cluster's orphaned workers; SIGINT goes to the process group of a command or
child script (Ctrl-C in a terminal) and to the forked child of an API call. Timing only
moves the interruption point: every outcome is judged by the same rule, wherever the
signal landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import base_parser, cpu_name

HERE = Path(__file__).resolve().parent
SECTIONS = ("metadata", "destinations", "writers", "readers", "interrupts")

N_ROWS, N_FEAT, ROWS = 1600, 8, 40  # the stores of the store scenarios: 40 chunks
N_CHUNKS = N_ROWS // ROWS
TRAIN_SHAPE, TRAIN_CHUNK = (8000, 16), 500  # `pipeline train` in the interrupt scenarios
EPOCHS = 30
TRAIN_ARGS = ["--hidden", "32", "--batch-size", "50", "--random-state", "0"]
PF_SHAPE, PF_CHUNK = (2000, 16), 250  # parallel.fit: 10 rounds an epoch, 40 checkpoints
PF_PARAMS = {"hidden_layer_sizes": [16], "batch_size": 50, "max_iter": 4, "random_state": 0,
             "verbose": False}
PF_AF = 2
MODEL_TOL = 1e-5  # models from two processes (or a resumed fit) compared to this tolerance

PF_CHILD = '''\
"""parallel.fit with a checkpoint on a LocalCluster of its own (benchmarks/faults.py)."""
import json
import sys
import warnings

import pipeline
from distributed import Client, LocalCluster


def main(store, checkpoint, params, af):
    warnings.simplefilter("ignore")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        est = pipeline.MLPClassifier(**params)
        print("FIT", flush=True)
        try:
            pipeline.parallel.fit(est, store, client=client, averaging_frequency=af,
                                  checkpoint=checkpoint, checkpoint_every=1)
        except BaseException as exc:
            print("RAISED", type(exc).__name__ + ":", (str(exc).splitlines() or [""])[0],
                  flush=True)
            raise
        print("DONE", est.n_iter_, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
'''


# ----------------------------------------------------------------------------- data


def version_data(v, n=N_ROWS):
    """Store content number ``v``: every value says which version and row it is."""
    i = np.arange(n)
    X = ((v * 10000 + i)[:, None] + np.arange(N_FEAT) / 8).astype(np.float32)
    y = ((i + v) % 3).astype(np.int64)
    return X, y


def which_version(X, y, rows=slice(None)):
    """The version ``(X, y)`` (rows ``rows`` of a store) holds: 1, 2, 3, or "mixed"."""
    for v in (1, 2, 3):
        Xv, yv = version_data(v)
        if X.shape == Xv[rows].shape and np.array_equal(X, Xv[rows]) and np.array_equal(
            y, yv[rows]
        ):
            return v
    return "mixed"


def train_data(shape, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=shape).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return X, y


def chunks_of(v, conn=None, pause=0.0):
    """Version ``v`` as an iterable of chunks; reports each chunk (and the end) on ``conn``."""
    X, y = version_data(v)
    for k in range(N_CHUNKS):
        if conn is not None:
            conn.send(("chunk", k))
        if pause:
            time.sleep(pause)
        yield X[k * ROWS : (k + 1) * ROWS], y[k * ROWS : (k + 1) * ROWS]
    if conn is not None:
        conn.send(("chunk", N_CHUNKS))


# ----------------------------------------------------------------------------- text

_BASE = [""]  # the scenario root, cut from messages


def first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0]


def short(text, n=120):
    text = str(text)
    if _BASE[0]:
        text = re.sub(re.escape(_BASE[0]) + r"/s\d+/", "", text).replace(_BASE[0] + "/", "")
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def exc_text(exc):
    line = first_line(exc)
    return f"{type(exc).__name__}: {short(line)}" if line else type(exc).__name__


def exit_text(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


_BAR = re.compile(  # a tqdm bar: "...| 3.0/30 epochs [00:01<00:09, loss=0.5]"
    r"[^\r\n]*?\d+(?:\.\d+)?/\d+(?:\.\d+)? ?(?:epochs|rounds|samples|it)\b[^\]\r\n]*\]"
)


def cli_line(err):
    """The line of a command's stderr that tells the user what happened."""
    lines = [s.strip() for s in re.split(r"[\r\n]", _BAR.sub("", err)) if s.strip()]
    for pattern in (
        r"(Fatal Python error.*|Segmentation fault.*)",
        r"^(pipeline \w+: (?:error|interrupted)\b.*)",
        r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*)",
        r"(.*Warning: .*interrupt.*|pipeline \w+: warning: .*interrupt.*)",
        r"^(pipeline \w+: .*)",
        r"(\w+Warning: .*)",
    ):
        found = [m.group(1) for s in lines for m in [re.search(pattern, s, re.I)] if m]
        if found:
            return found[-1].rstrip(":")
    return ""


def cli_sees(rc, err):
    line = cli_line(err)
    return exit_text(rc) + (f"; {short(line, 100)}" if line else "")


# ----------------------------------------------------------------------------- file states


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(path):
    """``{relative path: sha256}`` of every file at ``path`` (None when nothing is there)."""
    p = Path(path)
    if p.is_file():
        return {"": digest(p)}
    if not p.exists():
        return None
    return {str(q.relative_to(p)): digest(q) for q in sorted(p.rglob("*")) if q.is_file()}


def compare(before, after):
    """"same", "removed" (a file gone or changed) or "added" (only new files)."""
    if before == after:
        return "same"
    if after is None or any(k not in after or after[k] != h for k, h in (before or {}).items()):
        return "removed"
    return "added"


def leftovers(path):
    p = Path(path)
    return sorted(
        q.name for q in p.parent.glob(f".{p.name}.*") if ".partial-" in q.name or ".old-" in q.name
    )


def marker_uid(path):
    try:
        return json.loads((Path(path) / "pipeline.json").read_text()).get("uid")
    except (OSError, ValueError, AttributeError):
        return None


def store_state(path, versions=(1, 2, 3)):
    """``(state, uid, error)``: state is "absent", "broken", a version number or "other"."""
    import dask

    import pipeline

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return "absent", None, ""
    try:
        ds = pipeline.store.open(str(p))
        X, y = dask.compute(ds.X, ds.y, scheduler="synchronous")
    except Exception as exc:  # noqa: BLE001 - any failure to read is what we report
        return "broken", None, exc_text(exc)
    v = which_version(X, y)
    return (v if v in versions else "other"), ds.uid, ""


def model_arrays(est):
    return [np.asarray(a) for a in (*est.coefs_, *est.intercepts_)]


def same_model(a, b, tol=0.0):
    if type(a) is not type(b) or not hasattr(a, "coefs_") or not hasattr(b, "coefs_"):
        return False
    pa, pb = model_arrays(a), model_arrays(b)
    return len(pa) == len(pb) and all(
        x.shape == z.shape
        and (np.array_equal(x, z) if tol == 0 else np.allclose(x, z, rtol=tol, atol=tol))
        for x, z in zip(pa, pb, strict=False)
    )


def model_state(path, refs, tol=0.0):
    """``(state, error)``: "absent", "broken", a key of ``refs`` whose model it is, or "other"."""
    import pipeline

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return "absent", ""
    try:
        m = pipeline.load(str(p))
    except Exception as exc:  # noqa: BLE001
        return "broken", exc_text(exc)
    for name, ref in refs.items():
        if same_model(m, ref, tol):
            return name, ""
    return "other", f"a {type(m).__name__} (n_iter_={getattr(m, 'n_iter_', '?')})"


def row(section, scenario, sees, outcome, checks=()):
    return {
        "section": section,
        "scenario": scenario,
        "sees": sees,
        "outcome": outcome,
        "checks": [c for c in checks if c],
    }


# ----------------------------------------------------------------------------- processes

_MP = []


def mp():
    """The forkserver context: children forked from one process that imported pipeline."""
    if not _MP:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "zarr", "dask.array", "pipeline"])
        _MP.append(ctx)
    return _MP[0]


def _child_entry(fn, conn, log, args):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.simplefilter("ignore")
    try:
        fn(conn, *args)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send(("raised", type(exc).__name__, first_line(exc)))
        raise


class Forked:
    """``fn(conn, *args)`` in a child forked from the forkserver; its output to ``log``."""

    def __init__(self, fn, *args, log):
        ctx = mp()
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_entry, args=(fn, child_conn, str(log), args))
        self.proc.start()
        child_conn.close()
        self.msgs = []
        self.hung = False

    def recv_until(self, pred, timeout=180):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.conn.poll(0.05):
                    msg = self.conn.recv()
                    self.msgs.append(msg)
                    if pred(msg):
                        return msg
                elif not self.proc.is_alive():
                    return None
            except (EOFError, OSError):
                return None
        return None

    def send(self, msg):
        with contextlib.suppress(OSError):
            self.conn.send(msg)

    def signal(self, sig):
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def finish(self, timeout=120):
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.hung = True
            self.signal(signal.SIGKILL)
            self.proc.join(30)
        while True:
            try:
                if not self.conn.poll(0):
                    break
                self.msgs.append(self.conn.recv())
            except (EOFError, OSError):
                break
        self.conn.close()
        return self.proc.exitcode

    def first(self, kind):
        return next((m for m in self.msgs if m[0] == kind), None)

    def sees(self, rc):
        r = self.first("raised")
        if r:
            return f"{r[1]}: {short(r[2])}" if r[2] else r[1]
        if rc is not None and rc < 0:
            return exit_text(rc)
        if self.first("done"):
            return "returned normally (the signal came after the call)"
        return exit_text(rc)


class Command:
    """A command in a session of its own, its output collected as it comes."""

    def __init__(self, cmd, cwd, env=None, stdin=subprocess.DEVNULL):
        self.proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        self.out, self.err = bytearray(), bytearray()
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self.threads:
            t.start()
        self.hung = False

    def _pump(self, stream, buf):
        while True:
            data = os.read(stream.fileno(), 65536)
            with self.cond:
                buf.extend(data)
                self.cond.notify_all()
            if not data:
                return

    @property
    def stdout(self):
        return self.out.decode(errors="replace")

    @property
    def stderr(self):
        return self.err.decode(errors="replace")

    def wait_for(self, pred, timeout=300):
        """Wait until ``pred(self)`` or the command ends; return ``pred(self)``."""
        end = time.monotonic() + timeout
        with self.cond:
            while not pred(self) and self.proc.poll() is None and time.monotonic() < end:
                self.cond.wait(0.05)
        return pred(self)

    def signal(self, sig, group=True):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)

    def finish(self, timeout=300, log=None):
        """Wait (SIGKILL after ``timeout`` s); the output goes to ``log``.out / .err."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.hung = True
            self.signal(signal.SIGKILL)
            self.proc.wait(60)
        self.signal(signal.SIGKILL)  # what is left of its group: a cluster's workers
        for t in self.threads:
            t.join(10)
        if log is not None:
            Path(f"{log}.out").write_bytes(bytes(self.out))
            Path(f"{log}.err").write_bytes(bytes(self.err))
        return self.proc.returncode


def cli():
    exe = Path(sys.executable).with_name("pipeline")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline"]


def scheduler_transitions(client):
    """How many task transitions the cluster's scheduler has made (work done)."""
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)


# ----------------------------------------------------------------------------- shared setup


class Setup:
    """The run's options, scenario directories, and what scenarios share (made once)."""

    def __init__(self, args):
        self.quick = args.quick
        self.seed = args.seed
        self.dir = Path(args.dir).resolve() / "faults"
        self._n = 0
        self._lock = threading.RLock()
        self._made = {}
        self._client = None
        self.cluster_lock = threading.Lock()

    def new_dir(self):
        with self._lock:
            self._n += 1
            d = self.dir / f"s{self._n:03d}"
        d.mkdir(parents=True)
        return d

    def rng(self, name):
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def points(self, full):
        return 1 if self.quick else full

    def shared(self, name):
        """A path (or object) made once: stores, models, child scripts."""
        with self._lock:
            if name not in self._made:
                self._made[name] = self._make(name)
            return self._made[name]

    def _make(self, name):
        import pipeline

        warnings.simplefilter("ignore")
        base = self.dir / "shared"
        base.mkdir(parents=True, exist_ok=True)
        if name in ("zarr", "memmap"):  # version 1 of the small store
            path = base / f"v1.{name}"
            pipeline.store.write(str(path), *version_data(1), chunk_rows=ROWS, format=name)
            return path
        if name == "small-train":  # a small store that trains well
            path = base / "train-small.zarr"
            pipeline.store.write(str(path), *train_data((N_ROWS, N_FEAT)), chunk_rows=400)
            return path
        if name == "train":
            path = base / "train.zarr"
            pipeline.store.write(str(path), *train_data(TRAIN_SHAPE), chunk_rows=TRAIN_CHUNK)
            return path
        if name == "pf":
            path = base / "pf.zarr"
            pipeline.store.write(str(path), *train_data(PF_SHAPE, seed=1), chunk_rows=PF_CHUNK)
            return path
        if name in ("model-a", "model-b"):  # two different fitted models
            X, y = train_data((N_ROWS, N_FEAT))
            est = pipeline.MLPClassifier(
                hidden_layer_sizes=(64, 64), max_iter=3, random_state=name == "model-b"
            ).fit(X, y)
            path = base / f"{name}.zarr"
            est.save(str(path))
            return path, pipeline.load(str(path))
        if name == "good":  # the good model that `pipeline train --overwrite` must keep
            X, y = train_data(TRAIN_SHAPE)
            est = pipeline.MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=5)
            est.fit(X, y)
            path = base / "good.zarr"
            est.save(str(path))
            return path, pipeline.load(str(path))
        if name == "pf-child":
            path = base / "pf_child.py"
            path.write_text(PF_CHILD)
            return path
        raise KeyError(name)

    def client(self):
        """A LocalCluster of this process (2 workers, 1 thread each), started once."""
        with self._lock:
            if self._client is None:
                from distributed import Client, LocalCluster

                cluster = LocalCluster(
                    n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
                )
                self._client = Client(cluster)
            return self._client

    def close(self):
        if self._client is not None:
            cluster = self._client.cluster
            with contextlib.suppress(Exception):
                self._client.close()
                cluster.close()


def make_dest(setup, kind, path):
    """Put an object of ``kind`` at ``path``: store, model, directory (a user's), file."""
    if kind == "store":
        shutil.copytree(setup.shared("zarr"), path)
    elif kind == "model":
        shutil.copytree(setup.shared("model-a")[0], path)
    elif kind == "directory":
        path.mkdir()
        (path / "thesis.tex").write_text("\\documentclass{article} % three years of work\n")
    elif kind == "file":
        path.write_text("my notes\n")
    return snapshot(path)


# ----------------------------------------------------------------------------- 1. metadata


def _edit_json(file, change, drop_checksum=False, key=None):
    doc = json.loads(file.read_text())
    meta = doc["attributes"][key] if key else doc
    change(meta)
    if drop_checksum:
        meta.pop("checksum", None)
    file.write_text(json.dumps(doc, indent=2))


def _flip_byte(file, where=0.5):
    data = bytearray(file.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0x5A
    file.write_bytes(bytes(data))


def _truncate(file, keep=0.5):
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def _npy_data_offset(file):
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def _schema_file(path, fmt):
    return (path / "zarr.json", "pipeline") if fmt == "zarr" else (path / "schema.json", None)


def _store_edit(field, value, drop=False):
    def edit(path, fmt):
        file, key = _schema_file(path, fmt)
        _edit_json(file, lambda m: m.__setitem__(field, value), drop, key)

    return edit


def _flip_chunk(path, fmt):
    if fmt == "zarr":
        _flip_byte(path / "X" / "c" / "5" / "0")
    else:
        file = path / "X.npy"
        data = bytearray(file.read_bytes())
        data[_npy_data_offset(file) + 5 * ROWS * N_FEAT * 4 + 7] ^= 0x5A
        file.write_bytes(bytes(data))


def metadata_store(setup, fmt, what, edit, is_metadata=True):
    import dask

    import pipeline

    d = setup.new_dir()
    path = d / f"data.{fmt}"
    shutil.copytree(setup.shared(fmt), path)
    edit(path, fmt)
    name = f"store ({fmt}): {what}"
    try:
        ds = pipeline.store.open(str(path))
        X, y = dask.compute(ds.X, ds.y, scheduler="synchronous")
    except Exception as exc:  # noqa: BLE001
        return _judge_refusal("metadata", name, exc, path.name)
    v = which_version(X, y) if X.shape == (N_ROWS, N_FEAT) else "other"
    sees = (
        f"opened and read: n_samples {len(ds)}, X {ds.X.dtype} {tuple(ds.X.shape)}, "
        f"classes {ds.classes}, data {'unchanged' if v == 1 else 'differs'}"
    )
    if is_metadata or v != 1:
        return row("metadata", name, sees, "WRONG", ["accepted without an error"])
    return row("metadata", name, sees, "intact", ["corruption not detected"])


def _judge_refusal(section, name, exc, filename):
    import pipeline

    checks = []
    if not isinstance(exc, (ValueError, pipeline.store.ChunkReadError)):
        checks.append(f"{type(exc).__name__}, not ValueError/ChunkReadError")
    if filename not in str(exc):
        checks.append(f"the message does not name {filename}")
    return row(section, name, exc_text(exc), "intact", checks)


def metadata_model(setup, what, edit):
    import pipeline

    d = setup.new_dir()
    path = d / "model.zarr"
    shutil.copytree(setup.shared("model-a")[0], path)
    edit(path)
    name = f"model: {what}"
    try:
        m = pipeline.load(str(path))
    except Exception as exc:  # noqa: BLE001
        return _judge_refusal("metadata", name, exc, path.name)
    ref = setup.shared("model-a")[1]
    same = hasattr(m, "coefs_") and len(model_arrays(m)) == len(model_arrays(ref)) and all(
        np.array_equal(x, z) for x, z in zip(model_arrays(m), model_arrays(ref), strict=False)
    )
    sees = f"loaded as {type(m).__name__} (n_features_in_={getattr(m, 'n_features_in_', '?')})"
    sees += ", same weights" if same else ", other weights"
    return row("metadata", name, sees, "WRONG", ["accepted without an error"])


def _model_edit(field, value, drop=False):
    def edit(path):
        def change(meta):
            if field == "class":
                meta["class"] = value
            else:
                meta["fitted"][field] = value

        _edit_json(path / "zarr.json", change, drop, "pipeline-model")

    return edit


def section_metadata(setup):
    rows = []
    for fmt in ("zarr", "memmap"):
        for field, value in (
            ("n_samples", N_ROWS - ROWS),
            ("dtype", "<i4"),
            ("feature_shape", [2, 4]),
            ("classes", [0, 1]),
        ):
            rows.append(
                metadata_store(setup, fmt, f"schema {field} edited to {value}",
                               _store_edit(field, value))
            )
    for fmt, field, value in (
        ("zarr", "n_samples", N_ROWS - ROWS),
        ("memmap", "dtype", "<i4"),
        ("zarr", "feature_shape", [2, 4]),
    ):
        rows.append(
            metadata_store(setup, fmt, f"schema {field} edited to {value}, checksum deleted",
                           _store_edit(field, value, drop=True))
        )
    rows.append(
        metadata_store(setup, "zarr", "zarr.json truncated to half",
                       lambda p, f: _truncate(p / "zarr.json"))
    )
    rows.append(
        metadata_store(setup, "memmap", "schema.json truncated to half",
                       lambda p, f: _truncate(p / "schema.json"))
    )
    for fmt in ("zarr", "memmap"):
        rows.append(
            metadata_store(setup, fmt, "one byte flipped in X chunk 5", _flip_chunk,
                           is_metadata=False)
        )
    rows.append(
        metadata_store(setup, "zarr", "X chunk 7 removed",
                       lambda p, f: (p / "X" / "c" / "7" / "0").unlink(), is_metadata=False)
    )
    rows.append(
        metadata_store(setup, "memmap", "X.npy truncated by one chunk",
                       lambda p, f: _truncate(p / "X.npy", 1 - 1 / N_CHUNKS), is_metadata=False)
    )
    rows.append(metadata_model(setup, "class edited to MLPRegressor",
                               _model_edit("class", "MLPRegressor")))
    rows.append(metadata_model(setup, "class edited to MLPRegressor, checksum deleted",
                               _model_edit("class", "MLPRegressor", drop=True)))
    rows.append(metadata_model(setup, "n_features_in_ edited to 9",
                               _model_edit("n_features_in_", N_FEAT + 1)))
    rows.append(metadata_model(setup, "n_features_in_ edited to 9, checksum deleted",
                               _model_edit("n_features_in_", N_FEAT + 1, drop=True)))
    rows.append(metadata_model(setup, "zarr.json truncated to half",
                               lambda p: _truncate(p / "zarr.json")))
    rows.append(metadata_model(setup, "one byte flipped in the first weight chunk",
                               lambda p: _flip_byte(p / "params" / "0" / "c" / "0" / "0")))
    return rows


# ----------------------------------------------------------------------------- 2. destinations

KINDS = ("store", "model", "directory", "file")
_WHAT = {"store": "a store", "model": "a model", "directory": "a user's directory",
         "file": "a plain file"}


def _judge_dest(name, sees, allowed, refused, clear, before, path, work_started, new_ok):
    after = snapshot(path)
    checks = []
    if allowed:
        if refused:
            outcome = "intact" if compare(before, after) == "same" else "LOST"
            checks.append("refused a permitted overwrite")
        else:
            outcome = "intact" if new_ok() else "LOST"
    else:
        outcome = {"same": "intact", "removed": "LOST", "added": "WRONG"}[compare(before, after)]
        if not refused:
            checks.append("accepted")
        elif not clear:
            checks.append("refused without a clear error")
        if work_started:
            checks.append("refused only after work started")
    if leftovers(path):
        checks.append("leftovers: " + ", ".join(leftovers(path)))
    return row("destinations", name, sees, outcome, checks)


def dest_write(setup, kind, overwrite):
    import pipeline

    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    consumed = []

    def source():
        consumed.append(True)
        yield from chunks_of(2)

    exc = None
    try:
        pipeline.store.write(str(path), source(), chunk_rows=ROWS, overwrite=overwrite)
    except Exception as e:  # noqa: BLE001
        exc = e
    return _judge_dest(
        f"store.write onto {_WHAT[kind]}, overwrite={overwrite}",
        exc_text(exc) if exc else "returned (written)",
        kind == "store" and overwrite,
        exc is not None,
        isinstance(exc, FileExistsError),
        before,
        path,
        bool(consumed),
        lambda: store_state(path)[0] == 2,
    )


def dest_save(setup, kind, overwrite):
    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    est = setup.shared("model-b")[1]
    exc = None
    try:
        est.save(str(path), overwrite=overwrite)
    except Exception as e:  # noqa: BLE001
        exc = e
    return _judge_dest(
        f"est.save onto {_WHAT[kind]}, overwrite={overwrite}",
        exc_text(exc) if exc else "returned (saved)",
        kind == "model" and overwrite,
        exc is not None,
        isinstance(exc, FileExistsError),
        before,
        path,
        False,
        lambda: model_state(path, {"new": est})[0] == "new",
    )


def dest_parallel(setup, kind):
    import pipeline

    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    store = setup.shared("pf")
    client = setup.client()
    exc = None
    with setup.cluster_lock:
        t0 = scheduler_transitions(client)
        try:
            est = pipeline.MLPClassifier(**{**PF_PARAMS, "max_iter": 1})
            pipeline.parallel.fit(est, str(store), client=client, averaging_frequency=PF_AF,
                                  checkpoint=str(path))
        except Exception as e:  # noqa: BLE001
            exc = e
        worked = scheduler_transitions(client) != t0
    return _judge_dest(
        f"parallel.fit(checkpoint=) onto {_WHAT[kind]}",
        exc_text(exc) if exc else "returned (trained)",
        False,
        exc is not None,
        isinstance(exc, FileExistsError),
        before,
        path,
        worked,
        None,
    )


def _cli_dest(setup, name, cmd, d, path, before, allowed, new_ok):
    """Run a CLI command whose destination is ``path``; judge like the API ones."""
    c = Command(cmd, cwd=d)
    rc = c.finish(600, log=d / "command")
    err = c.stderr
    refused = rc != 0
    clear = rc == 2 and ": error:" in err
    worked = bool(re.search(r"epochs \[|samples/s|rounds \[| samples \[", err))
    return _judge_dest(name, cli_sees(rc, err), allowed, refused, clear, before, path, worked,
                       new_ok)


def dest_cli_train(setup, kind, overwrite):
    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    cmd = [*cli(), "train", setup.shared("small-train"), "--out", path, "--epochs", "2",
           "--hidden", "8", "--batch-size", "200", *(["--overwrite"] if overwrite else [])]

    def new_ok():
        state, _ = model_state(path, {})
        return state == "other" and marker_uid(path) != marker_uid(setup.shared("model-a")[0])

    return _cli_dest(setup, f"pipeline train --out {_WHAT[kind]}"
                     + (" --overwrite" if overwrite else ""), cmd, d, path, before,
                     kind == "model" and overwrite, new_ok)


def dest_cli_train_input(setup, inside):
    d = setup.new_dir()
    data = d / "data.zarr"
    shutil.copytree(setup.shared("small-train"), data)
    path = data / "model.zarr" if inside else data
    before = snapshot(data)
    cmd = [*cli(), "train", data, "--out", path, "--epochs", "2", "--hidden", "8",
           "--batch-size", "200", "--overwrite"]
    name = "pipeline train data.zarr --out " + (
        "data.zarr/model.zarr (inside the input)" if inside else "data.zarr --overwrite (the input)"
    )
    r = _cli_dest(setup, name, cmd, d, data, before, False, None)
    if inside and r["outcome"] == "WRONG":
        r["checks"].append("a model was written inside the input store")
    return r


def dest_cli_ingest(setup, kind, overwrite):
    import pipeline

    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    cmd = [*cli(), "ingest", "synthetic:200,4", path, *(["--overwrite"] if overwrite else [])]

    def new_ok():
        try:
            return len(pipeline.store.open(str(path))) == 200
        except Exception:  # noqa: BLE001
            return False

    return _cli_dest(setup, f"pipeline ingest onto {_WHAT[kind]}"
                     + (" --overwrite" if overwrite else ""), cmd, d, path, before,
                     kind == "store" and overwrite, new_ok)


def dest_cli_checkpoint(setup, kind):
    d = setup.new_dir()
    path = d / "dest"
    before = make_dest(setup, kind, path)
    client = setup.client()
    cmd = [*cli(), "train", setup.shared("small-train"), "--out", d / "model.zarr", "--epochs",
           "1", "--hidden", "8", "--batch-size", "200", "--scheduler", client.scheduler.address,
           "--checkpoint", path]
    with setup.cluster_lock:
        t0 = scheduler_transitions(client)
        r = _cli_dest(setup, f"pipeline train --scheduler ... --checkpoint {_WHAT[kind]}", cmd,
                      d, path, before, False, None)
        late = "refused only after work started"
        if scheduler_transitions(client) != t0 and late not in r["checks"]:
            r["checks"].append(late)
    return r


def section_destinations(setup):
    rows = []
    for kind in KINDS:
        for overwrite in (False, True):
            rows.append(dest_write(setup, kind, overwrite))
    for kind in KINDS:
        for overwrite in (False, True):
            rows.append(dest_save(setup, kind, overwrite))
    for kind in KINDS:
        rows.append(dest_parallel(setup, kind))
    for kind in ("directory", "file"):
        rows.append(dest_cli_checkpoint(setup, kind))
    for name in ("small-train", "model-a", "zarr"):  # made before the threads start
        setup.shared(name)
    jobs = [(dest_cli_train, kind, ow) for kind in KINDS for ow in (False, True)]
    jobs += [(dest_cli_train_input, inside) for inside in (False, True)]
    jobs += [(dest_cli_ingest, kind, ow) for kind in KINDS for ow in (False, True)]
    with ThreadPoolExecutor(3) as pool:
        rows += list(pool.map(lambda job: _guard(job[0], setup, *job[1:]), jobs))
    return rows


def _guard(fn, setup, *args):
    """Run a scenario; a crash of the benchmark itself becomes a row, not an abort."""
    try:
        return fn(setup, *args)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        name = f"{fn.__name__}{args}"
        return row("error", name, f"the benchmark failed: {exc_text(exc)}", "WRONG",
                   ["benchmark error"])


# ----------------------------------------------------------------------------- 3. two writers


def _racer(conn, path, fmt, overwrite, v, start, barrier):
    import dask

    import pipeline

    start.wait(120)
    ds = None
    try:
        ds = pipeline.store.write(path, chunks_of(v, pause=0.002), chunk_rows=ROWS, format=fmt,
                                  overwrite=overwrite)
        conn.send(("wrote", ds.uid))
    except Exception as exc:  # noqa: BLE001
        conn.send(("failed", type(exc).__name__, first_line(exc)))
    barrier.wait(120)
    if ds is not None:
        try:
            X, y = dask.compute(ds.X, ds.y, scheduler="synchronous")
            conn.send(("read", which_version(X, y)))
        except pipeline.store.StoreChangedError:
            conn.send(("read", "StoreChangedError"))
        except Exception as exc:  # noqa: BLE001
            conn.send(("read", f"{type(exc).__name__}: {first_line(exc)}"))
    conn.send(("done",))


def two_writers(setup, fmt, overwrite, existing=False):
    d = setup.new_dir()
    path = d / f"data.{fmt}"
    if existing:
        shutil.copytree(setup.shared(fmt), path)
    ctx = mp()
    start, barrier = ctx.Event(), ctx.Barrier(2)
    kids = {v: Forked(_racer, str(path), fmt, overwrite, v, start, barrier, log=d / f"w{v}.log")
            for v in (2, 3)}
    time.sleep(0.5)
    start.set()
    res = {}
    for v, k in kids.items():
        k.recv_until(lambda m: m[0] == "done", 180)
        rc = k.finish(60)
        wrote, failed, read = k.first("wrote"), k.first("failed"), k.first("read")
        res[v] = {"wrote": wrote is not None, "failed": failed, "read": read and read[1], "rc": rc,
                  "raised": k.first("raised")}
    state, _, err = store_state(path)
    name = f"two writers ({fmt}), overwrite={overwrite}" + (" over a store" if existing else "")
    parts, checks, outcome = [], [], "intact"
    for v, r in res.items():
        who = "A" if v == 2 else "B"
        if r["wrote"]:
            parts.append(f"{who} wrote, reads {'its own' if r['read'] == v else r['read']}")
        elif r["failed"]:
            parts.append(f"{who}: {r['failed'][1]}")
        else:
            parts.append(f"{who}: {exit_text(r['rc'])} {r['raised'] or ''}")
            checks.append(f"writer {who} crashed")
        if r["wrote"] and r["read"] not in (v, "StoreChangedError"):
            outcome = "WRONG"
            checks.append(f"{who}'s Dataset read {r['read']}")
    winners = [v for v, r in res.items() if r["wrote"]]
    if state not in winners:
        outcome = "LOST" if existing and state in ("absent", "broken") else "WRONG"
        checks.append(f"the path holds {state} {err}".strip())
    elif res[state]["read"] != state:
        checks.append("the store at the path reads StoreChangedError for its own writer")
    if not overwrite:
        losers = [r for r in res.values() if r["failed"]]
        if len(winners) != 1 or len(losers) != 1 or losers[0]["failed"][1] != "FileExistsError":
            checks.append("not exactly one winner and one FileExistsError")
    parts.append(f"path holds {'A' if state == 2 else 'B' if state == 3 else state}")
    if leftovers(path):
        checks.append("leftovers: " + ", ".join(leftovers(path)))
    return row("writers", name, "; ".join(parts), outcome, checks)


def section_writers(setup):
    rows = []
    for fmt in ("zarr", "memmap"):
        for overwrite in (False, True):
            rows.append(_guard(two_writers, setup, fmt, overwrite))
    rows.append(_guard(two_writers, setup, "zarr", True, True))
    return rows


# ----------------------------------------------------------------------------- 4. readers


def _read_block(ds, j):
    import dask

    return dask.compute(ds.X.blocks[j], ds.y.blocks[j], scheduler="synchronous")


def _read_all(ds):
    """"StoreChangedError", the version read (1 old, 2/3 new, "mixed"), or another error."""
    import dask

    import pipeline

    try:
        X, y = dask.compute(ds.X, ds.y, scheduler="synchronous")
    except pipeline.store.StoreChangedError:
        return "StoreChangedError"
    except Exception as exc:  # noqa: BLE001
        return exc_text(exc)
    return which_version(X, y)


def _reader_loop(ds, stop):
    """Read chunks round and round until ``stop()``: ``(reads, reads not of the old
    store, StoreChangedError count, other error)``; reading goes on after a
    StoreChangedError (no later read may return data either)."""
    import pipeline

    reads, bad, changed, other, j = 0, [], 0, None, 0
    while not stop() and other is None:
        try:
            X, y = _read_block(ds, j)
            reads += 1
            got = which_version(X, y, slice(j * ROWS, (j + 1) * ROWS))
            if got != 1:
                bad.append(f"chunk {j}: {got}")
        except pipeline.store.StoreChangedError:
            changed += 1
            time.sleep(0.002)
        except Exception as exc:  # noqa: BLE001
            other = exc_text(exc)
        j = (j + 1) % N_CHUNKS
    return reads, bad, changed, other


def _reader_child(conn, path, mode):
    import pipeline

    ds = pipeline.store.open(path)
    X, y = _read_block(ds, 0)
    conn.send(("opened", which_version(X, y, slice(0, ROWS))))
    if mode == "step":
        conn.recv()  # the store was overwritten
        conn.send(("final", _read_all(ds)))
    else:
        loop = _reader_loop(ds, conn.poll)
        conn.recv()  # "go": the writer is done
        conn.send(("loop", *loop))
        conn.send(("final", _read_all(ds)))


def _overwrite(path, fmt, versions, pause=0.0):
    """Overwrite the store with each of ``versions`` (chunk by chunk, ``pause`` s apart)."""
    import pipeline

    for v in versions:
        pipeline.store.write(str(path), chunks_of(v, pause=pause), chunk_rows=ROWS, format=fmt,
                             overwrite=True)


def _judge_reader(name, final, loop=None):
    reads, bad, changed, other = loop or (None, [], 0, None)
    checks, outcome = [], "intact"
    if bad or final in (2, 3, "mixed"):
        outcome = "WRONG"
    if other:
        checks.append(f"a read during the overwrites raised {other}")
    if final == 1:
        checks.append("read the old store after it was replaced, without StoreChangedError")
    elif final not in (2, 3, "mixed", "StoreChangedError"):
        checks.append(f"{final}, not StoreChangedError")
    elif final != "StoreChangedError":
        checks.append("no StoreChangedError")
    sees = f"read after the overwrite: {_version_word(final)}"
    if loop is not None:
        sees = (f"during the overwrites {reads} chunk reads returned data, {len(bad)} not the old"
                + (f" ({', '.join(map(str, bad[:2]))})" if bad else "")
                + f", {changed} raised StoreChangedError" + (f", then {other}" if other else "")
                + "; " + sees)
    return row("readers", name, sees, outcome, checks)


def _version_word(v):
    words = {1: "the old data", 2: "the new data", 3: "the new data", "mixed": "MIXED data"}
    return words.get(v, v)


def reader_same_process(setup, fmt, concurrent):
    import pipeline

    d = setup.new_dir()
    path = d / f"data.{fmt}"
    shutil.copytree(setup.shared(fmt), path)
    ds = pipeline.store.open(str(path))
    name = f"reader in the same process ({fmt}), " + (
        "reading during 3 overwrites" if concurrent else "chunk 0 read, overwrite, read all"
    )
    if not concurrent:
        _read_block(ds, 0)
        _overwrite(path, fmt, [2])
        return _judge_reader(name, _read_all(ds))
    done = threading.Event()
    errors = []

    def writer():
        try:
            time.sleep(0.05)
            _overwrite(path, fmt, [2, 3, 2], pause=0.002)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    loop = _reader_loop(ds, done.is_set)
    t.join()
    r = _judge_reader(name, _read_all(ds), loop)
    if errors:
        r["checks"].append(f"the writer failed: {exc_text(errors[0])}")
    return r


def reader_other_process(setup, fmt, concurrent):
    d = setup.new_dir()
    path = d / f"data.{fmt}"
    shutil.copytree(setup.shared(fmt), path)
    k = Forked(_reader_child, str(path), "loop" if concurrent else "step", log=d / "reader.log")
    name = f"reader in another process ({fmt}), " + (
        "reading during 3 overwrites" if concurrent else "chunk 0 read, overwrite, read all"
    )
    if k.recv_until(lambda m: m[0] in ("opened", "raised"), 180) is None or k.first("raised"):
        k.finish(30)
        return row("readers", name, f"the reader failed: {k.sees(k.proc.exitcode)}", "WRONG",
                   ["benchmark error"])
    if concurrent:
        time.sleep(0.05)
        _overwrite(path, fmt, [2, 3, 2], pause=0.002)
    else:
        _overwrite(path, fmt, [2])
    k.send(("go",))
    k.recv_until(lambda m: m[0] in ("final", "raised"), 180)
    k.finish(60)
    final = k.first("final")
    loop = k.first("loop")
    if final is None:
        return row("readers", name, f"the reader failed: {k.sees(k.proc.exitcode)}", "WRONG",
                   ["benchmark error"])
    return _judge_reader(name, final[1], loop[1:] if loop else None)


def section_readers(setup):
    rows = []
    for fmt in ("zarr", "memmap"):
        for concurrent in (False, True):
            rows.append(_guard(reader_same_process, setup, fmt, concurrent))
            rows.append(_guard(reader_other_process, setup, fmt, concurrent))
    return rows


# ----------------------------------------------------------------------------- 5. interrupts


def _write_child(conn, path, fmt, overwrite):
    import pipeline

    ds = pipeline.store.write(path, chunks_of(2, conn), chunk_rows=ROWS, format=fmt,
                              overwrite=overwrite)
    conn.send(("done", ds.uid))


def _next_write_store(path, fmt):
    import pipeline

    try:
        pipeline.store.write(str(path), *version_data(3), chunk_rows=ROWS, format=fmt,
                             overwrite=True)
    except Exception as exc:  # noqa: BLE001
        return f"the next write failed: {exc_text(exc)}"
    state, _, err = store_state(path)
    if state != 3:
        return f"after the next write the path holds {state} {err}".strip()
    return ""


def interrupt_write(setup, fmt, overwrite, sig, point):
    d = setup.new_dir()
    path = d / f"data.{fmt}"
    old_uid = None
    if overwrite:
        shutil.copytree(setup.shared(fmt), path)
        old_uid = store_state(path)[1]
    k_chunk, delay = point
    where = f"chunk {k_chunk}/{N_CHUNKS}" if k_chunk < N_CHUNKS else "the end of the input"
    name = (f"store.write {fmt} "
            + ("overwrite=True over a store" if overwrite else "to a new path")
            + f": {sig.name} at {where} +{delay * 1000:.0f} ms")
    child = Forked(_write_child, str(path), fmt, overwrite, log=d / "child.log")
    reached = child.recv_until(
        lambda m: (m[0] == "chunk" and m[1] >= k_chunk) or m[0] in ("done", "raised"), 180
    )
    sent = reached is not None and reached[0] == "chunk"
    if sent:
        time.sleep(delay)
        child.signal(sig)
    rc = child.finish(120)
    state, uid, err = store_state(path, (1, 2))
    checks = []
    if overwrite:
        if state == 1 and uid == old_uid:
            outcome, now = "intact", "old"
        elif state == 2:
            outcome, now = "intact", "new"
        elif state in ("absent", "broken"):
            outcome, now = "LOST", f"{state} {err}"
        else:
            outcome, now = "WRONG", f"{state} (uid {uid})"
    else:
        outcome = "intact" if state in ("absent", 2) else "WRONG"
        now = {"absent": "nothing", 2: "new"}.get(state, f"{state} {err}")
    if not sent:
        checks.append("the write ended before the interruption point")
    if child.first("done") and state != 2:
        outcome = "WRONG"
        checks.append("write returned but the new store is not there")
    if child.hung:
        checks.append("the child hung after the signal")
    checks.append(_next_write_store(path, fmt))
    if leftovers(path):
        checks.append("leftovers after the next write: " + ", ".join(leftovers(path)))
    return row("interrupts", name, f"{child.sees(rc)}; path: {now}", outcome, checks)


def _save_child(conn, src, path, scratch):
    import pipeline

    est = pipeline.load(src)
    est.save(scratch, overwrite=True)
    t0 = time.perf_counter()
    est.save(scratch, overwrite=True)
    conn.send(("start", time.perf_counter() - t0))
    est.save(path, overwrite=True)
    conn.send(("done",))


def interrupt_save(setup, sig, frac):
    d = setup.new_dir()
    path = d / "model.zarr"
    a_path, a = setup.shared("model-a")
    b_path, b = setup.shared("model-b")
    shutil.copytree(a_path, path)
    old_uid = marker_uid(path)
    child = Forked(_save_child, str(b_path), str(path), str(d / "scratch.zarr"),
                   log=d / "child.log")
    started = child.recv_until(lambda m: m[0] in ("start", "raised"), 180)
    took = None
    if started is not None and started[0] == "start":
        took = started[1]
        time.sleep(frac * took)
        child.signal(sig)
    rc = child.finish(120)
    name = f"est.save(overwrite=True) over a model: {sig.name} at {frac:.0%} of a save" + (
        f" ({took * 1000:.0f} ms)" if took else ""
    )
    state, err = model_state(path, {"old": a, "new": b})
    checks = []
    if state == "old" and marker_uid(path) == old_uid:
        outcome, now = "intact", "old"
    elif state == "new":
        outcome, now = "intact", "new"
    elif state in ("absent", "broken", "old"):
        outcome, now = "LOST", f"{state} {err}"
    else:
        outcome, now = "WRONG", f"{state} {err}"
    if took is None:
        checks.append("the child failed before the save")
    if child.hung:
        checks.append("the child hung after the signal")
    try:
        a.save(str(path), overwrite=True)
        if model_state(path, {"a": a})[0] != "a":
            checks.append("the next save did not leave its model")
    except Exception as exc:  # noqa: BLE001
        checks.append(f"the next save failed: {exc_text(exc)}")
    if leftovers(path):
        checks.append("leftovers after the next save: " + ", ".join(leftovers(path)))
    return row("interrupts", name, f"{child.sees(rc)}; path: {now}", outcome, checks)


def _epochs_seen(c):
    found = re.findall(rf"(\d+(?:\.\d+)?)/{EPOCHS} epochs", c.stderr)
    return float(found[-1]) if found else -1.0


def _train_cmd(setup, out):
    return [*cli(), "train", setup.shared("train"), "--out", out, "--overwrite", "--epochs",
            str(EPOCHS), *TRAIN_ARGS]


def train_reference(setup):
    """The model an uninterrupted `pipeline train` writes (run once, as the user would)."""
    import pipeline

    d = setup.new_dir()
    c = Command(_train_cmd(setup, d / "reference.zarr"), cwd=d)
    rc = c.finish(900, log=d / "command")
    if rc != 0:
        raise RuntimeError(f"the reference `pipeline train` failed: {cli_sees(rc, c.stderr)}")
    return pipeline.load(str(d / "reference.zarr"))


def interrupt_train(setup, sig, point, reference, over_good=True):
    """``pipeline train STORE --out OUT --overwrite`` interrupted: OUT is a good model
    (it must stay), or a new path (nothing may be saved there but the finished model)."""
    d = setup.new_dir()
    out = d / ("good.zarr" if over_good else "new.zarr")
    g_path, g = setup.shared("good")
    if over_good:
        shutil.copytree(g_path, out)
    old_uid = marker_uid(out)
    k_epoch, delay = point
    where = f"epoch {k_epoch}/{EPOCHS}" if k_epoch < EPOCHS else "the save (bar at the last epoch)"
    name = (f"pipeline train --out {out.name} --overwrite"
            + (" over a good model" if over_good else " (a new path)")
            + f": {sig.name} at {where} +{delay * 1000:.0f} ms")
    env = {**os.environ, "TQDM_MININTERVAL": "0"}
    c = Command(_train_cmd(setup, out), cwd=d, env=env)
    # epoch 0: the bar is shown (training begins); the last: every epoch done, saving
    sent = False
    if c.wait_for(lambda c: _epochs_seen(c) >= k_epoch, 900) and c.proc.poll() is None:
        time.sleep(delay)
        c.signal(sig, group=sig != signal.SIGKILL)
        sent = True
    rc = c.finish(300, log=d / "command")
    state, err = model_state(out, {"old": g, "new": reference}, tol=MODEL_TOL)
    checks = []
    if state == "old" and over_good and marker_uid(out) == old_uid:
        outcome, now = "intact", "the good model"
    elif state == "new":
        outcome, now = "intact", "the fully trained model"
    elif state == "absent" and not over_good:
        outcome, now = "intact", "nothing"
    else:
        outcome = "LOST" if over_good else "WRONG"
        words = {"other": "another model", "absent": "nothing", "broken": "no model"}
        now = words.get(state, state)
        now += f" ({err})" if err else ""
    if not sent:
        checks.append("the command ended before the interruption point")
    elif sig == signal.SIGINT and rc != 130 and not (state == "new" and rc == 0):
        checks.append(f"{exit_text(rc)}, not exit 130")
    if rc is not None and rc in (-signal.SIGSEGV, -signal.SIGABRT, 139, 134):
        checks.append("crashed")
    if c.hung:
        checks.append("did not exit within 300 s of the signal")
    try:
        reference.save(str(out), overwrite=True)
    except Exception as exc:  # noqa: BLE001
        checks.append(f"the next save failed: {exc_text(exc)}")
    if leftovers(out):
        checks.append("leftovers after the next save: " + ", ".join(leftovers(out)))
    sees = f"{cli_sees(rc, c.stderr)}; {out.name}: {now}"
    return row("interrupts", name, sees, outcome, checks)


def _checkpoint_uid(path):
    return marker_uid(path) if (Path(path) / "pipeline.json").exists() else None


def _fit_same(setup, client, checkpoint=None):
    import pipeline

    est = pipeline.MLPClassifier(**json.loads(json.dumps(PF_PARAMS)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.parallel.fit(est, str(setup.shared("pf")), client=client,
                              averaging_frequency=PF_AF, checkpoint=checkpoint,
                              checkpoint_every=1)
    return est


def interrupt_parallel(setup, sig, point, reference):
    import pipeline

    d = setup.new_dir()
    ckpt = d / "ckpt"
    k_ckpt, delay = point
    where = (f"checkpoint {k_ckpt} written" if k_ckpt else "the fit's start")
    name = f"parallel.fit(checkpoint=DIR), own LocalCluster: {sig.name} {delay:.2f} s after {where}"
    cmd = [sys.executable, setup.shared("pf-child"), setup.shared("pf"), ckpt,
           json.dumps(PF_PARAMS), str(PF_AF)]
    c = Command(cmd, cwd=d)
    seen, last, sent = 0, None, False
    if c.wait_for(lambda c: "FIT" in c.stdout, 900):
        while seen < k_ckpt and c.proc.poll() is None:
            uid = _checkpoint_uid(ckpt)
            if uid is not None and uid != last:
                seen, last = seen + 1, uid
            time.sleep(0.005)
        if c.proc.poll() is None:
            time.sleep(delay)
            c.signal(sig, group=sig != signal.SIGKILL)
            sent = True
    rc = c.finish(300, log=d / "command")
    raised = re.search(r"^RAISED (.*)$", c.stdout, re.M)
    sees = exit_text(rc) + (f"; {short(raised.group(1).strip().rstrip(':'), 90)}" if raised else "")
    if "DONE" in c.stdout:
        sees += "; the fit had finished"
    checks = []
    kind = pipeline.store.kind_of(str(ckpt)) if ckpt.exists() else None
    if not ckpt.exists():
        outcome, now = "intact", "nothing"
    elif kind == "checkpoint":
        try:
            pipeline.load(str(ckpt / "model"))
            outcome, now = "intact", "a complete checkpoint"
        except Exception as exc:  # noqa: BLE001
            outcome = "LOST" if seen else "WRONG"
            now = f"a checkpoint whose model fails: {exc_text(exc)}"
    else:
        outcome, now = ("LOST" if seen else "WRONG"), f"not a complete checkpoint ({kind})"
    if not sent:
        checks.append("the child ended before the interruption point")
    if c.hung:
        checks.append("did not exit within 300 s of the signal")
    with setup.cluster_lock:
        try:
            resumed = _fit_same(setup, setup.client(), str(ckpt))
            if not same_model(resumed, reference, MODEL_TOL):
                outcome = "WRONG"
                checks.append("the resumed fit ends in another model than an uninterrupted one")
        except Exception as exc:  # noqa: BLE001
            checks.append(f"the next fit failed: {exc_text(exc)}")
    if leftovers(ckpt):
        checks.append("leftovers after the next fit: " + ", ".join(leftovers(ckpt)))
    return row("interrupts", name, f"{sees}; DIR: {now}", outcome, checks)


def section_interrupts(setup):
    rows = []
    sigs = (signal.SIGKILL, signal.SIGINT)
    # store.write: a chunk (or the end of the input) and 0-5 ms; the last point of a
    # full run is the end of the input (finish, marker, publish)
    for fmt in ("zarr", "memmap"):
        for overwrite in (False, True):
            for sig in sigs:
                rng = setup.rng(f"write-{fmt}-{overwrite}-{sig.name}")
                n = setup.points(3)
                for i in range(n):
                    k = N_CHUNKS if (i == n - 1 and n > 1) else int(rng.integers(0, N_CHUNKS + 1))
                    rows.append(_guard(interrupt_write, setup, fmt, overwrite, sig,
                                       (k, float(rng.uniform(0, 0.005)))))
    for sig in sigs:
        rng = setup.rng(f"save-{sig.name}")
        for _ in range(setup.points(3)):
            rows.append(_guard(interrupt_save, setup, sig, float(rng.uniform(0, 1.3))))
    # the commands and child scripts: two at a time
    setup.shared("train")
    setup.shared("good")
    setup.shared("pf")
    setup.shared("pf-child")
    jobs = []
    reference = _guard_value(train_reference, setup)
    if reference is not None:
        for sig in sigs:
            rng = setup.rng(f"train-{sig.name}")
            n = setup.points(3)
            for i in range(n):
                k = EPOCHS if (i == n - 1 and n > 1) else int(rng.integers(0, EPOCHS - 4))
                jobs.append((interrupt_train, sig, (k, float(rng.uniform(0, 0.15))), reference))
        rng = setup.rng("train-new-SIGINT")
        for _ in range(setup.points(2)):
            point = (int(rng.integers(0, EPOCHS - 4)), float(rng.uniform(0, 0.15)))
            jobs.append((interrupt_train, signal.SIGINT, point, reference, False))
    else:
        rows.append(row("interrupts", "pipeline train (reference run)", "failed", "WRONG",
                        ["benchmark error"]))
    client = setup.client()
    with setup.cluster_lock:
        pf_reference = _guard_value(lambda s: _fit_same(s, client), setup)
    if pf_reference is not None:
        for sig in sigs:
            rng = setup.rng(f"parallel-{sig.name}")
            for i in range(setup.points(2)):
                point = (0, float(rng.uniform(0.2, 1.0))) if i == 0 else (
                    int(rng.integers(2, 30)), float(rng.uniform(0, 0.1)))
                jobs.append((interrupt_parallel, sig, point, pf_reference))
    else:
        rows.append(row("interrupts", "parallel.fit (reference fit)", "failed", "WRONG",
                        ["benchmark error"]))
    with ThreadPoolExecutor(2) as pool:
        rows += list(pool.map(lambda job: _guard(job[0], setup, *job[1:]), jobs))
    return rows


def _guard_value(fn, setup):
    try:
        return fn(setup)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return None


# ----------------------------------------------------------------------------- report


def machine():
    import dask
    import distributed
    import jax
    import zarr

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True,
                                  timeout=30).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "zarr": zarr.__version__,
        "commit": git("rev-parse", "--short", "HEAD"),
        "pipeline_modified": [
            line[3:].removeprefix("pipeline/")
            for line in git("status", "--porcelain", "--", "pipeline").splitlines()
        ],
        "load_avg_at_start": os.getloadavg(),
        "code_at_start": code_state(),
    }


def code_state():
    """``{file: mtime}`` of pipeline's code, to tell whether it changed during the run."""
    import pipeline

    root = Path(pipeline.__file__).parent
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*.py"))}


def totals(rows):
    n = len(rows)
    ok = sum(r["outcome"] == "intact" and not r["checks"] for r in rows)
    count = {k: sum(r["outcome"] == k for r in rows) for k in ("intact", "LOST", "WRONG")}
    failed = sum(bool(r["checks"]) for r in rows)
    return (
        f"{n} scenarios: {ok} pass; old state intact in {count['intact']}, LOST in "
        f"{count['LOST']}, WRONG in {count['WRONG']}; other checks failed in {failed}"
    )


def table(rows):
    lines = [
        "| # | section | scenario | what the user sees | old state | failed checks |",
        "| ---: | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rows, 1):
        state = r["outcome"] if r["outcome"] == "intact" else f"**{r['outcome']}**"
        checks = "; ".join(short(c, 160) for c in r["checks"]) or "—"
        lines.append(
            f"| {i} | {r['section']} | {short(r['scenario'], 140)} | {short(r['sees'], 170)} | "
            f"{state} | {checks} |"
        )
    lines.append(f"\n**Totals: {totals(rows)}.**")
    return "\n".join(lines)


RUN = {
    "metadata": section_metadata,
    "destinations": section_destinations,
    "writers": section_writers,
    "readers": section_readers,
    "interrupts": section_interrupts,
}


def main():
    p = base_parser(__doc__, SECTIONS, HERE, quick_help="one random point per interrupt "
                    "scenario instead of 3 (2 for parallel.fit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the interruption points")
    p.add_argument("--out", help="also write the markdown table (and its header) here")
    p.add_argument("--keep", action="store_true", help="keep the scenario directories")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    setup = Setup(args)
    if setup.dir.exists():
        shutil.rmtree(setup.dir)
    setup.dir.mkdir(parents=True)
    _BASE[0] = str(setup.dir)
    mp()  # the forkserver starts on first use; the clusters' processes come later
    import pipeline  # noqa: F401

    info = machine()
    print(json.dumps({k: v for k, v in info.items() if k != "code_at_start"}), flush=True)
    rows, t0 = [], time.perf_counter()
    try:
        for name in args.only or SECTIONS:
            t = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            got = RUN[name](setup)
            rows += got
            bad = [r for r in got if r["outcome"] != "intact" or r["checks"]]
            print(
                f"[{time.strftime('%H:%M:%S')}] {name}: {len(got)} scenarios, {len(bad)} failing,"
                f" {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        setup.close()
        total = time.perf_counter() - t0
        if not args.keep:
            shutil.rmtree(setup.dir, ignore_errors=True)
    head = (
        f"Machine: {info['cpu']} ({info['cores']} cores), {info['ram_gb']} GiB, Linux "
        f"{info['kernel']}, Python {info['python']}, numpy {info['numpy']}, jax {info['jax']}, "
        f"dask/distributed {info['dask']}/{info['distributed']}, zarr {info['zarr']}; commit "
        f"{info['commit']}" + (
            " with uncommitted changes in pipeline/ (" + ", ".join(info["pipeline_modified"]) + ")"
            if info["pipeline_modified"] else "")
        + f"; seed {args.seed}{', --quick' if args.quick else ''}; {total:.0f} s; load average "
        f"{info['load_avg_at_start'][0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    )
    changed = [f for f, t in code_state().items() if info["code_at_start"].get(f) != t]
    if changed:
        head += (" **pipeline's code changed during the run** (" + ", ".join(changed)
                 + "): children started later ran other code than this process.")
    text = head + "\n\n" + table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        info.pop("code_at_start")
        Path(args.json).write_text(json.dumps({"machine": info, "total_s": total, "rows": rows},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
