"""Readers for Retailrocket's files, real or synthetic.

The real dataset ships ``events.csv``, ``item_properties_part1.csv`` and
``item_properties_part2.csv`` (about 20M rows together) and ``category_tree.csv``; the generator
writes one
``item_properties.csv``. :func:`locate` finds whichever is present. These readers expect files that
follow the format; the ETL (:mod:`retailrec.data_pipeline.etl`) is the tolerant path that
quarantines bad rows.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from retailrec.data_pipeline.schema import REQUIRED_COLUMNS as EVENTS_COLUMNS
from retailrec.events import EVENT_TYPES

if TYPE_CHECKING:
    from typing_extensions import Buffer

ITEM_PROPERTIES_COLUMNS = ("timestamp", "itemid", "property", "value")
CATEGORY_TREE_COLUMNS = ("categoryid", "parentid")
#: The item properties that Retailrocket publishes readably; all others are hashed.
READABLE_PROPERTIES = ("categoryid", "available")
#: Delimiters a CSV file may use, in order of preference.
DELIMITERS = (",", ";", "\t", "|")
#: Compressed files are read by their suffix.
COMPRESSION: dict[str, Callable[..., IO[Any]]] = {".gz": gzip.open, ".bz2": bz2.open}


class DataFileError(ValueError):
    """A data file is missing or cannot be read; the message is one line for the user."""

    @classmethod
    def unreadable(cls, path: Path | str, exc: BaseException) -> DataFileError:
        """``path: cannot be read: <the first line of exc>``."""
        return cls(f"{path}: cannot be read: {error_line(exc)}")


def fields(line: str, delimiter: str) -> list[str]:
    """One CSV record's fields (a quoted value may hold a line break, as Arrow's rows can)."""
    return next(csv.reader(io.StringIO(line), delimiter=delimiter), [])


@dataclass(frozen=True)
class RawFiles:
    """Paths of a shop's raw files. Only ``events`` is required.

    When ``archive`` is set the files are members of that zip archive (as Kaggle ships
    Retailrocket) and the paths are their names in it: :func:`unpack` extracts them.
    """

    events: Path
    item_properties: tuple[Path, ...] = ()
    category_tree: Path | None = None
    archive: Path | None = None

    @property
    def source(self) -> str:
        """The events file, as the user would name it."""
        return str(self.events) if self.archive is None else f"{self.archive}:{self.events}"


_CSV_SUFFIXES = tuple(f".csv{s}" for s in ("", *COMPRESSION))


def locate(raw_dir: Path) -> RawFiles:
    """Find Retailrocket's files in ``raw_dir``: a folder, the events file itself, or a zip.

    Accepts the real names (``item_properties_part1.csv`` and ``..._part2.csv``), the single
    ``item_properties.csv`` the generator writes, and any of them gzip- or bzip2-compressed
    (``events.csv.gz``). When ``raw_dir`` is a file, it is the event log and the optional files
    are looked for beside it. A zip archive (Kaggle's download), given or alone in the folder,
    is searched at any depth; :func:`unpack` extracts what was found.

    Raises:
        DataFileError: the folder does not exist, or ``events.csv`` is not in it.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.is_file() and raw_dir.suffix.lower() in (".xlsx", ".xls", ".xlsm"):
        raise DataFileError(f"{raw_dir}: an Excel workbook, not CSV text: save it as CSV")
    if raw_dir.is_file() and zipfile.is_zipfile(raw_dir):
        return _in_archive(raw_dir)
    if raw_dir.is_file() and raw_dir.suffix.lower() == ".zip":
        raise DataFileError(f"{raw_dir}: cannot be read: not a whole zip archive")
    if raw_dir.is_file():  # the event log itself, whatever its name
        beside = _pick([p.name for p in raw_dir.parent.iterdir()], raw_dir.parent)
        return RawFiles(raw_dir, beside.item_properties, beside.category_tree)
    if not raw_dir.is_dir():
        raise DataFileError(f"{raw_dir}: no such folder (expected one holding events.csv)")
    found = _pick([p.name for p in raw_dir.iterdir()], raw_dir)
    if found.events is not None:
        return RawFiles(found.events, found.item_properties, found.category_tree)
    archives = [p for p in sorted(raw_dir.glob("*.zip")) if zipfile.is_zipfile(p)]
    if len(archives) == 1:
        return _in_archive(archives[0])
    nested = sorted(p.parent for p in raw_dir.glob("*/events.csv*") if p.is_file())
    others = sorted(p for p in raw_dir.iterdir() if p.name.lower().endswith(_CSV_SUFFIXES))
    if nested:
        hint = f"; there is one in {nested[0]}: pass --raw {nested[0]}"
    elif archives:
        hint = f"; pass one of the zip archives there, e.g. --raw {archives[0]}"
    elif others:  # an export under another name, or one file per month: load each by name
        hint = f"; to load another file as the event log, name it: --raw {others[0]}"
    else:
        hint = ": put Retailrocket's files there (or run `retailrec download` / `retailrec synth`)"
    raise DataFileError(f"no events.csv in {raw_dir}{hint}")


@dataclass(frozen=True)
class _Found:
    events: Path | None
    item_properties: tuple[Path, ...]
    category_tree: Path | None


def _pick(names: Sequence[str], folder: Path | None) -> _Found:
    """Retailrocket's files among ``names``: files in ``folder``, or (None) the names alone."""

    def usable(name: str) -> bool:
        return folder is None or (folder / name).is_file()

    def path(name: str) -> Path:
        return Path(name) if folder is None else folder / name

    spelt = {n.lower(): n for n in sorted(names, reverse=True)}  # Events.CSV is events.csv

    def find(name: str) -> Path | None:
        for suffix in ("", *COMPRESSION):
            written = spelt.get(f"{name}{suffix}")
            if written is not None and usable(written):
                return path(written)
        return None

    parts = tuple(
        path(spelt[n])
        for n in sorted(spelt)
        if n.startswith("item_properties_part") and n.endswith(_CSV_SUFFIXES) and usable(spelt[n])
    )
    single = find("item_properties.csv")
    props = parts if parts else ((single,) if single is not None else ())
    return _Found(find("events.csv"), props, find("category_tree.csv"))


def _in_archive(archive: Path) -> RawFiles:
    """Retailrocket's files in a zip archive, by their names in it (at any depth)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [
                m.filename
                for m in zf.infolist()
                if not m.is_dir()
                and not m.filename.startswith("__MACOSX/")  # macOS resource forks
                and not PurePosixPath(m.filename).name.startswith("._")
            ]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataFileError.unreadable(archive, exc) from exc
    by_name: dict[str, str] = {}
    for member in members:
        by_name.setdefault(PurePosixPath(member).name, member)
    found = _pick(list(by_name), None)
    if found.events is None:
        shown = ", ".join(sorted(by_name)[:5]) or "nothing"
        raise DataFileError(f"{archive}: no events.csv in this zip archive (it holds {shown})")

    def in_archive(name: Path) -> Path:
        return Path(by_name[name.name])

    return RawFiles(
        in_archive(found.events),
        tuple(in_archive(p) for p in found.item_properties),
        None if found.category_tree is None else in_archive(found.category_tree),
        archive=archive,
    )


def unpack(files: RawFiles, into: Path) -> RawFiles:
    """Extract an archive's files into the folder ``into``: the same files, as real paths.

    Files that are not in an archive come back as they are.

    Raises:
        DataFileError: the archive is damaged.
    """
    if files.archive is None:
        return files
    into.mkdir(parents=True, exist_ok=True)

    def extract(zf: zipfile.ZipFile, name: Path) -> Path:
        target = into / name.name  # flattened: a member's folders never reach the disk
        with zf.open(name.as_posix()) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        return target

    try:
        with zipfile.ZipFile(files.archive) as zf:
            return RawFiles(
                extract(zf, files.events),
                tuple(extract(zf, p) for p in files.item_properties),
                None if files.category_tree is None else extract(zf, files.category_tree),
            )
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataFileError.unreadable(files.archive, exc) from exc


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


def read_events(path: Path) -> pd.DataFrame:
    """Read a well-formed ``events.csv``.

    Returns:
        Columns ``timestamp`` (int64, Unix ms), ``visitorid``, ``itemid`` (int64), ``event``
        (category of view/addtocart/transaction) and ``transactionid`` (nullable Int64, set on
        transactions only), in file order.

    Raises:
        DataFileError: the file is missing, empty, lacks a column, or a value does not parse.
    """
    path = Path(path)
    csv_layout(path, EVENTS_COLUMNS, scan=False)
    try:
        df = pd.read_csv(
            path,
            usecols=list(EVENTS_COLUMNS),
            dtype={
                "timestamp": "int64",
                "visitorid": "int64",
                "itemid": "int64",
                "event": "str",
                "transactionid": "Int64",
            },
            encoding="utf-8-sig",
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(
            f"{path}: {error_line(exc)} (run `retailrec etl` to quarantine bad rows)"
        ) from exc
    unknown = ~df["event"].isin(EVENT_TYPES)
    if unknown.any():
        raise DataFileError(
            f"{path}: unknown event type {df.loc[unknown, 'event'].iloc[0]!r} "
            "(run `retailrec etl` to quarantine bad rows)"
        )
    df["event"] = pd.Categorical(df["event"], categories=list(EVENT_TYPES))
    return df[list(EVENTS_COLUMNS)]


def iter_item_properties(
    paths: Iterable[Path],
    properties: Iterable[str] | None = READABLE_PROPERTIES,
    chunksize: int = 1_000_000,
) -> Iterator[pd.DataFrame]:
    """Stream item properties, keeping only ``properties`` (all when None).

    The real files hold ~20M rows of mostly hashed properties; filtering chunk by chunk keeps
    memory flat.

    Yields:
        Frames with ``timestamp`` (int64 ms), ``itemid`` (int64), ``property`` and ``value`` (str).
    """
    keep = None if properties is None else set(properties)
    for path in paths:
        path = Path(path)
        csv_layout(path, ITEM_PROPERTIES_COLUMNS, scan=False)
        reader = pd.read_csv(
            path,
            usecols=list(ITEM_PROPERTIES_COLUMNS),
            dtype={"timestamp": "int64", "itemid": "int64", "property": "str", "value": "str"},
            encoding="utf-8-sig",
            chunksize=chunksize,
            keep_default_na=False,
        )
        try:
            for chunk in reader:
                yield chunk if keep is None else chunk[chunk["property"].isin(keep)]
        except (ValueError, pd.errors.ParserError) as exc:
            raise DataFileError(f"{path}: {error_line(exc)}") from exc


def read_item_properties(
    paths: Iterable[Path], properties: Iterable[str] | None = READABLE_PROPERTIES
) -> pd.DataFrame:
    """All rows of the given properties from one or more item-properties files."""
    chunks = list(iter_item_properties(paths, properties))
    if not chunks:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64" if c in ("timestamp", "itemid") else "str")
                for c in ITEM_PROPERTIES_COLUMNS
            }
        )
    return pd.concat(chunks, ignore_index=True)


def item_catalogue(properties: pd.DataFrame, as_of_ms: int | None = None) -> pd.DataFrame:
    """Each item's latest ``categoryid`` and ``available`` at ``as_of_ms`` (default: the latest).

    Returns:
        One row per item: ``itemid``, ``categoryid`` (Int64) and ``available`` (boolean, NA when
        never stated).
    """
    df = properties if as_of_ms is None else properties[properties["timestamp"] <= as_of_ms]
    latest = (
        df.sort_values("timestamp", kind="stable")
        .drop_duplicates(["itemid", "property"], keep="last")
        .pivot(index="itemid", columns="property", values="value")
    )
    out = pd.DataFrame(index=latest.index)
    cat = (
        latest["categoryid"]
        if "categoryid" in latest
        else pd.Series(index=latest.index, dtype="str")
    )
    out["categoryid"] = pd.to_numeric(cat, errors="coerce").astype("Int64")
    avail = (
        latest["available"] if "available" in latest else pd.Series(index=latest.index, dtype="str")
    )
    out["available"] = (
        pd.to_numeric(avail, errors="coerce").map({1: True, 0: False}).astype("boolean")
    )
    return out.reset_index()


def read_category_tree(path: Path) -> pd.DataFrame:
    """``categoryid`` (int64) and ``parentid`` (nullable Int64: NA for a root)."""
    path = Path(path)
    csv_layout(path, CATEGORY_TREE_COLUMNS, scan=False)
    try:
        return pd.read_csv(
            path, dtype={"categoryid": "int64", "parentid": "Int64"}, encoding="utf-8-sig"
        )[list(CATEGORY_TREE_COLUMNS)]
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(f"{path}: {error_line(exc)}") from exc


def error_line(exc: BaseException) -> str:
    """The first line of an exception's message (a user sees one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
