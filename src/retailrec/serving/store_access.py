"""What serving keeps open on the feature store: a connection per worker thread, the log of
served answers written from a background thread, whether the store takes writes, and the
watcher that makes every worker and replica follow a reload made on any one of them."""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retailrec.errors import error_line
from retailrec.feature_store import store
from retailrec.feature_store.postgres import PgConnection

log = logging.getLogger(__name__)


def _broken(conn: store.Connection | None) -> bool:
    """Whether ``conn`` is a PostgreSQL session that broke (its server restarted or went away):
    it must be closed and opened again. A SQLite connection never breaks so."""
    return isinstance(conn, PgConnection) and conn.closed


class Connections:
    """One store connection per worker thread (a connection serves one thread at a time).

    Worker threads come and go (AnyIO retires one idle for 10 s and starts another later): a
    connection whose thread has ended is closed as soon as the next one is opened, so that open
    files and memory stay bounded by the live threads however long the server runs.
    """

    def __init__(self, target: Path | str) -> None:
        self.target = target
        path = store.sqlite_path(target)
        #: The SQLite file, whose disk may fill up; None on PostgreSQL (the server's own).
        self.disk = None if path in (None, ":memory:") else Path(path)
        self._local = threading.local()
        self._open: list[tuple[threading.Thread, store.Connection]] = []
        self._lock = threading.Lock()
        self._generation = 0

    def get(self) -> store.Connection:
        """This thread's connection, opened when it has none, or when its PostgreSQL session
        broke (a restarted or unreachable server): the next request after an outage reconnects.

        Raises:
            StoreError: the store cannot be opened now (the server is down).
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None and _broken(conn):
            with self._lock:
                self._open = [(t, c) for t, c in self._open if c is not conn]
            conn.close()  # releases what is left of the broken session
            conn = None
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            # Opened for any thread to close: the reaper and close() run on other threads.
            conn = store.connect(self.target, check_same_thread=False)
            self._local.conn, self._local.generation = conn, self._generation
            with self._lock:
                for thread, ended in [(t, c) for t, c in self._open if not t.is_alive()]:
                    ended.close()
                    self._open.remove((thread, ended))
                self._open.append((threading.current_thread(), conn))
        return conn

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    def close(self) -> None:
        """Close every connection; threads open fresh ones if the app starts again."""
        with self._lock:
            self._generation += 1
            for _thread, conn in self._open:
                conn.close()
            self._open.clear()


#: Free space below which the store's disk counts as full (a batch of 1,000 events, its WAL
#: frames and the served log's rows need a few hundred KiB).
MIN_FREE_BYTES = 1 << 20


def _disk_full(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        fs = os.statvfs(path.parent)
    except OSError as exc:
        return error_line(exc)
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        return f"the store's disk is full ({free // 1024} KiB free)"
    return None


class StoreHealth:
    """Whether the feature store takes writes, as serving last saw it.

    A failed write (an event batch, the served log) marks it unhealthy at once; :meth:`check`
    (for ``/ready``) then proves or disproves it with a probe write, at most every ``probe_s``
    seconds, so that a store that recovers is ready again without waiting for traffic.
    """

    def __init__(self, probe_s: float = 5.0) -> None:
        self.probe_s = probe_s
        self.reason: str | None = None
        self._probed = -float("inf")
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> str:
        """Record a failed write; returns its reason."""
        self.reason = error_line(exc)
        self._probed = -float("inf")  # the next check probes at once
        return self.reason

    def check(self, conn: store.Connection, path: Path | None = None) -> str | None:
        """None when the store takes writes, else why not. With the store's ``path``, a disk
        with less than :data:`MIN_FREE_BYTES` free counts as full: a probe's one small row may
        still fit where a batch of events no longer does."""
        with self._lock:
            if time.monotonic() - self._probed >= self.probe_s:
                self._probed = time.monotonic()
                self.reason = store.probe_write(conn) or _disk_full(path)
            return self.reason


class ServedLog:
    """Writes served recommendations to the store from a background thread, in batches.

    The request path appends a tuple to a deque (atomic, no lock, no wake-up); the writer thread
    wakes every ``flush_s`` and writes whatever has gathered, so serving never waits on SQLite and
    never trades the GIL with the writer on every request. At most ``max_pending`` rows wait;
    beyond that rows are dropped and counted (``dropped``), never blocking an answer.
    """

    def __init__(
        self,
        target: Path | str,
        flush_s: float = 0.5,
        max_pending: int = 100_000,
        health: StoreHealth | None = None,
    ) -> None:
        self.target = target
        self.health = health or StoreHealth()
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

    def flush(self, conn: store.Connection) -> int:
        """Write what has gathered; returns the number of rows."""
        batch = []
        while self.pending:
            row = self.pending.popleft()
            batch.append((*row[:6], json.dumps(row[6]), row[7]))
        if batch:
            try:
                store.log_served(conn, batch)
            except store.DATABASE_ERRORS as exc:  # counted as dropped: the metric says so
                self.dropped += len(batch)
                log.error(
                    "could not log %d served recommendations: %s",
                    len(batch),
                    self.health.failed(exc),
                )
        return len(batch)

    def _run(self) -> None:
        conn: store.Connection | None = None
        try:
            while not self._stop.wait(self.flush_s):
                conn = self._flush_on(conn)
            conn = self._flush_on(conn)
        finally:
            if conn is not None:
                conn.close()

    def _flush_on(self, conn: store.Connection | None) -> store.Connection | None:
        """Flush on ``conn``, opened (again) when there is none or its session broke; returns
        the connection to use next time. While the store cannot be opened, what gathered is
        dropped and counted, as a failed write is."""
        if conn is not None and _broken(conn):
            conn.close()
            conn = None
        if conn is None:
            try:
                conn = store.connect(self.target)
            except store.UNAVAILABLE as exc:
                lost = 0
                while self.pending:  # one at a time: requests go on appending meanwhile
                    self.pending.popleft()
                    lost += 1
                if lost:
                    self.dropped += lost
                    reason = self.health.failed(exc)
                    log.error("could not log %d served recommendations: %s", lost, reason)
                return None
        self.flush(conn)
        return conn

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)


class ReloadWatcher:
    """Follows the model announced in the store (:func:`store.announce_model`): a reload on any
    API process (a worker of ``serve --workers``, or a replica on another machine sharing one
    PostgreSQL store) is announced there, and every process's watcher loads the same version
    within ``poll_s``, swapping it in as a local reload does (no request is dropped).

    An announcement made before the process started is history: a process starts on the
    champion, as it always has. A version that fails to load is logged and tried again at the
    next announcement; the process keeps serving what it has.
    """

    def __init__(
        self,
        target: Path | str,
        load: Callable[[str], object],
        current: Callable[[], str | None],
        poll_s: float = 2.0,
    ) -> None:
        self.target = target
        self.load = load
        self.current = current
        self.poll_s = poll_s
        self.seen: int | None = None
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with store.open_store(self.target) as conn:
            self.seen = store.announced_model(conn)[0]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="reload-watcher", daemon=True)
        self._thread.start()

    def poll(self, conn: store.Connection) -> bool:
        """Load the announced version if it is new to this process; True when one was loaded."""
        generation, version = store.announced_model(conn)
        if self.seen is not None and generation <= self.seen:
            return False
        self.seen = generation
        if version is None or version == self.current():
            return False
        try:
            self.load(version)
        except Exception as exc:  # keep serving what we have; the next announcement retries
            self.failures += 1
            log.error("could not follow the reload to version %s: %s", version, error_line(exc))
            return False
        log.info("followed a reload to version %s (announcement %d)", version, generation)
        return True

    def _run(self) -> None:
        conn: store.Connection | None = None
        while not self._stop.wait(self.poll_s):
            try:
                if conn is None:
                    conn = store.connect(self.target)
                self.poll(conn)
            except store.UNAVAILABLE as exc:  # the store is away: retry
                log.warning("reload watcher: %s", error_line(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=10)


def announce(connections: Connections, version: str) -> bool:
    """Announce ``version`` for every process to serve; False (logged) when the store cannot
    take it, in which case this process alone has reloaded."""
    try:
        store.announce_model(connections.get(), version)
    except store.UNAVAILABLE as exc:
        log.error(
            "reloaded version %s here, but could not announce it: %s", version, error_line(exc)
        )
        return False
    return True
