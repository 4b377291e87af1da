"""What the dashboard shows, read through the package's own functions (no SQL, no Streamlit here).

Every loader takes the settings and returns plain frames or dicts, so the pages stay thin and the
loaders can be cached (``st.cache_data``) and tested on their own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retailrec import reports
from retailrec.client import ApiClient
from retailrec.config import Settings
from retailrec.data_pipeline.feature_pipeline import item_categories
from retailrec.errors import UsageError
from retailrec.events import EVENT_TYPES, MAX_ID
from retailrec.feature_store import store


@dataclass
class DataOverview:
    daily: pd.DataFrame  # day (datetime), view, addtocart, transaction
    funnel: dict[str, int]  # visitors with any event / a view / a cart / a purchase
    item_popularity: pd.Series  # events per item, most popular first
    visitor_activity: pd.Series  # visitors per number of events
    top_categories: pd.DataFrame  # categoryid, events, share
    etl_report: dict[str, Any] | None
    n_events: int


def missing_store(settings: Settings) -> str | None:
    """Where the feature store should be, when there is none there yet; else None."""
    return None if store.exists(settings.feature_store) else store.describe(settings.feature_store)


def data_overview(settings: Settings, top: int = 15) -> DataOverview:
    """Everything the Data page shows. The aggregations are independent scans of the event log, so
    they run side by side, each on its own connection (the database works outside the GIL)."""
    target = settings.feature_store

    def run(query: Callable[[store.Connection], Any]) -> Any:
        with store.open_store(target) as conn:
            return query(conn)

    queries: dict[str, Callable[[store.Connection], Any]] = {
        "daily": store.daily_event_counts,
        "funnel": store.visitors_per_event,
        "items": lambda conn: store.item_counts_since(conn, 0),
        "activity": store.visitor_activity,
        "report": store.last_etl_report,
        "categories": item_categories,
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, q) for name, q in queries.items()}
        got = {name: f.result() for name, f in futures.items()}
    items = got["items"].sort_values(ascending=False)
    table = got["daily"].pivot_table(index="day", columns="event", values="n", fill_value=0)
    table = table.reindex(columns=list(EVENT_TYPES), fill_value=0)
    table.index = pd.to_datetime(table.index, unit="ms", utc=True)
    category = got["categories"].reindex(items.index)
    by_cat = items.groupby(category.fillna(-1).astype("int64").to_numpy()).sum()
    by_cat = by_cat.sort_values(ascending=False)
    cats = pd.DataFrame(
        {
            "categoryid": ["unknown" if c == -1 else str(c) for c in by_cat.index[:top]],
            "events": by_cat.to_numpy()[:top],
        }
    )
    cats["share"] = cats["events"] / max(int(items.sum()), 1)
    return DataOverview(
        table.reset_index(names="day"),
        got["funnel"],
        items,
        got["activity"],
        cats,
        got["report"],
        int(items.sum()),
    )


def rejected_rows(report: dict[str, Any], n: int = 20) -> pd.DataFrame | None:
    """The first ``n`` events an ETL run quarantined, as written to its rejected file (original
    values, reason, detail); None when it rejected nothing or the file is gone."""
    path = report.get("rejected_file")
    if not path or not Path(path).is_file():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=n)


def long_tail(item_popularity: pd.Series) -> pd.DataFrame:
    """Share of all events covered by the top x% of items: the long-tail curve."""
    counts = np.sort(item_popularity.to_numpy())[::-1]
    if not len(counts):
        return pd.DataFrame({"item_share": [], "event_share": []})
    cum = np.cumsum(counts) / counts.sum()
    idx = np.unique(np.linspace(0, len(counts) - 1, min(len(counts), 200)).astype(int))
    return pd.DataFrame({"item_share": (idx + 1) / len(counts), "event_share": cum[idx]})


def model_runs(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(every model run's metrics, the registered versions, the champion history)."""
    from retailrec import registry

    client = registry.configure(settings)
    return (
        registry.runs_table(client),
        registry.versions_table(client, settings.model_name),
        registry.champion_history(client, settings.model_name),
    )


def catalogue(settings: Settings) -> pd.DataFrame:
    """Item id -> its latest category (``categoryid`` column)."""
    with store.open_store(settings.feature_store) as conn:
        return item_categories(conn).to_frame()


def sample_visitors(settings: Settings, n: int = 50) -> list[int]:
    with store.open_store(settings.feature_store) as conn:
        return store.sample_visitors(conn, n)


def visitor_history(settings: Settings, visitor_id: int, limit: int = 50) -> pd.DataFrame:
    """The visitor's latest events, newest first, with time as a date."""
    with store.open_store(settings.feature_store) as conn:
        frame = store.visitor_history(conn, visitor_id, limit=limit).frame(visitor_id)
    frame["time"] = pd.to_datetime(frame["timestamp"], unit="ms", utc=True)
    return frame.iloc[::-1][["time", "event", "itemid", "transactionid"]].reset_index(drop=True)


def recommend_via_api(
    api_url: str, visitor_id: int | None, items: list[int], k: int, rules: dict[str, Any]
) -> dict[str, Any]:
    """The same answer from a running API (``RETAILREC_API_URL``, a URL or ``host:port``).

    Raises:
        OSError: the API did not answer, or answered with an error.
    """
    with ApiClient(api_url) as client:
        if visitor_id is not None:
            answer = client.for_visitor(visitor_id, k, rules)
        else:
            answer = client.for_session(items, k)
    if not answer.ok:
        raise OSError(f"{client.base} answered {answer.status}: {answer.error}")
    return answer.body


def latest_monitor_report(settings: Settings) -> dict[str, Any] | None:
    """The newest ``retailrec monitor`` report, or None."""
    return reports.latest(settings.reports_dir, "drift")


def latest_backtest(settings: Settings) -> dict[str, Any] | None:
    """The newest ``retailrec backtest`` report, or None."""
    return reports.latest(settings.reports_dir, "backtest")


def parse_id(text: str, what: str) -> int:
    """A typed id as the API accepts it: a whole number from 0 to :data:`MAX_ID`.

    Raises:
        UsageError: anything else, in one line (never an overflow further down).
    """
    word = text.strip()
    if not word.isdigit() or int(word) > MAX_ID:
        raise UsageError(
            f"not a {what} id: {text.strip()[:40]!r} (ids are whole numbers from 0 to {MAX_ID:,})"
        )
    return int(word)


def parse_ids(text: str, what: str) -> list[int]:
    """Ids separated by spaces or commas (see :func:`parse_id`)."""
    words = text.replace(",", " ").split()
    bad = next((w for w in words if not w.isdigit() or int(w) > MAX_ID), None)
    if bad is not None:
        raise UsageError(
            f"{what} ids are integers from 0 to {MAX_ID:,}, separated by spaces or commas:"
            f" {bad[:40]!r} is not one"
        )
    return [int(w) for w in words]


def action_refusal(settings: Settings, typed_key: str) -> str | None:
    """Why an action (running the monitor) is refused, or None when the typed key is the API
    key. Without ``RETAILREC_API_KEY`` actions are off: a dashboard reachable by others must not
    run anything for anyone."""
    if not settings.api_key:
        return "actions are off: set RETAILREC_API_KEY where the dashboard runs"
    if not secrets.compare_digest(typed_key.encode(), settings.api_key.encode()):
        return "wrong API key"
    return None
