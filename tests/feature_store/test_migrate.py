"""`retailrec store migrate --to URL`: a shop's store moved from SQLite to PostgreSQL (and
back), every table copied and counted, safe to run twice."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from retailrec.cli import app
from retailrec.config import get_settings
from retailrec.data_pipeline import etl
from retailrec.data_pipeline.feature_pipeline import build_features
from retailrec.feature_store import store
from tests.utils.factories import Shop, events_frame
from tests.utils.postgres import PostgresServer

runner = CliRunner()
T = 1_433_221_332_117


@pytest.fixture
def sqlite_shop(tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny shop loaded into a SQLite store (whatever backend the suite runs on), with a
    feature snapshot and a served answer: every table holds rows."""
    url = f"sqlite:///{tmp_path / 'shop.sqlite'}"
    monkeypatch.setenv("RETAILREC_STORE_URL", url)
    get_settings.cache_clear()
    with store.open_store(url) as conn:
        etl.run_etl(
            tiny_shop.dir,
            conn=conn,
            rejected_dir=tmp_path / "rej",
            processed_dir=tmp_path / "proc",
        )
        build_features(conn)
        visitor = int(store.read_events(conn)["visitorid"].iloc[0])
        newest = store.shop_clock(conn)
        assert newest is not None
        late = events_frame([(newest + 1, visitor, "view", 1, None)])
        assert store.append_events(conn, late, source="api") == 1  # a visitor's version moves
        store.log_served(conn, [("r1", T, "user", 5, "model", "1", "[1, 2]", 0.5)])
        assert store.probe_write(conn) is None
        assert store.announce_model(conn, "1") == 1
    return url


def _migrate(to: str, source: str) -> Result:
    """``retailrec store migrate --to`` with ``source`` as the settings' store."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETAILREC_STORE_URL", source)
        get_settings.cache_clear()
        try:
            return runner.invoke(app, ["store", "migrate", "--to", to])
        finally:
            get_settings.cache_clear()


def _snapshot(url: str) -> dict[str, object]:
    """What the product reads from a store: the log, histories, the clock, features, the rest."""
    with store.open_store(url) as conn:
        events = store.read_events(conn)
        visitor = int(events["visitorid"].value_counts().index[0])
        as_of = store.snapshots(conn)[-1]
        return {
            "events": events,
            "history": store.visitor_history(conn, visitor, limit=50).frame(visitor),
            "version": store.visitor_version(conn, visitor),
            "clock": store.time_range(conn),
            "users": store.read_user_features(conn, as_of),
            "items": store.read_item_features(conn, as_of),
            "pairs": store.read_item_pairs(conn, as_of),
            "props": store.read_item_properties(conn).sort_values(["itemid", "property"]),
            "categories": store.read_categories(conn),
            "served": store.read_served(conn),
            "etl": store.last_etl_report(conn),
            "model": store.announced_model(conn),
            "counts": {t: store.table_count(conn, t) for t in store.TABLES},
        }


def _assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, pd.DataFrame):
            other = b[key]
            assert isinstance(other, pd.DataFrame)
            pd.testing.assert_frame_equal(
                value.reset_index(drop=True), other.reset_index(drop=True), check_dtype=False
            )
        else:
            assert value == b[key], key


def test_a_shop_moves_to_postgresql_and_back_unchanged(
    sqlite_shop: str, pg_server: PostgresServer, tmp_path: Path
) -> None:
    pg = pg_server.new_database()
    moved = runner.invoke(app, ["store", "migrate", "--to", pg])
    assert moved.exit_code == 0, moved.output
    assert "events" in moved.output and "yes" in moved.output and "NO" not in moved.output
    before = _snapshot(sqlite_shop)
    assert all(n > 0 for n in before["counts"].values())  # type: ignore[attr-defined]
    _assert_same(before, _snapshot(pg))

    with store.open_store(sqlite_shop) as conn:  # the shop went on meanwhile
        visitor = int(store.read_events(conn)["visitorid"].iloc[-1])
        late = (int(before["clock"][1]) + 60_000, visitor, "addtocart", 7, None)  # type: ignore[index]
        assert store.append_events(conn, events_frame([late]), source="api") == 1
    again = runner.invoke(app, ["store", "migrate", "--to", pg])  # safe to run twice
    assert again.exit_code == 0, again.output
    before = _snapshot(sqlite_shop)
    _assert_same(before, _snapshot(pg))  # the new event, the clock and the version came over

    with store.open_store(pg) as conn:  # the copy is a working store: new runs and events
        run_id = store.record_etl_run(conn, {**before["etl"], "source": "next"})  # type: ignore[dict-item]
        assert run_id == before["counts"]["etl_runs"] + 1  # type: ignore[index]
        visitor = int(before["events"]["visitorid"].iloc[0])  # type: ignore[index]
        clock = before["clock"][1]  # type: ignore[index]
        version = store.visitor_version(conn, visitor)[0]
        assert store.append_events(conn, events_frame([(clock + 1, visitor, "view", 1, None)])) == 1
        assert store.visitor_version(conn, visitor) == (version + 1, clock + 1)

    back = f"sqlite:///{tmp_path / 'back.sqlite'}"
    returned = _migrate(back, source=pg)
    assert returned.exit_code == 0, returned.output
    _assert_same(_snapshot(pg), _snapshot(back))


def test_a_target_with_other_rows_is_refused_by_its_counts(
    sqlite_shop: str, pg_server: PostgresServer
) -> None:
    pg = pg_server.new_database()
    with store.open_store(pg) as conn:
        store.append_events(conn, events_frame([(T, 10**9, "view", 1, None)]))
    moved = runner.invoke(app, ["store", "migrate", "--to", pg])
    assert moved.exit_code == 1
    line = moved.output.strip()
    assert "\n" not in line and "counts differ" in line and "events" in line


def test_migrate_refuses_itself_and_an_empty_source(sqlite_shop: str, tmp_path: Path) -> None:
    itself = runner.invoke(app, ["store", "migrate", "--to", sqlite_shop])
    assert itself.exit_code == 1 and "names the store itself" in itself.output
    empty = _migrate(sqlite_shop, source=f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert empty.exit_code == 1 and "nothing to migrate" in empty.output
