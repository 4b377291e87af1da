"""ETL: extract Retailrocket-format files, validate, quarantine, dedupe, transform, load.

Extract streams ``events.csv`` in blocks with Arrow's CSV reader, after
:func:`retailrec.data_pipeline.csv_input.csv_layout` has read the header: columns in any order and
case, ``, ; tab |`` delimiters, UTF-8 (with or without a BOM, CRLF or not), UTF-16, gzip and
bzip2 are all read. A row with the wrong number of fields, or a byte that is not UTF-8, is
quarantined, not fatal. Every row read ends up in exactly one of three places, and the report
says so:

    rows read = loaded + duplicates + rejected

* ``rejected``: quarantined to ``data/rejected/`` with the original values and a reason;
* ``duplicates``: an exact copy of a row earlier in the file or already in the feature store;
* ``loaded``: appended to the feature store's ``events`` table (incremental: only new rows).

Then the processed parquet files are rewritten from the store: events with session numbers,
visitor-item confidences (both by visitor and time, a block of whole visitors at a time), the item
catalogue and the category tree. The log is never held as a frame: its valid rows are integer
columns (:func:`store.event_columns`), deduplicated by one sort.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retailrec.data_pipeline import csv_input, feature_pipeline, schema, spark_etl
from retailrec.data_pipeline import files as files_
from retailrec.errors import UsageError
from retailrec.events import EVENT_COLUMNS
from retailrec.feature_store import store

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


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
    item_properties_read: int = 0  # = kept + other + rejected
    item_properties_kept: int = 0  # rows of the readable properties, upserted
    item_properties_other: int = 0  # rows of hashed properties: not used, counted
    item_properties_rejected: int = 0
    item_properties_changed: int = 0
    item_properties_rejected_file: str | None = None
    categories_read: int = 0  # = accepted + rejected
    categories_rejected: int = 0
    categories_changed: int = 0
    categories_rejected_file: str | None = None
    seconds: float = 0.0
    #: The run's row in ``etl_runs``, written with its events; ``finished`` once all is loaded
    #: (a run killed after its events were appended keeps its row, unfinished).
    run_id: int | None = None
    finished: bool = False

    def check(self) -> None:
        props = self.item_properties_kept + self.item_properties_other
        if (
            self.rows_read != self.loaded + self.duplicates + self.rejected
            or self.item_properties_read != props + self.item_properties_rejected
        ):
            raise AssertionError(f"ETL counts do not add up: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quarantine(frame: pd.DataFrame, target: Path) -> str:
    """Write quarantined rows (atomically: a re-run rewrites the same file) and say where."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(target)
    return str(target)


# --------------------------------------------------------------------------------------------
# The run


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


