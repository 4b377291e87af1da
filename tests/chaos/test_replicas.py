"""Several API processes over one PostgreSQL store, as replicas behind a load balancer run:
real ``retailrec serve`` processes, a real server, real faults.

- An event posted to one replica changes the next answer of the other.
- ``kill -9`` of one under load: the other keeps answering, no acknowledged event is lost.
- PostgreSQL restarted under load: 503 with a reason during the outage, recovery without help.
- A reload under load fails no request, and reaches the other replica (and every worker of
  ``serve --workers 2``) through the store's announcement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from retailrec.config import Settings
from retailrec.feature_store import store
from tests.utils import postgres
from tests.utils.factories import Shop, loaded_settings
from tests.utils.server import free_port, wait_until_up

pytestmark = pytest.mark.integration
KEY = "replica-test-key"


@dataclass
class Cluster:
    settings: Settings
    server: postgres.PostgresServer
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "RETAILREC_DATA_DIR": str(self.settings.data_dir),
            "RETAILREC_STORE_URL": self.url,
            "RETAILREC_API_KEY": KEY,
            "RETAILREC_RELOAD_POLL_S": "0.5",
            "RETAILREC_EVENTS_RATE_PER_S": "1e9",
            "RETAILREC_EVENTS_BURST": "1000000000",
            **extra,
        }

    def run(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "retailrec", *args],
            env=self.env(),
            capture_output=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]

    @contextmanager
    def replica(self, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "retailrec", "serve", "--port", str(port), *args],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/ready", proc, timeout=120)
            yield proc, base
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> Iterator[Cluster]:
    """A PostgreSQL server of this module's own (a test restarts it), the tiny shop loaded into
    it, versions 1 (popularity) and 2 (popularity by category) promoted one after the other:
    both approved by the gate, version 2 the champion."""
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL 15 is not installed (initdb, pg_ctl)")
    with postgres.postgres_server() as server:
        url = server.new_database()
        root = tmp_path_factory.mktemp("replicas")
        settings = loaded_settings(root, tiny_shop, store_url=url)
        made = Cluster(settings, server, url)
        made.run("train", "--models", "popular")
        made.run("promote")
        made.run("train", "--models", "popular_category")
        made.run("promote")
        yield made


def _request(
    url: str, body: dict[str, Any] | None = None, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # loopback only
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def _recommend(base: str, visitor: int, **query: str) -> tuple[int, Any]:
    params = "&".join(f"{k}={v}" for k, v in {"k": "10", **query}.items())
    return _request(f"{base}/v1/users/{visitor}/recommendations?{params}")


def _clock(cluster: Cluster) -> int:
    with store.open_store(cluster.url) as conn:
        clock = store.shop_clock(conn)
    assert clock is not None
    return clock


class Load:
    """Threads that call ``hit()`` until stopped, keeping every status they got."""

    def __init__(self, hit: Callable[[int, int], int], threads: int = 4) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._hit = hit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(threads)]

    def _run(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                status = self._hit(worker, n)
            except OSError as exc:  # refused, reset: the process is gone
                with self._lock:
                    self.errors.append(type(exc).__name__)
                time.sleep(0.05)
                continue
            with self._lock:
                self.statuses[status] += 1
            n += 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_an_event_posted_to_one_replica_changes_the_other_ones_next_answer(
    cluster: Cluster,
) -> None:
    visitor = 2 * 10**9
    with cluster.replica() as (_a, a), cluster.replica() as (_b, b):
        status, before = _recommend(b, visitor, exclude_seen="true")
        assert status == 200
        first = before["items"][0]["item_id"]
        event = {"timestamp": _clock(cluster), "visitorid": visitor, "event": "view"}
        status, posted = _request(f"{a}/v1/events", {"events": [{**event, "itemid": first}]})
        assert (status, posted["accepted"]) == (200, 1)
        status, after = _recommend(b, visitor, exclude_seen="true")
        assert status == 200
        assert first not in [i["item_id"] for i in after["items"]]  # B read A's fresh event


def test_kill_9_of_one_replica_under_load_loses_nothing_and_the_other_answers(
    cluster: Cluster,
) -> None:
    clock = _clock(cluster)
    acknowledged: list[dict[str, int | str]] = []
    lock = threading.Lock()
    with cluster.replica() as (proc_a, a), cluster.replica() as (_b, b):

        def post(worker: int, n: int) -> int:
            batch = [
                {
                    "timestamp": clock - 10 * n - i,
                    "visitorid": 3 * 10**9 + worker,
                    "event": "view",
                    "itemid": 1 + (n + i) % 40,
                }
                for i in range(5)
            ]
            status, _ = _request(f"{a}/v1/events", {"events": batch})
            if status == 200:
                with lock:
                    acknowledged.extend(batch)
            return status

        def read(worker: int, n: int) -> int:
            return _recommend(b, 3 * 10**9 + (n + worker) % 4)[0]

        with Load(post) as posting, Load(read) as reading:
            time.sleep(2.0)
            os.killpg(proc_a.pid, signal.SIGKILL)
            proc_a.wait(timeout=30)
            served_before = reading.statuses[200]
            time.sleep(2.0)
        assert reading.statuses[200] > served_before > 0, "B stopped answering when A died"
        assert set(reading.statuses) == {200} and reading.errors == []
        assert posting.statuses[200] > 10 and set(posting.statuses) == {200}
    with store.open_store(cluster.url) as conn:
        stored = set(
            conn.execute(
                "SELECT timestamp, visitorid, itemid FROM events WHERE visitorid >= ?",
                (3 * 10**9,),
            ).fetchall()
        )
    lost = [e for e in acknowledged if (e["timestamp"], e["visitorid"], e["itemid"]) not in stored]
    assert len(acknowledged) > 50 and lost == []


def test_a_postgresql_restart_under_load_is_a_503_with_a_reason_then_recovers(
    cluster: Cluster,
) -> None:
    clock = _clock(cluster)
    with cluster.replica() as (_a, a):
        details: list[str] = []

        def mixed(worker: int, n: int) -> int:
            if n % 2:
                event = {"timestamp": clock - n, "visitorid": 4 * 10**9 + worker, "itemid": 3}
                status, body = _request(f"{a}/v1/events", {"events": [{**event, "event": "view"}]})
            else:
                status, body = _recommend(a, 4 * 10**9 + worker)
            if status == 503:
                details.append(str(body["detail"]))
            return status

        with Load(mixed) as load:
            time.sleep(1.0)
            cluster.server.stop("fast")
            time.sleep(2.0)
            during = dict(load.statuses)
            status, ready = _request(f"{a}/ready")
            assert status == 503 and ready["store_writable"] is False and ready["store_error"]
            cluster.server.start()
            deadline = time.time() + 30
            while time.time() < deadline:
                time.sleep(0.5)
                if _recommend(a, 4 * 10**9)[0] == 200 and _request(f"{a}/ready")[0] == 200:
                    break
            recovered_at = dict(load.statuses)
            time.sleep(1.5)
        assert load.statuses[503] > 0 and details, during
        assert all("feature store" in d for d in details), details[:3]
        assert set(load.statuses) <= {200, 503}, load.statuses  # never a 500
        assert load.statuses[200] > recovered_at.get(200, 0), "no answers after the restart"
        assert _request(f"{a}/ready")[0] == 200


def _versions(base: str, n: int) -> set[str]:
    """The versions that ``n`` requests, eight at a time on new connections, were answered
    with: concurrent connections reach every worker of a ``serve --workers`` process."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = pool.map(lambda _: _request(f"{base}/v1/model")[1]["version"], range(n))
        return {str(v) for v in got}


