"""The app a real server (gunicorn, uvicorn) loads for benchmarks/realserver.py.

Each worker process imports this module, which builds one configuration of one framework from
``_overhead_apps`` (the same apps the in-process benchmark measures), with the span pipeline
users run in production: the batch processor ``pyobs.setup()`` installs (for pyobs) or the
SDK's ``BatchSpanProcessor`` (for OTel contrib), ``OTEL_BSP_*`` honoured by both, feeding
either an exporter that counts spans and drops them, or the OTLP exporter (HTTP/protobuf or
gRPC, configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables) behind a counter.

Driven by environment variables, set by realserver.py:

- ``RB_FRAMEWORK``: flask | fastapi | django
- ``RB_CONFIG``: bare | pyobs-metrics | pyobs-full | a Prometheus peer | otel-contrib
- ``RB_EXPORT``: drop (default) | otlp | lean-http (the sketch at the end of this module)
- ``RB_SERVER``: gunicorn | uvicorn
- ``RB_FACTS``: a directory; every worker writes ``spans.<pid>`` there (spans exported and
  spans the exporter failed to deliver, as JSON) after each export batch and at exit.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import signal
import struct
import sys
import threading
import urllib.parse
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _overhead_apps import build


class CountingExporter:
    """Counts the spans another exporter delivered (or failed to), or drops them after counting.

    The counts go to a small file per process after each batch (the export thread's cost, once
    per batch), so the benchmark reads them after the server has stopped.
    """

    def __init__(self, inner: Any, facts: Path | None) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.inner = inner
        self.success = SpanExportResult.SUCCESS
        self.exported = 0
        self.failed = 0
        self.scopes: dict[str, int] = {}
        self.facts = facts
        self.lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        result = self.success if self.inner is None else self.inner.export(spans)
        with self.lock:
            if result == self.success:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
            for span in spans:
                scope = span.instrumentation_scope
                name = scope.name if scope is not None else "?"
                self.scopes[name] = self.scopes.get(name, 0) + 1
        self.write()
        return result

    def write(self) -> None:
        """Record this process's counts (overwritten: the last write holds the totals)."""
        if self.facts is None:
            return
        data = {"exported": self.exported, "failed": self.failed, "scopes": self.scopes}
        path = self.facts / f"spans.{os.getpid()}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def shutdown(self) -> None:
        if self.inner is not None:
            self.inner.shutdown()
        self.write()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.inner is not None:
            return bool(self.inner.force_flush(timeout_millis))
        return True


def _otlp_exporter() -> Any:
    """The OTLP span exporter pyobs itself would build from the OTEL_ variables."""
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def _install_tracing(facts: Path | None, config: str) -> CountingExporter:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from pyobs._spans import batch_processor

    export = os.environ.get("RB_EXPORT", "drop")
    inner: Any = None
    if export == "otlp":
        inner = _otlp_exporter()
    elif export == "lean-http":
        inner = LeanHttpExporter()
    exporter = CountingExporter(inner, facts)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    # The processor each side installs for an exporter: pyobs.setup()'s for pyobs (the SDK's
    # class with its losses counted, pyobs/_spans.py), the SDK's own for contrib.
    processor = batch_processor if config.startswith("pyobs") else BatchSpanProcessor
    provider.add_span_processor(processor(exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    # The SDK registers its own exit hook (shutdown flushes the batch); this one runs first
    # (last registered, first run) only to make sure the counts are written even if that
    # hook is missing.
    atexit.register(exporter.write)
    if os.environ.get("RB_SERVER") == "uvicorn":
        _flush_on_sigterm(provider)
    return exporter


def _flush_on_sigterm(provider: Any) -> None:
    """Under uvicorn, flush the last span batch on SIGTERM before the process ends.

    uvicorn handles SIGTERM itself and, after its graceful shutdown, raises the signal again
    with the handler that was there before it started: with the default one the process dies
    without running exit hooks, so the batch processor's last partial batch would be lost (and
    the benchmark would count it as lost). Installed at import, this handler is the one uvicorn
    restores; gunicorn workers keep their own handlers (they install them before the import).
    """

    def flush_then_end(signum: int, frame: Any) -> None:
        provider.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, flush_then_end)


def make_app() -> Any:
    """Build the configured app: tracing first (pyobs and contrib adopt it), then pyobs."""
    framework = os.environ["RB_FRAMEWORK"]
    config = os.environ["RB_CONFIG"]
    facts = Path(os.environ["RB_FACTS"]) if os.environ.get("RB_FACTS") else None
    if config in ("pyobs-full", "otel-contrib"):
        _install_tracing(facts, config)
    if config.startswith("pyobs"):
        import pyobs

        full = config == "pyobs-full"
        pyobs.setup(service_name="bench", tracing=full, access_log=full)
    return build(framework, config).app


# --- a lean OTLP encoder: what export off the hot path could cost --------------------------
#
# The SDK's OTLP exporters build a protobuf message object per span, attribute and value,
# about 50 us of CPU per span here: as much as pyobs's whole span, access line and metrics.
# ``encode_lean`` writes the same ExportTraceServiceRequest bytes directly, reusing the bytes
# of every (key, value) pair it has seen (method, route, scheme, server address... repeat from
# request to request). tests/test_benchmarks.py checks that the SDK's protobuf classes parse
# its output into the same message the SDK's encoder builds. A sketch of a design choice for
# pyobs, measured by realserver.py as the ``lean-http`` export variant; not part of pyobs.

_PACK_D = struct.Struct("<d").pack
_PACK_Q = struct.Struct("<Q").pack
_PACK_I = struct.Struct("<I").pack
_KV_CACHE: dict[tuple[str, type, Any], bytes] = {}
_KV_CACHE_MAX = 4096
_RESOURCE_CACHE: dict[int, tuple[Any, bytes]] = {}


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); tags up to 15 (one key byte)."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag << 3 | 2, size)) + payload
    return bytes((tag << 3 | 2,)) + _varint(size) + payload