def load_events(
    conn: store.Connection,
    path: Path,
    rejected_dir: Path,
    report: EtlReport,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Validate ``path`` and append its new, valid events to the store, updating ``report``."""
    step = progress or (lambda _s: None)
    layout = _layout(report, path, EVENT_COLUMNS)
    report.extra_columns = layout.extra
    if report.extra_columns:
        _warn(report, path, f"ignored extra column(s) {', '.join(report.extra_columns)}")

    # The valid rows are kept as integer columns (store.event_columns: 40 bytes a row), never as
    # a frame of the whole log: validating, deduplicating and loading 27.8M rows peaks at 2.7 GB.
    valid_parts: list[store.Columns] = []
    rejected_parts: list[pd.DataFrame] = []
    now_ms = int(time.time() * 1000)
    for batch in csv_input.iter_event_batches(layout):
        step(f"validating ({report.rows_read:,} rows)")
        if len(batch.rows):
            checked = schema.validate_events(batch.rows, now_ms=now_ms)
            valid_parts.append(store.event_columns(checked.valid))
            rejected_parts.append(checked.rejected)
            del checked
        if batch.malformed:
            rejected_parts.append(csv_input.malformed_rows(batch.malformed, layout, EVENT_COLUMNS))
        report.rows_read += len(batch.rows) + len(batch.malformed)

    valid = _concatenated(valid_parts)  # empties the parts as it goes
    pa.default_memory_pool().release_unused()  # the text batches' buffers: ~30 bytes a row
    rejected = (
        pd.concat(rejected_parts, ignore_index=True) if rejected_parts else schema.empty_rejected()
    )
    report.rejected = len(rejected)
    report.rejected_by_reason = dict(Counter(rejected["reason"]).most_common())
    if report.rejected:
        # Named by the input's content: re-running the same file rewrites the same quarantine.
        stem = path.name.split(".")[0]
        report.rejected_file = _quarantine(
            rejected, rejected_dir / f"{stem}-{_file_digest(path)}.csv"
        )
    if report.rows_read == 0:
        _warn(report, path, "the file has a header but no rows")

    step("deduplicating")
    report.duplicates_in_file = _drop_duplicates(valid)
    distinct = len(valid["timestamp"])
    step(f"loading {distinct:,} events")

    def counted(txn: store.Connection, loaded: int) -> None:
        """In the append's transaction: the run is recorded with its events, never without."""
        report.loaded = loaded
        report.duplicates_in_store = distinct - loaded
        report.duplicates = report.duplicates_in_file + report.duplicates_in_store
        report.run_id = store.insert_etl_run(txn, report.to_dict())

    report.duplicates = report.duplicates_in_file  # the store's are counted by the append
    store.append_event_columns(conn, valid, source="etl", then=counted, in_key_order=True)


def _concatenated(parts: list[store.Columns]) -> store.Columns:
    """The parts' columns end to end, one column at a time, each part's let go once copied:
    the log is held once, plus one column (not twice, as a concatenation of frames would)."""
    if not parts:
        return store.event_columns(_empty_events())
    names = list(parts[0])
    out = {name: np.concatenate([part.pop(name) for part in parts]) for name in names}
    parts.clear()
    return out


def _drop_duplicates(columns: store.Columns) -> int:
    """Drop exact copies of an earlier row, in place, leaving the rows in the store's key order
    (visitor, time, item, event, transaction); returns how many were dropped. One stable sort by
    every column brings copies together (the first of each run is the earliest in the file), at
    the memory of one column, where a frame's ``duplicated`` hashes every column at once."""
    names = ("tx_key", "event", "itemid", "timestamp", "visitorid")  # lexsort: last is first
    store.take_rows(columns, np.lexsort(tuple(columns[name] for name in names)))
    n = len(columns["timestamp"])
    copy = np.zeros(n, dtype=bool)
    if n > 1:
        same = np.ones(n - 1, dtype=bool)
        for values in columns.values():
            same &= values[1:] == values[:-1]
        copy[1:] = same
    dropped = int(copy.sum())
    if dropped:
        store.take_rows(columns, ~copy)
    return dropped


def _layout(report: EtlReport, path: Path, columns: tuple[str, ...]) -> csv_input.CsvLayout:
    """The file's layout, with a warning in the report for whatever is unusual about it."""
    layout = csv_input.csv_layout(path, columns)
    if layout.delimiter != ",":
        _warn(report, path, f"read as {layout.delimiter!r}-separated values")
    if layout.quote_spans_lines:
        _warn(report, path, csv_input.QUOTE_LEFT_OPEN)
    return layout


def _warn(report: EtlReport, path: Path, message: str) -> None:
    report.warnings.append(message)
    log.warning("%s: %s", path, message)


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in schema.EVENT_DTYPES.items()})


def load_item_properties(
    conn: store.Connection, paths: tuple[Path, ...], rejected_dir: Path, report: EtlReport
) -> None:
    """Upsert the readable item properties (``categoryid``, ``available``); quarantine bad rows.

    Rows of the other (hashed) properties are counted and skipped: every row read is kept, other
    or rejected.
    """
    columns = csv_input.ITEM_PROPERTIES_COLUMNS
    wanted = pa.array(csv_input.READABLE_PROPERTIES, type=pa.large_string())
    bad_parts: list[pd.DataFrame] = []
    kept: list[pd.DataFrame] = []  # about one row in nine of the real files: written at once
    for path in paths:
        layout = _layout(report, path, columns)
        malformed: list[str] = []
        for df in csv_input.text_batches(layout, columns, malformed):
            report.item_properties_read += len(df)
            prop = pc.utf8_trim_whitespace(pa.array(df["property"]))
            keep = pc.is_in(prop, value_set=wanted).to_numpy(zero_copy_only=False)
            missing = pc.equal(prop, "").to_numpy(zero_copy_only=False)
            # The other (hashed) properties are counted and go no further: not even their ids
            # are checked, which is most of the work in the real files.
            report.item_properties_other += int((~keep & ~missing).sum())
            mine = keep | missing
            df, keep, missing = df[mine].reset_index(drop=True), keep[mine], missing[mine]
            prop, value = df["property"].str.strip(), df["value"].str.strip()
            ids = schema.check_ids(df, required=("timestamp", "itemid"), timestamp="timestamp")
            reason = ids.reason
            reason[missing & ids.ok] = "missing property"
            reason[keep & ids.ok & (value == "").to_numpy()] = "missing value"
            good = keep & schema.unset(reason)
            bad = ~schema.unset(reason)
            if bad.any():
                bad_parts.append(df[bad].assign(reason=reason[bad], detail=ids.detail[bad]))
            chunk = pd.DataFrame(
                {
                    "timestamp": ids.values["timestamp"][good],
                    "itemid": ids.values["itemid"][good],
                    "property": prop[good].to_numpy(dtype=object),
                    "value": value[good].to_numpy(dtype=object),
                }
            )
            report.item_properties_kept += len(chunk)
            kept.append(chunk)
        if malformed:
            report.item_properties_read += len(malformed)
            bad_parts.append(csv_input.malformed_rows(malformed, layout, columns))
    if kept:
        # One sorted write: appends in key order, one commit and one WAL checkpoint. A write per
        # block scattered over the whole table and checkpointed each time: about twice as slow.
        report.item_properties_changed = store.upsert_item_properties(
            conn, pd.concat(kept, ignore_index=True)
        )
    if bad_parts:
        bad_rows = pd.concat(bad_parts, ignore_index=True)
        report.item_properties_rejected = len(bad_rows)
        report.item_properties_rejected_file = _quarantine(
            bad_rows, rejected_dir / "item_properties.csv"
        )


