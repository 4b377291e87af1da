"""The spark engine against the embedded one, on the same files: the same counts, the same
quarantined rows with the same reasons and details, the same stored events (pyspark in
``local[2]``; skipped where pyspark or Java is missing)."""

from __future__ import annotations

import gzip
import io
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as pads
import pytest

from retailrec.data_pipeline import etl, rules
from retailrec.feature_store import store
from tests.data_pipeline.test_etl import (
    BAD_ROWS,
    GOOD_ROWS,
    HEADER,
    NOT_UTF8,
    STRAY_QUOTE,
    UTF16,
    T,
    _lines,
)
from tests.data_pipeline.test_schema import GOOD, NOW, RULE_CASES
from tests.utils.factories import Shop

COUNTS = (
    "rows_read",
    "loaded",
    "duplicates",
    "duplicates_in_file",
    "duplicates_in_store",
    "rejected",
    "rejected_by_reason",
    "extra_columns",
    "events_in_store",
    "item_properties_read",
    "item_properties_kept",
    "item_properties_rejected",
    "categories_read",
    "categories_rejected",
)


def _etl(raw: Path | str, work: Path, spark: Any = None) -> tuple[etl.EtlReport, pd.DataFrame]:
    with store.open_store(work / "fs.sqlite") as conn:
        report = etl.run_etl(
            raw,
            conn=conn,
            rejected_dir=work / "rejected",
            processed_dir=work / "processed",
            spark=spark,
        )
        return report, store.read_events(conn)


def _quarantined(report: etl.EtlReport) -> pd.DataFrame:
    if report.rejected_file is None:
        return pd.DataFrame()
    rows = pd.read_csv(report.rejected_file, dtype=str, keep_default_na=False)
    return rows.sort_values(list(rows.columns)).reset_index(drop=True)


def _same(raw: Path, tmp_path: Path, spark: Any) -> tuple[etl.EtlReport, etl.EtlReport]:
    """Both engines on ``raw``, each into its own store: asserts they agree, returns reports."""
    embedded, events = _etl(raw, tmp_path / "embedded")
    sparked, spark_events = _etl(raw, tmp_path / "spark", spark)
    for name in COUNTS:
        assert getattr(sparked, name) == getattr(embedded, name), name
    pd.testing.assert_frame_equal(_quarantined(sparked), _quarantined(embedded))
    pd.testing.assert_frame_equal(spark_events, events)
    sparked.check()
    return embedded, sparked


def _write(tmp_path: Path, text: str) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "events.csv").write_text(text)
    return raw


def test_every_bad_row_of_the_etl_tests_is_judged_alike(tmp_path: Path, spark: Any) -> None:
    rows = [row for row, _ in BAD_ROWS]
    raw = _write(tmp_path, _lines(*GOOD_ROWS, *rows, GOOD_ROWS[0], GOOD_ROWS[2]))
    embedded, _ = _same(raw, tmp_path, spark)
    assert embedded.rejected == len(BAD_ROWS)
    assert embedded.duplicates_in_file == 2


def _cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"') else value


#: Values that only the rules' declared parse tells apart: signs, fractions, padding, case,
#: 19 digits (within int64 or not), texts for "no value".
EDGE_CASES: list[dict[str, str]] = [
    {"itemid": "+12"},
    {"itemid": "12.000"},
    {"itemid": "12."},
    {"itemid": " 12 "},
    {"itemid": "\u00a012\u00a0"},
    {"itemid": "007"},
    {"itemid": "+-5"},
    {"itemid": "9223372036854775807"},
    {"itemid": "9223372036854775808"},
    {"itemid": "-9223372036854775808"},
    {"itemid": "123456789012345678901"},
    {"visitorid": "N/A"},
    {"event": " View "},
    {"event": "TRANSACTION", "transactionid": "5.0"},
    {"event": "#N/A"},
    {"transactionid": "none"},
    {"timestamp": "1442004589439.0"},
    {"timestamp": "2015-09-11"},
    {"timestamp": "1.442E12"},
]


