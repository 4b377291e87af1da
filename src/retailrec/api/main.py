"""The FastAPI application: ``create_app()`` wires routers, state and the lifespan.

On start-up the champion is loaded from the MLflow registry; ``/ready`` answers 503 until it is.
Run it with ``retailrec serve`` (uvicorn) or any ASGI server: ``retailrec.api.main:create_app``
with ``--factory``.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retailrec.api.deps import RateLimiter
from retailrec.api.metrics import Metrics
from retailrec.api.routes import events, recommendations, system
from retailrec.config import Settings, get_settings
from retailrec.feature_store import store
from retailrec.pipeline import BackgroundRetrain
from retailrec.serving.holder import ModelHolder
from retailrec.serving.store_access import (
    Connections,
    ReloadWatcher,
    ServedLog,
    StoreHealth,
    announce,
)

log = logging.getLogger(__name__)

#: Request bodies above this are refused (the largest valid one, 1,000 events, is ~150 kB).
MAX_BODY_BYTES = 1_000_000


class LimitsAndMetrics:
    """Caps request bodies (422 beyond :data:`MAX_BODY_BYTES`) and counts and times requests per
    route. Plain ASGI rather than ``@app.middleware``: that wrapper costs more per request than
    a whole recommendation."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await _too_large(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = 0
        answered = False  # a chunked body went over the cap and the 422 has gone out

        async def counting_receive() -> Message:
            nonlocal received, answered, status
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES and not answered:  # no Content-Length was announced
                answered, status = True, 422
                await _too_large(scope, receive, send)
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if answered:
                return
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, status_send)
        except Exception:
            if not answered:  # after our 422, whatever the app made of the cut body is moot
                raise
        finally:
            metrics: Metrics = scope["app"].state.metrics
            path = getattr(scope.get("route"), "path", "unmatched")
            counter, histogram = metrics.for_route(path, scope["method"], status)
            counter.inc()
            histogram.observe(time.perf_counter() - started)


async def _too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        status_code=422,
        content={
            "detail": f"request body over {MAX_BODY_BYTES} bytes; send at most 1,000 events a batch"
        },
    )
    await response(scope, receive, send)


def _finite(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, +-Infinity) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with the reason, for any request that needed the feature store while it could not be
    read or written (its server down or restarting): the client tries again, the next request
    reconnects (see Connections.get)."""
    reason = request.app.state.store_health.failed(exc)
    return JSONResponse(
        status_code=503,
        content={"detail": f"the feature store is unavailable ({reason}): try again shortly"},
        headers={"Retry-After": "1"},
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, rendered whatever the input held: Python's JSON parser reads ``NaN`` and
    ``Infinity``, and echoing them back in the error would fail to render (a 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(errors))})


def _reload(app: FastAPI, version: str | None = None, *, announced: bool = False) -> str:
    """Load the champion (or ``version``) and export it; returns the version now served. Unless
    it follows an announcement, it announces the version for the other processes to follow."""
    served, _ = app.state.holder.load(version)
    app.state.metrics.set_model(served)
    if not announced:
        announce(app.state.connections, str(served.version))
    return str(served.version)


def _served_version(app: FastAPI) -> str | None:
    current = app.state.holder.current
    return None if current is None else str(current.version)


def create_app(
    settings: Settings | None = None, *, bundle_dir: Path | None = None, load_model: bool = True
) -> FastAPI:
    """Build the API.

    Args:
        settings: Default: :func:`retailrec.config.get_settings`.
        bundle_dir: Serve this bundle folder instead of the registry's champion (version "local").
        load_model: Load a model at start-up (tests of the not-ready state pass False).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.connect(settings.feature_store).close()  # create and migrate before serving
        app.state.served_log.start()
        # Before the model loads: an announcement made while it loads is followed, not missed.
        app.state.reload_watcher.start()
        if load_model:
            try:
                if bundle_dir is not None:
                    served = app.state.holder.load_dir(bundle_dir, "local")
                else:
                    served, _ = app.state.holder.load()
                app.state.metrics.set_model(served)
                log.info("serving %s version %s", settings.model_name, served.version)
            except Exception as exc:  # start anyway: /ready says why not, reload can fix it
                log.warning("no model loaded at start-up: %s", exc)
        # What start-up built (the model, MLflow, pandas) lives as long as the process: keep it
        # out of the cyclic collector, whose full passes over it would pause requests.
        gc.collect()
        gc.freeze()
        yield
        app.state.reload_watcher.stop()
        app.state.served_log.stop()
        app.state.connections.close()

    app = FastAPI(
        title="RetailRec",
        version="0.1.0",
        summary="Personalised recommendations for an online shop, served from the champion model.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.holder = ModelHolder(settings)
    app.state.connections = Connections(settings.feature_store)
    app.state.store_health = StoreHealth()
    app.state.served_log = ServedLog(settings.feature_store, health=app.state.store_health)
    app.state.metrics = Metrics()
    app.state.events_limiter = RateLimiter(settings.events_rate_per_s, settings.events_burst)
    app.state.retrainer = BackgroundRetrain(settings, on_promoted=lambda: _reload(app))
    app.state.reload_watcher = ReloadWatcher(
        settings.feature_store,
        load=lambda version: _reload(app, version, announced=True),
        current=lambda: _served_version(app),
        poll_s=settings.reload_poll_s,
    )

    app.add_exception_handler(RequestValidationError, _validation_error)
    for kind in store.UNAVAILABLE:
        app.add_exception_handler(kind, _store_unavailable)
    app.add_middleware(LimitsAndMetrics)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(system.router)
    return app
