"""Tracer-provider adoption, W3C context extraction and exporter selection (CONTRACT §4)."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util import BoundedList

from pyobs import _context, _errors, _internals, _otel_env
from pyobs._config import Config
from pyobs._version import __version__
from pyobs.redact import scrub

_log = logging.getLogger("pyobs")

_tracer: trace.Tracer | None = None

# OpenTelemetry's global propagator, configured by OTEL_PROPAGATORS when the API is imported.
# The API raises at import when a named propagator's package is missing; pyobs must not take
# the application down with it, so it then uses the propagators that do load (and warns at
# setup, naming the package to install).
_propagate: Any
_propagate_error: str | None = None
try:
    from opentelemetry import propagate as _propagate
except Exception as _exc:  # noqa: BLE001 - "Propagator b3multi not found. ...", or its ImportError
    _propagate = None
    _propagate_error = str(_exc)
_fallback_textmap: TextMapPropagator | None = None
# The API's public getter of the global propagator (None when the API failed to import).
_global_textmap: Any = None if _propagate is None else _propagate.get_global_textmap
_installed: list[Any] = []  # the provider pyobs installed (kept: the global one stays set)
_missing_propagators: list[str] = []
_warned: list[bool] = []  # the missing-propagator warning was given (once per process)


class _MappingGetter(Getter[Mapping[str, str]]):
    """Reads lower-cased header names from a plain mapping."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _MappingGetter()

# Headers whose presence makes a known propagator's extract() find something; without any of
# them extraction is skipped (it is on every request's path). An unknown propagator type is
# always asked.
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "opentelemetry.trace.propagation.tracecontext.TraceContextTextMapPropagator": ("traceparent",),
    "opentelemetry.baggage.propagation.W3CBaggagePropagator": ("baggage",),
    # Both B3 formats read the single `b3` header and the multi headers alike.
    "opentelemetry.propagators.b3.B3MultiFormat": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.b3.B3SingleFormat": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.b3.B3Format": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.jaeger.JaegerPropagator": ("uber-trace-id",),
}
_triggers_for: Any = None
_triggers: tuple[str, ...] | None = ()
_W3C_TRIGGERS = ("traceparent", "baggage")


def _learn_triggers(textmap: TextMapPropagator) -> None:
    global _triggers_for, _triggers
    from opentelemetry.propagators.composite import CompositePropagator

    parts: list[Any] = [textmap]
    if type(textmap) is CompositePropagator:
        parts = list(getattr(textmap, "_propagators", [textmap]))
    found: list[str] = []
    for part in parts:
        kind = type(part)
        headers = _TRIGGERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if headers is None:
            _triggers_for, _triggers = textmap, None
            return
        found.extend(h for h in headers if h not in found)
    _triggers_for = textmap
    _triggers = _W3C_TRIGGERS if tuple(found) == _W3C_TRIGGERS else tuple(found)


def textmap() -> TextMapPropagator:
    """The propagator pyobs extracts with: OpenTelemetry's global one (``OTEL_PROPAGATORS``)."""
    if _propagate is not None:
        return _propagate.get_global_textmap()  # type: ignore[no-any-return]
    return _fallback()


def _fallback() -> TextMapPropagator:
    """The propagators of OTEL_PROPAGATORS that load, when OpenTelemetry's import failed."""
    global _fallback_textmap
    if _fallback_textmap is None:
        from importlib.metadata import entry_points

        from opentelemetry.propagators.composite import CompositePropagator

        loaded: list[TextMapPropagator] = []
        for name in _otel_env.propagator_names(os.environ):
            found = list(entry_points(group="opentelemetry_propagator", name=name))
            try:
                loaded.append(found[0].load()())
            except Exception:  # noqa: BLE001 - missing or broken: warned about at setup
                _missing_propagators.append(name)
        _fallback_textmap = CompositePropagator(loaded)
    return _fallback_textmap


def extract(headers: Mapping[str, str]) -> Context | None:
    """The incoming context as the configured propagators read it; None when there is none.

    ``OTEL_PROPAGATORS`` chooses the formats (default W3C tracecontext and baggage; b3,
    b3multi, jaeger with their packages; none). A malformed header yields a context without
    a valid span, so a fresh trace starts.
    """
    propagator = textmap()
    if not _may_carry_context(propagator, headers):
        return None
    return propagator.extract(headers, getter=_GETTER)


