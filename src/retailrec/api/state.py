"""Process state of the API: the served model (swapped atomically), store connections, the
served-recommendations log and the Prometheus metrics."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from retailrec.api.service import Served
from retailrec.config import Settings
from retailrec.feature_store import store
from retailrec.models.bundle import ModelBundle

log = logging.getLogger(__name__)


class ModelHolder:
    """The served bundle. Requests take a reference once and keep it: a reload swaps the
    reference in one assignment, so requests in flight finish on the model they started with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: Served | None = None
        self._lock = threading.Lock()

    def load(self, version: str | None = None) -> tuple[Served, str | None]:
        """Load ``version`` (default: the champion) and swap it in; returns (new, previous version).

        Raises:
            LookupError: no champion; ValueError: the version's bundle does not load or answer.
        """
        from retailrec.training import registry

        with self._lock:  # one reload at a time; serving never waits on this lock
            client = registry.configure(self.settings)
            if version is None:
                champion = registry.champion(client, self.settings.model_name)
                if champion is None:
                    raise LookupError(
                        f"no champion for {self.settings.model_name}: run `retailrec pipeline`"
                    )
                version = str(champion.version)
            path = registry.download_bundle(client, self.settings.model_name, version)
            try:
                served = Served(ModelBundle.load(path), version)
                _smoke_test(served)
            finally:
                registry.clear_download_cache(path)
            previous = None if self.current is None else self.current.version
            self.current = served
            return served, previous

    def load_dir(self, path: Path, version: str) -> Served:
        """Serve a bundle folder directly (tests, and deployments without a registry)."""
        served = Served(ModelBundle.load(path), version)
        _smoke_test(served)
        self.current = served
        return served


def _smoke_test(served: Served) -> None:
    """A bundle must answer before it serves: one anonymous and one item request."""
    from retailrec.api.service import Rules

    if served.bundle.n_items == 0:
        raise ValueError("the bundle's catalogue is empty")
    answer = served.for_session([int(served.bundle.item_ids[0])], 3, Rules(exclude_purchased=False))
    if not answer.items:
        raise ValueError("the bundle answered nothing for a session request")


class Connections:
    """One SQLite connection per worker thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            conn = store.connect(self.path)
            self._local.conn, self._local.generation = conn, self._generation
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection; threads open fresh ones if the app starts again."""
        with self._lock:
            self._generation += 1
            for conn in self._all:
                # One created in another thread refuses: it is closed when collected.
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()


class ServedLog:
    """Writes served recommendations to the store from a background thread, in batches.

    The request path appends a tuple to a deque (atomic, no lock, no wake-up); the writer thread
    wakes every ``flush_s`` and writes whatever has gathered, so serving never waits on SQLite and
    never trades the GIL with the writer on every request. At most ``max_pending`` rows wait;
    beyond that rows are dropped and counted (``dropped``), never blocking an answer.
    """

    def __init__(self, path: Path, flush_s: float = 0.5, max_pending: int = 100_000) -> None:
        self.path = path
        self.flush_s = flush_s
        self.pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self.max_pending = max_pending
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
            self._thread.start()

    def put(
        self,
        rec_id: str,
        endpoint: str,
        visitor: int | None,
        strategy: str,
        version: str,
        items: list[int],
        latency_ms: float,
    ) -> None:
        if len(self.pending) >= self.max_pending:  # never block serving; exported as a metric
            self.dropped += 1
            return
        self.pending.append(
            (
                rec_id,
                int(time.time() * 1000),
                endpoint,
                visitor,
                strategy,
                version,
                items,
                latency_ms,
            )
        )

    def flush(self, conn: sqlite3.Connection) -> int:
        """Write what has gathered; returns the number of rows."""
        batch = []
        while self.pending:
            row = self.pending.popleft()
            batch.append((*row[:6], json.dumps(row[6]), row[7]))
        if batch:
            try:
                store.log_served(conn, batch)
            except sqlite3.Error:
                log.exception("could not log %d served recommendations", len(batch))
        return len(batch)

    def _run(self) -> None:
        conn = store.connect(self.path)
        try:
            while not self._stop.wait(self.flush_s):
                self.flush(conn)
            self.flush(conn)
        finally:
            conn.close()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)


