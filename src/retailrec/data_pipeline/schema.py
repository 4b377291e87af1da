"""The event schema, declared once, and the validation that ETL and ``POST /v1/events`` share.

A row either passes every rule and comes out typed, or is quarantined with the first rule it breaks
as its ``reason`` (a stable phrase, counted in reports) and a ``detail`` naming the value. Rules are
vectorised: validation costs a few numpy passes over the columns however many rows there are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retailrec.events import (
    DAY_MS,
    EVENT_COLUMNS,
    EVENT_NAMES,
    EVENT_TYPES,
    FUTURE_TOLERANCE_MS,
    MINUTE_MS,
    TRANSACTION,
)

ID_COLUMNS = ("visitorid", "itemid")

#: Timestamps are Unix milliseconds between 2000-01-01 and one day after "now".
MIN_TIMESTAMP_MS = 946_684_800_000
FUTURE_SLACK_MS = DAY_MS
#: A value in this range is a plausible Unix time in *seconds*: a common export mistake.
SECONDS_RANGE = (946_684_800, 100_000_000_000)
#: Values from here on are plausible Unix times in micro- or nanoseconds (what a datetime64
#: column becomes as an integer); before it, a millisecond value is past the year 5000.
FINER_FROM = 100_000_000_000_000

EVENT_DTYPES = {
    "timestamp": "int64",
    "visitorid": "int64",
    "event": "str",
    "itemid": "int64",
    "transactionid": "Int64",
}

# Reasons, as they appear in data/rejected/*.csv and in reports.
MISSING = "missing {col}"
NOT_INTEGER = "{col} is not an integer"
NEGATIVE = "negative {col}"
UNKNOWN_EVENT = "unknown event type"
TIMESTAMP_SECONDS = "timestamp in seconds, not milliseconds"
TIMESTAMP_FINER = "timestamp in micro- or nanoseconds, not milliseconds"
TIMESTAMP_RANGE = "timestamp outside the sane range"
TX_MISSING = "transaction without transactionid"
TX_UNEXPECTED = "transactionid on a non-transaction event"
REPEATED_HEADER = "repeated header line"
SCIENTIFIC = "{col} in scientific notation (digits may be lost)"
TIMESTAMP_DATE = "timestamp is a date, not Unix milliseconds"

#: Texts that mean "no value", compared without case: what pandas reads as missing by default,
#: so an R export (``NA``), a database dump (``NULL``) or a pandas one (``nan``) all read as empty.
NA_TEXTS = ("", "na", "n/a", "nan", "null", "none", "<na>", "#n/a")
_PLAIN_INT = r"^[+-]?\d{1,18}$"
#: An integral number written with a zero fraction, as pandas writes an int column with gaps.
_ZERO_FRACTION = r"^\+?(-?\d+)\.0*$"
_SCIENTIFIC = r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"
#: A date, maybe with a time: 2015-06-02, 2015-06-02T05:02:12Z, 02/06/2015 05:02, 2.6.2015.
_DATE = (
    r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"  # the date
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?( ?[AaPp][Mm])?)?"  # a time
    r"(Z|[+-]\d{2}:?\d{2})?$"  # a zone
)


@dataclass
class Parsed:
    """Columns parsed to int64 (0 where null), with masks of what was empty or unparsable."""

    raw: pd.DataFrame
    values: dict[str, np.ndarray]
    empty: dict[str, np.ndarray]
    unparsable: dict[str, np.ndarray]
    event: np.ndarray  # int8 index into EVENT_TYPES, -1 for anything else
    now_ms: int

    def present(self, col: str) -> np.ndarray:
        absent: np.ndarray = self.empty[col] | self.unparsable[col]
        return ~absent


@dataclass(frozen=True)
class Rule:
    """One check: rows where ``bad`` is true are rejected with ``reason``."""

    reason: str
    bad: Callable[[Parsed], np.ndarray]
    detail: Callable[[Parsed, np.ndarray], list[str]]


def _value_detail(col: str) -> Callable[[Parsed, np.ndarray], list[str]]:
    def detail(p: Parsed, rows: np.ndarray) -> list[str]:
        return [f"{col}={v!r}" for v in p.raw[col].to_numpy()[rows]]

    return detail


def _no_detail(_p: Parsed, rows: np.ndarray) -> list[str]:
    return [""] * len(rows)


def _missing(col: str) -> Rule:
    return Rule(MISSING.format(col=col), lambda p: p.empty[col], _no_detail)


def _not_integer(col: str) -> Rule:
    return Rule(NOT_INTEGER.format(col=col), lambda p: p.unparsable[col], _value_detail(col))


def _negative(col: str) -> Rule:
    return Rule(
        NEGATIVE.format(col=col), lambda p: p.present(col) & (p.values[col] < 0), _value_detail(col)
    )


def _matches(pattern: str) -> Callable[[Parsed, str], np.ndarray]:
    """A mask of the rows whose (trimmed) text in a column matches ``pattern``."""

    def mask(p: Parsed, col: str) -> np.ndarray:
        return _mask(pc.fill_null(pc.match_substring_regex(_text(p.raw[col]), pattern), False))

    return mask


_is_scientific = _matches(_SCIENTIFIC)
_is_date = _matches(_DATE)


def _written_as(col: str, reason: str, looks: Callable[[Parsed, str], np.ndarray]) -> Rule:
    """Unparsable values of ``col`` written in a form worth naming (a date, an exponent)."""

    def bad(p: Parsed) -> np.ndarray:
        unparsable = p.unparsable[col]
        return unparsable & looks(p, col) if unparsable.any() else unparsable

    return Rule(reason, bad, _value_detail(col))


def _repeated_header(p: Parsed) -> np.ndarray:
    """Rows that are the header again, as where two CSV files were concatenated."""
    found = p.unparsable["timestamp"].copy()  # a header's "timestamp" never parses
    if not found.any():
        return found
    for col in ("timestamp", "event"):
        found &= _mask(pc.fill_null(pc.equal(pc.utf8_lower(_text(p.raw[col])), col), False))
    return found


#: Checks of a present, integer timestamp against "now" (Unix ms), first failed wins: shared by
#: events and item properties.
TIMESTAMP_CHECKS: tuple[tuple[str, Callable[[np.ndarray, int], np.ndarray]], ...] = (
    (TIMESTAMP_SECONDS, lambda ts, _now: (ts >= SECONDS_RANGE[0]) & (ts < SECONDS_RANGE[1])),
    (TIMESTAMP_FINER, lambda ts, _now: ts >= FINER_FROM),
    (TIMESTAMP_RANGE, lambda ts, now: (ts < MIN_TIMESTAMP_MS) | (ts > now + FUTURE_SLACK_MS)),
)


def _timestamp_rule(reason: str, bad: Callable[[np.ndarray, int], np.ndarray]) -> Rule:
    return Rule(
        reason,
        lambda p: p.present("timestamp") & bad(p.values["timestamp"], p.now_ms),
        _value_detail("timestamp"),
    )


def _rules() -> list[Rule]:
    rules: list[Rule] = [Rule(REPEATED_HEADER, _repeated_header, _no_detail)]
    rules += [_missing(c) for c in ("timestamp", "visitorid", "event", "itemid")]
    rules.append(_written_as("timestamp", TIMESTAMP_DATE, _is_date))
    ints = ("timestamp", "visitorid", "itemid", "transactionid")
    rules += [_written_as(c, SCIENTIFIC.format(col=c), _is_scientific) for c in ints]
    rules += [_not_integer(c) for c in ints]
    rules += [_negative(c) for c in ("visitorid", "itemid", "transactionid")]
    rules += [
        Rule(UNKNOWN_EVENT, lambda p: p.event < 0, _value_detail("event")),
        *(_timestamp_rule(reason, bad) for reason, bad in TIMESTAMP_CHECKS),
        Rule(
            TX_MISSING,
            lambda p: (p.event == TRANSACTION) & p.empty["transactionid"],
            _no_detail,
        ),
        Rule(
            TX_UNEXPECTED,
            lambda p: (p.event != TRANSACTION) & ~p.empty["transactionid"],
            _value_detail("transactionid"),
        ),
    ]
    return rules


RULES: tuple[Rule, ...] = tuple(_rules())


@dataclass
class Validated:
    """The outcome of validating a batch: typed valid rows and quarantined rows."""

    valid: pd.DataFrame  # EVENT_COLUMNS with EVENT_DTYPES; index = position in the batch
    rejected: pd.DataFrame  # original values (str) + reason + detail; index = position


TIMESTAMP_FUTURE = "timestamp in the future (more than {minutes:g} minutes past the server's clock)"
TIMESTAMP_BEFORE_LOG = "timestamp more than {days:g} days before the log's first event"


def live_window(
    checked: Validated, *, wall_ms: int, first_ms: int | None, past_margin_ms: int
) -> Validated:
    """Events that arrive live (``POST /v1/events``) must fit the shop's clock.

    An event dated more than :data:`~retailrec.events.FUTURE_TOLERANCE_MS` past the wall clock
    would move the shop's clock (every "now") into the future; one dated more than
    ``past_margin_ms`` before the log's first event (``first_ms``; no bound for an empty log) is
    a backfill, which belongs in ``retailrec etl``. Both are moved from valid to rejected, with
    their reason.
    """
    ts = checked.valid["timestamp"].to_numpy(np.int64)
    reason = np.full(len(ts), None, dtype=object)
    late = ts > wall_ms + FUTURE_TOLERANCE_MS
    reason[late] = TIMESTAMP_FUTURE.format(minutes=FUTURE_TOLERANCE_MS / MINUTE_MS)
    if first_ms is not None:
        early = ~late & (ts < first_ms - past_margin_ms)
        reason[early] = TIMESTAMP_BEFORE_LOG.format(days=past_margin_ms / DAY_MS)
    out = reason != None  # noqa: E711 (an object array: elementwise)
    if not out.any():
        return checked
    moved = checked.valid[out]
    rejected = moved.astype("str").replace({"<NA>": ""})
    rejected = rejected.assign(
        reason=reason[out], detail=[f"timestamp={t}" for t in moved["timestamp"]]
    )
    return Validated(
        valid=checked.valid[~out],
        rejected=pd.concat([checked.rejected, rejected]).sort_index(),
    )


def _text(col: pd.Series) -> pa.Array:
    """A column as Arrow strings, stripped, with null for empty. JSON values become their text."""
    if col.dtype == object:  # values as sent to the API: ints, strings, None, anything
        col = col.map(
            lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
        )
    arr = pa.array(col, type=pa.large_string(), from_pandas=True)
    return pc.utf8_trim_whitespace(arr)


_NO_TEXT = pa.scalar(None, pa.large_string())


def _mask(values: pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def _blank(text: pa.Array) -> np.ndarray:
    """Where a column's text is empty or null."""
    return _mask(pc.fill_null(pc.equal(text, ""), True))


