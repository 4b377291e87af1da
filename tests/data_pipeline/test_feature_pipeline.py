"""Features: hand-computed values, point-in-time correctness, and offline == online."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retailrec.config import get_settings
from retailrec.data_pipeline import etl
from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.errors import NoDataError
from retailrec.events import event_codes
from retailrec.feature_store import store
from tests.utils.factories import Shop, events_frame
from tests.utils.postgres import suite_store

T = 1_433_221_332_117
MIN = 60_000
DAY = 86_400_000


EVENTS = events_frame(
    [
        (T, 1, "view", 10, None),
        (T + 10 * MIN, 1, "view", 11, None),
        (T + 20 * MIN, 1, "addtocart", 10, None),
        (T + 21 * MIN, 1, "addtocart", 11, None),
        (T + 25 * MIN, 1, "transaction", 10, 500),
        (T + 25 * MIN, 1, "transaction", 11, 500),
        (T + 2 * DAY, 1, "view", 12, None),  # a new session
        (T + 5 * MIN, 2, "view", 10, None),
        (T + 40 * MIN, 2, "view", 12, None),  # 35 minutes later: a new session
        (T + 3 * DAY, 3, "view", 13, None),
    ]
)
CATEGORY = pd.Series({10: 100, 11: 100, 12: 200, 13: 300})


def test_sessions_split_on_a_30_minute_gap() -> None:
    assert fp.session_numbers(EVENTS).tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    for reordered in (EVENTS.sample(frac=1, random_state=1), EVENTS.sort_values("timestamp")):
        pd.testing.assert_series_equal(
            pd.Series(fp.session_numbers(reordered), index=reordered.index).sort_index(),
            pd.Series(fp.session_numbers(EVENTS), index=EVENTS.index),
        )


def test_event_codes_from_text_or_categories() -> None:
    text = pd.Series(["view", "click", None, "transaction", "addtocart"], dtype="str")
    assert event_codes(text).tolist() == [0, -1, -1, 2, 1]
    categories = ["transaction", "click", "view"]  # another order, and a name that is no event
    shuffled = pd.Series(pd.Categorical.from_codes([2, 1, -1, 0, -1], categories=categories))
    assert event_codes(shuffled).tolist() == [0, -1, -1, 2, -1]
    assert event_codes(text.astype(object)).tolist() == [0, -1, -1, 2, 1]


def test_interactions_do_not_depend_on_the_event_column_type_or_row_order() -> None:
    as_of = T + DAY
    expected = fp.interactions(EVENTS, as_of)
    categorical = EVENTS.assign(
        event=pd.Categorical(EVENTS["event"], categories=["transaction", "view", "addtocart"])
    )
    pd.testing.assert_frame_equal(fp.interactions(categorical, as_of), expected)
    shuffled = EVENTS.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(fp.interactions(shuffled, as_of), expected)
    assert expected[["visitorid", "itemid"]].apply(tuple, axis=1).is_monotonic_increasing
    assert fp.interactions(EVENTS.iloc[:0], as_of).empty


def test_confidence_weights_events_and_decays_with_age() -> None:
    config = fp.FeatureConfig(
        event_weights={"view": 1, "addtocart": 4, "transaction": 8}, recency_half_life_days=1
    )
    as_of = T + 25 * MIN + DAY  # one half-life after the purchase
    inter = fp.interactions(EVENTS, as_of, config).set_index(["visitorid", "itemid"])
    age = lambda ts: 0.5 ** ((as_of - ts) / DAY)  # noqa: E731
    expected = 1 * age(T) + 4 * age(T + 20 * MIN) + 8 * age(T + 25 * MIN)
    assert inter.loc[(1, 10), "confidence"] == pytest.approx(expected)
    assert inter.loc[(1, 10), ["n_views", "n_carts", "n_purchases"]].tolist() == [1, 1, 1]
    assert (1, 12) not in inter.index  # after as_of
    assert len(inter) == 4


def test_user_features_by_hand() -> None:
    users = fp.user_features(EVENTS, T + 3 * DAY, CATEGORY).set_index("visitorid")
    one = users.loc[1]
    assert (one["n_views"], one["n_carts"], one["n_purchases"]) == (3, 2, 2)
    assert (one["n_items"], one["n_sessions"]) == (3, 2)
    assert one["last_ts"] == T + 2 * DAY
    assert one["recency_days"] == pytest.approx(1.0)
    assert (one["top_category_1"], one["top_category_2"]) == (100, 200)
    assert pd.isna(one["top_category_3"])
    assert one["purchased_items"] == "10,11"
    assert users.loc[2, "n_sessions"] == 2
    assert users.loc[2, "purchased_items"] == ""
    assert users.loc[3, "recency_days"] == 0


def test_item_features_and_pairs_by_hand() -> None:
    catalogue = pd.DataFrame(
        {
            "itemid": [10, 11, 12, 13, 14],
            "categoryid": [100, 100, 200, 300, 300],
            "available": [True, False, True, True, True],
        }
    )
    items = fp.item_features(EVENTS, T + 3 * DAY, catalogue).set_index("itemid")
    assert items.loc[10, ["pop_all", "n_views", "n_carts", "n_purchases"]].tolist() == [4, 2, 1, 1]
    assert items.loc[12, "pop_1d"] == 0 and items.loc[12, "pop_7d"] == 2
    assert items.loc[13, "pop_1d"] == 1
    assert items.loc[14, "pop_all"] == 0  # in the catalogue, never seen
    assert items.loc[11, "available"] == 0
    assert items.loc[10, "cart_rate"] == pytest.approx((1 + 0.026) / 3)
    pairs = fp.item_pairs(EVENTS, T + 3 * DAY).set_index(["itemid", "other_itemid"])
    assert pairs.loc[(10, 11)].tolist() == [1, 1]
    assert pairs.loc[(11, 10)].tolist() == [1, 1]
    assert len(pairs) == 2


def test_nothing_after_as_of_leaks_in() -> None:
    as_of = T + 30 * MIN
    future = events_frame(
        [(as_of + 1, 1, "transaction", 12, 900), (as_of + DAY, 9, "view", 10, None)]
    )
    with_future = pd.concat([EVENTS, future], ignore_index=True)
    catalogue = pd.DataFrame(
        {"itemid": [10, 11, 12, 13], "categoryid": [100, 100, 200, 300], "available": [True] * 4}
    )
    a = fp.compute_features(EVENTS[EVENTS["timestamp"] <= as_of], catalogue, as_of)
    b = fp.compute_features(with_future, catalogue, as_of)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.pairs, b.pairs)
    # Items seen only in the future appear with zero counts (they are in the catalogue), no more.
    pd.testing.assert_frame_equal(a.items, b.items)


def test_catalogue_is_taken_as_of_the_time(tmp_path: Path) -> None:
    conn = store.connect(get_settings().feature_store)
    store.upsert_item_properties(
        conn,
        pd.DataFrame(
            {
                "timestamp": [T, T + DAY],
                "itemid": [10, 10],
                "property": ["categoryid", "categoryid"],
                "value": ["1", "2"],
            }
        ),
    )
    assert fp.item_category_as_of(conn, T + 1).set_index("itemid").loc[10, "categoryid"] == 1
    assert fp.item_category_as_of(conn, T + DAY).set_index("itemid").loc[10, "categoryid"] == 2


@pytest.fixture(scope="module")
def loaded_shop(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> str:
    tmp = tmp_path_factory.mktemp("loaded")
    target = suite_store() or str(tmp / "fs.sqlite")
    conn = store.connect(target)
    etl.run_etl(tiny_shop.dir, conn=conn, rejected_dir=tmp / "rej", processed_dir=tmp / "proc")
    conn.close()
    return target


def test_offline_and_online_features_are_equal(loaded_shop: str) -> None:
    """No train-serve skew: the stored batch snapshot and the per-request computation agree."""
    conn = store.connect(loaded_shop)
    lo, hi = store.time_range(conn)
    as_of = lo + (hi - lo) * 2 // 3
    snapshot = fp.build_features(conn, as_of)
    offline = store.read_user_features(conn, as_of).drop(columns="as_of_ms").set_index("visitorid")
    assert len(offline) == len(snapshot.users)
    category = fp.item_category_as_of(conn, as_of).set_index("itemid")["categoryid"].dropna()
    rng = np.random.default_rng(0)
    busy = offline.index[offline["n_views"] + offline["n_carts"] > 3]
    visitors = [*rng.choice(offline.index, 20, replace=False), *rng.choice(busy, 20, replace=False)]
    for vid in visitors:
        online = fp.online_user_features(conn, int(vid), as_of, category).set_index("visitorid")
        stored = offline.loc[[vid]]
        for col in stored.columns:
            a, b = stored[col].iloc[0], online[col].iloc[0]
            if pd.isna(a) or pd.isna(b):
                assert pd.isna(a) and pd.isna(b), (vid, col)
            elif isinstance(a, float):
                assert math.isclose(a, b, rel_tol=1e-12), (vid, col)
            else:
                assert a == b, (vid, col)


def test_feature_snapshots_are_stored_and_replaced(loaded_shop: str) -> None:
    conn = store.connect(loaded_shop)
    hi = store.time_range(conn)[1]
    first = fp.build_features(conn)
    assert first.as_of_ms == hi
    again = fp.build_features(conn)
    assert hi in store.snapshots(conn)
    assert len(store.read_user_features(conn, hi)) == len(first.users) == len(again.users)
    items = store.read_item_features(conn, hi)
    assert len(items) == len(first.items)
    assert items["pop_all"].sum() == store.event_count(conn)
    assert len(store.read_item_pairs(conn, hi)) == len(first.pairs) > 0


def test_features_on_an_empty_store_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NoDataError, match="no events: run `retailrec etl` first"):
        fp.build_features(store.connect(get_settings().feature_store))


def test_item_categories_take_the_last_numeric_value(tmp_path: Path) -> None:
    conn = store.connect(get_settings().feature_store)
    props = pd.DataFrame(
        {
            "timestamp": [T, T + 5, T, T, T + 1],
            "itemid": [10, 10, 11, 12, 12],
            "property": ["categoryid", "categoryid", "available", "categoryid", "categoryid"],
            "value": ["3", "4", "1", "7", "n/a"],
        }
    )
    store.upsert_item_properties(conn, props)
    latest = fp.item_categories(conn)
    assert latest.to_dict() == {10: 4}  # 11 has no category; 12's latest is not a number
    assert latest.dtype == "int64"
