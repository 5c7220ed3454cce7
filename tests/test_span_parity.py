"""Span parity (issue 13.3): pyobs's SERVER span equals the SDK's own span for one request.

A golden comparison, version-independent: in a fresh interpreter with OTEL span limits and
resource attributes set, one request goes through pyobs (an exception, a remote parent with
trace state, a long user agent, more attributes than the count limit allows), and the same
request is recorded with ``Tracer.start_span`` the way an SDK instrumentation would. Flags,
limits, resource, scope, attributes, events, status, kind and parent must be equal, with
pyobs's span shortcut on and with it off (the public path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    r"""
    import json
    import sys

    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    import pyobs
    from pyobs import _internals
    from pyobs.testing import span_exporter
    from pyobs.wsgi import ObservabilityMiddleware

    if sys.argv[1] == "public":
        _internals.OTEL_SPAN.enabled = False

    pyobs.setup(service_name="parity", service_version="1.0", access_log=False)
    exporter = span_exporter()
    error = LookupError("order 7 is gone")

    def app(environ, start_response):
        raise error

    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "vendor=probe",
        "user-agent": "a-user-agent-longer-than-the-value-limit/1.0",
    }
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/orders/7", "QUERY_STRING": "page=2",
        "SERVER_NAME": "shop.local", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.1.2.3", "HTTP_HOST": "shop.local:8080",
        "HTTP_TRACEPARENT": headers["traceparent"], "HTTP_TRACESTATE": headers["tracestate"],
        "HTTP_USER_AGENT": headers["user-agent"], "HTTP_X_PROBE": "captured-header-value",
        "wsgi.url_scheme": "http",
    }
    try:
        ObservabilityMiddleware(app)(environ, lambda *a: None)
    except LookupError:
        pass
    (mine,) = exporter.get_finished_spans()
    exporter.clear()

    # The same request, recorded as an SDK instrumentation records it.
    tracer = trace.get_tracer_provider().get_tracer("pyobs", pyobs.__version__)
    reference = tracer.start_span(
        "GET",
        context=propagate.extract(headers),
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "url.path": "/orders/7",
            "url.scheme": "http",
            "network.protocol.version": "1.1",
            "url.query": "page=2",
            "server.address": "shop.local",
            "server.port": 8080,
            "client.address": "10.1.2.3",
            "user_agent.original": headers["user-agent"],
            "http.request.header.x-probe": ("captured-header-value",),
        },
    )
    reference.set_status(Status(StatusCode.ERROR))
    reference.record_exception(error)
    reference.set_attributes({"http.response.status_code": 500, "error.type": "LookupError"})
    reference.end()
    (sdk,) = exporter.get_finished_spans()

    def facts(span):
        parent = span.parent
        return {
            "name": span.name,
            "kind": str(span.kind),
            "status": [str(span.status.status_code), span.status.description],
            "flags": int(span.context.trace_flags),
            "trace_id": span.context.trace_id,
            "trace_state": span.context.trace_state.to_header(),
            "parent": None if parent is None else [
                parent.trace_id, parent.span_id, parent.is_remote, int(parent.trace_flags)
            ],
            "resource": dict(span.resource.attributes),
            "scope": [span.instrumentation_scope.name, span.instrumentation_scope.version],
            "attributes": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in span.attributes.items()},
            "dropped_attributes": span.dropped_attributes,
            "events": [[e.name, dict(e.attributes)] for e in span.events],
            "dropped_events": span.dropped_events,
        }

    print(json.dumps({"pyobs": facts(mine), "sdk": facts(sdk), "type": type(mine).__name__}))
    """
)


def _run_script(script: Path, text: str, path: str, **env: str) -> dict[str, Any]:
    """Run ``text`` as ``script`` with argument ``path`` (shortcut or public) in a fresh
    interpreter (no PYOBS_/OTEL_ variables but ``env``); the JSON of its last output line."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    full_env.update(PYTHONPATH=str(ROOT), PYOBS_LOG_HANDLER="never", **env)
    script.write_text(text)
    done = subprocess.run(
        [sys.executable, str(script), path],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=script.parent,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("path", ["shortcut", "public"])
def test_server_span_equals_the_sdks_own_span(path: str, tmp_path: Path) -> None:
    """Same request, same span: pyobs's SERVER span and Tracer.start_span's, field by field."""
    result = _run_script(
        tmp_path / "parity.py",
        SCRIPT,
        path,
        OTEL_RESOURCE_ATTRIBUTES="team=core",
        OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT="24",
        OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="9",
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST="x-probe",
    )
    mine, sdk = result["pyobs"], result["sdk"]
    # The shortcut really served the request (it did not silently turn itself off).
    assert (result["type"] == "RequestSpan") is (path == "shortcut")
    # The limits bit, so the comparison covers them.
    assert sdk["dropped_attributes"] > 0
    assert len(sdk["attributes"]["user_agent.original"]) == 24
    assert sdk["resource"]["team"] == "core"
    assert sdk["parent"][2] is True
    for key in sdk:
        if key == "name":
            continue
        assert mine[key] == sdk[key], key
    assert mine["name"] == "GET"  # no route: a bare WSGI app has none


APP_ATTRIBUTES_SCRIPT = textwrap.dedent(
    r"""
    import json
    import sys

    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    import pyobs
    from pyobs import _internals
    from pyobs.testing import span_exporter
    from pyobs.wsgi import ObservabilityMiddleware

    if sys.argv[1] == "public":
        _internals.OTEL_SPAN.enabled = False
    pyobs.setup(service_name="parity", access_log=False)
    exporter = span_exporter()

    def enrich(span):
        for key, value in [
            ("app.text", "plain"), ("app.count", 3), ("app.ok", True), ("app.ratio", 0.5),
            ("app.names", ["a", "b"]), ("app.ids", (1, 2)), ("app.raw", b"bytes"),
            ("app.none", None), ("", "empty key"), ("app.object", object()),
            ("app.text", "replaced"),
        ]:
            span.set_attribute(key, value)

    def app(environ, start_response):
        enrich(trace.get_current_span())
        start_response("200 OK", [])
        return [b"ok"]

    body = ObservabilityMiddleware(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.url_scheme": "http"},
        lambda *a: None,
    )
    b"".join(body)
    body.close()
    (mine,) = exporter.get_finished_spans()
    exporter.clear()
    tracer = trace.get_tracer_provider().get_tracer("pyobs", pyobs.__version__)
    reference = tracer.start_span("GET", kind=SpanKind.SERVER)
    enrich(reference)
    reference.end()
    (sdk,) = exporter.get_finished_spans()

    def app_attributes(span):
        return {k: repr(v) for k, v in span.attributes.items() if k.startswith("app.") or not k}

    print(json.dumps({"pyobs": app_attributes(mine), "sdk": app_attributes(sdk),
                      "type": type(mine).__name__}))
    """
)


@pytest.mark.parametrize("path", ["shortcut", "public"])
def test_attributes_the_app_sets_equal_the_sdks(path: str, tmp_path: Path) -> None:
    """Attributes application code sets on pyobs's span (str, numbers, sequences, bytes, None,
    an empty key, an object) end up exactly as on an SDK span."""
    result = _run_script(tmp_path / "app_attributes.py", APP_ATTRIBUTES_SCRIPT, path)
    assert (result["type"] == "RequestSpan") == (path == "shortcut")
    assert result["pyobs"] == result["sdk"]
    assert result["pyobs"]["app.text"] == "'replaced'"
