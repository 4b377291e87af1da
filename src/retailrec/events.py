"""The ground floor: the shop's vocabulary, its clock and the one confidence function.

Everything that reads events (the store, the ETL, features, models, training, serving,
monitoring and the dashboard) takes these from here, and this module imports nothing of ours, so
a rule about events is written once and every layer applies the same one.

**The shop's clock.** "Now" is the time of the newest accepted event in the shop's log, never the
wall clock: logs are often years old (Retailrocket's is from 2015), and a history weighed against
the wall clock would decay to nothing. For a live shop the newest event is about now anyway. The
feature store keeps that time (see ``feature_store.store.shop_clock``); recency decay in serving,
the training split, popularity over ``days`` and the drift windows all read it. The wall clock
only bounds how far in the future an incoming event may be dated (:data:`FUTURE_TOLERANCE_MS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: The event types, in code order: an event's code is its position here.
EVENT_TYPES = ("view", "addtocart", "transaction")
VIEW, ADDTOCART, TRANSACTION = range(len(EVENT_TYPES))
#: The event types as an Arrow array: a code is a position in it.
EVENT_NAMES = pa.array(EVENT_TYPES, type=pa.large_string())
#: The largest visitor, item or category id: ids are SQLite integers (signed 64-bit).
MAX_ID = 2**63 - 1
#: Every column of an event, in the log's order.
EVENT_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")

#: Time units: timestamps are Unix milliseconds.
SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: Confidence added by one event of each type: the funnel says a purchase means more than a view.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"view": 1.0, "addtocart": 4.0, "transaction": 8.0}
)
#: An event this many days older than "now" counts half as much.
DEFAULT_HALF_LIFE_DAYS = 30.0

#: How far past the wall clock an incoming event may be dated (clocks of the shop and of the API
#: drift apart by seconds, not days): a later one would move the shop's clock into the future.
FUTURE_TOLERANCE_MS = 5 * MINUTE_MS


def event_codes(event: pd.Series) -> np.ndarray:
    """Each event's position in ``EVENT_TYPES`` (int8, -1 for anything else), found in Arrow or
    the categorical's codes, never through one Python string per row."""
    if isinstance(event.dtype, pd.CategoricalDtype):
        names = [str(c) for c in event.cat.categories]
        remap = [EVENT_TYPES.index(c) if c in EVENT_TYPES else -1 for c in names]
        codes: np.ndarray = np.array([*remap, -1], dtype=np.int8)[event.cat.codes.to_numpy()]
        return codes
    found = pc.index_in(pa.array(event.astype("str")), value_set=EVENT_NAMES)
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int8)


def code_weights(event_weights: Mapping[str, float]) -> np.ndarray:
    """(len(EVENT_TYPES) + 1,) float64 weight per event code, then 0 for code -1 (not an event
    type), so that ``code_weights(w)[codes]`` weighs any array of codes."""
    return np.array([*(float(event_weights.get(name, 0.0)) for name in EVENT_TYPES), 0.0])


def confidence(
    codes: np.ndarray,
    timestamps: np.ndarray,
    now_ms: int | np.ndarray,
    weights: np.ndarray,
    half_life_days: float,
) -> np.ndarray:
    """The implicit-feedback confidence of each event as of ``now_ms``.

    ``weight(event) * 0.5 ** (age_days / half_life_days)``; an event dated after ``now_ms`` counts
    as if it happened now (it never weighs more than a fresh one). Training, evaluation, every
    model that weighs a history and serving all call this one function.

    Args:
        codes: Event codes (positions in :data:`EVENT_TYPES`, -1 for none), any shape.
        timestamps: Unix ms, the same shape.
        now_ms: The shop's clock, a scalar or an array that broadcasts against ``timestamps``.
        weights: :func:`code_weights` of the configured event weights.
        half_life_days: The configured recency half-life.

    Returns:
        float64 confidences, the broadcast shape.
    """
    age_ms = np.maximum(np.asarray(now_ms, dtype=np.int64) - timestamps, 0)
    out: np.ndarray = weights[codes] * decay(age_ms, half_life_days)
    return out


def decay(age_ms: int | np.ndarray, half_life_days: float) -> np.ndarray:
    """What an event ``age_ms`` old still weighs: ``0.5 ** (age_days / half_life_days)``.

    Ages add, so weights multiply: at a clock ``d`` ms later every event of a history weighs
    ``decay(d)`` times what it did. Serving keeps an active visitor's confidences as of their
    newest event and brings them to the shop's clock with that one factor (the same values to
    float rounding, a test checks)."""
    out: np.ndarray = np.power(0.5, np.asarray(age_ms) / DAY_MS / half_life_days)
    return out


def utc_text(ms: int) -> str:
    """A timestamp (Unix ms) as people read it: ``2015-09-18 03:00 UTC``."""
    return datetime.fromtimestamp(ms / SECOND_MS, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