def test_every_rule_case_and_parse_edge_is_judged_alike(tmp_path: Path, spark: Any) -> None:
    cases = [changes for changes, _ in RULE_CASES] + EDGE_CASES
    rows = [",".join(_cell({**GOOD, **c}[col]) for col in HEADER.split(",")) for c in cases]
    raw = _write(tmp_path, _lines(*rows))
    # "now" is the clock for both engines: the rule cases' future timestamps are relative to
    # NOW (2015), which is long past, so they are far enough from today's clock either way.
    assert pd.Timestamp.now().value // 10**6 > NOW
    embedded, _ = _same(raw, tmp_path, spark)
    assert embedded.rows_read == len(cases)
    reasons = set(embedded.rejected_by_reason)
    assert {rules.NOT_INTEGER.format(col="itemid"), rules.TIMESTAMP_DATE} <= reasons


def test_the_tiny_shop_with_its_catalogue_loads_alike(
    tmp_path: Path, spark: Any, tiny_shop: Shop
) -> None:
    embedded, sparked = _same(tiny_shop.dir, tmp_path, spark)
    assert embedded.loaded > 10_000
    # The processed dataset: the same events, partitioned by day.
    days = pads.dataset(
        tmp_path / "spark" / "processed" / "events", format="parquet", partitioning="hive"
    )
    assert days.count_rows() == sparked.loaded
    assert len(list((tmp_path / "spark" / "processed" / "events").glob("day=*"))) > 20


