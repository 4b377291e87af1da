"""ETL: extract Retailrocket-format files, validate, quarantine, dedupe, transform, load.

Extract streams ``events.csv`` in blocks with Arrow's CSV reader (a UTF-8 BOM, CRLF, quoted fields
and a missing final newline are all fine). A row with the wrong number of fields is quarantined,
not fatal. Every row read ends up in exactly one of three places, and the report says so:

    rows read = loaded + duplicates + rejected

* ``rejected``: quarantined to ``data/rejected/`` with the original values and a reason;
* ``duplicates``: an exact copy of a row earlier in the file or already in the feature store;
* ``loaded``: appended to the feature store's ``events`` table (incremental: only new rows).

Then the processed parquet files are rewritten from the store: events with session numbers,
visitor-item confidences, the item catalogue and the category tree.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from retailrec.data_pipeline import feature_pipeline, readers, schema
from retailrec.data_pipeline.readers import DataFileError
from retailrec.feature_store import store

log = logging.getLogger(__name__)

BLOCK_SIZE = 16 << 20  # bytes of CSV per batch: bounded memory whatever the file size
ITEM_PROPERTY_REASONS = {
    "bad_row": "wrong number of fields",
    "bad_int": "timestamp or itemid is not a non-negative integer, or the value is empty",
}


@dataclass
class EtlReport:
    """What one ETL run did. ``rows_read == loaded + duplicates + rejected`` always holds."""

    source: str
    started_ms: int
    rows_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    duplicates_in_file: int = 0
    duplicates_in_store: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejected_file: str | None = None
    extra_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    events_in_store: int = 0
    item_properties_read: int = 0
    item_properties_changed: int = 0
    item_properties_rejected: int = 0
    categories_changed: int = 0
    seconds: float = 0.0

    def check(self) -> None:
        if self.rows_read != self.loaded + self.duplicates + self.rejected:
            raise AssertionError(f"ETL counts do not add up: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Extract


def read_header(path: Path) -> list[str]:
    """The column names of a CSV file.

    Raises:
        DataFileError: the file is missing or empty.
    """
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataFileError(f"{path}: the file is empty (expected a header line)")
    return [c.strip() for c in next(csv.reader([first]))]


def _text_batches(
    path: Path, columns: tuple[str, ...], malformed: list[str], block_size: int = BLOCK_SIZE
) -> Iterator[pd.DataFrame]:
    """Stream ``columns`` of a CSV file as text, block by block; the raw lines of rows with the
    wrong number of fields are appended to ``malformed`` instead of failing the read.

    Raises:
        DataFileError: missing or empty file, or one of ``columns`` not in the header.
    """
    missing = [c for c in columns if c not in read_header(path)]
    if missing:
        raise DataFileError(f"{path}: missing required column(s) {', '.join(missing)}")

    def on_invalid(row: Any) -> str:
        malformed.append(row.text)
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(columns),
            column_types={c: pa.large_string() for c in columns},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    for record_batch in reader:
        yield record_batch.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow"))


@dataclass
class _Batch:
    rows: pd.DataFrame  # the required columns, as text
    malformed: list[str]  # raw lines with the wrong number of fields


def iter_event_batches(path: Path, block_size: int = BLOCK_SIZE) -> Iterator[_Batch]:
    """Stream ``events.csv`` in blocks; rows with the wrong field count come back as raw lines.

    Raises:
        DataFileError: missing file, empty file, or a required column missing from the header.
    """
    malformed: list[str] = []
    for rows in _text_batches(path, schema.REQUIRED_COLUMNS, malformed, block_size):
        yield _Batch(rows, malformed.copy())
        malformed.clear()
    if malformed:
        yield _Batch(
            pd.DataFrame(columns=list(schema.REQUIRED_COLUMNS), dtype="str"), malformed.copy()
        )


def _malformed_rows(lines: list[str], header: list[str]) -> pd.DataFrame:
    """Quarantine rows for lines with the wrong number of fields, keeping what values they have."""
    records = []
    for line in lines:
        fields = next(csv.reader(io.StringIO(line)), [])
        values = dict(zip(header, fields, strict=False))
        record = {c: values.get(c, "") for c in schema.REQUIRED_COLUMNS}
        record["reason"] = schema.WRONG_FIELD_COUNT
        record["detail"] = f"expected {len(header)} fields, got {len(fields)}: {line[:200]}"
        records.append(record)
    return pd.DataFrame.from_records(
        records, columns=[*schema.REQUIRED_COLUMNS, "reason", "detail"]
    )


# --------------------------------------------------------------------------------------------
# The run


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


def load_events(
    conn: sqlite3.Connection,
    path: Path,
    rejected_dir: Path,
    report: EtlReport,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Validate ``path`` and append its new, valid events to the store, updating ``report``."""
    step = progress or (lambda _s: None)
    header = read_header(path)
    report.extra_columns = [c for c in header if c not in schema.REQUIRED_COLUMNS]
    if report.extra_columns:
        message = f"ignored extra column(s) {', '.join(report.extra_columns)}"
        report.warnings.append(message)
        log.warning("%s: %s", path, message)

    valid_parts: list[pd.DataFrame] = []
    rejected_parts: list[pd.DataFrame] = []
    now_ms = int(time.time() * 1000)
    for batch in iter_event_batches(path):
        step(f"validating ({report.rows_read:,} rows)")
        if len(batch.rows):
            checked = schema.validate_events(batch.rows, now_ms=now_ms)
            valid_parts.append(checked.valid)
            rejected_parts.append(checked.rejected)
        if batch.malformed:
            rejected_parts.append(_malformed_rows(batch.malformed, header))
        report.rows_read += len(batch.rows) + len(batch.malformed)

    valid = pd.concat(valid_parts, ignore_index=True) if valid_parts else _empty_events()
    rejected = (
        pd.concat(rejected_parts, ignore_index=True) if rejected_parts else schema.empty_rejected()
    )
    report.rejected = len(rejected)
    report.rejected_by_reason = dict(Counter(rejected["reason"]).most_common())
    if report.rejected:
        rejected_dir.mkdir(parents=True, exist_ok=True)
        # Named by the input's content: re-running the same file rewrites the same quarantine.
        target = rejected_dir / f"{path.stem}-{_file_digest(path)}.csv"
        tmp = target.with_suffix(".tmp")
        rejected.to_csv(tmp, index=False)
        tmp.replace(target)
        report.rejected_file = str(target)

    step("deduplicating")
    in_file = valid.duplicated(keep="first").to_numpy()
    report.duplicates_in_file = int(in_file.sum())
    unique = valid[~in_file]
    step(f"loading {len(unique):,} events")
    report.loaded = store.append_events(conn, unique, source="etl")
    report.duplicates_in_store = len(unique) - report.loaded
    report.duplicates = report.duplicates_in_file + report.duplicates_in_store


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.EVENT_DTYPES.items()})


