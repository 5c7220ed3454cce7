"""The gated internals (issue 15.1): every shortcut is on where tested, checked, and falls back.

A shortcut that silently turned off would cost speed without anyone noticing, and one that
diverged would record wrong data: both fail here. When a private name disappears (simulated
by making its one accessor in ``pyobs._internals`` fail as it would) or the check finds a
difference, pyobs warns, counts, and records the request through the public API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.core_apps import Client

ERRORS = "pyobs_internal_errors_total"


@pytest.fixture
def fresh_gates() -> Iterator[None]:
    """Every shortcut unchecked before and after the test, so each test sees a first use."""
    from pyobs import _internals, tracing

    _internals.recheck()
    tracing._recorder_for = None
    yield
    _internals.recheck()
    tracing._recorder_for = None


def _client() -> Client:
    import_or_require("flask")
    from flask import Flask

    from pyobs import flask as pyobs_flask

    app = Flask("gates")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        return "ok"

    pyobs_flask.instrument(app)
    return Client("flask", app)


def _served_span() -> Any:
    from pyobs.testing import span_exporter

    client = _client()
    exporter = span_exporter()
    exporter.clear()
    assert client.get("/orders/1").status == 200
    (span,) = exporter.get_finished_spans()
    return span


def test_every_shortcut_is_on_with_the_installed_versions(fresh_gates: None) -> None:
    """With the libraries installed here, each shortcut passes its check and is in use."""
    from pyobs import _internals, _span

    span = _served_span()
    assert type(span) is _span.RequestSpan  # the shortcut served the request
    used = [s for s in _internals.status() if s.enabled is not None]
    assert used, "no shortcut was checked"
    for shortcut in used:
        assert shortcut.enabled, f"{shortcut.name} is off: {shortcut.reason}"


def test_each_shortcut_states_its_tested_range() -> None:
    """Every shortcut names its distribution and a lowest/newest tested version pair."""
    from pyobs import _internals

    for shortcut in _internals.status():
        low, high = shortcut.tested
        assert _internals._version(low) <= _internals._version(high)
        assert shortcut.what and shortcut.distribution


def test_the_private_names_the_span_shortcut_reads_exist() -> None:
    """The SDK names behind the accessors are all there: a rename fails here, not silently."""
    from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider

    from pyobs import _internals

    provider = TracerProvider(shutdown_on_exit=False)
    processor = _internals.sdk_span_processor(provider)
    # Newer SDKs call _on_ending (1.25 does not); pyobs calls it exactly when the SDK has it.
    has_hook = hasattr(SpanProcessor, "_on_ending")
    assert callable(_internals.sdk_on_ending(processor)) is has_hook
    assert isinstance(provider._span_limits, SpanLimits)
    span = ReadableSpan("probe")
    for name in ("_name", "_attributes", "_events", "_links", "_status", "_end_time"):
        assert hasattr(span, name), name


def test_a_missing_private_name_falls_back_to_the_public_path(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider's processor attribute gone: a warning that names it, and the span comes
    from the SDK's public path with every attribute."""
    from pyobs import _internals, _span

    def gone(provider: Any) -> Any:
        raise AttributeError("'TracerProvider' object has no attribute '_active_span_processor'")

    monkeypatch.setattr(_internals, "sdk_span_processor", gone)
    with caplog.at_level(logging.WARNING, logger="pyobs.internal"):
        span = _served_span()
    assert type(span) is not _span.RequestSpan
    assert span.name == "GET /orders/<int:order_id>"
    assert span.attributes["http.response.status_code"] == 200
    assert "_active_span_processor" in caplog.text
    assert _internals.OTEL_SPAN.enabled is False


