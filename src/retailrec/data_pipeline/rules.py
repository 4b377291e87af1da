"""The event rules, declared once as data, and rendered for each engine.

A rule is a reason (a stable phrase, counted in reports) and a condition on a row's parsed
columns, built from the few nodes below; the first rule a row breaks is its reason. The same
declarations are rendered twice:

* :func:`mask` evaluates a condition as numpy arrays over a :class:`~.schema.Parsed` batch: the
  embedded engine (``retailrec etl``) and ``POST /v1/events``;
* :func:`sql` writes it as a Spark SQL expression over the columns that :func:`parsed_sql`
  declares (``retailrec etl --engine spark``).

Parsing is declared here too (the trimmed text, the texts that mean "no value", the integer and
zero-fraction patterns), so that both engines read a value the same way. The equivalence tests
(``tests/data_pipeline/test_spark_etl.py``) run both on the same files.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import pyarrow.compute as pc

from retailrec.events import DAY_MS, EVENT_TYPES, TRANSACTION

if TYPE_CHECKING:
    from retailrec.data_pipeline.schema import Parsed

#: Timestamps are Unix milliseconds between 2000-01-01 and one day after "now".
MIN_TIMESTAMP_MS = 946_684_800_000
FUTURE_SLACK_MS = DAY_MS
#: A value in this range is a plausible Unix time in *seconds*: a common export mistake.
SECONDS_RANGE = (946_684_800, 100_000_000_000)
#: Values from here on are plausible Unix times in micro- or nanoseconds (what a datetime64
#: column becomes as an integer); before it, a millisecond value is past the year 5000.
FINER_FROM = 100_000_000_000_000

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
#: An integer: at most 19 digits, of which those with 19 must not pass :data:`INT64_MAX_TEXT`
#: (compared as text: same length, same order), so that every one fits int64.
PLAIN_INT = r"^[+-]?\d{1,19}$"
INT64_MAX_TEXT = str(2**63 - 1)
#: Texts this short are parsed by a plain cast where every value is an integer or empty.
PLAIN_INT_CHARS = 18
#: An integral number written with a zero fraction, as pandas writes an int column with gaps;
#: group 1 is the integer.
ZERO_FRACTION = r"^\+?(-?\d+)\.0*$"
SCIENTIFIC_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"
#: A date, maybe with a time: 2015-06-02, 2015-06-02T05:02:12Z, 02/06/2015 05:02, 2.6.2015.
DATE_TEXT = (
    r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"  # the date
    r"([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?( ?[AaPp][Mm])?)?"  # a time
    r"(Z|[+-]\d{2}:?\d{2})?$"  # a zone
)
#: The integer columns of an event, and the one text column (read without case).
INT_COLUMNS = ("timestamp", "visitorid", "itemid", "transactionid")
EVENT = "event"


# --------------------------------------------------------------------------------------------
# The nodes


@dataclass(frozen=True)
class Empty:
    """The column holds no value: empty, blank or one of :data:`NA_TEXTS`."""

    col: str


@dataclass(frozen=True)
class Unparsable:
    """The column holds a value that is not an integer."""

    col: str


@dataclass(frozen=True)
class Value:
    """The column's integer (0 where there is none); for ``event``, its index in
    :data:`~retailrec.events.EVENT_TYPES` (-1 for anything else)."""

    col: str


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Now:
    """The validation's "now" (Unix ms), plus ``plus_ms``."""

    plus_ms: int = 0


@dataclass(frozen=True)
class Compare:
    op: str  # one of COMPARISONS
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Matches:
    """The column's trimmed text matches a regular expression (RE2 and Java alike)."""

    col: str
    pattern: str


@dataclass(frozen=True)
class TextIs:
    """The column's trimmed text is ``text`` (lower case), compared without case."""

    col: str
    text: str


@dataclass(frozen=True)
class All:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    part: Expr


Expr = Union[Empty, Unparsable, Value, Const, Now, Compare, Matches, TextIs, All, AnyOf, Not]  # noqa: UP007 (a runtime alias)

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


def present(col: str) -> Expr:
    return Not(AnyOf((Empty(col), Unparsable(col))))


@dataclass(frozen=True)
class Rule:
    """Rows where ``when`` holds are rejected with ``reason``; ``detail`` names the column whose
    value the quarantine shows (``col='value'``), or None."""

    reason: str
    when: Expr
    detail: str | None = None


