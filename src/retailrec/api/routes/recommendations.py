"""Recommendation endpoints."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from retailrec.api.deps import MetricsDep, ServedDep, ServedLogDep, StoreDep
from retailrec.api.schemas import MAX_ID, MAX_K, Recommendations, ScoredItem, SessionRequest
from retailrec.api.service import Answer, Rules, UnknownEntityError

router = APIRouter(prefix="/v1", tags=["recommendations"])

K = Annotated[int, Query(ge=1, le=MAX_K, description="How many items, 1 to 100.")]
VisitorId = Annotated[int, Path(ge=0, le=MAX_ID)]
ItemId = Annotated[int, Path(ge=0, le=MAX_ID)]
Category = Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only items of this category.")]


def _respond(
    answer: Answer,
    visitor_id: int | None,
    version: str,
    endpoint: str,
    started: float,
    served_log: ServedLogDep,
    metrics: MetricsDep,
) -> Recommendations:
    rec_id = uuid.uuid4().hex
    metrics.strategy.labels(strategy=answer.strategy).inc()
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
            ScoredItem(item_id=i, score=float(s))
            for i, s in zip(answer.items, answer.scores, strict=True)
        ],
        strategy=answer.strategy,  # type: ignore[arg-type]
        model_version=version,
        recommendation_id=rec_id,
    )


@router.get("/users/{visitor_id}/recommendations", response_model=Recommendations)
def recommend_for_visitor(
    visitor_id: VisitorId,
    served: ServedDep,
    connections: StoreDep,
    served_log: ServedLogDep,
    metrics: MetricsDep,
    k: K = 10,
    exclude_purchased: bool = True,
    exclude_seen: bool = False,
    category: Category = None,
    exclude: Annotated[
        list[Annotated[int, Query(ge=0, le=MAX_ID)]] | None,
        Query(max_length=1000, description="Item ids never to return."),
    ] = None,
) -> Recommendations:
    """Personalised from the visitor's history as it is now (events posted a moment ago count);
    falls back to their recent session, then to popular items. Unavailable items never appear."""
    started = time.perf_counter()
    rules = Rules(exclude_purchased, exclude_seen, category, exclude or ())
    try:
        answer = served.for_visitor(connections.get(), visitor_id, k, rules)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(answer, visitor_id, served.version, "user", started, served_log, metrics)


@router.get("/items/{item_id}/similar", response_model=Recommendations)
def similar_items(
    item_id: ItemId, served: ServedDep, served_log: ServedLogDep, metrics: MetricsDep, k: K = 10
) -> Recommendations:
    """Items like this one (item-kNN), topped up with popular items of its category."""
    return _for_item(item_id, k, "similar", served, served_log, metrics)


@router.get("/items/{item_id}/bought-together", response_model=Recommendations)
def bought_together(
    item_id: ItemId, served: ServedDep, served_log: ServedLogDep, metrics: MetricsDep, k: K = 10
) -> Recommendations:
    """Items bought in the same baskets or carted in the same sessions, then similar items."""
    return _for_item(item_id, k, "bought_together", served, served_log, metrics)


def _for_item(
    item_id: int,
    k: int,
    role: str,
    served: ServedDep,
    served_log: ServedLogDep,
    metrics: MetricsDep,
) -> Recommendations:
    started = time.perf_counter()
    try:
        answer = served.for_item(item_id, k, role)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(answer, None, served.version, role, started, served_log, metrics)


@router.post("/sessions/recommendations", response_model=Recommendations)
def session_recommendations(
    body: SessionRequest, served: ServedDep, served_log: ServedLogDep, metrics: MetricsDep
) -> Recommendations:
    """For an anonymous visitor: from the items just viewed (latest last)."""
    started = time.perf_counter()
    answer = served.for_session(body.item_ids, body.k, Rules(exclude_purchased=False))
    return _respond(answer, None, served.version, "session", started, served_log, metrics)


@router.get("/popular", response_model=Recommendations)
def popular(
    served: ServedDep,
    connections: StoreDep,
    served_log: ServedLogDep,
    metrics: MetricsDep,
    k: K = 10,
    category: Category = None,
    days: Annotated[
        int | None, Query(ge=1, le=3650, description="Count only the last N days of the log.")
    ] = None,
) -> Recommendations:
    """The most popular items, overall or within a category, over all time or the last days."""
    started = time.perf_counter()
    try:
        answer = served.popular(connections.get(), k, category, days)
    except UnknownEntityError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return _respond(answer, None, served.version, "popular", started, served_log, metrics)
