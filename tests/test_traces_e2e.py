"""Traces end to end against a real Jaeger v2 (tests/tracing_backends.py).

Instrumented services run as real servers (Werkzeug, gunicorn) in their own processes and
export over OTLP, HTTP or gRPC, exactly as a user configures it (OTEL_* variables only). What
Jaeger stored is read back through its query API.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import import_or_require, require_service
from tests.helpers import http_status
from tests.tracing_backends import (
    ROOT,
    Jaeger,
    missing_reason,
    parent_id,
    serve,
    span_service,
    start_jaeger,
    tags,
)

pytestmark = pytest.mark.service


def _ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_reach_jaeger_with_resource_attributes_and_status(
    jaeger: Jaeger, tmp_path: Path, protocol: str
) -> None:
    """Over OTLP/HTTP and gRPC, Jaeger stores the SERVER span with the service name, the
    resource (version, environment, OTEL_RESOURCE_ATTRIBUTES), the HTTP attributes and the
    caller as parent; a failing request is stored with status ERROR and its exception."""
    service = f"e2e-{protocol.split('/')[0]}-{secrets.token_hex(3)}"
    env = {
        **jaeger.env(service, protocol),
        "PYOBS_SERVICE_VERSION": "1.2.3",
        "PYOBS_ENVIRONMENT": "staging",
        "OTEL_RESOURCE_ATTRIBUTES": "team=blue",
    }
    (ok_trace, ok_parent), (bad_trace, bad_parent) = _ids(), _ids()
    with serve(tmp_path, env) as app:
        assert app.get("/items/3?color=red", ok_trace, ok_parent) == 200
        assert app.get("/boom", bad_trace, bad_parent) == 500
        ok = jaeger.wait_trace(ok_trace)
        bad = jaeger.wait_trace(bad_trace)

    (span,) = ok["spans"]
    assert span["operationName"] == "GET /items/<int:item_id>"
    assert span_service(ok, span) == service
    assert parent_id(span) == ok_parent
    resource = tags(ok["processes"][span["processID"]])
    assert resource["service.version"] == "1.2.3"
    assert resource["deployment.environment.name"] == "staging"
    assert resource["team"] == "blue"
    assert resource["telemetry.sdk.language"] == "python"
    attributes = tags(span)
    assert attributes["span.kind"] == "server"
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/items/<int:item_id>"
    assert attributes["url.path"] == "/items/3"
    assert attributes["url.query"] == "color=red"
    assert attributes["http.response.status_code"] == 200
    assert "otel.status_code" not in attributes and "error" not in attributes

    (failed,) = bad["spans"]
    assert failed["operationName"] == "GET /boom"
    attributes = tags(failed)
    assert attributes["otel.status_code"] == "ERROR"
    assert attributes["error"] is True
    assert attributes["http.response.status_code"] == 500
    assert attributes["error.type"] == "RuntimeError"
    events = [{f["key"]: f["value"] for f in log["fields"]} for log in failed["logs"]]
    assert [(e["event"], e["exception.type"]) for e in events] == [("exception", "RuntimeError")]
    assert "the warehouse is on fire" in events[0]["exception.message"]
    assert service in jaeger.services()


@pytest.mark.slow
def test_one_trace_across_two_services_through_a_client_span(
    jaeger: Jaeger, tmp_path: Path
) -> None:
    """Service A calls service B through ``requests`` (the interop recipe): Jaeger holds one
    trace of three spans, A's SERVER span under the caller, A's CLIENT span under it, and B's
    SERVER span under A's CLIENT span (traceparent propagated), each under its own service;
    A exports over HTTP and B over gRPC."""
    suffix = secrets.token_hex(3)
    with serve(tmp_path, jaeger.env(f"orders-{suffix}", "grpc"), name="b") as b:
        env_a = {**jaeger.env(f"frontend-{suffix}"), "TRACE_APP_DOWNSTREAM": b.base}
        with serve(tmp_path, env_a, name="a") as a:
            trace_id, parent = _ids()
            assert a.get("/call/4", trace_id, parent) == 200
            trace = jaeger.wait_trace(trace_id, spans=3)

    by_kind: dict[tuple[str, str], Any] = {}
    for span in trace["spans"]:
        by_kind[(span_service(trace, span), tags(span)["span.kind"])] = span
    assert sorted(by_kind) == [
        (f"frontend-{suffix}", "client"),
        (f"frontend-{suffix}", "server"),
        (f"orders-{suffix}", "server"),
    ]
    a_server = by_kind[(f"frontend-{suffix}", "server")]
    a_client = by_kind[(f"frontend-{suffix}", "client")]
    b_server = by_kind[(f"orders-{suffix}", "server")]
    assert a_server["operationName"] == "GET /call/<int:item_id>"
    assert parent_id(a_server) == parent
    assert parent_id(a_client) == a_server["spanID"]
    client = tags(a_client)  # requests' instrumentation: old or new HTTP conventions
    assert client.get("http.response.status_code", client.get("http.status_code")) == 200
    assert parent_id(b_server) == a_client["spanID"]
    assert b_server["operationName"] == "GET /items/<int:item_id>"
    assert {s["traceID"] for s in trace["spans"]} == {trace_id}


def _stack_jaeger(tmp_path: Path) -> Callable[[dict[str, int]], str]:
    """The stack's jaeger/config.yaml with loopback ports and the volume moved to tmp_path."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["jaeger"]
    mounts = dict(reversed(volume.split(":")[:2]) for volume in compose["volumes"])
    volume = next(target for target, source in mounts.items() if not source.startswith("."))
    assert mounts[compose["command"][1]] == "./jaeger/config.yaml"

    def render(ports: dict[str, int]) -> str:
        config = yaml.safe_load((ROOT / "jaeger" / "config.yaml").read_text())
        extensions = config["extensions"]
        extensions["healthcheckv2"]["http"]["endpoint"] = f"127.0.0.1:{ports['health']}"
        extensions["jaeger_query"]["http"]["endpoint"] = f"127.0.0.1:{ports['query']}"
        extensions["jaeger_query"]["grpc"]["endpoint"] = f"127.0.0.1:{ports['query_grpc']}"
        protocols = config["receivers"]["otlp"]["protocols"]
        protocols["http"]["endpoint"] = f"127.0.0.1:{ports['otlp_http']}"
        protocols["grpc"]["endpoint"] = f"127.0.0.1:{ports['otlp_grpc']}"
        (reader,) = config["service"]["telemetry"]["metrics"]["readers"]
        reader["pull"]["exporter"]["prometheus"].update(host="127.0.0.1", port=ports["metrics"])
        backend = extensions["jaeger_storage"]["backends"]["traces"]["badger"]
        for kind, path in backend["directories"].items():
            assert path.startswith(volume + "/"), f"Badger's {kind} are not on the volume"
            backend["directories"][kind] = str(tmp_path / "volume") + path[len(volume) :]
        return str(yaml.safe_dump(config))

    return render


