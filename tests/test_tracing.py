"""The request's SERVER span behaves like an SDK span for exporters and application code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pyobs
from tests.conftest import import_or_require, run_python
from tests.core_apps import Client

ROOT = Path(__file__).resolve().parents[1]


def _app_with_view(view: Any) -> Client:
    import_or_require("flask")
    from flask import Flask

    from pyobs import flask as pyobs_flask

    app = Flask("span")
    app.get("/orders/<int:order_id>")(view)
    pyobs_flask.instrument(app)
    return Client("flask", app)


@pytest.mark.parametrize("path", ["shortcut", "public"])
def test_application_code_can_enrich_and_nest_under_the_server_span(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_current_span() in a view sets attributes and events; child spans nest under it.

    pyobs records its span itself on the SDK ("shortcut") and through Tracer.start_span when
    the shortcut is off ("public"); both must look the same to application code, and the
    request's context must be gone afterwards.
    """
    from opentelemetry import trace

    from pyobs import _internals, tracing
    from pyobs.testing import span_exporter

    if path == "public":
        monkeypatch.setattr(_internals.OTEL_SPAN, "enabled", False)
        monkeypatch.setattr(tracing, "_recorder_for", None)

    def view(order_id: int) -> str:
        span = trace.get_current_span()
        span.set_attribute("app.order_id", order_id)
        span.set_attribute("app.tags", ["a", "b"])
        span.add_event("looked up", {"cache": "hit"})
        with trace.get_tracer("app").start_as_current_span("db query"):
            pass
        return "ok"

    client = _app_with_view(view)
    exporter = span_exporter()
    assert client.get("/orders/42").status == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server, child = spans["GET /orders/<int:order_id>"], spans["db query"]
    assert server.attributes["app.order_id"] == 42
    assert server.attributes["app.tags"] == ("a", "b")
    assert [e.name for e in server.events] == ["looked up"]
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id
    assert server.instrumentation_scope.name == "pyobs"
    assert server.resource.attributes["service.name"]
    assert server.end_time >= server.start_time
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_exception_is_an_event_with_error_status() -> None:
    """An exception leaves an 'exception' event with type, message and stack trace."""
    from pyobs.testing import span_exporter

    def view(order_id: int) -> str:
        raise LookupError(f"order {order_id} is gone")

    client = _app_with_view(view)
    exporter = span_exporter()
    assert client.get("/orders/7").status == 500
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "LookupError"
    assert "order 7 is gone" in event.attributes["exception.message"]
    assert "Traceback" in event.attributes["exception.stacktrace"]
    assert span.status.status_code.name == "ERROR"


def test_a_failing_exception_event_still_ends_and_exports_the_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If recording the exception event fails inside pyobs (here: the event's recording
    raises), the span still ends with its status, route and error type, is exported, and
    the failure is counted as an internal error of tracing."""
    from prometheus_client import REGISTRY

    from pyobs import tracing
    from pyobs.testing import span_exporter

    def view(order_id: int) -> str:
        raise LookupError(f"order {order_id} is gone")

    client = _app_with_view(view)
    exporter = span_exporter()
    assert client.get("/orders/1").status == 500  # the span type is known from here on

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("event recording broke")

    monkeypatch.setattr(tracing.request_span_type, "record_exception", broken)
    exporter.clear()
    errors = {"component": "tracing"}
    before = REGISTRY.get_sample_value("pyobs_internal_errors_total", errors) or 0.0
    assert client.get("/orders/2").status == 500
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /orders/<int:order_id>"
    assert span.attributes["http.response.status_code"] == 500
    assert span.attributes["error.type"] == "LookupError"
    assert span.status.status_code.name == "ERROR"
    assert span.end_time is not None and span.end_time >= span.start_time
    after = REGISTRY.get_sample_value("pyobs_internal_errors_total", errors) or 0.0
    assert after == before + 1


def test_span_processors_see_start_and_end() -> None:
    """Processors on the provider get on_start, _on_ending and on_end for the server span, as
    with the SDK, also when added after pyobs served its first request."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor

    class Recording(SpanProcessor):
        def __init__(self) -> None:
            self.started: list[str] = []
            self.ending: list[str] = []
            self.ended: list[str] = []

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("tenant", "blue")  # what baggage-style processors do
            self.started.append(span.get_span_context().span_id)

        def _on_ending(self, span: Any) -> None:  # the SDK's hook before the span is frozen
            self.ending.append(span.get_span_context().span_id)

        def on_end(self, span: Any) -> None:
            self.ended.append(span.context.span_id)

    from pyobs.testing import span_exporter

    pyobs.setup()
    exporter = span_exporter()
    client = _app_with_view(lambda order_id: "ok")
    client.get("/orders/0")  # served before the processor below exists
    exporter.clear()
    recording = Recording()
    provider: Any = trace.get_tracer_provider()
    provider.add_span_processor(recording)
    try:
        client.get("/orders/1")
        (span,) = exporter.get_finished_spans()
        assert recording.started == recording.ended == [span.context.span_id]
        # The SDK calls _on_ending since 1.40 (older SDKs have no such hook): pyobs does the same.
        hooked = hasattr(SpanProcessor, "_on_ending")
        assert recording.ending == (recording.ended if hooked else [])
        assert span.attributes["tenant"] == "blue"
    finally:  # the SDK has no remove_span_processor; keep other tests' spans untouched
        multi = provider._active_span_processor
        multi._span_processors = tuple(p for p in multi._span_processors if p is not recording)


