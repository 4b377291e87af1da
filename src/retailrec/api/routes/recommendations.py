"""Recommendation endpoints.

The hot path is kept lean: the endpoints are ``async`` and compute inline (a recommendation takes
well under a millisecond, less than handing it to a worker thread) and read app state from the
request instead of one dependency per object. Each returns its response model,
:class:`~retailrec.api.schemas.Recommendations`: one definition for the answer and its schema.
"""

from __future__ import annotations

import random
import time
from typing import Annotated, cast

from fastapi import APIRouter, HTTPException, Path, Query, Request

from retailrec.api.deps import RecommenderDep, current_service
from retailrec.api.metrics import Metrics
from retailrec.api.query import QueryModel
from retailrec.api.schemas import (
    MAX_K,
    Recommendations,
    ScoredItem,
    SessionRequest,
    Strategy,
    VisitorQuery,
)
from retailrec.errors import UnknownEntityError
from retailrec.events import MAX_ID
from retailrec.feature_store import store
from retailrec.serving.rules import Rules
from retailrec.serving.service import Answer
from retailrec.serving.store_access import Connections, ServedLog

router = APIRouter(prefix="/v1", tags=["recommendations"])

K = Annotated[int, Query(ge=1, le=MAX_K, description="How many items, 1 to 100.")]
VisitorId = Annotated[int, Path(ge=0, le=MAX_ID)]
ItemId = Annotated[int, Path(ge=0, le=MAX_ID)]
Category = Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only items of this category.")]


def _respond(
    request: Request,
    answer: Answer,
    visitor_id: int | None,
    version: str,
    endpoint: str,
    started: float,
) -> Recommendations:
    # Time first, then 80 random bits (as in a UUIDv7): the served log's key grows at its end
    # instead of landing anywhere in its index.
    rec_id = f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"
    state = request.app.state
    metrics: Metrics = state.metrics
    served_log: ServedLog = state.served_log
    metrics.count_strategy(answer.strategy)
    served_log.put(
        rec_id,
        endpoint,
        visitor_id,
        answer.strategy,
        version,
        answer.items,
        (time.perf_counter() - started) * 1000,
    )
    return Recommendations(
        visitor_id=visitor_id,
        items=[
            ScoredItem(item_id=int(i), score=float(s))
            for i, s in zip(answer.items, answer.scores, strict=True)
        ],
        strategy=cast(Strategy, answer.strategy),
        model_version=version,
        recommendation_id=rec_id,
    )


def _connection(request: Request) -> store.Connection:
    connections: Connections = request.app.state.connections
    return connections.get()


#: The hot route's query, checked in one call (see :mod:`retailrec.api.query`).
VISITOR_QUERY = QueryModel(VisitorQuery)


@router.get(
    "/users/{visitor_id}/recommendations",
    response_model=Recommendations,
    openapi_extra=VISITOR_QUERY.openapi(),
)
async def recommend_for_visitor(visitor_id: VisitorId, request: Request) -> Recommendations:
    """Personalised from the visitor's history as it is now (events posted a moment ago count);
    falls back to their recent session, then to popular items. Unavailable items never appear."""
    started = time.perf_counter()
    served = current_service(request)
    query = VISITOR_QUERY(request)
    rules = Rules(query.exclude_purchased, query.exclude_seen, query.category, query.exclude or ())
    try:
        answer = served.for_visitor(_connection(request), visitor_id, query.k, rules)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(request, answer, visitor_id, served.version, "user", started)


@router.get("/items/{item_id}/similar", response_model=Recommendations)
async def similar_items(
    item_id: ItemId, request: Request, served: RecommenderDep, k: K = 10
) -> Recommendations:
    """Items like this one (item-kNN), topped up with popular items of its category."""
    return _for_item(request, item_id, k, "similar", served)


@router.get("/items/{item_id}/bought-together", response_model=Recommendations)
async def bought_together(
    item_id: ItemId, request: Request, served: RecommenderDep, k: K = 10
) -> Recommendations:
    """Items bought in the same baskets or carted in the same sessions, then similar items."""
    return _for_item(request, item_id, k, "bought_together", served)


def _for_item(
    request: Request, item_id: int, k: int, role: str, served: RecommenderDep
) -> Recommendations:
    started = time.perf_counter()
    try:
        answer = served.for_item(item_id, k, role)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(request, answer, None, served.version, role, started)


@router.post("/sessions/recommendations", response_model=Recommendations)
async def session_recommendations(
    body: SessionRequest, request: Request, served: RecommenderDep
) -> Recommendations:
    """For an anonymous visitor: from the items just viewed (latest last)."""
    started = time.perf_counter()
    answer = served.for_session(body.item_ids, body.k, Rules(exclude_purchased=False))
    return _respond(request, answer, None, served.version, "session", started)


@router.get("/popular", response_model=Recommendations)
def popular(
    request: Request,
    served: RecommenderDep,
    k: K = 10,
    category: Category = None,
    days: Annotated[
        int | None, Query(ge=1, le=3650, description="Count only the last N days of the log.")
    ] = None,
) -> Recommendations:
    """The most popular items, overall or within a category, over all time or the last days.
    (A worker thread serves it: with ``days`` it counts a window of the event log.)"""
    started = time.perf_counter()
    try:
        answer = served.popular(_connection(request), k, category, days)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(request, answer, None, served.version, "popular", started)
