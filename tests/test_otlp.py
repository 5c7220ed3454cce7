"""pyobs's OTLP/HTTP span exporter (pyobs/_otlp.py): the SDK's request, its settings, its retries.

The receiver here is a real HTTP server on loopback that answers as an OTLP collector would
(scripted statuses, Retry-After, partial success); delivery to a real Jaeger through
``pyobs.setup()`` is covered by tests/test_otel_env.py and tests/test_traces_e2e.py. What
these tests cannot prove: a TLS handshake and a CONNECT tunnel through an HTTPS proxy, which
are ``requests``' (the same library the SDK's exporter uses); which proxy and CA bundle apply
is checked here.
"""

from __future__ import annotations

import gzip
import http.server
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import import_or_require, run_python

import_or_require("opentelemetry.exporter.otlp.proto.common.trace_encoder")

from opentelemetry import trace  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from pyobs import _otlp  # noqa: E402


def _spans(count: int = 3) -> list[ReadableSpan]:
    """SDK spans with everything a span can carry: events, links, trace state, statuses,
    array and numeric attributes, two scopes, a remote parent, resource attributes."""
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": "lean", "n": 3, "ratio": 1.5, "tags": ["a", "b"]})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer, other = provider.get_tracer("pyobs", "1.0"), provider.get_tracer("other")
    remote = trace.SpanContext(
        0x1234, 0x5678, True, trace.TraceFlags(1), trace.TraceState([("k", "v"), ("a", "b")])
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    attributes: dict[str, Any] = {
        "http.route": "/items/{id}",
        "port": 80,
        "neg": -5,
        "f": 2.5,
        "ok": False,
        "unicode": "café ☕",
    }
    for index in range(count):
        with tracer.start_as_current_span(
            "GET /items/{id}",
            kind=trace.SpanKind.SERVER,
            attributes={**attributes, "url.path": f"/items/{index}", "seq": [1, index]},
            context=parent,
            links=[trace.Link(remote, {"x": index})],
        ) as span:
            span.add_event("event", {"e": "v", "n": index})
            span.set_status(trace.Status(trace.StatusCode.ERROR, "bad"))
            with other.start_as_current_span("child") as child:
                child.set_status(trace.Status(trace.StatusCode.OK))
    spans = list(memory.get_finished_spans())
    assert len(spans) == 2 * count
    return spans


def test_the_encoder_writes_what_the_sdk_encoder_builds() -> None:
    """The SDK's protobuf classes parse pyobs's bytes into exactly the message the SDK's own
    encoder builds, for a first batch and for a later one that reuses encoded pairs."""
    spans = _spans()
    encoder = _otlp._Encoder()
    expected = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(encoder.request(spans)) == expected
    assert ExportTraceServiceRequest.FromString(encoder.request(spans)) == expected
    steps: list[int] = []
    many = _spans(_otlp.SLICE)  # two spans each: the batch is two slices
    body = encoder.request(many, lambda: steps.append(1))
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(many)
    assert len(steps) == 1  # stepped aside between the two slices, not after the last
    # Spans encoded as they ended are only joined: no step aside (a GIL hand-off each).
    ready = {id(span): encoder.span(span) for span in many}
    steps.clear()
    body = encoder.request(many, lambda: steps.append(1), ready)
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(many)
    assert steps == [] and ready == {}


def test_the_encoder_writes_pyobs_request_spans_as_the_sdk_would() -> None:
    """pyobs's own request spans (RequestSpan), as a Flask request records them: with and
    without a remote parent, with an error status (written by the general path), and once
    an application added an event (general path too)."""
    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client

    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"]())
    exporter = span_exporter()
    exporter.clear()
    parent = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    for path in ("/items/1?q=2", "/boom", "/missing"):
        client.get(path, parent)
        client.get(path)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 6
    encoder = _otlp._Encoder()
    parsed = ExportTraceServiceRequest.FromString(encoder.request(spans))
    assert parsed == encode_spans(spans)
    # The common spans took the request-span path, the error spans the general one.
    taken = [encoder.request_span(span) is not None for span in spans]
    assert taken == [True, True, False, False, True, True]
    # An event (application code on the current span) sends the span down the general path.
    spans[0]._events = ()  # what the span holds before its first event
    spans[0]._end_time = None
    spans[0].add_event("cache miss", {"key": "k"})
    spans[0]._end_time = spans[1].end_time
    assert encoder.request_span(spans[0]) is None
    parsed = ExportTraceServiceRequest.FromString(encoder.request(spans[:1]))
    assert parsed == encode_spans(spans[:1])


def test_a_value_the_protocol_cannot_carry_fails_the_batch_with_a_reason() -> None:
    (span, _child) = _spans(1)
    span._attributes = {"big": 1 << 70}
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert exporter.export([span]) is SpanExportResult.FAILURE
    assert "int64" in exporter.last_error


# -- a scripted OTLP receiver ---------------------------------------------------------------


class Receiver:
    """An OTLP/HTTP receiver on loopback whose answers are scripted per request."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.posts.append(
                    {
                        "client": self.client_address,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "request": ExportTraceServiceRequest.FromString(body),
                    }
                )
                status, headers, answer = (
                    receiver.script.pop(0) if receiver.script else (200, {}, b"")
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def test_settings_are_read_as_the_sdk_exporter_reads_them(receiver: Receiver) -> None:
    """Base endpoint + /v1/traces; TRACES_ endpoint as given; headers percent-decoded,
    TRACES_ over generic; gzip on request; the content type OTLP/HTTP protobuf needs."""
    spans = _spans(1)
    exporter = _otlp.OtlpHttpSpanExporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base + "/",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue,authorization=Bearer%20abc",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        }
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    other = _otlp.OtlpHttpSpanExporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/unused",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.base + "/custom/traces",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=green",
        }
    )
    assert other.export(spans) is SpanExportResult.SUCCESS
    first, second = receiver.posts
    assert first["path"] == "/v1/traces"
    assert first["headers"]["x-tenant"] == "blue"
    assert first["headers"]["authorization"] == "Bearer abc"
    assert first["headers"]["content-encoding"] == "gzip"
    assert first["headers"]["content-type"] == "application/x-protobuf"
    assert first["request"] == encode_spans(spans)
    assert second["path"] == "/custom/traces"
    assert second["headers"]["x-tenant"] == "green"
    assert "content-encoding" not in second["headers"]


def test_transient_answers_are_retried_and_others_are_not(receiver: Receiver) -> None:
    """503 then 429 (Retry-After honoured) then 200: one success after three requests;
    400: one request, a failure that says why."""
    spans = _spans(1)
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    receiver.script = [(503, {"retry-after": "0"}, b""), (429, {"retry-after": "0.1"}, b"")]
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(receiver.posts) == 3
    assert time.monotonic() - started >= 0.1
    receiver.script = [(400, {}, b"bad request")]
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(receiver.posts) == 4
    assert "HTTP 400" in exporter.last_error and "bad request" in exporter.last_error


def _one_second_exporter(port: int) -> _otlp.OtlpHttpSpanExporter:
    """An exporter to 127.0.0.1:port that gives a batch one second (OTEL_EXPORTER_OTLP_TIMEOUT)."""
    return _otlp.OtlpHttpSpanExporter(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        }
    )


def test_an_unreachable_receiver_fails_within_the_timeout() -> None:
    """Nothing listens: retried with backoff, given up within OTEL_EXPORTER_OTLP_TIMEOUT."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = _one_second_exporter(port)
    started = time.monotonic()
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 1.5
    assert "ConnectionError" in exporter.last_error


def test_shutdown_stops_a_retry_wait(receiver: Receiver) -> None:
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    receiver.script = [(503, {"retry-after": "5"}, b"")]
    threading.Timer(0.2, exporter.shutdown).start()
    started = time.monotonic()
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE  # shut down: not sent
    assert len(receiver.posts) == 1


def test_shutdown_during_a_post_sends_nothing_more(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shutdown() while a POST is in flight closes its connection under it: the export fails
    and nothing is sent again, not even the immediate resend a kept-alive connection the
    receiver closed gets (a slow CI run once saw the resend succeed after shutdown)."""
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    receiver.script = [(503, {}, b"")]
    plain = exporter._plain
    assert plain is not None
    post = plain.post

    def shut_down_in_flight(body: bytes, headers: Any, timeout: float) -> Any:
        post(body, headers, timeout)  # the receiver has it
        exporter.shutdown()
        raise OSError("the connection was closed by shutdown()")

    monkeypatch.setattr(plain, "post", shut_down_in_flight)
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert len(receiver.posts) == 1


def test_spans_the_receiver_rejects_are_counted_as_dropped(receiver: Receiver) -> None:
    """An OTLP partial success (rejected_spans) counts those spans in
    pyobs_spans_dropped_total{reason="export_failed"}, and a failed batch counts all of its
    spans, through pyobs's batch processor."""
    from prometheus_client import REGISTRY

    from pyobs._spans import CountingBatchSpanProcessor

    def dropped() -> float:
        return (
            REGISTRY.get_sample_value("pyobs_spans_dropped_total", {"reason": "export_failed"})
            or 0.0
        )

    partial = ExportTraceServiceResponse()
    partial.partial_success.rejected_spans = 2
    partial.partial_success.error_message = "too old"
    receiver.script = [(200, {}, partial.SerializeToString()), (400, {}, b"no")]
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    processor = CountingBatchSpanProcessor(exporter)
    before = dropped()
    spans = _spans(2)
    for span in spans[:2]:
        processor.on_end(span)
    processor.force_flush()
    assert dropped() - before == 2
    for span in spans[2:]:
        processor.on_end(span)
    processor.force_flush()
    assert dropped() - before == 4
    processor.shutdown()
    assert len(receiver.posts) == 2


def test_setup_picks_pyobs_exporter_for_otlp_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_EXPORTER=otlp (or unset, with an endpoint) over http/protobuf: pyobs's;
    otlp_proto_http, or a credential provider only the SDK's exporter knows: the SDK's."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from pyobs import tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert isinstance(tracing._make_exporter("otlp"), _otlp.OtlpHttpSpanExporter)
    assert isinstance(tracing._make_exporter("otlp_proto_http"), OTLPSpanExporter)
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "missing")
    assert tracing._make_exporter("otlp") is None  # the SDK's, which cannot find the plug-in


def test_spans_encoded_as_they_end_are_sent_as_the_sdk_would(receiver: Receiver) -> None:
    """Behind pyobs's batch processor the exporter encodes each span as it ends; the request
    is still exactly the SDK's, and bytes left under a reused object id are not trusted."""
    from pyobs._spans import CountingBatchSpanProcessor

    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    processor = CountingBatchSpanProcessor(exporter)
    spans = _spans(2)
    for span in spans:
        processor.on_end(span)
    assert set(exporter._ready) == {id(span) for span in spans}
    exporter._ready[id(spans[0])] = exporter._encoder.span(spans[1])  # another span's bytes
    processor.force_flush()
    processor.shutdown()
    (post,) = receiver.posts
    assert post["request"] == encode_spans(spans)
    assert exporter._ready == {}


def test_request_spans_wait_for_export_as_their_bytes(receiver: Receiver) -> None:
    """pyobs's request spans are encoded as they end and only their bytes wait in the batch
    queue (no span object kept, no lookup by id at export); a request span queued without
    them (it ended before the exporter was there) is encoded at export; the request is
    exactly the SDK's either way."""
    from pyobs._spans import CountingBatchSpanProcessor
    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client

    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"]())
    memory = span_exporter()
    memory.clear()
    for path in ("/items/1", "/items/2", "/missing"):
        client.get(path)
    spans = list(memory.get_finished_spans())
    assert [type(span).__name__ for span in spans] == ["RequestSpan"] * 3
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    processor = CountingBatchSpanProcessor(exporter)
    for span in spans[:2]:
        processor.on_end(span)
    assert list(processor._queue) == [exporter._encoder.span(span) for span in spans[:2]]
    assert exporter._ready == {}
    processor._queue.append(spans[2])  # queued as a span: encoded at export
    processor.force_flush()
    processor.shutdown()
    (post,) = receiver.posts
    assert post["request"] == encode_spans(spans)


def test_a_request_span_of_another_resource_waits_as_itself(receiver: Receiver) -> None:
    """Only request spans of the first one's resource and scope wait as bytes (the export
    groups those under that resource): one of another provider keeps its bytes on itself
    and is sent under its own resource."""
    import copy

    from pyobs._spans import CountingBatchSpanProcessor
    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client

    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"]())
    memory = span_exporter()
    memory.clear()
    client.get("/items/1")
    (first,) = memory.get_finished_spans()
    other = copy.copy(first)
    other._resource = Resource.create({"service.name": "another-service"})
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    processor = CountingBatchSpanProcessor(exporter)
    processor.on_end(first)
    processor.on_end(other)
    queued = list(processor._queue)
    assert type(queued[0]) is bytes and queued[1] is other
    assert other.encoded == exporter._encoder.span(other)
    processor.force_flush()
    processor.shutdown()
    (post,) = receiver.posts
    assert post["request"] == encode_spans([first, other])
    assert len(post["request"].resource_spans) == 2


def test_a_request_span_is_freed_with_its_request_when_exporting_otlp(receiver: Receiver) -> None:
    """With pyobs's OTLP exporter (what ``pyobs.setup()`` installs for an OTLP endpoint) a
    request's span object does not wait for its batch, its bytes do: once the request is
    over nothing of it is left for the garbage collector, and the span still arrives with
    the ids the request saw."""
    import json

    import_or_require("flask")
    script = """
import gc, json, weakref
from opentelemetry import trace
from flask import Flask
import pyobs, pyobs.flask
pyobs.setup(service_name="freed", access_log=False)
app = Flask("freed")
seen = {}

@app.route("/a")
def a():
    span = trace.get_current_span()
    seen["ref"] = weakref.ref(span)
    seen["ids"] = [span.get_span_context().trace_id, span.get_span_context().span_id]
    return "a"

pyobs.flask.instrument(app)
app.test_client().get("/a").close()
gc.collect()
alive = seen["ref"]() is not None
trace.get_tracer_provider().force_flush()
print(json.dumps({"alive": alive, "ids": seen["ids"]}))
"""
    out = run_python(script, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["alive"] is False, "the span object waited for its batch"
    (post,) = receiver.posts
    (resource_spans,) = post["request"].resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    ids = [int.from_bytes(span.trace_id, "big"), int.from_bytes(span.span_id, "big")]
    assert ids == result["ids"]
    assert span.name == "GET /a"


def test_a_plain_http_endpoint_gets_the_same_request_without_requests(receiver: Receiver) -> None:
    """To a plain-http endpoint with no proxy, pyobs posts with http.client on one kept-alive
    connection: the receiver gets the same path, pyobs's headers and the same bytes as
    through requests (which https, a proxy or netrc credentials still take)."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base, "OTEL_EXPORTER_OTLP_HEADERS": "x-t=1"}
    exporter = _otlp.OtlpHttpSpanExporter(env)
    assert exporter._plain is not None
    spans = _spans(2)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    plain = exporter._plain
    exporter._plain = None  # the requests path, for comparison
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter._plain = plain
    first, second, through_requests = receiver.posts
    assert first["client"] == second["client"]  # kept alive
    ours = ("content-type", "user-agent", "x-t", "content-length", "host")
    for post in (first, through_requests):
        assert post["path"] == "/v1/traces"
        assert post["request"] == encode_spans(spans)
    assert {k: first["headers"][k] for k in ours} == {
        k: through_requests["headers"][k] for k in ours
    }
    assert first["headers"]["user-agent"].startswith("pyobs/")
    https = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.invalid:4318"})
    assert https._plain is None


def test_a_malformed_endpoint_fails_the_export_with_a_reason_not_the_setup() -> None:
    """An endpoint URL with a bad port does not stop the exporter from being built (the
    service starts); each export fails and says why, and nothing is sent anywhere."""
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:99x"})
    assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
    assert "99x" in exporter.last_error, exporter.last_error


def test_a_receiver_that_closes_each_connection_is_reconnected(receiver: Receiver) -> None:
    """A receiver that answers with Connection: close gets a new connection per batch, and
    every batch is delivered."""
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    receiver.script = [(200, {"connection": "close"}, b"")] * 3
    for _ in range(3):
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS, exporter.last_error
    assert len({post["client"] for post in receiver.posts}) == 3


def test_a_redirect_is_followed_as_requests_follows_it(receiver: Receiver) -> None:
    """A 307 from the endpoint is not a failure: the batch goes through requests, which
    follows it (POST kept, body kept), as the SDK's exporter would."""
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    moved = (307, {"location": receiver.base + "/moved"}, b"")
    receiver.script = [moved, moved]
    spans = _spans(1)
    assert exporter.export(spans) is SpanExportResult.SUCCESS, exporter.last_error
    assert [post["path"] for post in receiver.posts] == ["/v1/traces", "/v1/traces", "/moved"]
    assert receiver.posts[-1]["request"] == encode_spans(spans)


def test_a_receiver_that_never_answers_fails_within_the_timeout() -> None:
    """Connected, request sent, no answer: the batch fails within OTEL_EXPORTER_OTLP_TIMEOUT
    with a Timeout, as through requests."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever reads or answers
        exporter = _one_second_exporter(silent.getsockname()[1])
        started = time.monotonic()
        assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 1.8
    assert "Timeout" in exporter.last_error, exporter.last_error


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_fork_child_sends_on_its_own_connection(receiver: Receiver) -> None:
    """A connection kept alive in the parent is the parent's: a fork child's export opens its
    own, and the parent's still works afterwards."""
    exporter = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
    pid = os.fork()
    if pid == 0:  # the child: export, report through the exit code only
        ok = exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
    parent_first, child, parent_again = (post["client"] for post in receiver.posts)
    assert child != parent_first
    assert parent_again == parent_first  # the parent kept its connection


def test_proxy_settings_come_from_the_environment_as_the_exporter_starts(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY and NO_PROXY are honoured as requests honours them for the SDK's exporter,
    read once when the exporter starts (not on every export, where reading them costs
    0.1-0.2 ms per batch); a change made later is not seen. The receiver stands in for the
    proxy: a request through a proxy names the whole URL in its request line."""
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    target = "http://collector.invalid:4318/v1/traces"
    monkeypatch.setenv("HTTP_PROXY", receiver.base)
    proxied = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": target})
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base})
    monkeypatch.delenv("HTTP_PROXY")
    assert proxied.export(_spans(1)) is SpanExportResult.SUCCESS  # still through the proxy
    assert direct.export(_spans(1)) is SpanExportResult.SUCCESS
    through_proxy, straight = receiver.posts
    assert through_proxy["path"] == target
    assert straight["path"] == "/v1/traces"


def test_a_configured_certificate_wins_over_the_ca_bundle_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """REQUESTS_CA_BUNDLE applies when no certificate is configured, as for the SDK's exporter;
    OTEL_EXPORTER_OTLP_CERTIFICATE wins when set. Checked on the settings requests resolves
    for a request (no TLS server here: the handshake itself is requests' and is not shown)."""
    bundle, configured = tmp_path / "bundle.pem", tmp_path / "collector.pem"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    url = "https://collector.example:4318/v1/traces"
    plain = _otlp.OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url})
    pinned = _otlp.OtlpHttpSpanExporter(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(configured),
        }
    )

    def verify(exporter: Any) -> Any:
        session = exporter._session
        return session.merge_environment_settings(url, {}, None, None, None)["verify"]

    assert verify(plain) == str(bundle)
    assert verify(pinned) == str(configured)
