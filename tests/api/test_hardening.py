"""Input that once gave a 5xx or grew the server's state: each answers a 4xx and stays bounded."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from retailrec.api.main import create_app
from retailrec.config import Settings
from tests.api.conftest import KEY
from tests.utils.factories import Shop, loaded_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(trained: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(trained), raise_server_exceptions=False) as c:
        yield c


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/sessions/recommendations", '{"item_ids": [NaN]}'),
        ("/v1/sessions/recommendations", '{"item_ids": [1], "k": Infinity}'),
        ("/v1/sessions/recommendations", '{"item_ids": [-Infinity]}'),
        ("/v1/events", '{"events": NaN}'),
        ("/v1/sessions/recommendations", '{"item_ids": [1e999]}'),
    ],
)
def test_non_finite_numbers_in_a_body_are_a_422(client: TestClient, path: str, body: str) -> None:
    """JSON has no NaN or Infinity, but Python's parser reads them: the 422 must still render."""
    answer = client.post(path, content=body, headers=JSON)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all("msg" in error for error in detail)


def test_a_non_finite_timestamp_in_an_event_is_a_rejected_row(client: TestClient) -> None:
    body = '{"events": [{"timestamp": NaN, "visitorid": 1, "event": "view", "itemid": 1}]}'
    answer = client.post("/v1/events", content=body, headers=JSON)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": [{"index": 0, "reason": "missing timestamp"}],
    }


def test_a_non_ascii_api_key_is_refused_not_a_crash(client: TestClient) -> None:
    for key in ("kéy", "\u00ff" * 40, KEY + "\u00e9"):
        answer = client.post("/v1/admin/reload", headers={"X-API-Key": key.encode("latin-1")})
        assert answer.status_code == 403, (key, answer.text)
    assert client.post("/v1/admin/reload", headers={"X-API-Key": KEY}).status_code == 200


def test_made_up_http_methods_do_not_grow_the_metrics(client: TestClient) -> None:
    def series() -> int:
        text = client.get("/metrics").text
        return sum(1 for line in text.splitlines() if line.startswith("retailrec_requests_total"))

    client.request("FOO0", "/health")  # the "other" method's label set, seen once
    series()  # and /metrics' own
    before = series()
    for i in range(200):
        assert client.request(f"FOO{i}", "/health").status_code == 405
        client.request(f"BAR{i}", f"/nowhere/{i}")
    assert series() == before + 1  # "/nowhere" is unmatched: one new label set, not 400
    text = client.get("/metrics").text
    assert 'method="other"' in text and "FOO1" not in text


