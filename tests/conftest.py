"""Shared fixtures: tiny synthetic shops made on the fly, and the real sample when present."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retailrec.config import get_settings
from tests.utils import postgres
from tests.utils.factories import Shop, make_shop

SHARED_SAMPLE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "retailrocket-sample"
    / "events.csv"
)


@pytest.fixture(scope="session")
def tiny_shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """A tiny synthetic shop (about 1% of Retailrocket) written to disk once per test session."""
    return make_shop(tmp_path_factory.mktemp("tiny_shop"), scale="tiny", seed=7)


@pytest.fixture(scope="session")
def tiny_drift_shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    """The same tiny shop with the last three weeks drifted."""
    return make_shop(tmp_path_factory.mktemp("tiny_drift_shop"), scale="tiny", seed=7, drift=True)


@pytest.fixture
def real_sample() -> Path:
    """The real 1,500-visitor Retailrocket sample in ../shared; tests skip when it is absent."""
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"real sample not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """A Spark session on ``local[2]`` for a module's tests (the commands under test find it
    active and use it); skipped where pyspark or Java is missing."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the spark engine needs Java (17)")
    from retailrec.spark import session

    running = session("local[2]")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pg_server() -> postgres.PostgresServer:
    """The test process's PostgreSQL 15 server; tests skip where it is not installed."""
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL 15 is not installed (initdb, pg_ctl)")
    return postgres.shared_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fs.sqlite'}"
    server: postgres.PostgresServer = request.getfixturevalue("pg_server")
    return server.new_database()


#: Modules with a test that opened a PostgreSQL store (one made for it or its fixtures), and
#: modules run, in a run with RETAILREC_TEST_STORE=postgresql: see pytest_terminal_summary.
_PG_MODULES: dict[str, set[str]] = {"used": set(), "ran": set()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if postgres.SUITE_BACKEND != "postgresql" or postgres.binaries() is None:
        yield
        return
    server = postgres.shared_server()
    before = len(server.created)
    yield
    module = item.nodeid.split("::")[0]
    _PG_MODULES["ran"].add(module)
    if any(postgres.migrated(url) for url in server.created[before:]):
        _PG_MODULES["used"].add(module)


@pytest.fixture(autouse=True)
def _isolated_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Every test gets its own data directory and fresh settings (and, when the suite runs on
    PostgreSQL, a database of its own)."""
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RETAILREC_STORE_URL", raising=False)
    if postgres.SUITE_BACKEND == "postgresql":
        server: postgres.PostgresServer = request.getfixturevalue("pg_server")
        monkeypatch.setenv("RETAILREC_STORE_URL", server.new_database())
    get_settings.cache_clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """On PostgreSQL, the modules that opened no store made during their own tests: candidates
    to leave out of the pass (unless they use one that an earlier module's fixture made)."""
    if postgres.SUITE_BACKEND != "postgresql":
        return
    never = sorted(_PG_MODULES["ran"] - _PG_MODULES["used"])
    terminalreporter.write_line(
        f"PostgreSQL pass: {len(_PG_MODULES['used'])} modules opened a store made for them;"
        f" {len(never)} did not{': ' if never else ''}{', '.join(never)}"
    )
