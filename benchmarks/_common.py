"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def base_parser(doc, sections, here, *, quick_help):
    """The options every benchmark has: --quick, --only, --json, --dir, --child."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument(
        "--only", choices=sections, action="append", help="run only this section (repeatable)"
    )
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--dir", default=str(here / "_data"), help="where stores are written")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def status_mb(field="VmRSS"):
    """A field of /proc/self/status (VmRSS, RssAnon, VmHWM...) in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


class PeakSampler:
    """The highest RssAnon (anonymous memory: not the page cache of a store) seen by a
    thread sampling every ``every`` seconds while the ``with`` block runs."""

    def __init__(self, every=0.02):
        import threading

        self.every, self.peak_mb = every, status_mb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak_mb = max(self.peak_mb, status_mb("RssAnon"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, status_mb("RssAnon"))
