"""The ETL on generated files of good and bad rows, in any column order, delimiter, header case
and line ending: whatever comes in, the counts add up, every row that is valid by construction is
loaded, and a second run changes nothing."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retailrec.data_pipeline import etl
from retailrec.feature_store import store

T = 1_433_221_332_117
COLUMNS = ["timestamp", "visitorid", "event", "itemid", "transactionid"]

good_ids = st.integers(0, 50).map(str)
bad_ids = st.sampled_from(["-3", "abc", "1.5", " ", "99999999999999999999999", "é", '4"2', "7,8"])
good_ts = st.integers(T, T + 10_000).map(str)
bad_ts = st.sampled_from(["1433221332", "0", "2015-06-02", "", "nan", "1e30", "-1"])
events = st.sampled_from(["view", "addtocart", "transaction"])
bad_events = st.sampled_from(["View", "click", "", "view;", "transaction "])


@st.composite
def good_row(draw: st.DrawFn) -> list[str]:
    event = draw(events)
    tx = draw(good_ids) if event == "transaction" else ""
    return [draw(good_ts), draw(good_ids), event, draw(good_ids), tx]


@st.composite
def any_row(draw: st.DrawFn) -> tuple[list[str], bool]:
    """(fields, valid by construction)."""
    row = draw(good_row())
    spoil = draw(st.sampled_from(["none", "none", "ts", "id", "event", "tx", "width"]))
    if spoil == "ts":
        row[0] = draw(bad_ts)
    elif spoil == "id":
        row[draw(st.sampled_from([1, 3]))] = draw(bad_ids)
    elif spoil == "event":
        row[2] = draw(bad_events)
    elif spoil == "tx":
        row[4] = "" if row[2] == "transaction" else draw(good_ids)
    elif spoil == "width":
        row = row[:-1] if draw(st.booleans()) else [*row, "extra"]
    return row, spoil == "none"


def _csv(rows: list[list[str]], order: list[int], crlf: bool, dialect: tuple[str, str]) -> bytes:
    delimiter, case = dialect
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow([getattr(COLUMNS[i], case)() for i in order])
    for row in rows:
        # A row of the wrong width keeps its fields in the file's column order as far as it goes.
        writer.writerow([row[i] for i in order if i < len(row)] + row[len(order) :])
    return ("\ufeff" if case == "upper" else "").encode() + out.getvalue().encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(any_row(), min_size=1, max_size=40),
    order=st.permutations(range(5)),
    crlf=st.booleans(),
    dialect=st.tuples(st.sampled_from([",", ";", "\t", "|"]), st.sampled_from(["lower", "upper"])),
    repeat=st.lists(st.integers(0, 39), max_size=5),
)
def test_any_file_adds_up_and_keeps_every_valid_row(
    rows: list[tuple[list[str], bool]],
    order: list[int],
    crlf: bool,
    dialect: tuple[str, str],
    repeat: list[int],
) -> None:
    fields = [r for r, _ in rows] + [rows[i][0] for i in repeat if i < len(rows)]
    valid = {(int(r[0]), int(r[1]), int(r[3]), int(r[4] or -1)) for r, ok in rows if ok}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        (root / "raw" / "events.csv").write_bytes(_csv(fields, list(order), crlf, dialect))
        conn = store.connect(root / "fs.sqlite")
        run = lambda: etl.run_etl(  # noqa: E731
            root / "raw", conn=conn, rejected_dir=root / "rej", processed_dir=root / "proc"
        )
        report = run()
        assert report.rows_read == len(fields)
        assert report.loaded + report.duplicates + report.rejected == report.rows_read
        assert store.event_count(conn) == report.loaded
        if report.rejected:
            assert report.rejected_file is not None
            quarantined = pd.read_csv(report.rejected_file, dtype=str, keep_default_na=False)
            assert len(quarantined) == report.rejected
            assert quarantined["reason"].str.len().gt(0).all()
        stored = store.read_events(conn)
        loaded = set(
            zip(
                stored["timestamp"],
                stored["visitorid"],
                stored["itemid"],
                stored["transactionid"].fillna(-1),
                strict=True,
            )
        )
        assert valid <= loaded
        again = run()
        assert again.loaded == 0
        assert again.duplicates == report.rows_read - report.rejected
        assert store.event_count(conn) == report.loaded
        conn.close()
