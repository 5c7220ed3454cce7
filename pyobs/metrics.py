"""Every Prometheus instrument of the contract, made once per process, with a cardinality guard."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar

# OTel's advice for http.server.request.duration (seconds).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
SIZE_BUCKETS = (0, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
WS_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

UNMATCHED = "<unmatched>"
OVERFLOW = "<overflow>"

HTTP = ("http_request_method", "http_route")


class PyobsMetrics:
    """The contract's instruments (CONTRACT §3) plus cached bound children for the hot path."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, max_routes: int = 500) -> None:
        self.registry = registry
        self.max_routes = max_routes
        r = registry
        self.request_duration = Histogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests, until the last body byte is sent.",
            [*HTTP, "http_response_status_code"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active_requests = Gauge(
            "http_server_active_requests",
            "Number of HTTP server requests in flight.",
            ["http_request_method"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.request_size = Histogram(
            "http_server_request_body_size_bytes",
            "Size of HTTP server request bodies (from Content-Length).",
            list(HTTP),
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.response_size = Histogram(
            "http_server_response_body_size_bytes",
            "Size of HTTP server response bodies as sent.",
            [*HTTP, "http_response_status_code"],
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.exceptions = Counter(
            "pyobs_http_server_exceptions",
            "Exceptions that escaped the application while serving a request.",
            [*HTTP, "error_type"],
            registry=r,
        )
        self.ws_active = Gauge(
            "pyobs_websocket_active_connections",
            "Open WebSocket connections.",
            ["http_route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ws_duration = Histogram(
            "pyobs_websocket_connection_duration_seconds",
            "Lifetime of WebSocket connections.",
            ["http_route"],
            buckets=WS_DURATION_BUCKETS,
            registry=r,
        )
        self.ws_messages = Counter(
            "pyobs_websocket_messages",
            "WebSocket messages by direction.",
            ["http_route", "direction"],
            registry=r,
        )
        self.log_events = Counter(
            "pyobs_log_events", "Log records emitted, by level.", ["level"], registry=r
        )
        self.log_shipper_events = Counter(
            "pyobs_log_shipper_events",
            "Log events handled by the Logstash shipper, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.log_shipper_queue = Gauge(
            "pyobs_log_shipper_queue_events",
            "Log events waiting in the shipper's memory queue.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.info = Gauge(
            "pyobs_info",
            "Constant 1, labelled with the service and pyobs build.",
            [
                "service_name",
                "service_version",
                "deployment_environment",
                "framework",
                "pyobs_version",
            ],
            multiprocess_mode="max",
            registry=r,
        )
        self.cardinality_overflow = Counter(
            "pyobs_cardinality_overflow",
            "Requests whose http_route was replaced by <overflow> (PYOBS_MAX_ROUTES reached).",
            registry=r,
        )
        self._routes: set[str] = {UNMATCHED}
        self._routes_lock = threading.Lock()
        self._children: dict[tuple[Any, ...], Any] = {}
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._active_children: dict[str, Any] = {}
        # Histogram.observe() re-checks labels and walks the buckets linearly; while
        # prometheus_client's layout is the known one, pyobs updates the same values directly.
        self._direct = True

    def active(self, method: str) -> Any:
        """In-flight gauge value for ``method``: ``.inc(1)`` at start, ``.inc(-1)`` at the end.

        That is the gauge's own value object (what Gauge.inc/dec update after their checks).
        """
        value = self._active_children.get(method)
        if value is None:
            child = self.active_requests.labels(method)
            value = getattr(child, "_value", None) or _GaugeSteps(child)
            self._active_children[method] = value
        return value

    def request_children(self, method: str, route: str, status: str) -> tuple[Any, Any]:
        """(duration, response size) histograms for one label set, cached."""
        key = (method, route, status)
        found = self._request_children.get(key)
        if found is None:
            found = (
                self.request_duration.labels(method, route, status),
                self.response_size.labels(method, route, status),
            )
            self._request_children[key] = found
        return found

    def observe(self, child: Any, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Histogram.observe() for a bound child, without its per-call checks.

        Same effect (sum, the first bucket whose bound is >= amount, the exemplar on it),
        found by bisection; falls back to observe() on an unknown prometheus_client layout.
        """
        if self._direct:
            try:
                buckets, bounds, total = child._buckets, child._upper_bounds, child._sum
            except AttributeError:
                self._direct = False
        if not self._direct:
            child.observe(amount, exemplar)
            return
        bucket = buckets[bisect_left(bounds, amount)]
        total.inc(amount)
        bucket.inc(1)
        if exemplar:
            bucket.set_exemplar(Exemplar(exemplar, amount, time.time()))

    @property
    def loop_lag(self) -> Histogram:
        """pyobs_event_loop_lag_seconds, created on first use: only async servers export it."""
        lag = self.__dict__.get("_loop_lag")
        if lag is None:
            with self._routes_lock:
                lag = self.__dict__.get("_loop_lag")
                if lag is None:
                    lag = Histogram(
                        "pyobs_event_loop_lag_seconds",
                        "How late the event loop ran a scheduled callback (async servers only).",
                        buckets=LOOP_LAG_BUCKETS,
                        registry=self.registry,
                    )
                    self._loop_lag = lag
        return lag

    def route_label(self, route: str | None) -> str:
        """Return the route to use as a label, or <overflow> once PYOBS_MAX_ROUTES are in use."""
        if route is None:
            return UNMATCHED
        if route in self._routes:
            return route
        with self._routes_lock:
            if route in self._routes:
                return route
            # <unmatched> is always allowed and does not count against the limit.
            if len(self._routes) - 1 < self.max_routes:
                self._routes.add(route)
                return route
        self.cardinality_overflow.inc()
        return OVERFLOW

    def child(self, metric: Any, *labels: str) -> Any:
        """A bound child, cached: `labels()` costs a lock and a tuple build on every call."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            self._children[key] = found
        return found

    def unregister(self) -> None:
        """Remove every instrument from the registry (tests and re-setup)."""
        for value in vars(self).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                try:
                    self.registry.unregister(value)
                except KeyError:
                    pass


class _GaugeSteps:
    """``inc(n)`` on a gauge through its public API (unknown prometheus_client layout)."""

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge

    def inc(self, amount: float) -> None:
        self._gauge.inc(amount)


_metrics: PyobsMetrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> PyobsMetrics:
    """The process-wide instruments, created on first use in the default registry."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = PyobsMetrics()
    return _metrics


def _reset() -> None:
    global _metrics
    with _metrics_lock:
        if _metrics is not None:
            _metrics.unregister()
        _metrics = None
