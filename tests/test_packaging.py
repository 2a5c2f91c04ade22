"""The README's quick start and CI agree, and the package exposes what it promises."""

from pathlib import Path

import pipeline

ROOT = Path(__file__).parents[1]


def _quick_start_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("## A tour", 1)[0]
    return [line for line in block.splitlines() if line.startswith("python3 -m venv")]


def test_ci_runs_the_readme_quick_start_verbatim():
    commands = _quick_start_commands()
    assert len(commands) == 2 and "pipeline demo" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


def test_public_namespaces():
    modules = ("store", "stream", "sources", "datasets", "model_selection", "parallel")
    assert set(modules) <= set(pipeline.__all__)  # DESIGN.md's public modules
    for module in modules:
        public = getattr(pipeline, module)
        assert all(hasattr(public, name) for name in public.__all__)
