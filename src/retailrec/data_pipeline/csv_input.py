"""CSV input: every way a shop writes its CSV files, read in one place.

:func:`csv_layout` reads a file's header (delimiter, encoding, where the required columns are,
whether a quote is left open); :func:`text_batches` then streams the columns as text, block by
block with Arrow's CSV reader, handing back the raw lines of rows with the wrong number of fields
instead of failing the read. Columns come in any order and case, ``, ; tab |`` delimiters, UTF-8
(with or without a BOM, CRLF or not), UTF-16, gzip and bzip2 are all read. Validation of the
values is :mod:`retailrec.data_pipeline.schema`'s job.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from retailrec.data_pipeline.files import COMPRESSION
from retailrec.errors import DataFileError
from retailrec.events import EVENT_COLUMNS

if TYPE_CHECKING:
    from typing_extensions import Buffer

ITEM_PROPERTIES_COLUMNS = ("timestamp", "itemid", "property", "value")
CATEGORY_TREE_COLUMNS = ("categoryid", "parentid")
#: The item properties that Retailrocket publishes readably; all others are hashed.
READABLE_PROPERTIES = ("categoryid", "available")
#: Delimiters a CSV file may use, in order of preference.
DELIMITERS = (",", ";", "\t", "|")
#: Bytes of CSV per batch: bounded memory whatever the file size.
BLOCK_SIZE = 16 << 20
#: Lines per batch when a file is read one line per row.
BLOCK_LINES = 200_000
#: The reason a row with the wrong number of fields is quarantined with.
WRONG_FIELD_COUNT = "wrong number of fields"


def fields(line: str, delimiter: str) -> list[str]:
    """One CSV record's fields (a quoted value may hold a line break, as Arrow's rows can)."""
    return next(csv.reader(io.StringIO(line), delimiter=delimiter), [])


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file is written, as read from its header line."""

    path: Path
    header: tuple[str, ...]  # the column names as written, trimmed
    names: tuple[str, ...]  # one unique name per column: required ones as the schema spells them
    delimiter: str
    encoding: str  # a codec name for Arrow's CSV reader: "utf8", "utf-16" or LENIENT_UTF8
    header_lines: int  # lines to skip to reach the first row (blank ones, then the header)
    #: A quote opened on some line is not closed on it (a stray quote, which would swallow the
    #: lines after it into one value): read one line per row. Checked by a scan, not in UTF-16.
    quote_spans_lines: bool = False

    @property
    def extra(self) -> list[str]:
        """The columns that are not required, as written (an unnamed one by its position)."""
        return [
            h or f"(unnamed column {i + 1})"
            for i, (h, n) in enumerate(zip(self.header, self.names, strict=True))
            if n.startswith(_OTHER)
        ]


_OTHER = "column "  # prefix of the reader's names for columns that are not required


#: The report's warning for a file in which some line leaves a quote open (both engines).
QUOTE_LEFT_OPEN = (
    "a quote is left open on some line: read one row per line, so that it cannot swallow the"
    " lines after it"
)

#: A codec that reads UTF-8 and keeps any byte that is not as a ``\\xNN`` escape: a file with a
#: stray Latin-1 byte is read whole and the rows holding one are quarantined, not the file.
LENIENT_UTF8 = "retailrec_lenient_utf8"


def _lenient_codec(name: str) -> codecs.CodecInfo | None:
    if name != LENIENT_UTF8:
        return None
    utf8 = codecs.lookup("utf-8")

    def decode(data: Buffer, errors: str = "strict") -> tuple[str, int]:
        return utf8.decode(data, "backslashreplace")

    def incremental_decoder(errors: str = "strict") -> codecs.IncrementalDecoder:
        return utf8.incrementaldecoder("backslashreplace")

    return codecs.CodecInfo(
        utf8.encode,
        decode,
        incrementalencoder=utf8.incrementalencoder,
        incrementaldecoder=incremental_decoder,
        name=LENIENT_UTF8,
    )


codecs.register(_lenient_codec)


