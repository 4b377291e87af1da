"""Benchmark: where training's memory peaks, step by step (issue 15: the pipeline in 4 GB).

Runs ``retailrec train`` in this process on an existing data folder (a store after
``retailrec etl`` and ``features``, such as one ``retailrec pipeline --scale full`` left) and
prints, at each step the training reports, the seconds so far, the process's resident memory
and its peak so far (``ru_maxrss``).

    RETAILREC_DATA_DIR=DIR OPENBLAS_NUM_THREADS=1 python bench/bench_train_memory.py
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from retailrec.config import Settings
from retailrec.training.train import train


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    start = time.perf_counter()

    def step(stage: str) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{time.perf_counter() - start:8.1f} s  rss {_rss_mib():6.0f} MiB"
            f"  peak {peak:6.0f} MiB  {stage}",
            flush=True,
        )

    result = train(Settings(), progress=step)
    step(f"done: {result.best_model}, version {result.version}")


if __name__ == "__main__":
    main()
