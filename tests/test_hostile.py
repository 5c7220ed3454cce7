"""Hostile request input over real servers (issue 13.2, 13.4, 13.9): bounded, redacted, decoded.

Every probe sends one request a client could send on purpose or by accident (bytes that are
not UTF-8 in a trace header, an 8 KB baggage of bad entries, a 300-digit Content-Length, a
long URL, secrets in the query string). After each one the request is in the metrics, the
access log and the spans (unless the server itself refused it before the app ran), and
``http_server_active_requests`` is back to 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.frameworks import servers
from tests.frameworks.conftest import Served, by_name, serving
from tests.gunicorn_probe import gunicorn, wait_for

DURATION_COUNT = "http_server_request_duration_seconds_count"
ACTIVE = "http_server_active_requests"
SERVERS = ["fastapi", "tornado", "aiohttp", "sanic", "flask"]
MAX_FIELD = 8192  # the documented cap on request values in log fields and span attributes


@pytest.fixture(params=SERVERS)
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """One framework's tiny app on its own real server."""
    monkeypatch.setenv("PYOBS_REDACT_QUERY_PARAMS", "sessionid")
    monkeypatch.setenv("PYOBS_REDACT_HEADERS", "x-tenant-key")
    with serving(by_name(request.param), monkeypatch) as running:
        yield running


def _spans_for(served: Served, path: str) -> list[Any]:
    return [s for s in served.spans.get_finished_spans() if s.attributes.get("url.path") == path]


