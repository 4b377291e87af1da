"""Real-time events: validated with the ETL's schema, appended to the feature store."""

from __future__ import annotations

import time

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Request

from retailrec.api.deps import (
    MetricsDep,
    SettingsDep,
    StoreDep,
    StoreHealthDep,
    charge_events,
    require_events_key,
)
from retailrec.api.schemas import EventsRequest, EventsResponse, RejectedEvent
from retailrec.data_pipeline import schema
from retailrec.events import DAY_MS, EVENT_COLUMNS
from retailrec.feature_store import store

router = APIRouter(prefix="/v1", tags=["events"])


@router.post("/events", response_model=EventsResponse, dependencies=[Depends(require_events_key)])
def post_events(
    body: EventsRequest,
    request: Request,
    connections: StoreDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    health: StoreHealthDep,
) -> EventsResponse:
    """Up to 1,000 events. Each is accepted, a duplicate of one already stored (re-sending a batch
    is safe), or rejected with its index and reason; the three always add up to the batch.

    Events dated more than a few minutes past the server's clock, or long before the log's first
    event (``RETAILREC_EVENT_PAST_MARGIN_DAYS``), are rejected: they would move the shop's clock.
    With ``RETAILREC_EVENTS_KEY`` set, the header ``X-Events-Key`` must carry it; each client may
    post ``RETAILREC_EVENTS_RATE_PER_S`` events a second (429 with ``Retry-After`` beyond).
    """
    try:
        charge_events(request, len(body.events))
    except HTTPException:
        metrics.events.labels(outcome="limited").inc(len(body.events))
        raise
    frame = pd.DataFrame.from_records(
        [{c: e.get(c) for c in EVENT_COLUMNS} for e in body.events],
        columns=list(EVENT_COLUMNS),
    ).astype(object)
    conn = connections.get()
    wall_ms = int(time.time() * 1000)  # only bounds the future: "now" is the shop's clock
    checked = schema.live_window(
        schema.validate_events(frame, now_ms=wall_ms),
        wall_ms=wall_ms,
        first_ms=store.time_range(conn)[0],
        past_margin_ms=int(settings.event_past_margin_days * DAY_MS),
    )
    rejected = [
        RejectedEvent(index=int(i), reason=str(r)) for i, r in checked.rejected["reason"].items()
    ]
    unique = checked.valid.drop_duplicates()
    try:
        accepted = store.append_events(conn, unique, source="api")
    except store.DATABASE_ERRORS as exc:  # one transaction: none of the batch was stored
        reason = health.failed(exc)
        metrics.events.labels(outcome="failed").inc(len(body.events))
        raise HTTPException(
            status_code=503,
            detail=f"the feature store takes no writes now ({reason}): nothing of this batch was"
            " stored; send it again later",
        ) from exc
    duplicates = len(checked.valid) - accepted
    metrics.events.labels(outcome="accepted").inc(accepted)
    metrics.events.labels(outcome="duplicate").inc(duplicates)
    metrics.events.labels(outcome="rejected").inc(len(rejected))
    return EventsResponse(accepted=accepted, duplicates=duplicates, rejected=rejected)