def _no_value(text: pa.Array) -> np.ndarray:
    """Where a column's text says "no value": empty, null or one of :data:`NA_TEXTS`."""
    na = pc.is_in(pc.utf8_lower(text), value_set=pa.array(NA_TEXTS, type=pa.large_string()))
    return _mask(pc.or_(na, pc.is_null(text)))


def _parse_int(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 values with 0 where null, empty mask, unparsable mask) for a column of any dtype.

    Text is parsed exactly (never through a float): plain integers, and integers written with a
    zero fraction (``12.0``). Anything else, an exponent (``1.4E+12``) included, is unparsable.
    """
    n = len(col)
    if pd.api.types.is_integer_dtype(col.dtype):
        empty = col.isna().to_numpy()
        return col.fillna(0).to_numpy(dtype=np.int64), empty, np.zeros(n, dtype=bool)
    if pd.api.types.is_float_dtype(col.dtype):  # a typed reader gives float64 with NaN for gaps
        num = col.to_numpy(dtype=np.float64, na_value=np.nan)
        empty = np.isnan(num)
        bad = ~empty & ((num != np.floor(num)) | (np.abs(num) > 2**53))
        return np.where(empty | bad, 0, num).astype(np.int64), empty, bad
    text = _text(col)
    empty = _blank(text)
    try:  # the fast path: every value is a plain integer or empty
        ints = pc.cast(pc.if_else(pa.array(empty), _NO_TEXT, text), pa.int64())
        return pc.fill_null(ints, 0).to_numpy(), empty, np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Some value is not: read NA and the like as empty, and keep the values that are plain
    # integers or have a zero fraction.
    empty = _no_value(text)
    whole = pc.replace_substring_regex(text, _ZERO_FRACTION, r"\1")
    whole = pc.replace_substring_regex(whole, r"^\+", "")
    plain = _mask(pc.fill_null(pc.match_substring_regex(whole, _PLAIN_INT), False)) & ~empty
    ints = pc.cast(pc.if_else(pa.array(plain), whole, _NO_TEXT), pa.int64())
    return pc.fill_null(ints, 0).to_numpy(), empty, ~empty & ~plain


def validate_events(raw: pd.DataFrame, now_ms: int | None = None) -> Validated:
    """Validate a batch of events against the schema.

    Args:
        raw: The five required columns, as read (strings) or as sent (numbers, None); other
            columns are ignored.
        now_ms: "Now" for the sane-range check, Unix ms (default: the clock).

    Returns:
        A :class:`Validated` in which every input row is either valid or rejected, never both.
    """
    missing = [c for c in EVENT_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"missing required column(s): {', '.join(missing)}")
    raw = raw[list(EVENT_COLUMNS)].reset_index(drop=True)
    values: dict[str, np.ndarray] = {}
    empty: dict[str, np.ndarray] = {}
    unparsable: dict[str, np.ndarray] = {}
    for col in ("timestamp", "visitorid", "itemid", "transactionid"):
        values[col], empty[col], unparsable[col] = _parse_int(raw[col])
    ev = _text(raw["event"])
    event = pc.fill_null(pc.index_in(ev, value_set=EVENT_NAMES), -1).to_numpy().astype(np.int8)
    empty["event"] = _blank(ev)
    if (event[~empty["event"]] < 0).any():  # match without case (an export's "View"), and NA
        event = pc.fill_null(pc.index_in(pc.utf8_lower(ev), value_set=EVENT_NAMES), -1).to_numpy()
        event = event.astype(np.int8)
        empty["event"] = _no_value(ev)
    parsed = Parsed(
        raw, values, empty, unparsable, event, int(time.time() * 1000) if now_ms is None else now_ms
    )

    n = len(raw)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, "", dtype=object)
    pending = np.ones(n, dtype=bool)
    for rule in RULES:
        hit = pending & np.asarray(rule.bad(parsed), dtype=bool)
        if hit.any():
            rows = np.flatnonzero(hit)
            reason[rows] = rule.reason
            detail[rows] = rule.detail(parsed, rows)
            pending &= ~hit

    ok = np.flatnonzero(pending)
    valid = pd.DataFrame(
        {
            "timestamp": values["timestamp"][ok],
            "visitorid": values["visitorid"][ok],
            "event": pd.Categorical.from_codes(event[ok], categories=list(EVENT_TYPES)),
            "itemid": values["itemid"][ok],
            "transactionid": pd.arrays.IntegerArray(
                values["transactionid"][ok], empty["transactionid"][ok].copy()
            ),
        },
        index=ok,
    )
    bad = np.flatnonzero(~pending)
    rejected = raw.iloc[bad].astype("str").fillna("").replace({"<NA>": "", "nan": "", "None": ""})
    rejected = rejected.assign(reason=reason[bad], detail=detail[bad])
    return Validated(valid=valid, rejected=rejected)


def empty_rejected() -> pd.DataFrame:
    return pd.DataFrame(columns=[*EVENT_COLUMNS, "reason", "detail"], dtype="str")


@dataclass
class IdCheck:
    """Integer id columns of a batch of other records (categories, item properties), checked."""

    values: dict[str, np.ndarray]  # int64, 0 where empty or rejected
    empty: dict[str, np.ndarray]
    reason: np.ndarray  # the first rule a row breaks, None where it is valid
    detail: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return unset(self.reason)


def unset(reason: np.ndarray) -> np.ndarray:
    """Where an object array of reasons holds None: the rows that broke no rule."""
    return np.asarray(pd.isna(reason), dtype=bool)


def check_ids(
    raw: pd.DataFrame,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    *,
    timestamp: str | None = None,
    now_ms: int | None = None,
) -> IdCheck:
    """Check non-negative integer columns the way events' ids are checked.

    ``required`` columns must be present; ``optional`` ones may be empty. Rules, first broken wins:
    missing, not an integer, negative, then (for the column named by ``timestamp``, one of
    ``required``) :data:`TIMESTAMP_CHECKS` against ``now_ms`` (default: the clock).
    """
    n = len(raw)
    values: dict[str, np.ndarray] = {}
    empty: dict[str, np.ndarray] = {}
    bad_parse: dict[str, np.ndarray] = {}
    for col in (*required, *optional):
        values[col], empty[col], bad_parse[col] = _parse_int(raw[col])
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, "", dtype=object)
    checks: list[tuple[str, np.ndarray, str | None]]
    checks = [(MISSING.format(col=c), empty[c], None) for c in required]
    checks += [(NOT_INTEGER.format(col=c), bad_parse[c], c) for c in (*required, *optional)]
    checks += [
        (NEGATIVE.format(col=c), ~empty[c] & ~bad_parse[c] & (values[c] < 0), c)
        for c in (*required, *optional)
    ]
    if timestamp is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        checks += [(text, bad(values[timestamp], now), timestamp) for text, bad in TIMESTAMP_CHECKS]
    for text, bad, name in checks:
        hit = unset(reason) & bad
        if hit.any():
            rows = np.flatnonzero(hit)
            reason[rows] = text
            if name is not None:
                detail[rows] = [f"{name}={v!r}" for v in raw[name].to_numpy()[rows]]
    for col in values:
        values[col] = np.where(unset(reason), values[col], 0)
    return IdCheck(values, empty, reason, detail)
