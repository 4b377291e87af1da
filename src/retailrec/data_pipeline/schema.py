"""The event schema, declared once, and the validation that ETL and ``POST /v1/events`` share.

A row either passes every rule and comes out typed, or is quarantined with the first rule it breaks
as its ``reason`` (a stable phrase, counted in reports) and a ``detail`` naming the value. Rules are
vectorised: validation costs a few numpy passes over the columns however many rows there are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retailrec.data_pipeline import rules as r
from retailrec.data_pipeline.rules import (  # re-exported: the reasons, where callers read them
    INT64_MAX_TEXT,
    MISSING,
    NA_TEXTS,
    NEGATIVE,
    NOT_INTEGER,
    PLAIN_INT,
    PLAIN_INT_CHARS,
    ZERO_FRACTION,
)
from retailrec.events import (
    DAY_MS,
    EVENT_COLUMNS,
    EVENT_NAMES,
    EVENT_TYPES,
    FUTURE_TOLERANCE_MS,
    MINUTE_MS,
)

ID_COLUMNS = ("visitorid", "itemid")

EVENT_DTYPES = {
    "timestamp": "int64",
    "visitorid": "int64",
    "event": "str",
    "itemid": "int64",
    "transactionid": "Int64",
}


@dataclass
class Parsed:
    """Columns parsed to int64 (0 where null; for ``event``, the index in ``EVENT_TYPES``, -1
    for anything else), with masks of what was empty or unparsable: what the declared rules
    (:mod:`.rules`) are evaluated over."""

    raw: pd.DataFrame
    values: dict[str, np.ndarray]
    empty: dict[str, np.ndarray]
    unparsable: dict[str, np.ndarray]
    now_ms: int
    _texts: dict[str, pa.Array] = field(default_factory=dict)

    def text(self, col: str) -> pa.Array:
        """The column's trimmed text (computed once)."""
        if col not in self._texts:
            self._texts[col] = _text(self.raw[col])
        return self._texts[col]


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


def _parse_int(
    col: pd.Series, texts: pa.Array | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 values with 0 where null, empty mask, unparsable mask) for a column of any dtype.

    Text is parsed exactly (never through a float): plain integers, and integers written with a
    zero fraction (``12.0``). Anything else, an exponent (``1.4E+12``) included, is unparsable.
    ``texts``: the column's trimmed text, where the caller has it already.
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
    text = _text(col) if texts is None else texts
    empty = _blank(text)
    longest = pc.max(pc.utf8_length(text)).as_py()
    if longest is None or longest <= PLAIN_INT_CHARS:
        try:  # the fast path: every value is a short plain integer or empty
            ints = pc.cast(pc.if_else(pa.array(empty), _NO_TEXT, text), pa.int64())
            return pc.fill_null(ints, 0).to_numpy(), empty, np.zeros(n, dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    # Some value is not: read NA and the like as empty, and keep the values that are plain
    # integers or have a zero fraction (the rules' declared parse, which Spark's engine renders).
    empty = _no_value(text)
    whole = pc.replace_substring_regex(text, ZERO_FRACTION, r"\1")
    whole = pc.replace_substring_regex(whole, r"^[+]", "")
    plain = _mask(pc.fill_null(pc.match_substring_regex(whole, PLAIN_INT), False)) & ~empty
    digits = pc.replace_substring_regex(whole, r"^[+-]", "")
    too_big = pc.and_(pc.equal(pc.utf8_length(digits), 19), pc.greater(digits, INT64_MAX_TEXT))
    plain &= ~_mask(pc.fill_null(too_big, False))
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
    parsed = Parsed(raw, {}, {}, {}, int(time.time() * 1000) if now_ms is None else now_ms)
    values, empty, unparsable = parsed.values, parsed.empty, parsed.unparsable
    for col in r.INT_COLUMNS:
        texts = parsed.text(col) if raw[col].dtype.kind not in "iuf" else None
        values[col], empty[col], unparsable[col] = _parse_int(raw[col], texts)
    ev = parsed.text("event")
    event = pc.fill_null(pc.index_in(ev, value_set=EVENT_NAMES), -1).to_numpy()
    empty["event"] = _blank(ev)
    if (event[~empty["event"]] < 0).any():
        # Some name is not one as written: match without case (an export's "View"), and read
        # "NA" and the like as empty (rules.NA_TEXTS). Where every name matched, that changes
        # nothing: the fast path gives the declared parse.
        event = pc.fill_null(pc.index_in(pc.utf8_lower(ev), value_set=EVENT_NAMES), -1).to_numpy()
        empty["event"] = _no_value(ev)
    values["event"] = event.astype(np.int8)
    unparsable["event"] = np.zeros(len(raw), dtype=bool)

    n = len(raw)
    reason = np.full(n, None, dtype=object)
    detail = np.full(n, "", dtype=object)
    pending = np.ones(n, dtype=bool)
    for rule in r.EVENT_RULES:
        hit = pending & np.asarray(r.mask(rule.when, parsed), dtype=bool)
        if hit.any():
            rows = np.flatnonzero(hit)
            reason[rows] = rule.reason
            if rule.detail is not None:
                values_shown = raw[rule.detail].to_numpy()[rows]
                detail[rows] = [r.detail_text(rule.detail, v) for v in values_shown]
            pending &= ~hit

    ok = np.flatnonzero(pending)
    valid = pd.DataFrame(
        {
            "timestamp": values["timestamp"][ok],
            "visitorid": values["visitorid"][ok],
            "event": pd.Categorical.from_codes(values["event"][ok], categories=list(EVENT_TYPES)),
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
    ``required``) :data:`.rules.TIMESTAMP_RULES` against ``now_ms`` (default: the clock).
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
        parsed = Parsed(
            raw,
            {"timestamp": values[timestamp]},
            {"timestamp": empty[timestamp]},
            {"timestamp": bad_parse[timestamp]},
            now,
        )
        checks += [
            (rule.reason, np.asarray(r.mask(rule.when, parsed), dtype=bool), timestamp)
            for rule in r.TIMESTAMP_RULES
        ]
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
