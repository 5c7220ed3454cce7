"""A streamed body is made with the request's ids current, and leaves nothing current behind.

The contract suite (tests/frameworks/test_contract.py) checks on every framework's server
that a line logged while the body streams carries the request's ids. These tests add what a
test client shows and a server does not: a body the client leaves unfinished (Werkzeug's
test client reads one chunk and stops until the test reads the rest) must not leave the
request's span or request id current for the test's next request; and where a span started
while the body is made gets its parent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.core_apps import json_lines


def _app() -> Any:
    from flask import Flask, Response

    import pyobs.flask

    app = Flask("stream-context")
    log = logging.getLogger("app")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(3):
                log.warning("chunk %d", i)
                yield b"chunk\n"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/plain")
    def plain() -> str:
        log.warning("plain")
        return "plain"

    @app.get("/breaks")
    def breaks() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"chunk\n"
            raise RuntimeError("the body broke")

        return Response(chunks(), mimetype="text/plain")

    pyobs.flask.instrument(app)
    return app


def test_an_unfinished_body_leaves_no_request_current(capsys: pytest.CaptureFixture[str]) -> None:
    """A body the test client leaves half-read leaves no request id or span current: the
    next request gets its own, and each body's lines carry their own request's ids."""
    import_or_require("flask")
    from opentelemetry import trace

    from pyobs import testing
    from pyobs.logs import request_id_var

    testing.reset()
    client = _app().test_client()
    spans = testing.span_exporter()
    capsys.readouterr()
    first = client.get("/stream", headers={"X-Request-ID": "first"})  # one chunk read
    assert request_id_var.get() is None
    assert trace.get_current_span() is trace.INVALID_SPAN
    second = client.get("/plain", headers={"X-Request-ID": "second"})
    assert second.get_data() == b"plain"
    assert first.get_data() == b"chunk\n" * 3
    first.close()
    second.close()
    lines = {r["message"]: r for r in json_lines(capsys.readouterr().out)}
    assert [lines[f"chunk {i}"]["http.request.id"] for i in range(3)] == ["first"] * 3
    assert lines["plain"]["http.request.id"] == "second"
    by_path = {s.attributes["url.path"]: s for s in spans.get_finished_spans()}
    assert set(by_path) == {"/stream", "/plain"}
    first_trace, second_trace = (by_path[p].context.trace_id for p in ("/stream", "/plain"))
    assert first_trace != second_trace  # the second request has its own span, not the first's
    assert by_path["/plain"].parent is None
    for i in range(3):
        assert lines[f"chunk {i}"]["trace.id"] == format(first_trace, "032x")
    assert lines["plain"]["trace.id"] == format(second_trace, "032x")


def test_a_span_started_while_django_streams_is_a_child_of_the_request() -> None:
    """Django's streamed bodies enter the request's OTel context again around each chunk.
    (pyobs.wsgi's bodies do not: there, such a span has no parent; docs/architecture.md.)"""
    import_or_require("django")
    from tests.frameworks.apps import django_app

    django_app()  # settings, and the plain app's URLconf (another test may have set DRF's)
    from django.test import Client
    from opentelemetry.trace import SpanKind

    from pyobs import testing

    testing.reset()
    client = Client()
    response = client.get("/stream-span")
    spans = testing.span_exporter()
    assert b"".join(response.streaming_content) == b"chunk\n"
    response.close()
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    (chunk,) = [s for s in spans.get_finished_spans() if s.name == "making a chunk"]
    assert chunk.parent is not None
    assert chunk.parent.span_id == server.context.span_id
    assert chunk.context.trace_id == server.context.trace_id


@pytest.mark.parametrize("outcome", ["read", "left unread", "broken", "not started"])
def test_no_body_stays_counted_as_open(outcome: str) -> None:
    """While a WSGI body is open a line logged outside any request walks the stack to look
    for it (logs.body_on_stack); however the body ends, it stops being counted as open, so
    such lines go back to costing nothing extra."""
    import_or_require("flask")
    from werkzeug.test import create_environ, run_wsgi_app

    from pyobs import logs, testing

    testing.reset()
    app = _app()
    assert logs.bodies_open == set()
    path = "/breaks" if outcome == "broken" else "/stream"
    returned, _status, _headers = run_wsgi_app(app.wsgi_app, create_environ(path))
    body = iter(returned)
    if outcome == "read":
        assert b"".join(body) == b"chunk\n" * 3
    elif outcome == "left unread":
        assert next(body) == b"chunk\n"
        assert len(logs.bodies_open) == 1  # open while the server holds it
    elif outcome == "broken":
        assert next(body) == b"chunk\n"
        with pytest.raises(RuntimeError, match="the body broke"):
            next(body)
    getattr(returned, "close", lambda: None)()
    assert logs.bodies_open == set()
