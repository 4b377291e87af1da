"""Readers for Retailrocket's files, real or synthetic.

The real dataset ships ``events.csv``, ``item_properties_part1.csv`` and
``item_properties_part2.csv`` (about 20M rows together) and ``category_tree.csv``; the generator
writes one
``item_properties.csv``. :func:`locate` finds whichever is present. These readers expect files that
follow the format; the ETL (:mod:`retailrec.data_pipeline.etl`) is the tolerant path that
quarantines bad rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

EVENTS_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
EVENT_TYPES = ("view", "addtocart", "transaction")
ITEM_PROPERTIES_COLUMNS = ("timestamp", "itemid", "property", "value")
CATEGORY_TREE_COLUMNS = ("categoryid", "parentid")
#: The item properties that Retailrocket publishes readably; all others are hashed.
READABLE_PROPERTIES = ("categoryid", "available")


class DataFileError(ValueError):
    """A data file is missing or cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class RawFiles:
    """Paths of a shop's raw files. Only ``events`` is required."""

    events: Path
    item_properties: tuple[Path, ...] = ()
    category_tree: Path | None = None


def locate(raw_dir: Path) -> RawFiles:
    """Find Retailrocket's files in ``raw_dir``.

    Accepts the real names (``item_properties_part1.csv`` and ``..._part2.csv``) and the single
    ``item_properties.csv`` the generator writes.

    Raises:
        DataFileError: ``events.csv`` is not there.
    """
    raw_dir = Path(raw_dir)
    events = raw_dir / "events.csv"
    if not events.is_file():
        raise DataFileError(
            f"no events.csv in {raw_dir}: put Retailrocket's files there "
            "(or run `retailrec download` / `retailrec synth`)"
        )
    parts = sorted(raw_dir.glob("item_properties_part*.csv"))
    single = raw_dir / "item_properties.csv"
    props = tuple(parts) if parts else ((single,) if single.is_file() else ())
    tree = raw_dir / "category_tree.csv"
    return RawFiles(events, props, tree if tree.is_file() else None)


def _check_header(path: Path, expected: Iterable[str]) -> None:
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        header = fh.readline().strip()
    if not header:
        raise DataFileError(f"{path}: the file is empty")
    columns = [c.strip().strip('"') for c in header.split(",")]
    missing = [c for c in expected if c not in columns]
    if missing:
        raise DataFileError(f"{path}: missing required column(s) {', '.join(missing)}")


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
    _check_header(path, EVENTS_COLUMNS)
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
            f"{path}: {_first_line(exc)} (run `retailrec etl` to quarantine bad rows)"
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
        _check_header(path, ITEM_PROPERTIES_COLUMNS)
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
            raise DataFileError(f"{path}: {_first_line(exc)}") from exc


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
    _check_header(path, CATEGORY_TREE_COLUMNS)
    try:
        return pd.read_csv(
            path, dtype={"categoryid": "int64", "parentid": "Int64"}, encoding="utf-8-sig"
        )[list(CATEGORY_TREE_COLUMNS)]
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataFileError(f"{path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
