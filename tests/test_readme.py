"""The README's code blocks run as written, in order, in a fresh directory.

Python blocks run in one namespace, as one session; bash blocks run with bash in the same
directory, at their place in the README. A python block whose first line is a comment
naming a file (``# train_parallel.py``) is a script: it is written to that file, and a
later bash block must run it (``python train_parallel.py``), as a user would. The two
quick-start blocks (a fresh venv, ``pip install``, the demo or the tests) are CI's job
(``.ci/run``), not this test's.

All of it runs in one driver process (this file run as a script), which starts bash for
the shell blocks; the blocks' own data is small, so it takes a minute or so.
"""

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
SCRIPT = re.compile(r"\A# ([\w.-]+\.py)\n")


def _is_quick_start(source):
    """The quick-start blocks: a fresh venv and an install, for CI to run."""
    return "python3 -m venv" in source and "pip install" in source


def readme_blocks(text):
    """``(language, first line number of the code, code)`` for every fenced block."""
    return [
        (m.group(1).strip(), text[: m.start(2)].count("\n") + 1, m.group(2))
        for m in FENCE.finditer(text)
    ]


def plan(text):
    """The README's blocks as steps for the driver, and the skipped quick-start blocks."""
    steps, skipped = [], []
    for lang, line, code in readme_blocks(text):
        assert lang in ("python", "bash"), (
            f"README.md:{line}: a ```{lang} block; mark every code block python or bash"
        )
        if _is_quick_start(code):
            skipped.append(code)
        elif lang == "python" and (script := SCRIPT.match(code)):
            steps.append({"kind": "file", "line": line, "name": script.group(1), "code": code})
        else:
            steps.append({"kind": lang, "line": line, "code": code})
    return steps, skipped


def _cpu_seconds():
    """CPU time of this process and of its finished children (bash, the CLI, workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_steps(steps):
    """Run the steps in the current directory (the driver, in its own process)."""
    namespace = {"__name__": "__main__"}
    for step in steps:
        where = f"README.md:{step['line']}"
        print(f"== {where} ({step['kind']})", flush=True)
        started, cpu = time.perf_counter(), _cpu_seconds()
        if step["kind"] == "python":
            # Padded so that tracebacks give the README's own line numbers.
            code = compile("\n" * (step["line"] - 1) + step["code"], str(README), "exec")
            exec(code, namespace)
        elif step["kind"] == "file":
            Path(step["name"]).write_text(step["code"])
        else:
            run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["code"]])
            if run.returncode:
                sys.exit(f"{where}: the bash block exited with {run.returncode}")
        wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        print(f"== {where} done in {wall:.1f} s, {cpu:.1f} s of CPU", flush=True)


def test_readme_plan_skips_only_the_quick_start():
    steps, skipped = plan(README.read_text())
    # Exactly the two quick-start commands: a new block is never skipped silently.
    assert len(skipped) == 2, skipped
    assert ["pipeline demo" in s for s in skipped] == [True, False], skipped
    assert skipped[1].rstrip().endswith("pytest"), skipped
    assert [s["kind"] for s in steps].count("python") >= 4
    shell = "\n".join(s["code"] for s in steps if s["kind"] == "bash")
    for script in (s for s in steps if s["kind"] == "file"):
        later = [s for s in steps if s["line"] > script["line"] and s["kind"] == "bash"]
        assert any(f"python {script['name']}" in s["code"] for s in later), (
            f"README.md:{script['line']}: the script {script['name']} is never run"
        )
    assert "pipeline train" in shell and "pipeline evaluate" in shell


def test_readme_runs(tmp_path):
    steps, _ = plan(README.read_text())
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    work = tmp_path / "work"
    work.mkdir()
    no_data = tmp_path / "no-data"  # no MNIST here: the README's blocks fall back to digits
    no_data.mkdir()
    env = {
        **os.environ,
        # `pipeline` and `python` as in an activated venv (the interpreter running the tests)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PIPELINE_DATA": str(no_data),
        "MPLBACKEND": "Agg",
    }
    # JAX_COMPILATION_CACHE_DIR (set by conftest.py) is inherited: compiled once per run.
    run = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "steps.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    print("\n".join(line for line in run.stdout.splitlines() if line.startswith("== ")))
    assert run.returncode == 0, output[-8000:]
    # What the blocks print and leave behind: they really trained, saved and evaluated.
    assert re.search(r"^test accuracy 0\.\d+$", run.stdout, re.M), run.stdout[-3000:]
    assert re.search(r"^accuracy 0\.\d+ on \d+ samples$", run.stdout, re.M), run.stdout[-3000:]
    # A README that makes its reader wonder is wrong too: a few epochs do not converge, but
    # no other warning may show (a dashboard port taken by another cluster on this machine
    # is not the README's doing).
    warned = [
        line
        for line in re.findall(r"\b\w+Warning: .*", output)
        if not line.startswith("ConvergenceWarning: ") and "is already in use" not in line
    ]
    assert not warned, warned
    for saved in ("model.zarr", "net.zarr", "parallel-model.zarr", "run.ckpt", "mlp.zarr"):
        assert (work / saved).is_dir(), f"{saved} missing: {sorted(os.listdir(work))}"


if __name__ == "__main__":  # the driver: python tests/test_readme.py STEPS_JSON
    _run_steps(json.loads(Path(sys.argv[1]).read_text()))
