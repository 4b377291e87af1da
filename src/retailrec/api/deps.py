"""Dependencies injected into the routes.

They only read app state, so they are ``async``: FastAPI runs a sync dependency in a worker
thread, a hop that costs more than the lookup itself.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
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


def current_service(request: Request) -> RecommendationService:
    """The model as of now: one reference for the whole request, whatever reloads happen; 503
    while none is loaded. Called directly by the hottest route, where a dependency's resolution
    costs more than the lookup."""
    holder: ModelHolder = request.app.state.holder
    served = holder.current
    if served is None:
        raise HTTPException(
            status_code=503, detail="no model loaded yet: run `retailrec pipeline`, then reload"
        )
    return served


async def get_recommender(request: Request) -> RecommendationService:
    """:func:`current_service` as a dependency."""
    return current_service(request)


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
    if not _key_matches(x_api_key, settings.api_key):
        raise HTTPException(status_code=403, detail="wrong API key")


def _key_matches(given: str, expected: str | None) -> bool:
    """Bytes, not str: compare_digest refuses a str with a character outside ASCII (a header is
    read as Latin-1, so anything can arrive), and a refusal must be a 403, not a 500."""
    return expected is not None and secrets.compare_digest(given.encode(), expected.encode())


class RateLimiter:
    """A token bucket per client: ``rate`` tokens a second, at most ``burst`` saved up. Clients
    are few and their buckets small; past ``max_clients`` the least recently seen are forgotten,
    so that made-up addresses cannot grow it without bound."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str, n: int) -> float:
        """Spend ``n`` tokens of ``client``'s; returns 0, or the seconds to wait when it has
        too few (nothing is spent then)."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < n:
                self._buckets[client] = (tokens, now)
                return (n - tokens) / self.rate
            self._buckets[client] = (tokens - n, now)
            if len(self._buckets) > self.max_clients:
                idle = sorted(self._buckets, key=lambda c: self._buckets[c][1])
                for gone in idle[: len(idle) - self.max_clients]:
                    del self._buckets[gone]
            return 0.0


async def require_events_key(
    request: Request, x_events_key: Annotated[str | None, Header()] = None
) -> None:
    """``POST /v1/events`` needs the events key when one is set (the API key also opens it):
    401 without a key, 403 with a wrong one. Unset, anyone may post (local use)."""
    settings: Settings = request.app.state.settings
    if not settings.events_key:
        return
    if x_events_key is None:
        raise HTTPException(status_code=401, detail="missing X-Events-Key header")
    if not (
        _key_matches(x_events_key, settings.events_key)
        or _key_matches(x_events_key, settings.api_key)
    ):
        raise HTTPException(status_code=403, detail="wrong events key")


def charge_events(request: Request, n: int) -> None:
    """Spend ``n`` of the posting client's events (see :class:`RateLimiter`).

    Raises:
        HTTPException: 429 with ``Retry-After`` when the client is over its rate.
    """
    settings: Settings = request.app.state.settings
    limiter: RateLimiter = request.app.state.events_limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.take(client, n)
    if wait > 0:
        raise HTTPException(
            status_code=429,
            detail=f"over {settings.events_rate_per_s:g} events a second from {client}:"
            f" send again in {wait:.1f} s (RETAILREC_EVENTS_RATE_PER_S)",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[Connections, Depends(get_connections)]
RecommenderDep = Annotated[RecommendationService, Depends(get_recommender)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StoreHealthDep = Annotated[StoreHealth, Depends(get_store_health)]
RetrainerDep = Annotated[BackgroundRetrain, Depends(get_retrainer)]
