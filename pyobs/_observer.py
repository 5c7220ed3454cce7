"""The one framework-neutral request path: plain facts in; metrics, span and access log out."""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client.samples import Exemplar

from pyobs import _context, _errors, _internals, redact, tracing
from pyobs._config import Config
from pyobs._errors import report_internal_error as report_internal_error  # moved; still here
from pyobs._otel_env import full_url
from pyobs.logs import (
    ACCESS_LOGGER,
    ACCESS_OPTIONAL_FIELDS,
    STANDARD_METHODS,
    StdoutHandler,
    access_message,
    direct_handler,
    error_fields,
    request_id_var,
)
from pyobs.metrics import UNMATCHED, PyobsMetrics, get_metrics
from pyobs.redact import redact_header, redact_query

CLIENT_CLOSED = 499
REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

_access = logging.getLogger(ACCESS_LOGGER)
_LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}
_INFO, _WARNING, _ERROR = logging.INFO, logging.WARNING, logging.ERROR  # one global read each
_internal = logging.getLogger("pyobs.internal")
# Generated request ids come from pyobs's own generator (as the OTel SDK's ids come from
# `random`): no system call per request, unaffected by the app seeding `random`, and
# reseeded in every forked worker so two workers never share a sequence.
_ids = random.Random()
_random_bits = _ids.getrandbits
# Generated ids are drawn 64 at a time (one 8192-bit draw, cut into 32-hex pieces): a request
# takes one with list.pop(), a single call that two threads never share. A forked worker
# empties the pool it inherited, so no id is handed out in two processes.
_ID_POOL: list[str] = []
_take_id = _ID_POOL.pop
_perf_counter = time.perf_counter  # one lookup less on the request path
_time_ns = time.time_ns
_new_tuple = tuple.__new__  # Exemplar(...) without the NamedTuple's __new__, no lookup
# request_id_var's methods, bound once: a method of an imported name is looked up as a plain
# attribute on every call (CPython compiles no method call for it), which the specialising
# interpreter cannot speed up.
_set_request_id = request_id_var.set
_reset_request_id = request_id_var.reset
_ID_PIECES = tuple(slice(start, start + 32) for start in range(0, 64 * 32, 32))


def _fill_ids() -> str:
    """A new request id, and 63 more in the pool (list.extend: one call, like pop)."""
    text = _random_bits(64 * 128).to_bytes(64 * 16, "big").hex()
    ids = list(map(text.__getitem__, _ID_PIECES))
    _ID_POOL.extend(ids[1:])
    return ids[0]


def _after_fork_in_child() -> None:
    _ids.seed()
    _ID_POOL.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# Cleared by pyobs's reset (tests): the rate limit of internal error lines.
_reported = _errors._last

# Longest value taken from the request that pyobs writes into a log field or a span
# attribute (url.path, url.query, user_agent.original, captured headers); longer ones are cut.
MAX_FIELD_LENGTH = 8192
# Largest Content-Length pyobs believes: 19 digits at most, below 2**63.
_MAX_CONTENT_LENGTH = 2**63 - 1
_MAX_FORWARDED_HOPS = 32  # X-Forwarded-For hops examined, from the right
# W3C trace headers are ASCII; longer than this, the propagators drop them anyway.
_MAX_TRACE_HEADER = 8192


def capped(value: str | None, limit: int = MAX_FIELD_LENGTH) -> str | None:
    """``value`` cut to ``limit`` characters (None stays None)."""
    if value is None or len(value) <= limit:
        return value
    return value[:limit]