def _raw(served: Served, request: bytes) -> int:
    """Send raw request bytes; the status the server answered (0 when it just closed)."""
    parsed = urllib.parse.urlsplit(served.url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        try:  # the whole reply: the server closes the connection (Connection: close)
            while chunk := sock.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    parts = reply.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def assert_observed(served: Served, path: str, status: int = 200) -> None:
    """The request is in the access log, the spans and the metrics; the gauge is at 0."""
    assert served.wait_for(lambda: bool(served.access_logs(path))), "no access line"
    assert served.wait_for(lambda: bool(_spans_for(served, path))), "no span"
    assert served.wait_for(
        lambda: (served.sample(DURATION_COUNT, http_response_status_code=str(status)) or 0) >= 1
    )
    assert served.wait_for(lambda: served.sample(ACTIVE, http_request_method="GET") == 0.0)


def test_trace_headers_that_are_not_utf8_start_a_fresh_trace(served: Served) -> None:
    """`baggage: k=\\xff\\xfe` and a non-ASCII traceparent: served, observed, a fresh trace."""
    status, _, _ = served.get(
        "/items/1", headers={"baggage": "k=\xff\xfe", "traceparent": "00-\xff-\xfe-01"}
    )
    assert status == 200
    assert_observed(served, "/items/1")
    (span,) = _spans_for(served, "/items/1")
    assert span.parent is None


def test_a_baggage_of_bad_entries_costs_no_flood_of_warnings(served: Served) -> None:
    """An 8 KB `baggage: a,a,...`: served and observed; the propagator's warnings (181 per
    request) are counted, and at most one line per logger reaches the log."""
    baggage = ",".join(["a"] * 3000)  # about 6 KB, under every server's header limit
    logger = {"logger": "opentelemetry.baggage.propagation"}
    before = served.sample("pyobs_request_input_warnings_total", **logger) or 0.0
    logged_before = len([r for r in served.logs if r["log.logger"].startswith("opentelemetry")])
    assert served.get("/items/2", headers={"baggage": baggage})[0] == 200
    assert_observed(served, "/items/2")
    logged = [r for r in served.logs if r["log.logger"].startswith("opentelemetry")]
    assert len(logged) - logged_before <= 1
    assert served.sample("pyobs_request_input_warnings_total", **logger) == before + 181


def test_a_huge_content_length_never_reaches_the_size_histogram(served: Served) -> None:
    """A 300-digit Content-Length is ignored (or refused by the server): the request-size sum
    stays a real number and the gauge is back to 0."""
    digits = "9" * 300
    status = _raw(
        served,
        f"GET /items/3 HTTP/1.1\r\nHost: probe\r\nContent-Length: {digits}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    if status == 200:  # the server let it through to the app: it must be fully observed
        assert_observed(served, "/items/3")
    total = served.sample("http_server_request_body_size_bytes_sum") or 0.0
    assert total < 2**63
    assert served.wait_for(lambda: not served.sample(ACTIVE, http_request_method="GET"))


def test_a_long_url_is_cut_in_the_log_and_the_span(served: Served) -> None:
    """A 9 KB path: the access line and the span carry at most 8 KiB of it."""
    path = "/long/" + "x" * 9000
    status, _, _ = served.get(path)
    if status in (400, 413, 414, 431):  # the server's own request-line limit refused it
        assert not served.access_logs()
        return
    assert status == 404
    cut = path[:MAX_FIELD]
    assert_observed(served, cut, 404)
    (line,) = served.access_logs(cut)
    assert len(json.dumps(line)) < MAX_FIELD + 2048
    (span,) = _spans_for(served, cut)
    assert len(span.attributes["url.path"]) == MAX_FIELD


def test_secret_query_parameters_are_redacted_after_decoding(served: Served) -> None:
    """`?pass%77ord=`, `?%74oken=`, `?PassWord=` and a configured name are all redacted, in
    the access log and the span, whatever the encoding or case."""
    query = "pass%77ord=hunter2&%74oken=tok-42&PassWord=pw-3&sessionid=sess-9&page=2"
    assert served.get(f"/items/4?{query}", headers={"X-Tenant-Key": "tenant-secret"})[0] == 200
    assert_observed(served, "/items/4")
    (line,) = served.access_logs("/items/4")
    (span,) = _spans_for(served, "/items/4")
    for recorded in (line["url.query"], span.attributes["url.query"]):
        for secret in ("hunter2", "tok-42", "pw-3", "sess-9"):
            assert secret not in recorded
        assert "page=2" in recorded
        assert recorded.count("[REDACTED]") == 4


def test_trace_flags_are_the_sdks(served: Served) -> None:
    """A fresh trace carries the W3C random-trace-id flag as the SDK sets it (0x03); a
    continued one keeps its parent's random bit."""
    from opentelemetry.sdk.trace import TracerProvider

    probe = TracerProvider(shutdown_on_exit=False).get_tracer("probe").start_span("probe")
    expected = int(probe.get_span_context().trace_flags)
    assert served.get("/items/5")[0] == 200
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert served.get("/items/6", headers={"traceparent": parent})[0] == 200
    assert served.wait_for(
        lambda: bool(_spans_for(served, "/items/5") and _spans_for(served, "/items/6"))
    )
    (fresh,) = _spans_for(served, "/items/5")
    (continued,) = _spans_for(served, "/items/6")
    assert int(fresh.context.trace_flags) == expected
    assert int(continued.context.trace_flags) == 0x01


# -- gunicorn ---------------------------------------------------------------------------------


def test_gunicorn_wsgi_path_is_utf8_like_asgi(tmp_path: Path) -> None:
    """/café is recorded as /café (not /cafÃ©) in the access log and the span under gunicorn."""
    with gunicorn(tmp_path) as server:
        assert server.request("GET", "/caf%C3%A9")[0] == 200
        assert wait_for(lambda: server.access_logs() and server.spans())
        (line,) = server.access_logs()
        (span,) = server.spans()
        assert line["url.path"] == "/café"
        assert span["attributes"]["url.path"] == "/café"
        assert server.sample(ACTIVE, http_request_method="GET") == 0.0


def test_gunicorn_scrubs_secrets_from_exception_messages(tmp_path: Path) -> None:
    """URL credentials and bearer tokens in an exception message reach neither the access
    log nor the span's exception event."""
    with gunicorn(tmp_path) as server:
        assert server.request("GET", "/boom")[0] == 500
        assert wait_for(lambda: server.access_logs() and server.spans())
        (line,) = server.access_logs()
        (span,) = server.spans()
        (event,) = span["events"]
        everything = json.dumps(server.logs()) + json.dumps(span)
        assert "s3cret-pw" not in everything
        assert "abcdef0123456789" not in everything
        assert "postgres://[REDACTED]@db.internal/prod" in line["error.message"]
        assert "Bearer [REDACTED]" in event["attributes"]["exception.message"]
        assert server.sample(DURATION_COUNT, http_response_status_code="500") == 1.0


def test_gunicorn_honours_the_otel_span_limits(tmp_path: Path) -> None:
    """OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=256 and a count limit of 64 hold for pyobs's span
    as for the SDK's, without a warning line per cut value; the access line keeps its own
    8 KiB cap; a 300-digit Content-Length never reaches the size histogram."""
    path = "/" + "p" * 60_000
    headers = {f"x-h{n}": "v" * 300 for n in range(300)}
    with gunicorn(
        tmp_path,
        OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT="256",
        OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="64",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-h.*",
        GUNICORN_CMD_ARGS="--limit-request-line 0 --limit-request-fields 1000",
    ) as server:
        assert server.request("GET", path)[0] == 200
        assert server.request("GET", "/items/2", headers=headers)[0] == 200
        reply = server.raw(
            b"GET /items/1 HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n"
            b"Content-Length: " + b"9" * 300 + b"\r\n\r\n"
        )
        assert wait_for(lambda: len(server.spans()) >= 2)
        long_path, many = server.spans()[:2]  # in the order they ended
        assert long_path["name"] == "GET /<path:anything>"
        assert len(long_path["attributes"]["url.path"]) == 256
        assert many["name"] == "GET /items/<int:item_id>"
        assert len(many["attributes"]) == 64  # the SDK keeps the newest 64
        values = [
            v for vs in many["attributes"].values() for v in (vs if isinstance(vs, list) else [vs])
        ]
        assert values and all(len(str(v)) <= 256 for v in values)
        line = next(r for r in server.access_logs() if r["url.path"].startswith("/pp"))
        assert len(line["url.path"]) == MAX_FIELD
        # The SDK warns for each value cut and each attribute dropped: counted, one line.
        attribute_warnings = [
            r for r in server.logs() if r["log.logger"] == "opentelemetry.attributes"
        ]
        assert len(attribute_warnings) <= 1
        counted = server.sample(
            "pyobs_request_input_warnings_total", logger="opentelemetry.attributes"
        )
        assert (counted or 0.0) >= 300
        total = server.sample("http_server_request_body_size_bytes_sum") or 0.0
        assert total < 2**63
        assert server.sample(ACTIVE, http_request_method="GET") == 0.0
        if reply.startswith(b"HTTP/1.1 200"):
            assert wait_for(lambda: any(r["url.path"] == "/items/1" for r in server.access_logs()))


# -- raw ASGI: a client that leaves mid-stream is a 499 (issue 13.9) ---------------------------


def test_raw_asgi_app_that_reads_while_streaming_gets_its_whole_body_in_order() -> None:
    """An app that starts streaming, then reads a 256 KB body: pyobs's disconnect watcher
    hands it every body message, in order, and the request is a 200."""
    import_or_require("uvicorn")
    import hashlib
    import http.client

    import pyobs
    from pyobs.asgi import ObservabilityMiddleware
    from pyobs.testing import span_exporter

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"reading\n", "more_body": True})
        digest = hashlib.sha256()
        while True:
            message = await receive()
            digest.update(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": digest.hexdigest().encode()})

    pyobs.setup(service_name="raw")
    exporter = span_exporter()
    body = bytes(range(256)) * 1024
    with servers.uvicorn_server(ObservabilityMiddleware(app)) as url:
        parsed = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
        try:
            conn.request("POST", "/upload", body=body)
            reply = conn.getresponse().read()
        finally:
            conn.close()
        assert reply == b"reading\n" + hashlib.sha256(body).hexdigest().encode()
        assert wait_for(lambda: any(s.name == "POST" for s in exporter.get_finished_spans()))
    (span,) = [
        s for s in exporter.get_finished_spans() if s.attributes.get("url.path") == "/upload"
    ]
    assert span.attributes["http.response.status_code"] == 200


async def _stream_until(stop: threading.Event, send: Any) -> None:
    """Stream 1 KB chunks every 50 ms until ``stop`` is set (at most ~2 s), then end the body."""
    for _ in range(40):
        if stop.is_set():
            break
        await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _feed_status(exporter: Any, stop: threading.Event) -> int:
    """The status of the /feed request's span, once it is recorded; then the stream stops."""

    def spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans() if s.attributes.get("url.path") == "/feed"]

    recorded = wait_for(lambda: bool(spans()), 15)
    stop.set()
    assert recorded
    (span,) = spans()
    return int(span.attributes["http.response.status_code"])