def may_carry_context(headers: Mapping[str, str]) -> bool:
    """False when none of the headers the current global propagator reads is present.

    It runs on every request: one call, the propagator asked for with the API's
    ``get_global_textmap()``, and its headers learned again only when the app set another.
    """
    propagator = _global_textmap() if _global_textmap is not None else _fallback()
    if propagator is not _triggers_for:  # set_global_textmap() since: learn its headers
        _learn_triggers(propagator)
    triggers = _triggers
    if triggers is _W3C_TRIGGERS:  # the default: tracecontext,baggage
        return "traceparent" in headers or "baggage" in headers
    if triggers is not None:
        return any(name in headers for name in triggers)
    return True


def _may_carry_context(propagator: TextMapPropagator, headers: Mapping[str, str]) -> bool:
    if propagator is not _triggers_for:  # set_global_textmap() since: learn its headers
        _learn_triggers(propagator)
    triggers = _triggers
    if triggers is _W3C_TRIGGERS:  # the default: tracecontext,baggage
        return "traceparent" in headers or "baggage" in headers
    if triggers is not None:
        return any(name in headers for name in triggers)
    return True


def _exporter_names() -> list[str]:
    """OTEL_TRACES_EXPORTER; unset: otlp when an OTLP endpoint is configured, else none."""
    return _otel_env.exporter_names(os.environ)


def _one_line_span(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _make_exporter(name: str) -> Any:
    """The span exporter OTEL_TRACES_EXPORTER names; None (with a warning) when unavailable.

    ``console`` writes one JSON span per line to stderr. ``otlp`` picks HTTP or gRPC from
    ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` (default ``http/protobuf``); the exporter reads
    its endpoint, headers, timeout, compression and certificates from the environment
    itself. Any other name is loaded like the SDK loads it (entry point group
    ``opentelemetry_traces_exporter``) and built without arguments.
    """
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # Spans go to stderr, one per line, so stdout stays pure JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line_span)
    if name in ("otlp", "otlp_proto_http", "otlp_proto_grpc"):
        protocol = _otel_env.otlp_protocol(os.environ)
        grpc = name == "otlp_proto_grpc" or (name == "otlp" and protocol == "grpc")
        try:
            if grpc:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
        except ImportError:
            _log.warning(
                "pyobs: OTLP export (%s) was asked for but the exporter is not installed; "
                'install "pyobs-kit[otlp]". Spans are not exported.',
                "grpc" if grpc else "http/protobuf",
            )
            return None
        return OTLPSpanExporter()
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    try:
        return found[0].load()()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop the app
        _log.warning(
            "pyobs: OTEL_TRACES_EXPORTER names %r, which cannot be loaded (%s); "
            "its spans are not exported",
            name,
            exc,
        )
        return None


def _warn_missing_propagators() -> None:
    """Say once, at setup, which OTEL_PROPAGATORS entries are not installed."""
    if _propagate is not None or _warned:
        return
    _warned.append(True)
    _fallback()
    names = list(dict.fromkeys(_missing_propagators))
    packages = sorted({_otel_env.KNOWN_PROPAGATORS.get(n, n) for n in names})
    _log.warning(
        "pyobs: OTEL_PROPAGATORS names %s, but the package is not installed "
        "(pip install %s); incoming %s headers are not read until it is. OpenTelemetry's "
        "own propagation module cannot be imported in this process (%s).",
        ", ".join(names) or "a propagator",
        " ".join(packages),
        "/".join(names) or "its",
        _propagate_error,
    )


def configure_tracing(config: Config) -> trace.Tracer:
    """Adopt the global TracerProvider if the app set one; otherwise install an SDK provider.

    The provider's resource names the service exactly as pyobs's logs and ``pyobs_info`` do
    (``config.service_name``, resolved from the options, PYOBS_ and OTEL_ variables), merged
    over what the resource detectors and OTEL_RESOURCE_ATTRIBUTES give.
    """
    global _tracer
    _warn_missing_propagators()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider) and config.tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        attributes: dict[str, str] = {"service.name": config.service_name}
        if config.service_version:
            attributes["service.version"] = config.service_version
        if config.environment:
            attributes["deployment.environment.name"] = config.environment
        # Resource.create runs the detectors (OTEL_EXPERIMENTAL_RESOURCE_DETECTORS) and merges
        # OTEL_RESOURCE_ATTRIBUTES; the SDK's own samplers come from OTEL_TRACES_SAMPLER[_ARG]
        # inside TracerProvider, a plug-in sampler from its entry point.
        sdk = TracerProvider(resource=Resource.create(attributes), sampler=_plugin_sampler())
        for name in _exporter_names():
            exporter = _make_exporter(name)
            if exporter is not None:
                processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
                sdk.add_span_processor(processor(exporter))
        trace.set_tracer_provider(sdk)
        provider = trace.get_tracer_provider()
        _installed.append(provider)
    elif config.tracing and provider not in _installed:
        _check_adopted_resource(provider, config)
    _tracer = provider.get_tracer("pyobs", __version__)
    return _tracer


