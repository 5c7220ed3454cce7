"""Every Prometheus instrument of the contract, made once per process, with a cardinality guard."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.samples import Exemplar
from prometheus_client.values import MutexValue

from pyobs import _errors, _internals, _multiproc
from pyobs._config import Config

_log = logging.getLogger("pyobs.internal")

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
# Label names pyobs itself uses: static and per-request labels may not take them.
RESERVED_LABELS = frozenset(
    {*HTTP, "http_response_status_code", "error_type", "direction", "level", "outcome", "le"}
)
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
METRIC_PREFIX = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

RequestLabelHook = Callable[[Any], Mapping[str, Any]]


@dataclass(frozen=True)
class MetricsOptions:
    """How the instruments are shaped (docs/configuration.md, "Customising metrics")."""

    duration_buckets: tuple[float, ...] = DURATION_BUCKETS
    request_size_buckets: tuple[float, ...] = SIZE_BUCKETS
    response_size_buckets: tuple[float, ...] = SIZE_BUCKETS
    # Constant labels on every http_server_* series and the exceptions counter.
    static_labels: tuple[tuple[str, str], ...] = ()
    # Labels whose values request_label_hook(facts) returns per request (cardinality-guarded).
    request_label_names: tuple[str, ...] = ()
    request_label_hook: RequestLabelHook | None = None
    prefix: str = ""
    body_sizes: bool = True

    def __post_init__(self) -> None:
        names = [name for name, _ in self.static_labels] + list(self.request_label_names)
        for name in names:
            if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"{name!r} is not a Prometheus label name")
            if name in RESERVED_LABELS:
                raise ValueError(f"label {name!r} is already used by pyobs's own metrics")
        if len(set(names)) != len(names):
            raise ValueError(f"label names repeat: {names}")
        if self.prefix and not METRIC_PREFIX.fullmatch(self.prefix):
            raise ValueError(f"{self.prefix!r} is not a valid metric name prefix")
        if self.request_label_names and self.request_label_hook is None:
            raise ValueError("request_label_names need a request_label_hook")
        for buckets in (self.duration_buckets, self.request_size_buckets):
            if not buckets or list(buckets) != sorted(set(buckets)):
                raise ValueError(f"buckets must be increasing and not empty: {buckets}")
        if not self.response_size_buckets or list(self.response_size_buckets) != sorted(
            set(self.response_size_buckets)
        ):
            raise ValueError(f"buckets must be increasing: {self.response_size_buckets}")


class PyobsMetrics:
    """The contract's instruments (CONTRACT §3) plus cached bound children for the hot path."""

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        max_routes: int = 500,
        options: MetricsOptions | None = None,
    ) -> None:
        self.registry = registry
        self.max_routes = max_routes
        self.options = options = options or MetricsOptions()
        r = registry
        p = options.prefix
        static = [name for name, _ in options.static_labels]
        self._static = tuple(value for _, value in options.static_labels)
        per_request = list(options.request_label_names)
        self._hook = options.request_label_hook
        self.labelled = self._hook is not None  # the request path asks request_labels()
        # Distinct values seen per request label (the cardinality guard, as for routes).
        self._label_values: list[set[str]] = [set() for _ in per_request]
        self.request_duration = Histogram(
            p + "http_server_request_duration_seconds",
            "Duration of HTTP server requests, until the last body byte is sent.",
            [*HTTP, "http_response_status_code", *static, *per_request],
            buckets=options.duration_buckets,
            registry=r,
        )
        self.active_requests = Gauge(
            p + "http_server_active_requests",
            "Number of HTTP server requests in flight.",
            ["http_request_method", *static],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.request_size: Histogram | None = None
        self.response_size: Histogram | None = None
        if options.body_sizes:
            self.request_size = Histogram(
                p + "http_server_request_body_size_bytes",
                "Size of HTTP server request bodies (from Content-Length).",
                [*HTTP, *static, *per_request],
                buckets=options.request_size_buckets,
                registry=r,
            )
            self.response_size = Histogram(
                p + "http_server_response_body_size_bytes",
                "Size of HTTP server response bodies as sent.",
                [*HTTP, "http_response_status_code", *static, *per_request],
                buckets=options.response_size_buckets,
                registry=r,
            )
        self.exceptions = Counter(
            p + "pyobs_http_server_exceptions",
            "Exceptions that escaped the application while serving a request.",
            [*HTTP, "error_type", *static, *per_request],
            registry=r,
        )
        self.ws_active = Gauge(
            p + "pyobs_websocket_active_connections",
            "Open WebSocket connections.",
            ["http_route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ws_duration = Histogram(
            p + "pyobs_websocket_connection_duration_seconds",
            "Lifetime of WebSocket connections.",
            ["http_route"],
            buckets=WS_DURATION_BUCKETS,
            registry=r,
        )
        self.ws_messages = Counter(
            p + "pyobs_websocket_messages",
            "WebSocket messages by direction.",
            ["http_route", "direction"],
            registry=r,
        )
        self.log_events = Counter(
            p + "pyobs_log_events", "Log records emitted, by level.", ["level"], registry=r
        )
        self.log_shipper_events = Counter(
            p + "pyobs_log_shipper_events",
            "Log events handled by the log shipper (Logstash or Elasticsearch), by outcome.",
            ["outcome"],
            registry=r,
        )
        self.log_shipper_queue = Gauge(
            p + "pyobs_log_shipper_queue_events",
            "Log events the shipper holds (memory queue, in flight and disk spool).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.info = Gauge(
            p + "pyobs_info",
            "Constant 1, labelled with the service and pyobs build.",
            [
                "service_name",
                "service_version",
                "deployment_environment",
                "framework",
                "pyobs_version",
            ],
            # One series per process (pyobs.setup writes it when a scrape asks); live* drops
            # a dead worker's file, so only running processes count.
            multiprocess_mode="livemax",
            registry=r,
        )
        self.cardinality_overflow = Counter(
            p + "pyobs_cardinality_overflow",
            "Requests whose http_route was replaced by <overflow> (PYOBS_MAX_ROUTES reached).",
            registry=r,
        )
        self._routes: set[str] = {UNMATCHED}
        # The routes already accepted (read by the request path; added to under the lock).
        self.known_routes = self._routes
        self._routes_lock = threading.Lock()
        self._children: dict[tuple[Any, ...], Any] = {}
        # The request path's histogram values and the log-level counters, updated directly
        # (see _Series) under this one lock; the in-flight gauge needs none (``inflight``).
        # Public: the log-level counters are written under it too (count_log_line, and
        # RequestObserver.finish through prom_request). One attribute, so the
        # lock a fork child gets (_locks_after_fork) is the one every writer takes.
        self.lock = threading.Lock()
        _instances.add(self)
        # (method, route, status) -> its values; read by RequestHandle._done() too.
        self.series: dict[tuple[Any, ...], _Series] = {}
        self._active: dict[str, Any] = {}
        # One process: the requests in flight of each method, one item per request; the
        # gauge's child reports len() of its deque (set_function, public API). append() and
        # pop() are atomic, so the request path's +1 (RequestObserver.start()) and -1
        # (prom_request) take no lock and no call into Python code; a deque keeps its block
        # when it empties (a list would free and allocate its items on every request).
        # Never replaced (requests in flight stay counted whatever is reset). Empty in
        # multiprocess mode.
        self.inflight: dict[str, deque[None]] = {}
        self._inflight_lock = threading.Lock()
        self._request_sizes: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._log_levels: dict[str, Any] = {}
        # The log-level counters' values pyobs writes directly (count_log_line, prom_request).
        self.log_level_values: dict[str, Any] = {}

    def _value_for(self, cache: dict[str, Any], metric: Any, label: str) -> Any:
        """The child's in-process value (a MutexValue pyobs adds to under its own lock), or
        pyobs's own file-backed value in multiprocess mode, or a _PublicInc for unknown
        layouts; cached by label. (The in-flight gauge in one process: _active_value.)"""
        value = cache.get(label)
        if value is None:
            labels = (label, *self._static) if metric is self.active_requests else (label,)
            child = self._mp_child(metric, labels)
            value = _internals.prom_value(child) if direct_values_ok() else None
            if value is None:
                # pyobs's own file-backed value has inc() itself; anything else, the public API.
                value = child if type(child) is _multiproc.FastValue else _PublicInc(child)
            cache[label] = value
        return value

    def _active_value(self, method: str) -> Any:
        """The in-flight gauge's value for ``method``, cached: its deque in one process (see
        ``inflight``), what _value_for gives in multiprocess mode."""
        value = self._active.get(method)
        if value is None:
            if _multiproc.file_backed():
                value = self._value_for(self._active, self.active_requests, method)
            else:
                value = self._active[method] = self._inflight_for(method)
        return value

    def _inflight_for(self, method: str) -> Any:
        """The in-flight deque of ``method`` (see ``inflight``), made with its gauge child once;
        the public API's child if the gauge refuses a function (then its inc() is used)."""
        with self._inflight_lock:
            found: Any = self.inflight.get(method)
            if found is None:
                child = self.active_requests.labels(method, *self._static)
                found = deque()
                try:
                    child.set_function(found.__len__)
                except Exception as exc:  # noqa: BLE001 - the public inc() instead
                    _report("metrics", exc)
                    return _PublicInc(child)
                self.inflight[method] = found
        return found

    def _active_add(self, method: str, amount: int = 1) -> None:
        """http_server_active_requests{method} + amount (never below 0 in one process)."""
        value = self._active.get(method)  # (multiprocess mode's +1: no call before inc())
        if value is None:
            value = self._active_value(method)
        if type(value) is not deque:  # multiprocess mode's file-backed value, or _PublicInc
            value.inc(amount)
            return
        for _ in range(amount):
            value.append(None)
        for _ in range(-amount):
            try:
                value.pop()
            except IndexError:  # a -1 without its +1: RequestHandle.counted rules it out
                break

    request_started = _active_add  # http_server_active_requests{method} + 1

    def request_labels(self, facts: Any) -> tuple[str, ...]:
        """Values of the per-request labels for this request ("" when the hook omits one).

        Each label keeps at most ``max_routes`` distinct values; later ones become
        ``<overflow>`` (counted in pyobs_cardinality_overflow_total). A hook that raises
        gives empty values, and the error is reported: the request is still counted.
        """
        hook = self._hook
        if hook is None:
            return ()
        try:
            found = hook(facts)
        except Exception as exc:  # noqa: BLE001 - user code must not cost the request
            _report("metrics", exc)
            found = {}
        values = []
        for name, seen in zip(self.options.request_label_names, self._label_values, strict=True):
            raw = found.get(name) if isinstance(found, Mapping) else None
            value = "" if raw is None else str(raw)[:128]
            if value not in seen:
                with self._routes_lock:
                    if value not in seen and len(seen) < self.max_routes:
                        seen.add(value)
                if value not in seen:
                    self.cardinality_overflow.inc()
                    value = OVERFLOW
            values.append(value)
        return tuple(values)

    def request_finished(
        self,
        method: str,
        route: str,
        status: int,
        duration: float,
        response_bytes: int,
        trace_id: str | None = None,
        extra: tuple[str, ...] = (),
        timestamp: float | None = None,
    ) -> None:
        """Active gauge - 1, then the duration (with a trace_id exemplar) and response size.

        ``extra`` holds the per-request label values (``request_labels``), if any;
        ``timestamp`` the exemplar's time (time.time() when None; prometheus_client's
        public API, when pyobs falls back to it, always reads its own).
        """
        # Keyed by the int status: no label string is built for a series already seen.
        key = (method, route, status, extra) if extra else (method, route, status)
        series = self.series.get(key)
        if series is None:
            try:
                series = self._new_series(key, method, route, status, extra)
            except BaseException:
                self._active_add(method, -1)  # the gauge goes down exactly once, always
                raise
        direct = series.direct
        if direct is None:
            fast = series.fast
            if fast is not None:  # multiprocess mode: pyobs's own values, in one call
                fast.record(duration, response_bytes, trace_id)
                return
            self._active_add(method, -1)
            self._public_observe(series, duration, response_bytes, trace_id)
            return
        exemplar = (
            # Exemplar(labels, value, timestamp), built without the NamedTuple's __new__
            tuple.__new__(Exemplar, ({"trace_id": trace_id}, duration, timestamp or time.time()))
            if trace_id
            else None
        )
        try:
            _internals.prom_request(self.lock, direct, duration, response_bytes, exemplar)
        except Exception as exc:  # noqa: BLE001 - turned off, and recorded the public way
            self.direct_request_failed(exc, method, series, duration, response_bytes, trace_id)

    def direct_request_failed(
        self,
        exc: Exception,
        method: str,
        series: _Series,
        duration: float,
        response_bytes: int,
        trace_id: str | None,
    ) -> None:
        """prom_request() raised: the direct writes are turned off (and counted), and the
        request is recorded through the public API; the gauge still goes down exactly once.
        (An access line it was to count is counted by the caller, count_log_line.)"""
        if isinstance(exc, _internals.AfterRequest):
            self._direct_failed(exc.__cause__ or exc)  # the request is recorded already
            return
        if isinstance(exc, _internals.AfterGauge):
            self._direct_failed(exc.__cause__ or exc)  # the gauge is down already
        else:
            self._direct_failed(exc)  # nothing written yet
            self._active_add(method, -1)
        self._public_observe(series, duration, response_bytes, trace_id)

    def _public_observe(
        self, series: _Series, duration: float, response_bytes: int, trace_id: str | None
    ) -> None:
        series.duration.observe(duration, {"trace_id": trace_id} if trace_id else None)
        if series.response is not None:
            series.response.observe(response_bytes)

    def _direct_failed(self, exc: BaseException) -> None:
        """The direct writes failed in use: turn them off, count it, forget cached values."""
        _internals.broken(_internals.PROM_VALUES.name, exc)
        self.series.clear()
        self._active.clear()
        self._request_sizes.clear()
        self._log_levels.clear()
        self.log_level_values.clear()

    def _new_series(
        self, key: tuple[Any, ...], method: str, route: str, status: int, extra: tuple[str, ...]
    ) -> _Series:
        labels = (method, route, str(status), *self._static, *extra)
        response = self.response_size
        series = _Series(
            self._active_value(method),
            self._mp_child(self.request_duration, labels),
            self._mp_child(response, labels) if response is not None else None,
        )
        if len(self.series) < 10_000:
            self.series[key] = series
        return series

    def _mp_child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, or in multiprocess mode pyobs's own file-backed child
        (pyobs._multiproc: cheaper writes, and the duration histogram keeps its exemplars)."""
        if not _multiproc.file_backed():
            return metric.labels(*labels)
        options = self.options
        static = tuple(name for name, _ in options.static_labels)
        per_request = options.request_label_names
        if metric is self.active_requests or metric is self.log_events:
            names: tuple[str, ...] = (
                ("http_request_method", *static) if metric is self.active_requests else ("level",)
            )
        elif metric is self.request_duration or metric is self.response_size:
            names = (*HTTP, "http_response_status_code", *static, *per_request)
            buckets = (
                options.duration_buckets
                if metric is self.request_duration
                else options.response_size_buckets
            )
        elif metric is self.request_size:
            names, buckets = (*HTTP, *static, *per_request), options.request_size_buckets
        else:
            return metric.labels(*labels)
        family = metric.describe()[0]
        if not _multiproc.fast_path():
            if metric is not self.request_duration:
                return metric.labels(*labels)
            return _multiproc.ExemplarHistogram(
                metric.labels(*labels), family.name, names, labels, buckets
            )
        values = dict(zip(names, labels, strict=True))
        if metric is self.active_requests:
            return _multiproc.gauge_value(family.name, values, family.documentation)
        if metric is self.log_events:
            return _multiproc.counter_value(family.name, values, family.documentation)
        return _multiproc.FastHistogram(
            family.name,
            family.documentation,
            values,
            buckets,
            exemplars=metric is self.request_duration,
        )

    def request_body(
        self, method: str, route: str, nbytes: int, extra: tuple[str, ...] = ()
    ) -> None:
        """http_server_request_body_size_bytes (from Content-Length), unless switched off."""
        histogram = self.request_size
        if histogram is None:
            return
        key = (method, route, extra)
        found = self._request_sizes.get(key)
        if found is None:
            child = self._mp_child(histogram, (method, route, *self._static, *extra))
            found = (child, _direct_values(child))
            if len(self._request_sizes) < 10_000:
                self._request_sizes[key] = found
        child, direct = found
        if direct is None:
            child.observe(nbytes)
            return
        try:
            _internals.prom_observe(self.lock, direct, nbytes)
        except Exception as exc:  # noqa: BLE001 - a changed layout: public API from now on
            self._direct_failed(exc)
            child.observe(nbytes)

    def exception(
        self, method: str, route: str, error_type: str, extra: tuple[str, ...] = ()
    ) -> None:
        """pyobs_http_server_exceptions_total{method, route, error_type} + 1."""
        self.child(self.exceptions, method, route, error_type, *self._static, *extra).inc()

    @property
    def loop_lag(self) -> Histogram:
        """pyobs_event_loop_lag_seconds, created on first use: only async servers export it."""
        lag = self.__dict__.get("_loop_lag")
        if lag is None:
            with self._routes_lock:
                lag = self.__dict__.get("_loop_lag")
                if lag is None:
                    lag = Histogram(
                        self.options.prefix + "pyobs_event_loop_lag_seconds",
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

    def count_log_line(self, level: str) -> None:
        """pyobs_log_events_total{level} + 1 for a line pyobs wrote itself (the access
        log's direct path): the cached value when there is one, else log_event()."""
        if not _internals.prom_inc_cached(self.lock, self.log_level_values, level):
            self.log_event(level)  # the first of its level, or the public path

    def log_event(self, level: str) -> None:
        """Count one log record of ``level`` (pyobs_log_events_total)."""
        value = self._log_levels.get(level) or self._value_for(
            self._log_levels, self.log_events, level
        )
        if type(value) in _OWN_INC:
            value.inc(1)
            return
        try:  # like the request path's values: only pyobs writes this one
            _internals.prom_add(self.lock, value, 1)
        except Exception as exc:  # noqa: BLE001 - a changed layout: public API from now on
            self._direct_failed(exc)
            self.log_event(level)
            return
        self.log_level_values[level] = value

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


# Values written through their own inc(): the public API's wrapper, and pyobs's file-backed
# value of multiprocess mode.
_OWN_INC = (_PublicInc, _multiproc.FastValue)


# --- The shortcut into prometheus_client's internals (pyobs._internals) ----------------
# A request's values are written straight into the in-process value objects under one pyobs
# lock (saves 3-7 µs per request over observe()/inc()). _internals keeps the private names
# and the tested version range; the check below runs once, at first use, and must show that
# the direct writes give exactly the samples the public API gives. Otherwise (or in
# multiprocess mode, where values live in shared files) the public API is used.
_checking = False


def direct_values_ok() -> bool:
    """True when the direct value writes may be used (checked once per process)."""
    if _checking:
        return True
    from prometheus_client import values

    if values.ValueClass is not MutexValue:
        return False  # multiprocess mode: no shortcut (and no scratch observations)
    return _internals.gate(_internals.PROM_VALUES.name, _check_direct_values)


def _check_direct_values() -> bool:
    """Run the request path both ways on scratch registries; True when the samples match."""
    global _checking
    _checking = True
    try:
        ours = PyobsMetrics(CollectorRegistry())
        theirs = PyobsMetrics(CollectorRegistry())
        for i, (value, size) in enumerate(((0.0, 0), (0.3, 101), (10.0, 10**9), (11.0, 5))):
            trace_id = f"{i + 1:032x}"
            ours.request_started("GET")
            ours.request_finished("GET", "/x", 200, value, size, trace_id)
            ours.request_body("GET", "/x", size)
            if ours.series[("GET", "/x", 200)].direct is None:
                return False  # the layout is not the one the shortcut knows
            assert theirs.request_size is not None
            assert theirs.response_size is not None
            theirs.active_requests.labels("GET").inc()
            theirs.active_requests.labels("GET").dec()
            labels = ("GET", "/x", "200")
            theirs.request_duration.labels(*labels).observe(value, {"trace_id": trace_id})
            theirs.response_size.labels(*labels).observe(size)
            theirs.request_size.labels("GET", "/x").observe(size)
        return _samples(ours.registry) == _samples(theirs.registry)
    finally:
        _checking = False


def _samples(registry: CollectorRegistry) -> list[Any]:
    """Every sample but *_created, with exemplars reduced to (labels, value)."""
    return [
        (s.name, s.labels, s.value, s.exemplar and (s.exemplar.labels, s.exemplar.value))
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def _direct_values(child: Any) -> tuple[Any, list[Any], list[float]] | None:
    """(sum, buckets, bounds) of a histogram child pyobs may update directly, else None."""
    return _internals.prom_histogram(child) if direct_values_ok() else None


class _Series:
    """The in-flight gauge and the two histograms one (method, route, status) updates."""

    __slots__ = ("direct", "duration", "fast", "response")

    def __init__(self, active: Any, duration: Any, response: Any) -> None:
        self.duration = duration
        self.response = response
        # Multiprocess mode with pyobs's own values: the request's writes in one call.
        self.fast: _multiproc.FastSeries | None = None
        if (
            type(active) is _multiproc.FastValue
            and type(duration) is _multiproc.FastHistogram
            and (response is None or type(response) is _multiproc.FastHistogram)
        ):
            self.fast = _multiproc.FastSeries(active, duration, response)
        d = _direct_values(duration)
        r = _direct_values(response) if response is not None else (None, None, None)
        # (in-flight deque, duration sum/buckets/bounds, response sum/buckets/bounds);
        # the response part is (None, None, None) when body-size histograms are off.
        self.direct: tuple[Any, ...] | None = None
        if type(active) is deque and d is not None and r is not None:
            self.direct = (active, *d, *r)


_metrics: PyobsMetrics | None = None
_metrics_lock = threading.Lock()
_instances: weakref.WeakSet[PyobsMetrics] = weakref.WeakSet()


def _locks_after_fork() -> None:
    """In a forked child, new locks: another thread of the parent may have held one at the
    fork (every log record takes ``lock``), and it would never be released here."""
    global _metrics_lock, _checking
    _metrics_lock = threading.Lock()
    _checking = False  # a check another parent thread was running does not go on here
    for metrics in list(_instances):
        metrics.lock = threading.Lock()
        metrics._routes_lock = threading.Lock()
        metrics._inflight_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_locks_after_fork)


def get_metrics() -> PyobsMetrics:
    """The process-wide instruments, created on first use in the default registry."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = PyobsMetrics()
    return _metrics


def configure_metrics(
    registry: CollectorRegistry | None, max_routes: int, options: MetricsOptions
) -> PyobsMetrics:
    """The process-wide instruments for this shape: rebuilt (and the old ones unregistered)
    only when the registry or the options changed, so counts survive a repeated setup()."""
    global _metrics
    registry = REGISTRY if registry is None else registry
    with _metrics_lock:
        current = _metrics
        if current is None or current.registry is not registry or current.options != options:
            if current is not None:
                current.unregister()
            current = _metrics = PyobsMetrics(registry, max_routes, options)
        current.max_routes = max_routes
        return current


def options_for(config: Config) -> MetricsOptions:
    """The MetricsOptions a config asks for (ValueError, naming the problem, when invalid)."""
    return MetricsOptions(
        duration_buckets=config.duration_buckets or DURATION_BUCKETS,
        request_size_buckets=config.request_size_buckets or SIZE_BUCKETS,
        response_size_buckets=config.response_size_buckets or SIZE_BUCKETS,
        static_labels=config.metrics_labels,
        request_label_names=config.request_label_names,
        request_label_hook=config.request_label_hook,
        prefix=config.metrics_prefix,
        body_sizes=config.body_size_metrics,
    )


def _report(component: str, exc: BaseException) -> None:
    """Count and log an internal error of the metrics code; the request goes on."""
    _errors.report(component, exc, "request label hook")


def _reset() -> None:
    global _metrics
    with _metrics_lock:
        if _metrics is not None:
            _metrics.unregister()
        _metrics = None
