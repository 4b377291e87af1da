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
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from typing_extensions import Buffer

EVENTS_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
EVENT_TYPES = ("view", "addtocart", "transaction")
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


@dataclass(frozen=True)
class RawFiles:
    """Paths of a shop's raw files. Only ``events`` is required."""

    events: Path
    item_properties: tuple[Path, ...] = ()
    category_tree: Path | None = None


def locate(raw_dir: Path) -> RawFiles:
    """Find Retailrocket's files in ``raw_dir`` (a folder, or the events file itself).

    Accepts the real names (``item_properties_part1.csv`` and ``..._part2.csv``), the single
    ``item_properties.csv`` the generator writes, and any of them gzip- or bzip2-compressed
    (``events.csv.gz``). When ``raw_dir`` is a file, it is the event log and the optional files
    are looked for beside it.

    Raises:
        DataFileError: the folder does not exist, or ``events.csv`` is not in it.
    """
    raw_dir = Path(raw_dir)
    if raw_dir.is_file():
        events: Path | None = raw_dir
        raw_dir = raw_dir.parent
    elif not raw_dir.is_dir():
        raise DataFileError(f"{raw_dir}: no such folder (expected one holding events.csv)")
    else:
        events = _find(raw_dir, "events.csv")
    if events is None:
        raise DataFileError(
            f"no events.csv in {raw_dir}: put Retailrocket's files there "
            "(or run `retailrec download` / `retailrec synth`)"
        )
    suffixes = tuple(f".csv{s}" for s in ("", *COMPRESSION))
    parts = sorted(
        p
        for p in raw_dir.glob("item_properties_part*.csv*")
        if p.is_file() and p.name.endswith(suffixes)
    )
    single = _find(raw_dir, "item_properties.csv")
    props = tuple(parts) if parts else ((single,) if single is not None else ())
    return RawFiles(events, props, _find(raw_dir, "category_tree.csv"))


def _find(folder: Path, name: str) -> Path | None:
    for suffix in ("", *COMPRESSION):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file is written, as read from its header line."""

    path: Path
    header: tuple[str, ...]  # the column names as written, trimmed
    names: tuple[str, ...]  # one unique name per column: required ones as the schema spells them
    delimiter: str
    encoding: str  # a codec name for Arrow's CSV reader: "utf8", "utf-16" or LENIENT_UTF8
    header_lines: int  # lines to skip to reach the first row (blank ones, then the header)

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


def _is_utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _open_binary(path) as fh:
        try:
            for block in iter(lambda: fh.read(1 << 24), b""):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _header_line(path: Path, scan: bool) -> tuple[str, int, str]:
    """(the first non-blank line, how many lines up to and with it, the encoding). Only with
    ``scan`` is the whole file read to tell strict UTF-8 from the lenient codec."""
    with _open_binary(path) as fh:
        head = fh.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = head.decode("utf-16", errors="replace"), "utf-16"
    else:
        text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
        encoding = LENIENT_UTF8 if scan and not _is_utf8(path) else "utf8"
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if line.strip():
            return line, number, encoding
    return "", 0, encoding


def csv_layout(path: Path, required: Sequence[str], *, scan: bool = True) -> CsvLayout:
    """Read a CSV file's header: its delimiter, encoding and where the ``required`` columns are.

    Column names match whatever their case and surrounding spaces or quotes; the delimiter is the
    one of ``, ; tab |`` that finds the required columns; a UTF-16 byte-order mark is honoured.
    ``scan=False`` checks the header only (the encoding is then not checked past it).

    Raises:
        DataFileError: the file is missing or empty, a required column is missing, or one is
            there twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    try:
        line, lines, encoding = _header_line(path, scan)
    except (OSError, EOFError) as exc:  # unreadable, or a broken compressed file
        raise DataFileError(f"{path}: cannot be read: {error_line(exc)}") from exc
    if not line.strip():
        raise DataFileError(f"{path}: the file is empty (expected a header line)")
    best: tuple[int, str, list[str], list[str]] | None = None
    for delimiter in DELIMITERS:
        header = [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]
        keys = [c.strip('"').strip().lower() for c in header]
        found = sum(c in keys for c in required)
        if best is None or found > best[0]:
            best = (found, delimiter, header, keys)
    assert best is not None
    _, delimiter, header, keys = best
    missing = [c for c in required if c not in keys]
    if missing:
        raise DataFileError(f"{path}: missing required column(s) {', '.join(missing)}")
    twice = [c for c in required if keys.count(c) > 1]
    if twice:
        raise DataFileError(f"{path}: column(s) {', '.join(twice)} appear more than once")
    names = tuple(k if k in required else f"{_OTHER}{i + 1}" for i, k in enumerate(keys))
    return CsvLayout(path, tuple(header), names, delimiter, encoding, lines)


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
