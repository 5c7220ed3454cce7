"""pyobs beside OpenTelemetry's own instrumentations (docs/interop.md).

Client and database instrumentations (httpx, requests, SQLAlchemy on sqlite, redis against a
real redis-server) nest their spans under pyobs's SERVER span and the logs carry the trace
id; with OTel's framework instrumentation also active there is one SERVER span per request
in either order of instrumenting, and OTel's Prometheus exporter never makes the metrics
page show a family twice (promtool checks the page).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import start_redis
from tests.conftest import import_or_require, require_service

ROOT = Path(__file__).resolve().parents[1]


class Downstream:
    """A loopback HTTP server that records the traceparent of every request it gets."""

    def __init__(self) -> None:
        self.traceparents: list[str | None] = []
        seen = self.traceparents

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("traceparent"))
                body = b"downstream"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped after the test."""
    import_or_require("redis")
    with start_redis(tmp_path) as url:
        yield url


def test_client_and_database_spans_nest_under_the_server_span(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """httpx, requests, SQLAlchemy and redis spans are children of pyobs's SERVER span, the
    outgoing HTTP calls carry its trace, and the log lines (the app's and SQLAlchemy's
    own) carry its trace id."""
    import_or_require("flask")
    httpx: Any = import_or_require("httpx")
    requests: Any = import_or_require("requests")
    sqlalchemy: Any = import_or_require("sqlalchemy")
    redis: Any = import_or_require("redis")
    import_or_require("opentelemetry.instrumentation.httpx")
    import_or_require("opentelemetry.instrumentation.requests")
    import_or_require("opentelemetry.instrumentation.sqlalchemy")
    import_or_require("opentelemetry.instrumentation.redis")
    from flask import Flask
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.trace import SpanKind

    import pyobs.flask
    from pyobs.testing import span_exporter
    from tests.core_apps import json_lines

    downstream = Downstream()
    log = logging.getLogger("shop")
    levels = {name: logging.getLogger(name).level for name in ("httpx", "sqlalchemy.engine")}
    pyobs.setup(service_name="shop")
    # SQL statements as INFO records through logging (echo=True would add its own handler).
    engine = sqlalchemy.create_engine("sqlite://")
    cache = redis.Redis.from_url(redis_url)
    HTTPXClientInstrumentor().instrument()
    RequestsInstrumentor().instrument()
    SQLAlchemyInstrumentor().instrument(engine=engine)
    RedisInstrumentor().instrument()
    try:
        logging.getLogger("httpx").setLevel(logging.INFO)
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
        app = Flask("shop")

        @app.get("/checkout/<int:order>")
        def checkout(order: int) -> str:
            log.info("checkout started")
            httpx.get(f"{downstream.url}/prices")
            requests.get(f"{downstream.url}/stock", timeout=5)
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("select 1"))
            cache.set("order", order)
            cache.get("order")
            log.info("checkout done")
            return "ok"

        pyobs.flask.instrument(app)
        exporter = span_exporter()
        exporter.clear()
        capsys.readouterr()
        assert app.test_client().get("/checkout/7", buffered=True).status_code == 200
        out = capsys.readouterr().out
    finally:
        HTTPXClientInstrumentor().uninstrument()
        RequestsInstrumentor().uninstrument()
        SQLAlchemyInstrumentor().uninstrument()
        RedisInstrumentor().uninstrument()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        cache.close()
        downstream.close()

    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "GET /checkout/<int:order>"
    trace_id = server.context.trace_id
    by_library: dict[str, list[Any]] = {}
    for span in spans:
        if span is server:
            continue
        assert span.context.trace_id == trace_id, span.name
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        by_library.setdefault(span.instrumentation_scope.name.rsplit(".", 1)[-1], []).append(span)
    assert sorted(by_library) == ["httpx", "redis", "requests", "sqlalchemy"]
    assert len(by_library["redis"]) == 2
    assert all(s.kind is SpanKind.CLIENT for group in by_library.values() for s in group)
    hex_trace = format(trace_id, "032x")
    assert [tp.split("-")[1] if tp else None for tp in downstream.traceparents] == [
        hex_trace,
        hex_trace,
    ]
    lines = json_lines(out)
    ours = [r for r in lines if r["log.logger"] == "shop"]
    assert [r["message"] for r in ours] == ["checkout started", "checkout done"]
    assert {r["trace.id"] for r in ours} == {hex_trace}
    sql = [r for r in lines if r["log.logger"].startswith("sqlalchemy.engine")]
    assert any("select 1" in r["message"] for r in sql)
    assert sql and {r["trace.id"] for r in sql} == {hex_trace}
    httpx_lines = [r for r in lines if r["log.logger"] == "httpx"]
    assert httpx_lines and {r["trace.id"] for r in httpx_lines} == {hex_trace}


