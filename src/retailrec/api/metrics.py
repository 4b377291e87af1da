"""Prometheus metrics of the API."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from retailrec.serving.service import RecommendationService

#: The HTTP methods counted by name; any other is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Prometheus metrics, on a registry of the app's own (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._route_cache: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._strategy_cache: dict[str, Any] = {}
        self.requests = Counter(
            "retailrec_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "retailrec_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.strategy = Counter(
            "retailrec_recommendations_total",
            "Answers per strategy",
            ["strategy"],
            registry=self.registry,
        )
        self.model = Gauge(
            "retailrec_model_info",
            "The served model version (value 1)",
            ["version", "model"],
            registry=self.registry,
        )
        self.log_dropped = Gauge(
            "retailrec_served_log_dropped",
            "Served answers not logged because the log's queue was full",
            registry=self.registry,
        )
        self.history_cache = Gauge(
            "retailrec_history_cache",
            "Active visitors' kept histories, for the served model: entries kept now, and"
            " lookups that found a current entry (hits) or read the store (misses)",
            ["measure"],
            registry=self.registry,
        )
        self.events = Counter(
            "retailrec_events_total",
            "Posted events by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def for_route(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one route, looked up once per label set
        (``labels()`` takes a lock and builds a key on every call).

        Every label is bounded: the route is a declared path (or "unmatched"), a method outside
        :data:`METHODS` is "other", and a status is one of HTTP's few hundred codes. A made-up
        method or path can never add a series.
        """
        method = method if method in METHODS else "other"
        key = (route, method, status)
        found = self._route_cache.get(key)
        if found is None:
            found = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.latency.labels(route=route),
            )
            self._route_cache[key] = found
        return found

    def count_strategy(self, strategy: str) -> None:
        """One answer served by ``strategy`` (one of the few the service names)."""
        counter = self._strategy_cache.get(strategy)
        if counter is None:
            counter = self._strategy_cache[strategy] = self.strategy.labels(strategy=strategy)
        counter.inc()

    def set_history_cache(self, served: RecommendationService | None) -> None:
        cache = None if served is None else served.histories
        for measure, value in (
            ("kept", 0 if cache is None else len(cache)),
            ("hits", 0 if cache is None else cache.hits),
            ("misses", 0 if cache is None else cache.misses),
        ):
            self.history_cache.labels(measure=measure).set(value)

    def set_model(self, served: RecommendationService) -> None:
        """Export which model version is being served."""
        self.model.clear()
        model = str(served.bundle.metadata.get("model", "unknown"))
        self.model.labels(version=served.version, model=model).set(1)
