"""Shared fixtures: tiny synthetic shops made on the fly, and the real sample when present."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retailrec.config import get_settings
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


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data directory and fresh settings."""
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
