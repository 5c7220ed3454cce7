"""Tracer-provider adoption, W3C context extraction and exporter selection (CONTRACT §4)."""

from __future__ import annotations

import dis
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.sdk.trace import Event, ReadableSpan

from pyobs import _context, _otel_env
from pyobs._config import Config
from pyobs._version import __version__
from pyobs.logs import error_fields

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
# get_global_textmap() returns the module's _HTTP_TEXT_FORMAT; extract() reads it directly.
_direct = (
    _propagate is not None
    and getattr(_propagate, "_HTTP_TEXT_FORMAT", None) is _propagate.get_global_textmap()
)
_fallback_textmap: TextMapPropagator | None = None
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
    # The API's global, read as get_global_textmap() returns it (checked at import): this
    # runs on every request.
    propagator: TextMapPropagator = _propagate._HTTP_TEXT_FORMAT if _direct else textmap()
    if propagator is not _triggers_for:
        _learn_triggers(propagator)
    triggers = _triggers
    if triggers is _W3C_TRIGGERS:  # the default: tracecontext,baggage
        if "traceparent" not in headers and "baggage" not in headers:
            return None
    elif triggers is not None:
        for name in triggers:
            if name in headers:
                break
        else:
            return None
    return propagator.extract(headers, getter=_GETTER)


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


class RequestSpan(trace.Span, ReadableSpan):
    """The request's SERVER span, recorded by pyobs and handed to the SDK's span processors.

    The SDK's own span validates every attribute and takes a lock on every change; pyobs sets
    a dozen known-good attributes per request, so it records them itself. Like the SDK's
    span, it is a ``ReadableSpan`` itself, so ending it hands this object to the processors
    without a copy. Everything else behaves like an SDK span: the
    provider's sampler, id generator, resource and processors (``on_start``/``on_end``) are
    used, and application code can still enrich the span through ``get_current_span()``.
    """

    _kind = trace.SpanKind.SERVER
    _instrumentation_info = None
    # ReadableSpan's fields, as this class fills them (narrower than the base declares).
    _attributes: dict[str, Any]
    _events: list[Event]
    _links: list[trace.Link]
    _context: trace.SpanContext

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
        self._attributes = attributes
        self._events = []
        self._links = []
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
        # Values from application code are validated like the SDK does (rare, not per request).
        cleaned = BoundedAttributes(attributes={key: value})
        if key in cleaned:
            self._attributes[key] = cleaned[key]

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
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp))

    def add_link(self, context: trace.SpanContext, attributes: Any = None) -> None:
        if self._end_time is None:
            self._links.append(trace.Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Any, description: str | None = None) -> None:
        if self._end_time is not None:
            return
        if isinstance(status, trace.Status):
            self._status = status
        else:
            self._status = trace.Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        error = error_fields(exception)  # the same names and trace as the ECS log line
        fields: dict[str, Any] = {
            "exception.type": error["error.type"],
            "exception.message": error["error.message"],
            "exception.stacktrace": error["error.stack_trace"],
            "exception.escaped": str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time.time_ns()
        recorder = self._recorder
        multi = recorder.multi
        if multi is not None and multi._span_processors is not recorder.processors:
            recorder.refresh()
        for hook in recorder.on_ending:
            hook(self)
        # Like the SDK's own span, the ended span itself is the ReadableSpan: no copy.
        for hook in recorder.on_end:
            hook(self)


def _does_nothing(method: Any) -> bool:
    """True for a method whose body is only ``pass`` (or a docstring)."""
    code = getattr(getattr(method, "__func__", None), "__code__", None)
    if code is None:
        return False
    ops = [
        (op.opname, op.argval)
        for op in dis.get_instructions(code)
        if op.opname not in ("RESUME", "NOP", "CACHE")
    ]
    return ops in ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)])


class _Recorder:
    """What a RequestSpan needs from an SDK TracerProvider."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, sampling
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider = provider
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.processor = provider._active_span_processor
        self.scope = InstrumentationScope("pyobs", __version__)
        # The default sampler (OTEL_TRACES_SAMPLER unset or parentbased_always_on) is one
        # shared instance with fixed delegates, so its decision can be taken inline.
        self.parent_based_always_on = self.sampler is sampling.DEFAULT_ON
        # The provider's default processor only forwards to the processors added to it;
        # pyobs calls those itself and skips the hooks that do nothing (the SDK's Simple and
        # Batch processors have empty on_start). `processors` is the tuple the hooks were
        # taken from; add_span_processor replaces it, and then the hooks are taken again.
        self.multi = (
            self.processor if type(self.processor) is SynchronousMultiSpanProcessor else None
        )
        self.processors: tuple[Any, ...] = ()
        self.on_start: tuple[Any, ...] = ()
        self.on_ending: tuple[Any, ...] = ()
        self.on_end: tuple[Any, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Take the hooks from the processors there are now."""
        multi = self.multi
        processors = multi._span_processors if multi is not None else (self.processor,)
        self.on_start = tuple(p.on_start for p in processors if not _does_nothing(p.on_start))
        self.on_ending = tuple(
            p._on_ending
            for p in processors
            if hasattr(p, "_on_ending") and not _does_nothing(p._on_ending)
        )
        self.on_end = tuple(p.on_end for p in processors)
        self.processors = processors


