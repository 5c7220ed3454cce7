"""One set of contract assertions (CONTRACT §2-§5), run against a tiny app per framework."""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import import_or_require
from tests.frameworks.apps import CHUNK_DELAY, CHUNKS, SLOW
from tests.frameworks.conftest import Served

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
DURATION = "http_server_request_duration_seconds"
ACCESS_FIELDS = {
    "@timestamp", "log.level", "message", "ecs.version", "service.name", "log.logger",
    "process.pid", "trace.id", "span.id", "http.request.id", "event.dataset",
    "http.request.method", "url.path", "http.route", "http.response.status_code",
    "http.response.body.bytes", "event.duration", "client.ip", "user_agent.original",
}  # fmt: skip


def _server_spans(served: Served, path: str) -> list[Any]:
    """The SERVER spans of ``path``, once there is one (bounded wait): pyobs ends the span
    last, after the metrics and the access line a test may have waited for."""

    def found() -> list[Any]:
        return [
            s
            for s in served.spans.get_finished_spans()
            if s.kind is SpanKind.SERVER and s.attributes.get("url.path") == path
        ]

    served.wait_for(lambda: bool(found()))
    return found()


def test_route_template_labels_the_metrics(served: Served) -> None:
    """Every framework labels requests with its own route template, never the raw path."""
    status, _, body = served.get("/items/3")
    assert status == 200
    route = served.framework.item_route
    assert served.wait_for(
        lambda: served.sample(f"{DURATION}_count", http_route=route, http_request_method="GET",
                              http_response_status_code="200") == 1.0
    )  # fmt: skip
    text = served.metrics()
    assert 'http_route="/items/3"' not in text
    assert served.sample("http_server_response_body_size_bytes_sum", http_route=route) == len(body)
    assert served.sample("http_server_active_requests", http_request_method="GET") == 0.0
    assert served.sample("pyobs_info", framework=served.framework.info) == 1.0


def test_unmatched_requests_share_one_label(served: Served) -> None:
    """A path no route matches is counted as <unmatched>, so scanners cannot blow up the series."""
    status, _, _ = served.get("/no/such/page/42")
    assert status == 404
    assert served.wait_for(
        lambda: served.sample(f"{DURATION}_count", http_route="<unmatched>",
                              http_response_status_code="404") == 1.0
    )  # fmt: skip
    (span,) = _server_spans(served, "/no/such/page/42")
    assert span.name == "GET"
    assert "http.route" not in span.attributes


def test_not_found_from_a_handler_is_an_answer_not_an_error(served: Served) -> None:
    """A 404 raised the framework's own way keeps its status, route, and counts no exception."""
    status, _, _ = served.get("/items/0")
    assert status == 404
    route = served.framework.item_route
    assert served.wait_for(
        lambda: served.sample(f"{DURATION}_count", http_route=route,
                              http_response_status_code="404") == 1.0
    )  # fmt: skip
    assert served.sample(f"{DURATION}_count", http_response_status_code="500") is None
    assert served.sample("pyobs_http_server_exceptions_total") is None
    (line,) = served.access_logs("/items/0")
    assert line["log.level"] == "warning"
    assert "error.type" not in line
    (span,) = _server_spans(served, "/items/0")
    assert span.status.status_code is not StatusCode.ERROR


def test_exception_is_a_500_everywhere(served: Served) -> None:
    """An exception in a handler is a 500 in metrics, an ERROR span and an error access log."""
    status, _, _ = served.get("/boom")
    assert status == 500
    assert served.wait_for(
        lambda: served.sample(f"{DURATION}_count", http_route="/boom",
                              http_response_status_code="500") == 1.0
    )  # fmt: skip
    assert (
        served.sample(
            "pyobs_http_server_exceptions_total", http_route="/boom", error_type="RuntimeError"
        )
        == 1.0
    )
    (span,) = _server_spans(served, "/boom")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert any(e.name == "exception" for e in span.events)
    (line,) = served.access_logs("/boom")
    assert line["log.level"] == "error"
    assert line["error.type"] == "RuntimeError"
    assert line["http.response.status_code"] == 500


def test_incoming_trace_is_continued(served: Served) -> None:
    """A W3C traceparent from the caller makes the server span a child in the same trace."""
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    status, _, _ = served.get("/items/4", {"traceparent": traceparent})
    assert status == 200
    assert served.wait_for(lambda: len(_server_spans(served, "/items/4")) == 1)
    (span,) = _server_spans(served, "/items/4")
    route = served.framework.item_route
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.name == f"GET {route}"
    assert span.attributes["http.route"] == route
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.request.method"] == "GET"


def test_logs_carry_the_request_context(served: Served) -> None:
    """App logs and the access log share trace.id, span.id and the echoed X-Request-ID."""
    status, headers, body = served.get("/items/5", {"X-Request-ID": "req-contract-5"})
    assert status == 200
    assert headers.get("x-request-id") == "req-contract-5"
    assert served.wait_for(lambda: len(served.access_logs("/items/5")) == 1)
    (access,) = served.access_logs("/items/5")
    (app_line,) = [r for r in served.logs if r["message"] == "item fetched"]
    assert set(access) >= ACCESS_FIELDS
    assert access["http.request.id"] == "req-contract-5"
    assert app_line["http.request.id"] == "req-contract-5"
    assert app_line["trace.id"] == access["trace.id"]
    assert app_line["span.id"] == access["span.id"]
    assert access["log.level"] == "info"
    assert access["http.route"] == served.framework.item_route
    assert access["http.response.status_code"] == 200
    assert access["http.response.body.bytes"] == len(body)
    assert access["client.ip"] == "127.0.0.1"
    assert access["user_agent.original"] == "contract-suite/1"
    assert isinstance(access["event.duration"], int)
    assert access["event.duration"] > 0


