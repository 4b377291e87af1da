"""The hot route's query, read as one model (retailrec.api.query): the same documentation, the
same values and the same 422s as the parameters FastAPI declares one by one."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient

from retailrec.api.main import _validation_error, create_app
from retailrec.api.query import QueryModel
from retailrec.api.routes.recommendations import VISITOR_QUERY
from retailrec.api.schemas import MAX_K, VisitorQuery
from retailrec.events import MAX_ID

PATH = "/v1/users/{visitor_id}/recommendations"


def _declared() -> FastAPI:
    """The route's query as FastAPI parameters, declared one by one (the code before the model)
    and echoed back."""
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/declared")
    async def declared(
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many items, 1 to 100.")] = 10,
        exclude_purchased: bool = True,
        exclude_seen: bool = False,
        category: Annotated[
            int | None, Query(ge=0, le=MAX_ID, description="Only items of this category.")
        ] = None,
        exclude: Annotated[
            list[Annotated[int, Query(ge=0, le=MAX_ID)]] | None,
            Query(max_length=1000, description="Item ids never to return."),
        ] = None,
    ) -> dict[str, Any]:
        return VisitorQuery(
            k=k,
            exclude_purchased=exclude_purchased,
            exclude_seen=exclude_seen,
            category=category,
            exclude=exclude,
        ).model_dump()

    @app.get("/model", openapi_extra=VISITOR_QUERY.openapi())
    async def model(request: Request) -> dict[str, Any]:
        return VISITOR_QUERY(request).model_dump()

    return app


QUERIES = [
    "",
    "k=25&exclude_seen=true&exclude_purchased=0",
    "k=5&k=7",  # the last value, as FastAPI reads a repeated scalar
    "exclude=3&exclude=4&category=12&unknown=1",
    "exclude_seen=yes&exclude_purchased=off",
    # Bad: each gives FastAPI's 422, with the same locations and messages.
    "k=0",
    "k=101",
    "k=abc",
    "k=",
    "k=1.5",
    "k=NaN",
    "exclude_seen=maybe",
    "category=-1",
    f"category={MAX_ID + 1}",
    "category=99999999999999999999999",
    "exclude=1&exclude=-2&exclude=x",
    "&".join(["exclude=1"] * 1001),
    "k=0&category=-1&exclude_seen=2",
]


@pytest.mark.parametrize("query", QUERIES)
def test_the_query_model_answers_as_the_declared_parameters(query: str) -> None:
    client = TestClient(_declared())
    declared = client.get(f"/declared?{query}")
    model = client.get(f"/model?{query}")
    assert (model.status_code, model.json()) == (declared.status_code, declared.json())


def test_bad_queries_are_422_with_their_parameter_named() -> None:
    client = TestClient(_declared())
    answer = client.get("/model?k=0&exclude=1&exclude=-2")
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["detail"]] == [["query", "k"], ["query", "exclude", 1]]


def test_the_route_documents_the_same_parameters_as_declared_ones() -> None:
    declared = _declared().openapi()["paths"]["/declared"]["get"]["parameters"]
    served = create_app(load_model=False).openapi()["paths"][PATH]["get"]["parameters"]
    assert served[0]["name"] == "visitor_id" and served[0]["in"] == "path"
    assert served[1:] == declared


def test_a_field_of_list_type_takes_every_value_and_others_the_last() -> None:
    q = QueryModel(VisitorQuery)
    assert q.lists == {"exclude"}
    assert q.fields == ("k", "exclude_purchased", "exclude_seen", "category", "exclude")