def test_sampler_off_records_nothing_but_keeps_trace_ids_in_logs() -> None:
    """OTEL_TRACES_SAMPLER=always_off: no span exported, no exemplar, logs still carry trace.id."""
    script = textwrap.dedent(
        """
        import json, sys, io
        from flask import Flask
        import pyobs.flask
        from pyobs.testing import span_exporter
        app = Flask("off")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app)
        exporter = span_exporter()
        out = io.StringIO(); real = sys.stdout; sys.stdout = out
        app.test_client().get("/x", buffered=True)
        page = app.test_client().get(
            "/metrics", headers={"Accept": "application/openmetrics-text"}).text
        sys.stdout = real
        access = [json.loads(l) for l in out.getvalue().splitlines() if "pyobs.access" in l]
        assert exporter.get_finished_spans() == (), exporter.get_finished_spans()
        assert len(access[0]["trace.id"]) == 32
        assert "trace_id" not in page
        print("ok")
        """
    )
    import_or_require("flask")
    result = _python(script, OTEL_TRACES_SAMPLER="always_off")
    assert result.stdout.strip().endswith("ok")


_python = run_python  # a fresh interpreter with no PYOBS_/OTEL_ variables but the given ones


@pytest.mark.parametrize("exporter", ["console"])
def test_console_exporter_writes_one_json_span_per_line(exporter: str) -> None:
    """OTEL_TRACES_EXPORTER=console writes each server span as one JSON line on stderr."""
    import_or_require("flask")
    script = textwrap.dedent(
        """
        from flask import Flask
        import pyobs.flask
        app = Flask("c")
        app.get("/items/<int:i>")(lambda i: "ok")
        pyobs.flask.instrument(app)
        app.test_client().get("/items/3", buffered=True)
        """
    )
    result = _python(script, OTEL_TRACES_EXPORTER=exporter)
    import json

    (line,) = [line for line in result.stderr.splitlines() if line.startswith("{")]
    span = json.loads(line)
    assert span["name"] == "GET /items/<int:i>"
    assert span["kind"] == "SpanKind.SERVER"
    assert span["attributes"]["http.route"] == "/items/<int:i>"


