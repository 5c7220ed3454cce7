"""Fault injection (CONTRACT §3, issue 13.1): one broken signal never costs the others.

Each probe breaks one thing inside a real server's worker (a span processor, a logging
handler, the metrics code) and sends one request. Afterwards the request must still be in
every signal that was not broken, ``http_server_active_requests`` must be back to 0, and
the error must be counted in ``pyobs_internal_errors_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.conftest import Served, by_name, serving
from tests.gunicorn_probe import gunicorn, wait_for

DURATION_COUNT = "http_server_request_duration_seconds_count"
ACTIVE = "http_server_active_requests"
ERRORS = "pyobs_internal_errors_total"
# Real servers, each with its framework's tiny app: uvicorn, Tornado, aiohttp, Sanic, Werkzeug.
SERVERS = ["fastapi", "tornado", "aiohttp", "sanic", "flask"]


@pytest.fixture(params=SERVERS)
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """One framework's tiny app on its own real server."""
    with serving(by_name(request.param), monkeypatch) as running:
        yield running


@pytest.fixture(autouse=True)
def _metrics_self_check_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The metrics module checks its fast path once per process; a probe that breaks the
    metrics code must not leave that verdict behind for other tests."""
    import pyobs.metrics as metrics_module

    if hasattr(metrics_module, "_direct_ok"):
        monkeypatch.setattr(metrics_module, "_direct_ok", metrics_module._direct_ok)


def _errors(served: Served, component: str) -> float:
    return served.sample(ERRORS, component=component) or 0.0


def _spans_for(served: Served, path: str) -> list[Any]:
    return [s for s in served.spans.get_finished_spans() if s.attributes.get("url.path") == path]


def assert_observed(
    served: Served, path: str, *, metrics: bool = True, logs: bool = True, spans: bool = True
) -> None:
    """The request is in each named signal and the in-flight gauge is back to 0."""
    route = served.framework.item_route
    if logs:
        assert served.wait_for(lambda: bool(served.access_logs(path))), "no access line"
    if spans:
        assert served.wait_for(lambda: bool(_spans_for(served, path))), "no span"
    if metrics:
        assert served.wait_for(
            lambda: (served.sample(DURATION_COUNT, http_route=route) or 0.0) >= 1.0
        ), "not in the metrics"
    # Absent (never went up) or back to 0.
    assert served.wait_for(lambda: not served.sample(ACTIVE, http_request_method="GET"))


class _Armed:
    """A span processor that raises in one hook while armed (the SDK cannot remove one)."""

    def __init__(self, hook: str) -> None:
        self.hook = hook
        self.armed = True

    def _maybe(self, hook: str) -> None:
        if self.armed and hook == self.hook:
            raise RuntimeError(f"span processor {hook} broke")

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._maybe("on_start")

    def _on_ending(self, span: Any) -> None:
        self._maybe("_on_ending")

    def on_end(self, span: Any) -> None:
        self._maybe("on_end")

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.fixture
def span_processor_fault() -> Iterator[Callable[[str], None]]:
    """Arm a raising span processor on the global provider for one test."""
    from opentelemetry import trace

    armed: list[_Armed] = []

    def arm(hook: str) -> None:
        processor = _Armed(hook)
        armed.append(processor)
        trace.get_tracer_provider().add_span_processor(processor)  # type: ignore[attr-defined]

    yield arm
    for processor in armed:
        processor.armed = False


@pytest.mark.parametrize("hook", ["on_start", "_on_ending", "on_end"])
def test_a_span_processor_that_raises_costs_no_signal(
    served: Served, hook: str, span_processor_fault: Callable[[str], None]
) -> None:
    """A processor raising in on_start/_on_ending/on_end: the request is still answered,
    logged, measured and exported; the gauge is back to 0; the error is counted."""
    before = _errors(served, "tracing")
    span_processor_fault(hook)
    status, _, _ = served.get("/items/7")
    assert status == 200
    assert_observed(served, "/items/7")
    assert _errors(served, "tracing") >= before + 1


def test_a_logging_handler_that_raises_costs_no_span_or_metric(served: Served) -> None:
    """A handler that raises on pyobs's records: spans and metrics are still recorded, and
    the handlers before it still got the access line."""

    class Raising(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name.startswith("pyobs"):
                raise RuntimeError("log handler broke")

    root = logging.getLogger()
    handler = Raising()
    before = _errors(served, "access_log")
    root.addHandler(handler)  # after the suite's capture handler
    try:
        assert served.get("/items/8")[0] == 200
        assert_observed(served, "/items/8")
    finally:
        root.removeHandler(handler)
    assert _errors(served, "access_log") >= before + 1


def test_metrics_that_fail_cost_no_span_or_log_line(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics code raising (a prometheus_client layout change): spans and access lines
    are still produced and the in-flight gauge does not stay up."""
    from pyobs.metrics import PyobsMetrics

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AttributeError("'MutexValue' object has no attribute '_value'")

    from pyobs import _internals

    before = _errors(served, "metrics")
    # Both ways of writing a histogram break (a changed layout, and its public API too);
    # request_finished still takes the in-flight gauge down exactly once.
    monkeypatch.setattr(_internals, "prom_request", broken)
    monkeypatch.setattr(PyobsMetrics, "_public_observe", broken)
    monkeypatch.setattr(PyobsMetrics, "request_body", broken)
    for n in range(1, 4):
        assert served.get(f"/items/{n}", headers={"Content-Length": "0"})[0] == 200
    for n in range(1, 4):
        assert_observed(served, f"/items/{n}", metrics=False)
    monkeypatch.undo()
    assert _errors(served, "metrics") >= before + 3


