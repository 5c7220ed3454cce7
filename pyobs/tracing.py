"""Tracer-provider adoption, W3C context extraction and exporter selection (CONTRACT §4)."""

from __future__ import annotations

import dis
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import Event, ReadableSpan

from pyobs import _context
from pyobs._config import Config
from pyobs._version import __version__
from pyobs.logs import error_fields

_log = logging.getLogger("pyobs")

_tracer: trace.Tracer | None = None


class _MappingGetter(Getter[Mapping[str, str]]):
    """Reads lower-cased header names from a plain mapping."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _MappingGetter()


def extract(headers: Mapping[str, str]) -> Context | None:
    """The incoming context from traceparent/tracestate/baggage; None when there is none.

    A malformed header yields a context without a valid span, so a fresh trace starts.
    """
    if "traceparent" not in headers and "baggage" not in headers:
        return None
    return propagate.extract(headers, getter=_GETTER)


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        return [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return ["otlp"]
    return []


def _one_line_span(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _make_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # Spans go to stderr, one per line, so stdout stays pure JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line_span)
    if name == "otlp":
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
        except ImportError:
            _log.warning(
                "pyobs: OTLP export was asked for but the exporter is not installed; "
                'install "pyobs[otlp]". Spans are not exported.'
            )
            return None
        return OTLPSpanExporter()
    _log.warning("pyobs: unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console, none)", name)
    return None


def configure_tracing(config: Config) -> trace.Tracer:
    """Adopt the global TracerProvider if the app set one; otherwise install an SDK provider."""
    global _tracer
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
        # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; the sampler comes from
        # OTEL_TRACES_SAMPLER[_ARG] inside the SDK.
        sdk = TracerProvider(resource=Resource.create(attributes))
        for name in _exporter_names():
            exporter = _make_exporter(name)
            if exporter is not None:
                processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
                sdk.add_span_processor(processor(exporter))
        trace.set_tracer_provider(sdk)
        provider = trace.get_tracer_provider()
    _tracer = provider.get_tracer("pyobs", __version__)
    return _tracer


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
