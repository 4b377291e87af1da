"""``retailrec monitor``: reports, exit codes, the schedule, and retraining through the gate."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retailrec import registry
from retailrec.cli import app
from retailrec.config import Settings, get_settings
from retailrec.errors import UsageError
from retailrec.monitoring import monitor as mon
from retailrec.reports import latest_path
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop, loaded_settings, make_shop
from tests.utils.server import get_json, serving

runner = CliRunner()
KEY = "monitor-key"


@pytest.fixture(scope="module")
def small_drift(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return make_shop(tmp_path_factory.mktemp("small_drift"), scale="small", seed=0, drift=True)


def _use(settings: Settings, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RETAILREC_STORE_URL", settings.feature_store)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.mark.integration
def test_monitor_writes_reports_and_fails_on_drift(
    tmp_path: Path, small_drift: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loaded_settings(tmp_path, small_drift)
    _use(settings, monkeypatch)
    plain = runner.invoke(app, ["monitor"])
    assert plain.exit_code == 0, plain.output
    assert "DRIFT" in plain.output and "cart_rate" in plain.output
    flagged = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert flagged.exit_code == mon.EXIT_DRIFT
    reports = sorted(settings.reports_dir.glob("drift-*.json"))
    assert len(reports) == 2
    payload = json.loads(reports[-1].read_text())
    assert payload["drift"]["drifted"]
    assert "cart_rate" in payload["drift"]["drifted_signals"]
    assert payload["online"] == {"requests": 0}
    assert sum(sum(day.values()) for day in payload["daily"].values()) >= (
        payload["drift"]["reference_events"] + payload["drift"]["current_events"]
    )
    page = reports[-1].with_suffix(".html").read_text()
    assert payload["drift"]["verdict"] in page
    assert '<script src="plotly.min.js"></script>' in page and "Plotly.newPlot" in page
    assert (settings.reports_dir / "plotly.min.js").stat().st_size > 1_000_000
    assert latest_path(settings.reports_dir, "drift") == reports[-1]


@pytest.mark.integration
def test_monitor_passes_a_steady_shop(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(loaded_settings(tmp_path, tiny_shop), monkeypatch)
    result = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert result.exit_code == 0, result.output
    assert "no drift" in result.output


def test_monitor_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    both = runner.invoke(app, ["monitor", "--every", "1h", "--fail-on-drift"])
    assert both.exit_code == 2
    bad = runner.invoke(app, ["monitor", "--every", "soon"])
    assert bad.exit_code == 2 and "not a positive interval" in bad.output
    empty = runner.invoke(app, ["monitor"])  # a fresh data dir: no events yet
    assert empty.exit_code == 1
    assert "run `retailrec etl` first" in empty.output
    no_champion = runner.invoke(app, ["monitor", "--reference", "champion"])
    assert no_champion.exit_code == 1 and "no champion" in no_champion.output
    assert runner.invoke(app, ["monitor", "--reference", "lastyear"]).exit_code == 2


def test_parse_interval() -> None:
    assert mon.parse_interval("90s") == 90
    assert mon.parse_interval("15m") == 900
    assert mon.parse_interval("1h") == 3600
    assert mon.parse_interval("2d") == 172_800
    assert mon.parse_interval("30") == 30
    for bad in ("0h", "-1h", "1w", "hourly"):
        with pytest.raises(UsageError, match="not a positive interval"):
            mon.parse_interval(bad)


def test_the_schedule_runs_again_and_survives_a_failing_run() -> None:
    calls: list[int] = []

    def once() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the store was locked")

    assert mon.run_every(0.01, once, max_runs=3) == 3
    assert calls == [0, 1, 2]
    stop = threading.Event()
    stop.set()
    assert mon.run_every(3600, once, stop=stop) == 0


@pytest.mark.integration
def test_monitor_every_runs_the_monitor_on_a_schedule(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    _use(settings, monkeypatch)
    result = runner.invoke(app, ["monitor", "--every", "0.1s", "--max-runs", "2"])
    assert result.exit_code == 0, result.output
    assert len(list(settings.reports_dir.glob("drift-*.json"))) == 2


@pytest.mark.integration
def test_retraining_promotes_only_a_better_model_and_the_api_serves_it(
    tmp_path: Path, tiny_drift_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = loaded_settings(tmp_path, tiny_drift_shop, api_key=KEY)
    # A weak champion: plain item-kNN is below the served popularity models on this shop.
    train(settings, TrainConfig(models=("itemknn_bm25",)))
    client = registry.configure(settings)
    assert registry.promote(client, settings.model_name).promoted
    with serving(settings) as base:
        _use(settings, monkeypatch, RETAILREC_API_URL=base, RETAILREC_API_KEY=KEY)
        assert get_json(f"{base}/v1/model")["version"] == "1"
        # The reference can be what the champion was trained on (here: up to the current week).
        by_champion = runner.invoke(app, ["monitor", "--reference", "champion"])
        assert by_champion.exit_code == 0, by_champion.output
        drift = json.loads(latest_path(settings.reports_dir, "drift").read_text())["drift"]  # type: ignore[union-attr]
        assert drift["reference_end_ms"] == drift["current_start_ms"]

        same = runner.invoke(app, ["monitor", "--retrain", "--models", "itemknn_bm25"])
        assert same.exit_code == 0, same.output
        assert "not promoted" in same.output
        assert str(registry.champion(client, settings.model_name).version) == "1"
        assert get_json(f"{base}/v1/model")["version"] == "1"

        better = runner.invoke(app, ["monitor", "--retrain", "--models", "popular_category"])
        assert better.exit_code == 0, better.output
        assert "promoted" in better.output and "API reload: status 200" in better.output, (
            better.output[-1500:]
        )
        assert str(registry.champion(client, settings.model_name).version) == "3"
        assert get_json(f"{base}/v1/model")["version"] == "3"  # served after the reload
        payload = json.loads(latest_path(settings.reports_dir, "drift").read_text())  # type: ignore[union-attr]
        assert payload["retrain"]["promoted"] and payload["retrain"]["reload"]["status"] == 200


@pytest.mark.integration
def test_fail_on_drift_fails_when_it_cannot_judge(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One event dated two months past the log leaves the current week with one event and no
    reference week: the gate says it cannot judge, and exits 4, not 0."""
    from retailrec.feature_store import store
    from tests.utils.factories import events_frame

    settings = loaded_settings(tmp_path, tiny_shop)
    _use(settings, monkeypatch)
    judged = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert judged.exit_code in (0, mon.EXIT_DRIFT), judged.output  # a real verdict either way
    with store.open_store(settings.feature_store) as conn:
        end = store.shop_clock(conn)
        assert end is not None
        store.append_events(conn, events_frame([(end + 60 * 86_400_000, 10**12, "view", 1, None)]))
    blind = runner.invoke(app, ["monitor", "--fail-on-drift"])
    assert blind.exit_code == mon.EXIT_UNJUDGED, blind.output
    assert "drift cannot be judged: history too short" in " ".join(blind.output.split())
    assert runner.invoke(app, ["monitor"]).exit_code == 0  # a report alone is not a gate