#: Checks of a present, integer timestamp against "now", first failed wins: shared by events
#: and item properties.
TIMESTAMP_RULES = (
    Rule(
        TIMESTAMP_SECONDS,
        All(
            (
                present("timestamp"),
                Compare(">=", Value("timestamp"), Const(SECONDS_RANGE[0])),
                Compare("<", Value("timestamp"), Const(SECONDS_RANGE[1])),
            )
        ),
        "timestamp",
    ),
    Rule(
        TIMESTAMP_FINER,
        All((present("timestamp"), Compare(">=", Value("timestamp"), Const(FINER_FROM)))),
        "timestamp",
    ),
    Rule(
        TIMESTAMP_RANGE,
        All(
            (
                present("timestamp"),
                AnyOf(
                    (
                        Compare("<", Value("timestamp"), Const(MIN_TIMESTAMP_MS)),
                        Compare(">", Value("timestamp"), Now(FUTURE_SLACK_MS)),
                    )
                ),
            )
        ),
        "timestamp",
    ),
)


def _event_rules() -> tuple[Rule, ...]:
    is_transaction = Compare("=", Value(EVENT), Const(TRANSACTION))
    rules = [
        # The header again, as where two CSV files were concatenated (its "timestamp" never
        # parses, which keeps the text comparisons off the common path).
        Rule(
            REPEATED_HEADER,
            All((Unparsable("timestamp"), TextIs("timestamp", "timestamp"), TextIs(EVENT, EVENT))),
        ),
        *(
            Rule(MISSING.format(col=c), Empty(c))
            for c in ("timestamp", "visitorid", EVENT, "itemid")
        ),
        Rule(
            TIMESTAMP_DATE,
            All((Unparsable("timestamp"), Matches("timestamp", DATE_TEXT))),
            "timestamp",
        ),
        *(
            Rule(SCIENTIFIC.format(col=c), All((Unparsable(c), Matches(c, SCIENTIFIC_TEXT))), c)
            for c in INT_COLUMNS
        ),
        *(Rule(NOT_INTEGER.format(col=c), Unparsable(c), c) for c in INT_COLUMNS),
        *(
            Rule(NEGATIVE.format(col=c), All((present(c), Compare("<", Value(c), Const(0)))), c)
            for c in ("visitorid", "itemid", "transactionid")
        ),
        Rule(UNKNOWN_EVENT, Compare("<", Value(EVENT), Const(0)), EVENT),
        *TIMESTAMP_RULES,
        Rule(TX_MISSING, All((is_transaction, Empty("transactionid")))),
        Rule(
            TX_UNEXPECTED,
            All((Not(is_transaction), Not(Empty("transactionid")))),
            "transactionid",
        ),
    ]
    return tuple(rules)


#: Every rule an event must pass, in order: a row's reason is the first it breaks.
EVENT_RULES = _event_rules()
#: The column a reason's detail shows, by reason (None: no detail).
DETAIL_COLUMN = {rule.reason: rule.detail for rule in EVENT_RULES}


def detail_text(col: str | None, value: Any) -> str:
    """A quarantined row's detail: the offending column's value as read (both engines)."""
    return "" if col is None else f"{col}={value!r}"


# --------------------------------------------------------------------------------------------
# numpy, over a parsed batch


def mask(expr: Expr, p: Parsed) -> Any:
    """``expr`` over a parsed batch: a boolean (or, for values, int64) array, or a scalar.
    ``All`` stops at the first part that holds nowhere, so a costly text match is skipped
    where nothing could match it."""
    match expr:
        case Empty(col):
            return p.empty[col]
        case Unparsable(col):
            return p.unparsable[col]
        case Value(col):
            return p.values[col]
        case Const(value):
            return value
        case Now(plus_ms):
            return p.now_ms + plus_ms
        case Compare(op, left, right):
            return COMPARISONS[op](mask(left, p), mask(right, p))
        case Matches(col, pattern):
            return _bools(pc.match_substring_regex(p.text(col), pattern))
        case TextIs(col, text):
            return _bools(pc.equal(pc.utf8_lower(p.text(col)), text))
        case All(parts):
            out = np.asarray(mask(parts[0], p), dtype=bool)
            for part in parts[1:]:
                if not out.any():
                    break
                out = out & mask(part, p)
            return out
        case AnyOf(parts):
            out = np.asarray(mask(parts[0], p), dtype=bool)
            for part in parts[1:]:
                out = out | mask(part, p)
            return out
        case Not(part):
            return ~np.asarray(mask(part, p), dtype=bool)
    raise TypeError(f"not a rule expression: {expr!r}")


