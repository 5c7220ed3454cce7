"""The metrics module's fast paths agree with prometheus_client's own API."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pyobs.metrics import DURATION_BUCKETS, SIZE_BUCKETS, PyobsMetrics


def _samples(metrics: PyobsMetrics, prefix: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    ]


def test_request_path_matches_prometheus_client() -> None:
    """Direct updates fill the same buckets, sums and exemplars as Histogram.observe."""
    ours, theirs = PyobsMetrics(CollectorRegistry()), PyobsMetrics(CollectorRegistry())
    assert theirs.response_size is not None
    assert theirs.request_size is not None
    values = [0.0, 0.005, 0.0050001, 0.3, 1.0, 9.99, 10.0, 11.0, 1e9, *DURATION_BUCKETS]
    sizes = [0, 1, 100, 101, 99_999, 10**9, *SIZE_BUCKETS]
    for i, value in enumerate(values):
        trace_id = f"{i:032x}"
        size = sizes[i % len(sizes)]
        ours.request_started("GET")
        ours.request_finished("GET", "/x", 200, value, size, trace_id)
        ours.request_body("GET", "/x", size)
        theirs.active_requests.labels("GET").inc()
        theirs.active_requests.labels("GET").dec()
        theirs.request_duration.labels("GET", "/x", "200").observe(value, {"trace_id": trace_id})
        theirs.response_size.labels("GET", "/x", "200").observe(size)
        theirs.request_size.labels("GET", "/x").observe(size)

    for prefix in ("http_server_re", "http_server_active"):
        assert _samples(ours, prefix) == _samples(theirs, prefix)
    mine = ours.request_duration.labels("GET", "/x", "200")._buckets
    other = theirs.request_duration.labels("GET", "/x", "200")._buckets
    assert [b._value for b in mine] == [b._value for b in other]
    assert [b._exemplar and (b._exemplar.labels, b._exemplar.value) for b in mine] == [
        b._exemplar and (b._exemplar.labels, b._exemplar.value) for b in other
    ]
    assert (
        ours.registry.get_sample_value(
            "http_server_active_requests", {"http_request_method": "GET"}
        )
        == 0
    )


def test_counts_stay_exact_across_threads() -> None:
    """Four threads recording at once lose no request (one lock guards the histograms'
    values; the in-flight deque's append and pop are atomic)."""
    metrics = PyobsMetrics(CollectorRegistry())
    per_thread = 5_000

    def work() -> None:
        for _ in range(per_thread):
            metrics.request_started("GET")
            metrics.request_finished("GET", "/x", 200, 0.01, 10)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    labels = {"http_request_method": "GET", "http_route": "/x", "http_response_status_code": "200"}
    get = metrics.registry.get_sample_value
    assert get("http_server_request_duration_seconds_count", labels) == 4 * per_thread
    assert get("http_server_response_body_size_bytes_sum", labels) == 4 * per_thread * 10
    assert get("http_server_active_requests", {"http_request_method": "GET"}) == 0


@pytest.mark.parametrize("access_log", [False, True], ids=["metrics-only", "access-log"])
def test_in_flight_gauge_counts_every_request_in_flight_across_threads(
    access_log: bool,
) -> None:
    """The in-flight gauge is a deque per method in one process (append and pop, no lock):
    eight requests held inside the app at once on eight threads read 8 at a scrape, while
    another thread records 2,000 requests through the public request_started() and
    request_finished(); once every response is closed it reads 0 and every request is
    counted. It fails when the request path loses a +1 (checked: without the append in
    the WSGI middleware's metrics-only path it reads 0 with eight requests in flight). A lost -1 in
    prom_request is caught before first use by the direct writes' own check
    (metrics._check_direct_values, checked: the requests then take the public path)."""
    from pyobs._config import load_config
    from pyobs._observer import RequestObserver
    from pyobs.wsgi import ObservabilityMiddleware

    metrics = PyobsMetrics(CollectorRegistry())
    observer = RequestObserver(load_config({}, tracing=False, access_log=access_log), metrics)
    inside = threading.Barrier(9)
    leave = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/held":
            inside.wait(10)
            assert leave.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    middleware = ObservabilityMiddleware(app, route_resolver=lambda environ: environ["PATH_INFO"])
    middleware.observer = observer

    def get(path: str) -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.url_scheme": "http"}
        body = middleware(environ, lambda status, headers, *_: None)
        assert b"".join(body) == b"ok"
        body.close()  # type: ignore[attr-defined]

    def public() -> None:
        for _ in range(2_000):
            metrics.request_started("GET")
            metrics.request_finished("GET", "/public", 200, 0.001, 1)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "http_server_active_requests", {"http_request_method": "GET"}
        )

    def count(route: str) -> float | None:
        labels = {"http_request_method": "GET", "http_route": route}
        return metrics.registry.get_sample_value(
            "http_server_request_duration_seconds_count",
            {**labels, "http_response_status_code": "200"},
        )

    get("/warm")  # the method's deque exists: the held requests take its path
    held = [threading.Thread(target=get, args=("/held",)) for _ in range(8)]
    for t in held:
        t.start()
    inside.wait(10)  # all eight are inside the app
    other = threading.Thread(target=public)
    other.start()
    other.join()
    assert gauge() == 8
    leave.set()
    for t in held:
        t.join()
    assert gauge() == 0
    assert count("/held") == 8
    assert count("/public") == 2_000