def _fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
@pytest.mark.parametrize("order", ["pyobs-first", "otel-first"])
def test_one_server_span_with_otels_framework_instrumentation(
    framework: str, order: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With opentelemetry-instrumentation-flask/-fastapi also active, in either order of
    instrumenting, each request has exactly one SERVER span, with the route and status,
    and the access log line carries its trace id."""
    import_or_require(framework)
    import_or_require(f"opentelemetry.instrumentation.{framework}")
    from opentelemetry.trace import SpanKind

    import pyobs
    from pyobs.testing import span_exporter
    from tests.core_apps import Client, json_lines

    pyobs.setup()
    app: Any
    otel: Any  # OpenTelemetry's instrumentor class for the framework
    if framework == "flask":
        from flask import Flask
        from opentelemetry.instrumentation.flask import FlaskInstrumentor as otel

        app = Flask("both")
        app.get("/items/<int:item_id>")(lambda item_id: {"item_id": item_id})
        route = "/items/<int:item_id>"
    else:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor as otel

        app = _fastapi_app()
        route = "/items/{item_id}"
    ours: Any = importlib.import_module(f"pyobs.{framework}").instrument
    steps: list[Any] = [ours, otel.instrument_app]
    if order == "otel-first":
        steps.reverse()
    try:
        for step in steps:
            step(app)
        client = Client(framework, app)
        exporter = span_exporter()
        exporter.clear()
        capsys.readouterr()
        for i in (1, 2):
            assert client.get(f"/items/{i}").status == 200
        out = capsys.readouterr().out
    finally:
        otel.uninstrument_app(app)
    servers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 2, [(s.name, s.instrumentation_scope.name) for s in servers]
    assert len({s.context.trace_id for s in servers}) == 2
    for span in servers:
        assert span.attributes is not None
        assert span.attributes["http.route"] == route
        # pyobs's stable name, or contrib's older one when contrib's span ends first.
        status = span.attributes.get("http.response.status_code")
        assert (status or span.attributes.get("http.status_code")) == 200
    access = [r for r in json_lines(out) if r["log.logger"] == "pyobs.access"]
    assert {r["trace.id"] for r in access} == {format(s.context.trace_id, "032x") for s in servers}


# A FastAPI app with OTel's FastAPI instrumentation and OTel's Prometheus exporter on the
# default registry, instrumented by pyobs too; prints the metrics page after three requests.
PROMETHEUS_APP = textwrap.dedent(
    """
    import io, json, sys, logging
    from fastapi import FastAPI
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import DropAggregation, View
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from starlette.testclient import TestClient
    import pyobs.fastapi

    views = []
    if sys.argv[1] == "view":  # the fix docs/interop.md gives
        views = [View(instrument_name="http.server.*", aggregation=DropAggregation())]
    metrics.set_meter_provider(
        MeterProvider(metric_readers=[PrometheusMetricReader()], views=views))
    app = FastAPI()
    app.get("/items/{item_id}")(lambda item_id: {"item_id": item_id})
    out = io.StringIO(); real = sys.stdout; sys.stdout = out
    FastAPIInstrumentor.instrument_app(app)
    pyobs.fastapi.instrument(app)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = TestClient(app)
    for i in range(3):
        client.get(f"/items/{i}")
    page = client.get("/metrics").text
    client.get("/metrics")  # a second scrape: no second warning
    sys.stdout = real
    logs = [json.loads(l) for l in out.getvalue().splitlines() if l.startswith("{")]
    print(json.dumps({"page": page, "logs": logs}))
    """
)


def _promtool(page: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    require_service(binary is not None, "promtool missing (scripts/setup.d/10-prometheus.sh)")
    assert binary is not None
    return subprocess.run(
        [binary, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
    )


def _run_prometheus_app(mode: str, semconv: str | None) -> dict[str, Any]:
    import_or_require("fastapi")
    import_or_require("opentelemetry.exporter.prometheus")
    import_or_require("opentelemetry.instrumentation.fastapi")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    if semconv:
        env["OTEL_SEMCONV_STABILITY_OPT_IN"] = semconv
    result = subprocess.run(
        [sys.executable, "-c", PROMETHEUS_APP, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def _families(page: str) -> list[str]:
    return [line.split()[2] for line in page.splitlines() if line.startswith("# TYPE ")]


@pytest.mark.parametrize("semconv", ["http", None])
def test_otel_prometheus_exporter_never_doubles_a_family(semconv: str | None) -> None:
    """OTel's Prometheus exporter on the same registry: every family appears once, pyobs's
    counts are not doubled, promtool finds no duplicate, and pyobs warns once naming the
    fix. With the stable HTTP conventions the page passes promtool outright; with the old
    ones promtool's only complaint is OTel's own millisecond unit."""
    data = _run_prometheus_app("plain", semconv)
    page = data["page"]
    families = _families(page)
    assert len(families) == len(set(families)), families
    assert families.count("http_server_active_requests") == 1
    assert "target_info" in families  # OTel's own, non-clashing families stay
    counts = [
        line
        for line in page.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{")
    ]
    assert [line.rsplit(" ", 1)[1] for line in counts] == ["3.0"]  # three requests, once each
    checked = _promtool(page)
    if semconv == "http":
        assert checked.returncode == 0, checked.stdout + checked.stderr
    else:
        problems = (checked.stdout + checked.stderr).strip().splitlines()
        assert problems and all(p.startswith("http_server_duration_milliseconds") for p in problems)
    warnings = [r for r in data["logs"] if r["log.level"] == "warning"]
    assert len(warnings) == 1, warnings
    message = warnings[0]["message"]
    assert "http_server_active_requests" in message
    assert 'View(instrument_name="http.server.*", aggregation=DropAggregation())' in message


def test_the_documented_view_keeps_otels_http_server_metrics_out() -> None:
    """The fix docs/interop.md gives (a View dropping http.server.*): no warning, and the
    page passes promtool with the old HTTP conventions too."""
    data = _run_prometheus_app("view", None)
    assert [r for r in data["logs"] if r["log.level"] == "warning"] == []
    checked = _promtool(data["page"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "http_server_duration_milliseconds" not in data["page"]


def test_async_client_spans_nest_under_the_server_span_in_fastapi() -> None:
    """In an async FastAPI endpoint, httpx.AsyncClient calls nest under pyobs's SERVER span
    and carry its trace downstream."""
    import_or_require("fastapi")
    httpx: Any = import_or_require("httpx")
    import_or_require("opentelemetry.instrumentation.httpx")
    from fastapi import FastAPI
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.trace import SpanKind

    import pyobs.fastapi
    from pyobs.testing import span_exporter
    from tests.core_apps import Client

    downstream = Downstream()
    app = FastAPI()

    @app.get("/quote/{item_id}")
    async def quote(item_id: int) -> dict[str, int]:
        async with httpx.AsyncClient() as client:
            await client.get(f"{downstream.url}/price/{item_id}")
            await client.get(f"{downstream.url}/tax/{item_id}")
        return {"item_id": item_id}

    pyobs.fastapi.instrument(app)
    instrumentor: Any = HTTPXClientInstrumentor()
    try:
        test_client = Client("fastapi", app)  # its own httpx client is created before instrument
        instrumentor.instrument()
        exporter = span_exporter()
        exporter.clear()
        assert test_client.get("/quote/3").status == 200
    finally:
        instrumentor.uninstrument()
        downstream.close()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    for span in clients:
        assert span.parent is not None and span.parent.span_id == server.context.span_id
    hex_trace = format(server.context.trace_id, "032x")
    assert [tp.split("-")[1] if tp else None for tp in downstream.traceparents] == [
        hex_trace,
        hex_trace,
    ]