def _open_binary(path: Path) -> IO[bytes]:
    opener = COMPRESSION.get(path.suffix.lower(), open)
    stream: IO[bytes] = opener(path, "rb")
    return stream


def open_text(layout: CsvLayout) -> IO[str]:
    """The file as text in its encoding, with any line ending read as ``\\n``."""
    return io.TextIOWrapper(_open_binary(layout.path), encoding=layout.encoding, newline=None)


def _scan(path: Path) -> tuple[bool, bool]:
    """Read the whole file once: (whether it is valid UTF-8, whether a quote opened on some line
    is left open at its end). Lines are only split where a block holds a quote."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8, spans, tail = True, False, b""
    with _open_binary(path) as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
            if spans:
                continue
            data = tail + block
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            whole, tail = data[:cut], data[cut:]
            spans = b'"' in whole and any(
                line.count(b'"') % 2 for line in re.split(rb"\r\n|\r|\n", whole)
            )
        if utf8:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8 = False
    return utf8, spans or tail.count(b'"') % 2 == 1


#: What a file that is not CSV text starts with, and what it then is.
_NOT_TEXT = {
    b"PK\x03\x04": "a zip archive or an Excel workbook (.xlsx)",
    b"\xd0\xcf\x11\xe0": "an Excel 97-2003 workbook (.xls)",
    b"PAR1": "a Parquet file",
    b"SQLite format 3\x00": "an SQLite database",
    b"%PDF": "a PDF document",
}


def _header_line(path: Path, scan: bool) -> tuple[str, int, str, bool]:
    """(the first non-blank line, how many lines up to and with it, the encoding, whether a quote
    spans lines). Only with ``scan`` is the whole file read, to tell strict UTF-8 from the lenient
    codec and to find quotes left open."""
    with _open_binary(path) as fh:
        head = fh.read(1 << 16)
    for magic, kind in _NOT_TEXT.items():
        if head.startswith(magic):
            raise DataFileError(f"{path}: {kind}, not CSV text: save or export it as CSV")
    spans = False
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = head.decode("utf-16", errors="replace"), "utf-16"
    else:
        text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
        utf8, spans = _scan(path) if scan else (True, False)
        encoding = "utf8" if utf8 else LENIENT_UTF8
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if line.strip():
            return line, number, encoding, spans
    return "", 0, encoding, spans


def _column_key(name: str) -> str:
    """A header name as matched: ``"Visitor_ID"`` and ``visitor id`` are ``visitorid``."""
    return re.sub(r"[\s_-]", "", name.strip().strip('"').lower())


def csv_layout(path: Path, required: Sequence[str], *, scan: bool = True) -> CsvLayout:
    """Read a CSV file's header: its delimiter, encoding and where the ``required`` columns are.

    Column names match whatever their case, surrounding spaces or quotes, and underscores, dashes
    or spaces inside (``Visitor_ID``); the delimiter is the one of ``, ; tab |`` that finds the
    required columns; a UTF-16 byte-order mark is honoured.
    ``scan=False`` checks the header only (the encoding is then not checked past it).

    Raises:
        DataFileError: the file is missing or empty, a required column is missing, or one is
            there twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    try:
        line, lines, encoding, spans = _header_line(path, scan)
    except (OSError, EOFError) as exc:  # unreadable, or a broken compressed file
        raise DataFileError.unreadable(path, exc) from exc
    if not line.strip():
        raise DataFileError(f"{path}: the file is empty (expected a header line)")
    best: tuple[int, str, list[str], list[str]] | None = None
    for delimiter in DELIMITERS:
        header = [c.strip() for c in fields(line, delimiter)]
        keys = [_column_key(c) for c in header]
        found = sum(c in keys for c in required)
        if best is None or found > best[0]:
            best = (found, delimiter, header, keys)
    assert best is not None
    _, delimiter, header, keys = best
    missing = [c for c in required if c not in keys]
    if missing:
        if len(missing) == len(required) and re.fullmatch(r"[\d.+-]+", keys[0] if keys else ""):
            hint = (
                "the first line looks like data, not a header: start the file with the line "
                + ",".join(required)
            )
        else:
            hint = f"the header has {', '.join(h or '(empty)' for h in header)[:200]}"
        raise DataFileError(f"{path}: missing required column(s) {', '.join(missing)} ({hint})")
    twice = [c for c in required if keys.count(c) > 1]
    if twice:
        raise DataFileError(f"{path}: column(s) {', '.join(twice)} appear more than once")
    names = tuple(k if k in required else f"{_OTHER}{i + 1}" for i, k in enumerate(keys))
    return CsvLayout(path, tuple(header), names, delimiter, encoding, lines, spans)


