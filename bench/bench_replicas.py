"""Benchmark: serving past one machine. Answers/s and p99 of
``GET /v1/users/{id}/recommendations`` (random known visitors, wrk) for

- a bare FastAPI "hello" endpoint, the ceiling, served the same way in the same run;
- ``retailrec serve``, 1 worker, on SQLite;
- 1 worker on PostgreSQL;
- ``--workers 2`` on PostgreSQL;

then event ingest into each backend, through ``POST /v1/events`` (batches of 100 new events)
and through the store's bulk append (the ETL's path), and the latency of one visitor's history
read (the serving hot path's query) on each backend. Target (issue 19): p99 <= 2 ms for the
history read on PostgreSQL.

    python bench/bench_replicas.py [--scale small] [--seconds 15] [--data DIR]

Needs ``wrk`` and PostgreSQL 15's binaries (a throwaway server is started in a temporary folder,
as tests/utils/postgres.py does). Without ``--data`` a pipeline runs first (synth, etl, train,
promote) into a temporary folder; its store is then copied to PostgreSQL with
``retailrec store migrate``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg

from _util import report, retailrec
from bench_api import HELLO, LUA, _rss_mib, _wait, _wrk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.utils.postgres import postgres_server  # the repository's test helper

#: wrk posts batches of 100 new events, each request its own visitors (a counter in the script).
EVENTS_LUA = """
local n = 0
request = function()
  n = n + 1
  local events = {}
  for i = 1, 100 do
    events[i] = string.format(
      '{"timestamp": %d, "visitorid": %d, "event": "view", "itemid": %d}',
      CLOCK - (n * 100 + i) % 86400000, 9000000000 + n, ITEMS[(n + i) % #ITEMS + 1])
  end
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"},
    '{"events": [' .. table.concat(events, ",") .. ']}')
end
"""

#: hello served as ``retailrec serve`` serves the API (one listener shared by the workers).
HELLO_SERVE = """
from retailrec.cli import run_uvicorn
run_uvicorn("hello_app:app", host="127.0.0.1", port=8702, workers=%s, log_level="warning")
"""


@contextmanager
def _serving(env: dict[str, str], port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "retailrec", "serve", "--port", str(port), *args],
        env=env,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/ready")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _settle(pg_url: str) -> None:
    """Vacuum and analyse before measuring: autovacuum would otherwise do it after a bulk copy
    or the ingest runs, while the next measurement runs on the same two cores."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _group_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the workers of --workers)."""
    out = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout
    return sum(_rss_mib(int(p)) for p in out.split() if Path(f"/proc/{p}").exists())


def _history_reads(target: str, visitors: list[int], n: int) -> dict[str, float]:
    """p50/p99 (ms) of ``store.visitor_history`` with the serving path's limit."""
    from retailrec.feature_store import store
    from retailrec.serving.service import HISTORY_LIMIT

    rng = random.Random(0)
    with store.open_store(target) as conn:
        for v in visitors[:200]:  # warm: plans prepared, pages cached
            store.visitor_history(conn, v, limit=HISTORY_LIMIT)
        took = []
        for _ in range(n):
            v = rng.choice(visitors)
            start = time.perf_counter()
            store.visitor_history(conn, v, limit=HISTORY_LIMIT)
            took.append((time.perf_counter() - start) * 1000)
    a = np.array(took)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


def _bulk_append(target: str, rows: int) -> float:
    """Events a second that the store's bulk append (the ETL's) writes into ``target``."""
    import pandas as pd

    from retailrec.feature_store import store

    rng = np.random.default_rng(0)
    with store.open_store(target) as conn:
        clock = store.shop_clock(conn)
        assert clock is not None
        frame = pd.DataFrame(
            {
                "timestamp": clock - rng.integers(0, 86_400_000, rows),
                "visitorid": 8_000_000_000 + rng.integers(0, rows // 5, rows),
                "event": "view",
                "itemid": rng.integers(1, 1000, rows),
                "transactionid": pd.array([None] * rows, dtype="Int64"),
            }
        )
        start = time.perf_counter()
        new = store.append_events(conn, frame)
        seconds = time.perf_counter() - start
    return new / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="small")
    parser.add_argument("--models", default="popular_category,als")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reads", type=int, default=20_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    data = tmp / "data"  # a copy: the run posts events into its stores
    if args.data is None:
        retailrec(data, "pipeline", "--scale", args.scale, "--models", args.models)
    else:
        shutil.copytree(args.data, data)
    sqlite_url = f"sqlite:///{(data / 'feature_store.sqlite').resolve()}"
    base_env = {**os.environ, "RETAILREC_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    base_env.update({"RETAILREC_EVENTS_RATE_PER_S": "1e9", "RETAILREC_EVENTS_BURST": "1000000000"})

    from retailrec.feature_store import store

    with store.open_store(sqlite_url) as conn:
        visitors = sorted(set(store.read_events(conn)["visitorid"].tolist()))
        clock = store.shop_clock(conn)
        items = store.read_events(conn)["itemid"].drop_duplicates().head(1000).tolist()
    rng = random.Random(0)
    ids = tmp / "visitors.txt"
    ids.write_text("\n".join(map(str, rng.sample(visitors, min(20_000, len(visitors))))))
    script = tmp / "random_visitor.lua"
    script.write_text(LUA % ids)
    events_script = tmp / "events.lua"
    events_script.write_text(
        f"CLOCK = {clock}\nITEMS = {{{', '.join(map(str, items))}}}\n" + EVENTS_LUA
    )
    (tmp / "hello_app.py").write_text(HELLO)
    results: dict[str, object] = {"scale": args.scale, "models": args.models}

    with postgres_server() as server:
        pg_url = server.new_database()
        started = time.perf_counter()
        retailrec(data, "store", "migrate", "--to", pg_url)
        results["migrate_s"] = round(time.perf_counter() - started, 1)
        _settle(pg_url)
        ceilings = {}
        for workers in ("1", "2"):  # the ceiling of each set-up: hello served the same way
            hello = subprocess.Popen(
                [sys.executable, "-c", HELLO_SERVE % (workers,)],
                cwd=tmp,
                env=base_env,
                start_new_session=True,
            )
            try:
                _wait("http://127.0.0.1:8702/hello")
                _wrk("http://127.0.0.1:8702/hello", None, 3, args.connections, 1)
                got = _wrk("http://127.0.0.1:8702/hello", None, args.seconds, args.connections, 1)
            finally:
                os.killpg(hello.pid, signal.SIGTERM)
                hello.wait(timeout=20)
            ceilings[workers] = got
            suffix = "" if workers == "1" else f"_{workers}w"
            results[f"hello{suffix}_rps"] = got["rps"]
            results[f"hello{suffix}_p50_ms"] = got["p50_ms"]
            results[f"hello{suffix}_p99_ms"] = got["p99_ms"]
        setups = {
            "sqlite_1w": (sqlite_url, ()),
            "pg_1w": (pg_url, ()),
            "pg_2w": (pg_url, ("--workers", "2")),
        }
        for name, (url, extra) in setups.items():
            env = {**base_env, "RETAILREC_STORE_URL": url}
            with _serving(env, 8701, *extra) as proc:
                _wrk("http://127.0.0.1:8701", script, 3, args.connections, 1)  # warm-up
                got = _wrk("http://127.0.0.1:8701", script, args.seconds, args.connections, 1)
                results[f"{name}_rps"] = got["rps"]
                results[f"{name}_p50_ms"] = got["p50_ms"]
                results[f"{name}_p99_ms"] = got["p99_ms"]
                same = ceilings["2" if extra else "1"]  # hello with as many workers
                results[f"{name}_ratio_to_hello"] = round(got["rps"] / same["rps"], 3)
                results[f"{name}_non_2xx"] = got["non_2xx"]
                results[f"{name}_rss_mib"] = round(_group_rss_mib(proc.pid))
                if name != "pg_2w":
                    posted = _wrk("http://127.0.0.1:8701", events_script, args.seconds, 4, 1)
                    results[f"{name}_ingest_events_per_s"] = round(posted["rps"] * 100)
                    results[f"{name}_ingest_p99_ms"] = posted["p99_ms"]
                    results[f"{name}_ingest_non_2xx"] = posted["non_2xx"]
        _settle(pg_url)  # after the ingest runs' inserts
        for name, url in (("sqlite", sqlite_url), ("pg", pg_url)):
            reads = _history_reads(url, visitors, args.reads)
            results[f"{name}_history_p50_ms"] = round(reads["p50_ms"], 3)
            results[f"{name}_history_p99_ms"] = round(reads["p99_ms"], 3)
        for name, url in (("sqlite", sqlite_url), ("pg", pg_url)):
            results[f"{name}_bulk_append_events_per_s"] = round(_bulk_append(url, 500_000))
    shutil.rmtree(tmp, ignore_errors=True)
    report(f"replicas-{args.scale}", results)


if __name__ == "__main__":
    main()