def test_reloads_leave_no_temporary_folder(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each load of a version downloads its bundle: the download is gone once it is loaded."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for _ in range(3):
        assert client.post("/v1/admin/reload", headers={"X-API-Key": KEY}).status_code == 200
    assert client.post("/v1/admin/reload?version=99", headers={"X-API-Key": KEY}).status_code == 409
    assert [p.name for p in scratch.iterdir() if p.name.startswith("retailrec-v")] == []


def test_a_store_that_takes_no_writes_is_a_503_and_not_ready(
    trained: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only store (as a full or read-only disk would be): writes answer 503 with the
    reason, /ready says so, the served log counts what it could not write; all recover."""
    from retailrec.serving import store_access

    connect = store_access.store.connect
    event = {"timestamp": 0, "visitorid": 7, "event": "view", "itemid": 1}
    with TestClient(create_app(trained)) as c:
        event["timestamp"] = int(c.get("/v1/model").json()["data_end_ms"])
        app = c.app.state  # type: ignore[attr-defined]
        app.store_health.probe_s = 0.0
        assert c.get("/ready").status_code == 200
        monkeypatch.setattr(
            store_access.store, "connect", lambda path, **kw: connect(path, **kw, read_only=True)
        )
        app.connections.close()  # worker threads reopen: read-only now
        answer = c.post("/v1/events", json={"events": [event]})
        assert answer.status_code == 503
        assert re.search("read-?only", answer.json()["detail"])  # SQLite's word, PostgreSQL's
        assert "nothing of this batch" in answer.json()["detail"]
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["store_writable"] is False
        assert re.search("read-?only", ready.json()["store_error"])
        assert c.get("/v1/users/7/recommendations").status_code == 200  # reads still serve
        log = app.served_log
        before = log.dropped
        log.put("r1", "user", 7, "popular", "1", [1, 2], 1.0)
        flushed = log.flush(app.connections.get())  # ours, and the answer served just above
        assert flushed >= 1 and log.dropped == before + flushed
        assert f"retailrec_served_log_dropped {before + flushed}.0" in c.get("/metrics").text
        monkeypatch.undo()
        app.connections.close()
        assert c.get("/ready").status_code == 200  # the probe write succeeds again
        again = c.post("/v1/events", json={"events": [event]})
        assert (
            again.status_code == 200 and again.json()["accepted"] + again.json()["duplicates"] == 1
        )


def test_an_events_key_and_a_rate_guard_the_writes(trained: Settings) -> None:
    """With RETAILREC_EVENTS_KEY set only the shop's servers post events (the API key works
    too); past RETAILREC_EVENTS_RATE_PER_S a client waits (429, Retry-After), and nothing of
    a refused batch is stored."""
    guarded = trained.model_copy(
        update={"events_key": "ev-key", "events_rate_per_s": 100.0, "events_burst": 1000}
    )
    with TestClient(create_app(guarded)) as c:
        end = int(c.get("/v1/model").json()["data_end_ms"])
        batch = [
            {"timestamp": end - i, "visitorid": 424242, "event": "view", "itemid": 1}
            for i in range(600)
        ]
        assert c.post("/v1/events", json={"events": batch[:1]}).status_code == 401
        wrong = c.post("/v1/events", json={"events": batch[:1]}, headers={"X-Events-Key": "no"})
        assert wrong.status_code == 403
        first = c.post("/v1/events", json={"events": batch}, headers={"X-Events-Key": "ev-key"})
        assert first.status_code == 200 and first.json()["accepted"] == 600
        again = c.post("/v1/events", json={"events": batch}, headers={"X-API-Key": "x"})
        assert again.status_code == 401  # the API key opens it only in X-Events-Key
        over = c.post("/v1/events", json={"events": batch}, headers={"X-Events-Key": KEY})
        assert over.status_code == 429, over.text  # 600 + 600 > a burst of 1,000
        assert int(over.headers["Retry-After"]) >= 2
        assert "RETAILREC_EVENTS_RATE_PER_S" in over.json()["detail"]
        assert 'retailrec_events_total{outcome="limited"} 600.0' in c.get("/metrics").text
    with TestClient(create_app(trained)) as open_api:  # no key set: local use stays easy
        one = open_api.post("/v1/events", json={"events": batch[:1]})
        assert one.status_code == 200 and one.json()["duplicates"] == 1  # stored above


def test_the_api_serves_only_what_the_gate_approved(tmp_path: Path, tiny_shop: Shop) -> None:
    """MLflow's UI can move the champion alias and edit tags: the API still serves only a
    version whose approval checks out under the registry key, with the files it registered."""
    from retailrec import registry
    from retailrec.training.train import TrainConfig, train

    settings = loaded_settings(tmp_path, tiny_shop, api_key=KEY)
    train(settings, TrainConfig(models=("popular",)))
    client = registry.configure(settings)
    name = settings.model_name
    assert registry.promote(client, name).promoted
    second = train(settings, TrainConfig(models=("itemknn_bm25",)))
    one, two = client.get_model_version(name, "1"), client.get_model_version(name, second.version)
    assert registry.approved(client, one) and not registry.approved(client, two)
    assert (tmp_path / "data" / "registry.key").stat().st_mode & 0o077 == 0  # owner-only
    admin = {"X-API-Key": KEY}
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/model").json()["version"] == "1"
        client.set_registered_model_alias(name, registry.CHAMPION, second.version)  # by hand
        moved = c.post("/v1/admin/reload", headers=admin)
        assert moved.status_code == 409 and "no valid approval" in moved.json()["detail"]
        for forged in ("0" * 64, one.tags[registry.APPROVAL_TAG]):  # made up; another version's
            client.set_model_version_tag(name, second.version, registry.APPROVAL_TAG, forged)
            assert c.post("/v1/admin/reload", headers=admin).status_code == 409
        assert c.get("/v1/model").json()["version"] == "1"  # the old champion kept serving
        client.set_registered_model_alias(name, registry.CHAMPION, "1")
        for path in settings.mlartifacts_dir.rglob("bundle.json"):  # files changed on disk
            path.write_bytes(path.read_bytes() + b" ")
        changed = c.post("/v1/admin/reload", headers=admin)
        assert changed.status_code == 409 and "checksum mismatch" in changed.json()["detail"]
        assert c.get("/v1/model").json()["version"] == "1"