def text_batches(
    layout: CsvLayout,
    columns: tuple[str, ...],
    malformed: list[str],
    block_size: int = BLOCK_SIZE,
) -> Iterator[pd.DataFrame]:
    """Stream ``columns`` of a CSV file as text, block by block; the raw lines of rows with the
    wrong number of fields are appended to ``malformed`` instead of failing the read. A file with
    a quote left open is read by :func:`_line_batches` instead."""

    if layout.quote_spans_lines:
        yield from _line_batches(layout, columns, malformed)
        return

    def on_invalid(row: Any) -> str:
        if row.text.strip():  # a line of spaces is blank, as an empty one is: not a row
            malformed.append(row.text)
        return "skip"

    try:
        reader = pacsv.open_csv(
            layout.path,
            read_options=pacsv.ReadOptions(
                block_size=block_size,
                column_names=list(layout.names),
                skip_rows=layout.header_lines,
                encoding=layout.encoding,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.delimiter, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={c: pa.large_string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield batch.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow"))
    except (pa.ArrowInvalid, OSError, EOFError, UnicodeError) as exc:
        raise DataFileError.unreadable(layout.path, exc) from exc


def _line_batches(
    layout: CsvLayout, columns: tuple[str, ...], malformed: list[str]
) -> Iterator[pd.DataFrame]:
    """:func:`text_batches` for a file in which a quote is left open: one row per line, each line
    split on its own (quotes still group fields within it), so that a stray quote costs its own
    row only, not every line up to the next quote. Slower: a Python loop over the lines."""
    keep = [layout.names.index(c) for c in columns]
    try:
        with open_text(layout) as fh:
            for _ in range(layout.header_lines):
                next(fh, None)
            while lines := list(itertools.islice(fh, BLOCK_LINES)):
                rows = []
                for line in lines:
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    values = fields(line, layout.delimiter)
                    if len(values) == len(layout.names):
                        rows.append([values[i] for i in keep])
                    else:
                        malformed.append(line)
                yield pd.DataFrame(rows, columns=list(columns), dtype=pd.StringDtype("pyarrow"))
    except (OSError, EOFError, UnicodeError, csv.Error) as exc:
        raise DataFileError.unreadable(layout.path, exc) from exc


@dataclass
class EventBatch:
    rows: pd.DataFrame  # the required columns, as text
    malformed: list[str]  # raw lines with the wrong number of fields


def iter_event_batches(layout: CsvLayout, block_size: int = BLOCK_SIZE) -> Iterator[EventBatch]:
    """Stream an event log in blocks; rows with the wrong field count come back as raw lines."""
    malformed: list[str] = []
    for rows in text_batches(layout, EVENT_COLUMNS, malformed, block_size):
        yield EventBatch(rows, malformed.copy())
        malformed.clear()
    if malformed:
        yield EventBatch(pd.DataFrame(columns=list(EVENT_COLUMNS), dtype="str"), malformed.copy())


def malformed_rows(lines: list[str], layout: CsvLayout, columns: tuple[str, ...]) -> pd.DataFrame:
    """Quarantine rows for lines with the wrong number of fields, keeping what values they have."""
    records = []
    for line in lines:
        found = fields(line, layout.delimiter)
        values = dict(zip(layout.names, found, strict=False))
        record = {c: values.get(c, "") for c in columns}
        record["reason"] = WRONG_FIELD_COUNT
        record["detail"] = f"expected {len(layout.names)} fields, got {len(found)}: {line[:200]}"
        records.append(record)
    return pd.DataFrame.from_records(records, columns=[*columns, "reason", "detail"])