def test_the_real_sample_loads_alike(tmp_path: Path, spark: Any, real_sample: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(real_sample, raw / "events.csv")
    embedded, _ = _same(raw, tmp_path, spark)
    assert (embedded.rows_read, embedded.loaded, embedded.duplicates) == (2_771, 2_770, 1)


def test_a_second_run_appends_nothing(tmp_path: Path, spark: Any) -> None:
    raw = _write(tmp_path, _lines(*GOOD_ROWS, f"{T},2,view,-10,"))
    first, events = _etl(raw, tmp_path / "spark", spark)
    again, events_again = _etl(raw, tmp_path / "spark", spark)
    assert (first.loaded, again.loaded, again.duplicates_in_store) == (3, 0, 3)
    pd.testing.assert_frame_equal(events_again, events)
    dataset = pads.dataset(tmp_path / "spark" / "processed" / "events", format="parquet")
    assert dataset.count_rows() == 3
    assert again.rejected_file == first.rejected_file  # the same input: the same quarantine


def test_parts_and_parquet_are_read(tmp_path: Path, spark: Any) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-0.csv").write_text(_lines(*GOOD_ROWS[:2]))
    (parts / "part-1.csv").write_text(_lines(GOOD_ROWS[2], f"{T},2,click,10,"))
    report, events = _etl(parts, tmp_path / "from-parts", spark)
    assert (report.rows_read, report.loaded, report.rejected) == (4, 3, 1)
    assert report.rejected_by_reason == {rules.UNKNOWN_EVENT: 1}
    # The processed dataset of one run is the input of another (Parquet, typed columns).
    again, same = _etl(tmp_path / "from-parts" / "processed" / "events", tmp_path / "pq", spark)
    assert (again.rows_read, again.loaded, again.rejected) == (3, 3, 0)
    pd.testing.assert_frame_equal(same, events)
    # UTF-16 parts (CRLF in one, LF in the other) are rewritten as UTF-8 and read the same.
    utf16 = tmp_path / "utf16"
    utf16.mkdir()
    (utf16 / "part-0.csv").write_bytes(
        _lines(*GOOD_ROWS[:2]).replace("\n", "\r\n").encode("utf-16")
    )
    (utf16 / "part-1.csv").write_bytes(_lines(GOOD_ROWS[2], f"{T},2,click,10,").encode("utf-16"))
    wide, wide_events = _etl(utf16, tmp_path / "from-utf16", spark)
    assert (wide.rows_read, wide.loaded, wide.rejected_by_reason) == (
        4,
        3,
        {rules.UNKNOWN_EVENT: 1},
    )
    pd.testing.assert_frame_equal(wide_events, events)
    assert not list((tmp_path / "from-utf16" / "processed").glob("spark-etl-*"))  # removed


def test_a_url_is_read_through_sparks_hadoop_layer(tmp_path: Path, spark: Any) -> None:
    """A URL (file:// here; s3a://, gs:// and hdfs:// go the same way, through the Hadoop
    filesystem Spark has for the scheme) is read as Parquet; a CSV by URL, or a URL given to the
    default engine, is refused in one line, with the URL as given."""
    from retailrec.errors import UsageError

    raw = _write(tmp_path, _lines(*GOOD_ROWS))
    _, events = _etl(raw, tmp_path / "from-csv", spark)
    url = (tmp_path / "from-csv" / "processed" / "events").as_uri()
    assert url.startswith("file:///")
    report, from_url = _etl(url, tmp_path / "from-url", spark)
    assert (report.source, report.rows_read, report.loaded) == (url, 3, 3)
    pd.testing.assert_frame_equal(from_url, events)
    csv_url = (raw / "events.csv").as_uri()
    with pytest.raises(UsageError, match="a URL is read as Parquet only"):
        _etl(csv_url, tmp_path / "csv-url", spark)
    with pytest.raises(UsageError, match=f"^{url}: a URL is read by the spark engine only"):
        _etl(url, tmp_path / "embedded")


def test_the_pipeline_on_spark_ends_in_a_served_champion(tmp_path: Path, spark: Any) -> None:
    import mlflow
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from retailrec.api.main import create_app
    from retailrec.cli import app
    from retailrec.config import get_settings

    models = "popular,itemknn_bm25,als"
    args = ["pipeline", "--engine", "spark", "--scale", "tiny", "--models", models]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "promoted: version 1" in result.output
    settings = get_settings()
    als = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model = 'als'")
    assert list(als["params.engine"]) == ["spark"]  # ALS fitted on Spark too (MLlib)
    assert any((settings.processed_dir / "events").glob("day=*/*.parquet"))
    assert spark.getActiveSession() is not None  # the command used this session, left running
    with store.open_store(settings.feature_store) as conn:
        visitor = store.sample_visitors(conn, n=1)[0]
    with TestClient(create_app()) as client:
        answer = client.get(f"/v1/users/{visitor}/recommendations", params={"k": 5})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 5


def test_an_unknown_engine_is_a_one_line_error() -> None:
    from typer.testing import CliRunner

    from retailrec.cli import app

    result = CliRunner().invoke(app, ["etl", "--engine", "hadoop"])
    assert result.exit_code == 1
    assert "unknown engine 'hadoop': choose embedded or spark" in result.output


def test_a_file_that_is_not_csv_text_is_refused_in_one_line(tmp_path: Path, spark: Any) -> None:
    from retailrec.errors import DataFileError

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(512))  # an .xls saved as .csv
    with pytest.raises(
        DataFileError, match=r"an Excel 97-2003 workbook \(\.xls\), not CSV"
    ) as caught:
        _etl(raw, tmp_path / "spark", spark)
    assert "\n" not in str(caught.value)
    with store.open_store(tmp_path / "spark" / "fs.sqlite") as conn:
        assert store.event_count(conn) == 0  # nothing loaded


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _zip(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return out.getvalue()


#: The event files of the ETL tests that are odd as files rather than in their values: name ->
#: (file name, content). Both engines must read each alike.
ODD_FILES: dict[str, tuple[str, bytes]] = {
    "bom, CRLF and quoted fields": (
        "events.csv",
        (
            "\ufeff" + HEADER + "\r\n" + f'"{T}","1","view","10",""\r\n'
            f'{T + 1},"2",transaction,11,"12"\r\n'
        ).encode(),
    ),
    "blank lines anywhere": (
        "events.csv",
        (HEADER + "\n\n" + GOOD_ROWS[0] + "\n   \n\t\n" + GOOD_ROWS[1] + "\r\n \r\n\n").encode(),
    ),
    "no final newline": ("events.csv", _lines(*GOOD_ROWS).rstrip("\n").encode()),
    "a truncated last line": ("events.csv", (_lines(*GOOD_ROWS) + f"{T + 5000},3,vi").encode()),
    "duplicates": ("events.csv", _lines(*GOOD_ROWS, GOOD_ROWS[0], GOOD_ROWS[2]).encode()),
    "a header without rows": ("events.csv", (HEADER + "\n").encode()),
    "extra columns": (
        "events.csv",
        (
            HEADER + ",channel,price\n" + f"{T},1,view,10,,web,9.99\n{T + 1},2,view,11,,app,1\n"
        ).encode(),
    ),
    "columns in another order": (
        "events.csv",
        ("event,itemid,timestamp,transactionid,visitorid\n" + f"view,10,{T},,1\n").encode(),
    ),
    "header case and spaces": (
        "events.csv",
        (
            "\n".join([' Timestamp , VisitorId,EVENT,itemId,"transactionid"', *GOOD_ROWS]) + "\n"
        ).encode(),
    ),
    "semicolons": (
        "events.csv",
        (
            "\n".join([HEADER.replace(",", ";")] + [r.replace(",", ";") for r in GOOD_ROWS]) + "\n"
        ).encode(),
    ),
    "tabs": (
        "events.csv",
        (
            "\n".join([HEADER.replace(",", "\t")] + [r.replace(",", "\t") for r in GOOD_ROWS])
            + "\n"
        ).encode(),
    ),
    "names with underscores, dashes and spaces": (
        "events.csv",
        ("Timestamp;Visitor_ID;EVENT;item-id;Transaction Id\n" + f"{T};7;view;10;\n").encode(),
    ),
    "an unnamed extra column": ("events.csv", (HEADER + ",\n" + f"{T},1,view,10,,\n").encode()),
    "concatenated exports": (
        "events.csv",
        (
            _lines(*GOOD_ROWS[:2]) + _lines(f"{T + 5000},2,View,11,NA", f"{T + 6000},2,view,12,")
        ).encode(),
    ),
    "gzip": ("events.csv.gz", _gz(_lines(f"{T + 5000},9,view,10,", f"{T + 6000},9,view,11,"))),
    "UTF-16 after blank lines": ("events.csv", UTF16),
    "bytes that are not UTF-8": ("events.csv", NOT_UTF8),
    "well-formed UTF-8 beside stray bytes": (
        "events.csv",
        (HEADER + ",title\n").encode()
        + f"{T},1,view,10,,Gr\u00fc\u00dfe \u20ac \U0001f600\n".encode()  # loaded
        + f"{T},2,vi\u00e9w".encode()
        + b"\xe9\xc3\x28\xed\xa0\x80\xf0\x9f\x98,10,,x\n"  # stray, overlong, surrogate
        + f"{T},3,view,1\u0661,,x\n".encode(),  # an Arabic-Indic digit
    ),
    "a stray quote": ("events.csv.gz", _gz(STRAY_QUOTE)),
    "a short row beside an extra column": (
        "events.csv",
        (HEADER + ",title\n" + f"{T},1,view,10,,x\n{T},2,view\n{T},3,view,11,\n").encode(),
    ),
    "Kaggle's zip": (
        "archive.zip",
        _zip(
            {
                "events.csv": _lines(*GOOD_ROWS, "oops,1,view,10,"),
                "category_tree.csv": "categoryid,parentid\n1,\n2,1\n",
            }
        ),
    ),
}


@pytest.mark.parametrize("case", list(ODD_FILES))
def test_every_odd_file_of_the_etl_tests_is_read_alike(
    tmp_path: Path, spark: Any, case: str
) -> None:
    name, content = ODD_FILES[case]
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / name).write_bytes(content)
    embedded, sparked = _same(raw, tmp_path, spark)
    assert sorted(sparked.warnings) == sorted(embedded.warnings)