class Metrics:
    """Prometheus metrics, on a registry of the app's own (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._route_cache: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "retailrec_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retailrec_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.strategy = Counter(
            "retailrec_recommendations_total",
            "Answers per strategy",
            ["strategy"],
            registry=self.registry,
        )
        self.model = Gauge(
            "retailrec_model_info",
            "The served model version (value 1)",
            ["version", "model"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "retailrec_served_log_dropped",
            "Served answers not logged because the log's queue was full",
            registry=self.registry,
        )
        self.events = Counter(
            "retailrec_events_total",
            "Posted events by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def for_route(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one route, looked up once per label set
        (``labels()`` takes a lock and builds a key on every call)."""
        key = (route, method, status)
        found = self._route_cache.get(key)
        if found is None:
            found = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.latency.labels(route=route),
            )
            self._route_cache[key] = found
        return found

    def set_model(self, served: Served) -> None:
        """Export which model version is being served."""
        self.model.clear()
        model = str(served.bundle.metadata.get("model", "unknown"))
        self.model.labels(version=served.version, model=model).set(1)


class Retrainer:
    """``POST /v1/admin/retrain``: runs ``retailrec monitor --retrain`` in a child process (one
    at a time, so serving keeps its memory and its GIL) and, when the run promotes a new champion,
    swaps it in. For schedulers that cannot reach the data disk themselves (a Render cron job)."""

    def __init__(self, settings: Settings, holder: ModelHolder, metrics: Metrics) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.last: dict[str, Any] | None = None
        self._started_ms: int | None = None
        self._lock = threading.Lock()
        # Set while no run is going. A run ends when its outcome is recorded (and a promoted
        # model swapped in), not when its process exits: a poller never sees "done" without it.
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    def start(self, models: str | None = None) -> int:
        """Start a run; returns its start time (ms).

        Raises:
            RuntimeError: a run is already going.
        """
        with self._lock:
            if self.running:
                raise RuntimeError(f"a retraining run started at {self._started_ms} is running")
            self._started_ms = int(time.time() * 1000)
            reports = self.settings.reports_dir
            reports.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "retailrec", "monitor", "--retrain"]
            if models:
                cmd += ["--models", models]
            env = {**os.environ, "RETAILREC_DATA_DIR": str(self.settings.data_dir)}
            env.pop("RETAILREC_API_URL", None)  # the API reloads itself when the run ends
            with (reports / f"retrain-{self._started_ms}.log").open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            self._idle.clear()
            threading.Thread(target=self._finish, args=(proc,), daemon=True).start()
            return self._started_ms

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            self.last = self._outcome(proc.wait())
        finally:
            self._idle.set()

    def _outcome(self, code: int) -> dict[str, Any]:
        result: dict[str, Any] = {"started_ms": self._started_ms, "exit_code": code}
        from retailrec.monitoring.monitor import latest_report

        report = latest_report(self.settings.reports_dir)
        payload = json.loads(report.read_text()) if report is not None else {}
        if code == 0 and payload.get("created_ms", 0) >= (self._started_ms or 0):  # this run's
            retrain = payload.get("retrain") or {}
            result |= {"report": report.name if report else None, "retrain": retrain}
            if retrain.get("promoted"):
                try:
                    served, _ = self.holder.load()
                    self.metrics.set_model(served)
                    result["reloaded"] = served.version
                except Exception as exc:  # the old model keeps serving; the status says why
                    result["reload_error"] = str(exc).splitlines()[0] if str(exc) else repr(exc)
        return result

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "started_ms": self._started_ms, "last": self.last}