def test_in_flight_gauge_falls_back_to_inc_when_the_gauge_refuses_a_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If prometheus_client's Gauge refuses set_function (a future version), the in-flight
    gauge is written through the child's public inc()/dec() instead: still exact, and the
    refusal is counted once as an internal error."""
    from prometheus_client import REGISTRY, Gauge

    def refuses(self: Any, f: Any) -> None:
        raise NotImplementedError("no functions here")

    monkeypatch.setattr(Gauge, "set_function", refuses)
    metrics = PyobsMetrics(CollectorRegistry())
    before = REGISTRY.get_sample_value("pyobs_internal_errors_total", {"component": "metrics"})
    metrics.request_started("GET")
    get = metrics.registry.get_sample_value
    assert get("http_server_active_requests", {"http_request_method": "GET"}) == 1
    metrics.request_finished("GET", "/x", 200, 0.01, 10)
    metrics.request_started("GET")
    metrics.request_finished("GET", "/x", 200, 0.01, 10)
    assert get("http_server_active_requests", {"http_request_method": "GET"}) == 0
    assert metrics.inflight == {}
    labels = {"http_request_method": "GET", "http_route": "/x", "http_response_status_code": "200"}
    assert get("http_server_request_duration_seconds_count", labels) == 2
    after = REGISTRY.get_sample_value("pyobs_internal_errors_total", {"component": "metrics"})
    assert (after or 0) == (before or 0) + 1


class _Opaque:
    """A metric child of a prometheus_client layout pyobs does not know."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float, exemplar: object = None) -> None:
        self.seen.append(amount)

    def inc(self, amount: float = 1) -> None:
        self.seen.append(amount)

    def labels(self, *labels: str) -> _Opaque:
        return self


def test_unknown_layout_falls_back_to_the_public_api() -> None:
    """Without the expected internals (or in multiprocess mode) the public API is used."""
    metrics = PyobsMetrics(CollectorRegistry())
    duration, size, active, body = _Opaque(), _Opaque(), _Opaque(), _Opaque()
    fake: Any = metrics
    fake.request_duration, fake.response_size = duration, size
    fake.active_requests, fake.request_size = active, body
    metrics.request_started("GET")
    metrics.request_finished("GET", "/x", 200, 0.25, 7, "ab" * 16)
    metrics.request_body("GET", "/x", 3)
    assert (duration.seen, size.seen, active.seen, body.seen) == ([0.25], [7], [1, -1], [3])


def test_direct_writes_are_on_for_the_tested_versions() -> None:
    """The shortcut is active on the installed prometheus_client: fails if it silently turns off."""
    from pyobs import _internals
    from pyobs import metrics as metrics_module

    _internals.recheck(_internals.PROM_VALUES.name)
    assert metrics_module.direct_values_ok()
    metrics = PyobsMetrics(CollectorRegistry())
    metrics.request_started("GET")
    metrics.request_finished("GET", "/x", 200, 0.1, 5)
    assert metrics.series[("GET", "/x", 200)].direct is not None


def _recorded(metrics: PyobsMetrics) -> tuple[float | None, float | None, float | None]:
    labels = {"http_request_method": "GET", "http_route": "/x", "http_response_status_code": "200"}
    get = metrics.registry.get_sample_value
    return (
        get("http_server_request_duration_seconds_count", labels),
        get("http_server_response_body_size_bytes_sum", labels),
        get("http_server_active_requests", {"http_request_method": "GET"}),
    )


def _assert_public_fallback(caplog: pytest.LogCaptureFixture) -> None:
    """With the patched prometheus_client: the check turns the shortcut off, warns, and the
    public API still counts three requests exactly."""
    from pyobs import _internals
    from pyobs import metrics as metrics_module

    _internals.recheck(_internals.PROM_VALUES.name)
    try:
        with caplog.at_level("WARNING", logger="pyobs.internal"):
            metrics = PyobsMetrics(CollectorRegistry())
            for _ in range(3):
                metrics.request_started("GET")
                metrics.request_finished("GET", "/x", 200, 0.1, 5)
        assert not metrics_module.direct_values_ok()
        assert "public API" in caplog.text
        assert _recorded(metrics) == (3, 15, 0)
    finally:
        _internals.recheck(_internals.PROM_VALUES.name)


