"""The core contract on Flask and FastAPI alike: metrics, spans, logs, safety."""

from __future__ import annotations

import base64
import logging
import random
import string
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.core_apps import (
    FACTORIES,
    STREAM_CHUNKS,
    STREAM_PAUSE,
    TEMPLATES,
    Client,
    json_lines,
    sample,
    series,
)

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{INCOMING_TRACE}-00f067aa0ba902b7-01"
DURATION = "http_server_request_duration_seconds"


@pytest.fixture(params=["flask", "fastapi"])
def framework(request: pytest.FixtureRequest) -> str:
    import_or_require(request.param)
    return str(request.param)


def make(framework: str, **options: Any) -> Client:
    import pyobs
    from pyobs.testing import span_exporter

    client = Client(framework, FACTORIES[framework](**options))
    if not pyobs.setup().disabled:
        span_exporter()  # attach before the first request
    return client


def access_lines(out: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(out) if r.get("log.logger") == "pyobs.access"]


def spans() -> list[Any]:
    from pyobs.testing import span_exporter

    return list(span_exporter().get_finished_spans())


def count(framework: str, route: str, status: str, method: str = "GET") -> float:
    value = sample(
        f"{DURATION}_count",
        http_request_method=method,
        http_route=route,
        http_response_status_code=status,
    )
    return value or 0.0


def test_route_template_labels(framework: str) -> None:
    """Parametrised routes are labelled with the framework's template, never the raw path."""
    client = make(framework)
    for item_id in (1, 2, 3):
        assert client.get(f"/items/{item_id}").status == 200
    assert count(framework, TEMPLATES[framework], "200") == 3
    routes = {dict(s).get("http_route") for s in series(DURATION)}
    assert not any(r and r.startswith("/items/") and r[7:].isdigit() for r in routes)


def test_random_unmatched_paths_add_no_series(framework: str) -> None:
    """1,000 random unknown paths land in one <unmatched> series instead of 1,000 new ones."""
    client = make(framework)
    client.get("/no/such/thing")
    before = series(DURATION)
    rng = random.Random(7)
    for _ in range(1000):
        junk = "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
        assert client.get(f"/{junk}/{rng.randint(0, 10**6)}").status == 404
    assert series(DURATION) == before
    assert count(framework, "<unmatched>", "404") == 1001