def load_category_tree(
    conn: store.Connection, path: Path, rejected_dir: Path, report: EtlReport
) -> None:
    """Upsert the category tree; quarantine rows whose ids are not non-negative integers."""
    columns = csv_input.CATEGORY_TREE_COLUMNS
    layout = _layout(report, path, columns)
    malformed: list[str] = []
    frames = list(csv_input.text_batches(layout, columns, malformed))
    raw = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({c: pd.Series(dtype="str") for c in columns})
    )
    ids = schema.check_ids(raw, required=("categoryid",), optional=("parentid",))
    ok = ids.ok
    tree = pd.DataFrame(
        {
            "categoryid": ids.values["categoryid"][ok],
            "parentid": pd.arrays.IntegerArray(
                ids.values["parentid"][ok], ids.empty["parentid"][ok].copy()
            ),
        }
    )
    report.categories_read = len(raw) + len(malformed)
    report.categories_changed = store.upsert_categories(conn, tree)
    bad = raw[~ok].assign(reason=ids.reason[~ok], detail=ids.detail[~ok])
    if malformed:
        bad = pd.concat(
            [bad, csv_input.malformed_rows(malformed, layout, columns)], ignore_index=True
        )
    report.categories_rejected = len(bad)
    if len(bad):
        report.categories_rejected_file = _quarantine(bad, rejected_dir / "category_tree.csv")


def write_processed(
    conn: store.Connection,
    processed_dir: Path,
    config: feature_pipeline.FeatureConfig,
    *,
    events: bool = True,
) -> dict[str, Path]:
    """Rewrite the parquet files from the store (so they also hold events posted to the API).

    ``events=False``: the catalogue's files only (the spark engine writes the events as a
    dataset partitioned by day, and leaves the confidences to ``retailrec features``)."""
    if store.event_count(conn) == 0:
        return {}
    processed_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if events:
        paths |= _write_events(conn, processed_dir, config)
    frames = {
        "items": feature_pipeline.item_category_as_of(conn, None),
        "category_tree": store.read_categories(conn),
    }
    for name, frame in frames.items():
        paths[name] = processed_dir / f"{name}.parquet"
        tmp = paths[name].with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(paths[name])
    return paths


#: Rows of whole visitors read from the store at a time to write the processed events (~300 MB).
BLOCK_ROWS = 2_000_000


def _write_events(
    conn: store.Connection, processed_dir: Path, config: feature_pipeline.FeatureConfig
) -> dict[str, Path]:
    """``events.parquet`` (with session numbers) and ``interactions.parquet`` (confidences as of
    the log's newest event), by visitor and time, written a block of whole visitors at a time:
    both are per visitor, so memory is one block's whatever the log's size."""
    newest = store.shop_clock(conn)
    assert newest is not None  # the log is not empty
    paths = {name: processed_dir / f"{name}.parquet" for name in ("events", "interactions")}
    tmp = {name: path.with_suffix(".tmp") for name, path in paths.items()}
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for block in store.iter_visitor_blocks(conn, BLOCK_ROWS):
            block["session"] = feature_pipeline.session_numbers(block, config.session_gap_ms)
            tables = {
                "events": pa.Table.from_pandas(block, preserve_index=False),
                "interactions": pa.Table.from_pandas(
                    feature_pipeline.interactions(block, newest, config), preserve_index=False
                ),
            }
            for name, table in tables.items():
                if name not in writers:
                    writers[name] = pq.ParquetWriter(tmp[name], table.schema)
                writers[name].write_table(table.cast(writers[name].schema))
    finally:
        for writer in writers.values():
            writer.close()
    for name, path in paths.items():
        tmp[name].replace(path)
    return paths