@contextlib.contextmanager
def _raw_asgi_client(app: Any) -> Iterator[tuple[socket.socket, Any]]:
    """pyobs set up, ``app`` behind its ASGI middleware under uvicorn, and a client socket
    connected to it: yields (the socket, the span exporter)."""
    import_or_require("uvicorn")
    import pyobs
    from pyobs.asgi import ObservabilityMiddleware
    from pyobs.testing import span_exporter

    pyobs.setup(service_name="raw")
    exporter = span_exporter()
    with servers.uvicorn_server(ObservabilityMiddleware(app)) as url:
        parsed = urllib.parse.urlsplit(url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
            yield sock, exporter


def test_client_that_leaves_is_seen_after_an_app_stops_reading_mid_stream() -> None:
    """A raw ASGI app is still waiting in receive() for the request body when it sends its
    first chunk, then gets the body and streams on without reading: the client reads two
    chunks and leaves. pyobs's watcher cannot start while the app reads for itself, but must
    start once it stops, so the request is recorded as 499, not 200."""
    stop = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        reading = asyncio.ensure_future(receive())  # the body is not sent yet: it waits
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        await reading
        await _stream_until(stop, send)

    with _raw_asgi_client(app) as (sock, exporter):
        sock.sendall(b"POST /feed HTTP/1.1\r\nHost: probe\r\nContent-Length: 5\r\n\r\n")
        seen = b""
        while b"first" not in seen:  # the first chunk, sent while the app waits to read
            chunk = sock.recv(4096)
            assert chunk
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200")
        sock.sendall(b"hello")  # the app's receive() returns; it streams on
        assert sock.recv(4096)
        sock.close()
        assert _feed_status(exporter, stop) == 499


def test_raw_asgi_app_that_never_reads_records_a_client_that_left_as_499() -> None:
    """A raw ASGI app streaming without reading its input, under uvicorn: the client reads
    one chunk and leaves; the request is recorded as 499, not 200 (uvicorn drops the later
    sends silently, so only the input tells)."""
    from pyobs.metrics import get_metrics

    stop = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await _stream_until(stop, send)

    with _raw_asgi_client(app) as (sock, exporter):
        sock.sendall(b"GET /feed HTTP/1.1\r\nHost: probe\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()  # the client is gone; the app learns nothing and finishes its stream
        assert _feed_status(exporter, stop) == 499
    from prometheus_client import REGISTRY

    assert (
        REGISTRY.get_sample_value(
            DURATION_COUNT,
            {
                "http_request_method": "GET",
                "http_route": "<unmatched>",
                "http_response_status_code": "499",
            },
        )
        == 1.0
    )
    assert get_metrics() is not None


def test_a_utf8_path_is_recorded_decoded_on_every_server(served: Served) -> None:
    """/caf%C3%A9 is recorded as /café by every server and protocol (issue 13.9)."""
    status, _, _ = served.get("/caf%C3%A9")
    assert status == 404
    assert_observed(served, "/café", 404)


def test_a_forwarded_for_of_thousands_of_hops_is_cheap_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """X-Forwarded-For with 3000 trusted hops: only the nearest 32 are parsed, and the
    client recorded is one of them."""
    import pyobs._observer as observer_module
    from pyobs._config import load_config
    from pyobs._observer import RequestFacts, RequestObserver

    observer = RequestObserver(load_config({}, trusted_proxies="10.0.0.0/8", tracing=False))
    parsed: list[str] = []
    original = observer_module._trusted

    def counting(address: str, proxies: Any) -> bool:
        parsed.append(address)
        return original(address, proxies)

    monkeypatch.setattr(observer_module, "_trusted", counting)
    hops = ", ".join(f"10.0.{n // 250}.{n % 250}" for n in range(3000))
    facts = RequestFacts("GET", "/", {"x-forwarded-for": hops}, client_addr="10.9.9.9")
    client = observer.client_ip(facts)
    assert len(parsed) <= 33
    assert client is not None and client.startswith("10.0.")
