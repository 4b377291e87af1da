"""What serving keeps open on the feature store stays bounded however long it runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from retailrec.feature_store import store
from retailrec.serving.store_access import Connections, ReloadWatcher


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    """Worker threads come and go (AnyIO retires idle ones): each new one opens a connection,
    and those of threads that have ended are closed, not kept for ever."""
    path = tmp_path / "fs.sqlite"
    store.connect(path).close()
    connections = Connections(path)
    connections.get()  # this thread's, which stays

    def worker() -> None:
        assert connections.get().execute("SELECT count(*) FROM events").fetchone() == (0,)

    before = _fds()
    for _ in range(60):  # one short-lived thread after another, as a thread pool turns over
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert connections.count <= 2  # this thread's and the last worker's at most
    assert _fds() <= before + 3  # a connection holds the database and its WAL open
    connections.close()
    assert connections.count == 0
    assert connections.get().execute("SELECT 1").fetchone() == (1,)  # opens afresh
    connections.close()


def test_the_reload_watcher_follows_announcements_made_after_it_started(store_url: str) -> None:
    """What another process announces is loaded here; what was announced before this process
    started, what it serves already, and a version that fails to load are not (the last is
    counted and the watcher goes on)."""
    with store.open_store(store_url) as conn:
        store.announce_model(conn, "1")  # before this process: history
        loaded: list[str] = []
        serving = {"version": "2"}

        def load(version: str) -> None:
            if version == "broken":
                raise RuntimeError("the bundle does not load")
            loaded.append(version)
            serving["version"] = version

        watcher = ReloadWatcher(store_url, load, lambda: serving["version"], poll_s=3600)
        watcher.start()
        try:
            assert watcher.poll(conn) is False and loaded == []
            store.announce_model(conn, "3")
            assert watcher.poll(conn) is True and loaded == ["3"]
            assert watcher.poll(conn) is False  # the same announcement once only
            store.announce_model(conn, "3")  # what it serves already: nothing to do
            assert watcher.poll(conn) is False and loaded == ["3"]
            store.announce_model(conn, "broken")
            assert watcher.poll(conn) is False and watcher.failures == 1
            assert serving["version"] == "3"  # it keeps serving what it had
            store.announce_model(conn, "4")
            assert watcher.poll(conn) is True and loaded == ["3", "4"]
        finally:
            watcher.stop()


def test_the_reload_watcher_polls_on_its_own(store_url: str) -> None:
    store.connect(store_url).close()
    followed = threading.Event()
    watcher = ReloadWatcher(store_url, lambda _v: followed.set(), lambda: "1", poll_s=0.05)
    watcher.start()
    try:
        with store.open_store(store_url) as conn:
            store.announce_model(conn, "2")
        assert followed.wait(10)
    finally:
        watcher.stop()
