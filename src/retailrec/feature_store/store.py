"""The feature store: the only module (with :mod:`.postgres`) that speaks SQL.

SQLite by default: one file (``data/feature_store.sqlite``). PostgreSQL when
``RETAILREC_STORE_URL`` is a ``postgresql://`` URL, for API replicas on several machines. Either
holds the event log that ETL and ``POST /v1/events`` append to, the item catalogue, the category
tree, point-in-time feature snapshots and the ETL run log. Training reads it through the same
functions as serving, so the two cannot drift apart.

Connections are opened with :func:`connect` (a path or a URL; migrations applied) and passed in
to every function; nothing here holds global state. The SQL is written once where the two
dialects agree, and per backend (:func:`_pg`) where they do not.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa

from retailrec.errors import StoreError, error_line
from retailrec.events import EVENT_NAMES, EVENT_TYPES, event_codes
from retailrec.feature_store import postgres
from retailrec.feature_store.postgres import PgConnection

#: An open store: SQLite's own connection, or PostgreSQL's behind the same methods.
Connection = sqlite3.Connection | PgConnection
#: What a failed statement raises on either backend.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
#: What using a store that is away raises: a failed statement, or a connection not opened.
UNAVAILABLE: tuple[type[Exception], ...] = (*DATABASE_ERRORS, StoreError)

BUSY_TIMEOUT_MS = 10_000

#: Schema migrations, applied in order; the list index + 1 is the schema version. Never edit a
#: released migration: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the event log, the catalogue and the ETL run log.
    """
    CREATE TABLE events (
        visitorid     INTEGER NOT NULL,
        timestamp     INTEGER NOT NULL,
        itemid        INTEGER NOT NULL,
        event         TEXT    NOT NULL CHECK (event IN ('view', 'addtocart', 'transaction')),
        tx_key        INTEGER NOT NULL,  -- transactionid, or -1: keys cannot hold NULL
        transactionid INTEGER,
        source        TEXT    NOT NULL DEFAULT 'etl',
        -- One row per distinct event, so re-sent or re-loaded rows are ignored; clustered by
        -- visitor and time, so a visitor's history is one short range read. Time-window reads
        -- scan, which is cheaper than a second index updated on every append.
        PRIMARY KEY (visitorid, timestamp, itemid, event, tx_key)
    ) WITHOUT ROWID;
    CREATE TABLE item_properties (
        itemid    INTEGER NOT NULL,
        property  TEXT    NOT NULL,
        timestamp INTEGER NOT NULL,
        value     TEXT    NOT NULL,
        PRIMARY KEY (itemid, property, timestamp)
    ) WITHOUT ROWID;
    CREATE TABLE categories (
        categoryid INTEGER PRIMARY KEY,
        parentid   INTEGER
    );
    CREATE TABLE etl_runs (
        run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
        started_ms  INTEGER NOT NULL,
        source      TEXT    NOT NULL,
        rows_read   INTEGER NOT NULL,
        loaded      INTEGER NOT NULL,
        duplicates  INTEGER NOT NULL,
        rejected    INTEGER NOT NULL,
        report_json TEXT    NOT NULL
    );
    """,
    # 2: point-in-time feature snapshots.
    """
    CREATE TABLE user_features (
        visitorid        INTEGER NOT NULL,
        as_of_ms         INTEGER NOT NULL,
        n_views          INTEGER NOT NULL,
        n_carts          INTEGER NOT NULL,
        n_purchases      INTEGER NOT NULL,
        n_items          INTEGER NOT NULL,
        n_sessions       INTEGER NOT NULL,
        first_ts         INTEGER NOT NULL,
        last_ts          INTEGER NOT NULL,
        recency_days     REAL    NOT NULL,
        top_category_1   INTEGER,
        top_category_2   INTEGER,
        top_category_3   INTEGER,
        purchased_items  TEXT    NOT NULL,
        PRIMARY KEY (visitorid, as_of_ms)
    ) WITHOUT ROWID;
    CREATE TABLE item_features (
        itemid        INTEGER NOT NULL,
        as_of_ms      INTEGER NOT NULL,
        categoryid    INTEGER,
        available     INTEGER,
        pop_1d        INTEGER NOT NULL,
        pop_7d        INTEGER NOT NULL,
        pop_30d       INTEGER NOT NULL,
        pop_all       INTEGER NOT NULL,
        n_views       INTEGER NOT NULL,
        n_carts       INTEGER NOT NULL,
        n_purchases   INTEGER NOT NULL,
        cart_rate     REAL    NOT NULL,
        purchase_rate REAL    NOT NULL,
        PRIMARY KEY (itemid, as_of_ms)
    ) WITHOUT ROWID;
    CREATE TABLE item_pairs (
        itemid       INTEGER NOT NULL,
        other_itemid INTEGER NOT NULL,
        as_of_ms     INTEGER NOT NULL,
        n_baskets    INTEGER NOT NULL,
        n_carts      INTEGER NOT NULL,
        PRIMARY KEY (as_of_ms, itemid, other_itemid)
    ) WITHOUT ROWID;
    CREATE TABLE feature_snapshots (
        as_of_ms   INTEGER PRIMARY KEY,
        created_ms INTEGER NOT NULL,
        n_users    INTEGER NOT NULL,
        n_items    INTEGER NOT NULL
    );
    """,
    # 3: what the API served, for online metrics.
    """
    CREATE TABLE served_recommendations (
        recommendation_id TEXT    PRIMARY KEY,
        served_ms         INTEGER NOT NULL,
        endpoint          TEXT    NOT NULL,
        visitorid         INTEGER,
        strategy          TEXT    NOT NULL,
        model_version     TEXT    NOT NULL,
        items             TEXT    NOT NULL,  -- JSON list of item ids, in served order
        latency_ms        REAL    NOT NULL
    );
    CREATE INDEX served_by_time ON served_recommendations (served_ms);
    """,
    # 4: the shop's clock: the first and the newest accepted event, kept as events are appended
    # so that every "now" is one key lookup instead of a scan of the log (see retailrec.events).
    """
    CREATE TABLE shop_clock (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        first_ms  INTEGER NOT NULL,
        newest_ms INTEGER NOT NULL
    );
    INSERT INTO shop_clock (id, first_ms, newest_ms)
        SELECT 1, min(timestamp), max(timestamp) FROM events HAVING count(*) > 0;
    """,
    # 5: one row that a readiness probe rewrites: proof that the store takes a write now.
    """
    CREATE TABLE write_probe (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms INTEGER NOT NULL
    );
    """,
    # 6: a change counter per visitor, so that a process may keep a history it read and know,
    # with one key lookup, whether it still holds (see visitor_version). Appends bump it for
    # visitors with rows new to the log who had events before the batch (no one keeps the
    # history of a visitor who had none); the triggers cover rows changed or removed by hand,
    # which no code of ours does.
    """
    CREATE TABLE visitor_versions (
        visitorid INTEGER PRIMARY KEY,
        version   INTEGER NOT NULL
    );
    CREATE TRIGGER events_deleted AFTER DELETE ON events BEGIN
        INSERT INTO visitor_versions (visitorid, version) VALUES (OLD.visitorid, 1)
            ON CONFLICT (visitorid) DO UPDATE SET version = version + 1;
    END;
    CREATE TRIGGER events_updated AFTER UPDATE ON events BEGIN
        INSERT INTO visitor_versions (visitorid, version) VALUES (OLD.visitorid, 1)
            ON CONFLICT (visitorid) DO UPDATE SET version = version + 1;
        INSERT INTO visitor_versions (visitorid, version) VALUES (NEW.visitorid, 1)
            ON CONFLICT (visitorid) DO UPDATE SET version = version + 1;
    END;
    """,
    # 7: the model every API process should serve: a reload on one is announced here, and the
    # others (workers, replicas) follow within a poll (see serving.store_access.ReloadWatcher).
    """
    CREATE TABLE served_model (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL,
        version    TEXT    NOT NULL,
        at_ms      INTEGER NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: Every table of the schema (both backends) and its primary key, in an order that copies them.
TABLES: dict[str, tuple[str, ...]] = {
    "events": ("visitorid", "timestamp", "itemid", "event", "tx_key"),
    "item_properties": ("itemid", "property", "timestamp"),
    "categories": ("categoryid",),
    "etl_runs": ("run_id",),
    "user_features": ("visitorid", "as_of_ms"),
    "item_features": ("itemid", "as_of_ms"),
    "item_pairs": ("as_of_ms", "itemid", "other_itemid"),
    "feature_snapshots": ("as_of_ms",),
    "served_recommendations": ("recommendation_id",),
    "shop_clock": ("id",),
    "write_probe": ("id",),
    "visitor_versions": ("visitorid",),
    "served_model": ("id",),
}


def sqlite_path(target: Path | str) -> str | None:
    """The SQLite file that ``target`` (a path, ``sqlite:///path`` or ``:memory:``) names; None
    for a PostgreSQL URL."""
    if postgres.is_url(target):
        return None
    text = str(target)
    return text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text


def describe(target: Path | str) -> str:
    """The store's address for a message: a path, or a URL without its password."""
    path = sqlite_path(target)
    return postgres.redact(str(target)) if path is None else path


def exists(target: Path | str) -> bool:
    """Whether a store is there: a SQLite file, or a migrated PostgreSQL database."""
    path = sqlite_path(target)
    if path is not None:
        return path == ":memory:" or Path(path).is_file()
    try:
        with closing(postgres.connect(str(target), read_only=True)) as conn:
            return postgres.schema_version(conn) > 0
    except StoreError:
        return False


def connect(
    target: Path | str, *, read_only: bool = False, check_same_thread: bool = True
) -> Connection:
    """Open the store, migrated to this code's schema (unless read-only).

    Args:
        target: A SQLite file (a path or ``sqlite:///path``), ``":memory:"``, or a
            ``postgresql://user:pass@host/db`` URL.
        read_only: Open without write access (a SQLite file must exist); no migration runs.
        check_same_thread: Passed to sqlite3; the API uses one connection per thread.
    """
    path = sqlite_path(target)
    if path is None:
        pg = postgres.connect(str(target), read_only=read_only)
        try:
            _check_version(postgres.schema_version(pg))
            if not read_only:
                postgres.migrate(pg, SCHEMA_VERSION)
        except BaseException:
            pg.close()
            raise
        return pg
    if read_only:
        if path != ":memory:" and not Path(path).is_file():
            raise StoreError(f"no feature store at {path}: run `retailrec etl` first")
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=check_same_thread,
        )
    else:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=check_same_thread
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if not read_only:
        migrate(conn)
    else:
        _check_version(schema_version(conn))
    return conn


