"""The feature store on both backends (SQLite, PostgreSQL): migrations, idempotent appends,
upserts that never drop rows."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from retailrec.errors import StoreError
from retailrec.feature_store import postgres, store
from tests.utils.factories import events_frame
from tests.utils.postgres import PostgresServer

T = 1_433_221_332_117


ROWS = [
    (T, 1, "view", 10, None),
    (T + 5, 1, "addtocart", 10, None),
    (T + 9, 1, "transaction", 10, 500),
    (T + 2, 2, "view", 11, None),
]


@pytest.fixture
def conn(store_url: str) -> Iterator[store.Connection]:
    """A fresh store on each backend."""
    with store.open_store(store_url) as opened:
        yield opened


@pytest.fixture
def lite(tmp_path: Path) -> sqlite3.Connection:
    """A SQLite store, for what only SQLite has (its pragmas, its file)."""
    conn = store.connect(tmp_path / "fs.sqlite")
    assert isinstance(conn, sqlite3.Connection)
    return conn


def _tables(conn: store.Connection) -> set[str]:
    if isinstance(conn, sqlite3.Connection):
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    return {r[0] for r in conn.execute(query)}


def _primary_key(conn: store.Connection, table: str) -> tuple[str, ...]:
    if isinstance(conn, sqlite3.Connection):
        columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
        return tuple(c[1] for c in sorted(columns, key=lambda c: c[5]) if c[5] > 0)
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = ?::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table,),
    ).fetchall()
    return tuple(r[0] for r in rows)


def test_both_backends_have_every_migration() -> None:
    assert len(store.MIGRATIONS) == len(postgres.MIGRATIONS) == store.SCHEMA_VERSION


def test_connect_migrates_to_the_latest_schema(conn: store.Connection) -> None:
    assert store.schema_version(conn) == store.SCHEMA_VERSION
    assert _tables(conn) - {"sqlite_sequence", "retailrec_schema"} == set(store.TABLES)
    for table, key in store.TABLES.items():  # what `store migrate` upserts by
        assert _primary_key(conn, table) == key, table
    store.migrate(conn)  # again: nothing to do
    assert store.schema_version(conn) == store.SCHEMA_VERSION


def test_sqlite_runs_in_wal_mode(lite: sqlite3.Connection) -> None:
    conn = lite
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS


def test_migrations_run_once_and_keep_data(tmp_path: Path) -> None:
    path = tmp_path / "fs.sqlite"
    first = store.connect(path)
    first.executescript(
        "DROP TABLE user_features; DROP TABLE item_features; DROP TABLE item_pairs;"
        " DROP TABLE feature_snapshots; DROP TABLE served_recommendations; PRAGMA user_version = 1;"
    )
    store.append_events(first, events_frame(ROWS))
    first.execute("DROP TABLE shop_clock")  # as version 1 had it (migration 4 adds the clock)
    first.execute("DROP TABLE write_probe")  # and migration 5 the write probe
    first.executescript(  # and 6 the visitors' change counters
        "DROP TABLE visitor_versions; DROP TRIGGER events_deleted; DROP TRIGGER events_updated;"
        " DROP TABLE served_model;"  # and 7 the announced model
    )
    first.close()
    again = store.connect(path)  # upgrades from version 1 to the latest, keeping the events
    assert store.schema_version(again) == store.SCHEMA_VERSION
    assert store.event_count(again) == 4
    ts = [row[0] for row in ROWS]
    assert store.time_range(again) == (min(ts), max(ts))  # the clock, set from the kept log
    assert store.read_user_features(again, T).empty


def test_postgresql_migrations_run_once_and_keep_data(pg_server: PostgresServer) -> None:
    url = pg_server.new_database()
    first = store.connect(url)
    store.append_events(first, events_frame(ROWS))
    first.execute(  # back to version 3, as it was before the clock, the probe and the counters
        "DROP TABLE shop_clock, write_probe, visitor_versions, served_model;"
        " DROP FUNCTION events_changed CASCADE; DROP FUNCTION bump_visitor_version;"
        " UPDATE retailrec_schema SET version = 3"
    )
    first.close()
    again = store.connect(url)
    assert store.schema_version(again) == store.SCHEMA_VERSION
    assert store.event_count(again) == 4
    ts = [row[0] for row in ROWS]
    assert store.time_range(again) == (min(ts), max(ts))
    again.execute("DELETE FROM events WHERE visitorid = 2")  # the trigger counts the change
    assert store.visitor_version(again, 2)[0] == 1


def test_replicas_starting_together_migrate_once(pg_server: PostgresServer) -> None:
    url = pg_server.new_database()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            store.connect(url).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.open_store(url) as conn:
        assert conn.execute("SELECT count(*), max(version) FROM retailrec_schema").fetchone() == (
            1,
            store.SCHEMA_VERSION,
        )


def test_a_newer_schema_is_refused(conn: store.Connection, store_url: str) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    else:
        conn.execute("UPDATE retailrec_schema SET version = ?", (store.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this code"):
        store.connect(store_url)


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    url = "postgresql://shop:secret@127.0.0.1:1/shop"
    with pytest.raises(StoreError) as caught:
        store.connect(url)
    message = str(caught.value)
    assert "secret" not in message and "\n" not in message
    assert message.startswith("cannot open the feature store at postgresql://shop:***@127.0.0.1:1")
    assert not store.exists(url)


def test_read_only_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="run `retailrec etl` first"):
        store.connect(tmp_path / "none.sqlite", read_only=True)


@pytest.fixture(params=["row by row", "staged"])
def append_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both ways of appending: a statement per row, and through a staging table."""
    monkeypatch.setattr(store, "STAGE_MIN_ROWS", 10_000 if request.param == "row by row" else 1)
    return str(request.param)


