"""The one HTTP client of RetailRec's own API: every call that the monitor, the dashboard and the
backtest make to a running server goes through :class:`ApiClient`.

The API is the operator's own (``RETAILREC_API_URL``, a URL or Render's ``host:port``); the
admin calls carry ``RETAILREC_API_KEY``. Failures come back as :class:`ApiAnswer` values with a
status and a reason, never as exceptions, so that a monitoring run can report them and go on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from retailrec.config import Settings


def api_base(url: str) -> str:
    """``host:port`` (as Render's ``fromService`` gives it) or a full URL, as a base URL."""
    url = url.rstrip("/")
    return url if "://" in url else f"http://{url}"


@dataclass
class ApiAnswer:
    """What the API said: ``asked`` is False when no request was sent (and ``reason`` says why);
    ``status`` is None when it could not be reached."""

    asked: bool
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_dict(self) -> dict[str, Any]:
        """The shape the monitor's report keeps: asked, status, and the answer or the error."""
        out: dict[str, Any] = {"asked": self.asked}
        if not self.asked:
            return out | {"reason": self.reason}
        out["status"] = self.status
        return out | ({"answer": self.body} if self.error is None else {"error": self.error})


class ApiClient:
    """Calls to one running RetailRec API.

    Args:
        url: The API's base URL or ``host:port``.
        api_key: Sent as ``X-API-Key`` on admin calls.
        timeout: Seconds per call.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base = api_base(url)
        self.api_key = api_key
        self._http = httpx.Client(base_url=self.base, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = 30.0) -> ApiClient | None:
        """The client of ``RETAILREC_API_URL``, or None when it is not set."""
        if not settings.api_url:
            return None
        return cls(settings.api_url, settings.api_key, timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> ApiAnswer:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            return ApiAnswer(True, None, error=f"{self.base}{path}: {exc}")
        if resp.is_success:
            return ApiAnswer(True, resp.status_code, resp.json() if resp.content else {})
        return ApiAnswer(True, resp.status_code, error=resp.text[:300])

    # -- recommendations --------------------------------------------------------------------------

    def for_visitor(
        self, visitor_id: int, k: int, rules: Mapping[str, Any] | None = None
    ) -> ApiAnswer:
        """``GET /v1/users/{visitor_id}/recommendations`` with the business rules as query
        parameters (booleans as ``true``/``false``, None left out)."""
        params: dict[str, Any] = {"k": k}
        for key, value in (rules or {}).items():
            if value is not None:
                params[key] = str(value).lower() if isinstance(value, bool) else value
        return self._call("GET", f"/v1/users/{int(visitor_id)}/recommendations", params=params)

    def for_session(self, item_ids: Sequence[int], k: int) -> ApiAnswer:
        """``POST /v1/sessions/recommendations`` for the items just viewed (latest last)."""
        body = {"item_ids": [int(i) for i in item_ids], "k": k}
        return self._call("POST", "/v1/sessions/recommendations", json=body)

    # -- admin ------------------------------------------------------------------------------------

    def _admin(self, path: str, params: Mapping[str, str] | None = None) -> ApiAnswer:
        if not self.api_key:
            return ApiAnswer(False, reason="RETAILREC_API_KEY is not set: the API would refuse")
        return self._call("POST", path, params=params, headers={"X-API-Key": self.api_key})

    def reload(self) -> ApiAnswer:
        """Ask the API to load the current champion."""
        return self._admin("/v1/admin/reload")

    def retrain(self, models: Sequence[str] | None = None) -> ApiAnswer:
        """Ask the API to run the monitor and a gated retraining beside its data."""
        return self._admin("/v1/admin/retrain", {"models": ",".join(models)} if models else None)


def not_configured() -> ApiAnswer:
    """The answer when ``RETAILREC_API_URL`` is not set: nothing was asked."""
    return ApiAnswer(False, reason="RETAILREC_API_URL is not set")