def test_default_sampler_follows_the_parent_decision(capsys: pytest.CaptureFixture[str]) -> None:
    """parentbased_always_on: a sampled parent is continued (with its tracestate), an
    unsampled one records nothing but keeps its trace id in the log, and without headers the
    current span (here an outer span of the test) is the parent."""
    from opentelemetry import trace

    from pyobs.testing import span_exporter
    from tests.core_apps import json_lines

    client = _app_with_view(lambda order_id: "ok")
    exporter = span_exporter()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=x"}
    assert client.get("/orders/1", headers).status == 200
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and format(span.parent.span_id, "016x") == parent_id
    assert span.parent.is_remote and span.context.trace_state.get("vendor") == "x"

    exporter.clear()
    capsys.readouterr()
    assert client.get("/orders/2", {"traceparent": f"00-{trace_id}-{parent_id}-00"}).status == 200
    assert exporter.get_finished_spans() == ()
    (line,) = [r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.access"]
    assert line["trace.id"] == trace_id

    with trace.get_tracer("test").start_as_current_span("outer") as outer:
        assert client.get("/orders/3").status == 200
    server = next(s for s in exporter.get_finished_spans() if s.name != "outer")
    assert server.parent is not None
    assert server.parent.span_id == outer.get_span_context().span_id
    assert server.context.trace_id == outer.get_span_context().trace_id


def test_span_ids_are_the_span_contexts_ids_in_hex() -> None:
    """span_ids() gives the W3C hex forms of the span context's ids and its sampled flag."""
    from opentelemetry import trace

    from pyobs import tracing

    state = trace.TraceState([("vendor", "x")])
    for flags in (0, 1, 3):
        for trace_state in (None, state):
            context = trace.SpanContext(
                0x4BF92F3577B34DA6A3CE929D0E0E4736,
                0x00F067AA0BA902B7,
                False,
                trace.TraceFlags(flags),
                trace_state,
            )
            assert tracing.span_ids(trace.NonRecordingSpan(context)) == (
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "00f067aa0ba902b7",
                flags & 1 == 1,
            )


@pytest.mark.parametrize("generator", ["default", "custom"])
def test_a_new_traces_ids_come_from_the_providers_id_generator(generator: str) -> None:
    """A request without a parent starts a trace with the provider's id generator: the
    SDK's default one gives valid random ids (pyobs draws both in one call then), an app's
    own generator gives its own ids, and the access line carries the same ids."""
    script = textwrap.dedent(
        """
        import io, json, os, sys
        from flask import Flask
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        class Counting(IdGenerator):
            def __init__(self):
                self.next = 0
            def generate_span_id(self):
                self.next += 1
                return 0x1000 + self.next
            def generate_trace_id(self):
                self.next += 1
                return 0xABC000 + self.next

        custom = os.environ["IDS_GENERATOR"] == "custom"
        if custom:
            trace.set_tracer_provider(TracerProvider(id_generator=Counting()))
        import pyobs.flask
        from pyobs.testing import span_exporter
        app = Flask("ids")
        app.get("/x")(lambda: "ok")
        pyobs.flask.instrument(app)
        exporter = span_exporter()
        out = io.StringIO(); real = sys.stdout; sys.stdout = out
        for _ in range(3):
            assert app.test_client().get("/x", buffered=True).status_code == 200
        sys.stdout = real
        spans = exporter.get_finished_spans()
        access = [json.loads(l) for l in out.getvalue().splitlines() if "pyobs.access" in l]
        ids = [(s.context.trace_id, s.context.span_id) for s in spans]
        assert [(int(a["trace.id"], 16), int(a["span.id"], 16)) for a in access] == ids
        if custom:
            assert ids == [(0xABC001, 0x1002), (0xABC003, 0x1004), (0xABC005, 0x1006)], ids
        else:
            assert all(0 < t < 1 << 128 and 0 < s < 1 << 64 for t, s in ids), ids
            assert len({t for t, _ in ids}) == 3 and len({s for _, s in ids}) == 3, ids
            assert all(s.parent is None and s.context.trace_flags.sampled for s in spans)
        print("ok")
        """
    )
    import_or_require("flask")
    assert _python(script, IDS_GENERATOR=generator).stdout.strip().endswith("ok")


@pytest.mark.parametrize("tracing", [False, True])
def test_metrics_only_never_loads_the_tracing_sdk(tracing: bool) -> None:
    """With tracing off, setup and a served request import no OpenTelemetry SDK module;
    with tracing on, the same request loads it (the SERVER span is an SDK span)."""
    script = textwrap.dedent(
        f"""
        import sys
        import pyobs
        from pyobs.wsgi import ObservabilityMiddleware

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        pyobs.setup(service_name="lazy", tracing={tracing}, access_log=False)
        wrapped = ObservabilityMiddleware(app)
        environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.url_scheme": "http"}}
        body = wrapped(environ, lambda status, headers, exc_info=None: None)
        assert b"".join(body) == b"ok"
        body.close()
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")))
        """
    )
    result = _python(script)
    loaded = result.stdout.strip().splitlines()[-1]
    if tracing:
        assert "opentelemetry.sdk.trace" in loaded
    else:
        assert loaded == "[]"


# A Flask app on the provider pyobs.setup() installs, with pyobs's batch processor in front of
# an exporter that keeps what it gets (kept.spans); the scripts below go on from here.
_PYOBS_PROVIDER_APP = """
import gc, json
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from flask import Flask
import pyobs, pyobs.flask
from pyobs import tracing
from pyobs._spans import PyobsTracerProvider, batch_processor

class Keep(SpanExporter):
    def __init__(self):
        self.spans = []
    def export(self, spans):
        self.spans += spans
        return SpanExportResult.SUCCESS

kept = Keep()
provider = PyobsTracerProvider()
provider.add_span_processor(batch_processor(kept))
trace.set_tracer_provider(provider)
pyobs.setup(access_log=False)
app = Flask("lane")
"""


def test_pyobs_provider_hands_spans_to_its_only_processor_until_another_is_added() -> None:
    """The provider pyobs.setup() installs gives each request span straight to pyobs's batch
    processor while it is the only one; a processor the app adds later gets every hook
    (start and end) for the spans that follow, and pyobs's processor still gets them all."""
    import_or_require("flask")
    script = _PYOBS_PROVIDER_APP + textwrap.dedent(
        """
        class Hooks(SpanProcessor):
            def __init__(self):
                self.calls = []
            def on_start(self, span, parent_context=None):
                self.calls.append("start " + span.name)
            def on_end(self, span):
                self.calls.append("end " + span.name)

        app.add_url_rule("/a", "a", lambda: "a")
        app.add_url_rule("/b", "b", lambda: "b")
        pyobs.flask.instrument(app)
        client = app.test_client()

        def get(path):
            response = client.get(path)
            response.close()  # the body is closed: the request and its span end
            assert response.status_code == 200

        get("/a")
        recorder = tracing._recorder
        lane = (recorder.on_start is None, type(recorder.processor).__name__)
        hooks = Hooks()
        provider.add_span_processor(hooks)
        get("/b")
        after = (recorder.on_start is None, type(recorder.processor).__name__)
        provider.force_flush()
        names = [s.name for s in kept.spans]
        print(json.dumps({"lane": lane, "after": after, "hooks": hooks.calls, "kept": names}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["lane"] == [True, "CountingBatchSpanProcessor"]
    assert result["after"] == [False, "SynchronousMultiSpanProcessor"]
    assert result["hooks"] == ["start GET", "end GET /b"]
    assert result["kept"] == ["GET /a", "GET /b"]


def test_a_queued_request_span_leaves_one_object_for_the_garbage_collector() -> None:
    """Spans wait in the batch processor's queue for up to a batch; every object they keep
    that the cyclic garbage collector tracks makes its collections come sooner and cost more
    (docs/benchmarks-journal.md). A queued request span keeps no SpanContext object of its own: it
    is made again from the ids when asked, equal to the one the request saw, and the span
    exports as before."""
    import_or_require("flask")
    script = _PYOBS_PROVIDER_APP + textwrap.dedent(
        """
        seen = {}

        @app.route("/a")
        def a():
            context = trace.get_current_span().get_span_context()
            seen["ids"] = (context.trace_id, context.span_id)
            seen["span"] = trace.get_current_span()
            return "a"

        pyobs.flask.instrument(app)
        response = app.test_client().get("/a")
        response.close()
        span = seen.pop("span")
        queued = [type(o).__name__ for o in gc.get_referents(span) if gc.is_tracked(o)]
        again = span.get_span_context()
        provider.force_flush()
        print(json.dumps({
            "queued": sorted(set(queued)),
            "again": [again.trace_id, again.span_id, again.is_valid, int(again.trace_flags)],
            "seen": seen["ids"],
            "kept": [[s.context.trace_id, s.context.span_id] for s in kept.spans],
        }))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "SpanContext" not in result["queued"], result["queued"]
    trace_id, span_id = result["seen"]
    assert result["again"][:3] == [trace_id, span_id, True]
    assert result["again"][3] & 1  # sampled
    assert result["kept"] == [[trace_id, span_id]]