def test_append_is_idempotent_and_counts_new_rows(conn: store.Connection, append_path: str) -> None:
    assert store.append_events(conn, events_frame(ROWS)) == 4
    assert store.append_events(conn, events_frame(ROWS)) == 0
    assert store.append_events(conn, events_frame([*ROWS, (T + 20, 2, "view", 12, None)])) == 1
    # Same visitor, time and item but another event type is a different event.
    assert store.append_events(conn, events_frame([(T, 1, "addtocart", 10, None)])) == 1
    assert store.event_count(conn) == 6


def test_read_events_round_trips_types_and_order(conn: store.Connection, append_path: str) -> None:
    store.append_events(conn, events_frame(ROWS))
    back = store.read_events(conn)
    expected = events_frame(sorted(ROWS)).astype({"event": "str"})
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert str(back["transactionid"].dtype) == "Int64"
    assert store.read_events(conn, start_ms=T + 2, end_ms=T + 9)["timestamp"].tolist() == [
        T + 2,
        T + 5,
    ]
    assert store.read_events(conn, visitor_ids=[2])["itemid"].tolist() == [11]
    sources = conn.execute("SELECT DISTINCT source FROM events").fetchall()
    assert sources == [("etl",)]
    if isinstance(conn, sqlite3.Connection):  # the staging table is gone (PostgreSQL's at commit)
        assert not conn.execute("SELECT name FROM sqlite_temp_master").fetchall()
    else:
        assert conn.execute("SELECT to_regclass('pg_temp.stage')").fetchone() == (None,)


def test_the_log_is_read_in_blocks_of_whole_visitors(
    conn: store.Connection, tmp_path: Path
) -> None:  # and an empty log in none
    """Blocks of about ``rows`` rows, never splitting a visitor: one with more events than that
    comes whole, in a block of its own; together they are the log, in key order."""
    counts = {1: 3, 2: 10, 3: 2, 4: 1, 5: 4, 6: 3}
    rows = [(T + i, v, "view", 10 + i % 3, None) for v, n in counts.items() for i in range(n)]
    store.append_events(conn, events_frame(rows))
    blocks = list(store.iter_visitor_blocks(conn, rows=4))
    assert [sorted(set(b["visitorid"])) for b in blocks] == [[1], [2], [3, 4], [5], [6]]
    assert [len(b) for b in blocks] == [3, 10, 3, 4, 3]
    whole = pd.concat(blocks, ignore_index=True)
    log_ = store.read_events(conn).sort_values(["visitorid", "timestamp"], ignore_index=True)
    pd.testing.assert_frame_equal(whole, log_)
    assert list(store.iter_visitor_blocks(store.connect(tmp_path / "empty.sqlite"))) == []


def test_a_failed_bulk_write_rolls_back_and_the_next_one_works(
    conn: store.Connection, append_path: str
) -> None:
    row = dict.fromkeys(("visitorid", "as_of_ms", "n_views", "n_carts", "n_purchases"), 1)
    row |= {"n_items": 1, "n_sessions": 1, "first_ts": T, "last_ts": T, "recency_days": 0.0}
    good = pd.DataFrame([row | {"purchased_items": ""}])
    bad = pd.concat([good.assign(visitorid=2), good.assign(visitorid=3, n_views=None)])
    with pytest.raises(store.DATABASE_ERRORS, match=r"(?i)null"):
        store._replace_rows(conn, "user_features", bad)
    assert conn.execute("SELECT count(*) FROM user_features").fetchone()[0] == 0
    store._replace_rows(conn, "user_features", good)
    assert conn.execute("SELECT visitorid FROM user_features").fetchall() == [(1,)]
    assert store.append_events(conn, events_frame(ROWS)) == 4


def test_an_event_type_outside_the_schema_is_refused(
    conn: store.Connection, append_path: str
) -> None:
    with pytest.raises(ValueError, match="click"):
        store.append_events(conn, events_frame([(T, 1, "click", 10, None)]))
    assert store.event_count(conn) == 0


