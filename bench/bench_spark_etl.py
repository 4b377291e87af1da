"""Benchmark: the event log's ETL on the embedded engine against the spark engine, same run.

Issue 18: wall time, peak memory (the whole process tree: the Python driver and Spark's JVM),
events per second, and whether both engines report the same counts. Each engine runs
``retailrec etl`` in a fresh data folder, as a user would; the tree's resident memory is sampled
every 0.2 s (a JVM is a child process, which ``/usr/bin/time`` would count apart).

    python bench/bench_spark_etl.py [--scale full] [--raw DIR] [--driver-memory 1g]

``--driver-memory`` caps the JVM's heap; in ``local[N]`` the executors run inside the driver's
JVM, so that is the executors' memory too. Spark's event log (enabled for the run) gives what the
tasks read, shuffled and spilled to disk: the evidence that the data did not fit in that memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _util import report

SYNTH = """
import sys
from pathlib import Path
from retailrec.synthetic import synth
data = synth.generate(synth.config_for(sys.argv[1]), random_state=int(sys.argv[2]))
synth.write(data, Path(sys.argv[3]))
"""


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack += children.get(p, [])
    return found


def _rss(pid: int) -> tuple[float, bool]:
    """(resident MiB of one process, whether it is a JVM)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return 0.0, False
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20, exe.endswith("/java")


def spark_task_totals(event_logs: Path) -> dict[str, float]:
    """Totals over every finished task in Spark's event logs under ``event_logs``, in MiB."""
    keys = {
        "input_read_mib": ("Input Metrics", "Bytes Read"),
        "shuffle_written_mib": ("Shuffle Write Metrics", "Shuffle Bytes Written"),
        "spilled_from_memory_mib": (None, "Memory Bytes Spilled"),
        "spilled_to_disk_mib": (None, "Disk Bytes Spilled"),
    }
    totals = dict.fromkeys(keys, 0.0)
    peak = 0.0
    for path in event_logs.rglob("events_*"):  # rolling logs: events_N_<app>, beside a status
        for line in path.open():
            if '"SparkListenerTaskEnd"' not in line:
                continue
            event = json.loads(line)
            if event.get("Event") != "SparkListenerTaskEnd":
                continue
            metrics = event.get("Task Metrics") or {}
            for name, (group, key) in keys.items():
                source = metrics.get(group, {}) if group else metrics
                totals[name] += source.get(key, 0) / 2**20
            peak = max(peak, metrics.get("Peak Execution Memory", 0) / 2**20)
    return {**{k: round(v) for k, v in totals.items()}, "task_peak_execution_mib": round(peak)}


def run_sampled(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its wall time and the peaks of its tree's RSS: all, the JVMs, the rest."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"tree": 0.0, "jvm": 0.0, "python": 0.0}

    def sample() -> None:
        while proc.poll() is None:
            sizes = [_rss(p) for p in _tree(proc.pid)]
            jvm = sum(r for r, is_jvm in sizes if is_jvm)
            total = sum(r for r, _ in sizes)
            peaks["tree"] = max(peaks["tree"], total)
            peaks["jvm"] = max(peaks["jvm"], jvm)
            peaks["python"] = max(peaks["python"], total - jvm)
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"seconds": round(seconds, 1), **{f"peak_{k}_mib": round(v) for k, v in peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="full")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--raw", type=Path, help="A folder with events.csv (default: synthesize)")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-spark-etl-") as tmp:
        raw = args.raw
        if raw is None:
            raw = Path(tmp) / "raw"
            subprocess.run(
                [sys.executable, "-c", SYNTH, args.scale, str(args.seed), str(raw)], check=True
            )
        rows = sum(1 for _ in (raw / "events.csv").open("rb")) - 1
        event_logs = Path(tmp) / "spark-events"
        event_logs.mkdir()
        submit = [
            f"--driver-memory {args.driver_memory}",
            "--conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false",
            f"--conf spark.eventLog.dir=file://{event_logs}",
        ]
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": "1",
            "RETAILREC_SPARK_MASTER": args.master,
            "PYSPARK_SUBMIT_ARGS": f"{' '.join(submit)} pyspark-shell",
        }
        results: dict[str, object] = {"events_csv_rows": rows, "master": args.master}
        counts = {}
        for engine in ("embedded", "spark"):
            data = Path(tmp) / engine
            env["RETAILREC_DATA_DIR"] = str(data)
            cmd = [sys.executable, "-m", "retailrec", "etl", "--raw", str(raw), "--engine", engine]
            try:
                measured = run_sampled(cmd, env)
            except RuntimeError as exc:  # the other engine's figures still count
                results[engine] = {"failed": str(exc).strip().splitlines()[-1][:300]}
                continue
            etl_report = json.loads((data / "reports" / "etl-latest.json").read_text())
            counts[engine] = {
                k: etl_report[k] for k in ("rows_read", "loaded", "duplicates", "rejected")
            }
            measured["events_per_second"] = round(etl_report["rows_read"] / measured["seconds"])
            if engine == "spark":
                measured |= spark_task_totals(event_logs)
            results[engine] = measured
        results["counts"] = counts
        results["same_counts"] = len(counts) == 2 and counts["embedded"] == counts["spark"]
        results["spark_driver_memory"] = args.driver_memory
    report(f"spark_etl_{args.scale}", results)


if __name__ == "__main__":
    main()
