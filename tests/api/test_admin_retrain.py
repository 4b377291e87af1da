"""POST /v1/admin/retrain: retraining beside the API, for schedulers without the data disk."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from retailrec import registry
from retailrec.api.main import create_app
from retailrec.cli import app as cli
from retailrec.config import Settings, get_settings
from retailrec.serving.holder import ModelHolder
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop, loaded_settings
from tests.utils.server import serving

KEY = "retrain-key"
pytestmark = pytest.mark.integration


@pytest.fixture
def weak_champion(tmp_path: Path, tiny_drift_shop: Shop) -> Settings:
    """A weak champion (plain item-kNN: on this shop, below the served popularity models)."""
    settings = loaded_settings(tmp_path, tiny_drift_shop, api_key=KEY)
    train(settings, TrainConfig(models=("itemknn_bm25",)))
    assert registry.promote(registry.configure(settings), settings.model_name).promoted
    return settings


def _wait(client: TestClient, timeout: float = 300) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get("/v1/admin/retrain", headers={"X-API-Key": KEY}).json()
        if not status["running"]:
            return dict(status)
        time.sleep(0.5)
    raise AssertionError("the retraining run did not end")


def test_retrain_runs_beside_the_api_and_serves_a_better_model(
    weak_champion: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    load = ModelHolder.load

    def slow_load(self: ModelHolder, version: str | None = None) -> object:  # a big model
        time.sleep(1.5)  # takes a while to swap in
        return load(self, version)

    monkeypatch.setattr(ModelHolder, "load", slow_load)
    with TestClient(create_app(weak_champion)) as client:
        assert client.post("/v1/admin/retrain").status_code == 401
        assert client.post("/v1/admin/retrain", headers={"X-API-Key": "no"}).status_code == 403
        bad = client.post("/v1/admin/retrain?models=a;b", headers={"X-API-Key": KEY})
        assert bad.status_code == 422
        started = client.post(
            "/v1/admin/retrain?models=popular_category", headers={"X-API-Key": KEY}
        )
        assert started.status_code == 202 and started.json()["started"]
        again = client.post("/v1/admin/retrain", headers={"X-API-Key": KEY})
        assert again.status_code == 409  # one run at a time
        status = _wait(client)  # "not running" only once the outcome is recorded
        last = status["last"]
        assert isinstance(last, dict) and last["exit_code"] == 0, last
        # Served, popular_category beats the item-kNN champion on the drifted weeks.
        assert last["retrain"]["promoted"], last
        assert last["reloaded"] == "2"
        assert client.get("/v1/model").json()["version"] == "2"  # served without a reload call
        log = weak_champion.reports_dir / f"retrain-{started.json()['started_ms']}.log"
        assert "promoted" in log.read_text()


def test_a_run_that_does_not_beat_the_champion_changes_nothing(
    weak_champion: Settings,
) -> None:
    with TestClient(create_app(weak_champion)) as client:
        assert (
            client.post(
                "/v1/admin/retrain?models=itemknn_bm25", headers={"X-API-Key": KEY}
            ).status_code
            == 202
        )
        last = _wait(client)["last"]
        assert isinstance(last, dict) and not last["retrain"]["promoted"]
        assert "reloaded" not in last
        assert client.get("/v1/model").json()["version"] == "1"


def test_monitor_remote_asks_the_api(
    weak_champion: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(weak_champion.data_dir))
    monkeypatch.setenv("RETAILREC_STORE_URL", weak_champion.feature_store)
    get_settings.cache_clear()
    alone = runner.invoke(cli, ["monitor", "--remote"])
    assert alone.exit_code == 1 and "RETAILREC_API_URL is not set" in alone.output
    with serving(weak_champion) as base:
        monkeypatch.setenv("RETAILREC_API_URL", base.removeprefix("http://"))  # host:port works
        monkeypatch.setenv("RETAILREC_API_KEY", KEY)
        get_settings.cache_clear()
        asked = runner.invoke(cli, ["monitor", "--remote", "--models", "popular"])
        assert asked.exit_code == 0, asked.output
        assert "the API started a retraining run" in asked.output
        busy = runner.invoke(cli, ["monitor", "--remote"])
        assert busy.exit_code == 1 and "409" in busy.output


def test_a_failed_run_reports_its_exit_code_not_an_older_report(
    weak_champion: Settings,
) -> None:
    from retailrec.monitoring.monitor import run_monitor

    run_monitor(weak_champion)  # an earlier report, without retraining
    with TestClient(create_app(weak_champion)) as client:
        started = client.post("/v1/admin/retrain?models=no_such_model", headers={"X-API-Key": KEY})
        assert started.status_code == 202
        last = _wait(client)["last"]
        assert isinstance(last, dict) and last["exit_code"] == 1
        assert "retrain" not in last and "reloaded" not in last
        log = weak_champion.reports_dir / f"retrain-{started.json()['started_ms']}.log"
        assert "unknown model(s) no_such_model" in log.read_text()
        assert client.get("/v1/model").json()["version"] == "1"
