"""Benchmark: `retailrec synth --scale full` time and peak memory.

Targets (issue 2): at most 2 minutes and 4 GB peak on a 2-core machine. For scale, the same run
times a bare ``pandas.read_csv`` of the file it wrote. ``--scale 10x`` (issue 18) writes ten full
shops, one at a time.

    python bench/bench_synth.py [--scale full|10x] [--seed 42]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import report, run_measured

GENERATE = """
import sys
from pathlib import Path
from retailrec.synthetic import synth
synth.write_shop(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))  # as `retailrec synth` does
"""

READ_CSV = """
import sys, pandas as pd
pd.read_csv(sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--seed", default="42")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        gen_s, gen_mib = run_measured(GENERATE, args.scale, args.seed, str(out))
        rows = sum(1 for _ in (out / "events.csv").open()) - 1
        size_mib = (out / "events.csv").stat().st_size / 2**20
        read_s, read_mib = run_measured(READ_CSV, str(out / "events.csv"))
    result = {
        "scale": args.scale,
        "rows": rows,
        "events_csv_mib": round(size_mib, 1),
        "synth_seconds": round(gen_s, 1),
        "synth_peak_mib": round(gen_mib),
        "read_csv_seconds": round(read_s, 1),
        "read_csv_peak_mib": round(read_mib),
        "synth_over_read_csv": round(gen_s / read_s, 1),
    }
    report(f"synth-{args.scale}", result)


if __name__ == "__main__":
    main()