def test_secrets_are_redacted(served: Served) -> None:
    """Sensitive query parameters never reach the logs or the span, whatever the framework."""
    status, _, _ = served.get(
        "/items/6?token=s3cr3t-value&page=2", {"Authorization": "Bearer s3cr3t-value"}
    )
    assert status == 200
    assert served.wait_for(lambda: len(served.access_logs("/items/6")) == 1)
    (access,) = served.access_logs("/items/6")
    assert access["url.query"] == "token=[REDACTED]&page=2"
    (span,) = _server_spans(served, "/items/6")
    assert span.attributes["url.query"] == "token=[REDACTED]&page=2"
    # The servers' own request logs are theirs; pyobs's records and the app's must be clean.
    ours = [r for r in served.logs if r["log.logger"].startswith(("pyobs", "shop"))]
    assert "s3cr3t" not in repr(ours)
    assert "s3cr3t" not in repr(dict(span.attributes))


def test_excluded_paths_leave_no_trace(served: Served) -> None:
    """Health checks, /metrics and PYOBS_EXCLUDED_PATHS produce no metrics, spans or logs."""
    for path in ("/health", "/items/99"):
        status, _, _ = served.get(path)
        assert status == 200, path
    served.metrics()
    route = served.framework.item_route
    assert served.sample(f"{DURATION}_count", http_route=route) is None
    assert served.sample(f"{DURATION}_count", http_route="/health") is None
    assert served.spans.get_finished_spans() == ()
    assert served.access_logs() == []


def test_streaming_duration_runs_to_the_last_byte(served: Served) -> None:
    """A streamed body is counted in full and its duration covers every chunk."""
    status, _, body = served.get("/stream")
    assert status == 200
    assert body == b"".join(CHUNKS)
    assert served.wait_for(lambda: served.sample(f"{DURATION}_count", http_route="/stream") == 1.0)
    duration = served.sample(f"{DURATION}_sum", http_route="/stream")
    assert duration is not None
    assert duration >= len(CHUNKS) * CHUNK_DELAY * 0.9
    size = served.sample("http_server_response_body_size_bytes_sum", http_route="/stream")
    assert size is not None
    assert size >= len(body)


def test_a_line_logged_while_the_body_streams_is_correlated(served: Served) -> None:
    """The app logs while its streamed body is made, after its view returned (for WSGI apps,
    while the server iterates the body): the line carries the request's id and the ids of
    its span, like a line the view logs."""
    status, headers, _ = served.get("/stream", {"X-Request-ID": "stream-7"})
    assert status == 200
    assert headers.get("x-request-id") == "stream-7"
    assert served.wait_for(lambda: len(served.access_logs("/stream")) == 1)
    (access,) = served.access_logs("/stream")
    (line,) = [r for r in served.logs if r["message"] == "chunk streamed"]
    assert line["http.request.id"] == "stream-7"
    assert (line.get("trace.id"), line.get("span.id")) == (access["trace.id"], access["span.id"])
    (span,) = _server_spans(served, "/stream")
    assert line["trace.id"] == format(span.context.trace_id, "032x")


def test_slow_request_is_timed(served: Served) -> None:
    """A slow handler's duration lands in the right histogram bucket."""
    status, _, _ = served.get("/slow")
    assert status == 200
    assert served.wait_for(lambda: served.sample(f"{DURATION}_count", http_route="/slow") == 1)
    assert served.sample(f"{DURATION}_bucket", http_route="/slow", le="0.1") == 0.0
    assert served.sample(f"{DURATION}_bucket", http_route="/slow", le="0.5") == 1.0
    # asyncio may wake a sleep up to its clock resolution early; a millisecond covers that.
    assert (served.sample(f"{DURATION}_sum", http_route="/slow") or 0.0) >= SLOW - 0.001


def test_websocket_connection_is_observed(served_ws: Served) -> None:
    """A WebSocket connection gives the websocket metrics, one span and connect/disconnect logs."""
    import_or_require("websockets")
    from websockets.sync.client import connect

    served = served_ws
    with connect(served.url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
        for text in ("one", "two"):
            ws.send(text)
            assert ws.recv(timeout=10) == text
    assert served.wait_for(
        lambda: served.sample("pyobs_websocket_connection_duration_seconds_count",
                              http_route="/ws") == 1.0
    )  # fmt: skip
    assert served.sample("pyobs_websocket_active_connections", http_route="/ws") == 0.0
    for direction in ("received", "sent"):
        assert (
            served.sample("pyobs_websocket_messages_total", http_route="/ws", direction=direction)
            == 2.0
        ), direction
    actions = [r.get("event.action") for r in served.access_logs("/ws")]
    assert actions == ["websocket-connect", "websocket-disconnect"]
    assert all(r["http.route"] == "/ws" for r in served.access_logs("/ws"))
    spans = [s for s in served.spans.get_finished_spans() if s.name == "WEBSOCKET /ws"]
    assert len(spans) == 1
    assert spans[0].kind is SpanKind.SERVER