def _plugin_sampler() -> Any:
    """A sampler OTEL_TRACES_SAMPLER names through its entry point; None for the SDK's own."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name or name in _otel_env.SDK_SAMPLERS:
        return None
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_sampler", name=name))
    try:
        factory = found[0].load()
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
        return factory(arg) if arg is not None else factory()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in: the SDK's default instead
        _log.warning(
            "pyobs: OTEL_TRACES_SAMPLER=%s cannot be loaded (%s); using parentbased_always_on",
            name,
            exc,
        )
        return None


def _check_adopted_resource(provider: Any, config: Config) -> None:
    """Warn when the application's own provider names the service unlike pyobs's logs."""
    resource = getattr(provider, "resource", None)
    name = getattr(resource, "attributes", {}).get("service.name")
    if isinstance(name, str) and name != config.service_name:
        _log.warning(
            "pyobs: the application's TracerProvider names the service %r, but pyobs's logs "
            "and pyobs_info say %r; set PYOBS_SERVICE_NAME (or OTEL_SERVICE_NAME) so they "
            "agree",
            name,
            config.service_name,
        )


_UNSET = trace.Status(trace.StatusCode.UNSET)
_ERROR = trace.Status(trace.StatusCode.ERROR)
_SAMPLED = int(trace.TraceFlags.SAMPLED)
# W3C Trace Context Level 2 random-trace-id flag, as the SDK sets it (API >= 1.40).
_RANDOM = int(getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0))
_FLAGS = {n: trace.TraceFlags(n) for n in (0, _SAMPLED, _RANDOM, _SAMPLED | _RANDOM)}
_NO_EVENTS: tuple[Event, ...] = ()
_INVALID_SPAN = trace.INVALID_SPAN
_NO_LINKS: tuple[trace.Link, ...] = ()


class RequestSpan(trace.Span, ReadableSpan):
    """The request's SERVER span, recorded by pyobs and handed to the SDK's span processors.

    The SDK's own span takes a lock and validates on every change; pyobs sets a dozen
    known-good attributes per request, so it records them itself (about 18 us less per
    request). It behaves like an SDK span: the provider's sampler, id generator, resource,
    span limits and processors are used, and application code can enrich it through
    ``get_current_span()``. This is a shortcut into SDK internals, gated in
    ``pyobs._internals`` (checked against ``Tracer.start_span`` at first use).
    """

    _kind = trace.SpanKind.SERVER
    _instrumentation_info = None
    # ReadableSpan's fields, as this class fills them (narrower than the base declares).
    _attributes: Any
    _events: Any
    _links: Any
    _context: trace.SpanContext
    ids: tuple[str, str, bool]  # (trace id, span id) in hex, sampled: set by its maker

    def __init__(
        self,
        recorder: _Recorder,
        name: str,
        context: trace.SpanContext,
        parent: trace.SpanContext | None,
        attributes: dict[str, Any],
    ) -> None:
        # ReadableSpan's fields, set directly: this object is also what the processors get.
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        if recorder.max_length is not None or len(attributes) > recorder.max_count:
            attributes = recorder.bounded(attributes)
        self._attributes = attributes
        self._events = _NO_EVENTS
        self._links = _NO_LINKS
        self._status = _UNSET
        self._resource = recorder.resource
        self._instrumentation_scope = recorder.scope
        self._start_time = time.time_ns()
        self._end_time = None

    def get_span_context(self) -> trace.SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        if self._end_time is not None:
            return
        attributes = self._attributes
        if type(attributes) is dict:
            if len(attributes) < self._recorder.max_count or key in attributes:
                # Values from application code are validated like the SDK does.
                cleaned = BoundedAttributes(attributes={key: value})
                if key in cleaned:
                    attributes[key] = cleaned[key]
                return
            attributes = self._attributes = self._recorder.bounded(attributes)
        attributes[key] = value  # BoundedAttributes: validates, truncates, drops the oldest

    def request_done(
        self,
        status_code: int,
        method: str,
        route: str | None,
        error_type: str | None,
        exception: BaseException | None,
    ) -> None:
        """The outcome pyobs records on its own span: status, route and name, error."""
        if self._end_time is not None:
            return
        attributes = self._attributes
        attributes["http.response.status_code"] = status_code
        if route is not None:
            attributes["http.route"] = route
            self._name = f"{method} {route}"
        if error_type is not None:
            attributes["error.type"] = error_type
            self._status = _ERROR
        if exception is not None:
            self.record_exception(exception)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        if self._end_time is not None:
            return
        recorder = self._recorder
        if type(self._events) is tuple:
            self._events = BoundedList(recorder.limits.max_events)
        self._events.append(Event(name, recorder.bounded(attributes, events=True), timestamp))

    def add_link(self, context: trace.SpanContext, attributes: Any = None) -> None:
        if self._end_time is not None or (
            (context is None or not context.is_valid) and not attributes
        ):
            return
        recorder = self._recorder
        if type(self._links) is tuple:
            self._links = BoundedList(recorder.limits.max_links)
        self._links.append(trace.Link(context, recorder.bounded(attributes, links=True)))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Any, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if not isinstance(status, trace.Status):
            status = trace.Status(status, description)
        # As the SDK: OK is final, and UNSET never overwrites.
        if self._status.status_code is trace.StatusCode.OK:
            return
        if status.status_code is trace.StatusCode.UNSET:
            return
        self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.add_event("exception", exception_attributes(exception, attributes, escaped), timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        processor = self._recorder.processor
        on_ending = self._recorder.on_ending
        # Each hook in its own guard: a failing processor costs neither the other signals
        # nor the export (CONTRACT §3).
        if on_ending is not None:
            try:
                on_ending(self)
            except Exception as exc:  # noqa: BLE001
                _errors.report("tracing", exc, "span processor _on_ending")
        try:
            # Like the SDK's span, a ReadableSpan is handed over: this object, no copy.
            processor.on_end(self)
        except Exception as exc:  # noqa: BLE001
            _errors.report("tracing", exc, "span processor on_end")


def exception_attributes(
    exception: BaseException, attributes: Any = None, escaped: bool = False
) -> dict[str, Any]:
    """The SDK's ``exception`` event attributes, with secrets scrubbed from message and trace."""
    cls = type(exception)
    module = cls.__module__
    fields: dict[str, Any] = {
        "exception.type": (
            f"{module}.{cls.__qualname__}" if module and module != "builtins" else cls.__qualname__
        ),
        "exception.message": scrub(str(exception)),
        "exception.stacktrace": scrub(
            "".join(traceback.format_exception(cls, exception, exception.__traceback__))
        ),
        "exception.escaped": str(escaped),
    }
    if attributes:
        fields.update(attributes)
    return fields