def _located(raw: Path | str) -> bool:
    """Whether ``raw`` is what :func:`files_.locate` finds a shop's files in (an
    ``events.csv``, a folder with one, Kaggle's zip or a folder with it), rather than what only
    the spark engine reads (CSV parts, Parquet, a URL)."""
    if spark_etl.holds_events_csv(raw):
        return True
    if spark_etl.is_url(raw):
        return False
    path = Path(str(raw))
    return path.suffix.lower() == ".zip" or (
        path.is_dir() and any(p.suffix.lower() == ".zip" for p in path.iterdir())
    )


def run_etl(
    raw_dir: Path | str,
    *,
    conn: store.Connection,
    rejected_dir: Path,
    processed_dir: Path,
    reports_dir: Path | None = None,
    config: feature_pipeline.FeatureConfig | None = None,
    progress: Callable[[str], None] | None = None,
    spark: SparkSession | None = None,
) -> EtlReport:
    """Run the whole ETL on the files in ``raw_dir``.

    With ``spark``, the event log goes through the spark engine (:mod:`.spark_etl`): ``raw_dir``
    may then also be a folder of CSV parts, Parquet, or a URL Spark reads. The catalogue's files
    (item properties, category tree), found beside an ``events.csv``, are read as by default.

    Raises:
        DataFileError: no ``events.csv``, or one of the files is empty, lacks a required column
            or cannot be read; nothing is loaded when a header is wrong.
    """
    config = config or feature_pipeline.FeatureConfig()
    step = progress or (lambda _s: None)
    start = time.perf_counter()
    if spark is None and spark_etl.is_url(raw_dir):
        raise UsageError(
            f"{raw_dir}: a URL is read by the spark engine only (--engine spark); download the"
            " files to read them with the default engine"
        )
    spark_source = None  # Parts, Parquet or a URL: the event log alone, as Spark reads it.
    if spark is not None and not _located(raw_dir):
        spark_source = str(raw_dir)
        files = files_.RawFiles(events=Path(spark_source))
        report = EtlReport(source=spark_source, started_ms=int(time.time() * 1000))
    else:
        files = files_.locate(Path(raw_dir))
        report = EtlReport(source=files.source, started_ms=int(time.time() * 1000))
    with contextlib.ExitStack() as scratch:
        if files.archive is not None:
            step(f"unpacking {files.archive.name}")
            processed_dir.mkdir(parents=True, exist_ok=True)
            tmp = scratch.enter_context(
                tempfile.TemporaryDirectory(prefix=f"{files.archive.name}-", dir=processed_dir)
            )
            files = files_.unpack(files, Path(tmp))
        # Every file's header is checked before anything is loaded: a bad optional file fails
        # the run at once, not after the events went in.
        if spark is None:
            csv_input.csv_layout(files.events, EVENT_COLUMNS, scan=False)
        for path in files.item_properties:
            csv_input.csv_layout(path, csv_input.ITEM_PROPERTIES_COLUMNS, scan=False)
        if files.category_tree is not None:
            csv_input.csv_layout(files.category_tree, csv_input.CATEGORY_TREE_COLUMNS, scan=False)
        if spark is None:
            load_events(conn, files.events, rejected_dir, report, step)
        else:
            source = spark_source or str(files.events)
            spark_etl.load_events(spark, conn, source, rejected_dir, processed_dir, report, step)
        if files.item_properties:
            step("loading item properties")
            load_item_properties(conn, files.item_properties, rejected_dir, report)
        if files.category_tree is not None:
            load_category_tree(conn, files.category_tree, rejected_dir, report)
    step("writing parquet")
    write_processed(conn, processed_dir, config, events=spark is None)
    report.events_in_store = store.event_count(conn)
    report.seconds = round(time.perf_counter() - start, 3)
    report.check()
    report.finished = True
    report.run_id = store.record_etl_run(conn, report.to_dict(), report.run_id)
    if reports_dir is not None:
        reports_dir.mkdir(parents=True, exist_ok=True)
        (reports_dir / "etl-latest.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
