"""The request's SERVER span as pyobs records it (``RequestSpan``), loaded with tracing on.

It needs the OpenTelemetry SDK; ``pyobs.tracing`` imports this module only when a span is
first recorded, so a metrics-only service never loads the SDK. A shortcut into SDK
internals, gated in ``pyobs._internals`` (``otel-sdk-span``).
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util import BoundedList

from pyobs import _context, _errors, _internals, _spans
from pyobs._version import __version__
from pyobs.redact import exception_attributes

_UNSET = trace.Status(trace.StatusCode.UNSET)
_ERROR = trace.Status(trace.StatusCode.ERROR)
_SAMPLED = int(trace.TraceFlags.SAMPLED)
# W3C Trace Context Level 2 random-trace-id flag, as the SDK sets it (API >= 1.40).
_RANDOM = int(getattr(trace.TraceFlags, "RANDOM_TRACE_ID", 0))
_FLAGS = {n: trace.TraceFlags(n) for n in (0, _SAMPLED, _RANDOM, _SAMPLED | _RANDOM)}
_NO_EVENTS: tuple[Event, ...] = ()
_INVALID_SPAN = trace.INVALID_SPAN
# The SDK's RandomIdGenerator draws from the ``random`` module's generator; so does pyobs.
_getrandbits = random.getrandbits
_SPAN_ID_BITS = (1 << 64) - 1
_NO_LINKS: tuple[trace.Link, ...] = ()


# Attribute value types the SDK's validation passes through unchanged (without a length limit).
_PLAIN_VALUES = frozenset({str, bool, int, float})


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
    # What the span's SpanContext is made of (see _context), and where it reports.
    _recorder: _Recorder
    _trace_id: int
    _span_id: int
    _trace_flags: trace.TraceFlags
    _trace_state: trace.TraceState | None = None
    # ReadableSpan's fields, as this class fills them (narrower than the base declares).
    # Those most requests leave as they start are class-level defaults: a request sets them
    # only when they differ (fewer stores per request, a smaller span to keep).
    _attributes: Any
    _events: Any = _NO_EVENTS
    _links: Any = _NO_LINKS
    _status: trace.Status = _UNSET
    _parent: trace.SpanContext | None = None
    # Set by its maker: the trace and span ids in hex, and whether the span is sampled
    # (plain strings: no container waits with the span in the export queue).
    trace_hex: str
    span_hex: str
    is_sampled: bool

    # The span's SpanContext, made when first asked for (see _context).
    _made: trace.SpanContext | None = None
    # The span's OTLP bytes, when pyobs's OTLP exporter encoded it as it ended (_otlp.py).
    encoded: bytes | None = None

    # Made by _start_recorded(), which sets ReadableSpan's fields directly (this object is
    # also what the processors get): object's __init__, so making one is a single C call
    # (ReadableSpan's, or a Python __init__ of its own, would run Python code per request).
    if not TYPE_CHECKING:  # typed as ReadableSpan's, which RequestSpan() does not run
        __init__ = object.__init__

    @property
    def _context(self) -> trace.SpanContext:  # type: ignore[override]
        """ReadableSpan's ``_context`` field, made from the ids when first read.

        The span keeps (trace id, span id, flags, trace state) and makes the SpanContext
        only when something asks for it. Once the span is handed to its processor it lets the
        made one go (``end``): a span waiting in a batch processor's queue then holds no
        object the cyclic garbage collector tracks besides itself, which halves what the
        queued spans cost the collector (docs/benchmarks-journal.md).
        """
        made = self._made
        if made is None:
            made = self._made = trace.SpanContext(
                self._trace_id, self._span_id, False, self._trace_flags, self._trace_state
            )
        return made

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
                if type(value) in _PLAIN_VALUES and type(key) is str and key:
                    # A str, bool, int or float under a non-empty str key is what the SDK's
                    # validation keeps as it is (no length limit applies to a plain dict).
                    attributes[key] = value
                    return
                # Any other value from application code is validated like the SDK does.
                cleaned = BoundedAttributes(attributes={key: value})
                if key in cleaned:
                    attributes[key] = cleaned[key]
                return
            attributes = self._attributes = self._recorder.bounded(attributes)
        attributes[key] = value  # BoundedAttributes: validates, truncates, drops the oldest

    def request_end(
        self,
        status_code: int,
        method: str,
        route: str | None,
        error_type: str | None,
        exception: BaseException | None,
        end_time: int,
    ) -> None:
        """The outcome pyobs records on its own span (status, route and name, error), and
        its end, in one call (RequestObserver.finish's); nothing once the span has ended."""
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
            try:
                self.record_exception(exception)
            except Exception as exc:  # noqa: BLE001 - the span still ends and is exported
                _errors.report("tracing", exc, "span exception event")
        self._end_time = end_time
        recorder = self._recorder
        if recorder.on_ending is not None:
            self._hand_over()  # end()'s hooks, both
            return
        try:
            recorder.processor.on_end(self)
        except Exception as exc:  # noqa: BLE001
            _errors.report("tracing", exc, "span processor on_end")
        self._made = None

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
        self._hand_over()

    def _hand_over(self) -> None:
        """The ended span to the provider's processor (request_end() inlines the common
        case: no ``_on_ending`` hook)."""
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
        self._made = None  # made again if asked; not held while the span waits for export


class _Recorder:
    """What a RequestSpan needs from an SDK TracerProvider (read once per provider)."""

    def __init__(self, provider: Any, tracer: Any) -> None:
        from opentelemetry.sdk.trace import sampling
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider = provider
        self.tracer = tracer
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = provider.resource
        self.processor = _internals.sdk_span_processor(provider)
        self.on_ending = _internals.sdk_on_ending(self.processor)
        self.on_start: Any = self.processor.on_start
        self._all = (self.processor, self.on_ending, self.on_start)
        if isinstance(provider, _spans.PyobsTracerProvider):
            # pyobs's own provider: while its batch processor is the only one, spans go
            # straight to it (its start and ending hooks are empty).
            provider.on_processors_changed(self._processors_changed)
            self._processors_changed()
        self.limits = _internals.sdk_span_limits(provider)
        self.max_length: int | None = self.limits.max_span_attribute_length
        self.max_count: int = self.limits.max_span_attributes
        if self.max_count is None:
            self.max_count = sys.maxsize
        self.scope = InstrumentationScope("pyobs", __version__)
        # The SDK's default generator (random.getrandbits(128), then (64)): a new trace's
        # two ids are then drawn in one call, as the same 192 random bits.
        self.default_ids = type(self.ids) is RandomIdGenerator
        is_random = getattr(self.ids, "is_trace_id_random", None)
        self.random_ids = _RANDOM if callable(is_random) and is_random() else 0
        self.root_flags = _FLAGS[_SAMPLED | self.random_ids]  # a sampled new trace's flags
        # The default sampler (OTEL_TRACES_SAMPLER unset or parentbased_always_on) is one
        # shared instance with fixed delegates, so its decision can be taken inline.
        self.parent_based_always_on = self.sampler is sampling.DEFAULT_ON

    def _processors_changed(self) -> None:
        sole = self.provider.sole_processor()
        if sole is None:
            self.processor, self.on_ending, self.on_start = self._all
        else:
            self.processor, self.on_ending, self.on_start = sole, None, None

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


def _flags(
    sampled: bool, parent: trace.SpanContext | None, recorder: _Recorder
) -> trace.TraceFlags:
    random_bit = recorder.random_ids if parent is None else parent.trace_flags & _RANDOM
    return _FLAGS[(_SAMPLED if sampled else 0) | random_bit]


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
    span_id = 0  # not drawn yet
    if parent_context is None or not parent_context.is_valid:
        parent_context = None
        if recorder.default_ids:
            # RandomIdGenerator's two draws in one (neither id may be 0, as it ensures).
            bits = _getrandbits(192)
            trace_id = bits >> 64 or recorder.ids.generate_trace_id()
            span_id = bits & _SPAN_ID_BITS
        else:
            trace_id = recorder.ids.generate_trace_id()
    else:
        trace_id = parent_context.trace_id
    sampled = True
    if recorder.parent_based_always_on:
        # The SDK's default sampler, decided here without building a SamplingResult: a span
        # is sampled unless its parent is valid and not sampled; the trace state is the
        # parent's. Attributes pass through unchanged.
        if not span_id:
            span_id = recorder.ids.generate_span_id()
        state: trace.TraceState | None = None
        if parent_context is None:
            flags = recorder.root_flags
        else:
            sampled = parent_context.trace_flags.sampled
            flags = _flags(sampled, parent_context, recorder)
            state = parent_context.trace_state
            if not sampled:
                context = trace.SpanContext(trace_id, span_id, False, flags, state)
                return trace.NonRecordingSpan(context)
    else:
        result = recorder.sampler.should_sample(
            parent, trace_id, name, trace.SpanKind.SERVER, attributes
        )
        sampled = result.decision.is_sampled()
        if not span_id:
            span_id = recorder.ids.generate_span_id()
        flags = _flags(sampled, parent_context, recorder)
        state = result.trace_state
        if not result.decision.is_recording():
            context = trace.SpanContext(trace_id, span_id, False, flags, state)
            return trace.NonRecordingSpan(context)
        attributes = dict(result.attributes) if result.attributes is not None else {}
    span = RequestSpan()  # type: ignore[call-arg]  # object.__init__: see the class
    # ReadableSpan's fields, set directly; then what its SpanContext is made of (see _context).
    span._recorder = recorder
    span._name = name
    span._trace_id = trace_id
    span._span_id = span_id
    span._trace_flags = flags
    if parent_context is not None:  # else the class's None
        span._parent = parent_context
    if state is not None:  # else the class's None
        span._trace_state = state
    if recorder.max_length is not None or len(attributes) > recorder.max_count:
        attributes = recorder.bounded(attributes)
    span._attributes = attributes
    span._resource = recorder.resource
    span._instrumentation_scope = recorder.scope
    span._start_time = time.time_ns()
    span._end_time = None  # read on every request: an instance field (a class one reads slower)
    # The ids in hex, in half the time of "%032x" % trace_id (an id generator of the
    # application's may exceed 128 and 64 bits: then as the SDK writes it).
    try:
        span.trace_hex = trace_id.to_bytes(16, "big").hex()
        span.span_hex = span_id.to_bytes(8, "big").hex()
    except OverflowError:
        span.trace_hex = "%032x" % trace_id  # noqa: UP031
        span.span_hex = "%016x" % span_id  # noqa: UP031
    span.is_sampled = sampled
    on_start = recorder.on_start
    if on_start is not None:
        try:
            on_start(span, parent_context=parent)
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
    mine.set_attribute("app.extra", "added by the application")
    mine.request_end(500, "GET", "/probe/{id}", "ValueError", error, time.time_ns())
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
