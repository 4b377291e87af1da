"""``retailrec backtest``: the champion through the serving path beside popularity and plain
BM25 item-kNN, on a held-out log or the store's last window, in process or over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from retailrec import registry, reports
from retailrec.cli import app
from retailrec.config import Settings
from retailrec.errors import BacktestError
from retailrec.training.backtest import backtest
from retailrec.training.train import TrainConfig, train
from tests.utils.factories import Shop, loaded_settings
from tests.utils.postgres import suite_store
from tests.utils.server import serving

pytestmark = pytest.mark.integration
runner = CliRunner()
DAY = 86_400_000


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> tuple[Settings, Path]:
    """A champion trained on all but the shop's last week, and that week as a separate file."""
    log = tiny_shop.data.events
    cut = int(log["timestamp"].max()) - 7 * DAY
    root = tmp_path_factory.mktemp("backtest")
    settings = loaded_settings(
        root, tiny_shop, events=log[log["timestamp"] < cut], store_url=suite_store()
    )
    train(settings, TrainConfig(models=("itemknn_bm25",)))
    registry.promote(registry.configure(settings), settings.model_name)
    week = root / "last_week.csv"
    log[log["timestamp"] >= cut].to_csv(week, index=False)
    return settings, week


def test_a_held_out_log_is_scored_beside_the_baselines(held_out: tuple[Settings, Path]) -> None:
    settings, week = held_out
    report = backtest(settings, week)
    assert set(report.results) == {"champion", "popularity", "bm25_itemknn"}
    assert set(report.results_all_items) == {*report.results, "recently_viewed"}
    assert report.champion_model == "itemknn_bm25"
    assert report.window_start_ms > report.clock_ms  # the file came after the store
    champion, popular = report.results["champion"], report.results["popularity"]
    # On a shop with a known structure, the served champion is far above popularity.
    assert champion["ndcg_at_10"] > 2 * popular["ndcg_at_10"] > 0
    assert report.ratio("bm25_itemknn") > 0.8
    row = next(r for r in report.rows() if r["ranker"] == "champion")
    for key in ("ndcg_at_10", "recall_at_20", "hit_rate_at_10", "ndcg_at_10_buy"):
        assert 0 <= row[key] <= 1 and 0 <= row[f"{key}_all"] <= 1
    # All visitors mix returning ones with new ones, who get the popular items.
    assert min(row["ndcg_at_10"], popular["ndcg_at_10_cold"]) <= row["ndcg_at_10_all"]
    assert row["ndcg_at_10_all"] <= max(row["ndcg_at_10"], popular["ndcg_at_10_cold"]) + 1e-9
    # All items: the tiny shop's visitors come back to items, and the champion served as the API
    # answers by default (its repeat curves from training) places them: it beats both the new
    # items alone and the visitor's own items alone.
    assert 0.1 < report.repeat["revisit_share"] < 0.6
    assert report.repeat["returning_visitors"] == champion["n_warm"]
    every = report.results_all_items
    assert every["champion"]["ndcg_at_10"] > champion["ndcg_at_10"]
    assert every["champion"]["ndcg_at_10"] > every["recently_viewed"]["ndcg_at_10"]
    assert report.ratio("bm25_itemknn", all_items=True) > 0.8


def test_the_api_answers_score_the_same_as_the_serving_path(
    held_out: tuple[Settings, Path],
) -> None:
    settings, week = held_out
    in_process = backtest(settings, week)
    with serving(settings) as base:
        over_http = backtest(settings, week, api_url=base)
    assert over_http.results["champion"] == in_process.results["champion"]
    assert over_http.results_all_items["champion"] == in_process.results_all_items["champion"]
    assert "the API at" in over_http.served_by


def test_the_cli_prints_the_table_and_writes_the_reports(
    held_out: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, week = held_out
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RETAILREC_STORE_URL", settings.feature_store)
    from retailrec.config import get_settings

    get_settings.cache_clear()
    result = runner.invoke(app, ["backtest", "--test", str(week)])
    assert result.exit_code == 0, result.output
    assert "bm25_itemknn" in result.output and "popularity" in result.output
    assert "x plain BM25 item-kNN" in result.output
    assert "exclude_seen=false" in result.output and "re-visits:" in result.output
    report = reports.latest(settings.reports_dir, "backtest")
    assert report is not None
    assert [r["ranker"] for r in report["rows"]] == ["champion", "popularity", "bm25_itemknn"]
    assert [r["ranker"] for r in report["rows_all_items"]][-1] == "recently_viewed"
    page = Path(report["_path"]).with_suffix(".html").read_text()
    assert "plain BM25 item-kNN" in page and page.count("<table>") == 3
    # The sessions: HitRate@20 / MRR@20 of each ranker, in the output, the JSON and the page.
    assert "anonymous sessions, next-item HitRate@20 / MRR@20" in " ".join(result.output.split())
    assert {"served", "sequence", "sequential_rules", "session_knn"} <= set(report["sessions"])
    assert all(
        0 <= report["sessions"][f"{n}_mrr"] <= report["sessions"][n] for n in ("served", "sequence")
    )
    assert "session_knn" in page and "mrr@20" in page
    # The store's last window: the champion's recipe refitted before it.
    last = runner.invoke(app, ["backtest"])
    assert last.exit_code == 0, last.output
    assert "the store's last" in " ".join(last.output.split())
    latest = reports.latest(settings.reports_dir, "backtest")
    assert latest is not None and json.loads(Path(latest["_path"]).read_text())["source"] != str(
        week
    )


def test_a_log_with_nothing_before_it_is_one_line(
    held_out: tuple[Settings, Path], tmp_path: Path
) -> None:
    settings, _ = held_out
    early = tmp_path / "early.csv"
    pd.DataFrame(
        {
            "timestamp": [1_420_000_000_000],
            "visitorid": [1],
            "event": ["view"],
            "itemid": [1],
            "transactionid": [None],
        }
    ).to_csv(early, index=False)
    with pytest.raises(BacktestError, match="no event before"):
        backtest(settings, early)


def test_the_real_sample_trains_serves_and_backtests_over_http(
    real_sample: Path, tmp_path: Path
) -> None:
    """A real Retailrocket log, as a seller would run it: train on all but its last week, serve,
    and score that week through the API, beside the baselines."""
    log = pd.read_csv(real_sample)
    cut = int(log["timestamp"].max()) - 7 * DAY
    raw = tmp_path / "raw"
    raw.mkdir()
    log[log["timestamp"] < cut].to_csv(raw / "events.csv", index=False)
    week = tmp_path / "week.csv"
    log[log["timestamp"] >= cut].to_csv(week, index=False)
    trained = runner.invoke(
        app, ["pipeline", "--raw", str(raw), "--models", "popular,itemknn_bm25"]
    )
    assert trained.exit_code == 0, trained.output
    from retailrec.config import get_settings

    settings = get_settings()
    in_process = backtest(settings, week)
    with serving(settings) as base:
        over_http = backtest(settings, week, api_url=base)
    assert over_http.results["champion"] == in_process.results["champion"]
    assert over_http.results_all_items == in_process.results_all_items
    assert over_http.sessions == in_process.sessions
    assert in_process.n_test_events == len(log[log["timestamp"] >= cut].drop_duplicates())
    assert in_process.window_start_ms >= cut > in_process.clock_ms
    # A sample this sparse says so: a handful of returning visitors, a wide noise band.
    assert any("may be noise" in w for w in in_process.warnings)
