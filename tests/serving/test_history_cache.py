"""Active visitors' histories kept between requests: the same answers as a fresh read, whoever
changes the log and however late the events they add are dated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retailrec.config import get_settings
from retailrec.feature_store import store
from retailrec.models import Dataset, make_model
from retailrec.models.bundle import ModelBundle
from retailrec.serving import history_cache
from retailrec.serving.history_cache import HistoryCache
from retailrec.serving.rules import Rules
from retailrec.serving.service import HISTORY_LIMIT, RecommendationService
from tests.utils.factories import Shop, events_frame


def test_the_cache_keeps_the_most_recent_entries_and_drops_stale_ones() -> None:
    cache: HistoryCache[str] = HistoryCache(capacity=2)
    cache.put(1, 0, "one")
    cache.put(2, 0, "two")
    assert cache.get(1, 0) == "one"  # 1 is now the most recently used
    cache.put(3, 0, "three")  # so 2 goes
    assert cache.get(2, 0) is None
    assert (cache.get(1, 0), cache.get(3, 0)) == ("one", "three")
    assert cache.get(1, 1) is None  # another version: stale, and dropped
    assert cache.get(1, 0) is None
    assert len(cache) == 1
    assert (cache.hits, cache.misses) == (3, 3)


def test_a_visitors_version_moves_when_their_events_change(tmp_path: Path) -> None:
    conn = store.connect(get_settings().feature_store)  # the suite's backend
    store.append_events(conn, events_frame([(1_000, 1, "view", 5, None)]))
    assert store.visitor_version(conn, 1) == (
        0,
        1_000,
    )  # a new visitor: nobody can hold their history
    store.append_events(conn, events_frame([(500, 1, "view", 6, None), (900, 2, "view", 6, None)]))
    assert (store.visitor_version(conn, 1)[0], store.visitor_version(conn, 2)[0]) == (1, 0)
    # A staged (large) batch bumps the same way, once per visitor who had events.
    rows = [(2_000 + i, 1 + i % 3, "view", i, None) for i in range(store.STAGE_MIN_ROWS)]
    store.append_events(conn, events_frame(rows))
    assert [store.visitor_version(conn, v)[0] for v in (1, 2, 3)] == [2, 1, 0]
    # Duplicates change no history, so they bump no one, by either path.
    store.append_events(conn, events_frame(rows))
    store.append_events(conn, events_frame([(500, 1, "view", 6, None)]))
    assert [store.visitor_version(conn, v)[0] for v in (1, 2, 3)] == [2, 1, 0]
    with conn:  # rows changed or removed by hand count too
        conn.execute("DELETE FROM events WHERE visitorid = 3 AND timestamp = 2002")
        conn.execute("UPDATE events SET visitorid = 4 WHERE visitorid = 2 AND timestamp = 900")
    assert [store.visitor_version(conn, v)[0] for v in (1, 2, 3, 4)] == [2, 2, 1, 1]


@pytest.fixture
def served_shop(tiny_shop: Shop, tmp_path: Path) -> tuple[RecommendationService, str, list[int]]:
    log = tiny_shop.data.events.drop_duplicates()
    data = Dataset.from_events(log)
    knn = make_model("itemknn_bm25").fit(data)
    pop = make_model("popular").fit(data)
    roles = dict.fromkeys(("retrieval", "similar", "session", "bought_together"), knn)
    bundle = ModelBundle.from_dataset(
        roles | {"popular": pop, "popular_7d": pop}, data, {"model": "itemknn_bm25"}
    )
    path = get_settings().feature_store  # the suite's backend
    store.append_events(store.connect(path), log)
    busy = log.groupby("visitorid").size()
    active = busy[busy >= history_cache.MIN_EVENTS].index[:5].tolist()
    assert len(active) == 5
    return RecommendationService(bundle, "1"), path, [int(v) for v in active]


def test_kept_histories_answer_as_a_fresh_read_after_late_events_from_another_writer(
    served_shop: tuple[RecommendationService, str, list[int]],
) -> None:
    served, path, active = served_shop
    conn = store.connect(path)
    first = {v: served.for_visitor(conn, v, 10, Rules()) for v in active}
    again = {v: served.for_visitor(conn, v, 10, Rules()) for v in active}
    assert served.histories.hits == len(active)  # the second round read no history
    assert again == first
    # Another writer (another process, an ETL run) adds, for each visitor, a purchase of the item
    # they were just recommended first, dated before their newest event: the newest event and
    # the shop's clock stay where they were, yet the item must go (purchased items are excluded).
    writer = store.connect(path)
    late = []
    for v in active:
        newest = int(store.visitor_history(writer, v).timestamp[-1])
        late.append((newest - 1, v, "transaction", first[v].items[0], 10_000_000 + v))
    store.append_events(writer, events_frame(late))
    for v in active:
        now = served.for_visitor(conn, v, 10, Rules())
        fresh = RecommendationService(served.bundle, "1").for_visitor(conn, v, 10, Rules())
        assert now == fresh
        assert first[v].items[0] not in now.items
    assert served.histories.misses == 2 * len(active)


def test_short_histories_are_not_kept(
    served_shop: tuple[RecommendationService, str, list[int]], tiny_shop: Shop
) -> None:
    served, path, _ = served_shop
    conn = store.connect(path)
    busy = tiny_shop.data.events.drop_duplicates().groupby("visitorid").size()
    short = busy[busy < history_cache.MIN_EVENTS].index[:20]
    for v in short:
        served.for_visitor(conn, int(v), 10, Rules())
    assert len(short) == 20
    assert len(served.histories) == 0


def test_a_kept_history_is_compact(
    served_shop: tuple[RecommendationService, str, list[int]],
) -> None:
    """The cache's memory bound rests on this: at most 16 bytes an event, so 2,048 visitors of
    500 events each hold under 16 MiB."""
    served, path, active = served_shop
    history = store.visitor_history(store.connect(path), active[0], limit=HISTORY_LIMIT)
    kept = served.prepare(history)
    arrays = [v for v in vars(kept).values() if isinstance(v, np.ndarray)]
    assert all(a.base is None for a in arrays)  # no view keeps a larger array alive
    assert kept.n_events == len(history.timestamp) >= history_cache.MIN_EVENTS
    assert sum(a.nbytes for a in arrays) <= 16 * kept.n_events + 8 * 20
    assert history_cache.CAPACITY * HISTORY_LIMIT * 16 < 16 * 2**20
