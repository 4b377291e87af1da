"""Every dashboard page through Streamlit's AppTest, on a tiny trained shop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from retailrec.config import Settings, get_settings
from retailrec.dashboard import data
from retailrec.data_pipeline import etl
from retailrec.feature_store import store

APP = Path(__file__).resolve().parents[2] / "src" / "retailrec" / "dashboard" / "app.py"


@pytest.fixture
def use(shop_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(shop_settings.data_dir))
    monkeypatch.setenv("RETAILREC_STORE_URL", shop_settings.feature_store)
    monkeypatch.delenv("RETAILREC_API_URL", raising=False)
    get_settings.cache_clear()
    return shop_settings


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params["page"] = page
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _table(at: AppTest, column: str) -> pd.DataFrame:
    """The page's table that has ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def _titles(at: AppTest) -> str:
    return " ".join(str(c.proto) for c in at.get("plotly_chart"))


def test_data_page(use: Settings) -> None:
    at = _open("data")
    assert at.header[0].value == "Data"
    metrics = {m.label: m.value for m in at.metric}
    with store.open_store(use.feature_store) as conn:
        assert metrics["Events"] == f"{store.event_count(conn):,}"
        report = store.last_etl_report(conn)
    assert report is not None
    assert metrics["rows read"] == f"{report['rows_read']:,}"
    charts = _titles(at)
    for title in (
        "Events per day",
        "Conversion funnel",
        "Long tail",
        "Visitor activity",
        "Top categories",
    ):
        assert title in charts, title
    assert {"rows read", "loaded", "duplicates", "rejected"} <= set(metrics)
    captions = " ".join(c.value for c in at.caption)
    assert report["item_properties_read"] > 0 and report["categories_read"] > 0
    assert f"Item property rows: {report['item_properties_read']:,} read" in captions
    assert f"Category tree rows: {report['categories_read']:,} read" in captions


def test_data_page_shows_the_first_rejected_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,1,view,10,\n"
        "1433221333117,1,click,10,\n"
        "1433221334117,x,view,11,\n"
    )
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    settings = get_settings()
    with store.open_store(settings.feature_store) as conn:
        etl.run_etl(
            raw,
            conn=conn,
            rejected_dir=settings.rejected_dir,
            processed_dir=settings.processed_dir,
        )
    at = _open("data")
    shown = _table(at, "detail")
    assert shown[["event", "reason"]].values.tolist() == [
        ["click", "unknown event type"],
        ["view", "visitorid is not an integer"],
    ]
    assert shown["visitorid"].tolist() == ["1", "x"]  # as read


def test_models_page(use: Settings) -> None:
    at = _open("models")
    assert at.header[0].value == "Models"
    runs = at.dataframe[0].value
    assert {"popular_category", "itemknn_cosine", "oracle"} <= set(runs["model"])
    assert "oracle (true preferences)" in _titles(at)  # the reference line on synthetic data
    assert any("Champion: version 1" in m.label for m in at.metric)
    at.selectbox(key="metric").set_value("recall_at_20").run()
    assert not at.exception
    assert "recall_at_20 on the test window" in _titles(at)
    assert any("No backtest yet" in i.value for i in at.info)


def test_models_page_shows_the_latest_backtest(
    shop_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A copy of the trained shop, so the shared one keeps no report.

    from retailrec.training.backtest import backtest, write_report

    copy = Settings(data_dir=tmp_path / "data")
    shutil.copytree(shop_settings.data_dir, copy.data_dir)
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(copy.data_dir))
    # The copy reads the shared shop's store where it is not a file in the data dir.
    monkeypatch.setenv(
        "RETAILREC_STORE_URL", shop_settings.store_url or f"sqlite:///{copy.feature_store_path}"
    )
    get_settings.cache_clear()
    report = backtest(get_settings())
    write_report(report, copy.reports_dir)
    at = _open("models")
    assert "Backtest" in [h.value for h in at.subheader]
    new_items, all_items = (d.value for d in at.dataframe if "ndcg_at_10_buy_all" in d.value)
    assert list(new_items.index) == ["champion", "popularity", "bm25_itemknn"]
    assert new_items.loc["champion", "ndcg_at_10"] == pytest.approx(
        report.results["champion"]["ndcg_at_10"]
    )
    # The all-items protocol (exclude_seen=false), with its recently-viewed baseline.
    assert list(all_items.index) == [*new_items.index, "recently_viewed"]
    assert all_items.loc["champion", "ndcg_at_10"] == pytest.approx(
        report.results_all_items["champion"]["ndcg_at_10"]
    )
    assert any("re-visits are" in m.value for m in at.markdown)
    assert any("NDCG@10" in m.label and "Champion 1" in m.label for m in at.metric)


