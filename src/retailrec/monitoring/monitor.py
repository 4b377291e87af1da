"""``retailrec monitor``: drift and online quality into ``reports/``.

One run reads the event log and the served log from the feature store, writes
``reports/drift-<UTC time>.json`` and ``.html`` and returns the result. Retraining after it (train
on the latest data, promote only through the registry's gate, ask a running API to reload) is the
orchestrator's: :func:`retailrec.pipeline.monitor` hands :func:`run_monitor` that step.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retailrec.config import Settings
from retailrec.data_pipeline.feature_pipeline import item_categories
from retailrec.errors import NoChampionError, NoDataError, UsageError
from retailrec.events import DAY_MS, HOUR_MS
from retailrec.feature_store import store
from retailrec.monitoring.drift_detector import DriftConfig, DriftReport, detect
from retailrec.monitoring.online import online_metrics
from retailrec.monitoring.report import write_html

log = logging.getLogger(__name__)

EXIT_DRIFT = 3
#: ``--fail-on-drift`` when the windows could not be compared: a gate that cannot judge fails.
EXIT_UNJUDGED = 4
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_interval(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``2d`` (or plain seconds) as seconds.

    Raises:
        ValueError: not a positive duration.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"not a positive interval: {text!r} (use e.g. 90s, 15m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class MonitorConfig:
    drift: DriftConfig = field(default_factory=DriftConfig)
    #: "weeks": the weeks before the current window; "champion": the weeks up to the end of the
    #: data the champion was trained on.
    reference: str = "weeks"
    #: Served answers from the last ``online_days`` (wall-clock) feed the online metrics.
    online_days: float = 7.0
    attribution_hours: float = 24.0
    retrain: bool = False
    models: tuple[str, ...] | None = None


@dataclass
class MonitorResult:
    drift: DriftReport
    online: dict[str, Any]
    retrain: dict[str, Any] | None
    json_path: Path
    html_path: Path

    @property
    def drifted(self) -> bool:
        return self.drift.drifted


def _champion_data_end(settings: Settings) -> int | None:
    from retailrec import registry

    client = registry.configure(settings)
    current = registry.champion(client, settings.model_name)
    if current is None or "data_end_ms" not in current.tags:
        return None
    return int(current.tags["data_end_ms"])


def run_monitor(
    settings: Settings,
    config: MonitorConfig | None = None,
    now_ms: int | None = None,
    *,
    retrain: Callable[[], dict[str, Any]] | None = None,
) -> MonitorResult:
    """One monitoring pass: drift, online metrics and the report.

    Args:
        retrain: Called after the drift report when given (the orchestrator's gated retraining,
            :func:`retailrec.pipeline.monitor`); what it returns goes into the report.
    """
    config = config or MonitorConfig()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    drift_config = config.drift
    if config.reference == "champion":
        end = _champion_data_end(settings)
        if end is None:
            raise NoChampionError("no champion with a data_end_ms tag to take the reference from")
        drift_config = replace(drift_config, reference_end_ms=end)
    elif config.reference != "weeks":
        raise UsageError(f"reference must be 'weeks' or 'champion', not {config.reference!r}")
    with store.open_store(settings.feature_store) as conn:
        events = store.read_events(conn)
        if events.empty:
            raise NoDataError(
                f"no events in {store.describe(settings.feature_store)}: run `retailrec etl` first"
            )
        categories = item_categories(conn)
        served = store.read_served(conn, since_ms=now_ms - int(config.online_days * DAY_MS))
    report = detect(events, categories, drift_config)
    online = online_metrics(
        served,
        events,
        events["itemid"].value_counts(),
        attribution_ms=int(config.attribution_hours * HOUR_MS),
    )
    retrained = retrain() if retrain is not None else None
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ms / 1000)) + f"{now_ms % 1000:03d}Z"
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    json_path = settings.reports_dir / f"drift-{stamp}.json"
    payload = {
        "created_ms": now_ms,
        "drift": report.to_dict(),
        "online": online,
        "retrain": retrained,
        "daily": _daily(events, report.reference_start_ms),
    }
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default))
    html_path = write_html(payload, json_path.with_suffix(".html"))
    return MonitorResult(report, online, retrained, json_path, html_path)


def _daily(events: Any, start_ms: int) -> dict[str, dict[str, int]]:
    """Events per day and type from ``start_ms``: the report's timeline."""
    recent = events[events["timestamp"] >= start_ms]
    day = (recent["timestamp"] // DAY_MS * DAY_MS).rename("day")
    table = recent.groupby([day, recent["event"]]).size().unstack(fill_value=0)
    return {str(int(d)): {str(k): int(v) for k, v in row.items()} for d, row in table.iterrows()}


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_every(
    interval_s: float,
    once: Callable[[], Any],
    *,
    stop: threading.Event | None = None,
    max_runs: int | None = None,
) -> int:
    """Call ``once`` now and then every ``interval_s`` seconds until ``stop`` is set or
    ``max_runs`` calls are done. A failing run is logged and the loop goes on. Returns the number
    of runs."""
    stop = stop or threading.Event()
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            once()
        except Exception:  # a scheduled loop must outlive one bad run; the log says why
            log.exception("monitoring run failed")
        runs += 1
        if max_runs is not None and runs >= max_runs:
            break
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
    return runs
