"""The FastAPI application: ``create_app()`` wires routers, state and the lifespan.

On start-up the champion is loaded from the MLflow registry; ``/ready`` answers 503 until it is.
Run it with ``retailrec serve`` (uvicorn) or any ASGI server: ``retailrec.api.main:create_app``
with ``--factory``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from retailrec.api.routes import events, recommendations, system
from retailrec.api.state import Connections, Metrics, ModelHolder, ServedLog
from retailrec.config import Settings, get_settings
from retailrec.feature_store import store

log = logging.getLogger(__name__)

#: Request bodies above this are refused (the largest valid one, 1,000 events, is ~150 kB).
MAX_BODY_BYTES = 1_000_000


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
        store.connect(settings.feature_store_path).close()  # create and migrate before serving
        app.state.served_log.start()
        if load_model:
            try:
                if bundle_dir is not None:
                    served = app.state.holder.load_dir(bundle_dir, "local")
                else:
                    served, _ = app.state.holder.load()
                app.state.metrics.set_model(
                    served.version, str(served.bundle.metadata.get("model", "unknown"))
                )
                log.info("serving %s version %s", settings.model_name, served.version)
            except Exception as exc:  # start anyway: /ready says why not, reload can fix it
                log.warning("no model loaded at start-up: %s", exc)
        yield
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
    app.state.connections = Connections(settings.feature_store_path)
    app.state.served_log = ServedLog(settings.feature_store_path)
    app.state.metrics = Metrics()

    @app.middleware("http")
    async def limits_and_metrics(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(
                status_code=422,
                content={
                    "detail": f"request body over {MAX_BODY_BYTES} bytes;"
                    " send at most 1,000 events a batch"
                },
            )
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics: Metrics = request.app.state.metrics
        metrics.requests.labels(
            route=path, method=request.method, status=str(response.status_code)
        ).inc()
        metrics.latency.labels(route=path).observe(time.perf_counter() - started)
        return response

    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(system.router)
    return app
