"""pyobs's OTLP/HTTP span exporter: the protobuf request written directly, sent with requests.

The SDK's OTLP exporters build a protobuf message object per span, attribute and value before
serializing it: about 45 us of CPU per span, in the service's own process, as much as
pyobs's whole span, access line and metrics (docs/benchmarks.md, "Export off the hot
path"). This exporter writes the same ``ExportTraceServiceRequest`` bytes directly from the
spans' public ``ReadableSpan`` fields, reusing the bytes of every attribute pair it has seen
(method, route, scheme, server address repeat from request to request): about 9 us per
span. pyobs's own request span, in the common case (no events, links, trace state or
status), is written from the fields pyobs set on it, without building its SpanContext or
going through ReadableSpan's properties: about 3 us. tests/test_otlp.py checks that the
SDK's own protobuf classes parse its output into exactly the message the SDK's encoder
builds, for both.

Behind pyobs's batch processor each span is encoded as it ends (``pyobs_prepare``), so
the export thread only joins bytes and sends them. Spans without their bytes are encoded at
export in slices of ``SLICE`` spans, and the export thread steps aside for a moment between
slices, so the GIL is never held for more than one slice at a time: a request waits at most
about a millisecond for an export, not the interpreter's 5 ms switch interval per turn (the
SDK encodes a batch in one go).

The environment is read as the SDK's OTLP/HTTP exporter reads it (``OTEL_EXPORTER_OTLP_
[TRACES_]{ENDPOINT,HEADERS,TIMEOUT,COMPRESSION,CERTIFICATE,CLIENT_KEY,CLIENT_CERTIFICATE}``),
and a failed request is retried as the SDK retries it: 429, 502, 503 and 504 and broken
connections, with exponential backoff (or the server's Retry-After) within the timeout. It
sends with ``requests``, which the SDK's exporter also uses: proxies from the environment,
TLS and client certificates work the same. To a plain ``http://`` endpoint that no proxy
setting applies to (a collector or agent next to the service, the common case) it posts
with the standard library's ``http.client`` on one kept-alive connection instead: 0.3-0.45
ms of CPU per batch of 2,048 spans instead of 1.4-1.5 ms through requests' layers, time the
export thread holds the GIL while requests wait (docs/benchmarks-journal.md). A redirect is
followed through requests. Spans a collector reports as rejected (OTLP
partial success) are counted as dropped. ``OTEL_TRACES_EXPORTER=otlp_proto_http`` selects the
SDK's exporter instead (docs/configuration.md, span export).
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pyobs._otel_env import otlp_setting
from pyobs._span import _UNSET, RequestSpan
from pyobs._version import __version__

_log = logging.getLogger("pyobs")

SLICE = 128  # spans encoded between two steps aside (see the module docstring)
STEP_ASIDE = 0.0002  # seconds: long enough for a waiting thread to be scheduled and take the GIL
RETRYABLE = frozenset({429, 502, 503, 504})
MAX_ATTEMPTS = 6
JITTER = 0.2
DEFAULT_ENDPOINT = "http://localhost:4318"
DEFAULT_TIMEOUT = 10.0

# -- protobuf wire format -----------------------------------------------------------------

_PACK_D = struct.Struct("<d").pack
_PACK_Q = struct.Struct("<Q").pack
_PACK_I = struct.Struct("<I").pack
_INT64 = (-(1 << 63), (1 << 63) - 1)
_CACHE_MAX = 4096
# A span's status when unset, and its flags field (parent local or none / remote).
_STATUS_UNSET = b"\x7a\x00"
_LOCAL_FLAGS = b"\x85\x01" + _PACK_I(0x100)
_REMOTE_FLAGS = b"\x85\x01" + _PACK_I(0x300)
# A request span's fixed parts: its kind (SERVER) and the tag of its start time; its tail
# (status unset, then the flags).
_SERVER_START = bytes((0x30, trace.SpanKind.SERVER.value + 1, 0x39))
_LOCAL_TAIL = _STATUS_UNSET + _LOCAL_FLAGS
_REMOTE_TAIL = _STATUS_UNSET + _REMOTE_FLAGS


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _prefix(tag: int, size: int) -> bytes:
    """The key and length of a length-delimited field (wire type 2) of ``size`` bytes."""
    return bytes((tag << 3 | 2,)) + _varint(size)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); tags up to 15 (one key byte)."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag << 3 | 2, size)) + payload
    return bytes((tag << 3 | 2,)) + _varint(size) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message for an attribute value, as the SDK's encoder writes it."""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ValueError(f"an integer attribute out of the int64 range: {value}")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    if value is None:
        return b""
    raise ValueError(f"an attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode("utf-8", "surrogatepass")) + _field(2, _any_value(value))


class _Encoder:
    """ExportTraceServiceRequest bytes for ReadableSpans; one per exporter (its caches)."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[int, str, type, Any], bytes] = {}  # (tag, key, type, value)
        self.names: dict[str, bytes] = {}
        self.resources: dict[int, tuple[Any, bytes]] = {}
        self.scopes: dict[int, tuple[Any, bytes]] = {}

    def attributes(self, tag: int, attributes: Any) -> bytes:
        """Repeated KeyValue fields; scalar pairs are encoded once and then reused."""
        if not attributes:
            return b""
        parts = []
        cache = self.pairs
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is int or kind is float or kind is bool:
                ident = (tag, key, kind, value)
                encoded = cache.get(ident)
                if encoded is None:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()  # bounded: ids and paths must not grow it without end
                    encoded = cache[ident] = _field(tag, _key_value(key, value))
                parts.append(encoded)
            else:
                parts.append(_field(tag, _key_value(key, value)))
        return b"".join(parts)

    def name(self, name: str) -> bytes:
        """A span's name field; the bytes of every name seen are reused (routes repeat)."""
        encoded = self.names.get(name)
        if encoded is None:
            if len(self.names) >= _CACHE_MAX:
                self.names.clear()
            encoded = self.names[name] = _field(5, name.encode("utf-8", "surrogatepass"))
        return encoded

    def span(self, span: ReadableSpan) -> bytes:
        if type(span) is RequestSpan:
            encoded = self.request_span(span)
            if encoded is not None:
                return encoded
        context = span.context
        assert context is not None  # a span the SDK ends always has one
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
            parts.append(_field(3, state.encode()))
        parent = span.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(self.name(span.name))
        parts.append(bytes((0x30, span.kind.value + 1)))
        parts.append(
            b"\x39" + _PACK_Q(span.start_time or 0) + b"\x41" + _PACK_Q(span.end_time or 0)
        )
        parts.append(self.attributes(9, span.attributes))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            body = b"\x09" + _PACK_Q(event.timestamp) + _field(2, event.name.encode())
            body += self.attributes(3, event.attributes)
            dropped = getattr(event, "dropped_attributes", 0)
            if dropped:
                body += b"\x20" + _varint(dropped)
            parts.append(_field(11, body))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
            body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
            body += self.attributes(4, link.attributes)
            dropped = getattr(link, "dropped_attributes", 0)
            if dropped:
                body += b"\x28" + _varint(dropped)
            body += b"\x35" + _PACK_I(0x300 if link.context.is_remote else 0x100)
            parts.append(_field(13, body))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        if status.description or status.status_code.value:
            body = _field(2, status.description.encode()) if status.description else b""
            if status.status_code.value:
                body += b"\x18" + _varint(status.status_code.value)
            parts.append(_field(15, body))
        else:
            parts.append(_STATUS_UNSET)
        remote = parent is not None and parent.is_remote
        parts.append(_REMOTE_FLAGS if remote else _LOCAL_FLAGS)
        return _field(2, b"".join(parts))

    def request_span(self, span: RequestSpan) -> bytes | None:
        """pyobs's own request span in the common case, read from the fields pyobs set on it.

        The same bytes as ``span()`` (tests/test_otlp.py compares them), without building the
        span's SpanContext or going through ReadableSpan's properties (about half the time).
        None when the span has a trace state, events, links, a status or attributes under
        span limits: ``span()`` writes those.
        """
        if (
            span._status is not _UNSET
            or span._trace_state
            or type(span._attributes) is not dict
            or type(span._events) is not tuple
            or type(span._links) is not tuple
        ):
            return None
        parent = span._parent
        if parent is None:
            parent_id, tail = b"", _LOCAL_TAIL
        else:
            parent_id = b"\x22\x08" + parent.span_id.to_bytes(8, "big")
            tail = _REMOTE_TAIL if parent.is_remote else _LOCAL_TAIL
        body = b"".join(
            (
                b"\x0a\x10",
                span._trace_id.to_bytes(16, "big"),
                b"\x12\x08",
                span._span_id.to_bytes(8, "big"),
                parent_id,
                self.name(span._name),
                _SERVER_START,
                _PACK_Q(span._start_time),
                b"\x41",
                _PACK_Q(span._end_time or 0),
                self.attributes(9, span._attributes),
                tail,
            )
        )
        return _field(2, body)

    def resource(self, resource: Any) -> bytes:
        cached = self.resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            if len(self.resources) >= 64:
                self.resources.clear()
            cached = (resource, _field(1, self.attributes(1, resource.attributes)))
            self.resources[id(resource)] = cached
        return cached[1]

    def scope(self, scope: Any) -> bytes:
        """The InstrumentationScope field of a ScopeSpans message."""
        if scope is None:
            return _field(1, b"")
        cached = self.scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            if len(self.scopes) >= 256:
                self.scopes.clear()
            head = _field(1, scope.name.encode())
            if scope.version:
                head += _field(2, scope.version.encode())
            head += self.attributes(3, getattr(scope, "attributes", None))
            cached = self.scopes[id(scope)] = (scope, _field(1, head))
        return cached[1]

    def request(
        self,
        spans: Sequence[ReadableSpan],
        step_aside: Any = None,
        ready: dict[int, bytes] | None = None,
        origin: tuple[Any, Any] | None = None,
    ) -> bytes:
        """The whole request; ``step_aside()`` is called after each SLICE spans encoded here.

        ``ready`` holds spans already encoded when they ended (by id), taken out as used;
        pyobs's request spans carry theirs (``RequestSpan.encoded``), or are those bytes in
        ``spans``, of ``origin``'s resource and scope (``pyobs_prepare``).
        Joining those takes no step aside: each step is a GIL hand-off, and while the export
        thread waits to take the GIL back, every release of it by a request thread wakes it
        in vain (one futex call each; docs/benchmarks.md, "Export off the hot path").
        """
        # Grouped by identity: a Resource hashes by serializing its attributes to JSON.
        grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        fresh = 0  # spans encoded here since the last step aside
        # The export thread holds the GIL for this loop: a request waits for it. Spans of
        # the same resource and scope as the one before (pyobs's request spans all are)
        # skip the grouping lookups.
        last: tuple[Any, Any] = (None, None)
        listed: list[bytes] = []
        pop = ready.pop if ready else None
        origin_resource, origin_scope = origin or (None, None)
        span: Any
        done: bytes | None
        for span in spans:
            if type(span) is bytes:  # a request span, encoded as it ended (pyobs_prepare)
                resource, scope, done = origin_resource, origin_scope, span
            elif type(span) is RequestSpan:
                resource = span._resource
                scope = span._instrumentation_scope
                done = span.encoded
            else:
                resource = span.resource
                scope = span.instrumentation_scope
                done = pop(id(span), None) if pop is not None else None
                if done is not None and done.find(_span_id(span), 0, 40) < 0:
                    done = None  # bytes of another span that had this id (it was not exported)
            if resource is not last[0] or scope is not last[1]:
                entry = grouped.get(id(resource))
                if entry is None:
                    entry = grouped[id(resource)] = (resource, {})
                found = entry[1].get(id(scope))
                if found is None:
                    found = entry[1][id(scope)] = (scope, [])
                listed = found[1]
                last = (resource, scope)
            if done is None:
                if fresh == SLICE and step_aside is not None:
                    step_aside()
                    fresh = 0
                fresh += 1
                done = self.span(span)
            listed.append(done)
        # The nested messages' parts are listed with their length prefixes and joined once:
        # a batch of 2,048 spans is about 0.7 MB, and each nested join would copy it again
        # into fresh memory (page faults included) while the GIL is held.
        out: list[bytes] = []
        for resource, by_scope in grouped.values():
            head = self.resource(resource)
            parts: list[bytes] = []
            for scope, encoded in by_scope.values():
                tail = b""
                if scope is not None and scope.schema_url:
                    tail = _field(3, scope.schema_url.encode())
                scope_head = self.scope(scope)
                size = len(scope_head) + sum(map(len, encoded)) + len(tail)
                parts += (_prefix(2, size), scope_head, *encoded, tail)
            if resource.schema_url:
                parts.append(_field(3, resource.schema_url.encode()))
            out += (_prefix(1, len(head) + sum(map(len, parts))), head, *parts)
        return b"".join(out)


def _span_id(span: ReadableSpan) -> bytes:
    context = span.context
    return b"\x12\x08" + (context.span_id if context is not None else 0).to_bytes(8, "big")


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """ExportTraceServiceRequest bytes for ``spans`` (a fresh encoder, no stepping aside)."""
    return _Encoder().request(spans)


def _rejected(body: bytes) -> tuple[int, str]:
    """(rejected spans, message) from an ExportTraceServiceResponse's partial_success."""
    try:
        fields = _fields(body)
        partial = fields.get(1)
        if not isinstance(partial, bytes):
            return 0, ""
        inner = _fields(partial)
        count = inner.get(1, 0)
        message = inner.get(2, b"")
        return (
            count if isinstance(count, int) else 0,
            message.decode("utf-8", "replace") if isinstance(message, bytes) else "",
        )
    except (IndexError, ValueError):
        return 0, ""  # not protobuf (a collector answering with text): nothing to read


def _fields(data: bytes) -> dict[int, int | bytes]:
    """Top-level varint and length-delimited fields of a protobuf message (last one wins)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        tag, wire = key >> 3, key & 7
        if wire == 0:
            out[tag], pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            out[tag], pos = data[pos : pos + size], pos + size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


# -- configuration, as the SDK's OTLP/HTTP exporter reads it --------------------------------


def endpoint(env: Mapping[str, str]) -> str:
    """The traces URL: the TRACES endpoint as given, else the base endpoint + /v1/traces."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    return f"{base.removesuffix('/')}/v1/traces"


def headers(env: Mapping[str, str]) -> dict[str, str]:
    """Content type and user agent, then OTEL_EXPORTER_OTLP_[TRACES_]HEADERS (W3C baggage
    form, percent-decoded; names lower-cased), parsed by the OpenTelemetry API's own parser."""
    from opentelemetry.util.re import parse_env_headers

    out = {
        "content-type": "application/x-protobuf",
        "user-agent": f"pyobs/{__version__} (OTLP/HTTP)",
    }
    raw = otlp_setting(env, "HEADERS")
    try:
        parsed = parse_env_headers(raw, liberal=True)
    except TypeError:  # an API before the liberal parser (it then logs what it skips)
        parsed = parse_env_headers(raw)
    out.update({name.lower(): value for name, value in parsed.items()})
    return out


def timeout(env: Mapping[str, str]) -> float:
    """Seconds for one export, retries included (the Python SDK reads the value as seconds)."""
    raw = otlp_setting(env, "TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        _log.warning(
            "pyobs: OTEL_EXPORTER_OTLP_TIMEOUT=%r is not a positive number of seconds; using %s",
            raw,
            DEFAULT_TIMEOUT,
        )
        return DEFAULT_TIMEOUT
    return value


def compression(env: Mapping[str, str]) -> str:
    """none, gzip or deflate (anything else: none, with a warning)."""
    value = otlp_setting(env, "COMPRESSION").lower() or "none"
    if value not in ("none", "gzip", "deflate"):
        _log.warning(
            "pyobs: OTEL_EXPORTER_OTLP_COMPRESSION=%r is not none, gzip or deflate; "
            "spans are sent uncompressed",
            value,
        )
        return "none"
    return value


def takes_over(env: Mapping[str, str]) -> bool:
    """False when a setting only the SDK's exporter implements is present (a credential
    provider plug-in): pyobs then leaves export to the SDK's exporter."""
    return not any(
        env.get(name)
        for name in (
            "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
            "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
        )
    )


# -- the exporter ---------------------------------------------------------------------------


class OtlpHttpSpanExporter(SpanExporter):
    """OTLP/HTTP protobuf span exporter with a direct encoder (see the module docstring)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        import requests

        env = os.environ if env is None else env
        self.endpoint = endpoint(env)
        self.timeout = timeout(env)
        self.compression = compression(env)
        self.headers = headers(env)
        if self.compression != "none" and "content-encoding" not in self.headers:
            self.headers["content-encoding"] = self.compression
        self._verify: bool | str = otlp_setting(env, "CERTIFICATE") or True
        client_cert = otlp_setting(env, "CLIENT_CERTIFICATE")
        client_key = otlp_setting(env, "CLIENT_KEY")
        self._cert: Any = (client_cert, client_key) if client_cert and client_key else client_cert
        self._requests = requests
        self._session = self._new_session()
        self._encoder = _Encoder()
        self._ready: dict[int, bytes] = {}  # id(span) -> its bytes, encoded as it ended
        # The resource and scope of the request spans queued as bytes (pyobs_prepare).
        self._origin: tuple[Any, Any] | None = None
        self._origin_lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def _after_in_child() -> None:
                exporter = ref()
                if exporter is not None:
                    exporter._forked()

            os.register_at_fork(after_in_child=_after_in_child)
        self._closed = threading.Event()
        self.last_error = ""  # the last failure, for pyobs's dropped-spans log line

    def _new_session(self) -> Any:
        """A requests session that took what it needs from the environment once.

        requests reads the environment on every request of a session that trusts it: every
        variable for the proxies (``HTTPS_PROXY``, ``NO_PROXY``...), the CA bundle
        (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) and ``~/.netrc``: 0.1-0.2 ms of CPU per
        batch with 35 variables, more in a larger environment. The same settings are taken
        here, when the exporter starts (and again in a fork child), and the session then
        leaves the environment alone. As for the SDK's exporter, a configured certificate
        wins over the CA bundle.
        """
        requests = self._requests
        session = requests.Session()
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(self.endpoint))
        verify = self._verify
        if verify is True:
            environ = os.environ
            verify = environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or True
        session.verify = verify
        if self._cert:
            session.cert = self._cert
        auth = requests.utils.get_netrc_auth(self.endpoint)
        if auth:
            session.auth = auth
        # Plain HTTP, no proxy and no netrc credentials: requests would add nothing.
        self._plain: _PlainHttp | None = None
        try:
            if urlsplit(self.endpoint).scheme == "http" and not session.proxies and not auth:
                self._plain = _PlainHttp(self.endpoint)
        except ValueError:  # a malformed URL (bad port): requests reports it at export
            self._plain = None
        return session

    def _forked(self) -> None:
        """In a fork child: its queue starts empty, and a kept-alive connection inherited
        from the parent is the parent's (its socket is left to close with the old session or
        plain connection, without a word on the wire)."""
        self._ready.clear()
        self._session = self._new_session()  # and a new plain connection, the same way

    def pyobs_prepare(self, span: ReadableSpan) -> bytes | None:
        """Encode a span as it ends (pyobs's batch processor calls this from ``on_end``).

        The cost is the same as at export, but spread over the requests instead of taken in
        one go by the export thread, which then only joins the bytes and sends them: a burst
        of encoding shares the CPU with the requests of its moment and shows in their
        latency (docs/benchmarks.md, "Export off the hot path"). A span that is never
        exported leaves its bytes here until the next cut (twice the queue). pyobs's own
        request span keeps its bytes itself (``RequestSpan.encoded``): the export thread
        then reads them from the span, with no lookup by id and no check that the bytes are
        this span's (the loop that does that for other spans holds the GIL for up to 2 ms
        per batch of 2,048; docs/benchmarks-journal.md).

        For a request span of the resource and scope of the first one prepared (all of
        them, unless the provider changed), the bytes are returned and the processor queues
        them instead of the span: the span is freed with its request rather than waiting
        for its batch, where the cyclic garbage collector would walk it at every collection
        and move it to its oldest generation, whose full collections walk every object of
        the process (docs/benchmarks-journal.md, "Queued spans out of the collector's way").
        ``export`` takes such bytes in place of spans.
        """
        if type(span) is RequestSpan:
            encoded = self._encoder.span(span)
            resource, scope = span._resource, span._instrumentation_scope
            origin = self._origin
            if origin is None:
                with self._origin_lock:  # two first spans at once: one origin for both
                    if self._origin is None:
                        self._origin = (resource, scope)
                    origin = self._origin
            if resource is origin[0] and scope is origin[1]:
                return encoded  # queued instead of the span
            span.encoded = encoded
            return None
        ready = self._ready
        if len(ready) >= self.ready_max:
            ready.clear()  # spans that never reached export (a queue cleared by fork)
        ready[id(span)] = self._encoder.span(span)
        return None

    ready_max = 2 * 8192

    def _step_aside(self) -> None:
        time.sleep(STEP_ASIDE)

    def _body(self, spans: Sequence[ReadableSpan]) -> bytes:
        body = self._encoder.request(spans, self._step_aside, self._ready, self._origin)
        if self.compression == "gzip":
            return gzip.compress(body, compresslevel=6, mtime=0)
        if self.compression == "deflate":
            return zlib.compress(body)
        return body

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Send one batch; SUCCESS only once the receiver answered 2xx."""
        if self._closed.is_set():
            self.last_error = "the exporter is shut down"
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            body = self._body(spans)
        except Exception as exc:  # noqa: BLE001 - a value the protocol cannot carry
            self.last_error = f"a span could not be encoded: {exc}"
            return SpanExportResult.FAILURE
        deadline = time.monotonic() + self.timeout
        for attempt in range(MAX_ATTEMPTS):
            retry_after: float | None = None
            try:
                response = self._post(body, deadline)
            except self._requests.RequestException as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                retryable = isinstance(
                    exc, (self._requests.ConnectionError, self._requests.Timeout)
                )
            else:
                if 200 <= response.status_code < 300:
                    self._count_rejected(response.content)
                    return SpanExportResult.SUCCESS
                self.last_error = (
                    f"HTTP {response.status_code} from {self.endpoint}: {response.text[:200]!r}"
                )
                retryable = response.status_code in RETRYABLE
                retry_after = _retry_after(response.headers.get("retry-after"))
            if not retryable or attempt + 1 == MAX_ATTEMPTS:
                return SpanExportResult.FAILURE
            backoff = retry_after
            if backoff is None:
                backoff = 2**attempt * random.uniform(1 - JITTER, 1 + JITTER)
            if backoff > deadline - time.monotonic() or self._closed.wait(backoff):
                return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE

    def _post(self, body: bytes, deadline: float) -> Any:
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            return self._send(body, remaining)
        except self._requests.ConnectionError:
            # A kept-alive connection the receiver closed in between: once more at once,
            # unless shutdown() closed it (then nothing more is sent, as for any retry).
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                raise
            return self._send(body, remaining)

    def _send(self, body: bytes, timeout: float) -> Any:
        """One POST: over the plain connection when there is one, else through requests.
        The plain path's errors are raised as requests' (ConnectionError, Timeout), so
        retries and messages are the same on both."""
        plain = self._plain
        if plain is not None:
            try:
                answer = plain.post(body, self.headers, timeout)
            except TimeoutError as exc:
                raise self._requests.Timeout(f"{type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise self._requests.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
            if not 300 <= answer.status_code < 400:
                return answer
        return self._session.post(self.endpoint, data=body, headers=self.headers, timeout=timeout)

    def _count_rejected(self, body: bytes) -> None:
        count, message = _rejected(body) if body else (0, "")
        if count > 0:
            from pyobs._spans import DROPPED

            DROPPED.last_error = f"the receiver rejected {count} span(s): {message[:200]}"
            DROPPED.add("export_failed", count)

    def shutdown(self) -> None:
        """Stop retrying and close the connection."""
        self._closed.set()
        self._ready.clear()
        self._session.close()
        if self._plain is not None:
            self._plain.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is buffered here."""
        return True


class _Answer:
    """A plain-HTTP response, read whole: what export() reads of requests' Response."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, content: bytes, headers: Any) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers  # http.client's HTTPMessage: get() ignores case

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _PlainHttp:
    """POSTs to a plain ``http://`` URL over one kept-alive HTTP/1.1 connection
    (``http.client``), opened again after the receiver closed it or an error."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 80
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: Mapping[str, str], timeout: float) -> _Answer:
        connection = self._connection
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        else:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        try:
            connection.request("POST", self._target, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except BaseException:
            self.close()  # a connection in an unknown state is not used again
            raise
        return _Answer(response.status, content, response.headers)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP date), None if absent."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(moment.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
