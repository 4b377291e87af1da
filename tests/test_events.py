"""The ground floor: one confidence function, one shop clock, and everything that reads them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retailrec import events
from retailrec.api.main import create_app
from retailrec.config import Settings
from retailrec.data_pipeline import feature_pipeline as fp
from retailrec.events import event_codes
from retailrec.feature_store import store
from retailrec.models import Dataset, make_model
from retailrec.models.bundle import ModelBundle
from retailrec.models.two_tower import training_examples
from retailrec.serving.service import HISTORY_LIMIT, RecommendationService
from tests.utils.factories import Shop, events_frame, loaded_settings
from tests.utils.postgres import suite_store

DAY = events.DAY_MS


def test_confidence_weighs_by_type_and_halves_per_half_life() -> None:
    weights = events.code_weights({"view": 1.0, "addtocart": 4.0, "transaction": 8.0})
    codes = np.array([events.VIEW, events.ADDTOCART, events.TRANSACTION, -1, events.VIEW])
    now = 100 * DAY
    ts = np.array([now, now - 10 * DAY, now - 20 * DAY, now, now + DAY])
    got = events.confidence(codes, ts, now, weights, half_life_days=10.0)
    # A later event counts as a fresh one, never more; code -1 counts nothing.
    np.testing.assert_allclose(got, [1.0, 2.0, 2.0, 0.0, 1.0])


def test_offline_and_serving_build_identical_history_rows(tiny_shop: Shop) -> None:
    """The training matrix row of a visitor and the row serving builds from the store, at the
    same clock, are the same float32 values in the same columns."""
    config = fp.FeatureConfig(
        event_weights={"view": 1.0, "addtocart": 3.0, "transaction": 5.0},
        recency_half_life_days=9.0,
    )
    log = tiny_shop.data.events.drop_duplicates()
    now = int(log["timestamp"].max())
    data = Dataset.from_events(log, config=config)
    pop = make_model("popular").fit(data)
    bundle = ModelBundle.from_dataset(
        dict.fromkeys(("retrieval", "similar", "session", "bought_together", "popular"), pop)
        | {"popular_7d": pop},
        data,
        {
            "model": "popular",
            "event_weights": dict(config.event_weights),
            "recency_half_life_days": config.recency_half_life_days,
        },
    )
    served = RecommendationService(bundle, "1")
    conn = store.connect(":memory:")
    store.append_events(conn, log)
    busy = log.groupby("visitorid").size()
    visitors = busy[(busy > 3) & (busy < HISTORY_LIMIT)].index[:50]
    assert len(visitors) == 50
    for v in visitors:
        online = served.history_row(store.visitor_history(conn, int(v)), now)
        offline = data.matrix[data.user_index(np.array([v]))[0]]
        assert online.indices.tolist() == sorted(offline.indices.tolist())
        np.testing.assert_array_equal(online.data, offline[:, online.indices].toarray().ravel())
    # The two-tower weighs each context event with the same function, as of its target event.
    items, weights, _feats, _targets = training_examples(data, history_len=3)
    ordered = data.events.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    codes = event_codes(ordered["event"])
    user = ordered["user"].to_numpy()
    targets = np.flatnonzero(np.r_[False, user[1:] == user[:-1]])  # events with a context
    for row, pos in enumerate(targets[:300]):
        prev = pos - 1  # the latest context event, in column 0
        assert items[row, 0] == ordered.loc[prev, "item"]
        expected = config.confidence(
            codes[prev : prev + 1],
            ordered["timestamp"].to_numpy()[prev : prev + 1],
            int(ordered.loc[pos, "timestamp"]),
        )
        assert weights[row, 0] == pytest.approx(float(expected[0]), rel=1e-6)


def test_a_kept_history_is_brought_to_a_later_clock_by_one_factor(tiny_shop: Shop) -> None:
    """Serving keeps a history's confidences as of its newest event and multiplies by
    ``decay(time since)``: the same as weighing each event again at the later clock, whether
    an hour, forty days or three years later; a clock behind the history counts as its newest
    event."""
    config = fp.FeatureConfig(recency_half_life_days=9.0)
    log = tiny_shop.data.events.drop_duplicates()
    data = Dataset.from_events(log, config=config)
    pop = make_model("popular").fit(data)
    bundle = ModelBundle.from_dataset(
        dict.fromkeys(
            ("retrieval", "similar", "session", "bought_together", "popular", "popular_7d"), pop
        ),
        data,
        {"model": "popular", "recency_half_life_days": config.recency_half_life_days},
    )
    served = RecommendationService(bundle, "1")
    conn = store.connect(":memory:")
    store.append_events(conn, log)
    busy = log.groupby("visitorid").size()
    for v in busy[busy > 5].index[:40]:
        history = store.visitor_history(conn, int(v))
        kept = served.prepare(history)
        idx = bundle.item_index(history.itemid)
        for later in (0, 3_600_000, 40 * DAY, 3 * 365 * DAY):
            now = kept.newest_ms + later
            conf = config.confidence(history.event_code, history.timestamp, now)
            cols, inverse = np.unique(idx, return_inverse=True)
            expected = np.bincount(inverse, weights=conf).astype(np.float32)
            row = served.history_row(kept, now)
            assert row.indices.tolist() == cols.tolist()
            np.testing.assert_allclose(row.data, expected, rtol=1e-6, atol=0)
        behind = served.history_row(kept, kept.newest_ms - 5 * DAY)
        np.testing.assert_array_equal(behind.data, served.history_row(kept, kept.newest_ms).data)


def test_the_clock_is_the_newest_accepted_event() -> None:
    conn = store.connect(":memory:")
    assert store.shop_clock(conn) is None
    assert store.time_range(conn) == (None, None)
    t = 1_442_000_000_000
    store.append_events(
        conn, events_frame([(t, 1, "view", 5, None), (t - DAY, 2, "view", 6, None)])
    )
    assert store.time_range(conn) == (t - DAY, t)
    # Duplicates and older events move nothing; a newer one moves the clock.
    store.append_events(conn, events_frame([(t, 1, "view", 5, None), (t - 3, 3, "view", 7, None)]))
    assert store.shop_clock(conn) == t
    store.append_events(conn, events_frame([(t + 5, 4, "view", 7, None)]))
    assert store.time_range(conn) == (t - DAY, t + 5)


def test_migration_sets_the_clock_of_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    import sqlite3

    old = sqlite3.connect(path)
    for number, script in enumerate(store.MIGRATIONS[:3], start=1):
        old.executescript(f"BEGIN; {script}\nPRAGMA user_version = {number}; COMMIT;")
    old.executemany(
        "INSERT INTO events (visitorid, timestamp, itemid, event, tx_key) VALUES (?, ?, ?, ?, -1)",
        [(1, 1_500, 3, "view"), (2, 2_500, 3, "view")],
    )
    old.commit()
    old.close()
    conn = store.connect(path)
    assert store.time_range(conn) == (1_500, 2_500)


@pytest.fixture(scope="module")
def old_shop(tmp_path_factory: pytest.TempPathFactory, tiny_shop: Shop) -> Settings:
    """A champion trained on a 2015 log, as a seller with an old export has it."""
    from retailrec import registry
    from retailrec.training.train import TrainConfig, train

    settings = loaded_settings(tmp_path_factory.mktemp("old"), tiny_shop, store_url=suite_store())
    train(settings, TrainConfig(models=("itemknn_bm25",)))
    registry.promote(registry.configure(settings), settings.model_name)
    return settings


def _busy(settings: Settings) -> list[int]:
    with store.open_store(settings.feature_store) as conn:
        log = store.read_events(conn)
    end = log["timestamp"].max()
    recent = log[log["timestamp"] > end - 30 * DAY].groupby("visitorid").size()
    return [int(v) for v in recent[recent >= 4].index[:20]]


def test_a_years_old_log_is_served_personally(old_shop: Settings) -> None:
    """Histories decay from the shop's clock: a 2015 log is not the popularity order for all."""
    with TestClient(create_app(old_shop)) as client:
        popular = [it["item_id"] for it in client.get("/v1/popular?k=10").json()["items"]]
        answers = [
            client.get(f"/v1/users/{v}/recommendations", params={"k": 10}).json()
            for v in _busy(old_shop)
        ]
    personal = [a for a in answers if a["strategy"] == "personalized"]
    assert len(personal) == len(answers) > 10
    # Scores are the model's, far above the popularity tie-break (1e-6).
    assert all(a["items"][0]["score"] > 1e-3 for a in personal)
    assert (
        sum([it["item_id"] for it in a["items"]] != popular for a in personal) >= len(personal) - 1
    )