def content_length(raw: str | None) -> int | None:
    """Content-Length as an int when it is 1-19 ASCII digits below 2**63; None otherwise."""
    if raw is None or not (0 < len(raw) <= 19 and raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value <= _MAX_CONTENT_LENGTH else None


class _TraceCarrier(Mapping[str, str]):
    """The request headers as the propagators see them: a value that is not ASCII or is too
    long is absent (W3C headers are ASCII; a bad one must start a fresh trace, not fail)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    def get(self, name: str, default: Any = None) -> Any:
        value = self._headers.get(name)
        if value is None or len(value) > _MAX_TRACE_HEADER or not value.isascii():
            return default
        return value

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


_reading = threading.local()  # .active: pyobs is reading request input into its span
# Libraries that log a warning per bad entry of a request's trace headers, or per attribute
# value cut by the span limits.
_PROPAGATION_LOGGERS = (
    "opentelemetry.attributes",
    "opentelemetry.baggage.propagation",
    "opentelemetry.baggage",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.trace.span",
    "opentelemetry.propagators.textmap",
    "opentelemetry.propagate",
)


class _RequestInputWarnings(logging.Filter):
    """While pyobs reads a request into its span (trace headers, attribute values cut by the
    span limits), the warnings libraries log about that input are counted
    (pyobs_request_input_warnings_total) and one line per logger a minute is let through:
    an 8 KB baggage header of bad entries is not 181 lines per request."""

    def __init__(self) -> None:
        super().__init__("pyobs")
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_reading, "active", False):
            return True
        _errors.count_input_warning(record.name)
        now = time.monotonic()
        last = self._last.get(record.name)
        if last is not None and now - last < _errors.INTERVAL:
            return False
        self._last[record.name] = now
        return True


_input_filter = _RequestInputWarnings()


def _install_input_filter() -> None:
    for name in _PROPAGATION_LOGGERS:
        logger = logging.getLogger(name)
        if _input_filter not in logger.filters:
            logger.addFilter(_input_filter)


# "Not read yet": an adapter that has a header at hand passes it to start() (or sets it on
# the handle) so the observer does not ask the headers mapping again. A str compared by
# identity: no header value is this object.
UNREAD = "\x00pyobs:unread"


@dataclass(slots=True)
class RequestFacts:
    """What a protocol layer knows about a request before the app runs.

    Slotted, so no default stays on the class (the specialising interpreter reads a slot
    in one guarded load; see RequestHandle). The WSGI and ASGI adapters make one per
    request with ``RequestFacts.__new__(RequestFacts)`` and set every field, one C call
    instead of the dataclass's Python ``__init__``.
    """

    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    scheme: str = "http"
    query: str = ""
    client_addr: str | None = None
    server_addr: str | None = None
    server_port: int | None = None
    http_version: str = "1.1"
    user_agent: str | None = UNREAD  # the User-Agent header, when the adapter read it


# object.__new__, looked up once: the WSGI and ASGI adapters make their facts with it.
_new_facts = RequestFacts.__new__


class RequestHandle:
    """Per-request state between start() and finish(); adapters set ``route``.

    Slotted, with no class-level defaults: start() and the two middlewares' metrics-only
    paths (asgi._start_metrics_only, wsgi.ObservabilityMiddleware.__call__) set every
    field on the handle they make. CPython's specialising interpreter turns a read or a
    write of a slot into one guarded load or store on every version from 3.11; a default
    kept on the class instead costs a generic attribute lookup, on 3.11 wherever the handle
    has not set it yet, and from 3.12 wherever it has (docs/benchmarks-journal.md, "Handles the
    specialising interpreter can read").
    """

    __slots__ = (
        "_observer",
        "client",
        "context_token",
        "counted",
        "disconnected",
        "ended",
        "exception",
        "facts",
        "finished",
        "method",
        "owns_span",
        "path",
        "raw_length",
        "request_id",
        "request_id_token",
        "response_bytes",
        "route",
        "span",
        "start",
        "status",
        "trace_id",
        "trace_ids",
        "user_agent",
        "whole_record",
    )

    facts: RequestFacts
    method: str  # the method label (_OTHER for a non-standard one)
    request_id: str
    start: float  # time.perf_counter() at start
    path: str  # facts.path, cut to MAX_FIELD_LENGTH for logs and spans by start()
    route: str | None
    status: int | None
    response_bytes: int
    exception: BaseException | None
    disconnected: bool
    finished: bool
    span: Any
    owns_span: bool
    trace_id: str | None  # for exemplars: set when the span is sampled
    trace_ids: tuple[str, str] | None  # (trace id, span id) in hex, sampled or not
    client: str | None  # client.ip / client.address (spans and access log only)
    user_agent: str | None
    request_id_token: Any  # contextvar tokens, undone by detach()
    context_token: Any
    counted: bool  # the in-flight gauge was incremented: finish() decrements it
    raw_length: str | None  # the Content-Length header (UNREAD until the adapter read it)
    ended: float | None  # perf_counter() at the last byte, when finish() comes later
    # Whether the handle records a whole response itself (the metrics-only paths' handles,
    # see _done()), and the observer that made it.
    whole_record: bool
    _observer: RequestObserver

    def __repr__(self) -> str:
        return f"RequestHandle({self.method} {self.facts.path!r}, route={self.route!r})"

    def _done(self) -> None:
        """The response is over and its route known: record the request.

        A handle made by a metrics-only path (``whole_record``) records a response that
        went out whole itself: RequestObserver.finish() cut to what metrics-only needs.
        Every other outcome, and every other handle, goes through finish(). Keep the two in
        step: tests/test_metrics_only.py and tests/frameworks/test_signals_off.py send the
        same requests with metrics only and with every signal and compare the samples, the
        X-Request-ID and the request id in logs.
        """
        code = self.status
        if (
            not self.whole_record
            or self.finished
            or not self.counted
            or self.disconnected
            or self.exception is not None
            or type(code) is not int
        ):
            self._observer.finish(self)  # the rarer outcomes: the general path
            return
        self.finished = True  # finish() returns at once from now on: ``counted`` stays
        duration = _perf_counter() - self.start
        m = self._observer.metrics
        method = self.method
        route = self.route
        if route is None or route not in m.known_routes:
            route = route_for(m, route)
        size = self.response_bytes
        try:
            # m.request_finished(), inlined for a series already seen (one call less).
            series = m.series.get((method, route, code))
            if series is None or series.direct is None:
                fast = None if series is None else series.fast
                if fast is not None:  # multiprocess mode: the series is known, one call
                    fast.record(duration, size, None)
                else:
                    m.request_finished(method, route, code, duration, size)
            else:
                try:
                    _internals.prom_request(m.lock, series.direct, duration, size, None)
                except Exception as exc:  # noqa: BLE001 - the public path, counted
                    m.direct_request_failed(exc, method, series, duration, size, None)
        except Exception as error:  # noqa: BLE001 - it takes the gauge down exactly once
            _errors.report("metrics", error, "finish")
        raw_length = self.raw_length
        if raw_length is not None:  # most requests have no body
            try:
                length = content_length(raw_length)
                if length is not None:
                    m.request_body(method, route, length, ())
            except Exception as error:  # noqa: BLE001
                _errors.report("metrics", error, "finish")


def enter_again(handle: RequestHandle) -> tuple[Any, Any]:
    """Make the request's ids current again: its request id, and its span when it has one.

    For the request's own code that runs after the adapter left the request's context: each
    chunk of a body Django streams (only streamed responses pay for it; a line logged in
    pyobs.wsgi's body, which every WSGI response goes through, finds the request on the
    stack instead, logs.body_on_stack(), which costs the request nothing). Its log
    lines then carry the request's ids and its spans are children of the request's, as OTel
    contrib's WSGI middleware does. Returns the tokens for leave_again(), to be called before
    control goes back to the server (a body a test client leaves unfinished must not leave
    the request's span current for the next request).
    """
    span = handle.span
    return (
        _set_request_id(handle.request_id),
        None if span is None else _context.attach(_context.set_span(span, _context.current())),
    )


def leave_again(tokens: tuple[Any, Any]) -> None:
    """Undo enter_again()."""
    request_token, span_token = tokens
    if span_token is not None:
        _context.detach(span_token)  # the API logs a token from another context
    try:
        _reset_request_id(request_token)
    except ValueError:  # a token from another context (set and reset are one chunk apart)
        pass


def request_id_for(headers: Mapping[str, str]) -> str:
    """The incoming X-Request-ID when safe (1-128 of [A-Za-z0-9._-]), a random 32-hex id else."""
    incoming = headers.get("x-request-id")
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    try:
        return _take_id()
    except IndexError:
        return _fill_ids()


def method_label(method: str) -> str:
    """The method, or _OTHER for anything outside the standard set."""
    upper = method.upper()
    return upper if upper in STANDARD_METHODS else "_OTHER"


def route_for(m: PyobsMetrics, route: str | None) -> str:
    """The route label of a route template (UNMATCHED for none, or a rejected one)."""
    if route is None:
        return UNMATCHED
    if route in m.known_routes:  # a route seen before needs no check
        return route
    try:
        return m.route_label(route)
    except Exception as error:  # noqa: BLE001
        _errors.report("metrics", error, "route label")
        return UNMATCHED


class RequestObserver:
    """Feeds metrics, the SERVER span and the access log from one code path."""

    # Set by setup from OTEL_PYTHON_[<FRAMEWORK>_]EXCLUDED_URLS (pyobs._otel_env), through
    # exclude_urls(). Fields read per request live on the instance, none on the class (see
    # RequestHandle).
    excluded_urls: re.Pattern[str] | None

    def __init__(self, config: Config, metrics: PyobsMetrics | None = None) -> None:
        self.config = config
        self.excluded_urls = None
        self.access_log = config.access_log  # read per request: an instance field
        self.metrics = metrics or get_metrics()
        self.tracer = tracing.get_tracer() if config.tracing else None
        self._capture_headers = _capture_header_names()
        # Spans, access logs and a per-request label hook (documented to see the query, the
        # scheme and the client) need every request fact; metrics need method, path, headers.
        # So does excluding by full URL (scheme and server address): see exclude_urls().
        self._signal_details = config.tracing or config.access_log or self.metrics.labelled
        self.details = self._signal_details
        self._proxies = bool(config.trusted_proxies)  # client_ip() has work to do
        self._quiet, self._excluded = config.exclusions  # Config.is_excluded, inlined
        redact.configure(config.redact_headers, config.redact_query_params)
        # The SDK warns for each attribute value its limits cut (and each one dropped):
        # request input then provokes them, so they go through the input-warning filter.
        self._limits_may_warn = False
        if config.tracing:
            _install_input_filter()
            self._limits_may_warn = self._capture_headers is not None or _value_limits_set()

    def exclude_urls(self, pattern: re.Pattern[str] | None) -> None:
        """Requests whose full URL (scheme://host/path) ``pattern`` finds are not observed.

        The URL's scheme, and its host when the Host header is missing, are request details:
        with a pattern set, every request reads them, metrics-only included.
        """
        self.excluded_urls = pattern
        self.details = self._signal_details or pattern is not None

    # -- start -------------------------------------------------------------------------

    def start(
        self,
        facts: RequestFacts,
        kind: type[RequestHandle] = RequestHandle,
        incoming_id: str | None = UNREAD,
    ) -> RequestHandle | None:
        """Begin observing; None for excluded paths (metrics, health, PYOBS_EXCLUDED_PATHS).

        ``kind`` lets a protocol layer use a subclass of RequestHandle that carries its own
        per-request state (the WSGI handle is also the body wrapper); ``incoming_id`` is the
        X-Request-ID header when the adapter has it at hand. Each signal starts in
        its own guard: a failure in one is counted and the others go on (CONTRACT §3).
        """
        try:
            path = facts.path
            if path in self._quiet or (
                self._excluded is not None and self._excluded.fullmatch(path) is not None
            ):
                return None
            # OTEL_PYTHON_[<FRAMEWORK>_]EXCLUDED_URLS: regexes searched in the full URL.
            if self.excluded_urls is not None and self.excluded_urls.search(full_url(facts)):
                return None
            method = facts.method
            if method not in STANDARD_METHODS:
                method = method_label(method)
            # request_id_for(), inlined: this runs on every request.
            request_id = incoming_id
            if request_id is UNREAD:
                request_id = facts.headers.get("x-request-id")
            if request_id is None or _SAFE_REQUEST_ID.fullmatch(request_id) is None:
                try:  # as request_id_for()
                    request_id = _take_id()
                except IndexError:
                    request_id = _fill_ids()
            handle = kind()  # no __init__: every field is set here
            handle.facts = facts
            handle.method = method
            handle.request_id = request_id
            handle.start = _perf_counter()
            handle.path = path if len(path) <= MAX_FIELD_LENGTH else path[:MAX_FIELD_LENGTH]
            _blank(handle, self, False)
        except Exception as exc:  # noqa: BLE001 - failsafe: the request must go on
            _errors.report("adapter", exc, "start")
            return None
        try:
            m = self.metrics  # the in-flight gauge + 1 (PyobsMetrics.inflight)
            inflight = m.inflight.get(method)
            if inflight is not None:
                inflight.append(None)
            else:  # multiprocess mode, or this method's first request
                m.request_started(method)
            handle.counted = True
        except Exception as exc:  # noqa: BLE001
            _errors.report("metrics", exc, "start")
        if self.details:
            try:
                client = self.client_ip(facts) if self._proxies else facts.client_addr
                if client is not None and len(client) > 256:
                    client = client[:256]
                handle.client = client
                user_agent = facts.user_agent
                if user_agent is UNREAD:
                    user_agent = facts.headers.get("user-agent")
                if user_agent is not None and len(user_agent) > MAX_FIELD_LENGTH:
                    user_agent = user_agent[:MAX_FIELD_LENGTH]
                handle.user_agent = user_agent
            except Exception as exc:  # noqa: BLE001
                _errors.report("adapter", exc, "start")
        if self.tracer is not None:
            guard = self._limits_may_warn
            if guard:
                _reading.active = True
            try:
                self._start_span(handle)
            except Exception as exc:  # noqa: BLE001
                _errors.report("tracing", exc, "start")
            finally:
                if guard:
                    _reading.active = False
        handle.request_id_token = _set_request_id(request_id)
        return handle

    def _start_span(self, handle: RequestHandle) -> None:
        context = _context.current()
        # An empty context (the common case as a request starts) holds no span: not looked up.
        current = _context.span_in(context) if context else _context.INVALID_SPAN
        # The OTel contrib instrumentation is already serving this request: reuse its span.
        if (
            current is not _context.INVALID_SPAN
            and current.is_recording()
            and getattr(current, "kind", None) is SpanKind.SERVER
        ):
            handle.span = current
        else:
            facts = handle.facts
            # None of the headers the configured propagators read: nothing to read or guard.
            parent = (
                self._extract(facts.headers) if tracing.may_carry_context(facts.headers) else None
            )
            attrs: dict[str, Any] = {
                "http.request.method": handle.method,
                "url.path": handle.path,
                "url.scheme": facts.scheme,
                "network.protocol.version": facts.http_version,
            }
            if handle.method == "_OTHER":
                attrs["http.request.method_original"] = capped(facts.method, 256)
            if facts.query:
                attrs["url.query"] = redact_query(capped(facts.query) or "")
            server = facts.server_addr
            if server:
                attrs["server.address"] = server if len(server) <= 256 else server[:256]
            if facts.server_port:
                attrs["server.port"] = facts.server_port
            if handle.client:
                attrs["client.address"] = handle.client
            if handle.user_agent:
                attrs["user_agent.original"] = handle.user_agent
            if self._capture_headers is not None:
                for name, value in facts.headers.items():
                    if self._capture_headers.fullmatch(name):
                        attrs[f"http.request.header.{name}"] = (capped(redact_header(name, value)),)
            recorder = tracing._recorder  # tracing.start_server_span()'s common case, inlined
            if recorder is not None and tracing._recorder_for is not None:
                span = tracing._start_recorded(recorder, handle.method, parent, attrs, current)
            else:
                span = tracing.start_server_span(handle.method, parent, attrs, current)
            handle.span = span
            handle.owns_span = True
            # _context.attach_span(), written out: one call less per request.
            handle.context_token = _context.attach(
                _context.set_span(span, context if parent is None else parent)
            )
        span = handle.span
        if type(span) is tracing.request_span_type:
            # pyobs's own span formatted its ids once.
            handle.trace_ids = (trace_id := span.trace_hex, span.span_hex)
            if span.is_sampled:
                handle.trace_id = trace_id
            return
        trace_id, span_id, sampled = tracing.span_ids(span)
        handle.trace_ids = (trace_id, span_id)
        if sampled:
            handle.trace_id = trace_id

    @staticmethod
    def _extract(headers: Mapping[str, str]) -> Any:
        """The incoming trace context; a header that cannot be read starts a fresh trace."""
        reading = getattr(_reading, "active", False)  # start() may have set it already
        _reading.active = True
        try:
            return tracing.extract(_TraceCarrier(headers))
        except Exception as exc:  # noqa: BLE001 - a malformed header: a fresh trace
            _errors.report("tracing", exc, "trace header extraction")
            return None
        finally:
            _reading.active = reading

    # -- helpers -----------------------------------------------------------------------

    def client_ip(self, facts: RequestFacts) -> str | None:
        """The peer, or the first untrusted X-Forwarded-For hop when the peer is a trusted proxy."""
        peer = facts.client_addr
        proxies = self.config.trusted_proxies
        if not proxies or peer is None:
            return peer
        forwarded = facts.headers.get("x-forwarded-for")
        if not forwarded or not _trusted(peer, proxies):
            return peer
        # Only the nearest hops matter (a chain of trusted proxies is short); a header of
        # thousands of hops must not cost thousands of address parses.
        hops = [h.strip() for h in forwarded.split(",")[-_MAX_FORWARDED_HOPS:] if h.strip()]
        for hop in reversed(hops):
            if not _trusted(hop, proxies):
                return hop
        return hops[0] if hops else peer

    def response_headers(self, handle: RequestHandle) -> list[tuple[str, str]]:
        """Headers to add to the response: the request id, echoed."""
        return [(REQUEST_ID_HEADER, handle.request_id)]

    def detach(self, handle: RequestHandle) -> None:
        """Leave the request's context (call where start() was called, after the app returns)."""
        context_token, handle.context_token = handle.context_token, None
        request_id_token, handle.request_id_token = handle.request_id_token, None
        try:
            if request_id_token is not None:
                _reset_request_id(request_id_token)
            if context_token is not None:
                _context.detach(context_token)
        except Exception as exc:  # noqa: BLE001 - a token from another context
            _errors.report("adapter", exc, "detach")

    # -- finish ------------------------------------------------------------------------

    def finish(
        self,
        handle: RequestHandle,
        status: int | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record the request once: span end, access line, metrics, each in its own guard.

        The span ends and the access line is written before the metrics are recorded, so
        the line's count (pyobs_log_events_total) goes in under the metrics' lock with the
        request's values; one wall-clock reading serves the span's end, the line's
        timestamp and the exemplar's.
        """
        if handle.finished:
            return
        handle.finished = True
        ended = handle.ended
        duration = (_perf_counter() if ended is None else ended) - handle.start
        if exception is not None:
            handle.exception = exception
        exc = handle.exception
        if handle.disconnected:
            code = CLIENT_CLOSED
        elif status is not None:
            code = status
        elif handle.status is not None:
            code = handle.status
        else:
            code = 500
        if type(code) is not int:
            code = _status_code(code)
        if exc is not None and code < 500 and not handle.disconnected:
            code = 500
        span = handle.span
        # The wall clock, read once by the first signal that needs it (the span's end, the
        # fast access line) and shared with the exemplar; 0 while none did.
        now_ns = 0
        if span is not None:
            now_ns = _time_ns()
            guard = self._limits_may_warn
            if guard:
                _reading.active = True
            try:
                error_type = _error_type(exc) if exc is not None else None
                if error_type is None and code >= 500:
                    error_type = str(code)
                end_ns = now_ns
                if ended is not None:  # recorded after the last byte: the span ends there
                    end_ns -= int((_perf_counter() - ended) * 1e9)
                if handle.owns_span and type(span) is tracing.request_span_type:
                    # pyobs's own span records it and ends in one call (nothing once ended).
                    span.request_end(code, handle.method, handle.route, error_type, exc, end_ns)
                else:
                    self._end_span(handle, span, code, error_type, exc, end_ns)
            except Exception as error:  # noqa: BLE001
                _errors.report("tracing", error, "finish")
            finally:
                if guard:
                    _reading.active = False
        logged = None  # the access line's level, once pyobs wrote the line itself
        if self.access_log:
            try:
                level = _ERROR if code >= 500 else _WARNING if code >= 400 else _INFO
                if _access.isEnabledFor(level):
                    direct = direct_handler(_access, level)
                    if direct is not None and exc is None:
                        # Fast path: pyobs's own stdout handler is the only destination; the
                        # formatter reads the line's fields from the handle.
                        query = handle.facts.query
                        logged = _LEVEL_NAMES[level]
                        if not now_ns:
                            now_ns = _time_ns()
                        formatter: Any = direct.formatter
                        direct.write_line(
                            formatter.access_line(
                                handle,
                                logged,
                                code,
                                duration,
                                redact_query(capped(query) or "") if query else None,
                                now_ns / 1e9,
                            ),
                            None,  # counted below, with the request's metrics
                        )
                    else:
                        self._access_log(handle, level, code, duration, exc, direct)
            except Exception as error:  # noqa: BLE001
                logged = None  # not written: not counted
                _errors.report("access_log", error, "finish")
        # The metrics, inlined (one call less on every request).
        m = self.metrics
        method = handle.method
        route = handle.route
        if route is None or route not in m.known_routes:
            route = route_for(m, route)
        extra: tuple[str, ...] = ()
        if m.labelled:
            try:
                extra = m.request_labels(handle.facts)
            except Exception as error:  # noqa: BLE001 - the application's label hook failed
                _errors.report("metrics", error, "request labels")
        if handle.counted:
            handle.counted = False
            size = handle.response_bytes
            trace_id = handle.trace_id
            try:
                # m.request_finished(), inlined for a series already seen (one call less).
                series = None if extra else m.series.get((method, route, code))
                if series is None or series.direct is None:
                    fast = None if series is None else series.fast
                    if fast is not None:  # multiprocess mode: the series is known, one call
                        fast.record(duration, size, trace_id)
                    else:
                        m.request_finished(
                            method, route, code, duration, size, trace_id, extra, now_ns / 1e9
                        )
                else:
                    exemplar = (
                        _new_tuple(
                            Exemplar,
                            ({"trace_id": trace_id}, duration, now_ns / 1e9 or time.time()),
                        )
                        if trace_id
                        else None
                    )
                    line = None if logged is None else m.log_level_values.get(logged)
                    try:
                        _internals.prom_request(
                            m.lock, series.direct, duration, size, exemplar, line
                        )
                        if line is not None:
                            logged = None  # counted
                    except Exception as failed:  # noqa: BLE001 - the public path, counted
                        m.direct_request_failed(failed, method, series, duration, size, trace_id)
            except Exception as error:  # noqa: BLE001
                # request_finished takes the gauge down exactly once, whatever fails after.
                _errors.report("metrics", error, "finish")
        else:
            self._finish_uncounted(handle, route, code, duration, extra)
        if logged is not None:  # the line's count, when the request's write did not take it
            try:
                m.count_log_line(logged)
            except Exception:  # noqa: BLE001 - as StdoutHandler.write_line: logging goes on
                pass
        if exc is not None or handle.raw_length is not None:
            self._finish_body_metrics(handle, route, exc, extra)

    def _finish_uncounted(
        self, handle: RequestHandle, route: str, code: int, duration: float, extra: tuple[str, ...]
    ) -> None:
        """finish(): the metrics of a request whose gauge never went up."""
        m = self.metrics
        method = handle.method
        try:
            # request_finished takes the gauge down: it goes up here first.
            m.request_started(method)
            m.request_finished(method, route, code, duration, handle.response_bytes, None, extra)
        except Exception as error:  # noqa: BLE001
            _errors.report("metrics", error, "finish")

    def _finish_body_metrics(
        self, handle: RequestHandle, route: str, exc: BaseException | None, extra: tuple[str, ...]
    ) -> None:
        """finish(): the request body's size and the exception count (few requests)."""
        m = self.metrics
        method = handle.method
        try:
            raw_length = handle.raw_length
            if raw_length is UNREAD:
                raw_length = handle.facts.headers.get("content-length")
            if raw_length is not None:
                length = content_length(raw_length)
                if length is not None:
                    m.request_body(method, route, length, extra)
            if exc is not None:
                m.exception(method, route, _error_type(exc), extra)
        except Exception as error:  # noqa: BLE001
            _errors.report("metrics", error, "finish")

    def _end_span(
        self,
        handle: RequestHandle,
        span: Any,
        code: int,
        error_type: str | None,
        exc: BaseException | None,
        end_ns: int,
    ) -> None:
        """Record the outcome on a span that is not pyobs's own RequestSpan (finish() does
        that one), and end it at ``end_ns`` when pyobs started it."""
        try:
            if span.is_recording():  # else an adopted span that its owner already ended
                method = handle.method
                attributes: dict[str, Any] = {"http.response.status_code": code}
                if handle.route is not None:
                    attributes["http.route"] = handle.route
                    if handle.owns_span:
                        span.update_name(f"{method} {handle.route}")
                if error_type is not None:
                    attributes["error.type"] = error_type
                    span.set_status(Status(StatusCode.ERROR))
                if exc is not None:
                    # The SDK's own event, with the message and trace scrubbed of secrets.
                    scrubbed = tracing.exception_attributes(exc)
                    span.record_exception(
                        exc,
                        attributes={
                            "exception.message": scrubbed["exception.message"],
                            "exception.stacktrace": scrubbed["exception.stacktrace"],
                        },
                    )
                span.set_attributes(attributes)
        finally:
            if handle.owns_span:
                span.end(end_time=end_ns)

    def _access_log(
        self,
        handle: RequestHandle,
        level: int,
        code: int,
        duration: float,
        exc: BaseException | None,
        direct: StdoutHandler | None,
    ) -> None:
        """The access line when finish()'s fast path does not apply: an exception to add,
        or a handler, filter or formatter of the application's on the way."""
        facts = handle.facts
        query = redact_query(capped(facts.query) or "") if facts.query else None
        path = handle.path
        # The request's own ids, even when a server closes the body in another context.
        trace_ids = handle.trace_ids
        message = access_message(facts.method, path, code)
        optional = (query, handle.route, handle.client or None, handle.user_agent or None)
        extra: dict[str, Any] = {
            "http.request.id": handle.request_id,
            "event.dataset": ACCESS_LOGGER,
            "http.request.method": handle.method,
            "url.path": path,
            "http.response.status_code": code,
            "http.response.body.bytes": handle.response_bytes,
            "event.duration": int(duration * 1e9),
        }
        if trace_ids is not None:
            extra["trace.id"], extra["span.id"] = trace_ids
        for key, value in zip(ACCESS_OPTIONAL_FIELDS, optional, strict=True):
            if value is not None:
                extra[key] = value
        if direct is not None:
            # Still pyobs's own handler only; the error fields follow the access fields.
            level_name = _LEVEL_NAMES[level]
            if exc is not None:
                extra.update(error_fields(exc))
            line = direct.formatter.direct_line(level_name, ACCESS_LOGGER, message, extra)  # type: ignore[union-attr]
            direct.write_line(line + "\n", level_name)
            return
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        # Built by hand: Logger.log() would walk the stack for a caller we do not report.
        record = logging.LogRecord(ACCESS_LOGGER, level, "", 0, message, None, exc_info)
        record.__dict__.update(extra)
        record.pyobs_fields = extra
        _access.handle(record)


def _blank(handle: RequestHandle, observer: RequestObserver, whole_record: bool) -> None:
    """The fields of a new handle that do not come from the request, at their starting
    values (a slot has no default): for RequestObserver.start() (the ASGI and WSGI
    middlewares' metrics-only paths set the same fields themselves)."""
    handle.route = handle.status = handle.exception = handle.ended = None
    handle.span = handle.trace_id = handle.trace_ids = None
    handle.client = handle.user_agent = None
    handle.request_id_token = handle.context_token = None
    handle.response_bytes = 0
    handle.disconnected = handle.finished = handle.owns_span = handle.counted = False
    handle.whole_record = whole_record
    handle.raw_length = UNREAD
    handle._observer = observer


def _value_limits_set() -> bool:
    """True when the SDK's span limits (from OTEL_* variables) cut attribute values."""
    try:
        from opentelemetry.sdk.trace import SpanLimits

        limits = SpanLimits()
    except Exception:  # noqa: BLE001 - no SDK, or a malformed limit: the SDK will say so
        return True
    return limits.max_span_attribute_length is not None or limits.max_attribute_length is not None


def _status_code(value: Any) -> int:
    """A status an adapter passed as something else than an int (``"404"``, HTTPStatus)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 500


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


def _trusted(address: str, proxies: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def _capture_header_names() -> re.Pattern[str] | None:
    """OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST (names or regexes), redacted."""
    raw = os.environ.get("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    if not names:
        return None
    try:
        return re.compile("|".join(f"(?:{n})" for n in names), re.IGNORECASE)
    except re.error:
        return re.compile("|".join(re.escape(n) for n in names), re.IGNORECASE)


# Header-name tuples (a propagator's headers) as raw lower-case names, for _PairHeaders.has_any.
_RAW_NAMES: dict[tuple[str, ...], tuple[bytes, ...]] = {}


class _PairHeaders(Mapping[str, str]):
    """Lower-case ASGI header pairs as a str mapping, each value decoded only when read."""

    __slots__ = ("_raw",)
    _raw: dict[bytes, bytes]  # set by its maker (no __init__: one C call to make one)

    def get(self, name: str, default: Any = None) -> Any:
        value = self._raw.get(name.encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, name: str) -> str:
        return self._raw[name.encode("latin-1")].decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.encode("latin-1") in self._raw

    def has_any(self, names: tuple[str, ...]) -> bool:
        """True when one of ``names`` is present (one set operation on the raw names)."""
        keys = _RAW_NAMES.get(names)
        if keys is None:
            keys = _RAW_NAMES[names] = tuple(n.encode("latin-1") for n in names)
        return not self._raw.keys().isdisjoint(keys)

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def request_id_and_length(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The X-Request-ID and Content-Length headers, read in one call (both are read on every
    request: for RequestObserver.start's ``incoming_id`` and RequestHandle.raw_length)."""
    if type(headers) is _PairHeaders:
        raw = headers._raw
        request_id = raw.get(b"x-request-id")
        length = raw.get(b"content-length")
        return (
            None if request_id is None else request_id.decode("latin-1"),
            None if length is None else length.decode("latin-1"),
        )
    return headers.get("x-request-id"), headers.get("content-length")


def headers_from_pairs(pairs: Any) -> Mapping[str, str]:
    """Lower-cased header mapping from ASGI-style (bytes, bytes) pairs; repeats are joined."""
    # ASGI servers send lower-case names (Starlette's Headers relies on it too), so the
    # common case keeps the raw pairs and decodes only what pyobs reads; upper-case or
    # repeated names take the slow path.
    if not isinstance(pairs, (list, tuple)):
        pairs = list(pairs)
    raw = dict(pairs)
    if len(raw) == len(pairs) and (b"x" + b"".join(raw)).islower():
        view = _PairHeaders()
        view._raw = raw
        return view
    out: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out
