"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path


def drop_page_cache():
    """Ask the kernel to forget cached file pages; True if it listened (needs root)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def child_main(child, children):
    """``--child SPEC``: run one measurement in this fresh process, print its JSON."""
    warnings.simplefilter("ignore")
    spec = json.loads(child)
    print(json.dumps(children[spec["kind"]](spec)))


def run_sections(names, run, cfg, result, json_path=None, cleanup=None):
    """Run ``run[name](cfg)`` for each section into ``result`` (timed, logged to stderr);
    total time and load average are recorded and the JSON written even on failure."""
    t_start = time.perf_counter()
    try:
        for name in names:
            t0 = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            result[name] = run[name](cfg)
            result[name]["section_s"] = time.perf_counter() - t0
            print(
                f"[{time.strftime('%H:%M:%S')}] {name} done in {result[name]['section_s']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if cleanup is not None:
            cleanup()
        result["total_s"] = time.perf_counter() - t_start
        result["load_avg_at_end"] = os.getloadavg()
        if json_path:
            Path(json_path).write_text(json.dumps(result, indent=1, default=str))
    return result


def markdown_table(columns, rows):
    """A markdown table: the first two and the last column left-aligned, numbers right."""
    align = ["---", "---", *["---:"] * (len(columns) - 3), "---"]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def print_totals(result):
    print(
        f"total {result['total_s']:.0f} s; load average at start / end: "
        f"{result['machine']['load_avg_at_start'][0]:.2f} / {result['load_avg_at_end'][0]:.2f}"
    )