def test_an_event_dated_tomorrow_is_rejected_and_moves_nothing(
    tmp_path: Path, tiny_shop: Shop, old_shop: Settings
) -> None:
    with TestClient(create_app(old_shop)) as client:
        with store.open_store(old_shop.feature_store) as conn:
            clock = store.time_range(conn)
        visitor = _busy(old_shop)[0]
        before = client.get(f"/v1/users/{visitor}/recommendations?k=10").json()["items"]
        popular = client.get("/v1/popular?k=10&days=7").json()["items"]
        tomorrow = int(time.time() * 1000) + DAY
        long_before = clock[0] - 31 * DAY
        body = client.post(
            "/v1/events",
            json={
                "events": [
                    {"timestamp": tomorrow, "visitorid": visitor, "event": "view", "itemid": 1},
                    {"timestamp": long_before, "visitorid": visitor, "event": "view", "itemid": 1},
                ]
            },
        ).json()
        assert body["accepted"] == 0
        assert [r["reason"] for r in body["rejected"]] == [
            "timestamp in the future (more than 5 minutes past the server's clock)",
            "timestamp more than 30 days before the log's first event",
        ]
        with store.open_store(old_shop.feature_store) as conn:
            assert store.time_range(conn) == clock
        assert client.get(f"/v1/users/{visitor}/recommendations?k=10").json()["items"] == before
        assert client.get("/v1/popular?k=10&days=7").json()["items"] == popular
        # An event a minute past the wall clock is a live shop's clock skew: accepted.
        soon = int(time.time() * 1000) + 60_000
        ok = client.post(
            "/v1/events",
            json={"events": [{"timestamp": soon, "visitorid": 5, "event": "view", "itemid": 1}]},
        ).json()
        assert ok["accepted"] == 1
        with store.open_store(old_shop.feature_store) as conn:
            assert store.shop_clock(conn) == soon
