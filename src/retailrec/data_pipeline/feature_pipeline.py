"""Point-in-time features, computed by the same functions for training (batch) and serving (online).

Every function takes an events frame (Retailrocket columns, ``timestamp`` in Unix ms) and an
``as_of_ms``; events after ``as_of_ms`` are ignored, so nothing from the future leaks in. Offline,
:func:`build_features` runs them over the whole event log and stores a snapshot; online,
:func:`online_user_features` runs :func:`user_features` over one visitor's history read from the
store. A test checks that both give the same row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retailrec import events as ev_
from retailrec.errors import NoDataError
from retailrec.feature_store import store

if TYPE_CHECKING:
    from retailrec.config import Settings

log = logging.getLogger(__name__)

SESSION_GAP_MS = 30 * ev_.MINUTE_MS
POPULARITY_WINDOWS_DAYS = (1, 7, 30)
TOP_CATEGORIES = 3
#: Sessions or baskets with more distinct items than this are skipped when counting item pairs:
#: they are bots or bulk orders, and their pairs would swamp the counts (quadratic in size).
MAX_ITEMS_FOR_PAIRS = 50


@dataclass(frozen=True)
class FeatureConfig:
    """How interactions are weighted. Defaults follow the funnel: a purchase says more than a view.

    Args:
        event_weights: Confidence added by one event of each type.
        recency_half_life_days: An event this old counts half as much as one at ``as_of``.
        session_gap_ms: A pause longer than this starts a new session.
    """

    event_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(ev_.DEFAULT_EVENT_WEIGHTS)
    )
    recency_half_life_days: float = ev_.DEFAULT_HALF_LIFE_DAYS
    session_gap_ms: int = SESSION_GAP_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureConfig:
        """The weights a deployment configured (``RETAILREC_EVENT_WEIGHTS`` and the half-life)."""
        return cls(
            event_weights=settings.event_weights,
            recency_half_life_days=settings.recency_half_life_days,
        )

    def code_weights(self) -> np.ndarray:
        """Confidence weight per event code (``EVENT_TYPES`` order), then 0 for code -1 (not an
        event type): index it with :func:`event_codes`."""
        return ev_.code_weights(self.event_weights)

    def confidence(
        self, codes: np.ndarray, timestamps: np.ndarray, now_ms: int | np.ndarray
    ) -> np.ndarray:
        """:func:`retailrec.events.confidence` with these weights and this half-life."""
        return ev_.confidence(
            codes, timestamps, now_ms, self._code_weights, self.recency_half_life_days
        )

    def decay(self, age_ms: int | np.ndarray) -> np.ndarray:
        """:func:`retailrec.events.decay` with this half-life."""
        return ev_.decay(age_ms, self.recency_half_life_days)

    @functools.cached_property
    def _code_weights(self) -> np.ndarray:
        # Built once per config: serving weighs a history on every request.
        return self.code_weights()


def _until(events: pd.DataFrame, as_of_ms: int | None) -> pd.DataFrame:
    return events if as_of_ms is None else events[events["timestamp"].to_numpy() <= as_of_ms]


def session_numbers(events: pd.DataFrame, gap_ms: int = SESSION_GAP_MS) -> np.ndarray:
    """Per row, the visitor's session number (0, 1, ...): a new one after a pause over ``gap_ms``.

    Returns:
        (n_rows,) int64 aligned with ``events`` rows, whatever their order.
    """
    if events.empty:
        return np.zeros(0, dtype=np.int64)
    vis = events["visitorid"].to_numpy()
    ts = events["timestamp"].to_numpy()
    in_time_order = (ts[1:] >= ts[:-1]).all()  # as the store's reads are: then one sort key
    order = np.argsort(vis, kind="stable") if in_time_order else np.lexsort((ts, vis))
    v, t = vis[order], ts[order]
    new_visitor = np.r_[True, v[1:] != v[:-1]]
    new_session = new_visitor | np.r_[True, np.diff(t) > gap_ms]
    running = np.cumsum(new_session)
    first_of_visitor = np.maximum.accumulate(np.where(new_visitor, running, 0))
    out = np.empty(len(order), dtype=np.int64)
    out[order] = running - first_of_visitor
    return out


def interactions(
    events: pd.DataFrame, as_of_ms: int, config: FeatureConfig | None = None
) -> pd.DataFrame:
    """Implicit-feedback confidence for each visitor-item pair, as of ``as_of_ms``.

    ``confidence = sum over the pair's events of weight(event) * 0.5 ** (age_days / half_life)``.

    Returns:
        Columns ``visitorid, itemid, confidence, n_views, n_carts, n_purchases, last_ts``,
        sorted by visitor then item.
    """
    config = config or FeatureConfig()
    ev = _until(events, as_of_ms)
    kind = ev_.event_codes(ev["event"])
    ts = ev["timestamp"].to_numpy(np.int64)
    confidence = config.confidence(kind, ts, as_of_ms)
    # One stable sort by (visitor, item), then sums over each run of equal pairs; a pair's rows
    # keep their order, so each sum adds its terms in the same order as a groupby would.
    vis = ev["visitorid"].to_numpy(np.int64)
    item = ev["itemid"].to_numpy(np.int64)
    order = _pair_order(vis, item)
    vis, item, ts, kind, confidence = (a[order] for a in (vis, item, ts, kind, confidence))
    starts = np.flatnonzero(np.r_[True, (vis[1:] != vis[:-1]) | (item[1:] != item[:-1])])
    starts = starts[starts < len(vis)]  # no run at all when there is no event

    def per_pair(values: np.ndarray, ufunc: np.ufunc = np.add) -> np.ndarray:
        return ufunc.reduceat(values, starts) if len(starts) else values[:0]

    return pd.DataFrame(
        {
            "visitorid": vis[starts],
            "itemid": item[starts],
            "confidence": per_pair(confidence),
            "n_views": per_pair((kind == VIEW).astype(np.int64)),
            "n_carts": per_pair((kind == CART).astype(np.int64)),
            "n_purchases": per_pair((kind == PURCHASE).astype(np.int64)),
            "last_ts": per_pair(ts, np.maximum),
        }
    )


VIEW, CART, PURCHASE = ev_.VIEW, ev_.ADDTOCART, ev_.TRANSACTION


def _pair_order(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """A stable order of rows by (first, second): one sort of a packed key where both fit."""
    fits = len(first) > 0 and min(first.min(), second.min()) >= 0
    if fits and int(first.max()) < 2**32 and int(second.max()) < 2**31:
        return np.argsort((first << 31) | second, kind="stable")
    return np.lexsort((second, first))


USER_FEATURE_COLUMNS = (
    "visitorid",
    "n_views",
    "n_carts",
    "n_purchases",
    "n_items",
    "n_sessions",
    "first_ts",
    "last_ts",
    "recency_days",
    *(f"top_category_{i}" for i in range(1, TOP_CATEGORIES + 1)),
    "purchased_items",
)


def user_features(
    events: pd.DataFrame,
    as_of_ms: int,
    item_category: pd.Series,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """Per-visitor features from events up to ``as_of_ms``.

    Args:
        events: Any number of visitors' events.
        as_of_ms: The point in time; later events are ignored.
        item_category: itemid -> categoryid as of ``as_of_ms`` (items without one are skipped in
            ``top_categories``).

    Returns:
        One row per visitor with events, columns :data:`USER_FEATURE_COLUMNS`:
        counts per event type, distinct items, sessions, first/last event time (ms), days since
        the last event, the three most frequent categories (``top_category_1`` most frequent,
        ties to the smaller id; NA when fewer) and the purchased item ids (comma-separated,
        ascending).
    """
    config = config or FeatureConfig()
    ev = _until(events, as_of_ms)
    if ev.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=_USER_DTYPES.get(c, "int64")) for c in USER_FEATURE_COLUMNS}
        )
    kind = ev["event"].astype("str").to_numpy()
    vis = ev["visitorid"].to_numpy()
    base = pd.DataFrame(
        {
            "visitorid": vis,
            "v": (kind == "view").astype(np.int64),
            "c": (kind == "addtocart").astype(np.int64),
            "p": (kind == "transaction").astype(np.int64),
            "ts": ev["timestamp"].to_numpy(),
            "itemid": ev["itemid"].to_numpy(),
            "session": session_numbers(ev, config.session_gap_ms),
        }
    )
    g = base.groupby("visitorid", sort=True)
    out = pd.DataFrame(
        {
            "n_views": g["v"].sum(),
            "n_carts": g["c"].sum(),
            "n_purchases": g["p"].sum(),
            "n_items": g["itemid"].nunique(),
            "n_sessions": g["session"].max() + 1,
            "first_ts": g["ts"].min(),
            "last_ts": g["ts"].max(),
        }
    )
    out["recency_days"] = (as_of_ms - out["last_ts"]) / ev_.DAY_MS

    # Top categories: count events per (visitor, category), most frequent first, ties by id.
    cats = item_category.reindex(base["itemid"].to_numpy()).to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    known = ~np.isnan(cats)
    vc = (
        pd.DataFrame({"visitorid": vis[known], "categoryid": cats[known].astype(np.int64)})
        .value_counts()
        .rename("n")
        .reset_index()
        .sort_values(["visitorid", "n", "categoryid"], ascending=[True, False, True], kind="stable")
    )
    vc["rank"] = vc.groupby("visitorid", sort=False).cumcount() + 1
    top = vc[vc["rank"] <= TOP_CATEGORIES].pivot(
        index="visitorid", columns="rank", values="categoryid"
    )

    bought = base.loc[base["p"] == 1, ["visitorid", "itemid"]].drop_duplicates()
    bought = bought.sort_values(["visitorid", "itemid"], kind="stable")
    purchased = _join_per_visitor(bought["visitorid"].to_numpy(), bought["itemid"].to_numpy())

    for rank in range(1, TOP_CATEGORIES + 1):
        col = top[rank] if rank in top.columns else pd.Series(dtype="float64")
        out[f"top_category_{rank}"] = col.reindex(out.index).astype("Int64")
    out["purchased_items"] = purchased.reindex(out.index).fillna("")
    return out.reset_index()[list(USER_FEATURE_COLUMNS)]


def _join_per_visitor(visitors: np.ndarray, values: np.ndarray) -> pd.Series:
    """Comma-joined values per visitor; ``visitors`` must be sorted (grouped)."""
    if len(visitors) == 0:
        return pd.Series(dtype="str")
    starts = np.flatnonzero(np.r_[True, visitors[1:] != visitors[:-1]])
    ends = np.r_[starts[1:], len(visitors)]
    text = values.astype(str)
    joined = [",".join(text[a:b]) for a, b in zip(starts, ends, strict=True)]
    return pd.Series(joined, index=visitors[starts], dtype="str")


_USER_DTYPES = {
    "recency_days": "float64",
    "purchased_items": "str",
    **{f"top_category_{i}": "Int64" for i in range(1, TOP_CATEGORIES + 1)},
}

ITEM_FEATURE_COLUMNS = (
    "itemid",
    "categoryid",
    "available",
    *(f"pop_{d}d" for d in POPULARITY_WINDOWS_DAYS),
    "pop_all",
    "n_views",
    "n_carts",
    "n_purchases",
    "cart_rate",
    "purchase_rate",
)


def item_features(events: pd.DataFrame, as_of_ms: int, catalogue: pd.DataFrame) -> pd.DataFrame:
    """Per-item features as of ``as_of_ms``.

    Args:
        catalogue: ``itemid, categoryid, available`` as of ``as_of_ms``
            (see :func:`item_catalogue`).

    Returns:
        One row per item that has events or a catalogue entry: event counts in the last 1, 7 and
        30 days and overall, counts per type, and smoothed cart and purchase rates per view
        (``(carts + 1) / (views + 10)``-style, so one lucky view is not a 100% rate).
    """
    ev = _until(events, as_of_ms)
    ts = ev["timestamp"].to_numpy()
    kind = ev["event"].astype("str").to_numpy()
    frame = pd.DataFrame({"itemid": ev["itemid"].to_numpy()})
    for days in POPULARITY_WINDOWS_DAYS:
        frame[f"pop_{days}d"] = (ts > as_of_ms - days * ev_.DAY_MS).astype(np.int64)
    frame["pop_all"] = 1
    frame["n_views"] = (kind == "view").astype(np.int64)
    frame["n_carts"] = (kind == "addtocart").astype(np.int64)
    frame["n_purchases"] = (kind == "transaction").astype(np.int64)
    counts = frame.groupby("itemid", sort=True).sum()
    cat = catalogue.set_index("itemid")[["categoryid", "available"]]
    out = counts.join(cat, how="outer")
    count_cols = list(counts.columns)
    out[count_cols] = out[count_cols].fillna(0).astype(np.int64)
    out["cart_rate"] = (out["n_carts"] + 0.026) / (out["n_views"] + 1.0)
    out["purchase_rate"] = (out["n_purchases"] + 0.008) / (out["n_views"] + 1.0)
    out["categoryid"] = out["categoryid"].astype("Int64")
    out["available"] = out["available"].astype("boolean").astype("Int64")
    out.index.name = "itemid"
    return out.reset_index()[list(ITEM_FEATURE_COLUMNS)]


def item_pairs(
    events: pd.DataFrame, as_of_ms: int, config: FeatureConfig | None = None
) -> pd.DataFrame:
    """Counts of items bought together (same ``transactionid``) and carted in the same session.

    Returns:
        ``itemid, other_itemid, n_baskets, n_carts`` for ordered pairs (both directions),
        sorted by ``itemid`` then ``other_itemid``.
    """
    config = config or FeatureConfig()
    ev = _until(events, as_of_ms)
    kind = ev["event"].astype("str").to_numpy()

    tx = ev.loc[kind == "transaction", ["transactionid", "itemid"]].drop_duplicates()
    tx = tx.rename(columns={"transactionid": "group"}).astype({"group": "int64"})
    baskets = _pairs(tx, "n_baskets")

    carts = ev.loc[kind == "addtocart", ["visitorid", "timestamp", "itemid"]]
    session = session_numbers(ev, config.session_gap_ms)[kind == "addtocart"]
    groups = pd.DataFrame({"visitorid": carts["visitorid"].to_numpy(), "session": session})
    cart_groups = pd.DataFrame(
        {
            "group": groups.groupby(["visitorid", "session"], sort=False).ngroup().to_numpy(),
            "itemid": carts["itemid"].to_numpy(),
        }
    ).drop_duplicates()
    cart_pairs = _pairs(cart_groups, "n_carts")

    out = baskets.join(cart_pairs, how="outer").fillna(0).astype(np.int64)
    out = out.reset_index().sort_values(["itemid", "other_itemid"], kind="stable")
    return out[["itemid", "other_itemid", "n_baskets", "n_carts"]].reset_index(drop=True)


def cooccurrence(
    groups: np.ndarray, items: np.ndarray, n_items: int, max_group: int = MAX_ITEMS_FOR_PAIRS
) -> sp.csr_matrix:
    """(n_items, n_items) number of groups (baskets, sessions) in which two distinct items occur
    together; a group of more than ``max_group`` distinct items (a bot, a bulk order) counts for
    nothing. The one co-occurrence counter: the item-pair features and the bought-together and
    session models all count with it.

    Args:
        groups: (n,) a group id per row.
        items: (n,) an item index in ``[0, n_items)`` per row.
    """
    frame = pd.DataFrame({"g": groups, "i": items}).drop_duplicates()
    size = frame.groupby("g")["i"].transform("size").to_numpy()
    frame = frame[(size > 1) & (size <= max_group)]
    if frame.empty:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    g_codes, g_index = np.unique(frame["g"].to_numpy(), return_inverse=True)
    incidence = sp.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (g_index, frame["i"].to_numpy())),
        shape=(len(g_codes), n_items),
    )
    co = (incidence.T @ incidence).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    return co


def _pairs(groups: pd.DataFrame, name: str) -> pd.DataFrame:
    """Ordered pairs of distinct items sharing a ``group``, counted over groups."""
    ids, index = np.unique(groups["itemid"].to_numpy(np.int64), return_inverse=True)
    co = cooccurrence(groups["group"].to_numpy(np.int64), index, len(ids)).tocoo()
    pairs = pd.MultiIndex.from_arrays([ids[co.row], ids[co.col]], names=["itemid", "other_itemid"])
    return pd.DataFrame({name: co.data.astype(np.int64)}, index=pairs)


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


def item_category_as_of(conn: store.Connection, as_of_ms: int | None) -> pd.DataFrame:
    """The catalogue (``itemid, categoryid, available``) as stated at ``as_of_ms``."""
    props = store.read_item_properties(conn, as_of_ms=as_of_ms, latest=True)
    return item_catalogue(props, as_of_ms)


def item_categories(conn: store.Connection, as_of_ms: int | None = None) -> pd.Series:
    """Each item's category as stated at ``as_of_ms`` (default: the latest): int64, indexed by
    ``itemid``; items without a numeric one are left out."""
    catalogue = item_category_as_of(conn, as_of_ms).set_index("itemid")["categoryid"]
    return catalogue.dropna().astype("int64")


@dataclass
class FeatureSnapshot:
    as_of_ms: int
    users: pd.DataFrame
    items: pd.DataFrame
    pairs: pd.DataFrame


def compute_features(
    events: pd.DataFrame,
    catalogue: pd.DataFrame,
    as_of_ms: int,
    config: FeatureConfig | None = None,
) -> FeatureSnapshot:
    """All features of one point in time, from in-memory events and catalogue."""
    category = catalogue.set_index("itemid")["categoryid"].dropna()
    return FeatureSnapshot(
        as_of_ms=as_of_ms,
        users=user_features(events, as_of_ms, category, config),
        items=item_features(events, as_of_ms, catalogue),
        pairs=item_pairs(events, as_of_ms, config),
    )


def build_features(
    conn: store.Connection, as_of_ms: int | None = None, config: FeatureConfig | None = None
) -> FeatureSnapshot:
    """Compute the snapshot at ``as_of_ms`` (default: the last event) and store it.

    Raises:
        ValueError: the store holds no events.
    """
    first_ms, last_ms = store.time_range(conn)
    if first_ms is None or last_ms is None:
        raise NoDataError("the feature store has no events: run `retailrec etl` first")
    if as_of_ms is None:
        as_of_ms = last_ms
    elif as_of_ms < first_ms:  # nothing is known yet: a snapshot would be empty
        raise NoDataError(
            f"as of {as_of_ms} ({ev_.utc_text(as_of_ms)}) is before the first event ({first_ms},"
            f" {ev_.utc_text(first_ms)}): no features to compute (timestamps are Unix milliseconds)"
        )
    events = store.read_events(conn, end_ms=as_of_ms + 1)
    snapshot = compute_features(events, item_category_as_of(conn, as_of_ms), as_of_ms, config)
    store.write_features(
        conn, as_of_ms=as_of_ms, users=snapshot.users, items=snapshot.items, pairs=snapshot.pairs
    )
    log.info(
        "features as of %d: %d users, %d items, %d pairs",
        as_of_ms,
        len(snapshot.users),
        len(snapshot.items),
        len(snapshot.pairs),
    )
    return snapshot


def online_user_features(
    conn: store.Connection,
    visitor_id: int,
    as_of_ms: int,
    item_category: pd.Series,
    config: FeatureConfig | None = None,
) -> pd.DataFrame:
    """The serving path: one visitor's features from their history in the store, right now."""
    history = store.visitor_history(conn, visitor_id, as_of_ms=as_of_ms)
    return user_features(history.frame(visitor_id), as_of_ms, item_category, config)
