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

good_ids = st.integers(0, 50)
bad_ids = st.sampled_from(
    ["-3", "abc", "1.5", " ", "99999999999999999999999", "é", '4"2', "7,8", "1.2E+3", "0x1F"]
)
good_ts = st.integers(T, T + 10_000)
bad_ts = st.sampled_from(
    ["1433221332", "0", "2015-06-02", "", "nan", "1e30", "-1", "1.43322E+12", f"{T}000"]
)
events = st.sampled_from(["view", "addtocart", "transaction"])
bad_events = st.sampled_from(["click", "", "view;", "purchase", "add to cart"])
#: How exports write a valid integer, and "no value".
int_spellings = st.sampled_from(["{}", "{}", "{}.0", " {} ", "+{}"])
no_value = st.sampled_from(["", "", "NA", "NULL", "nan", "None"])
event_case = st.sampled_from([str.lower, str.lower, str.upper, str.title])

Key = tuple[int, int, int, int]


@st.composite
def good_row(draw: st.DrawFn) -> tuple[list[str], Key]:
    """(fields as an export might write them, the event they stand for)."""
    ts, visitor, item, event = draw(good_ts), draw(good_ids), draw(good_ids), draw(events)
    tx = draw(good_ids) if event == "transaction" else None

    def spelt(value: int) -> str:
        return str(draw(int_spellings).format(value))

    fields = [
        spelt(ts),
        spelt(visitor),
        draw(event_case)(event),
        spelt(item),
        draw(no_value) if tx is None else spelt(tx),
    ]
    return fields, (ts, visitor, item, -1 if tx is None else tx)


@st.composite
def any_row(draw: st.DrawFn) -> tuple[list[str], Key | None]:
    """(fields, the event it stands for when valid by construction)."""
    row, key = draw(good_row())
    spoil = draw(st.sampled_from(["none", "none", "ts", "id", "event", "tx", "width"]))
    if spoil == "ts":
        row[0] = draw(bad_ts)
    elif spoil == "id":
        row[draw(st.sampled_from([1, 3]))] = draw(bad_ids)
    elif spoil == "event":
        row[2] = draw(bad_events)
    elif spoil == "tx":
        row[4] = draw(no_value) if row[2].lower() == "transaction" else str(draw(good_ids))
    elif spoil == "width":
        row = row[:-1] if draw(st.booleans()) else [*row, "extra"]
    return row, key if spoil == "none" else None


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
    stray=st.lists(st.integers(0, 39), max_size=2),
)
def test_any_file_adds_up_and_keeps_every_valid_row(
    rows: list[tuple[list[str], Key | None]],
    order: list[int],
    crlf: bool,
    dialect: tuple[str, str],
    repeat: list[int],
    stray: list[int],
) -> None:
    fields = [r for r, _ in rows] + [rows[i][0] for i in repeat if i < len(rows)]
    # A quote left open at the start of a line spoils that row only (the lines are in order).
    stray = sorted({i for i in stray if i < len(rows)})
    valid = {key for i, (_, key) in enumerate(rows) if key is not None and i not in stray}
    data = _csv(fields, list(order), crlf, dialect)
    lines = data.split(b"\n")
    for i in stray:
        lines[i + 1] = b'"' + lines[i + 1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        (root / "raw" / "events.csv").write_bytes(b"\n".join(lines))
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
