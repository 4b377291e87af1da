"""The API against a champion trained on a tiny synthetic shop, loaded from the registry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from retailrec import registry
from retailrec.api.main import create_app
from retailrec.config import Settings
from retailrec.feature_store import store
from retailrec.serving import history_cache
from tests.api.conftest import KEY
from tests.utils.server import serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(trained: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(trained)) as c:
        yield c


@pytest.fixture(scope="module")
def known(trained: Settings) -> pd.DataFrame:
    with store.open_store(trained.feature_store) as conn:
        return store.read_events(conn)


def _busy_visitor(events: pd.DataFrame, kind: str = "view", minimum: int = 5) -> int:
    counts = events[events["event"] == kind].groupby("visitorid").size()
    return int(counts[counts >= minimum].index[0])


def _check_answer(body: dict[str, object], k: int) -> list[int]:
    items = [it["item_id"] for it in body["items"]]  # type: ignore[union-attr,index]
    assert len(items) == k
    assert len(set(items)) == k
    scores = [it["score"] for it in body["items"]]  # type: ignore[union-attr,index]
    assert all(np.isfinite(scores))
    assert body["model_version"] == "1"
    assert len(str(body["recommendation_id"])) == 32
    return items


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {
        "ready": True,
        "model_version": "1",
        "store_writable": True,
        "store_error": None,
    }
    info = client.get("/v1/model").json()
    assert info["version"] == "1"
    assert info["model"] == "als"
    assert info["metrics"]["ndcg_at_10"] > 0
    assert info["trained_at_ms"] > 0


def test_personalized_for_a_known_visitor(
    client: TestClient, known: pd.DataFrame, trained: Settings
) -> None:
    visitor = _busy_visitor(known)
    body = client.get(f"/v1/users/{visitor}/recommendations", params={"k": 12}).json()
    items = _check_answer(body, 12)
    assert body["strategy"] == "personalized"
    assert body["visitor_id"] == visitor
    # Unavailable items are never recommended.
    catalogue = pd.read_parquet(trained.processed_dir / "items.parquet").set_index("itemid")
    assert not catalogue.reindex(items)["available"].eq(False).any()


def test_purchased_items_are_excluded_by_default(client: TestClient, known: pd.DataFrame) -> None:
    buyer = int(known.loc[known["event"] == "transaction", "visitorid"].iloc[0])
    bought = set(
        known.loc[(known["visitorid"] == buyer) & (known["event"] == "transaction"), "itemid"]
    )
    items = {
        it["item_id"]
        for it in client.get(f"/v1/users/{buyer}/recommendations?k=100").json()["items"]
    }
    assert not items & bought
    allowed = client.get(
        f"/v1/users/{buyer}/recommendations", params={"k": 100, "exclude_purchased": False}
    ).json()
    assert len(allowed["items"]) == 100


def test_business_rules_seen_category_and_exclude(
    client: TestClient, known: pd.DataFrame, trained: Settings
) -> None:
    visitor = _busy_visitor(known)
    seen = set(known.loc[known["visitorid"] == visitor, "itemid"])
    body = client.get(
        f"/v1/users/{visitor}/recommendations", params={"k": 30, "exclude_seen": True}
    ).json()
    assert not {it["item_id"] for it in body["items"]} & seen
    catalogue = pd.read_parquet(trained.processed_dir / "items.parquet").set_index("itemid")
    category = int(catalogue["categoryid"].value_counts().index[0])
    body = client.get(
        f"/v1/users/{visitor}/recommendations", params={"k": 5, "category": category}
    ).json()
    assert set(catalogue.loc[[it["item_id"] for it in body["items"]], "categoryid"]) == {category}
    first = client.get(f"/v1/users/{visitor}/recommendations?k=5").json()["items"]
    banned = [first[0]["item_id"], first[1]["item_id"]]
    again = client.get(
        f"/v1/users/{visitor}/recommendations", params={"k": 5, "exclude": banned}
    ).json()
    assert not {it["item_id"] for it in again["items"]} & set(banned)
    assert client.get(f"/v1/users/{visitor}/recommendations?category=987654321").status_code == 404


def test_a_cold_visitor_gets_popular_items(client: TestClient) -> None:
    body = client.get("/v1/users/999999999/recommendations?k=10").json()
    assert body["strategy"] == "popular"
    popular = client.get("/v1/popular?k=10").json()
    assert popular["strategy"] == "popular"
    assert len(popular["items"]) == 10


def test_fresh_events_change_the_next_answer(client: TestClient, known: pd.DataFrame) -> None:
    visitor = 888_000_001
    before = client.get(f"/v1/users/{visitor}/recommendations?k=10").json()
    assert before["strategy"] == "popular"
    items = known["itemid"].value_counts().index[20:25].tolist()
    now = int(time.time() * 1000)
    events = [
        {
            "timestamp": now - 60_000 + i,
            "visitorid": visitor,
            "event": "view",
            "itemid": int(it),
            "transactionid": None,
        }
        for i, it in enumerate(items)
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 5
    after = client.get(f"/v1/users/{visitor}/recommendations?k=10").json()
    assert after["strategy"] == "personalized"
    assert [it["item_id"] for it in after["items"]] != [it["item_id"] for it in before["items"]]


def _gauge(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


def test_an_active_visitors_kept_history_follows_late_events(
    client: TestClient, known: pd.DataFrame
) -> None:
    """An active visitor's history is kept between requests (a hit in /metrics), and an event
    posted with a time before their newest one still changes the next answer."""
    busy = known.groupby("visitorid").size()
    visitor = int(busy[busy >= history_cache.MIN_EVENTS].index[0])
    url = f"/v1/users/{visitor}/recommendations?k=10"
    first = client.get(url).json()
    hits = _gauge(client.get("/metrics").text, 'retailrec_history_cache{measure="hits"}')
    assert client.get(url).json()["items"] == first["items"]
    text = client.get("/metrics").text
    assert _gauge(text, 'retailrec_history_cache{measure="hits"}') == hits + 1
    assert _gauge(text, 'retailrec_history_cache{measure="kept"}') >= 1
    top = first["items"][0]["item_id"]
    newest = int(known.loc[known["visitorid"] == visitor, "timestamp"].max())
    late = {
        "timestamp": newest - 1,
        "visitorid": visitor,
        "event": "transaction",
        "itemid": top,
        "transactionid": 990_000_001,
    }
    assert client.post("/v1/events", json={"events": [late]}).json()["accepted"] == 1
    after = client.get(url).json()
    assert top not in [it["item_id"] for it in after["items"]]  # bought: excluded by default


def test_session_similar_bought_together_popular(client: TestClient, known: pd.DataFrame) -> None:
    item = int(known["itemid"].value_counts().index[0])
    session = client.post("/v1/sessions/recommendations", json={"item_ids": [item], "k": 7}).json()
    assert session["strategy"] == "session"
    assert item not in _check_answer(session, 7)
    similar = client.get(f"/v1/items/{item}/similar?k=6").json()
    assert similar["strategy"] == "similar"
    assert item not in _check_answer(similar, 6)
    bought = known.loc[known["event"] == "transaction", "itemid"].value_counts().index[0]
    together = client.get(f"/v1/items/{int(bought)}/bought-together?k=4").json()
    _check_answer(together, 4)
    recent = client.get("/v1/popular", params={"k": 5, "days": 7}).json()
    _check_answer(recent, 5)
    assert client.get("/v1/items/123456789/similar").status_code == 404
    unknown_session = client.post(
        "/v1/sessions/recommendations", json={"item_ids": [123456789], "k": 3}
    ).json()
    assert unknown_session["strategy"] == "popular"
    assert len(unknown_session["items"]) == 3


def test_events_are_validated_deduplicated_and_counted(client: TestClient) -> None:
    t = int(time.time() * 1000) - 5_000
    batch = [
        {"timestamp": t, "visitorid": 777, "event": "view", "itemid": 1, "transactionid": None},
        {"timestamp": t, "visitorid": 777, "event": "click", "itemid": 1, "transactionid": None},
        {"timestamp": t + 1, "visitorid": 777, "event": "transaction", "itemid": 1},
        {"timestamp": t + 2, "visitorid": -1, "event": "view", "itemid": 1},
        {"timestamp": t // 1000, "visitorid": 777, "event": "view", "itemid": 2},
        {
            "timestamp": t + 3,
            "visitorid": 777,
            "event": "addtocart",
            "itemid": 1,
            "transactionid": None,
        },
    ]
    first = client.post("/v1/events", json={"events": batch}).json()
    assert first["accepted"] == 2
    assert first["duplicates"] == 0
    assert [(r["index"], r["reason"]) for r in first["rejected"]] == [
        (1, "unknown event type"),
        (2, "transaction without transactionid"),
        (3, "negative visitorid"),
        (4, "timestamp in seconds, not milliseconds"),
    ]
    again = client.post("/v1/events", json={"events": batch}).json()
    assert (again["accepted"], again["duplicates"], len(again["rejected"])) == (0, 2, 4)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "fragment"),
    [
        ("get", "/v1/users/1/recommendations?k=0", {}, "greater than or equal to 1"),
        ("get", "/v1/users/1/recommendations?k=101", {}, "less than or equal to 100"),
        ("get", "/v1/popular?k=500", {}, "less than or equal to 100"),
        (
            "post",
            "/v1/sessions/recommendations",
            {"json": {"item_ids": list(range(101))}},
            "at most 100 items",
        ),
        ("post", "/v1/sessions/recommendations", {"json": {"item_ids": []}}, "at least 1 item"),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"timestamp": 1}] * 1001}},
            "at most 1000 items",
        ),
        (
            "post",
            "/v1/events",
            {"content": b"x" * 1_000_001, "headers": {"content-type": "application/json"}},
            "request body over",
        ),
        (  # no Content-Length: a chunked body is counted as it arrives
            "post",
            "/v1/events",
            {
                "content": iter([b"x" * 400_000] * 3),
                "headers": {"content-type": "application/json"},
            },
            "request body over",
        ),
    ],
)
def test_limits_answer_422_with_a_clear_message(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], fragment: str
) -> None:
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == 422
    assert fragment in response.text


def test_admin_reload_needs_the_key(client: TestClient) -> None:
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers={"X-API-Key": "wrong"}).status_code == 403
    ok = client.post("/v1/admin/reload", headers={"X-API-Key": KEY})
    assert ok.status_code == 200
    assert ok.json() == {"reloaded": True, "version": "1", "previous": "1", "announced": True}


def test_admin_is_disabled_without_a_configured_key(trained: Settings) -> None:
    settings = trained.model_copy(update={"api_key": None})
    with TestClient(create_app(settings)) as c:
        response = c.post("/v1/admin/reload", headers={"X-API-Key": KEY})
    assert response.status_code == 403
    assert "disabled" in response.json()["detail"]


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    client: TestClient, trained: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text("{}")
    mlflow_client = registry.configure(trained)
    with mlflow.start_run(run_name="broken"):
        version = registry.register_bundle(mlflow_client, trained, broken, {"model": "broken"})
    response = client.post(f"/v1/admin/reload?version={version}", headers={"X-API-Key": KEY})
    assert response.status_code == 409
    assert "refused" in response.json()["detail"]
    assert client.get("/ready").json()["model_version"] == "1"
    assert client.get("/v1/users/1/recommendations").status_code == 200


def test_reload_under_concurrent_requests_drops_nothing(
    client: TestClient, known: pd.DataFrame
) -> None:
    visitors = known["visitorid"].drop_duplicates().head(50).tolist()
    failures: list[object] = []
    done = threading.Event()

    def hammer() -> None:
        i = 0
        while not done.is_set():
            r = client.get(f"/v1/users/{visitors[i % len(visitors)]}/recommendations?k=5")
            if r.status_code != 200 or len(r.json()["items"]) != 5:
                failures.append((r.status_code, r.text[:200]))
            i += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert client.post("/v1/admin/reload", headers={"X-API-Key": KEY}).status_code == 200
    done.set()
    for t in threads:
        t.join()
    assert failures == []


def test_metrics_and_the_served_log(client: TestClient, trained: Settings) -> None:
    unknown = client.get("/v1/users/999999999/recommendations?k=3")  # no history: popular
    assert unknown.json()["strategy"] == "popular"
    text = client.get("/metrics").text
    assert (
        'retailrec_requests_total{method="GET",route="/v1/users/{visitor_id}/recommendations",status="200"}'
        in text
    )
    assert "retailrec_request_latency_seconds_bucket" in text
    assert 'retailrec_recommendations_total{strategy="popular"}' in text
    assert 'retailrec_model_info{model="als",version="1"} 1.0' in text
    deadline = time.time() + 5
    served = pd.DataFrame()
    while time.time() < deadline and served.empty:
        with store.open_store(trained.feature_store) as conn:
            served = store.read_served(conn)
        time.sleep(0.1)
    assert not served.empty
    assert set(served.columns) >= {
        "recommendation_id",
        "strategy",
        "model_version",
        "items",
        "latency_ms",
    }


def test_not_ready_without_a_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json() == {
            "ready": False,
            "model_version": None,
            "store_writable": True,
            "store_error": None,
        }
        answer = c.get("/v1/users/1/recommendations")
        assert answer.status_code == 503
        assert "no model loaded" in answer.json()["detail"]


def test_openapi_has_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "examples" in spec["components"]["schemas"]["EventsRequest"]
    assert client.get("/docs").status_code == 200


def test_a_real_server_answers_concurrent_requests(trained: Settings, known: pd.DataFrame) -> None:
    """Under uvicorn, dependencies and endpoints may run on different worker threads: each
    request must still get a connection of its own thread (TestClient does not show this)."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    with serving(trained) as base:
        visitors = known["visitorid"].drop_duplicates().head(40).tolist()

        def fetch(v: int) -> int:
            with urllib.request.urlopen(
                f"{base}/v1/users/{v}/recommendations?k=5", timeout=30
            ) as r:
                return int(r.status)

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(fetch, visitors * 5))
        assert statuses == [200] * len(statuses)