def test_exception_is_500_counted_and_logged(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception gives 500, bumps the exception counter and logs ERROR with a stack trace."""
    client = make(framework)
    reply = client.get("/boom")
    assert reply.status == 500
    assert count(framework, "/boom", "500") == 1
    assert (
        sample(
            "pyobs_http_server_exceptions_total",
            http_request_method="GET",
            http_route="/boom",
            error_type="RuntimeError",
        )
        == 1
    )
    records = json_lines(capsys.readouterr().out)
    errors = [r for r in records if r["log.level"] == "error" and "error.stack_trace" in r]
    assert errors, records
    assert any("boom from the app" in r["error.stack_trace"] for r in errors)
    access = [r for r in errors if r["log.logger"] == "pyobs.access"]
    assert access and access[0]["http.response.status_code"] == 500
    (span,) = [s for s in spans() if s.name == "GET /boom"]
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "RuntimeError"


def test_incoming_traceparent_is_continued(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request inside an upstream trace logs that trace id; app logs carry it too."""
    client = make(framework)
    client.get("/items/5", headers={"traceparent": TRACEPARENT})
    records = json_lines(capsys.readouterr().out)
    app_log = [r for r in records if r["log.logger"] == "app"]
    access = access_lines_from(records)
    assert access[0]["trace.id"] == INCOMING_TRACE
    assert app_log and app_log[0]["trace.id"] == INCOMING_TRACE
    assert app_log[0]["http.request.id"] == access[0]["http.request.id"]
    (span,) = spans()
    assert format(span.context.trace_id, "032x") == INCOMING_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.name == f"GET {TEMPLATES[framework]}"
    assert span.kind.name == "SERVER"


def access_lines_from(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("log.logger") == "pyobs.access"]


@pytest.mark.parametrize(
    "bad",
    ["garbage", "00-xyz-00f067aa0ba902b7-01", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", ""],
)
def test_malformed_traceparent_starts_fresh_trace(
    framework: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed traceparent is ignored silently: 200, a new valid trace id, no error logs."""
    client = make(framework)
    assert client.get("/items/1", headers={"traceparent": bad}).status == 200
    records = json_lines(capsys.readouterr().out)
    access = access_lines_from(records)
    assert len(access[0]["trace.id"]) == 32 and access[0]["trace.id"] != "0" * 32
    assert not [r for r in records if r["log.level"] == "error"]


def test_request_id_kept_generated_echoed(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A safe X-Request-ID is kept and echoed; a missing or unsafe one is replaced."""
    client = make(framework)
    kept = client.get("/items/1", headers={"X-Request-ID": "abc.DEF_123-x"})
    assert kept.headers["x-request-id"] == "abc.DEF_123-x"
    generated = client.get("/items/1")
    unsafe = client.get("/items/1", headers={"X-Request-ID": "bad id\twith spaces"})
    too_long = client.get("/items/1", headers={"X-Request-ID": "a" * 129})
    for reply in (generated, unsafe, too_long):
        rid = reply.headers["x-request-id"]
        assert len(rid) == 32 and all(c in string.hexdigits for c in rid)
    ids = [r["http.request.id"] for r in access_lines(capsys.readouterr().out)]
    assert ids[0] == "abc.DEF_123-x"
    assert ids[1:] == [r.headers["x-request-id"] for r in (generated, unsafe, too_long)]


def test_flask_keeps_the_request_class_and_labels_propagated_exceptions() -> None:
    """instrument() leaves a custom request_class in place; with PROPAGATE_EXCEPTIONS (debug,
    testing) the exception leaves the app, and the 500 still carries the matched rule."""
    import_or_require("flask")
    from flask import Flask, Request

    from pyobs import flask as pyobs_flask

    class AppRequest(Request):
        pass

    app = Flask("propagating")
    app.request_class = AppRequest
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/orders/<int:order_id>/fail")
    def fail(order_id: int) -> str:
        raise LookupError(order_id)

    pyobs_flask.instrument(app)
    assert app.request_class is AppRequest
    with pytest.raises(LookupError):
        app.test_client().get("/orders/3/fail")
    route = "/orders/<int:order_id>/fail"
    assert (
        sample(
            f"{DURATION}_count",
            http_request_method="GET",
            http_route=route,
            http_response_status_code="500",
        )
        == 1
    )
    assert (
        sample(
            "pyobs_http_server_exceptions_total",
            http_request_method="GET",
            http_route=route,
            error_type="LookupError",
        )
        == 1
    )


def test_flask_rule_without_the_request_in_the_environ() -> None:
    """A request class that does not put itself in the environ (``populate_request=False``)
    still gets its matched rule as the route label, read through Flask's request context."""
    import_or_require("flask")
    from flask import Flask, Request, request

    from pyobs import flask as pyobs_flask

    class Unlisted(Request):
        def __init__(self, environ: dict[str, object], **kwargs: object) -> None:
            super().__init__(environ, populate_request=False)

    app = Flask("unlisted")
    app.request_class = Unlisted

    listed: list[object] = []

    @app.get("/carts/<int:cart_id>")
    def cart(cart_id: int) -> str:
        listed.append(request.environ.get("werkzeug.request"))
        return str(cart_id)

    pyobs_flask.instrument(app)
    response = app.test_client().get("/carts/9")
    assert response.get_data() == b"9"
    response.close()  # the request is recorded when the server closes its body
    assert listed and not isinstance(listed[0], Unlisted)  # not this app's request object
    assert (
        sample(
            f"{DURATION}_count",
            http_request_method="GET",
            http_route="/carts/<int:cart_id>",
            http_response_status_code="200",
        )
        == 1
    )


def test_secrets_never_recorded(
    framework: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorization, Cookie and ?token= values appear in no log line and no span attribute."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    client = make(framework)
    secrets = ["Bearer s3cr3t-bearer", "session=c00kie-value", "t0ken-value", "k3y-value"]
    client.get(
        "/items/1?token=t0ken-value&page=2&api_key=k3y-value",
        headers={"Authorization": secrets[0], "Cookie": secrets[1], "X-Api-Key": "k3y-value"},
    )
    out = capsys.readouterr().out
    attributes = " ".join(str(dict(s.attributes)) for s in spans())
    for secret in ["s3cr3t-bearer", "c00kie-value", "t0ken-value", "k3y-value"]:
        assert secret not in out
        assert secret not in attributes
    (span,) = spans()
    assert span.attributes["url.query"] == "token=[REDACTED]&page=2&api_key=[REDACTED]"
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert access_lines(out)[0]["url.query"] == "token=[REDACTED]&page=2&api_key=[REDACTED]"


def test_excluded_and_health_paths_produce_nothing(
    framework: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Health checks, /metrics and PYOBS_EXCLUDED_PATHS make no metrics, spans or access logs."""
    monkeypatch.setenv("PYOBS_EXCLUDED_PATHS", "/internal/.*")
    client = make(framework)
    assert client.get("/health").status == 200
    assert client.get("/internal/ping").status == 200
    assert client.get("/metrics").status == 200
    assert access_lines(capsys.readouterr().out) == []
    assert spans() == []
    assert series(DURATION) == set()


def test_streaming_duration_includes_body(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A streamed response is timed to its last byte, not to its first."""
    client = make(framework)
    reply = client.get("/stream")
    assert reply.text.count("chunk") == STREAM_CHUNKS
    floor = STREAM_CHUNKS * STREAM_PAUSE * 0.9
    total = sample(
        f"{DURATION}_sum",
        http_request_method="GET",
        http_route="/stream",
        http_response_status_code="200",
    )
    assert total is not None and total >= floor
    (line,) = access_lines(capsys.readouterr().out)
    assert line["event.duration"] >= floor * 1e9
    assert line["http.response.body.bytes"] == len(reply.body)
    (span,) = spans()
    assert (span.end_time - span.start_time) >= floor * 1e9


def test_disabled_is_a_no_op(
    framework: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PYOBS_DISABLED=true: the app runs as if pyobs were not there."""
    monkeypatch.setenv("PYOBS_DISABLED", "true")
    client = make(framework)
    reply = client.get("/items/3")
    assert reply.status == 200
    assert "x-request-id" not in reply.headers
    assert client.get("/metrics").status == 404
    assert capsys.readouterr().out == ""
    assert series(DURATION) == set()
    assert not logging.getLogger().handlers or all(
        not getattr(h, "pyobs_handler", False) for h in logging.getLogger().handlers
    )


@pytest.mark.parametrize(
    ("auth", "header", "status"),
    [
        ("basic:scraper:pa55", "Basic " + base64.b64encode(b"scraper:wrong").decode(), 401),
        ("basic:scraper:pa55", None, 401),
        ("basic:scraper:pa55", "Basic " + base64.b64encode(b"scraper:pa55").decode(), 200),
        ("bearer:t0k", "Bearer nope", 401),
        ("bearer:t0k", "Bearer t0k", 200),
    ],
)
def test_metrics_auth(framework: str, auth: str, header: str | None, status: int) -> None:
    """/metrics behind PYOBS_METRICS_AUTH: a wrong or missing credential gets 401."""
    client = make(framework, metrics_auth=auth)
    reply = client.get("/metrics", headers={"Authorization": header} if header else {})
    assert reply.status == status
    if status == 401:
        assert "www-authenticate" in reply.headers
        assert b"http_server" not in reply.body
    else:
        assert b"pyobs_info" in reply.body


def test_openmetrics_exemplars_carry_trace_id(framework: str) -> None:
    """A scraper asking for OpenMetrics gets exemplars whose trace_id is the request's trace."""
    client = make(framework)
    client.get("/items/9", headers={"traceparent": TRACEPARENT})
    plain = client.get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert f'trace_id="{INCOMING_TRACE}"' in om.text
    assert om.text.rstrip().endswith("# EOF")


def test_nonstandard_method_is_other(framework: str) -> None:
    """Methods outside the standard set are labelled _OTHER."""
    client = make(framework)
    client.request("FOOBAR", "/items/1")
    labels = {dict(s).get("http_request_method") for s in series(DURATION)}
    assert labels == {"_OTHER"}


def test_cardinality_guard(framework: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Past PYOBS_MAX_ROUTES distinct routes, new routes become <overflow> and are counted."""
    client = make(framework, max_routes=2)
    client.get("/items/1")
    client.get("/boom")
    client.get("/stream")  # a third real route
    routes = {dict(s).get("http_route") for s in series(DURATION)}
    assert routes == {TEMPLATES[framework], "/boom", "<overflow>"}
    assert sample("pyobs_cardinality_overflow_total") == 1
    capsys.readouterr()


def test_internal_error_is_counted_logged_at_a_limited_rate_and_requests_go_on(
    framework: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside pyobs never reaches the request: served anyway, counted each time, one
    log line for three errors of a kind within the minute."""
    from pyobs.metrics import PyobsMetrics

    def broken(self: Any, route: str | None) -> str:
        raise ZeroDivisionError("simulated pyobs bug")

    client = make(framework)
    before = sample("pyobs_internal_errors_total", component="metrics") or 0
    monkeypatch.setattr(PyobsMetrics, "route_label", broken)
    replies = [client.get("/items/4") for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert all(r.body for r in replies)
    records = json_lines(capsys.readouterr().out)
    internal = [r for r in records if r["log.logger"] == "pyobs.internal"]
    assert len(internal) == 1
    assert internal[0]["error.type"] == "ZeroDivisionError"
    assert "simulated pyobs bug" in internal[0]["error.message"]
    assert sample("pyobs_internal_errors_total", component="metrics") == before + 3


def test_start_failure_still_serves(
    framework: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when observing cannot start, the app answers normally."""
    from pyobs._observer import RequestObserver

    def broken(self: Any, handle: Any) -> None:
        raise KeyError("span machinery broke")

    client = make(framework)
    monkeypatch.setattr(RequestObserver, "_start_span", broken)
    assert [client.get("/items/2").status for _ in range(2)] == [200, 200]
    internal = [
        r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.internal"
    ]
    assert len(internal) == 1


def test_access_log_fields_are_ecs(framework: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The access line has the contract's fields with ECS types (ints where ECS says long)."""
    client = make(framework, service_name="shop", service_version="1.2.3", environment="test")
    client.request("POST", "/items", headers={"User-Agent": "probe/1"}, body=b"{}")
    (line,) = access_lines(capsys.readouterr().out)
    assert line["log.level"] == "info"
    assert line["service.name"] == "shop"
    assert line["service.version"] == "1.2.3"
    assert line["service.environment"] == "test"
    assert line["ecs.version"].startswith("8.")
    assert line["@timestamp"].endswith("Z") and len(line["@timestamp"]) == 24
    assert line["http.request.method"] == "POST"
    assert line["url.path"] == "/items"
    assert line["http.route"] == "/items"
    assert line["http.response.status_code"] == 201
    assert isinstance(line["event.duration"], int) and line["event.duration"] > 0
    assert line["user_agent.original"] == "probe/1"
    assert isinstance(line["process.pid"], int)
    # The peer: client.ip when it is an IP address (Werkzeug's test client says 127.0.0.1),
    # else only client.address (Starlette's test client says "testclient"), never a bad ip.
    if framework == "flask":
        assert line["client.ip"] == "127.0.0.1"
    else:
        assert "client.ip" not in line
        assert line["client.address"] == "testclient"


def test_wsgi_server_facts_follow_each_request() -> None:
    """The server address, port and protocol version pyobs reads from a WSGI environ are each
    request's own (they are remembered per value, so a change must show), and odd values
    give what the span and access log expect: no port, version 1.1."""
    from pyobs.wsgi import facts_from_environ

    def facts(host: str, port: Any, protocol: Any) -> tuple[Any, ...]:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_HOST": host,
            "SERVER_PORT": port,
            "SERVER_PROTOCOL": protocol,
        }
        got = facts_from_environ(environ)
        return got.server_addr, got.server_port, got.http_version

    assert facts("a.example:8080", "8080", "HTTP/1.1") == ("a.example", 8080, "1.1")
    assert facts("b.example", "8080", "HTTP/1.1") == ("b.example", 8080, "1.1")
    assert facts("b.example", "443", "HTTP/2") == ("b.example", 443, "2")
    assert facts("b.example", "abc", "SPDY") == ("b.example", None, "1.1")
    assert facts("b.example", ["unhashable"], None) == ("b.example", None, "1.1")
    assert facts("", None, None) == (None, None, "1.1")