def _check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"feature store schema {version} is newer than this code ({SCHEMA_VERSION})"
        )


def _pg(conn: Connection) -> bool:
    """Whether ``conn`` is PostgreSQL's (where the dialects differ)."""
    return isinstance(conn, PgConnection)


def schema_version(conn: Connection) -> int:
    if isinstance(conn, PgConnection):
        return postgres.schema_version(conn)
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: Connection) -> int:
    """Apply the missing migrations, each in its own transaction; returns the schema version.

    Each backend keeps its own list of the same migrations (SQLite's here, PostgreSQL's in
    :mod:`.postgres`) and its version: SQLite's ``user_version``, a one-row
    ``retailrec_schema`` table on PostgreSQL."""
    version = schema_version(conn)
    _check_version(version)
    if isinstance(conn, PgConnection):
        postgres.migrate(conn, SCHEMA_VERSION)
        return SCHEMA_VERSION
    for number in range(version + 1, SCHEMA_VERSION + 1):
        # executescript commits first; BEGIN IMMEDIATE makes concurrent migrators wait their turn.
        conn.executescript(
            "BEGIN IMMEDIATE;\n"
            + MIGRATIONS[number - 1]
            + f"\nPRAGMA user_version = {number};\nCOMMIT;"
        )
    return SCHEMA_VERSION


# --------------------------------------------------------------------------------------------
# Events


def event_columns(events: pd.DataFrame) -> Columns:
    """int64 arrays per column (event as its position in EVENT_TYPES, -1 for no transaction)."""
    event = events["event"]
    codes = event_codes(event)
    if (codes < 0).any():
        raise ValueError(f"unknown event type(s): {sorted(set(event[codes < 0].astype(str)))}")
    return {
        "timestamp": events["timestamp"].to_numpy(np.int64),
        "visitorid": events["visitorid"].to_numpy(np.int64),
        "event": codes.astype(np.int64),
        "itemid": events["itemid"].to_numpy(np.int64),
        "tx_key": events["transactionid"].astype("Int64").fillna(-1).to_numpy(np.int64),
    }


#: Event text from its code. Codes are checked before, so the table's CHECK never refuses one.
_EVENT_TEXT = (
    "CASE {} " + " ".join(f"WHEN {i} THEN '{e}'" for i, e in enumerate(EVENT_TYPES)) + " END"
)
#: Batches at least this large are loaded through a staging table (see :func:`_insert_select`).
STAGE_MIN_ROWS = 10_000
#: Rows turned into Python values at a time, to bind or when fetched: bounds the memory of a bulk
#: write or read (a Python int costs about 36 bytes where numpy keeps 8) whatever the row count.
BIND_ROWS = 500_000

#: A batch of rows by column: numpy arrays (object arrays where values may be None or str).
Columns = dict[str, np.ndarray]


