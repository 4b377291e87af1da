"""A throwaway PostgreSQL 15 server for tests and benchmarks, from the Debian binaries.

``initdb`` and ``pg_ctl`` run in a fresh temporary folder on a free port; as the ``postgres``
user when the caller is root (the server refuses to run as root). Each test gets a database of
its own (:meth:`PostgresServer.new_database`), so tests never see each other's rows.

``RETAILREC_TEST_STORE=postgresql`` runs the suite with its stores on PostgreSQL: every test's
settings, and every fixture's shop (:func:`suite_store`), get a database of one server shared by
the whole test process (:func:`shared_server`).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

BIN_DIRS = [Path("/usr/lib/postgresql/15/bin")]
#: The backend the suite's stores are on: ``sqlite`` (the default) or ``postgresql``.
SUITE_BACKEND = os.environ.get("RETAILREC_TEST_STORE", "sqlite")


def binaries() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl`` (15 first, as Debian installs it; else the
    newest installed), or None where PostgreSQL is not installed."""
    others = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name)
    for folder in [*BIN_DIRS, *reversed(others)]:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server: :meth:`start`, :meth:`stop` (fast or immediate), :meth:`url` of a database."""

    def __init__(self, folder: Path | None = None, port: int | None = None) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL 15 is not installed (initdb, pg_ctl)")
        self.bin = bin_dir
        self.root = folder or Path(tempfile.mkdtemp(prefix="retailrec-pg-"))
        self.data = self.root / "data"
        self.port = port or _free_port()
        self._as_root = os.geteuid() == 0
        self._names = itertools.count()
        self.created: list[str] = []  # the URL of every database made, in order
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, encoding: str = "UTF8") -> str:
        """A fresh, empty database in ``encoding``; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(
                f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0"  # type: ignore[arg-type]
            )
        self.created.append(self.url(name))
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def migrated(url: str) -> bool:
    """Whether the database at ``url`` holds the store's schema (something opened it)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('retailrec_schema')").fetchone()
    return row is not None and row[0] is not None


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, stopped and removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


_shared: list[PostgresServer] = []


def shared_server() -> PostgresServer:
    """One server for the whole test process: started on first use, removed when it exits."""
    if not _shared:
        server = PostgresServer()
        server.start()
        atexit.register(server.remove)
        _shared.append(server)
    return _shared[0]


def suite_store() -> str | None:
    """A fresh, empty store on the suite's backend, for a fixture's shop: a new database when
    the suite runs on PostgreSQL, else None (the SQLite file in the shop's data dir)."""
    return shared_server().new_database() if SUITE_BACKEND == "postgresql" else None