def test_explorer_recommends_for_a_visitor_and_a_session(use: Settings) -> None:
    at = _open("recommendations")
    visitor = at.selectbox(key="visitor_pick").value
    assert visitor in data.sample_visitors(use)
    history = _table(at, "event")
    assert len(history) > 0 and "categoryid" in history
    recs = _table(at, "score")
    assert len(recs) == 10 and recs["item_id"].is_unique
    assert "strategy **" in at.markdown[0].value
    at.slider(key="k").set_value(5).run()
    assert len(_table(at, "score")) == 5

    at.radio(key="mode").set_value("a session").run()
    item = int(recs["item_id"].iloc[0])
    at.text_input(key="session_items").input(str(item)).run()
    assert not at.exception
    session = _table(at, "score")
    assert len(session) == 5 and item not in set(session["item_id"])

    at.text_input(key="session_items").input("12 abc").run()
    assert at.error and "integers" in at.error[0].value


def test_explorer_says_so_for_a_bad_visitor_id(use: Settings) -> None:
    at = _open("recommendations")
    at.text_input(key="visitor_typed").input("not-a-number").run()
    assert at.error and "not a visitor id" in at.error[0].value
    # Past SQLite's integers: one line, not an OverflowError with source paths.
    at.text_input(key="visitor_typed").input("99999999999999999999").run()
    assert not at.exception
    assert at.error and "not a visitor id: '99999999999999999999'" in at.error[0].value
    at.radio(key="mode").set_value("a session").run()
    at.text_input(key="session_items").input("1 99999999999999999999").run()
    assert not at.exception and "is not one" in at.error[0].value


def test_monitoring_page_and_its_button(use: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open("monitoring")
    assert at.header[0].value == "Monitoring"
    before = len(list(use.reports_dir.glob("drift-*.json")))
    verdict = (at.success or at.error)[0].value
    assert "drift" in verdict
    assert set(_table(at, "noise_floor")["name"]) >= {"event_mix", "cart_rate"}
    assert "Signals" in _titles(at)
    # Without RETAILREC_API_KEY the action is off for everyone.
    assert at.button(key="run_monitor").disabled
    assert "Actions are off" in " ".join(c.value for c in at.caption)
    monkeypatch.setenv("RETAILREC_API_KEY", "dash-key")
    get_settings.cache_clear()
    at = _open("monitoring")
    at.text_input(key="action_key").input("guess").run()
    at.button(key="run_monitor").click().run()
    assert at.error and at.error[-1].value == "wrong API key"
    assert len(list(use.reports_dir.glob("drift-*.json"))) == before  # nothing ran
    at.text_input(key="action_key").input("dash-key").run()
    at.button(key="run_monitor").click().run()
    assert not at.exception
    assert len(list(use.reports_dir.glob("drift-*.json"))) == before + 1


def test_a_fresh_install_gets_a_hint_not_a_traceback() -> None:
    at = AppTest.from_file(str(APP), default_timeout=60).run()  # empty data dir
    assert not at.exception
    assert "retailrec pipeline" in at.warning[0].value


@pytest.mark.integration
def test_explorer_asks_a_running_api_when_one_is_set(
    use: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.utils.server import serving

    with serving(use) as base:
        monkeypatch.setenv("RETAILREC_API_URL", base)
        get_settings.cache_clear()
        at = _open("recommendations")
        recs = _table(at, "score")
        assert len(recs) == 10
        assert f"via {base}" in at.markdown[0].value
        at.radio(key="mode").set_value("a session").run()
        at.text_input(key="session_items").input(str(int(recs["item_id"].iloc[0]))).run()
        assert not at.exception
        assert len(_table(at, "score")) == 10
        assert f"via {base}" in at.markdown[0].value
        first = int(recs["item_id"].iloc[0])  # host:port, as Render's fromService gives it
        answer = data.recommend_via_api(base.removeprefix("http://"), None, [first], 3, {})
        assert len(answer["items"]) == 3
    monkeypatch.setenv("RETAILREC_API_URL", "http://127.0.0.1:9")  # nothing listens there
    get_settings.cache_clear()
    at = _open("recommendations")
    assert at.error and "did not answer" in at.error[0].value