_recorder: _Recorder | None = None
_recorder_for: Any = None


def _get_recorder() -> _Recorder | None:
    """A recorder for the global provider when it is the SDK's; None otherwise."""
    global _recorder, _recorder_for
    provider = trace.get_tracer_provider()
    if provider is _recorder_for:
        return _recorder
    _recorder_for = provider
    _recorder = None
    try:
        from opentelemetry.sdk.trace import TracerProvider

        if isinstance(provider, TracerProvider) and not getattr(provider, "_disabled", False):
            _recorder = _Recorder(provider)
    except (ImportError, AttributeError):  # another SDK layout: use the tracer API instead
        _recorder = None
    return _recorder


_SAMPLED_FLAGS = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_DEFAULT_FLAGS = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_DEFAULT_STATE = trace.DEFAULT_TRACE_STATE


def _checked_span_context(
    trace_id: int, span_id: int, flags: trace.TraceFlags, state: trace.TraceState | None
) -> trace.SpanContext:
    return trace.SpanContext(trace_id, span_id, False, flags, state)


def _direct_span_context(
    trace_id: int, span_id: int, flags: trace.TraceFlags, state: trace.TraceState | None
) -> trace.SpanContext:
    # The ids come from the SDK's generator or a valid parent, so the result is valid;
    # SpanContext is a tuple (trace_id, span_id, is_remote, flags, state, is_valid).
    return tuple.__new__(
        trace.SpanContext,
        (trace_id, span_id, False, flags, _DEFAULT_STATE if state is None else state, True),
    )


def _pick_span_context() -> Any:
    """The direct constructor while it builds what SpanContext() builds; the checked one else."""
    sample = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, _SAMPLED_FLAGS, None)
    try:
        # Equal tuples: every field, is_valid and is_remote included, sits where the API's
        # own constructor puts it.
        same = _direct_span_context(*sample) == _checked_span_context(*sample)
    except Exception:  # noqa: BLE001 - an API release with another layout
        same = False
    return _direct_span_context if same else _checked_span_context


_span_context = _pick_span_context()


def span_ids(span: trace.Span) -> tuple[str, str, bool]:
    """(trace id, span id) in hex and whether the span is sampled."""
    context = span._context if type(span) is RequestSpan else span.get_span_context()
    if _span_context is _direct_span_context:
        # The API's tuple layout was checked at import: read the fields by position.
        return "%032x" % context[0], "%016x" % context[1], context[3] & 1 == 1  # noqa: UP031
    return (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        context.trace_flags.sampled,
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
    if recorder is None or getattr(trace, "_TRACER_PROVIDER", None) is not _recorder_for:
        recorder = _get_recorder()
    if recorder is None:
        return get_tracer().start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )
    if parent is not None:
        current = _context.span_in(parent)
    elif current is None:
        current = _context.current_span()
    parent_context: trace.SpanContext | None = None
    if current is not _context.INVALID_SPAN:
        parent_context = current.get_span_context()
        if parent_context is None or not parent_context.is_valid:
            parent_context = None
    if parent_context is None:
        trace_id = recorder.ids.generate_trace_id()
    else:
        trace_id = parent_context.trace_id
    if recorder.parent_based_always_on:
        # The SDK's default sampler, decided here without building a SamplingResult: a span
        # is sampled unless its parent is valid and not sampled; the trace state is the
        # parent's. Attributes pass through unchanged.
        sampled = parent_context is None or parent_context.trace_flags.sampled
        trace_state = parent_context.trace_state if parent_context is not None else None
        context = _span_context(
            trace_id,
            recorder.ids.generate_span_id(),
            _SAMPLED_FLAGS if sampled else _DEFAULT_FLAGS,
            trace_state,
        )
        if not sampled:
            return trace.NonRecordingSpan(context)
    else:
        result = recorder.sampler.should_sample(
            parent, trace_id, name, trace.SpanKind.SERVER, attributes
        )
        context = trace.SpanContext(
            trace_id,
            recorder.ids.generate_span_id(),
            False,
            _SAMPLED_FLAGS if result.decision.is_sampled() else _DEFAULT_FLAGS,
            result.trace_state,
        )
        if not result.decision.is_recording():
            return trace.NonRecordingSpan(context)
        if result.attributes is not None:
            attributes = dict(result.attributes)
    span = RequestSpan(recorder, name, context, parent_context, attributes)
    multi = recorder.multi
    if multi is not None and multi._span_processors is not recorder.processors:
        recorder.refresh()
    for hook in recorder.on_start:
        hook(span, parent_context=parent)
    return span


def get_tracer() -> trace.Tracer:
    """The pyobs tracer (configured by setup)."""
    return _tracer if _tracer is not None else trace.get_tracer("pyobs", __version__)


def _reset() -> None:
    global _tracer, _recorder, _recorder_for
    _tracer = None
    _recorder = None
    _recorder_for = None
