"""Dependencies injected into the routes.

They only read app state, so they are ``async``: FastAPI runs a sync dependency in a worker
thread, a hop that costs more than the lookup itself.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from retailrec.api.metrics import Metrics
from retailrec.config import Settings
from retailrec.pipeline import BackgroundRetrain
from retailrec.serving.holder import ModelHolder
from retailrec.serving.service import RecommendationService
from retailrec.serving.store_access import Connections, StoreHealth


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_connections(request: Request) -> Connections:
    """The per-thread connection pool. The dependency runs on the event loop and the (sync)
    endpoint in a worker thread, so the endpoint calls ``.get()`` itself, in its own thread."""
    connections: Connections = request.app.state.connections
    return connections


async def get_recommender(request: Request) -> RecommendationService:
    """The model as of now: one reference for the whole request, whatever reloads happen."""
    holder: ModelHolder = request.app.state.holder
    served = holder.current
    if served is None:
        raise HTTPException(
            status_code=503, detail="no model loaded yet: run `retailrec pipeline`, then reload"
        )
    return served


async def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.holder
    return holder


async def get_retrainer(request: Request) -> BackgroundRetrain:
    retrainer: BackgroundRetrain = request.app.state.retrainer
    return retrainer


async def get_store_health(request: Request) -> StoreHealth:
    health: StoreHealth = request.app.state.store_health
    return health


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def require_api_key(
    settings: Annotated[Settings, Depends(get_app_settings)],
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    """401 without a key, 403 with a wrong one; admin endpoints are off when none is configured."""
    if not settings.api_key:
        raise HTTPException(
            status_code=403, detail="admin endpoints are disabled: set RETAILREC_API_KEY"
        )
    if x_api_key is None:
        raise HTTPException(status_code=401, detail="missing X-API-Key header")
    # Bytes, not str: compare_digest refuses a str with a character outside ASCII (a header is
    # read as Latin-1, so anything can arrive), and the refusal must be a 403, not a 500.
    if not secrets.compare_digest(x_api_key.encode(), settings.api_key.encode()):
        raise HTTPException(status_code=403, detail="wrong API key")


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[Connections, Depends(get_connections)]
RecommenderDep = Annotated[RecommendationService, Depends(get_recommender)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreHealthDep = Annotated[StoreHealth, Depends(get_store_health)]
RetrainerDep = Annotated[BackgroundRetrain, Depends(get_retrainer)]
