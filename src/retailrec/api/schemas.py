"""Request and response bodies of the API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from retailrec.events import MAX_ID

MAX_K = 100

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
MAX_SESSION_ITEMS = 100
MAX_EVENTS = 1000

Strategy = Literal["personalized", "session", "similar", "popular"]


class ScoredItem(BaseModel):
    item_id: int
    score: float


class Recommendations(BaseModel):
    """Never empty while the (filtered) catalogue is not."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "visitor_id": 257597,
                    "items": [
                        {"item_id": 355908, "score": 0.83},
                        {"item_id": 248676, "score": 0.79},
                    ],
                    "strategy": "personalized",
                    "model_version": "3",
                    "recommendation_id": "6f1c2d0e9a8b4c7d8e9f0a1b2c3d4e5f",
                }
            ]
        }
    )

    visitor_id: int | None
    items: list[ScoredItem]
    strategy: Strategy
    model_version: str
    recommendation_id: str


class VisitorQuery(BaseModel):
    """The query of ``GET /v1/users/{visitor_id}/recommendations``, read in one check by
    :class:`retailrec.api.query.QueryModel`."""

    k: int = Field(default=10, ge=1, le=MAX_K, description="How many items, 1 to 100.")
    exclude_purchased: bool = True
    exclude_seen: bool = False
    category: int | None = Field(
        default=None, ge=0, le=MAX_ID, description="Only items of this category."
    )
    exclude: list[Id] | None = Field(
        default=None, max_length=1000, description="Item ids never to return."
    )


class SessionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"item_ids": [355908, 248676], "k": 10}]}
    )

    item_ids: list[Id] = Field(
        min_length=1, max_length=MAX_SESSION_ITEMS, description="Items just viewed, oldest first."
    )
    k: int = Field(default=10, ge=1, le=MAX_K)


class EventsRequest(BaseModel):
    """Events in Retailrocket's format; each is validated with the ETL's own schema."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "timestamp": 1442004589439,
                            "visitorid": 257597,
                            "event": "view",
                            "itemid": 355908,
                            "transactionid": None,
                        },
                        {
                            "timestamp": 1442004917175,
                            "visitorid": 257597,
                            "event": "transaction",
                            "itemid": 355908,
                            "transactionid": 4000,
                        },
                    ]
                }
            ]
        },
    )

    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS)


class RejectedEvent(BaseModel):
    index: int
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedEvent]


class ModelInfo(BaseModel):
    model_name: str
    version: str
    model: str
    params: dict[str, Any]
    trained_at_ms: int | None
    loaded_at_ms: int
    data_end_ms: int | None
    metrics: dict[str, float]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    """Ready only with a model loaded and a feature store that takes writes."""

    ready: bool
    model_version: str | None
    store_writable: bool
    store_error: str | None = None


class ReloadResponse(BaseModel):
    reloaded: bool
    version: str
    previous: str | None
    announced: bool = Field(
        description="Announced in the feature store, for the other workers and replicas to"
        " follow (false when the store could not take it: this process alone reloaded)."
    )


class RetrainStarted(BaseModel):
    started: bool
    started_ms: int


class RetrainStatus(BaseModel):
    running: bool
    started_ms: int | None
    last: dict[str, Any] | None