def load_item_properties(
    conn: sqlite3.Connection, paths: tuple[Path, ...], rejected_dir: Path, report: EtlReport
) -> None:
    """Upsert the readable item properties (``categoryid``, ``available``); quarantine bad rows."""
    bad_parts: list[pd.DataFrame] = []
    for chunk in _iter_property_chunks(paths, bad_parts):
        report.item_properties_read += len(chunk)
        report.item_properties_changed += store.upsert_item_properties(conn, chunk)
    if bad_parts:
        bad = pd.concat(bad_parts, ignore_index=True)
        report.item_properties_rejected = len(bad)
        rejected_dir.mkdir(parents=True, exist_ok=True)
        bad.to_csv(rejected_dir / "item_properties.csv", index=False)


def _iter_property_chunks(
    paths: tuple[Path, ...], bad_parts: list[pd.DataFrame]
) -> Iterator[pd.DataFrame]:
    wanted = set(readers.READABLE_PROPERTIES)
    for path in paths:
        malformed: list[str] = []
        for df in _text_batches(path, readers.ITEM_PROPERTIES_COLUMNS, malformed):
            df = df[df["property"].str.strip().isin(wanted)]
            ts = pd.to_numeric(df["timestamp"], errors="coerce")
            item = pd.to_numeric(df["itemid"], errors="coerce")
            ok = (
                ts.notna()
                & item.notna()
                & (ts >= 0)
                & (item >= 0)
                & (df["value"].str.strip() != "")
            )
            if (~ok).any():
                bad = df[~ok].assign(reason=ITEM_PROPERTY_REASONS["bad_int"])
                bad_parts.append(bad)
            good = df[ok]
            yield pd.DataFrame(
                {
                    "timestamp": ts[ok].astype("int64").to_numpy(),
                    "itemid": item[ok].astype("int64").to_numpy(),
                    "property": good["property"].str.strip().to_numpy(),
                    "value": good["value"].str.strip().to_numpy(),
                }
            )
        if malformed:
            bad_parts.append(
                pd.DataFrame({"line": malformed, "reason": ITEM_PROPERTY_REASONS["bad_row"]})
            )


def write_processed(
    conn: sqlite3.Connection, processed_dir: Path, config: feature_pipeline.FeatureConfig
) -> dict[str, Path]:
    """Rewrite the parquet files from the store (so they also hold events posted to the API)."""
    processed_dir.mkdir(parents=True, exist_ok=True)
    events = store.read_events(conn)
    paths = {
        name: processed_dir / f"{name}.parquet"
        for name in ("events", "interactions", "items", "category_tree")
    }
    if events.empty:
        return {}
    as_of = int(events["timestamp"].max())
    events["session"] = feature_pipeline.session_numbers(events, config.session_gap_ms)
    catalogue = feature_pipeline.item_category_as_of(conn, None)
    frames = {
        "events": events,
        "interactions": feature_pipeline.interactions(events, as_of, config),
        "items": catalogue,
        "category_tree": store.read_categories(conn),
    }
    for name, frame in frames.items():
        tmp = paths[name].with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(paths[name])
    return paths


def run_etl(
    raw_dir: Path,
    *,
    conn: sqlite3.Connection,
    rejected_dir: Path,
    processed_dir: Path,
    reports_dir: Path | None = None,
    config: feature_pipeline.FeatureConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> EtlReport:
    """Run the whole ETL on the files in ``raw_dir``.

    Raises:
        DataFileError: no ``events.csv``, or it is empty or lacks a required column.
    """
    config = config or feature_pipeline.FeatureConfig()
    step = progress or (lambda _s: None)
    start = time.perf_counter()
    files = readers.locate(raw_dir)
    report = EtlReport(source=str(files.events), started_ms=int(time.time() * 1000))
    load_events(conn, files.events, rejected_dir, report, step)
    if files.item_properties:
        step("loading item properties")
        load_item_properties(conn, files.item_properties, rejected_dir, report)
    if files.category_tree is not None:
        tree = readers.read_category_tree(files.category_tree)
        report.categories_changed = store.upsert_categories(conn, tree)
    step("writing parquet")
    write_processed(conn, processed_dir, config)
    report.events_in_store = store.event_count(conn)
    report.seconds = round(time.perf_counter() - start, 3)
    report.check()
    store.record_etl_run(conn, report.to_dict())
    if reports_dir is not None:
        reports_dir.mkdir(parents=True, exist_ok=True)
        (reports_dir / "etl-latest.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