def test_a_reload_under_load_fails_no_request_and_reaches_the_other_replica(
    cluster: Cluster,
) -> None:
    with cluster.replica() as (_a, a), cluster.replica() as (_b, b):
        assert _versions(a, 1) == _versions(b, 1) == {"2"}

        def read(worker: int, n: int) -> int:
            return _recommend(a if worker % 2 else b, n % 500)[0]

        with Load(read) as load:
            time.sleep(0.5)
            status, body = _request(f"{a}/v1/admin/reload?version=1", {}, key=KEY)
            assert status == 200, body
            assert body["version"] == "1" and body["announced"] is True
            deadline = time.time() + 20
            while _versions(b, 1) != {"1"} and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
        assert _versions(b, 3) == {"1"}, "the other replica did not follow the reload"
        assert set(load.statuses) == {200} and load.errors == [], load.statuses
        status, _ = _request(f"{a}/v1/admin/reload", {}, key=KEY)  # the champion again
        assert status == 200


def test_a_reload_reaches_every_worker_of_serve_workers_2(cluster: Cluster) -> None:
    with cluster.replica("--workers", "2") as (proc, base):
        workers = subprocess.run(
            ["pgrep", "-g", str(proc.pid), "-f", "multiprocessing"],
            capture_output=True,
            check=False,
            text=True,
        ).stdout.split()
        assert len(workers) >= 2, "serve --workers 2 did not start two workers"
        assert _versions(base, 20) == {"2"}
        status, body = _request(f"{base}/v1/admin/reload?version=1", {}, key=KEY)
        assert status == 200 and body["announced"] is True, body
        deadline = time.time() + 20
        while _versions(base, 20) != {"1"} and time.time() < deadline:
            time.sleep(0.3)
        assert _versions(base, 40) == {"1"}  # whichever worker answers
        _request(f"{base}/v1/admin/reload", {}, key=KEY)
