"""Online metrics on a served log made by hand, where every figure can be worked out on paper."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from retailrec.events import HOUR_MS
from retailrec.monitoring.online import click_through, online_metrics

T = 1_700_000_000_000


def _served(rows: list[tuple[str, int, str, int | None, str, list[int], float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "recommendation_id": rid,
                "served_ms": at,
                "endpoint": endpoint,
                "visitorid": visitor,
                "strategy": strategy,
                "model_version": "3",
                "items": json.dumps(items),
                "latency_ms": latency,
            }
            for rid, at, endpoint, visitor, strategy, items, latency in rows
        ]
    )


SERVED = _served(
    [
        # followed: visitor 1 views item 11 an hour later
        ("a", T, "user", 1, "personalized", [10, 11, 12], 2.0),
        # not followed: visitor 2's event is on an item that was not recommended
        ("b", T, "user", 2, "personalized", [10, 13], 4.0),
        # not followed in time: visitor 3 buys item 14 25 hours later (window: 24 h)
        ("c", T, "user", 3, "session", [14, 15], 6.0),
        # not followed: the event came before the recommendation
        ("d", T + 10 * HOUR_MS, "user", 1, "popular", [16], 8.0),
        # followed twice (two events on recommended items): counts once
        ("e", T, "user", 4, "personalized", [17, 18], 10.0),
        # no visitor: not attributable
        ("f", T, "similar", None, "similar", [10, 19], 100.0),
    ]
)
EVENTS = pd.DataFrame(
    {
        "visitorid": [1, 2, 3, 1, 4, 4],
        "itemid": [11, 99, 14, 16, 17, 18],
        "timestamp": [T + HOUR_MS, T + HOUR_MS, T + 25 * HOUR_MS, T + 9 * HOUR_MS, T + 1, T + 2],
    }
)


def test_click_through_is_attributed_by_visitor_item_and_time() -> None:
    ctr = click_through(SERVED, EVENTS, attribution_ms=24 * HOUR_MS)
    assert ctr["served_to_known_visitors"] == 5
    assert ctr["not_attributable"] == 1
    assert ctr["followed"] == 2  # a and e
    assert ctr["rate"] == pytest.approx(2 / 5)
    assert ctr["by_strategy"]["personalized"] == {"served": 3, "followed": 2, "rate": 2 / 3}
    assert ctr["by_strategy"]["session"]["followed"] == 0
    # A longer window catches visitor 3's purchase.
    assert click_through(SERVED, EVENTS, attribution_ms=26 * HOUR_MS)["followed"] == 3


def test_every_online_metric_on_a_hand_made_log() -> None:
    popularity = pd.Series(
        {10: 100, 11: 50, 12: 10, 13: 5, 14: 5, 15: 1, 16: 1, 17: 1, 18: 1, 19: 1}
    )
    m = online_metrics(SERVED, EVENTS, popularity, attribution_ms=24 * HOUR_MS)
    assert m["requests"] == 6
    assert m["by_endpoint"] == {"user": 5, "similar": 1}
    assert m["by_strategy"] == {"personalized": 3, "session": 1, "popular": 1, "similar": 1}
    assert m["click_through"]["rate"] == pytest.approx(0.4)
    assert m["fallback_rate"] == pytest.approx(
        2 / 5
    )  # c (session) and d (popular) of 5 user answers
    assert m["coverage"] == {"distinct_items": 10, "catalogue_items": 10, "rate": 1.0}
    # Item 10 is served three times, the most popular of 10 items (percentile 1.0).
    pct = popularity.rank(pct=True)
    slots = [10, 11, 12, 10, 13, 14, 15, 16, 17, 18, 10, 19]
    assert m["served_popularity"]["mean_percentile"] == pytest.approx(pct[slots].mean())
    assert m["served_popularity"]["mean_events"] == pytest.approx(popularity[slots].mean())
    latency = m["latency"]
    assert latency["user"]["count"] == 5
    assert latency["user"]["p50_ms"] == pytest.approx(6.0)
    assert latency["all"]["max_ms"] == pytest.approx(100.0)
    assert latency["similar"]["p99_ms"] == pytest.approx(100.0)


def test_nothing_served_is_reported_as_such() -> None:
    assert online_metrics(SERVED.iloc[:0], EVENTS, pd.Series(dtype="int64")) == {"requests": 0}
