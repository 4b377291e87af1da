"""Helpers for the benchmarks: run a step in a child process, measure wall time and peak memory."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_measured(code: str, *args: str) -> tuple[float, float]:
    """Run ``python -c code args`` in a fresh process; returns (seconds, peak RSS in MiB).

    Each measured step gets its own process so that its peak memory is its own: RUSAGE_CHILDREN
    reports the largest child so far, so steps run in increasing order of expected size or are
    read through /usr/bin/time where that matters.
    """
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-c", code, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return seconds, peak_kib / 1024


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def save(name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def report(name: str, result: dict[str, object]) -> None:
    """Save ``result`` under bench/results/ and print it with the machine it ran on."""
    path = save(name, result)
    print(f"machine: {machine()}")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print(f"saved {path}")


def retailrec(data: Path, *args: str) -> str:
    """Run ``retailrec ARGS`` on the data dir ``data`` (one BLAS thread), failing loudly;
    returns what it printed."""
    import os

    env = {**os.environ, "RETAILREC_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "retailrec", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"retailrec {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout
