"""ETL end to end on files with every kind of bad input: nothing valid is lost, counts add up."""

from __future__ import annotations

import gzip
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retailrec.config import get_settings
from retailrec.data_pipeline import etl, feature_pipeline
from retailrec.errors import DataFileError
from retailrec.feature_store import store
from tests.utils.factories import Shop

HEADER = "timestamp,visitorid,event,itemid,transactionid"
T = 1_433_221_332_117  # 2015-06-02, inside the sane range


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = store.connect(get_settings().feature_store)
    yield c
    c.close()


def _run(
    tmp_path: Path, conn: sqlite3.Connection, text: str | bytes, name: str = "raw"
) -> etl.EtlReport:
    raw = tmp_path / name
    raw.mkdir(exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    (raw / "events.csv").write_bytes(data)
    return etl.run_etl(
        raw,
        conn=conn,
        rejected_dir=tmp_path / "rejected",
        processed_dir=tmp_path / "processed",
        reports_dir=tmp_path / "reports",
    )


def _rejected(report: etl.EtlReport) -> pd.DataFrame:
    assert report.rejected_file is not None
    return pd.read_csv(report.rejected_file, dtype=str, keep_default_na=False)


def _lines(*rows: str) -> str:
    return "\n".join([HEADER, *rows]) + "\n"


GOOD_ROWS = [f"{T},1,view,10,", f"{T + 1000},1,addtocart,10,", f"{T + 2000},1,transaction,10,77"]


#: A bad row between good ones, and its reason (the spark engine's equivalence test runs them
#: too).
BAD_ROWS = [
    (f"{T},2,click,10,", "unknown event type"),
    (f"{T},-2,view,10,", "negative visitorid"),
    (f"{T},2,view,-10,", "negative itemid"),
    (f"{T},abc,view,10,", "visitorid is not an integer"),
    (f"{T},2,view,1x0,", "itemid is not an integer"),
    (f"{T},2,view,,", "missing itemid"),
    ("noon,2,view,10,", "timestamp is not an integer"),
    (f"{T // 1000},2,view,10,", "timestamp in seconds, not milliseconds"),
    (f"{T},2,transaction,10,", "transaction without transactionid"),
    (f"{T},2,view,10,55", "transactionid on a non-transaction event"),
    (f"{T},2,view,10,,extra", "wrong number of fields"),
    (f"{T},2,view", "wrong number of fields"),
]


@pytest.mark.parametrize(("bad_row", "reason"), BAD_ROWS)
def test_bad_rows_are_quarantined_with_a_reason(
    tmp_path: Path, conn: sqlite3.Connection, bad_row: str, reason: str
) -> None:
    report = _run(tmp_path, conn, _lines(GOOD_ROWS[0], bad_row, *GOOD_ROWS[1:]))
    assert report.rows_read == 4
    assert report.loaded == 3  # nothing valid is lost
    assert report.rejected == 1
    assert report.rejected_by_reason == {reason: 1}
    quarantined = _rejected(report)
    assert quarantined["reason"].tolist() == [reason]
    assert list(quarantined.columns[:5]) == HEADER.split(",")
    assert store.event_count(conn) == 3


def test_a_truncated_last_line_without_newline_is_quarantined(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    text = _lines(*GOOD_ROWS) + f"{T + 5000},3,vi"
    report = _run(tmp_path, conn, text)
    assert (report.rows_read, report.loaded, report.rejected) == (4, 3, 1)
    row = _rejected(report).iloc[0]
    assert row["reason"] == "wrong number of fields"
    assert row["timestamp"] == str(T + 5000)
    assert row["event"] == "vi"


def test_a_missing_final_newline_loses_nothing(tmp_path: Path, conn: sqlite3.Connection) -> None:
    report = _run(tmp_path, conn, _lines(*GOOD_ROWS).rstrip("\n"))
    assert (report.rows_read, report.loaded, report.rejected) == (3, 3, 0)


def test_blank_lines_anywhere_are_not_rows(tmp_path: Path, conn: sqlite3.Connection) -> None:
    text = HEADER + "\n\n" + GOOD_ROWS[0] + "\n   \n\t\n" + GOOD_ROWS[1] + "\r\n \r\n\n"
    report = _run(tmp_path, conn, text)
    assert (report.rows_read, report.loaded, report.rejected) == (2, 2, 0)


def test_bom_crlf_and_quoted_fields_are_read(tmp_path: Path, conn: sqlite3.Connection) -> None:
    text = (
        "\ufeff"
        + HEADER
        + "\r\n"
        + f'"{T}","1","view","10",""\r\n'
        + f'{T + 1},"2",transaction,11,"12"\r\n'
    )
    report = _run(tmp_path, conn, text.encode("utf-8"))
    assert (report.rows_read, report.loaded, report.rejected) == (2, 2, 0)
    events = store.read_events(conn)
    assert events["transactionid"].tolist()[1] == 12


def test_duplicates_are_counted_and_dropped(tmp_path: Path, conn: sqlite3.Connection) -> None:
    report = _run(tmp_path, conn, _lines(*GOOD_ROWS, GOOD_ROWS[0], GOOD_ROWS[2], GOOD_ROWS[0]))
    assert (report.rows_read, report.loaded, report.duplicates, report.rejected) == (6, 3, 3, 0)
    assert report.duplicates_in_file == 3


def test_extra_columns_are_ignored_with_a_warning(
    tmp_path: Path, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        HEADER + ",channel,price\n" + f"{T},1,view,10,,web,9.99\n" + f"{T + 1},2,view,11,,app,1\n"
    )
    report = _run(tmp_path, conn, text)
    assert (report.rows_read, report.loaded) == (2, 2)
    assert report.extra_columns == ["channel", "price"]
    assert "ignored extra column(s) channel, price" in report.warnings
    assert "channel" in caplog.text


def test_columns_in_another_order_are_read_by_name(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    text = "event,itemid,timestamp,transactionid,visitorid\n" + f"view,10,{T},,1\n"
    report = _run(tmp_path, conn, text)
    assert report.loaded == 1
    assert store.read_events(conn).iloc[0][["visitorid", "itemid"]].tolist() == [1, 10]


def test_a_missing_required_column_is_a_one_line_error(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    with pytest.raises(DataFileError, match=r"missing required column.*itemid") as info:
        _run(tmp_path, conn, "timestamp,visitorid,event,transactionid\n1,2,view,\n")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["", "\n", "   \n\n"])
def test_an_empty_file_is_a_one_line_error(
    tmp_path: Path, conn: sqlite3.Connection, content: str
) -> None:
    with pytest.raises(DataFileError, match="the file is empty"):
        _run(tmp_path, conn, content)


def test_a_header_without_rows_loads_nothing(tmp_path: Path, conn: sqlite3.Connection) -> None:
    report = _run(tmp_path, conn, HEADER + "\n")
    assert (report.rows_read, report.loaded, report.rejected) == (0, 0, 0)
    assert report.warnings == ["the file has a header but no rows"]


def test_rows_out_of_time_order_are_loaded_and_sorted(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    report = _run(tmp_path, conn, _lines(GOOD_ROWS[2], GOOD_ROWS[0], GOOD_ROWS[1]))
    assert report.loaded == 3
    assert store.read_events(conn)["timestamp"].is_monotonic_increasing
    parquet = pd.read_parquet(tmp_path / "processed" / "events.parquet")
    assert parquet["timestamp"].is_monotonic_increasing
    assert parquet["session"].tolist() == [0, 0, 0]


def _contents(conn: store.Connection) -> dict[str, list[tuple[object, ...]]]:
    tables = [t for t in store.TABLES if t != "etl_runs"]
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_a_second_run_of_the_same_file_changes_nothing(tmp_path: Path, tiny_shop: Shop) -> None:
    conn = store.connect(get_settings().feature_store)
    kwargs = {"conn": conn, "rejected_dir": tmp_path / "rej", "processed_dir": tmp_path / "proc"}
    first = etl.run_etl(tiny_shop.dir, **kwargs)
    before = _contents(conn)
    parquet_before = pd.read_parquet(tmp_path / "proc" / "events.parquet")
    second = etl.run_etl(tiny_shop.dir, **kwargs)
    assert first.loaded == len(tiny_shop.data.events.drop_duplicates())
    assert first.duplicates == int(tiny_shop.data.events.duplicated().sum())
    assert second.loaded == 0
    assert second.duplicates == second.rows_read == first.rows_read
    assert _contents(conn) == before
    assert conn.execute("SELECT count(*) FROM etl_runs").fetchone()[0] == 2  # each run is logged
    pd.testing.assert_frame_equal(
        parquet_before, pd.read_parquet(tmp_path / "proc" / "events.parquet")
    )
    conn.close()


def test_a_new_file_appends_only_its_new_events(tmp_path: Path, conn: sqlite3.Connection) -> None:
    first = _run(tmp_path, conn, _lines(*GOOD_ROWS), name="day1")
    newer = [f"{T + 86_400_000},5,view,12,", f"{T + 86_401_000},5,view,13,"]
    second = _run(tmp_path, conn, _lines(GOOD_ROWS[2], *newer), name="day2")
    assert first.loaded == 3
    assert (second.rows_read, second.loaded, second.duplicates) == (3, 2, 1)
    assert second.duplicates_in_store == 1
    assert store.event_count(conn) == 5


def test_synthetic_shop_loads_with_catalogue(
    tmp_path: Path, conn: sqlite3.Connection, tiny_shop: Shop
) -> None:
    report = etl.run_etl(
        tiny_shop.dir, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "proc"
    )
    assert report.rejected == 0
    assert report.rows_read == len(tiny_shop.data.events)
    assert report.item_properties_read == len(tiny_shop.data.item_properties)
    items = pd.read_parquet(tmp_path / "proc" / "items.parquet").set_index("itemid")
    truth = tiny_shop.data.truth_items.set_index("itemid")["categoryid"]
    assert (items["categoryid"] == truth.loc[items.index]).all()
    inter = pd.read_parquet(tmp_path / "proc" / "interactions.parquet")
    events = tiny_shop.data.events.drop_duplicates()
    assert len(inter) == len(events[["visitorid", "itemid"]].drop_duplicates())
    assert inter["n_views"].sum() == (events["event"] == "view").sum()
    assert len(pd.read_parquet(tmp_path / "proc" / "category_tree.parquet")) == len(
        tiny_shop.data.category_tree
    )
    assert store.last_etl_report(conn)["loaded"] == report.loaded


def test_the_real_sample_loads_and_adds_up(
    tmp_path: Path, conn: sqlite3.Connection, real_sample: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_bytes(real_sample.read_bytes())
    report = etl.run_etl(
        raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "proc"
    )
    assert report.rows_read == 2_771
    assert (report.loaded, report.duplicates, report.rejected) == (2_770, 1, 0)


def test_bad_item_properties_are_quarantined(tmp_path: Path, conn: sqlite3.Connection) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(_lines(*GOOD_ROWS))
    (raw / "item_properties.csv").write_text(
        "timestamp,itemid,property,value\n"
        f"{T},10,categoryid,5\n"
        f"{T},x,categoryid,6\n"
        f"{T},11,888,hashed\n"
        f"{T // 1000},13,available,1\n"
        f"{T},12,available\n"
    )
    report = etl.run_etl(
        raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "proc"
    )
    assert report.item_properties_read == 5
    assert (report.item_properties_kept, report.item_properties_other) == (1, 1)
    assert report.item_properties_rejected == 3
    rejected = pd.read_csv(tmp_path / "rej" / "item_properties.csv", dtype=str)
    assert rejected["reason"].tolist() == [
        "itemid is not an integer",
        "timestamp in seconds, not milliseconds",  # the events' timestamp rules hold here too
        "wrong number of fields",
    ]
    assert rejected["itemid"].tolist() == ["x", "13", "12"]
    assert report.item_properties_rejected_file == str(tmp_path / "rej" / "item_properties.csv")


def test_bad_category_tree_rows_are_quarantined_not_fatal(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(_lines(*GOOD_ROWS))
    (raw / "category_tree.csv").write_text(
        "categoryid,parentid\n1,\n2,1\nx,1\n3,-5\n4,1.0\n,2\n5,2,9\n"
    )
    report = etl.run_etl(
        raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "proc"
    )
    assert report.loaded == 3
    assert (report.categories_read, report.categories_rejected) == (7, 4)
    tree = store.read_categories(conn)
    assert tree["categoryid"].tolist() == [1, 2, 4]
    assert tree["parentid"].tolist() == [pd.NA, 1, 1]
    rejected = pd.read_csv(tmp_path / "rej" / "category_tree.csv", dtype=str)
    assert rejected["reason"].tolist() == [
        "categoryid is not an integer",
        "negative parentid",
        "missing categoryid",
        "wrong number of fields",
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("item_properties.csv", "itemid,property,value\n10,categoryid,5\n", "timestamp"),
        ("category_tree.csv", "categoryid;parent\n1;\n", "parentid"),
        ("category_tree.csv", "", "the file is empty"),
    ],
)
def test_a_bad_optional_file_fails_before_anything_is_loaded(
    tmp_path: Path, conn: sqlite3.Connection, name: str, content: str, message: str
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(_lines(*GOOD_ROWS))
    (raw / name).write_text(content)
    with pytest.raises(DataFileError, match=message) as info:
        etl.run_etl(raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "p")
    assert name in str(info.value) and "\n" not in str(info.value)
    assert store.event_count(conn) == 0


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        (' Timestamp , VisitorId,EVENT,itemId,"transactionid"', ","),
        ("timestamp;visitorid;event;itemid;transactionid", ";"),
        ("timestamp\tvisitorid\tevent\titemid\ttransactionid", "\t"),
        ("timestamp|visitorid|event|itemid|transactionid", "|"),
    ],
)
def test_header_case_spaces_and_other_delimiters_are_read(
    tmp_path: Path, conn: sqlite3.Connection, header: str, delimiter: str
) -> None:
    rows = [r.replace(",", delimiter) for r in GOOD_ROWS]
    report = _run(tmp_path, conn, "\n".join([header, *rows]) + "\n")
    assert (report.rows_read, report.loaded, report.rejected) == (3, 3, 0)
    assert store.read_events(conn)["transactionid"].tolist()[2] == 77
    assert report.extra_columns == []
    assert any("separated" in w for w in report.warnings) == (delimiter != ",")


def test_column_names_with_underscores_dashes_or_spaces_are_read(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    text = "Timestamp;Visitor_ID;EVENT;item-id;Transaction Id\n" + f"{T};7;view;10;\n"
    report = _run(tmp_path, conn, text)
    assert (report.loaded, report.extra_columns) == (1, [])
    assert store.read_events(conn).iloc[0][["visitorid", "itemid"]].tolist() == [7, 10]


def test_a_required_column_twice_is_a_one_line_error(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    with pytest.raises(DataFileError, match="event appear more than once"):
        _run(tmp_path, conn, HEADER + ",Event\n" + f"{T},1,view,10,,view\n")


def test_an_unnamed_extra_column_is_named_by_position(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    report = _run(tmp_path, conn, HEADER + ",\n" + f"{T},1,view,10,,\n")
    assert report.loaded == 1
    assert report.extra_columns == ["(unnamed column 6)"]


#: Three good rows, then two with a Latin-1 byte: an event type, and a timestamp whose row is
#: short of fields.
NOT_UTF8 = _lines(*GOOD_ROWS).encode() + f"{T},2,vi\xe9w,10,\n{T}\xe9,3,view\n".encode("latin-1")


def test_bytes_that_are_not_utf8_quarantine_their_rows_only(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    report = _run(tmp_path, conn, NOT_UTF8)
    assert (report.rows_read, report.loaded, report.rejected) == (5, 3, 2)
    rejected = _rejected(report)
    assert rejected["event"].tolist()[0] == "vi\\xe9w"
    assert rejected["reason"].tolist() == ["unknown event type", "wrong number of fields"]


#: The good rows in UTF-16 (with its byte-order mark), after two blank lines.
UTF16 = ("\r\n\r\n" + _lines(*GOOD_ROWS)).encode("utf-16")


def test_utf16_gzip_and_leading_blank_lines_are_read(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    _run(tmp_path, conn, UTF16, name="utf16")
    raw = tmp_path / "gz"
    raw.mkdir()
    rows = [f"{T + 5000},9,view,10,", f"{T + 6000},9,view,11,"]
    (raw / "events.csv.gz").write_bytes(gzip.compress(_lines(*rows).encode()))
    report = etl.run_etl(
        raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "proc"
    )
    assert (report.rows_read, report.loaded, report.rejected) == (2, 2, 0)
    assert store.event_count(conn) == 5


def test_a_broken_compressed_file_is_a_one_line_error(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [f"{T + i},{i},view,10," for i in range(5000)]
    (raw / "events.csv.gz").write_bytes(gzip.compress(_lines(*rows).encode())[:4000])
    with pytest.raises(DataFileError, match="cannot be read") as info:
        etl.run_etl(raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "p")
    assert "\n" not in str(info.value)
    assert store.event_count(conn) == 0


def test_the_events_file_itself_may_be_given(tmp_path: Path, conn: sqlite3.Connection) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "shop-export.csv").write_text(_lines(*GOOD_ROWS))
    (raw / "category_tree.csv").write_text("categoryid,parentid\n1,\n")
    report = etl.run_etl(
        raw / "shop-export.csv",
        conn=conn,
        rejected_dir=tmp_path / "rej",
        processed_dir=tmp_path / "proc",
    )
    assert (report.loaded, report.categories_read) == (3, 1)


def test_kaggles_zip_archive_loads_and_leaves_nothing_behind(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("events.csv", _lines(*GOOD_ROWS, "oops,1,view,10,"))
        zf.writestr("category_tree.csv", "categoryid,parentid\n1,\n2,1\n")
    processed = tmp_path / "processed"
    report = etl.run_etl(archive, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=processed)
    assert (report.rows_read, report.loaded, report.rejected, report.categories_read) == (
        4,
        3,
        1,
        2,
    )
    assert report.source == f"{archive}:events.csv"
    assert _rejected(report)["timestamp"].tolist() == ["oops"]
    assert sorted(p.name for p in processed.iterdir()) == [  # the unpacked files are gone
        "category_tree.parquet",
        "events.parquet",
        "interactions.parquet",
        "items.parquet",
    ]


def test_concatenated_exports_load_with_their_repeated_header_quarantined(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    # `cat a.csv b.csv` repeats the header; R writes NA for no value; a shop system writes View.
    text = _lines(*GOOD_ROWS[:2]) + _lines(f"{T + 5000},2,View,11,NA", f"{T + 6000},2,view,12,")
    report = _run(tmp_path, conn, text)
    assert (report.rows_read, report.loaded, report.rejected) == (5, 4, 1)
    assert _rejected(report)["reason"].tolist() == ["repeated header line"]
    assert store.read_events(conn)["event"].tolist() == ["view", "addtocart", "view", "view"]


def _stray_quote_text() -> str:
    """Six good rows with a title column, one row whose quote is never closed and one with a
    quote inside a value; a BOM on a line of its own before the header, CRLF line ends."""
    good = [f"{T + i},{i},view,{10 + i}," for i in range(6)]
    rows = [
        good[0] + ',"Shirt, red"',  # a quoted delimiter in an extra column is still one field
        f'{T},7,"view,11,,x',  # the quote is never closed
        *(row + ",x" for row in good[1:5]),
        f'{T},8,view",12,,x',
        good[5] + ",x",
    ]
    return "\ufeff\r\n" + HEADER + ",title\r\n" + "\r\n".join(rows) + "\r\n"


STRAY_QUOTE = _stray_quote_text()


def test_a_stray_quote_costs_its_own_row_not_the_lines_after_it(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    # CSV readers let a quoted value run over line ends: one quote left open would swallow every
    # line up to the next quote into one value. The scan finds it and the file is read by line.
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv.gz").write_bytes(gzip.compress(STRAY_QUOTE.encode()))
    report = etl.run_etl(
        raw, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path / "p"
    )
    assert (report.rows_read, report.loaded, report.rejected) == (8, 6, 2)
    assert sorted(store.read_events(conn)["visitorid"]) == [0, 1, 2, 3, 4, 5]
    assert any("a quote is left open" in w for w in report.warnings)
    rejected = _rejected(report).set_index("reason")
    assert sorted(rejected.index) == ["unknown event type", "wrong number of fields"]
    assert rejected.loc["wrong number of fields", "detail"].endswith(f'{T},7,"view,11,,x')
    assert rejected.loc["unknown event type", "event"] == 'view"'


def test_a_run_killed_after_its_events_committed_is_still_counted(
    tmp_path: Path, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's record is written in the transaction that appends its events: a run killed
    any time after that (here, while loading item properties) leaves the events *and* their
    count, so the ETL runs' counts always add up to the store's events."""
    conn = store.connect(get_settings().feature_store)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # what SIGINT does; SIGKILL stops sooner still, with less done

    def etl_counts() -> tuple[int, int]:
        (loaded,) = conn.execute("SELECT coalesce(sum(loaded), 0) FROM etl_runs").fetchone()
        (stored,) = conn.execute("SELECT count(*) FROM events WHERE source = 'etl'").fetchone()
        return int(loaded), int(stored)

    monkeypatch.setattr(etl, "load_item_properties", killed)
    with pytest.raises(KeyboardInterrupt):
        etl.run_etl(
            tiny_shop.dir,
            conn=conn,
            rejected_dir=tmp_path / "rejected",
            processed_dir=tmp_path / "processed",
        )
    loaded, stored = etl_counts()
    assert stored > 0 and loaded == stored
    report = store.last_etl_report(conn)
    assert report is not None and report["finished"] is False
    monkeypatch.undo()
    again = etl.run_etl(
        tiny_shop.dir,
        conn=conn,
        rejected_dir=tmp_path / "rejected",
        processed_dir=tmp_path / "processed",
    )
    assert again.loaded == 0 and again.duplicates == again.rows_read - again.rejected
    assert etl_counts() == (stored, stored)
    finished = store.last_etl_report(conn)
    assert finished is not None and finished["finished"] is True
    assert finished["item_properties_read"] > 0


def test_duplicates_are_found_as_pandas_finds_them() -> None:
    """The sort-based dedupe keeps exactly one of each distinct row (an empty transaction equal
    to an empty one), as ``DataFrame.drop_duplicates`` does, and leaves the store's key order."""
    rng = np.random.default_rng(3)
    n = 5_000
    frame = pd.DataFrame(
        {
            "timestamp": rng.integers(0, 10, n) * 1_000,
            "visitorid": rng.integers(0, 10, n),
            "event": rng.choice(["view", "addtocart", "transaction"], n),
            "itemid": rng.integers(0, 6, n),
            "transactionid": pd.array(
                np.where(rng.random(n) < 0.8, None, rng.integers(0, 3, n)), dtype="Int64"
            ),
        }
    )
    columns = store.event_columns(frame)
    dropped = etl._drop_duplicates(columns)
    expected = frame.drop_duplicates()
    assert dropped == n - len(expected) > 1000
    ours = pd.DataFrame(columns)
    assert ours[["visitorid", "timestamp"]].apply(tuple, axis=1).is_monotonic_increasing
    theirs = store.event_columns(expected)
    assert sorted(zip(*ours.to_dict("list").values(), strict=True)) == sorted(
        zip(*theirs.values(), strict=True)
    )


def test_the_processed_files_are_written_a_block_of_visitors_at_a_time(
    tmp_path: Path, conn: sqlite3.Connection, tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written in blocks of ~500 rows (whole visitors each), events.parquet and
    interactions.parquet hold what one pass over the whole log computes."""
    monkeypatch.setattr(etl, "BLOCK_ROWS", 500)
    etl.run_etl(tiny_shop.dir, conn=conn, rejected_dir=tmp_path / "rej", processed_dir=tmp_path)
    log_ = store.read_events(conn)
    assert len(log_) > 20 * 500
    key = ["visitorid", "timestamp", "itemid", "event"]
    events = pd.read_parquet(tmp_path / "events.parquet")
    assert events[["visitorid", "timestamp"]].apply(tuple, axis=1).is_monotonic_increasing
    log_["session"] = feature_pipeline.session_numbers(log_)
    pd.testing.assert_frame_equal(
        events.sort_values(key, ignore_index=True),
        log_.sort_values(key, ignore_index=True),
        check_dtype=False,
    )
    whole = feature_pipeline.interactions(log_, int(log_["timestamp"].max()))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "interactions.parquet"), whole)
