"""Traces end to end against a real Jaeger v2 (tests/tracing_backends.py).

Instrumented services run as real servers (Werkzeug, gunicorn) in their own processes and
export over OTLP, HTTP or gRPC, exactly as a user configures it (OTEL_* variables only). What
Jaeger stored is read back through its query API.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.tracing_backends import Jaeger, parent_id, serve, span_service, tags

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