def test_a_gauge_that_cannot_go_up_never_goes_down(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the increment fails, finish() must not decrement: the gauge stays at 0, not -1."""
    from pyobs.metrics import PyobsMetrics

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("gauge broke")

    monkeypatch.setattr(PyobsMetrics, "request_started", broken)
    assert served.get("/items/5")[0] == 200
    assert served.wait_for(lambda: bool(served.access_logs("/items/5")))
    monkeypatch.undo()
    assert_observed(served, "/items/5", metrics=False)


def test_a_broken_route_label_still_counts_the_request(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route label failing: the request is counted as <unmatched>, every other signal
    keeps its route, and the gauge is back to 0."""
    from pyobs.metrics import PyobsMetrics

    def broken(self: Any, route: str | None) -> str:
        raise ZeroDivisionError("simulated pyobs bug")

    monkeypatch.setattr(PyobsMetrics, "route_label", broken)
    assert served.get("/items/6")[0] == 200
    assert served.wait_for(lambda: bool(served.access_logs("/items/6")))
    monkeypatch.undo()
    assert_observed(served, "/items/6", metrics=False)
    assert served.sample(DURATION_COUNT, http_route="<unmatched>", http_response_status_code="200")
    (line,) = served.access_logs("/items/6")
    assert line["http.route"] == served.framework.item_route


# -- gunicorn: the same faults inside a real pre-fork worker ----------------------------------


@pytest.mark.parametrize(
    ("fault", "component", "signals", "multiprocess"),
    [
        ("span_on_start", "tracing", {"metrics", "logs", "spans"}, False),
        ("span_on_start", "tracing", {"metrics", "logs", "spans"}, True),
        ("log_handler", "access_log", {"metrics", "spans"}, False),
        ("metrics", "metrics", {"logs", "spans"}, False),
    ],
)
def test_gunicorn_worker_faults_cost_no_other_signal(
    tmp_path: Path, fault: str, component: str, signals: set[str], multiprocess: bool
) -> None:
    """Under gunicorn: each fault leaves the other signals whole and is counted (also in
    multiprocess mode, where the count comes from the worker's value files)."""
    env = {"PROBE_FAULT": fault}
    if multiprocess:
        (tmp_path / "prom").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    with gunicorn(tmp_path, **env) as server:
        for n in range(1, 4):
            assert server.request("GET", f"/items/{n}")[0] == 200
        if "logs" in signals:
            assert wait_for(lambda: len(server.access_logs()) >= 3), server.stderr()[-2000:]
        if "spans" in signals:
            assert wait_for(lambda: len(server.spans()) >= 3), server.stderr()[-2000:]
        if "metrics" in signals:
            assert server.sample(DURATION_COUNT, http_route="/items/<int:item_id>") == 3.0
        assert server.sample(ACTIVE, http_request_method="GET") == 0.0
        assert (server.sample(ERRORS, component=component) or 0.0) >= 3.0
        if fault != "log_handler":  # that handler also refuses pyobs's own error lines
            internal = [
                r
                for r in server.logs()
                if r.get("log.logger") == "pyobs.internal"
                and r["message"].startswith("pyobs internal error")
            ]
            assert len(internal) == 1  # rate-limited: one line for three errors of a kind


# -- the rate limit of internal error lines ---------------------------------------------------


def test_internal_error_lines_are_rate_limited_never_silenced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per (component, error type) per interval; the next one says how many were
    left out; every error is counted."""
    from prometheus_client import REGISTRY

    from pyobs import _errors

    now = [1000.0]
    monkeypatch.setattr(_errors, "_clock", lambda: now[0])
    _errors._reset_rate_limit()
    before = REGISTRY.get_sample_value(ERRORS, {"component": "shipper"}) or 0.0
    with caplog.at_level(logging.ERROR, logger="pyobs.internal"):
        for _ in range(5):
            _errors.report("shipper", ConnectionError("refused"))
        _errors.report("shipper", ValueError("another kind"))
        now[0] += _errors.INTERVAL + 1
        _errors.report("shipper", ConnectionError("refused"))
    lines = [r.getMessage() for r in caplog.records if r.name == "pyobs.internal"]
    assert len(lines) == 3
    assert "4 more of this kind" in lines[2]
    assert REGISTRY.get_sample_value(ERRORS, {"component": "shipper"}) == before + 7


def test_old_entry_point_maps_places_to_components() -> None:
    """report_internal_error("aiohttp.request", ...) still works and counts as an adapter error."""
    from prometheus_client import REGISTRY

    from pyobs._observer import report_internal_error

    before = REGISTRY.get_sample_value(ERRORS, {"component": "adapter"}) or 0.0
    report_internal_error("aiohttp.request", KeyError("x"))
    assert REGISTRY.get_sample_value(ERRORS, {"component": "adapter"}) == before + 1