class _Recorder:
    """What a RequestSpan needs from an SDK TracerProvider (read once per provider)."""

    def __init__(self, provider: Any, tracer: Any) -> None:
        from opentelemetry.sdk.trace import sampling
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider = provider
        self.tracer = tracer
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.processor = _internals.sdk_span_processor(provider)
        self.on_ending = _internals.sdk_on_ending(self.processor)
        self.limits = _internals.sdk_span_limits(provider)
        self.max_length: int | None = self.limits.max_span_attribute_length
        self.max_count: int = self.limits.max_span_attributes
        if self.max_count is None:
            self.max_count = sys.maxsize
        self.scope = InstrumentationScope("pyobs", __version__)
        is_random = getattr(self.ids, "is_trace_id_random", None)
        self.random_ids = _RANDOM if callable(is_random) and is_random() else 0
        self.root_flags = _FLAGS[_SAMPLED | self.random_ids]  # a sampled new trace's flags
        # The default sampler (OTEL_TRACES_SAMPLER unset or parentbased_always_on) is one
        # shared instance with fixed delegates, so its decision can be taken inline.
        self.parent_based_always_on = self.sampler is sampling.DEFAULT_ON

    def bounded(self, attributes: Any, events: bool = False, links: bool = False) -> Any:
        """``attributes`` under the provider's limits, as the SDK's span applies them."""
        limits = self.limits
        if events or links:
            return BoundedAttributes(
                limits.max_event_attributes if events else limits.max_link_attributes,
                attributes,
                max_value_len=limits.max_attribute_length,
                immutable=True,
            )
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )


_recorder: _Recorder | None = None
_recorder_for: Any = None


def _internal_metrics_on() -> bool:
    raw = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
    return raw.strip().lower() == "true"


def _get_recorder() -> _Recorder | None:
    """A recorder for the global provider when the shortcut may serve it; None otherwise."""
    global _recorder, _recorder_for
    provider = trace.get_tracer_provider()
    if provider is _recorder_for:
        return _recorder
    _recorder_for = provider
    _recorder = None
    try:
        from opentelemetry.sdk.trace import Tracer, TracerProvider

        if not isinstance(provider, TracerProvider) or _internal_metrics_on():
            return None
        tracer = provider.get_tracer("pyobs", __version__)
        # A disabled SDK (OTEL_SDK_DISABLED) hands out a no-op tracer: the public path.
        if not isinstance(tracer, Tracer) or not _internals.sdk_tracer_enabled(tracer):
            return None
        if _internals.gate(_internals.OTEL_SPAN.name, _same_as_sdk):
            _recorder = _Recorder(provider, tracer)
    except Exception as exc:  # noqa: BLE001 - another SDK layout: the tracer API instead
        _internals.broken(_internals.OTEL_SPAN.name, exc)
        _recorder = None
    return _recorder


def _flags(
    sampled: bool, parent: trace.SpanContext | None, recorder: _Recorder
) -> trace.TraceFlags:
    random_bit = recorder.random_ids if parent is None else parent.trace_flags & _RANDOM
    return _FLAGS[(_SAMPLED if sampled else 0) | random_bit]


def span_ids(span: trace.Span) -> tuple[str, str, bool]:
    """(trace id, span id) in hex and whether the span is sampled."""
    if type(span) is RequestSpan:
        return span.ids  # formatted once, from the ints it was made with
    context = span.get_span_context()
    return (
        "%032x" % context.trace_id,  # noqa: UP031 - faster than format()
        "%016x" % context.span_id,  # noqa: UP031
        context.trace_flags & 1 == 1,
    )


def start_server_span(
    name: str,
    parent: Context | None,
    attributes: dict[str, Any],
    current: trace.Span | None = None,
) -> Any:
    """Start the request's SERVER span: a RequestSpan on the SDK, the tracer API otherwise.

    ``parent`` is the extracted incoming context; without one, the span's parent is the
    current span (``current`` when the caller already looked it up), as the SDK does.
    """
    recorder = _recorder
    if recorder is None or trace.get_tracer_provider() is not _recorder_for:
        recorder = _get_recorder()
    if recorder is None:
        return get_tracer().start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )
    return _start_recorded(recorder, name, parent, attributes, current)


def _start_recorded(
    recorder: _Recorder,
    name: str,
    parent: Context | None,
    attributes: dict[str, Any],
    current: trace.Span | None,
) -> Any:
    if parent is not None:
        current = _context.span_in(parent)
    elif current is None:
        current = _context.current_span()
    # No current span (the common case): no parent, without asking INVALID_SPAN for its context.
    parent_context = None if current is _INVALID_SPAN else current.get_span_context()
    if parent_context is None or not parent_context.is_valid:
        parent_context = None
        trace_id = recorder.ids.generate_trace_id()
    else:
        trace_id = parent_context.trace_id
    sampled = True
    if recorder.parent_based_always_on:
        # The SDK's default sampler, decided here without building a SamplingResult: a span
        # is sampled unless its parent is valid and not sampled; the trace state is the
        # parent's. Attributes pass through unchanged.
        span_id = recorder.ids.generate_span_id()
        if parent_context is None:
            context = trace.SpanContext(trace_id, span_id, False, recorder.root_flags)
        else:
            sampled = parent_context.trace_flags.sampled
            context = trace.SpanContext(
                trace_id,
                span_id,
                False,
                _flags(sampled, parent_context, recorder),
                parent_context.trace_state,
            )
            if not sampled:
                return trace.NonRecordingSpan(context)
    else:
        result = recorder.sampler.should_sample(
            parent, trace_id, name, trace.SpanKind.SERVER, attributes
        )
        sampled = result.decision.is_sampled()
        span_id = recorder.ids.generate_span_id()
        context = trace.SpanContext(
            trace_id,
            span_id,
            False,
            _flags(sampled, parent_context, recorder),
            result.trace_state,
        )
        if not result.decision.is_recording():
            return trace.NonRecordingSpan(context)
        attributes = dict(result.attributes) if result.attributes is not None else {}
    span = RequestSpan(recorder, name, context, parent_context, attributes)
    span.ids = ("%032x" % trace_id, "%016x" % span_id, sampled)  # noqa: UP031 - faster
    try:
        recorder.processor.on_start(span, parent_context=parent)
    except Exception as exc:  # noqa: BLE001 - the span is still recorded and exported
        _errors.report("tracing", exc, "span processor on_start")
    return span


