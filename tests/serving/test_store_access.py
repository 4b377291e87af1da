"""What serving keeps open on the feature store stays bounded however long it runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from retailrec.feature_store import store
from retailrec.serving.store_access import Connections


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
