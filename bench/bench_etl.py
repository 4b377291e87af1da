"""Benchmark: ETL + feature build against a bare ``pandas.read_csv``; online history reads.

Targets (issue 3), on the ``full`` synthetic file (~2.75M rows):
* ETL + feature build within 5x a bare ``pandas.read_csv`` of the same file, same run;
* peak memory at most 3 GB;
* one visitor's online history read: p99 at most 1 ms.

    python bench/bench_etl.py [--scale full] [--seed 42] [--reads 5000] [--real-size-properties]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _util import report, run_measured

SYNTH = """
import sys
from pathlib import Path
from retailrec.synthetic import synth
data = synth.generate(synth.config_for(sys.argv[1]), random_state=int(sys.argv[2]))
synth.write(data, Path(sys.argv[3]))
"""

READ_CSV = """
import sys, pandas as pd
pd.read_csv(sys.argv[1])
"""

ETL_AND_FEATURES = """
import sys, time
from pathlib import Path
from retailrec.data_pipeline import etl, feature_pipeline
from retailrec.feature_store import store
raw, work = Path(sys.argv[1]), Path(sys.argv[2])
conn = store.connect(work / "feature_store.sqlite")
t = time.perf_counter()
etl.run_etl(raw, conn=conn, rejected_dir=work / "rejected", processed_dir=work / "processed")
t_etl = time.perf_counter() - t
feature_pipeline.build_features(conn)
print(f"{t_etl:.3f} {time.perf_counter() - t - t_etl:.3f}")
"""

#: The real dataset's item properties: 20,275,902 rows in two files, mostly hashed properties with
#: long text values. Keeps the synthetic shop's categoryid/available rows and adds hashed ones
#: (weekly snapshots of the same items) up to the real count, split as the real files are.
REAL_SIZE_PROPERTIES = """
import sys
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.csv as pacsv
raw = Path(sys.argv[1])
rng = np.random.default_rng(0)
readable = pd.read_csv(raw / "item_properties.csv", dtype={"value": "str"})
(raw / "item_properties.csv").unlink()
total, part1 = 20_275_902, 10_999_999
n = total - len(readable)
items = readable["itemid"].unique()
weeks = np.sort(readable["timestamp"].unique())
codes = np.array(["888", "790", "6", "283", "364", "159", "112", "764", "776", "839", "917"])
vocab = np.array(
    [f"{rng.integers(1, 1_400_000)} n{rng.integers(1, 900)}.000 {rng.integers(1, 1_400_000)}"
     for _ in range(5000)]
)
hashed = pd.DataFrame({
    "timestamp": weeks[rng.integers(0, len(weeks), n)],
    "itemid": items[rng.integers(0, len(items), n)],
    "property": codes[rng.integers(0, len(codes), n)],
    "value": vocab[rng.integers(0, len(vocab), n)],
})
both = pd.concat([readable, hashed], ignore_index=True).sample(frac=1.0, random_state=0)
for name, part in (("part1", both.iloc[:part1]), ("part2", both.iloc[part1:])):
    table = pa.Table.from_pandas(part, preserve_index=False)
    pacsv.write_csv(table, raw / f"item_properties_{name}.csv")
"""

#: The floor under any ETL into the store: appending the already-parsed events, nothing else.
APPEND_ONLY = """
import sys, time
import pandas as pd
from retailrec.feature_store import store
events = pd.read_csv(sys.argv[1], dtype={"transactionid": "Int64"}).drop_duplicates()
conn = store.connect(sys.argv[2])
t = time.perf_counter()
store.append_events(conn, events)
print(f"{time.perf_counter() - t:.3f}")
"""

HISTORY = """
import sys, time
import numpy as np
from retailrec.feature_store import store
conn = store.connect(sys.argv[1], read_only=True)
visitors = np.array([r[0] for r in conn.execute("SELECT DISTINCT visitorid FROM events")])
rng = np.random.default_rng(0)
sample = rng.choice(visitors, int(sys.argv[2]))
for v in sample[:200]:  # warm the page cache, as a running server would be
    store.visitor_history(conn, int(v))
times = []
for v in sample:
    t = time.perf_counter()
    store.visitor_history(conn, int(v))
    times.append(time.perf_counter() - t)
ms = np.array(times) * 1000
print(f"{np.percentile(ms, 50):.4f} {np.percentile(ms, 99):.4f} {ms.max():.4f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--seed", default="42")
    parser.add_argument("--reads", default="5000")
    parser.add_argument(
        "--real-size-properties",
        action="store_true",
        help="Item properties as large as the real dataset's (20.3M rows in two files).",
    )
    args = parser.parse_args()
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        raw, work = Path(tmp) / "raw", Path(tmp) / "work"
        run_measured(SYNTH, args.scale, args.seed, str(raw))
        if args.real_size_properties:
            run_measured(REAL_SIZE_PROPERTIES, str(raw))
        read_s, read_mib = run_measured(READ_CSV, str(raw / "events.csv"))
        etl_s, etl_mib = run_measured(ETL_AND_FEATURES, str(raw), str(work))
        split = subprocess.run(
            [sys.executable, "-c", ETL_AND_FEATURES, str(raw), str(Path(tmp) / "again")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        append_s = float(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    APPEND_ONLY,
                    str(raw / "events.csv"),
                    str(Path(tmp) / "append.sqlite"),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        out = subprocess.run(
            [sys.executable, "-c", HISTORY, str(work / "feature_store.sqlite"), args.reads],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        rows = sum(1 for _ in (raw / "events.csv").open()) - 1
        property_rows = sum(
            sum(1 for _ in path.open()) - 1 for path in raw.glob("item_properties*.csv")
        )
    result = {
        "scale": args.scale,
        "rows": rows,
        "item_property_rows": property_rows,
        "read_csv_seconds": round(read_s, 2),
        "etl_plus_features_seconds": round(etl_s, 2),
        "etl_seconds_in_process": float(split[0]),
        "features_seconds_in_process": float(split[1]),
        "ratio_to_read_csv": round(etl_s / read_s, 1),
        "sqlite_append_only_seconds": append_s,
        "sqlite_append_only_ratio": round(append_s / read_s, 1),
        "peak_mib": round(etl_mib),
        "read_csv_peak_mib": round(read_mib),
        "history_reads": int(args.reads),
        "history_p50_ms": float(out[0]),
        "history_p99_ms": float(out[1]),
        "history_max_ms": float(out[2]),
    }
    report(
        f"etl-{args.scale}{'-real-size-properties' if args.real_size_properties else ''}", result
    )


if __name__ == "__main__":
    main()