def _rows(columns: Columns, start: int = 0, stop: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Rows ``start:stop`` as tuples of plain Python values, which the driver can bind."""
    return zip(*(values[start:stop].tolist() for values in columns.values()), strict=True)


def _insert_select(
    conn: Connection,
    columns: Columns,
    insert: str,
    before: str | None = None,
    like: str | None = None,
) -> int:
    """Run ``insert`` (an ``INSERT ... SELECT ... FROM stage``) over ``columns``' rows, after
    ``before`` (a statement over ``stage`` too), if given.

    One INSERT ... SELECT writes rows in key order without re-seeking the B-tree from its root
    for each, which a statement per row must: about twice as fast for millions of sorted rows.
    On PostgreSQL the rows reach ``stage`` through ``COPY``. Call inside a transaction. Returns
    the number of rows ``insert`` changed. ``like``: a table whose columns ``stage`` copies
    (PostgreSQL's types), where they are not told by ``columns``' values (a column of NULLs).
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    if isinstance(conn, PgConnection):
        conn.execute("DROP TABLE IF EXISTS pg_temp.stage")
        if like is None:
            typed = ", ".join(f"{name} {postgres.sql_type(v)}" for name, v in columns.items())
        else:
            typed = f"LIKE {like}"
        conn.execute(f"CREATE TEMP TABLE stage ({typed}) ON COMMIT DROP")
        conn.copy_rows(
            "stage",
            names,
            itertools.chain.from_iterable(
                _rows(columns, start, start + BIND_ROWS) for start in range(0, n, BIND_ROWS)
            ),
        )
        if before is not None:
            conn.execute(before)
        return int(conn.execute(insert).rowcount)
    # The table is made outside the transaction, so a rolled-back load leaves it behind.
    conn.execute("DROP TABLE IF EXISTS temp.stage")
    conn.execute(f"CREATE TEMP TABLE stage ({', '.join(names)})")
    try:
        for start in range(0, n, BIND_ROWS):
            conn.executemany(
                f"INSERT INTO temp.stage VALUES ({', '.join('?' * len(names))})",
                _rows(columns, start, start + BIND_ROWS),
            )
        if before is not None:
            conn.execute(before)
        return conn.execute(insert).rowcount
    finally:
        conn.execute("DROP TABLE temp.stage")


def _write(
    conn: Connection,
    columns: Columns,
    *,
    staged: str,
    per_row: str,
    before: tuple[str, str] | None = None,
    also: tuple[str, tuple[Any, ...]] | None = None,
    then: Callable[[Connection, int], None] | None = None,
    like: str | None = None,
) -> int:
    """Write a batch in one transaction: ``staged`` (an INSERT ... SELECT ... FROM stage)
    for :data:`STAGE_MIN_ROWS` rows or more, else ``per_row`` once a row; then ``also`` (one
    statement and its parameters) and ``then(conn, changed)`` (which must not commit) in the
    same transaction. ``before`` runs ahead of the rows: its first statement over
    ``stage`` for a staged batch, else its second once a row, as ``per_row`` is.
    Returns rows changed by the batch."""
    with conn:
        if len(next(iter(columns.values()))) >= STAGE_MIN_ROWS:
            changed = _insert_select(
                conn, columns, staged, None if before is None else before[0], like
            )
        else:
            if before is not None:
                conn.executemany(before[1], _rows(columns))
            changed = conn.executemany(per_row, _rows(columns)).rowcount
        if also is not None:
            conn.execute(*also)
        if then is not None:
            then(conn, changed)
        return changed


def append_events(
    conn: Connection,
    events: pd.DataFrame,
    *,
    source: str = "etl",
    then: Callable[[Connection, int], None] | None = None,
) -> int:
    """Append validated events; rows already in the log are ignored.

    Args:
        events: Typed rows with the ``EVENT_COLUMNS`` (``transactionid`` nullable).
        source: Where the rows came from (``etl``, ``api``).
        then: Called with the connection and the number of new rows inside the append's
            transaction (it must not commit): what it writes stands or falls with the events.

    Returns:
        How many rows were new. ``len(events)`` minus this is the number of duplicates.
    """
    if events.empty:
        return 0
    return append_event_columns(conn, event_columns(events), source=source, then=then)


def take_rows(columns: Columns, rows: np.ndarray) -> None:
    """Keep ``columns[name][rows]`` for every column (an order or a mask), in place, one column
    at a time: the rows are never held twice."""
    for name in columns:
        columns[name] = columns[name][rows]


def append_event_columns(
    conn: Connection,
    columns: Columns,
    *,
    source: str = "etl",
    then: Callable[[Connection, int], None] | None = None,
    in_key_order: bool = False,
) -> int:
    """:func:`append_events` for rows given as :func:`event_columns` (which it may reorder in
    place); ``in_key_order``: they are sorted by visitor and time already."""
    if not len(columns["timestamp"]):
        return 0
    if not in_key_order:
        # Inserting in key order keeps the B-tree appends local: about twice as fast. One column
        # is reordered at a time, so the log is never held twice.
        take_rows(columns, np.lexsort((columns["timestamp"], columns["visitorid"])))
    target = (
        "INSERT INTO events (timestamp, visitorid, event, itemid, tx_key, transactionid, source)"
    )
    ignore = " ON CONFLICT DO NOTHING"  # a row already in the log is a duplicate
    word = _sql_word(source)
    least, greatest = ("least", "greatest") if _pg(conn) else ("min", "max")
    return _write(
        conn,
        columns,
        staged=f"{target} SELECT timestamp, visitorid, {_EVENT_TEXT.format('event')}, itemid,"
        f" tx_key, nullif(tx_key, -1), '{word}' FROM stage WHERE true{ignore}",
        per_row=f"{target} VALUES (?1, ?2, {_EVENT_TEXT.format('?3')}, ?4, ?5, nullif(?5, -1),"
        f" '{word}'){ignore}",
        # Before the rows, so that "had events" and "new" mean before this batch.
        before=(
            _BUMP.format(
                "SELECT DISTINCT visitorid FROM stage AS s WHERE NOT EXISTS ("
                + _SAME_EVENT.format(
                    v="s.visitorid",
                    t="s.timestamp",
                    i="s.itemid",
                    e=_EVENT_TEXT.format("s.event"),
                    x="s.tx_key",
                )
                + ")"
            ),
            _BUMP.format(
                "SELECT ?2 AS visitorid WHERE NOT EXISTS ("
                + _SAME_EVENT.format(v="?2", t="?1", i="?4", e=_EVENT_TEXT.format("?3"), x="?5")
                + ")"
            ),
        ),
        # The clock moves with the log, in the same transaction. A batch of duplicates moves it
        # nowhere: rows already in the log are already within it.
        also=(
            "INSERT INTO shop_clock (id, first_ms, newest_ms) VALUES (1, ?, ?) ON CONFLICT (id)"
            f" DO UPDATE SET first_ms = {least}(shop_clock.first_ms, excluded.first_ms),"
            f" newest_ms = {greatest}(shop_clock.newest_ms, excluded.newest_ms)",
            (int(columns["timestamp"].min()), int(columns["timestamp"].max())),
        ),
        then=then,
    )


#: Bumps the version of each visitor (``{}``: a query of their ids: those of a batch with rows
#: new to the log) who has events already: any history read of them before the batch is stale
#: after it (see visitor_version). A batch of duplicates bumps no one.
_BUMP = (
    "INSERT INTO visitor_versions (visitorid, version) SELECT b.visitorid, 1 FROM ({}) AS b"
    " WHERE EXISTS (SELECT 1 FROM events AS e WHERE e.visitorid = b.visitorid)"
    " ON CONFLICT (visitorid) DO UPDATE SET version = visitor_versions.version + 1"
)


#: The log's row with this key (a lookup of the primary key).
_SAME_EVENT = (
    "SELECT 1 FROM events AS d WHERE d.visitorid = {v} AND d.timestamp = {t}"
    " AND d.itemid = {i} AND d.event = {e} AND d.tx_key = {x}"
)


def _sql_word(text: str) -> str:
    if not text.isidentifier():
        raise ValueError(f"not a plain word: {text!r}")
    return text


def read_events(
    conn: Connection,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    visitor_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Events with ``start_ms <= timestamp < end_ms`` (either bound optional), in time order.

    Returns:
        The ``EVENT_COLUMNS``: int64 ``timestamp`` (ms), ``visitorid``, ``itemid``;
        str ``event``; nullable Int64 ``transactionid``.
    """
    clauses, params = [], []
    if start_ms is not None:
        clauses.append("timestamp >= ?")
        params.append(int(start_ms))
    if end_ms is not None:
        clauses.append("timestamp < ?")
        params.append(int(end_ms))
    if visitor_ids is not None:
        ids = [int(v) for v in visitor_ids]
        clauses.append(f"visitorid IN ({','.join('?' * len(ids))})" if ids else "1 = 0")
        params.extend(ids)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    # Integers only cross the driver (event as a code, NULL as -1), in key order, which the
    # table's own order gives without a sort; a stable sort by time then leaves ties in key order.
    with _streamed(conn, f"{_EVENT_CODES} {where} {_KEY_ORDER}", params) as cursor:
        a = _fetch_codes(cursor)
    if not len(a):
        return _events_frame([])
    return _codes_frame(a[np.argsort(a[:, 0], kind="stable")])


def iter_visitor_blocks(conn: Connection, rows: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """The whole log as frames of whole visitors, about ``rows`` rows each (more only for a
    visitor with more events than that), in key order: by visitor, then time. Memory stays that
    of one block whatever the log's size."""
    after: int | None = None
    while True:
        where, params = ("WHERE visitorid > ?", [after]) if after is not None else ("", [])
        query = f"{_EVENT_CODES} {where} {_KEY_ORDER} LIMIT ?"
        with _streamed(conn, query, [*params, rows]) as cursor:
            a = _fetch_codes(cursor)
        if not len(a):
            return
        if len(a) == rows:  # the last visitor's events may go on past the limit
            last = int(a[-1, 1])
            if a[0, 1] == last:  # one visitor alone: all of theirs
                a = _fetch_codes(
                    conn.execute(f"{_EVENT_CODES} WHERE visitorid = ? {_KEY_ORDER}", [last])
                )
            else:  # up to the last visitor, whose events come with the next block
                a = a[: int(np.searchsorted(a[:, 1], last))]
        after = int(a[-1, 1])
        yield _codes_frame(a)


#: The events as integers (event as a code; tx_key is the transaction, -1 for none), and the
#: table's own key order. Every column read is in the key: PostgreSQL reads the index alone.
_EVENT_CODES = (
    "SELECT timestamp, visitorid, CASE event WHEN 'view' THEN 0 WHEN 'addtocart' THEN 1"
    " ELSE 2 END, itemid, tx_key FROM events"
)
_KEY_ORDER = "ORDER BY visitorid, timestamp, itemid, event, tx_key"


def _fetch_codes(cursor: Any) -> np.ndarray:
    """A cursor over :data:`_EVENT_CODES` as an (n, 5) int64 array. Fetched a block at a time:
    a row as Python values costs ~200 bytes, as numpy 40, so the log is never all in Python
    objects at once."""
    blocks = []
    while rows := cursor.fetchmany(BIND_ROWS):
        flat = itertools.chain.from_iterable(rows)
        blocks.append(np.fromiter(flat, np.int64, 5 * len(rows)).reshape(-1, 5))
    if not blocks:
        return np.zeros((0, 5), dtype=np.int64)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _codes_frame(a: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": a[:, 0],
            "visitorid": a[:, 1],
            "event": pd.Series(EVENT_NAMES.take(pa.array(a[:, 2])), dtype="str"),
            "itemid": a[:, 3],
            "transactionid": pd.arrays.IntegerArray(a[:, 4].copy(), a[:, 4] < 0),
        }
    )


def _events_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(
            {
                "timestamp": pd.Series(dtype="int64"),
                "visitorid": pd.Series(dtype="int64"),
                "event": pd.Series(dtype="str"),
                "itemid": pd.Series(dtype="int64"),
                "transactionid": pd.Series(dtype="Int64"),
            }
        )
    ts, vis, ev, item, tx = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "timestamp": np.fromiter(ts, np.int64, len(rows)),
            "visitorid": np.fromiter(vis, np.int64, len(rows)),
            "event": pd.Series(ev, dtype="str"),
            "itemid": np.fromiter(item, np.int64, len(rows)),
            "transactionid": pd.array(tx, dtype="Int64"),
        }
    )