def _bools(values: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


# --------------------------------------------------------------------------------------------
# Spark SQL, over the columns parsed_sql declares


def literal(text: str) -> str:
    """A Spark SQL string literal (backslashes and quotes escaped)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _name(col: str, part: str) -> str:
    return f"`{col}__{part}`"


def sql(expr: Expr, now_ms: int) -> str:
    """``expr`` as a Spark SQL expression over the columns of :func:`parsed_sql`."""
    match expr:
        case Empty(col):
            return _name(col, "empty")
        case Unparsable(col):
            return _name(col, "unparsable")
        case Value(col):
            return _name(col, "value")
        case Const(value):
            return f"CAST({value} AS BIGINT)"
        case Now(plus_ms):
            return f"CAST({now_ms + plus_ms} AS BIGINT)"
        case Compare(op, left, right):
            return f"({sql(left, now_ms)} {op} {sql(right, now_ms)})"
        case Matches(col, pattern):
            return f"coalesce({_name(col, 'text')} RLIKE {literal(pattern)}, false)"
        case TextIs(col, text):
            return f"coalesce(lower({_name(col, 'text')}) = {literal(text)}, false)"
        case All(parts):
            return "(" + " AND ".join(sql(x, now_ms) for x in parts) + ")"
        case AnyOf(parts):
            return "(" + " OR ".join(sql(x, now_ms) for x in parts) + ")"
        case Not(part):
            return f"(NOT {sql(part, now_ms)})"
    raise TypeError(f"not a rule expression: {expr!r}")


def reason_sql(rules: tuple[Rule, ...], now_ms: int) -> str:
    """The first rule a row breaks, as a CASE expression (NULL for a valid row)."""
    cases = " ".join(f"WHEN {sql(r.when, now_ms)} THEN {literal(r.reason)}" for r in rules)
    return f"CASE {cases} END"


#: Unicode whitespace at either end, as Arrow's ``utf8_trim_whitespace`` trims it.
_TRIM = r"(?U)^\s+|\s+$"


def parsed_sql(raw: str, col: str) -> dict[str, str]:
    """The columns a raw text column parses to, as Spark SQL over the column ``raw``:
    ``{col}__text`` (trimmed, NULL for empty), ``__empty``, and for an integer column
    ``__value`` and ``__unparsable``, for ``event`` its ``__value`` (the event's index).
    Each expression may use the ones before it (select them in order)."""
    text = _name(col, "text")
    out = {
        f"{col}__text": f"nullif(regexp_replace(`{raw}`, {literal(_TRIM)}, ''), '')",
        f"{col}__empty": (
            f"({text} IS NULL OR lower({text}) IN ({', '.join(literal(t) for t in NA_TEXTS)}))"
        ),
    }
    if col == EVENT:
        cases = " ".join(
            f"WHEN {literal(name)} THEN {code}" for code, name in enumerate(EVENT_TYPES)
        )
        out[f"{col}__value"] = f"CASE lower({text}) {cases} ELSE -1 END"
        out[f"{col}__unparsable"] = "false"
        return out
    whole = (
        f"regexp_replace(regexp_replace({text}, {literal(ZERO_FRACTION)}, '$1'),"
        f" {literal('^[+]')}, '')"
    )
    out[f"{col}__whole"] = whole
    digits = f"regexp_replace({_name(col, 'whole')}, {literal('^[+-]')}, '')"
    too_big = f"(length({digits}) = 19 AND {digits} > {literal(INT64_MAX_TEXT)})"
    plain = (
        f"(NOT {_name(col, 'empty')} AND coalesce({_name(col, 'whole')} RLIKE"
        f" {literal(PLAIN_INT)} AND NOT {too_big}, false))"
    )
    out[f"{col}__plain"] = plain
    out[f"{col}__value"] = (
        f"CASE WHEN {_name(col, 'plain')} THEN CAST({_name(col, 'whole')} AS BIGINT) ELSE 0 END"
    )
    out[f"{col}__unparsable"] = f"(NOT {_name(col, 'empty')} AND NOT {_name(col, 'plain')})"
    return out