def _any_value(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Mapping):
        items = b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items())
        return _field(6, items)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    raise TypeError(f"cannot encode {type(value)}")


def _key_value(key: str, value: Any) -> bytes:
    return _field(1, key.encode()) + _field(2, _any_value(value))


def _attributes(tag: int, attributes: Any) -> bytes:
    """Repeated KeyValue fields; scalar pairs are encoded once and then reused."""
    if not attributes:
        return b""
    parts = []
    cache = _KV_CACHE
    for key, value in attributes.items():
        if isinstance(value, (str, int, float)):
            ident = (key, type(value), value)
            encoded = cache.get(ident)
            if encoded is None:
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()  # bounded: ids and paths must not grow it without end
                encoded = cache[ident] = _field(tag, _key_value(key, value))
            parts.append(encoded)
        else:
            parts.append(_field(tag, _key_value(key, value)))
    return b"".join(parts)


_LOCAL_FLAGS = b"\x85\x01" + _PACK_I(0x100)
_REMOTE_FLAGS = b"\x85\x01" + _PACK_I(0x300)
_UNSET_STATUS = b"\x7a\x00"
_NAMES: dict[str, bytes] = {}


def _span(span: Any) -> bytes:
    context = span.context
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(
            _field(3, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode())
        )
    parent = span.parent
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    name = _NAMES.get(span.name)
    if name is None:
        if len(_NAMES) >= _KV_CACHE_MAX:
            _NAMES.clear()
        name = _NAMES[span.name] = _field(5, span.name.encode())
    parts.append(name)
    parts.append(bytes((0x30, span.kind.value + 1)))
    parts.append(b"\x39" + _PACK_Q(span.start_time or 0) + b"\x41" + _PACK_Q(span.end_time or 0))
    parts.append(_attributes(9, span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _PACK_Q(event.timestamp) + _field(2, event.name.encode())
        body += _attributes(3, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(11, body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
        body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        body += _attributes(4, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
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
        parts.append(_UNSET_STATUS)
    parts.append(_REMOTE_FLAGS if parent is not None and parent.is_remote else _LOCAL_FLAGS)
    return _field(2, b"".join(parts))


def _resource(resource: Any) -> bytes:
    cached = _RESOURCE_CACHE.get(id(resource))
    if cached is None or cached[0] is not resource:
        cached = (resource, _field(1, _attributes(1, resource.attributes)))
        _RESOURCE_CACHE[id(resource)] = cached
    return cached[1]


def encode_lean(spans: Sequence[Any]) -> bytes:
    """ExportTraceServiceRequest bytes for SDK ReadableSpans, grouped by resource and scope."""
    # Grouped by identity: a Resource hashes by serializing its attributes to JSON, per call.
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        entry = grouped.get(id(resource))
        if entry is None:
            entry = grouped[id(resource)] = (resource, {})
        scope = span.instrumentation_scope
        listed = entry[1].get(id(scope))
        if listed is None:
            listed = entry[1][id(scope)] = (scope, [])
        listed[1].append(_span(span))
    out = []
    for resource, by_scope in grouped.values():
        body = [_resource(resource)]
        for scope, encoded in by_scope.values():
            head = b""
            if scope is not None:
                head = _field(1, scope.name.encode())
                if scope.version:
                    head += _field(2, scope.version.encode())
                head += _attributes(3, scope.attributes)
                head = _field(1, head)
                if scope.schema_url:
                    encoded = [*encoded, _field(3, scope.schema_url.encode())]
            else:
                head = _field(1, b"")
            body.append(_field(2, head + b"".join(encoded)))
        if resource.schema_url:
            body.append(_field(3, resource.schema_url.encode()))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


class LeanHttpExporter:
    """OTLP/HTTP protobuf over one kept-alive connection, bodies from ``encode_lean``."""

    def __init__(self) -> None:
        endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/")
        parts = urllib.parse.urlsplit(endpoint + "/v1/traces")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 4318
        self.path = parts.path
        self.gzip = os.environ.get("OTEL_EXPORTER_OTLP_COMPRESSION") == "gzip"
        self.connection: http.client.HTTPConnection | None = None

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        body = encode_lean(spans)
        headers = {"Content-Type": "application/x-protobuf"}
        if self.gzip:
            body = zlib.compress(body, 1, wbits=31)  # gzip framing, fastest level
            headers["Content-Encoding"] = "gzip"
        for _attempt in range(2):  # once more on a connection the receiver closed
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self.connection.request("POST", self.path, body, headers)
                response = self.connection.getresponse()
                response.read()
                if response.status == 200:
                    return SpanExportResult.SUCCESS
                return SpanExportResult.FAILURE
            except (OSError, http.client.HTTPException):
                if self.connection is not None:
                    self.connection.close()
                self.connection = None
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        if self.connection is not None:
            self.connection.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


# The server imports this module for ``app``; tests import it for the encoder alone.
if os.environ.get("RB_FRAMEWORK"):
    app = make_app()
