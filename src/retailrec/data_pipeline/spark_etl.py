"""``retailrec etl --engine spark``: the event log's ETL on Apache Spark, for logs past one machine.

The same job as :func:`~retailrec.data_pipeline.etl.load_events`, with the same rules and the
same report: every row read is loaded, a duplicate, or quarantined with its reason.

* **Read**: ``events.csv`` (a file, gzip- or bzip2-compressed or not), a folder of CSV parts
  with one header each, or Parquet (a file or a folder); a local path or any URL that Spark's
  Hadoop layer reads (``s3a://``, ``gs://``, ``hdfs://``, ``file://``; Parquet only). The
  delimiter and the columns are read from the first CSV file's header, as the embedded engine
  reads them; every value is read as text, one character a byte, then decoded as the embedded
  engine's lenient UTF-8 decodes (:func:`_lenient_utf8`); a UTF-16 log is rewritten as UTF-8
  first. A line with the wrong number of fields is quarantined (Spark's corrupt-record column).
* **Validate**: :data:`~retailrec.data_pipeline.rules.EVENT_RULES`, rendered to Spark SQL
  (:func:`~retailrec.data_pipeline.rules.reason_sql`): the first rule a row breaks is its reason.
* **Quarantine**: the rejected rows stream to the driver and are written to
  ``data/rejected/`` as the embedded engine writes them (the detail is formatted by the same
  function).
* **Dedupe and write**: exact duplicates are dropped; the events that the processed dataset does
  not hold yet are appended to it as Parquet partitioned by day (``processed/events/day=…``),
  so that a second run of the same log appends nothing.
* **Load**: the run's distinct events go into the feature store in batches of
  :data:`LOAD_BATCH_ROWS` read back from Parquet: memory is bounded whatever the log's size, and
  the store counts the rows it held already, as for the embedded engine.

The embedded engine stays the default; ``tests/data_pipeline/test_spark_etl.py`` runs both on
the same files and compares counts, quarantined rows and stored events.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.dataset as pads

from retailrec.data_pipeline import csv_input, rules
from retailrec.errors import DataFileError, UsageError
from retailrec.events import EVENT_COLUMNS, EVENT_TYPES
from retailrec.feature_store import store

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from retailrec.data_pipeline.etl import EtlReport

log = logging.getLogger(__name__)

#: Events loaded into the feature store per transaction, read back from Spark's Parquet.
LOAD_BATCH_ROWS = 500_000
#: The corrupt-record column: a line whose number of fields is not the header's.
_CORRUPT = "_corrupt_record"
_REASON = "_reason"


def is_url(source: object) -> bool:
    """Whether ``source`` is a URL (``s3a://``, ``gs://``, ``hdfs://``, ``file://``), which only
    the spark engine reads, through Spark's Hadoop layer."""
    return "://" in str(source)


def holds_events_csv(raw: Path | str) -> bool:
    """Whether ``raw`` is an ``events.csv`` (compressed or not), or a local folder with one:
    then the catalogue's files beside it are found as the embedded engine finds them."""
    if is_url(str(raw)):
        return False
    path = Path(raw)
    names = ("events.csv", "events.csv.gz", "events.csv.bz2")
    return path.name in names or (path.is_dir() and any((path / n).is_file() for n in names))


def _csv_parts(source: str) -> tuple[str, Path | None]:
    """(what Spark reads, the local CSV file whose header gives the layout; None for Parquet).

    A folder holding ``events.csv`` (or a compressed one) is read as that file; any other folder
    as its parts."""
    path = Path(source)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    if path.is_file():
        return str(path), (None if path.suffix == ".parquet" else path)
    for name in ("events.csv", "events.csv.gz", "events.csv.bz2"):
        if (path / name).is_file():
            return str(path / name), path / name
    if any(path.rglob("*.parquet")):  # a Parquet dataset, partitioned or not
        return str(path), None
    parts = _parts(path)
    if not parts:
        raise DataFileError(f"{path}: no events.csv, CSV parts or Parquet in the folder")
    return str(path), parts[0]


#: What a URL to a CSV file ends in (the spark engine reads URLs as Parquet only).
_CSV_NAME = re.compile(r"\.(csv|tsv|txt)(\.(gz|bz2))?$", re.IGNORECASE)


def _parts(folder: Path) -> list[Path]:
    """A folder's CSV parts, as Spark reads them (no hidden or ``_``-prefixed files)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))


def _as_utf8(where: str, scratch: Path) -> str:
    """A UTF-16 log written out as UTF-8 into ``scratch``, a part for each part, for Spark to
    read as any other: its reader splits UTF-16 into lines only in its multi-line mode, which
    runs a line ending in LF and the next in CRLF into one row, and drops the first row where
    blank lines lead the header. Streamed a block at a time, as the embedded engine reads it."""
    source = Path(where)
    out = scratch / "utf8"
    out.mkdir()
    for i, part in enumerate([source] if source.is_file() else _parts(source)):
        layout = csv_input.csv_layout(part, EVENT_COLUMNS, scan=False)
        target = out / f"part-{i:05d}.csv"
        with csv_input.open_text(layout) as text, target.open("w", encoding="utf-8") as fh:
            shutil.copyfileobj(text, fh, 1 << 20)
    return str(out)


def read_events(
    spark: SparkSession, source: str, report: EtlReport, scratch: Path
) -> tuple[DataFrame, csv_input.CsvLayout | None]:
    """The event log as text columns (``EVENT_COLUMNS`` and the corrupt-record column), and the
    CSV layout it was read with (None for Parquet). ``scratch`` holds what must be rewritten
    for Spark to read (a UTF-16 log) while the frame is used."""
    from pyspark.sql import functions as sf
    from pyspark.sql import types as st

    if is_url(source):
        if _CSV_NAME.search(source.rstrip("/")):
            raise UsageError(
                f"{source}: give the delimiter-and-header file locally, or convert the log to"
                " Parquet: a URL is read as Parquet only (--raw s3a://bucket/events/ with"
                " .parquet parts)"
            )
        where, first = source, None
    elif source.endswith(".parquet"):
        where, first = source, None
    else:
        where, first = _csv_parts(source)
    if first is None:
        frame = spark.read.parquet(where)
        missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
        if missing:
            raise DataFileError(f"{source}: missing required column(s) {', '.join(missing)}")
        text = [sf.col(c).cast("string").alias(c) for c in EVENT_COLUMNS]
        return frame.select(*text, sf.lit(None).cast("string").alias(_CORRUPT)), None
    layout = csv_input.csv_layout(first, EVENT_COLUMNS, scan=False)
    if layout.delimiter != ",":
        report.warnings.append(f"read as {layout.delimiter!r}-separated values")
    if layout.encoding == "utf-16":
        where = _as_utf8(where, scratch)  # (the embedded engine does not look for open quotes)
    elif _quote_left_open(spark, where):
        report.warnings.append(csv_input.QUOTE_LEFT_OPEN)
    report.extra_columns = layout.extra
    if layout.extra:
        report.warnings.append(f"ignored extra column(s) {', '.join(layout.extra)}")
    # Every column parsed, the ignored ones too: with pruning, a row short of fields that a file
    # with extra columns holds is not told corrupt (its missing fields read as NULL instead).
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    schema = st.StructType(
        [st.StructField(name, st.StringType()) for name in layout.names]
        + [st.StructField(_CORRUPT, st.StringType())]
    )
    frame = spark.read.csv(
        where,
        schema=schema,
        header=True,
        sep=layout.delimiter,
        quote='"',
        escape='"',  # a quote inside a quoted value is doubled, as in RFC 4180 and Arrow
        mode="PERMISSIVE",
        columnNameOfCorruptRecord=_CORRUPT,
        enforceSchema=True,
        # One character a byte, split into lines before it is parsed (a quote left open costs
        # its own row only), then decoded as the embedded engine's lenient UTF-8 decodes.
        encoding="ISO-8859-1",
    )
    columns = (*EVENT_COLUMNS, _CORRUPT)
    return frame.select(*(sf.expr(_lenient_utf8(c)).alias(c) for c in columns)), layout


#: The well-formed UTF-8 sequences of two to four bytes (Unicode's table 3-7, which Python's
#: decoder keeps to), as a Java regular expression over text read as ISO-8859-1.
_MULTIBYTE = (
    r"[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}"
    r"|\xED[\x80-\x9F][\x80-\xBF]|\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}"
    r"|\xF4[\x80-\x8F][\x80-\xBF]{2}"
)
#: A run of well-formed text, or one byte that begins none.
_TOKEN = r"((?:[\x00-\x7F]|" + _MULTIBYTE + r")+|[\x80-\xFF])"
_HIGH = r"[\x80-\xFF]"
_BACKSLASH_X = "\\x"


def _lenient_utf8(col: str) -> str:
    """Spark SQL for column ``col``, read as ISO-8859-1, decoded as
    :data:`~retailrec.data_pipeline.csv_input.LENIENT_UTF8` decodes: well-formed UTF-8 as its
    characters, any other byte as ``\\xNN``. Pure ASCII, nearly every value, is left as it is;
    the rest is cut into runs of well-formed text and single stray bytes."""
    byte = "encode(t, 'ISO-8859-1')"
    decoded = (
        f"transform(regexp_extract_all(`{col}`, {rules.literal(_TOKEN)}, 1), t ->"
        f" CASE WHEN length(t) = 1 AND t RLIKE {rules.literal(_HIGH)}"
        f" THEN concat({rules.literal(_BACKSLASH_X)}, lower(hex({byte})))"
        f" ELSE decode({byte}, 'UTF-8') END)"
    )
    return (
        f"CASE WHEN `{col}` RLIKE {rules.literal(_HIGH)}"
        f" THEN array_join({decoded}, '') ELSE `{col}` END"
    )


def _quote_left_open(spark: SparkSession, where: str) -> bool:
    """Whether some line holds an odd number of quotes, as the embedded engine's scan finds: one
    more pass over the text, for the report's warning (the rows are read alike either way)."""
    from pyspark.sql import functions as sf

    quotes = sf.size(sf.split(sf.col("value"), '"', -1)) - 1
    return spark.read.text(where).where(quotes % 2 == 1).limit(1).count() > 0


def checked(frame: DataFrame, now_ms: int) -> DataFrame:
    """The rows with their parsed columns (:func:`~.rules.parsed_sql`) and ``_reason``: the
    first rule broken, ``wrong number of fields`` for a corrupt record, NULL for a valid row."""
    from pyspark.sql import functions as sf

    for col in EVENT_COLUMNS:
        for name, expr in rules.parsed_sql(col, col).items():
            frame = frame.withColumn(name, sf.expr(expr))
    reason = (
        f"CASE WHEN `{_CORRUPT}` IS NOT NULL THEN {rules.literal(csv_input.WRONG_FIELD_COUNT)}"
        f" ELSE {rules.reason_sql(rules.EVENT_RULES, now_ms)} END"
    )
    return frame.withColumn(_REASON, sf.expr(reason))


def typed(frame: DataFrame) -> DataFrame:
    """A checked frame's valid rows as typed events (``transactionid`` NULL where empty)."""
    from pyspark.sql import functions as sf

    event = sf.expr(
        "CASE `event__value` "
        + " ".join(f"WHEN {i} THEN {rules.literal(e)}" for i, e in enumerate(EVENT_TYPES))
        + " END"
    )
    return frame.where(sf.col(_REASON).isNull()).select(
        sf.col("timestamp__value").alias("timestamp"),
        sf.col("visitorid__value").alias("visitorid"),
        event.alias("event"),
        sf.col("itemid__value").alias("itemid"),
        sf.expr("CASE WHEN `transactionid__empty` THEN NULL ELSE `transactionid__value` END")
        .cast("bigint")
        .alias("transactionid"),
    )


def _quarantine_rows(
    rows: Iterator[Any], layout: csv_input.CsvLayout | None
) -> Iterator[dict[str, str]]:
    """Quarantine records as the embedded engine writes them, from Spark's rejected rows."""
    for row in rows:
        reason = row[_REASON]
        if reason == csv_input.WRONG_FIELD_COUNT:
            assert layout is not None  # only CSV lines have fields to count
            yield from csv_input.malformed_rows([row[_CORRUPT]], layout, EVENT_COLUMNS).to_dict(
                "records"
            )
            continue
        record = {c: "" if row[c] is None else row[c] for c in EVENT_COLUMNS}
        column = rules.DETAIL_COLUMN[reason]
        record |= {
            "reason": reason,
            "detail": rules.detail_text(column, None if column is None else record[column]),
        }
        yield record


def _write_quarantine(records: Iterator[dict[str, str]], target: Path) -> Counter[str]:
    """Stream the records to ``target`` (atomically) and count them by reason."""
    counts: Counter[str] = Counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*EVENT_COLUMNS, "reason", "detail"])
        writer.writeheader()
        for record in records:
            writer.writerow(record)
            counts[record["reason"]] += 1
    if counts:
        tmp.replace(target)
    else:
        tmp.unlink()
    return counts