@dataclass(frozen=True)
class History:
    """One visitor's events in time order, as plain arrays (the serving hot path)."""

    timestamp: np.ndarray
    event_code: np.ndarray  # positions in EVENT_TYPES
    itemid: np.ndarray
    tx_key: np.ndarray  # transactionid, -1 where there is none

    @property
    def event(self) -> list[str]:
        return [EVENT_TYPES[c] for c in self.event_code]

    @property
    def transactionid(self) -> list[int | None]:
        return [None if t < 0 else int(t) for t in self.tx_key]

    def frame(self, visitor_id: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "timestamp": self.timestamp,
                "visitorid": np.full(len(self.timestamp), visitor_id, dtype=np.int64),
                "event": pd.Series(self.event, dtype="str"),
                "itemid": self.itemid,
                "transactionid": pd.array(self.transactionid, dtype="Int64"),
            }
        )


def visitor_history(
    conn: Connection,
    visitor_id: int,
    *,
    as_of_ms: int | None = None,
    limit: int | None = None,
) -> History:
    """A visitor's events up to and including ``as_of_ms``, oldest first.

    One range read of the clustered key. With ``limit``, the most recent ``limit`` events.
    """
    where, params = "visitorid = ?", [int(visitor_id)]
    if as_of_ms is not None:
        where += " AND timestamp <= ?"
        params.append(int(as_of_ms))
    # The key's order, ties included, so that a history is the same list whoever reads it
    # (evaluation rebuilds it from the log in this order: see training.evaluate.Histories). With
    # a limit the key is walked backwards from the newest event and the rows reversed here: no
    # sort at all, as the key orders every row (about a third of an active visitor's read).
    newest_first = limit is not None
    order = (
        "timestamp DESC, itemid DESC, event DESC, tx_key DESC"
        if newest_first
        else "timestamp, itemid, event, tx_key"
    )
    sql = (
        "SELECT timestamp, CASE event WHEN 'view' THEN 0 WHEN 'addtocart' THEN 1 ELSE 2 END,"
        f" itemid, tx_key FROM events WHERE {where} ORDER BY {order}"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    rows = conn.execute(sql, params).fetchall()
    a = np.array(rows, dtype=np.int64).reshape(len(rows), 4)  # integers only: one conversion
    if newest_first:
        a = a[::-1].copy()
    return History(a[:, 0], a[:, 1], a[:, 2], a[:, 3])


def visitor_version(conn: Connection, visitor_id: int) -> tuple[int, int | None]:
    """A counter that changes whenever the visitor's events change once they have any, and the
    shop's clock (:func:`shop_clock`): two key lookups in one statement. A history read *after*
    the counter holds until the counter changes, so a cache of histories reads the counter
    first and the history second."""
    version, clock = conn.execute(
        "SELECT (SELECT version FROM visitor_versions WHERE visitorid = ?),"
        " (SELECT newest_ms FROM shop_clock WHERE id = 1)",
        (int(visitor_id),),
    ).fetchone()
    return (0 if version is None else int(version)), (None if clock is None else int(clock))


def event_count(conn: Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def time_range(conn: Connection) -> tuple[int | None, int | None]:
    """The first and the newest accepted event's time (Unix ms); ``(None, None)`` when the log is
    empty. The newest is the shop's clock (see :func:`shop_clock`)."""
    row = conn.execute("SELECT first_ms, newest_ms FROM shop_clock WHERE id = 1").fetchone()
    return (None, None) if row is None else (int(row[0]), int(row[1]))


def probe_write(conn: Connection) -> str | None:
    """None when the store takes a committed write now, else why not (one line): a read-only
    file or folder, a full disk or a lock held too long all show here, as they would on an
    append. The write is one row of its own table, rewritten in place."""
    try:
        with conn:
            conn.execute(
                "INSERT INTO write_probe (id, at_ms) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                (int(time.time() * 1000),),
            )
    except DATABASE_ERRORS as exc:
        return error_line(exc)
    return None


def shop_clock(conn: Connection) -> int | None:
    """The shop's "now": the newest accepted event's time (Unix ms), None for an empty log.

    Every "now" reads this, never the wall clock (see :mod:`retailrec.events`); one key lookup.
    """
    return time_range(conn)[1]


# --------------------------------------------------------------------------------------------
# Catalogue


def upsert_item_properties(conn: Connection, props: pd.DataFrame) -> int:
    """Insert or update ``(itemid, property, timestamp) -> value`` rows. Returns rows changed."""
    if props.empty:
        return 0
    props = props.sort_values(["itemid", "property", "timestamp"], kind="stable")
    columns = {
        "itemid": props["itemid"].to_numpy(np.int64),
        "property": props["property"].astype("str").to_numpy(object),
        "timestamp": props["timestamp"].to_numpy(np.int64),
        "value": props["value"].astype("str").to_numpy(object),
    }
    insert = "INSERT INTO item_properties (itemid, property, timestamp, value)"
    upsert = (
        " ON CONFLICT (itemid, property, timestamp) DO UPDATE SET value = excluded.value"
        " WHERE item_properties.value <> excluded.value"
    )
    return _write(
        conn,
        columns,
        # "WHERE true" tells SQLite's parser that ON CONFLICT is not part of a join.
        staged=f"{insert} SELECT * FROM stage WHERE true{upsert}",
        per_row=f"{insert} VALUES (?, ?, ?, ?){upsert}",
    )


def read_item_properties(
    conn: Connection, *, as_of_ms: int | None = None, latest: bool = False
) -> pd.DataFrame:
    """Property rows stated at or before ``as_of_ms``; with ``latest``, only each item's last
    statement of each property (the catalogue's input: a fraction of the rows)."""
    where, params = ("WHERE timestamp <= ?", [int(as_of_ms)]) if as_of_ms is not None else ("", [])
    if latest and _pg(conn):
        sql = (
            "SELECT DISTINCT ON (itemid, property) timestamp, itemid, property, value"
            f" FROM item_properties {where} ORDER BY itemid, property, timestamp DESC"
        )
    elif latest:  # SQLite takes a bare column's value from the row that max() picked
        sql = (
            "SELECT max(timestamp) AS timestamp, itemid, property, value FROM item_properties"
            f" {where} GROUP BY itemid, property"
        )
    else:
        sql = f"SELECT timestamp, itemid, property, value FROM item_properties {where}"
    return _frame(
        conn,
        sql,
        params,
        {"timestamp": "int64", "itemid": "int64", "property": "str", "value": "str"},
    )


def upsert_categories(conn: Connection, tree: pd.DataFrame) -> int:
    if tree.empty:
        return 0
    with conn:
        return conn.executemany(
            "INSERT INTO categories (categoryid, parentid) VALUES (?, ?)"
            " ON CONFLICT (categoryid) DO UPDATE SET parentid = excluded.parentid"
            " WHERE categories.parentid IS DISTINCT FROM excluded.parentid",
            zip(
                tree["categoryid"].astype("int64").tolist(),
                [None if pd.isna(p) else int(p) for p in tree["parentid"]],
                strict=True,
            ),
        ).rowcount


def read_categories(conn: Connection) -> pd.DataFrame:
    return _frame(
        conn,
        "SELECT categoryid, parentid FROM categories ORDER BY categoryid",
        [],
        {"categoryid": "int64", "parentid": "Int64"},
    )


def _frame(
    conn: Connection, sql: str, params: Sequence[Any], dtype: dict[str, str] | None = None
) -> pd.DataFrame:
    """A query's rows as a frame with its columns' names (what pandas' ``read_sql_query`` does
    for SQLite, for either backend)."""
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    frame = pd.DataFrame.from_records(cursor.fetchall(), columns=names, coerce_float=True)
    return frame.astype(dtype) if dtype else frame


# --------------------------------------------------------------------------------------------
# Features


def _column_values(col: pd.Series) -> np.ndarray:
    """A column as an array that binds as plain Python values: None where missing."""
    values: np.ndarray
    if col.isna().any():
        values = col.astype(object).where(col.notna(), None).to_numpy(object)
    elif col.dtype.kind in "iub":
        values = col.to_numpy(np.int64)
    elif col.dtype.kind == "f":
        values = col.to_numpy(np.float64)
    else:
        values = col.to_numpy(object)
    return values


def _replace_rows(conn: Connection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    columns = {str(c): _column_values(frame[c]) for c in frame.columns}
    # A snapshot's rows are deleted before they are written; SQLite's REPLACE keeps the last of
    # two rows with one key in a frame, where PostgreSQL refuses the frame.
    insert = f"INSERT{'' if _pg(conn) else ' OR REPLACE'} INTO {table} ({', '.join(columns)})"
    _write(
        conn,
        columns,
        staged=f"{insert} SELECT * FROM stage",
        per_row=f"{insert} VALUES ({', '.join('?' * len(columns))})",
    )


def write_features(
    conn: Connection,
    *,
    as_of_ms: int,
    users: pd.DataFrame,
    items: pd.DataFrame,
    pairs: pd.DataFrame,
) -> None:
    """Store one point-in-time snapshot; a snapshot with the same ``as_of_ms`` is replaced whole.

    The snapshot is listed in ``feature_snapshots`` only once all its rows are written, so a
    reader that goes by that list never sees half a snapshot.
    """
    with conn:
        conn.execute("DELETE FROM feature_snapshots WHERE as_of_ms = ?", (int(as_of_ms),))
        for table in ("user_features", "item_features", "item_pairs"):
            conn.execute(f"DELETE FROM {table} WHERE as_of_ms = ?", (int(as_of_ms),))
    _replace_rows(conn, "user_features", users.assign(as_of_ms=int(as_of_ms)))
    _replace_rows(conn, "item_features", items.assign(as_of_ms=int(as_of_ms)))
    _replace_rows(conn, "item_pairs", pairs.assign(as_of_ms=int(as_of_ms)))
    with conn:
        conn.execute(
            "INSERT INTO feature_snapshots (as_of_ms, created_ms, n_users, n_items)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (as_of_ms) DO UPDATE SET"
            " created_ms = excluded.created_ms, n_users = excluded.n_users,"
            " n_items = excluded.n_items",
            (int(as_of_ms), int(time.time() * 1000), len(users), len(items)),
        )


def snapshots(conn: Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT as_of_ms FROM feature_snapshots ORDER BY as_of_ms")]


def read_user_features(
    conn: Connection, as_of_ms: int, visitor_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """The stored snapshot ``as_of_ms`` of user features (optionally for some visitors)."""
    sql, params = "SELECT * FROM user_features WHERE as_of_ms = ?", [int(as_of_ms)]
    if visitor_ids is not None:
        sql += f" AND visitorid IN ({','.join('?' * len(visitor_ids))})"
        params += [int(v) for v in visitor_ids]
    return _frame(conn, sql + " ORDER BY visitorid", params)


def read_item_features(conn: Connection, as_of_ms: int) -> pd.DataFrame:
    return _frame(
        conn,
        "SELECT * FROM item_features WHERE as_of_ms = ? ORDER BY itemid",
        [int(as_of_ms)],
        {"categoryid": "Int64", "available": "Int64"},
    )


def read_item_pairs(conn: Connection, as_of_ms: int) -> pd.DataFrame:
    return _frame(
        conn,
        "SELECT itemid, other_itemid, n_baskets, n_carts FROM item_pairs WHERE as_of_ms = ?"
        " ORDER BY itemid, other_itemid",
        [int(as_of_ms)],
    )


# --------------------------------------------------------------------------------------------
# ETL runs


def _etl_run_values(report: dict[str, Any]) -> tuple[Any, ...]:
    return (
        int(report["started_ms"]),
        str(report["source"]),
        int(report["rows_read"]),
        int(report["loaded"]),
        int(report["duplicates"]),
        int(report["rejected"]),
        json.dumps(report, sort_keys=True),
    )


def insert_etl_run(conn: Connection, report: dict[str, Any]) -> int:
    """Record an ETL run without committing: called inside the transaction that appends the
    run's events (:func:`append_events`' ``then``), so that its count stands with them."""
    row = conn.execute(
        "INSERT INTO etl_runs (started_ms, source, rows_read, loaded, duplicates, rejected,"
        " report_json) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
        _etl_run_values(report),
    ).fetchall()  # all: SQLite finishes a RETURNING statement only once it is read out
    return int(row[0][0])


def record_etl_run(conn: Connection, report: dict[str, Any], run_id: int | None = None) -> int:
    """Record an ETL run's report (committed): a new row, or the final report of ``run_id``."""
    with conn:
        if run_id is None:
            return insert_etl_run(conn, report)
        conn.execute(
            "UPDATE etl_runs SET started_ms = ?, source = ?, rows_read = ?, loaded = ?,"
            " duplicates = ?, rejected = ?, report_json = ? WHERE run_id = ?",
            (*_etl_run_values(report), int(run_id)),
        )
    return int(run_id)


def last_etl_report(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute("SELECT report_json FROM etl_runs ORDER BY run_id DESC LIMIT 1").fetchone()
    return None if row is None else dict(json.loads(row[0]))


def log_served(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Append served recommendations: (id, served_ms, endpoint, visitorid, strategy, version,
    items JSON, latency_ms) tuples."""
    if not rows:
        return
    with conn:
        conn.executemany(
            "INSERT INTO served_recommendations (recommendation_id, served_ms,"
            " endpoint, visitorid, strategy, model_version, items, latency_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            rows,
        )


def read_served(conn: Connection, *, since_ms: int | None = None) -> pd.DataFrame:
    sql, params = "SELECT * FROM served_recommendations", []
    if since_ms is not None:
        sql += " WHERE served_ms >= ?"
        params.append(int(since_ms))
    return _frame(conn, sql + " ORDER BY served_ms", params)


def item_counts_since(conn: Connection, since_ms: int) -> pd.Series:
    """Events per item at or after ``since_ms``: popularity over a time window."""
    rows = conn.execute(
        "SELECT itemid, count(*) FROM events WHERE timestamp >= ? GROUP BY itemid", (int(since_ms),)
    ).fetchall()
    return pd.Series(dict(rows), dtype="int64")


def announce_model(conn: Connection, version: str) -> int:
    """Record that every API process should serve ``version`` now; returns the announcement's
    generation (one more than the last), which the processes' watchers compare with theirs."""
    with conn:
        row = conn.execute(
            "INSERT INTO served_model (id, generation, version, at_ms) VALUES (1, 1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET generation = served_model.generation + 1,"
            " version = excluded.version, at_ms = excluded.at_ms RETURNING generation",
            (str(version), int(time.time() * 1000)),
        ).fetchall()  # all: SQLite finishes a RETURNING statement only once it is read out
    return int(row[0][0])


def announced_model(conn: Connection) -> tuple[int, str | None]:
    """The last announcement: (generation, version); (0, None) before any. One key lookup."""
    row = conn.execute("SELECT generation, version FROM served_model WHERE id = 1").fetchone()
    return (0, None) if row is None else (int(row[0]), str(row[1]))


@contextmanager
def _streamed(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
    """A cursor over ``sql`` whose rows are fetched a block at a time (a server-side cursor on
    PostgreSQL, whose client would otherwise take the whole result at once)."""
    if isinstance(conn, PgConnection):
        with conn.stream(sql, params, BIND_ROWS) as cursor:
            yield cursor
    else:
        yield conn.execute(sql, params)


def table_count(conn: Connection, table: str) -> int:
    if table not in TABLES:
        raise ValueError(f"not a table of the store: {table!r}")
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def copy_store(
    source: Connection,
    target: Connection,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, tuple[int, int]]:
    """Copy every table of ``source`` into ``target`` (another backend, or another database),
    a block of :data:`BIND_ROWS` rows per transaction, then verify the counts.

    A row whose key the target holds already is overwritten with the source's, so a second
    run completes a copy that was cut short, or brings over what changed since the first (the
    clock, the visitors' versions, new events). ``progress(table, rows copied so far)`` is told
    after each block.

    Returns:
        ``{table: (rows in source, rows in target)}``, equal for every table.

    Raises:
        StoreError: a table's counts differ after the copy (the target held other rows).
    """
    for table, key in TABLES.items():
        with _streamed(source, f"SELECT * FROM {table}") as cursor:
            names = [d[0] for d in cursor.description]
            listed = ", ".join(names)
            insert = f"INSERT INTO {table} ({listed})"
            rest = [name for name in names if name not in key]
            # Only rows that differ are rewritten: the log's triggers see no change where none
            # was made, and a second run of an unchanged store writes nothing.
            upsert = f" ON CONFLICT ({', '.join(key)}) " + (
                f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in rest)} WHERE "
                + " OR ".join(f"{table}.{c} IS DISTINCT FROM excluded.{c}" for c in rest)
                if rest
                else "DO NOTHING"
            )
            done = 0
            while rows := cursor.fetchmany(BIND_ROWS):
                columns = {
                    name: np.array(values, dtype=object)
                    for name, values in zip(names, zip(*rows, strict=True), strict=True)
                }
                _write(
                    target,
                    columns,
                    staged=f"{insert} SELECT {listed} FROM stage WHERE true{upsert}",
                    per_row=f"{insert} VALUES ({', '.join('?' * len(names))}){upsert}",
                    like=table,
                )
                done += len(rows)
                if progress is not None:
                    progress(table, done)
    if isinstance(target, PgConnection):  # new runs are numbered after the copied ones
        target.execute(
            "SELECT setval(pg_get_serial_sequence('etl_runs', 'run_id'),"
            " (SELECT max(run_id) FROM etl_runs)) WHERE EXISTS (SELECT 1 FROM etl_runs)"
        )
    counts = {table: (table_count(source, table), table_count(target, table)) for table in TABLES}
    differ = [f"{t} {a:,} -> {b:,}" for t, (a, b) in counts.items() if a != b]
    if differ:
        raise StoreError(
            f"the copy's counts differ ({'; '.join(differ)}): the target held other rows;"
            " migrate into an empty store"
        )
    return counts


def open_store(target: Path | str) -> closing[Connection]:
    """``with open_store(target) as conn:`` opens, migrates and always closes the store."""
    return closing(connect(target))


# -- summaries for the dashboard: aggregated in SQLite, so only small frames cross the driver -----


def daily_event_counts(conn: Connection) -> pd.DataFrame:
    """Events per UTC day and type: ``day`` (ms at midnight), ``event``, ``n``."""
    rows = conn.execute(
        "SELECT timestamp / 86400000 * 86400000 AS day, event, count(*) FROM events"
        " GROUP BY day, event ORDER BY day, event"
    ).fetchall()
    return pd.DataFrame(rows, columns=["day", "event", "n"])


def visitors_per_event(conn: Connection) -> dict[str, int]:
    """Distinct visitors with at least one event of each type (the funnel), and in all."""
    out = {
        str(e): int(n)
        for e, n in conn.execute(
            "SELECT event, count(DISTINCT visitorid) FROM events GROUP BY event"
        ).fetchall()
    }
    out["any"] = int(conn.execute("SELECT count(DISTINCT visitorid) FROM events").fetchone()[0])
    return out


def visitor_activity(conn: Connection) -> pd.Series:
    """How many visitors have 1, 2, 3, ... events: the activity distribution."""
    rows = conn.execute(
        "SELECT n, count(*) FROM (SELECT count(*) AS n FROM events GROUP BY visitorid) AS a"
        " GROUP BY n ORDER BY n"
    ).fetchall()
    return pd.Series(dict(rows), dtype="int64", name="visitors")


def sample_visitors(conn: Connection, n: int = 50, min_events: int = 5) -> list[int]:
    """Up to ``n`` visitors with at least ``min_events`` events, most recent activity first."""
    rows = conn.execute(
        "SELECT visitorid FROM events GROUP BY visitorid HAVING count(*) >= ?"
        " ORDER BY max(timestamp) DESC LIMIT ?",
        (int(min_events), int(n)),
    ).fetchall()
    return [int(r[0]) for r in rows]