def test_renamed_private_value_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MutexValue renamed ``_value`` in a release: public API, a warning, exact counts."""
    import threading as _threading

    from prometheus_client.values import MutexValue

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        self._v, self._exemplar, self._lock = 0.0, None, _threading.Lock()

    def inc(self: Any, amount: float) -> None:
        with self._lock:
            self._v += amount

    def set_(self: Any, value: float, timestamp: float | None = None) -> None:
        self._v = value

    monkeypatch.setattr(MutexValue, "__init__", init)
    monkeypatch.setattr(MutexValue, "inc", inc)
    monkeypatch.setattr(MutexValue, "set", set_)
    monkeypatch.setattr(MutexValue, "get", lambda self: self._v)
    _assert_public_fallback(caplog)


def test_diverging_internals_fall_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Same private names, new meaning: the first-use check notices; public API used."""
    from prometheus_client.values import MutexValue

    original_inc: Any = MutexValue.inc
    # A release that stores half the amount and doubles it when read: the layout check passes.
    monkeypatch.setattr(MutexValue, "inc", lambda self, amount: original_inc(self, amount / 2))
    monkeypatch.setattr(MutexValue, "get", lambda self: self._value * 2)
    _assert_public_fallback(caplog)


def test_untested_version_uses_the_public_api(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A prometheus_client older than the tested range never takes the shortcut, and says so."""
    from pyobs import _internals

    real = _internals.installed
    monkeypatch.setattr(
        _internals,
        "installed",
        lambda dist: "0.1.0" if dist == "prometheus_client" else real(dist),
    )
    _internals.recheck(_internals.PROM_VALUES.name)
    _internals.recheck(_internals.PROM_VALUES.name)
    with caplog.at_level("WARNING", logger="pyobs.internal"):
        metrics = PyobsMetrics(CollectorRegistry())
        metrics.request_started("GET")
        metrics.request_finished("GET", "/x", 200, 0.1, 5)
    assert metrics.series[("GET", "/x", 200)].direct is None
    assert "older than tested" in caplog.text
    assert _recorded(metrics) == (1, 5, 0)
    _internals.recheck(_internals.PROM_VALUES.name)


@pytest.mark.parametrize("access_log", [False, True], ids=["metrics-only", "access-log"])
@pytest.mark.parametrize("fails", ["before the gauge", "after the gauge"])
def test_a_direct_write_failing_on_the_request_path_records_the_request_once(
    fails: str, access_log: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WSGI requests record through the direct writes, which RequestHandle._done()
    (metrics-only) and RequestObserver.finish() (any other signal on) call without going
    through request_finished(). When that write raises (a layout change seen only in use),
    the request is still counted exactly once through the public API, the in-flight gauge is
    back at 0 (not -1, not 1), the failure is counted, and later requests take the public
    path."""
    from prometheus_client import REGISTRY

    from pyobs import _internals
    from pyobs._config import load_config
    from pyobs._observer import RequestObserver
    from pyobs.wsgi import ObservabilityMiddleware

    metrics = PyobsMetrics(CollectorRegistry())
    observer = RequestObserver(load_config({}, tracing=False, access_log=access_log), metrics)
    assert observer.details is access_log  # False: the metrics-only path

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    middleware = ObservabilityMiddleware(app, route_resolver=lambda environ: "/x")
    middleware.observer = observer
    real = _internals.prom_request
    calls = []

    def breaks(lock: Any, direct: tuple[Any, ...], *args: Any) -> None:
        calls.append(1)
        if fails == "after the gauge":
            direct[0].pop()  # the in-flight deque, as prom_request writes it first
            raise _internals.AfterGauge() from AttributeError("_value")
        raise AttributeError("'MutexValue' object has no attribute '_value'")

    def get() -> tuple[int, list[tuple[str, str]]]:
        seen: list[tuple[str, list[tuple[str, str]]]] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.url_scheme": "http"}
        body = middleware(environ, lambda status, headers, *_: seen.append((status, headers)))
        assert b"".join(body) == b"hello"
        body.close()  # type: ignore[attr-defined]
        return int(seen[0][0][:3]), seen[0][1]

    errors_before = REGISTRY.get_sample_value(
        "pyobs_internal_errors_total", {"component": "metrics"}
    )
    try:
        assert get()[0] == 200  # the series is cached with its direct values
        monkeypatch.setattr(_internals, "prom_request", breaks)
        status, headers = get()
        assert status == 200 and any(name == "X-Request-ID" for name, _ in headers)
        assert calls == [1]
        assert get()[0] == 200  # the public path from now on: prom_request not called again
        assert calls == [1]
        assert _recorded(metrics) == (3, 15, 0)
        errors_after = REGISTRY.get_sample_value(
            "pyobs_internal_errors_total", {"component": "metrics"}
        )
        assert (errors_after or 0) == (errors_before or 0) + 1
    finally:
        monkeypatch.setattr(_internals, "prom_request", real)
        _internals.recheck(_internals.PROM_VALUES.name)
