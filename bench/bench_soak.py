"""Soak: ``retailrec serve`` under mixed reads, event writes and reloads for a long while.

Readers ask for visitors' recommendations, similar items, sessions and popular items; writers post
batches of events at the shop's clock; an admin reloads the champion every 30 s. Every 10 s the
server's resident memory and open files are sampled. At the end: no error answers, no
acknowledged event missing from the store, ``PRAGMA integrity_check`` ok, the champion loadable,
and whether memory or open files grew.

    python bench/bench_soak.py [--minutes 10] [--scale tiny] [--data DIR]

Without ``--data`` a pipeline is run first into a temporary folder (synth, etl, train, promote).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _util import report, retailrec

KEY = "soak-key"


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if data is not None or headers else "GET",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # loopback only
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # refused, reset or timed out: counted as status 0, an error
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--models", default="popular_category,itemknn_bm25")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    data = args.data or tmp / "data"
    if args.data is None:
        retailrec(data, "pipeline", "--scale", args.scale, "--models", args.models)
    db = sqlite3.connect(data / "feature_store.sqlite")
    visitors = [r[0] for r in db.execute("SELECT DISTINCT visitorid FROM events LIMIT 5000")]
    items = [r[0] for r in db.execute("SELECT DISTINCT itemid FROM events LIMIT 5000")]
    (clock,) = db.execute("SELECT newest_ms FROM shop_clock").fetchone()
    db.close()
    env = {
        **os.environ,
        "RETAILREC_DATA_DIR": str(data),
        "RETAILREC_API_KEY": KEY,
        "OPENBLAS_NUM_THREADS": "1",
    }
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "retailrec", "serve", "--port", str(port)],
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while _call(f"{base}/ready") != 200:
        if time.time() > deadline or server.poll() is not None:
            os.killpg(server.pid, signal.SIGTERM)
            raise SystemExit("the server did not come up")
        time.sleep(0.5)

    stop = threading.Event()
    statuses: Counter[str] = Counter()
    acknowledged: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def count(kind: str, status: int) -> None:
        with lock:
            statuses[f"{kind} {status}"] += 1

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            pick = rng.random()
            if pick < 0.6:
                status = _call(f"{base}/v1/users/{rng.choice(visitors)}/recommendations?k=10")
                count("user", status)
            elif pick < 0.75:
                count("similar", _call(f"{base}/v1/items/{rng.choice(items)}/similar?k=10"))
            elif pick < 0.9:
                body = {"item_ids": rng.sample(items, 3), "k": 10}
                count("session", _call(f"{base}/v1/sessions/recommendations", body))
            else:
                count("popular", _call(f"{base}/v1/popular?k=10&days=7"))

    def writer(worker: int) -> None:
        rng, n = random.Random(1000 + worker), 0
        while not stop.is_set():
            batch = [
                (clock - n - i, 9 * 10**12 + worker * 10**6 + n, rng.choice(items))
                for i in range(rng.randint(5, 50))
            ]
            n += len(batch)
            body = {
                "events": [
                    {"timestamp": t, "visitorid": v, "event": "view", "itemid": it}
                    for t, v, it in batch
                ]
            }
            status = _call(f"{base}/v1/events", body)
            count("events", status)
            if status == 200:
                with lock:
                    acknowledged.extend(batch)
            time.sleep(0.05)

    def reloader() -> None:
        while not stop.wait(30):
            count("reload", _call(f"{base}/v1/admin/reload", headers={"X-API-Key": KEY}))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(args.readers)]
    threads += [threading.Thread(target=writer, args=(w,)) for w in range(args.writers)]
    threads.append(threading.Thread(target=reloader))
    samples: list[dict[str, float]] = []
    started = time.time()
    for t in threads:
        t.start()
    try:
        while time.time() - started < args.minutes * 60:
            with lock:
                done = sum(statuses.values())
            samples.append(
                {
                    "s": round(time.time() - started),
                    "rss_mib": round(_rss_mib(server.pid), 1),
                    "open_files": _open_files(server.pid),
                    "requests": done,
                }
            )
            print(json.dumps(samples[-1]), flush=True)
            time.sleep(10)
        stop.set()
        for t in threads:
            t.join(timeout=90)
        samples.append(
            {
                "s": round(time.time() - started),
                "rss_mib": round(_rss_mib(server.pid), 1),
                "open_files": _open_files(server.pid),
                "requests": sum(statuses.values()),
            }
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    conn = sqlite3.connect(data / "feature_store.sqlite")
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    stored = set(
        conn.execute(
            "SELECT timestamp, visitorid, itemid FROM events WHERE visitorid >= ?", (9 * 10**12,)
        ).fetchall()
    )
    conn.close()
    lost = sum(1 for e in acknowledged if e not in stored)
    errors = sum(n for k, n in statuses.items() if not k.endswith(" 200"))
    if args.data is None:
        shutil.rmtree(tmp, ignore_errors=True)
    # Growth: the last third against the first third (after a minute of warm-up).
    warm = [s for s in samples if s["s"] >= 60] or samples
    third = max(1, len(warm) // 3)
    report(
        f"soak-{args.scale}",
        {
            "minutes": args.minutes,
            "scale": args.scale,
            "requests": int(sum(statuses.values())),
            "by_kind": dict(sorted(statuses.items())),
            "errors": errors,
            "events_acknowledged": len(acknowledged),
            "events_lost": lost,
            "integrity_check": integrity,
            "rss_mib_start_end": [samples[0]["rss_mib"], samples[-1]["rss_mib"]],
            "rss_mib_warm_first_last_third": [
                round(sum(s["rss_mib"] for s in warm[:third]) / third, 1),
                round(sum(s["rss_mib"] for s in warm[-third:]) / third, 1),
            ],
            "open_files_start_end": [samples[0]["open_files"], samples[-1]["open_files"]],
            "open_files_max": max(s["open_files"] for s in samples),
        },
    )
    if errors or lost or integrity != "ok":
        raise SystemExit("soak: errors, lost events or a damaged store (see above)")


if __name__ == "__main__":
    main()
