"""Schemathesis fuzzes the API from its own OpenAPI schema: no input may cause a server error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
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