def load_events(
    spark: SparkSession,
    conn: store.Connection,
    source: str,
    rejected_dir: Path,
    processed_dir: Path,
    report: EtlReport,
    progress: Callable[[str], None] | None = None,
) -> None:
    """:func:`~retailrec.data_pipeline.etl.load_events` on Spark: validate ``source``, quarantine,
    dedupe, append the new events to the processed Parquet dataset and to the store."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as sf

    step = progress or (lambda _s: None)
    now_ms = int(time.time() * 1000)
    with tempfile.TemporaryDirectory(prefix="spark-etl-", dir=_scratch(processed_dir)) as tmp:
        raw, layout = read_events(spark, source, report, Path(tmp))
        step("validating (spark)")
        # Read once, for the count, the quarantine and the dedupe; kept on disk, not in memory,
        # which is the executors' for the dedupe's aggregation (in 1 GB, a 10x log's cache in
        # memory left it none: "unable to acquire memory").
        frame = checked(raw, now_ms).persist(StorageLevel.DISK_ONLY)
        try:
            stats = frame.agg(
                sf.count(sf.lit(1)).alias("read"), sf.count(sf.col(_REASON)).alias("rejected")
            ).first()
            assert stats is not None
            report.rows_read = int(stats["read"])
            rejected = frame.where(sf.col(_REASON).isNotNull()).select(
                *EVENT_COLUMNS, _CORRUPT, _REASON
            )
            stem = Path(source.rstrip("/")).name.split(".")[0] or "events"
            target = rejected_dir / f"{stem}-{_source_digest(source)}.csv"
            records = _quarantine_rows(rejected.toLocalIterator(), layout)
            counts = _write_quarantine(records, target)
            report.rejected = sum(counts.values())
            report.rejected_by_reason = dict(counts.most_common())
            report.rejected_file = str(target) if report.rejected else None
            if report.rows_read == 0:
                report.warnings.append("the file has a header but no rows")

            step("deduplicating (spark)")
            staged = Path(tmp) / "run"
            typed(frame).dropDuplicates().write.parquet(str(staged))
            n_valid = report.rows_read - report.rejected
            n_distinct = _parquet_rows(staged)
            report.duplicates_in_file = n_valid - n_distinct
            step("writing the processed dataset (spark)")
            _append_processed(spark, staged, processed_dir / "events")
            step(f"loading {n_distinct:,} events")
            _load_store(conn, staged, report)
        finally:
            frame.unpersist()


def _source_digest(source: str) -> str:
    """Names the quarantine by its input, so that a re-run rewrites the same file: the files'
    names, sizes and modification times (not their bytes: the driver does not read the log)."""
    h = hashlib.sha256(source.encode())
    path = Path(source)
    if not is_url(source) and path.exists():
        for part in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if part.is_file():
                stat = part.stat()
                h.update(f"{part.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _scratch(processed_dir: Path) -> Path:
    processed_dir.mkdir(parents=True, exist_ok=True)
    return processed_dir


def _parquet_rows(path: Path) -> int:
    return int(pads.dataset(path, format="parquet").count_rows())


def _key(frame: DataFrame) -> DataFrame:
    from pyspark.sql import functions as sf

    return frame.withColumn("_tx", sf.coalesce(sf.col("transactionid"), sf.lit(-1)))


def _append_processed(spark: SparkSession, staged: Path, dataset: Path) -> None:
    """Append the staged events that ``dataset`` does not hold yet, partitioned by UTC day."""
    from pyspark.sql import functions as sf

    new = _key(spark.read.parquet(str(staged)))
    if dataset.exists() and any(dataset.rglob("*.parquet")):
        held = _key(spark.read.parquet(str(dataset))).select(
            "timestamp", "visitorid", "event", "itemid", "_tx"
        )
        new = new.join(
            held, on=["timestamp", "visitorid", "event", "itemid", "_tx"], how="left_anti"
        )
    day = sf.date_format(sf.timestamp_millis(sf.col("timestamp")), "yyyy-MM-dd")
    new.drop("_tx").withColumn("day", day).write.mode("append").partitionBy("day").parquet(
        str(dataset)
    )


def _load_store(conn: store.Connection, staged: Path, report: EtlReport) -> None:
    """Append the staged events to the store in batches; the run is recorded with the first."""
    loaded = offered = 0
    report.duplicates = report.duplicates_in_file

    def counted(txn: store.Connection, new: int) -> None:
        report.loaded, report.duplicates_in_store = loaded + new, offered - loaded - new
        report.duplicates = report.duplicates_in_file + report.duplicates_in_store
        if report.run_id is None:
            report.run_id = store.insert_etl_run(txn, report.to_dict())

    dataset = pads.dataset(staged, format="parquet")
    for batch in dataset.to_batches(batch_size=LOAD_BATCH_ROWS):
        events = batch.to_pandas()
        offered += len(events)
        loaded += store.append_events(conn, events, source="etl", then=counted)
    report.loaded, report.duplicates_in_store = loaded, offered - loaded
    report.duplicates = report.duplicates_in_file + report.duplicates_in_store