def _same_as_sdk() -> bool:
    """The shortcut's check: one probe span through it and through ``Tracer.start_span``, with
    limits that bite, a remote parent, an exception and a status; equal when exported."""
    quiet = logging.getLogger("opentelemetry.attributes")  # the probe's limits bite on purpose
    quiet.addFilter(_silence)
    try:
        return _probe()
    finally:
        quiet.removeFilter(_silence)


def _silence(record: logging.LogRecord) -> bool:
    return False


class _HookLog(SpanProcessor):
    """A span processor that notes every hook the SDK asks it for (a new hook shows up)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("__") or name == "calls":
            return object.__getattribute__(self, name)
        object.__getattribute__(self, "calls").append(name)
        try:
            return object.__getattribute__(self, name)
        except AttributeError:
            return _ignore


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def _probe() -> bool:
    import json

    from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    limits = SpanLimits(
        max_span_attributes=5, max_span_attribute_length=12, max_events=3, max_attribute_length=40
    )
    provider = TracerProvider(
        sampler=sampling.DEFAULT_ON, span_limits=limits, shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hooks = _HookLog()  # which processor hooks each path calls, whatever their names
    provider.add_span_processor(hooks)
    remote = trace.SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
        _FLAGS[_SAMPLED | _RANDOM],
        trace.TraceState([("vendor", "probe")]),
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    attributes: dict[str, Any] = {
        "http.request.method": "GET",
        "url.path": "/probe/a-path-longer-than-the-limit",
        "url.scheme": "http",
        "server.port": 8080,
        "network.protocol.version": "1.1",
        "user_agent.original": "probe/1",
    }
    try:
        raise ValueError("probe failure")
    except ValueError as exc:
        error = exc
    tracer = provider.get_tracer("pyobs", __version__)
    public = tracer.start_span(
        "GET", context=parent, kind=trace.SpanKind.SERVER, attributes=dict(attributes)
    )
    public.update_name("GET /probe/{id}")
    public.set_status(trace.Status(trace.StatusCode.ERROR))
    public.record_exception(error)
    public.set_attributes(
        {"http.response.status_code": 500, "http.route": "/probe/{id}", "error.type": "ValueError"}
    )
    public.set_attribute("app.extra", "added by the application")
    public.end()
    public_hooks, hooks.calls = hooks.calls, []
    mine = _start_recorded(_Recorder(provider, tracer), "GET", parent, dict(attributes), None)
    mine.request_done(500, "GET", "/probe/{id}", "ValueError", error)
    mine.set_attribute("app.extra", "added by the application")
    mine.end()
    spans = exporter.get_finished_spans()
    if len(spans) != 2 or hooks.calls != public_hooks:
        return False

    def comparable(span: Any) -> Any:
        out = json.loads(span.to_json())
        out["context"].pop("span_id")
        for key in ("start_time", "end_time"):
            out.pop(key)
        for event in out["events"]:
            event.pop("timestamp")
        return (
            out,
            int(span.context.trace_flags),
            span.dropped_attributes,
            span.dropped_events,
            span.parent,
            span.instrumentation_scope,
        )

    first, second = (comparable(s) for s in spans)
    return bool(first == second)


def get_tracer() -> trace.Tracer:
    """The pyobs tracer (configured by setup)."""
    return _tracer if _tracer is not None else trace.get_tracer("pyobs", __version__)


def _reset() -> None:
    global _tracer, _recorder, _recorder_for
    _tracer = None
    _recorder = None
    _recorder_for = None
