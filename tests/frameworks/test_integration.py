"""The integration layer every adapter shares: same behaviour on every framework."""

from __future__ import annotations

import ast
import http.client
import importlib
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from tests.conftest import import_or_require
from tests.frameworks.conftest import FRAMEWORKS, Framework, Served, by_name, serving

ROOT = Path(__file__).resolve().parents[2]
DURATION = "http_server_request_duration_seconds"
ADAPTERS = [
    "flask", "flask_restful", "django", "fastapi", "starlette", "tornado", "falcon", "sanic",
    "pyramid", "aiohttp", "_websocket", "_integration",
]  # fmt: skip


def _scrape(name: str, **labels: str) -> float | None:
    """A sample from pyobs's registry, read in-process (the metrics path is the app's here)."""
    from prometheus_client import REGISTRY

    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
def test_an_app_route_at_the_metrics_path_is_left_alone(
    framework: Framework, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the app serves the metrics path itself, its handler answers and pyobs warns once."""
    # Every tiny app serves /health ("ok"): make it pyobs's metrics path.
    monkeypatch.setenv("PYOBS_METRICS_PATH", "/health")
    with caplog.at_level(logging.WARNING, logger="pyobs"), serving(framework, monkeypatch) as s:
        for _ in range(2):
            status, _, body = s.get("/health")
            assert status == 200
            assert body.strip().strip(b'"') == b"ok"
        assert s.get("/items/1")[0] == 200
        assert s.wait_for(
            lambda: _scrape(f"{DURATION}_count", http_route=framework.item_route) == 1.0
        )
    warnings = [r.getMessage() for r in caplog.records if "serves /health itself" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "PYOBS_METRICS_PATH" in warnings[0]
    assert "PYOBS_METRICS_PORT" in warnings[0]


# Pyramid builds no error page: an exception leaves the app and the WSGI server answers.
ERROR_PAGES = [f for f in FRAMEWORKS if f.name != "pyramid"]


@pytest.mark.parametrize("framework", ERROR_PAGES, ids=[f.name for f in ERROR_PAGES])
def test_the_frameworks_own_500_page_is_observed_in_full(
    framework: Framework, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 500 the framework renders for an exception has X-Request-ID and its true size."""
    with serving(framework, monkeypatch) as s:
        status, headers, body = s.get("/boom", {"X-Request-ID": "boom-1"})
        assert status == 500
        assert headers.get("x-request-id") == "boom-1"
        assert body
        assert s.wait_for(lambda: len(s.access_logs("/boom")) == 1)
        (line,) = s.access_logs("/boom")
        assert line["http.response.body.bytes"] == len(body)
        assert line["http.request.id"] == "boom-1"
        assert line["error.type"] == "RuntimeError"
        size = s.sample("http_server_response_body_size_bytes_sum", http_route="/boom")
        assert size == len(body)


def _raw_get(served: Served, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    parsed = urllib.parse.urlsplit(served.url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade"}


@pytest.mark.parametrize("name", ["aiohttp", "sanic", "tornado"])
def test_an_upgrade_answered_with_plain_http_is_an_http_request(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``Upgrade: websocket`` request to a plain HTTP route is observed like any request."""
    framework = by_name(name)
    with serving(framework, monkeypatch) as s:
        status, headers = _raw_get(s, "/items/2", {**UPGRADE, "X-Request-ID": "up-2"})
        assert status == 200
        assert headers.get("x-request-id") == "up-2"
        assert s.wait_for(lambda: len(s.access_logs("/items/2")) == 1)
        (line,) = s.access_logs("/items/2")
        assert line["http.route"] == framework.item_route
        assert line["http.request.id"] == "up-2"
        assert s.sample(f"{DURATION}_count", http_route=framework.item_route) == 1.0
        assert s.sample("pyobs_websocket_connection_duration_seconds_count") is None
        spans = [x for x in s.spans.get_finished_spans() if x.attributes["url.path"] == "/items/2"]
        assert [x.name for x in spans] == [f"GET {framework.item_route}"]
        assert spans[0].attributes["http.response.status_code"] == 200
        assert s.sample("http_server_active_requests", http_request_method="GET") == 0.0


def test_aiohttp_refused_handshake_keeps_its_real_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """A WebSocket handshake the app refuses is recorded with the status sent, not 403."""
    with serving(by_name("aiohttp"), monkeypatch) as s:
        status, headers = _raw_get(s, "/ws", UPGRADE)  # no Sec-WebSocket-Key: aiohttp says 400
        assert status == 400
        assert headers.get("x-request-id")
        assert s.wait_for(lambda: len(s.access_logs("/ws")) == 1)
        assert s.access_logs("/ws")[0]["http.response.status_code"] == 400
        (span,) = [x for x in s.spans.get_finished_spans() if x.attributes["url.path"] == "/ws"]
        assert span.attributes["http.response.status_code"] == 400
        assert s.sample("http_server_active_requests", http_request_method="GET") == 0.0


TWICE = [f for f in FRAMEWORKS if f.name not in ("django", "django-asgi", "drf", "pyramid")]


@pytest.mark.parametrize("framework", TWICE, ids=[f.name for f in TWICE])
def test_instrumenting_twice_records_once(
    framework: Framework, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second instrument() changes nothing: each request is recorded once."""
    module = importlib.import_module(f"pyobs.{framework.info.replace('-', '_')}")

    def twice() -> Any:
        app = framework.build()
        if framework.info == "flask-restful":
            return module.instrument(app) and app
        return module.instrument(app)

    double = Framework(framework.name, framework.modules, twice, framework.serve,
                       framework.item_route, framework.info)  # fmt: skip
    with serving(double, monkeypatch) as s:
        assert s.get("/items/1")[0] == 200
        assert s.wait_for(lambda: len(s.access_logs("/items/1")) >= 1)
        assert len(s.access_logs("/items/1")) == 1
        assert s.sample(f"{DURATION}_count", http_route=framework.item_route) == 1.0


def test_a_framework_older_than_supported_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """instrument() on a too-old framework raises an error naming the version needed and found."""
    flask: Any = import_or_require("flask")
    from importlib import metadata

    from pyobs import _integration
    from pyobs import flask as pyobs_flask

    real = metadata.version

    def old(name: str) -> str:
        return "2.2.5" if name == "flask" else real(name)

    monkeypatch.setattr(metadata, "version", old)
    app = flask.Flask("old")
    needed = r"flask >= 2\.3, found 2\.2\.5"
    with pytest.raises(_integration.UnsupportedFrameworkVersion, match=needed):
        pyobs_flask.instrument(app)
    assert not hasattr(app.wsgi_app, "observer")


def test_development_versions_count_as_their_release() -> None:
    """A main branch (3.2.0.dev) passes the check for 2.3; 0.3.9 does not pass 0.3.10."""
    from pyobs._integration import release

    assert release("3.2.0.dev") >= release("2.3")
    assert release("2.3.0rc1") >= release("2.3")
    assert release("0.3.9") < release("0.3.10")
    assert release("23.12.1") >= release("23.12")


def test_minimum_versions_match_the_extras() -> None:
    """The version check uses the same lower bounds as pyproject.toml's framework extras (the
    lowest one where a newer Python needs a newer release: ``falcon>=4.0; python_version...``)."""
    from pyobs._integration import MINIMUM_VERSIONS, release

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for framework, (distribution, minimum) in MINIMUM_VERSIONS.items():
        bounds = [
            spec.split(">=", 1)[1].split(",")[0]
            for spec in extras[framework]
            if spec.lower().startswith(distribution + ">=")
        ]
        assert bounds, (framework, extras[framework])
        assert min(bounds, key=release) == minimum, (framework, extras[framework])


def _private_names_pyobs_defines() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "pyobs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, (ast.Name, ast.arg)):
                names.add(node.id if isinstance(node, ast.Name) else node.arg)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.alias) and node.name.startswith("_"):
                names.add(node.asname or node.name)
            elif (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and str(node.value.value).startswith("_pyobs")
            ):
                names.add(str(node.value.value))  # MARK = "_pyobs_instrumented"
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_adapters_use_no_private_name_of_another_library() -> None:
    """Adapters reach other libraries only through public names; pyobs._internals holds the rest."""
    own = _private_names_pyobs_defines()
    found: list[str] = []
    for name in ADAPTERS:
        path = ROOT / "pyobs" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("pyobs"):
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_")]  # fmt: skip
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                if not node.attr.startswith("__") and node.attr not in own:
                    found.append(f"{name}: .{node.attr} (line {node.lineno})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                private = value.startswith("_") and not value.startswith("__")
                if private and value.isidentifier() and value not in own:
                    found.append(f"{name}: {value!r} (line {node.lineno})")
    assert found == []


def test_the_private_name_check_catches_a_private_name() -> None:
    """The check above is not blind: Falcon's private handler table is not a pyobs name."""
    own = _private_names_pyobs_defines()
    assert "_error_handlers" not in own
    assert "_cv_request" not in own
    assert "_resource_closers" not in own
    assert "_telemetry" not in own


def _native_fastapi_telemetry() -> bool:
    import inspect

    fastapi: Any = import_or_require("fastapi")
    return "telemetry" in inspect.signature(fastapi.FastAPI.__init__).parameters


def test_the_framework_shortcuts_are_on_where_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the tested versions the gated Falcon and FastAPI shortcuts pass their check."""
    import_or_require("falcon")
    from pyobs import _internals
    from tests.frameworks import apps

    _internals.recheck()
    apps.falcon_app()
    shortcuts = [_internals.FALCON_ERROR_HANDLER]
    if _native_fastapi_telemetry():  # older FastAPI has no native span to turn off
        apps.fastapi_app()
        shortcuts.append(_internals.FASTAPI_TRACING)
    for shortcut in shortcuts:
        assert shortcut.enabled is True, (shortcut.name, shortcut.reason)


def test_falcon_without_its_shortcut_still_records_the_500(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the Falcon shortcut off, a handler's exception is still a 500 with X-Request-ID."""
    from pyobs import _internals

    monkeypatch.setattr(_internals.FALCON_ERROR_HANDLER, "enabled", False)
    with serving(by_name("falcon"), monkeypatch) as s:
        status, headers, body = s.get("/boom")
        assert status == 500
        assert headers.get("x-request-id")
        assert s.wait_for(lambda: len(s.access_logs("/boom")) == 1)
        assert s.access_logs("/boom")[0]["http.response.body.bytes"] == len(body)
        assert s.sample(f"{DURATION}_count", http_route="/boom",
                        http_response_status_code="500") == 1.0  # fmt: skip
        (span,) = [x for x in s.spans.get_finished_spans() if x.attributes["url.path"] == "/boom"]
        assert span.attributes["error.type"] == "500"


def _fastapi_server_span(monkeypatch: pytest.MonkeyPatch, path: str) -> tuple[Any, Any]:
    """(the one SERVER span, the access log line) of one request to the FastAPI app."""
    from opentelemetry.trace import SpanKind

    def server_spans(s: Served) -> list[Any]:
        return [x for x in s.spans.get_finished_spans() if x.kind is SpanKind.SERVER]

    with serving(by_name("fastapi"), monkeypatch) as s:
        status, _, _ = s.get(path, {"User-Agent": "probe/1", "Authorization": "Bearer s3cr3t"})
        assert status == 200
        url_path = path.partition("?")[0]
        assert s.wait_for(lambda: len(s.access_logs(url_path)) == 1)
        assert s.wait_for(lambda: len(server_spans(s)) == 1)
        (span,) = server_spans(s)
        return span, s.access_logs(url_path)[0]


def test_fastapi_without_its_shortcut_keeps_one_server_span(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the FastAPI shortcut off, pyobs warns and adopts FastAPI's span: one per request,
    redacted and bounded the pyobs way (FastAPI's own query redaction would keep the token),
    with the same request attributes as the span pyobs makes when the shortcut is on."""
    from pyobs import _internals

    if not _native_fastapi_telemetry():
        pytest.skip("this FastAPI has no native telemetry")
    path = "/items/3?token=s3cr3t-value&page=2"
    _internals.recheck()
    own, _ = _fastapi_server_span(monkeypatch, path)
    assert _internals.FASTAPI_TRACING.enabled is True
    assert own.instrumentation_scope.name != "fastapi"  # pyobs's own span
    monkeypatch.setattr(_internals.FASTAPI_TRACING, "enabled", False)
    with caplog.at_level(logging.WARNING, logger="pyobs"):
        span, line = _fastapi_server_span(monkeypatch, path)
    assert span.instrumentation_scope.name == "fastapi"  # FastAPI's native span, adopted
    assert format(span.context.trace_id, "032x") == line["trace.id"]
    assert span.attributes["http.route"] == "/items/{item_id}"
    assert span.attributes["url.query"] == "token=[REDACTED]&page=2"
    assert "s3cr3t" not in repr(dict(span.attributes))
    request_keys = ("http.request.method", "url.path", "url.query", "url.scheme",
                    "client.address", "user_agent.original")  # fmt: skip
    for key in (*request_keys, "network.protocol.version"):
        assert span.attributes.get(key) == own.attributes.get(key), key
    assert span.attributes["user_agent.original"] == "probe/1"
    assert any("telemetry={'tracing': False}" in r.getMessage() for r in caplog.records)


def test_an_adopted_span_keeps_the_request_going_when_redaction_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error while pyobs rewrites FastAPI's adopted span is counted; the request is served."""
    from prometheus_client import REGISTRY

    from pyobs import _integration, _internals

    if not _native_fastapi_telemetry():
        pytest.skip("this FastAPI has no native telemetry")

    def broken(observer: Any, handle: Any) -> Any:
        raise RuntimeError("attribute builder broke")

    monkeypatch.setattr(_internals.FASTAPI_TRACING, "enabled", False)
    monkeypatch.setattr(_integration, "request_attributes", broken)
    labels = {"component": "adapter"}
    before = REGISTRY.get_sample_value("pyobs_internal_errors_total", labels) or 0.0
    span, line = _fastapi_server_span(monkeypatch, "/items/4")
    assert line["http.response.status_code"] == 200
    assert span.attributes["http.route"] == "/items/{item_id}"
    after = REGISTRY.get_sample_value("pyobs_internal_errors_total", labels) or 0.0
    assert after == before + 1


def test_a_sanic_metrics_route_added_after_instrument_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Sanic app may add its own /metrics after instrument(): no RouteExists, its handler runs."""
    import_or_require("sanic")
    from sanic import response

    from tests.frameworks import apps

    def build() -> Any:
        app = apps.sanic_app()  # instrumented

        @app.get("/metrics")  # type: ignore[untyped-decorator]
        async def own(request: Any) -> Any:
            return response.text("the app's own metrics")

        return app

    sanic = by_name("sanic")
    late = Framework("sanic-late", sanic.modules, build, sanic.serve, sanic.item_route, "sanic")
    with serving(late, monkeypatch) as s:
        status, _, body = s.get("/metrics")
        assert (status, body) == (200, b"the app's own metrics")
        assert s.get("/items/1")[0] == 200


def test_tornado_refused_handshake_keeps_its_real_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tornado's refusal of a broken handshake is on the WebSocket span with the status sent."""
    with serving(by_name("tornado"), monkeypatch) as s:
        status, _ = _raw_get(s, "/ws", UPGRADE)  # no Sec-WebSocket-Key: Tornado refuses
        assert status in (400, 426)
        assert s.wait_for(lambda: any(x.name == "WEBSOCKET" for x in s.spans.get_finished_spans()))
        (span,) = [x for x in s.spans.get_finished_spans() if x.attributes["url.path"] == "/ws"]
        assert span.attributes["http.response.status_code"] == status
        assert s.sample("pyobs_websocket_active_connections", http_route="/ws") in (None, 0.0)


def test_pyramid_included_twice_records_once() -> None:
    """``config.include("pyobs.pyramid")`` twice adds one tween: each request is recorded once."""
    import_or_require("pyramid")
    webtest: Any = import_or_require("webtest")
    from pyramid.config import Configurator

    with Configurator() as config:
        config.include("pyobs.pyramid")
        config.include("pyobs.pyramid")
        config.add_route("item", "/items/{item_id}")
        config.add_view(lambda request: {"id": 1}, route_name="item", renderer="json")
        app = webtest.TestApp(config.make_wsgi_app())
    assert app.get("/items/1").status_int == 200
    labels = {"http_route": "/items/{item_id}", "http_response_status_code": "200"}
    assert _scrape(f"{DURATION}_count", **labels) == 1.0


def test_a_catch_all_route_does_not_hide_the_metrics_page() -> None:
    """Only a route at exactly the metrics path wins; a catch-all (an SPA fallback) does not."""
    flask: Any = import_or_require("flask")
    import_or_require("starlette")
    import_or_require("httpx")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    import pyobs.flask
    import pyobs.starlette

    app = flask.Flask("spa")
    app.add_url_rule("/<path:anything>", "spa", lambda anything: "index.html")
    pyobs.flask.instrument(app)
    with app.test_client() as client:
        assert client.get("/some/page").get_data() == b"index.html"
        assert b"http_server_active_requests" in client.get("/metrics").get_data()

    async def spa(request: Any) -> Any:
        return PlainTextResponse("index.html")

    star = pyobs.starlette.instrument(Starlette(routes=[Route("/{anything:path}", spa)]))
    with TestClient(star) as client:
        assert client.get("/some/page").text == "index.html"
        assert "http_server_active_requests" in client.get("/metrics").text


_PAUSE = 0.4  # the background task's sleep after a 503 (the duration must not include it)


def _pause() -> None:
    time.sleep(_PAUSE)


@pytest.mark.parametrize("served_before", [False, True], ids=["new app", "already serving"])
def test_starlette_5xx_keeps_its_exception_type_and_its_own_duration(served_before: bool) -> None:
    """Starlette renders an unhandled exception as a 500 and then re-raises it: pyobs records
    the request once the exception comes out, with its type, also for an app that already
    served before it was instrumented (pyobs once lost the type there), and without adding a
    middleware of its own to the app's stack. The duration (metric and span) still ends at the
    response's last byte: a background task that runs after a 503 is sent does not lengthen
    it."""
    import_or_require("starlette")
    import_or_require("httpx")
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    import pyobs.starlette
    from pyobs.testing import span_exporter

    async def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    async def unavailable(request: Any) -> Any:
        return PlainTextResponse("later", status_code=503, background=BackgroundTask(_pause))

    app = Starlette(routes=[Route("/boom", boom), Route("/unavailable", unavailable)])
    if served_before:
        with TestClient(app) as client:
            assert client.get("/unavailable").status_code == 503
    stack = list(app.user_middleware)
    pyobs.starlette.instrument(app)
    assert app.user_middleware == stack
    spans = span_exporter()
    with TestClient(app, raise_server_exceptions=False) as client:
        started = time.monotonic()
        answer = client.get("/unavailable")
        waited = time.monotonic() - started
        assert answer.status_code == 503
        assert client.get("/boom").status_code == 500
    assert waited >= _PAUSE  # the client saw the app end after its background task
    exceptions = _scrape(
        "pyobs_http_server_exceptions_total", http_route="/boom", error_type="RuntimeError"
    )
    assert exceptions == 1.0
    labels = {"http_route": "/unavailable", "http_response_status_code": "503"}
    assert _scrape(f"{DURATION}_count", **labels) == 1.0
    duration = _scrape(f"{DURATION}_sum", **labels)
    assert duration is not None and duration < _PAUSE / 2
    by_route = {span.attributes["http.route"]: span for span in spans.get_finished_spans()}
    assert by_route["/boom"].attributes["error.type"] == "RuntimeError"
    span = by_route["/unavailable"]
    assert (span.end_time - span.start_time) / 1e9 < _PAUSE / 2


def test_a_5xx_fully_sent_then_cancelled_is_recorded_as_sent() -> None:
    """A 5xx whose record waits for the app call to end (the framework re-raises what it
    rendered) is not turned into a client disconnect (499) or an exception when the app is
    cancelled after the whole response went out: it is recorded with the status sent."""
    import asyncio

    from pyobs.asgi import ObservabilityMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"later"})
        raise asyncio.CancelledError  # e.g. the server cancels a background task's wait

    middleware = ObservabilityMiddleware(app, framework="starlette")
    middleware.server_errors_reraised = True
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/later", "headers": [], "query_string": b""}
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(middleware(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert _scrape(f"{DURATION}_count", http_response_status_code="503") == 1.0
    assert _scrape(f"{DURATION}_count", http_response_status_code="499") is None
    assert _scrape("pyobs_http_server_exceptions_total", error_type="CancelledError") is None
