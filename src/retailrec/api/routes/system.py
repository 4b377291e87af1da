"""Health, readiness, metrics, the served model, and the admin reload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from retailrec.api.deps import (
    HolderDep,
    MetricsDep,
    RecommenderDep,
    RetrainerDep,
    SettingsDep,
    StoreDep,
    StoreHealthDep,
    require_api_key,
)
from retailrec.api.schemas import (
    Health,
    ModelInfo,
    Ready,
    ReloadResponse,
    RetrainStarted,
    RetrainStatus,
)
from retailrec.errors import NoChampionError, RetrainRunningError
from retailrec.feature_store import store
from retailrec.serving.store_access import announce

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/ready", response_model=Ready)
def ready(
    holder: HolderDep, connections: StoreDep, health: StoreHealthDep, response: Response
) -> Ready:
    """Readiness: a model is loaded and the feature store takes writes (503 otherwise, with the
    store's error): a store on a full or read-only disk takes the instance out of rotation."""
    served = holder.current
    try:
        problem = health.check(connections.get(), connections.disk)
    except store.UNAVAILABLE as exc:  # the store cannot be opened at all (its server is down)
        problem = health.failed(exc)
    if served is None or problem is not None:
        response.status_code = 503
    return Ready(
        ready=served is not None and problem is None,
        model_version=None if served is None else served.version,
        store_writable=problem is None,
        store_error=problem,
    )


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep, holder: HolderDep, request: Request) -> Response:
    """Prometheus metrics: requests and latency per route, answers per strategy, model version,
    served answers the log had to drop, and the served model's kept histories."""
    metrics.log_dropped.set(request.app.state.served_log.dropped)
    metrics.set_history_cache(holder.current)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model", response_model=ModelInfo)
def model_info(served: RecommenderDep, settings: SettingsDep) -> ModelInfo:
    """The champion being served: version, training time, metrics on its test window."""
    meta = served.bundle.metadata
    return ModelInfo(
        model_name=settings.model_name,
        version=served.version,
        model=str(meta.get("model", "unknown")),
        params=dict(meta.get("params", {})),
        trained_at_ms=meta.get("trained_at_ms"),
        loaded_at_ms=served.loaded_ms,
        data_end_ms=meta.get("data_end_ms"),
        metrics={
            k.removeprefix("test_"): float(v) for k, v in meta.get("test_metrics", {}).items()
        },
    )


@router.post(
    "/v1/admin/reload", response_model=ReloadResponse, dependencies=[Depends(require_api_key)]
)
def reload(
    holder: HolderDep,
    metrics: MetricsDep,
    connections: StoreDep,
    version: Annotated[str | None, None] = None,
) -> ReloadResponse:
    """Load the current champion (or ``version``) and swap it in without dropping requests, then
    announce it in the feature store: every other worker and replica loads the same version
    within ``RETAILREC_RELOAD_POLL_S``. A version that does not load or answer is refused (409)
    and the old one keeps serving."""
    try:
        served, previous = holder.load(version)
    except NoChampionError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except Exception as exc:  # a broken bundle, of whatever kind: refuse it, keep serving
        raise HTTPException(
            status_code=409,
            detail=f"refused: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
        ) from exc
    metrics.set_model(served)
    announced = announce(connections, served.version)
    return ReloadResponse(
        reloaded=True, version=served.version, previous=previous, announced=announced
    )


@router.post(
    "/v1/admin/retrain",
    status_code=202,
    response_model=RetrainStarted,
    dependencies=[Depends(require_api_key)],
)
def retrain(
    retrainer: RetrainerDep,
    models: Annotated[
        str | None,
        Query(
            max_length=200, pattern=r"^[a-z0-9_,]+$", description="Models to train (default: all)."
        ),
    ] = None,
) -> RetrainStarted:
    """Run the monitor and a gated retraining beside the API, in a child process (409 while one
    runs). A challenger that beats the champion is promoted and served as soon as the run ends;
    see ``GET`` for the outcome. For schedulers without access to the data disk, such as a Render
    cron job."""
    try:
        started = retrainer.start(tuple(models.split(",")) if models else None)
    except RetrainRunningError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return RetrainStarted(started=True, started_ms=started)


@router.get(
    "/v1/admin/retrain", response_model=RetrainStatus, dependencies=[Depends(require_api_key)]
)
def retrain_status(retrainer: RetrainerDep) -> RetrainStatus:
    """Whether a retraining run is going, and what the last one did."""
    return RetrainStatus(**retrainer.status())
