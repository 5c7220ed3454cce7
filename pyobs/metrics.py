"""Every Prometheus instrument of the contract, made once per process, with a cardinality guard."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar
from prometheus_client.values import MutexValue

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
        # The request path's values, updated directly (see _Series) under this one lock.
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._active: dict[str, Any] = {}
        self._request_sizes: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._log_levels: dict[str, Any] = {}

    @staticmethod
    def _value_for(cache: dict[str, Any], metric: Any, label: str) -> Any:
        """The child's in-process value (a MutexValue pyobs adds to under its own lock), or
        a _PublicInc for multiprocess mode and unknown layouts; cached by label."""
        value = cache.get(label)
        if value is None:
            child = metric.labels(label)
            value = getattr(child, "_value", None)
            if type(value) is not MutexValue:
                value = _PublicInc(child)
            cache[label] = value
        return value

    def _active_add(self, method: str, amount: int = 1) -> None:
        """http_server_active_requests{method} + amount, always through the same lock."""
        value = self._active.get(method) or self._value_for(
            self._active, self.active_requests, method
        )
        if type(value) is MutexValue:
            with self._lock:
                value._value += amount
        else:
            value.inc(amount)

    request_started = _active_add  # http_server_active_requests{method} + 1

    def request_finished(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        response_bytes: int,
        trace_id: str | None = None,
    ) -> None:
        """Active gauge - 1, then the duration (with a trace_id exemplar) and response size."""
        # Keyed by the int status: no label string is built for a series already seen.
        series = self._series.get((method, route, status))
        if series is None:
            series = self._new_series(method, route, status)
        direct = series.direct
        if direct is not None:
            active, d_sum, d_buckets, d_bounds, r_sum, r_buckets, r_bounds = direct
            d_bucket = d_buckets[bisect_left(d_bounds, duration)]
            r_bucket = r_buckets[bisect_left(r_bounds, response_bytes)]
            exemplar = (
                # Exemplar(labels, value, timestamp), built without the NamedTuple's __new__
                tuple.__new__(Exemplar, ({"trace_id": trace_id}, duration, time.time()))
                if trace_id
                else None
            )
            with self._lock:
                active._value -= 1
                d_sum._value += duration
                d_bucket._value += 1
                r_sum._value += response_bytes
                r_bucket._value += 1
                if exemplar is not None:
                    d_bucket._exemplar = exemplar
            return
        self._active_add(method, -1)
        series.duration.observe(duration, {"trace_id": trace_id} if trace_id else None)
        series.response.observe(response_bytes)

    def _new_series(self, method: str, route: str, status: int) -> _Series:
        labels = (method, route, str(status))
        series = _Series(
            self._value_for(self._active, self.active_requests, method),
            self.request_duration.labels(*labels),
            self.response_size.labels(*labels),
        )
        if len(self._series) < 10_000:
            self._series[method, route, status] = series
        return series

    def request_body(self, method: str, route: str, nbytes: int) -> None:
        """http_server_request_body_size_bytes (from Content-Length)."""
        key = (method, route)
        found = self._request_sizes.get(key)
        if found is None:
            child = self.request_size.labels(method, route)
            found = (child, _direct_values(child))
            if len(self._request_sizes) < 10_000:
                self._request_sizes[key] = found
        child, direct = found
        if direct is None:
            child.observe(nbytes)
            return
        total, buckets, bounds = direct
        bucket = buckets[bisect_left(bounds, nbytes)]
        with self._lock:
            total._value += nbytes
            bucket._value += 1

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

    def log_event(self, level: str) -> None:
        """Count one log record of ``level`` (pyobs_log_events_total)."""
        value = self._log_levels.get(level) or self._value_for(
            self._log_levels, self.log_events, level
        )
        if type(value) is MutexValue:
            with self._lock:  # like the request path's values: only pyobs writes this one
                value._value += 1
        else:
            value.inc(1)

    def unregister(self) -> None:
        """Remove every instrument from the registry (tests and re-setup)."""
        for value in vars(self).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                try:
                    self.registry.unregister(value)
                except KeyError:
                    pass


class _PublicInc:
    """``inc(n)`` through the metric's public API (multiprocess mode, unknown layout)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def inc(self, amount: float) -> None:
        self._metric.inc(amount)


def _direct_values(child: Any) -> tuple[Any, list[Any], list[float]] | None:
    """(sum, buckets, bounds) of a histogram child whose values pyobs may update directly.

    That is prometheus_client's in-process layout, where every value is a MutexValue whose
    ``inc`` is ``_value += amount`` under the value's lock. pyobs takes one lock of its own
    for all the values of a request instead; nothing else writes these values (exposition
    only reads them). Multiprocess values (mmap files) and unknown layouts return None.
    """
    try:
        total, buckets, bounds = child._sum, child._buckets, child._upper_bounds
    except AttributeError:
        return None
    values = [total, *buckets]
    if any(type(v) is not MutexValue or not hasattr(v, "_value") for v in values):
        return None
    if len(buckets) != len(bounds) or list(bounds) != sorted(bounds):
        return None
    return total, buckets, bounds


class _Series:
    """The in-flight gauge and the two histograms one (method, route, status) updates."""

    __slots__ = ("direct", "duration", "response")

    def __init__(self, active: Any, duration: Any, response: Any) -> None:
        self.duration = duration
        self.response = response
        d = _direct_values(duration)
        r = _direct_values(response)
        # (active gauge value, duration sum/buckets/bounds, response sum/buckets/bounds)
        self.direct: tuple[Any, ...] | None = None
        if type(active) is MutexValue and d is not None and r is not None:
            self.direct = (active, *d, *r)


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
