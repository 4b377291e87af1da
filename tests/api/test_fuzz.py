"""Schemathesis fuzzes the API from its own OpenAPI schema: no input may cause a server error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from retailrec.api.main import create_app
from retailrec.config import Settings
from tests.api.conftest import KEY

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 25  # bounds the run: ~11 operations x 25 cases, a few seconds


@pytest.fixture(scope="module")
def app(trained: Settings) -> Iterator[FastAPI]:
    application = create_app(trained)
    with TestClient(application):  # runs the lifespan: the champion is loaded before fuzzing
        yield application


def test_no_input_causes_a_server_error(app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error], headers={"X-API-Key": KEY})

        fuzz()


#: JSON numbers that Python's parser reads but JSON cannot hold, or no int64 can.
ODD_NUMBERS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    str(2**64),
    str(-(2**70)),
    "1e-400",
)
BODIES = {
    "/v1/sessions/recommendations": (
        '{{"item_ids": [{n}], "k": 5}}',
        '{{"item_ids": [1], "k": {n}}}',
    ),
    "/v1/events": (
        '{{"events": {n}}}',
        '{{"events": [{{"timestamp": {n}, "visitorid": 1, "event": "view", "itemid": 1}}]}}',
        '{{"events": [{{"timestamp": 1, "visitorid": {n}, "event": "view", "itemid": 1}}]}}',
    ),
}


def test_odd_numbers_in_bodies_never_cause_a_server_error(app: FastAPI) -> None:
    """NaN, Infinity and numbers past int64, wherever a number goes: a 4xx or a rejected row."""
    client = TestClient(app, raise_server_exceptions=False)
    for path, templates in BODIES.items():
        for template in templates:
            for number in ODD_NUMBERS:
                body = template.format(n=number)
                answer = client.post(
                    path, content=body, headers={"Content-Type": "application/json"}
                )
                assert answer.status_code < 500, (path, body, answer.text)
    for number in ODD_NUMBERS:  # and in query strings and paths
        assert client.get(f"/v1/users/{number}/recommendations").status_code < 500
        assert client.get(f"/v1/popular?k={number}").status_code < 500


@given(
    method=st.text(
        alphabet=st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=12
    ),
    key=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
    path=st.sampled_from(["/health", "/v1/admin/reload", "/v1/events", "/nowhere", "/metrics"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_made_up_methods_and_non_ascii_headers_never_cause_a_server_error(
    app: FastAPI, method: str, key: str, path: str
) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    headers = {"X-API-Key": key.encode("latin-1"), "X-Events-Key": key.encode("latin-1")}
    answer = client.request(method, path, headers=headers)
    assert answer.status_code < 500, (method, path, key, answer.text)
