"""Reports on disk: every run that writes one (ETL, monitor, backtest) names it
``<kind>-<UTC time>.json`` in ``reports/``, so the newest sorts last. Readers (the dashboard, the
API's retrain status) find them here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_path(reports_dir: Path, kind: str) -> Path | None:
    """The newest ``<kind>-*.json`` in ``reports_dir``, or None."""
    found = sorted(reports_dir.glob(f"{kind}-*.json")) if reports_dir.is_dir() else []
    return found[-1] if found else None


def latest(reports_dir: Path, kind: str) -> dict[str, Any] | None:
    """The newest ``<kind>-*.json`` report's content, with its path under ``_path``; or None."""
    path = latest_path(reports_dir, kind)
    if path is None:
        return None
    payload: dict[str, Any] = json.loads(path.read_text())
    payload["_path"] = str(path)
    return payload
