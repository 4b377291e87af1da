"""Strict readers of well-formed Retailrocket files, for tests: they fail on the first bad value.

The product reads files through the tolerant ETL (:mod:`retailrec.data_pipeline.etl`), which
quarantines bad rows; tests use these to read what the generator wrote, or a real sample, whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from retailrec.data_pipeline.csv_input import (
    CATEGORY_TREE_COLUMNS,
    ITEM_PROPERTIES_COLUMNS,
    READABLE_PROPERTIES,
    csv_layout,
)
from retailrec.errors import DataFileError, error_line
from retailrec.events import EVENT_COLUMNS, EVENT_TYPES


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
    csv_layout(path, EVENT_COLUMNS, scan=False)
    try:
        df = pd.read_csv(
            path,
            usecols=list(EVENT_COLUMNS),
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
    return df[list(EVENT_COLUMNS)]


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