def _send_one_span(endpoint: str, service: str) -> str:
    """Export one span over OTLP/HTTP; its trace id."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))
    span = provider.get_tracer("stack").start_span("kept")
    span.end()
    provider.shutdown()
    return format(span.get_span_context().trace_id, "032x")


@pytest.mark.slow
def test_the_stacks_jaeger_keeps_traces_across_a_restart(tmp_path: Path) -> None:
    """The compose stack's jaeger/config.yaml runs on the real Jaeger (ports moved to loopback,
    the volume to a scratch directory): health and metrics answer where compose and Prometheus
    look, and a trace stored before a restart is found after it, because Badger keeps it on
    the volume the compose file mounts."""
    reason = missing_reason()
    require_service(reason is None, reason or "")
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    render = _stack_jaeger(tmp_path)
    first = start_jaeger(tmp_path, render)
    try:
        trace_id = _send_one_span(first.http_endpoint, "stack-restart")
        before = first.wait_trace(trace_id)
        # What the compose health check and Prometheus's jaeger job ask for.
        assert http_status(f"http://127.0.0.1:{first.ports['health']}/status") == 200
        assert http_status(f"http://127.0.0.1:{first.ports['metrics']}/metrics") == 200
    finally:
        first.stop()
    assert first.proc.returncode is not None
    second = start_jaeger(tmp_path, render)
    try:
        after = second.trace(trace_id)
    finally:
        second.stop()
    assert after is not None, "the trace did not survive the restart"
    assert [s["spanID"] for s in after["spans"]] == [s["spanID"] for s in before["spans"]]
    assert span_service(after, after["spans"][0]) == "stack-restart"
