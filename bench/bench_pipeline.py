"""Benchmark: ``retailrec pipeline --scale full`` from nothing to a promoted champion.

Target (issue 4): at most 15 minutes on this 2-core machine.

    python bench/bench_pipeline.py [--scale full]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import machine, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RETAILREC_DATA_DIR": str(Path(tmp) / "data")}
        cmd = [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "retailrec",
            "pipeline",
            "--scale",
            args.scale,
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = {
        "scale": args.scale,
        "pipeline_seconds": round(seconds, 1),
        "peak_mib": round(int(proc.stderr.strip().splitlines()[-1]) / 1024),
        "output_tail": proc.stdout.strip().splitlines()[-16:],
    }
    path = save(f"pipeline-{args.scale}", result)
    print(f"machine: {machine()}")
    print(proc.stdout)
    print(f"pipeline_seconds: {result['pipeline_seconds']}  peak_mib: {result['peak_mib']}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