def test_a_shortcut_that_fails_in_use_is_counted_and_turned_off(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private name that passes the check but is gone for the real provider: counted in
    pyobs_internal_errors_total{component="tracing"}, and the request still has its span."""
    from prometheus_client import REGISTRY

    from pyobs import _internals, _span

    real = _internals.sdk_span_processor
    probe_provider: list[Any] = []

    def only_for_the_probe(provider: Any) -> Any:
        from opentelemetry import trace

        if provider is trace.get_tracer_provider():
            raise AttributeError(
                "'TracerProvider' object has no attribute '_active_span_processor'"
            )
        probe_provider.append(provider)
        return real(provider)

    monkeypatch.setattr(_internals, "sdk_span_processor", only_for_the_probe)
    before = REGISTRY.get_sample_value(ERRORS, {"component": "tracing"}) or 0.0
    span = _served_span()
    assert probe_provider  # the check ran, and passed
    assert type(span) is not _span.RequestSpan
    assert span.attributes["http.route"] == "/orders/<int:order_id>"
    assert REGISTRY.get_sample_value(ERRORS, {"component": "tracing"}) == before + 1
    assert _internals.OTEL_SPAN.enabled is False


def test_a_diverging_shortcut_is_turned_off_with_a_warning(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the first-use check finds a difference, pyobs warns and uses the public API."""
    from pyobs import _internals, _span

    monkeypatch.setattr(_span, "_probe", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pyobs.internal"):
        span = _served_span()
    assert type(span) is not _span.RequestSpan
    assert span.attributes["http.route"] == "/orders/<int:order_id>"
    (warning,) = [r for r in caplog.records if "otel-sdk-span" in r.getMessage()]
    assert "differs from the public API" in warning.getMessage()
    assert _internals.OTEL_SPAN.enabled is False


def test_the_shortcut_check_detects_a_renamed_span_field(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ReadableSpan field renamed (its property reads another name): the check fails."""
    from opentelemetry.sdk.trace import ReadableSpan

    from pyobs import _span

    original = ReadableSpan.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._span_name = self._name

    def update_name(self: Any, name: str) -> None:
        self._span_name = name

    from opentelemetry.sdk.trace import Span as SdkSpan

    monkeypatch.setattr(ReadableSpan, "__init__", init)
    monkeypatch.setattr(ReadableSpan, "name", property(lambda self: self._span_name))
    monkeypatch.setattr(SdkSpan, "update_name", update_name)
    assert _span._same_as_sdk() is False


def test_the_shortcut_check_detects_a_new_processor_hook(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK release whose span calls a new processor hook: the check sees the shortcut
    does not, and fails (the public path then serves every hook)."""
    from opentelemetry.sdk.trace import Span as SdkSpan
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor

    from pyobs import _span

    def before_end(self: Any, span: Any) -> None:
        for processor in self._span_processors:
            getattr(processor, "_before_end", lambda span: None)(span)

    original_end = SdkSpan.end

    def end(self: Any, end_time: Any = None) -> None:
        self._span_processor._before_end(self)
        original_end(self, end_time)

    assert _span._same_as_sdk() is True
    monkeypatch.setattr(SynchronousMultiSpanProcessor, "_before_end", before_end, raising=False)
    monkeypatch.setattr(SdkSpan, "end", end)
    assert _span._same_as_sdk() is False


def test_an_older_library_than_tested_turns_the_shortcut_off(
    fresh_gates: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Below the tested range the shortcut is not tried: a warning, then the public path."""
    from pyobs import _internals

    monkeypatch.setattr(_internals, "installed", lambda name: "1.0.0")
    with caplog.at_level(logging.WARNING, logger="pyobs.internal"):
        assert _internals.gate(_internals.OTEL_SPAN.name, lambda: True) is False
    assert "older than tested" in caplog.text


def test_gate_checks_once_and_a_failing_check_turns_off(fresh_gates: None) -> None:
    """gate() runs the check at first use only; a check that raises means off, not a crash."""
    from pyobs import _internals

    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return True

    name = "test-probe-shortcut"
    _internals.register(name, "opentelemetry-api", ("1.0.0", "99.0.0"), "metrics", "a probe")
    assert _internals.gate(name, check) is True
    assert _internals.gate(name, check) is True
    assert calls == [1]

    def raises() -> bool:
        raise AttributeError("'MutexValue' object has no attribute '_value'")

    _internals.recheck(name)
    assert _internals.gate(name, raises) is False
    assert "AttributeError" in _internals._SHORTCUTS[name].reason
    del _internals._SHORTCUTS[name]


def test_an_adopted_span_gets_the_attributes_of_pyobs_own_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What pyobs writes over FastAPI's native span (the FastAPI shortcut off) is exactly what
    its own span carries: an odd method, a secret query, captured headers and all."""
    from pyobs import _integration
    from pyobs._config import load_config
    from pyobs._observer import RequestFacts, RequestObserver

    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-probe|authorization"
    )
    _client()  # pyobs set up, with its tracer provider
    observer = RequestObserver(load_config({}))
    headers = {"x-probe": "one", "authorization": "Bearer s3cr3t", "user-agent": "probe/1"}
    facts = RequestFacts("BREW", "/orders/1", headers, "https", "token=s3cr3t&page=2",
                         "10.1.2.3", "shop.example", 8443, "2")  # fmt: skip
    handle = observer.start(facts)
    assert handle is not None and handle.owns_span
    try:
        own = dict(handle.span.attributes)
        written = _integration.request_attributes(observer, handle)
    finally:
        observer.finish(handle, 200)
        observer.detach(handle)
    assert written == own
    assert written["http.request.method"] == "_OTHER"
    assert written["url.query"] == "token=[REDACTED]&page=2"
    assert "s3cr3t" not in repr(written)
    assert "http.request.header.x-probe" in written
