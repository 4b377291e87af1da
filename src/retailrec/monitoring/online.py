"""Online quality from what the API served (``served_recommendations``) and what visitors did next.

* **Click-through proxy**: the share of served recommendations *for a known visitor* that the
  visitor followed with an event (any type) on one of the recommended items within
  ``attribution_ms`` after serving. Events carry no recommendation id, so attribution is by
  visitor, item and time; a recommendation counts once however many of its items were touched.
  Answers without a visitor (similar items, sessions, popular) cannot be attributed and are left
  out of the rate's denominator, which the report states.
* **Fallback rate**: among personalised requests (``endpoint == "user"``), the share not served by
  the champion's personal strategy.
* **Coverage**: distinct items served / items in the catalogue.
* **Popularity of what was served**: the mean popularity percentile of served item slots
  (1.0 = the most popular item; popularity = events per item in the event log), next to the
  catalogue's own 0.5: recommending only blockbusters shows as a value near 1.
* **Latency**: percentiles of the time the API spent, overall and per endpoint.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from retailrec.events import HOUR_MS


def _latency(values: pd.Series) -> dict[str, float]:
    a = values.to_numpy(float)
    return {
        "count": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


def _exploded(served: pd.DataFrame) -> pd.DataFrame:
    """One row per served item slot: recommendation_id, visitorid, served_ms, itemid."""
    items = served["items"].map(lambda s: json.loads(s) if isinstance(s, str) else list(s))
    out = served[["recommendation_id", "visitorid", "served_ms", "strategy"]].assign(itemid=items)
    out = out.explode("itemid").dropna(subset=["itemid"])
    return out.astype({"itemid": "int64"})


def click_through(
    served: pd.DataFrame, events: pd.DataFrame, attribution_ms: int = 24 * HOUR_MS
) -> dict[str, Any]:
    """The click-through proxy, overall and per strategy (see the module docstring)."""
    known = served[served["visitorid"].notna()]
    slots = _exploded(known).astype({"visitorid": "int64"})
    hits = slots.merge(events[["visitorid", "itemid", "timestamp"]], on=["visitorid", "itemid"])
    delay = hits["timestamp"] - hits["served_ms"]
    followed = set(hits.loc[(delay >= 0) & (delay < attribution_ms), "recommendation_id"])
    per_strategy = {}
    for strategy, group in known.groupby("strategy"):
        n = int(group["recommendation_id"].isin(followed).sum())
        per_strategy[str(strategy)] = {"served": len(group), "followed": n, "rate": n / len(group)}
    return {
        "attribution_hours": attribution_ms / HOUR_MS,
        "served_to_known_visitors": len(known),
        "not_attributable": len(served) - len(known),
        "followed": len(followed),
        "rate": len(followed) / len(known) if len(known) else None,
        "by_strategy": per_strategy,
    }


def online_metrics(
    served: pd.DataFrame,
    events: pd.DataFrame,
    item_popularity: pd.Series,
    attribution_ms: int = 24 * HOUR_MS,
) -> dict[str, Any]:
    """Every online metric over the ``served`` log.

    Args:
        served: rows of ``served_recommendations`` (``items`` as a JSON list).
        events: events that may follow them (``visitorid``, ``itemid``, ``timestamp``).
        item_popularity: events per item over the catalogue (items with none may be absent);
            its length is the catalogue size for coverage.
        attribution_ms: how long after serving an event still counts as following it.
    """
    if served.empty:
        return {"requests": 0}
    slots = _exploded(served)
    user = served[served["endpoint"] == "user"]
    pct = item_popularity.rank(pct=True, method="average")
    slot_pct = pct.reindex(slots["itemid"]).fillna(0.0)
    n_catalogue = len(item_popularity)
    return {
        "requests": len(served),
        "from_ms": int(served["served_ms"].min()),
        "to_ms": int(served["served_ms"].max()),
        "by_endpoint": {str(k): int(v) for k, v in served["endpoint"].value_counts().items()},
        "by_strategy": {str(k): int(v) for k, v in served["strategy"].value_counts().items()},
        "by_model_version": {
            str(k): int(v) for k, v in served["model_version"].value_counts().items()
        },
        "click_through": click_through(served, events, attribution_ms),
        "fallback_rate": (
            float((user["strategy"] != "personalized").mean()) if len(user) else None
        ),
        "coverage": {
            "distinct_items": int(slots["itemid"].nunique()),
            "catalogue_items": n_catalogue,
            "rate": slots["itemid"].nunique() / n_catalogue if n_catalogue else None,
        },
        "served_popularity": {
            "mean_percentile": float(slot_pct.mean()) if len(slot_pct) else None,
            "mean_events": float(item_popularity.reindex(slots["itemid"]).fillna(0).mean())
            if len(slots)
            else None,
        },
        "latency": {
            "all": _latency(served["latency_ms"]),
            **{str(k): _latency(g["latency_ms"]) for k, g in served.groupby("endpoint")},
        },
    }