def test_visitor_history_is_point_in_time(conn: store.Connection) -> None:
    store.append_events(conn, events_frame(ROWS))
    full = store.visitor_history(conn, 1)
    assert full.timestamp.tolist() == [T, T + 5, T + 9]
    assert full.event == ["view", "addtocart", "transaction"]
    assert full.transactionid == [None, None, 500]
    assert store.visitor_history(conn, 1, as_of_ms=T + 5).timestamp.tolist() == [T, T + 5]
    assert store.visitor_history(conn, 1, limit=2).timestamp.tolist() == [T + 5, T + 9]
    assert len(store.visitor_history(conn, 999).timestamp) == 0


def test_item_property_upserts_update_in_place(conn: store.Connection, append_path: str) -> None:
    props = pd.DataFrame(
        {
            "timestamp": [T, T],
            "itemid": [10, 10],
            "property": ["categoryid", "available"],
            "value": ["3", "1"],
        }
    )
    assert store.upsert_item_properties(conn, props) == 2
    assert store.upsert_item_properties(conn, props) == 0  # unchanged values are not rewritten
    changed = props.assign(value=["4", "1"])
    assert store.upsert_item_properties(conn, changed) == 1
    stored = store.read_item_properties(conn).sort_values("property")
    assert stored["value"].tolist() == ["1", "4"]
    assert len(stored) == 2
    later = pd.DataFrame(
        {"timestamp": [T + 9], "itemid": [10], "property": ["categoryid"], "value": ["5"]}
    )
    assert store.upsert_item_properties(conn, later) == 1
    latest = store.read_item_properties(conn, latest=True).sort_values("property")
    assert latest[["timestamp", "value"]].values.tolist() == [[T, "1"], [T + 9, "5"]]
    before = store.read_item_properties(conn, as_of_ms=T + 8, latest=True)
    assert sorted(before["value"]) == ["1", "4"]


def test_categories_upsert(conn: store.Connection) -> None:
    tree = pd.DataFrame({"categoryid": [1, 2], "parentid": pd.array([None, 1], dtype="Int64")})
    assert store.upsert_categories(conn, tree) == 2
    assert store.upsert_categories(conn, tree) == 0
    assert store.read_categories(conn)["parentid"].isna().tolist() == [True, False]


def test_concurrent_writers_wait_instead_of_failing(store_url: str) -> None:
    path = store_url
    store.connect(path).close()
    errors: list[BaseException] = []

    def writer(visitor: int) -> None:
        try:
            c = store.connect(path)
            for i in range(30):
                store.append_events(c, events_frame([(T + i, visitor, "view", i, None)]))
            c.close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.event_count(store.connect(path)) == 120


def test_etl_runs_are_recorded(conn: store.Connection) -> None:
    assert store.last_etl_report(conn) is None
    report = {
        "started_ms": 1,
        "source": "x",
        "rows_read": 3,
        "loaded": 2,
        "duplicates": 1,
        "rejected": 0,
    }
    store.record_etl_run(conn, report)
    assert store.last_etl_report(conn) == report


def test_dashboard_summaries(conn: store.Connection) -> None:
    day = 86_400_000
    start = T - T % day
    store.append_events(
        conn,
        events_frame(
            [
                (start, 1, "view", 10, None),
                (start + 1, 1, "addtocart", 10, None),
                (start + day, 1, "transaction", 10, 5),
                (start + day, 2, "view", 11, None),
            ]
        ),
    )
    daily = store.daily_event_counts(conn)
    assert daily.to_dict("records") == [
        {"day": start, "event": "addtocart", "n": 1},
        {"day": start, "event": "view", "n": 1},
        {"day": start + day, "event": "transaction", "n": 1},
        {"day": start + day, "event": "view", "n": 1},
    ]
    assert store.visitors_per_event(conn) == {
        "view": 2,
        "addtocart": 1,
        "transaction": 1,
        "any": 2,
    }
    assert store.visitor_activity(conn).to_dict() == {1: 1, 3: 1}
    assert store.sample_visitors(conn, n=5, min_events=2) == [1]


def test_a_served_model_is_announced_with_a_new_generation_each_time(
    conn: store.Connection,
) -> None:
    assert store.announced_model(conn) == (0, None)
    assert store.announce_model(conn, "3") == 1
    assert store.announce_model(conn, "3") == 2  # the same version again is a new reload
    assert store.announce_model(conn, "4") == 3
    assert store.announced_model(conn) == (3, "4")


def test_text_reads_as_text_on_a_sql_ascii_database(pg_server: PostgresServer) -> None:
    """initdb makes SQL_ASCII databases where no UTF-8 locale is set (a bare container); psycopg
    would hand their text back as bytes, and a reload announced as "4" read as b'4'."""
    with closing(store.connect(pg_server.new_database(encoding="SQL_ASCII"))) as conn:
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "SQL_ASCII"
        store.announce_model(conn, "4")
        assert store.announced_model(conn) == (1, "4")
        props = pd.DataFrame(
            {"timestamp": [1], "itemid": [7], "property": ["färg"], "value": ["blå n12.000"]}
        )
        store.upsert_item_properties(conn, props)
        read = store.read_item_properties(conn)
        assert read[["property", "value"]].to_dict("records") == [
            {"property": "färg", "value": "blå n12.000"}
        ]
