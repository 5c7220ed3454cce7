"""Every standard OTEL_* variable pyobs honours, checked the way the OpenTelemetry SDK reads it.

Most checks run a small instrumented Flask app in a fresh interpreter: OpenTelemetry reads
its variables once per process (the global tracer provider and propagator cannot be
replaced), so each environment gets its own process. Spans are exported to a real OTLP
receiver where the variable is about export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyobs
from pyobs import ConfigError
from pyobs._config import load_config
from tests.conftest import import_or_require
from tests.tracing_backends import Jaeger, OtlpReceiver, decode_spans

ROOT = Path(__file__).resolve().parents[1]

# A Flask app with one route; the view answers with the request's baggage (JSON). Requests
# are given as argv[1] (a JSON list of [path, headers]); the result is one JSON object on
# the real stdout: exported spans, log lines, response bodies and the metrics page.
APP = textwrap.dedent(
    """
    import io, json, sys
    from flask import Flask
    from opentelemetry import baggage
    import pyobs, pyobs.flask
    from pyobs.testing import span_exporter

    app = Flask("otel-env")
    app.add_url_rule(
        "/items/<int:i>", "item", lambda i: json.dumps(dict(baggage.get_all())))
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    out = io.StringIO(); real = sys.stdout; sys.stdout = out
    pyobs.flask.instrument(app, **options)
    try:
        exporter = span_exporter()
    except RuntimeError:  # no SDK provider (OTEL_SDK_DISABLED)
        exporter = None
    client = app.test_client()
    bodies = []
    for path, headers in json.loads(sys.argv[1]):
        bodies.append(client.get(path, headers=headers, buffered=True).text)
    page = client.get("/metrics").text
    sys.stdout = real
    spans = [json.loads(s.to_json()) for s in exporter.get_finished_spans()] if exporter else []
    logs = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    print(json.dumps({"spans": spans, "logs": logs, "bodies": bodies, "page": page,
                      "pid": __import__("os").getpid()}))
    """
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
B3_TRACE_ID = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN_ID = "e457b5a2e4d86bd1"
JAEGER_TRACE_ID = "0000000000000000a1b2c3d4e5f60718"  # 64-bit id, left-padded by OTel
JAEGER_SPAN_ID = "0102030405060708"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_app(
    env: dict[str, str],
    requests: list[tuple[str, dict[str, str]]],
    options: dict[str, Any] | None = None,
    preamble: str = "",
) -> dict[str, Any]:
    """Run APP in a fresh interpreter with ``env`` (over a clean environment)."""
    import_or_require("flask")
    result = subprocess.run(
        [sys.executable, "-c", preamble + APP, json.dumps(requests), json.dumps(options or {})],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_clean_env(**env),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    data["stderr"] = result.stderr
    return data


def _trace_ids(spans: list[dict[str, Any]]) -> set[str]:
    return {s["context"]["trace_id"][2:] for s in spans if s["kind"] == "SpanKind.SERVER"}


def _parent(span: dict[str, Any]) -> str | None:
    parent = span["parent_id"]
    return None if parent is None else str(parent)[2:]


def _access(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in data["logs"] if line.get("log.logger") == "pyobs.access"]


def _info_labels(page: str) -> dict[str, str]:
    (line,) = [line for line in page.splitlines() if line.startswith("pyobs_info{")]
    inner = line[line.index("{") + 1 : line.rindex("}")]
    pairs = (part.split("=", 1) for part in inner.split('",'))
    return {key: value.strip('"') for key, value in pairs}


# --- OTEL_PROPAGATORS -------------------------------------------------------------------

W3C = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "baggage": "user=alice"}
B3_MULTI = {"x-b3-traceid": B3_TRACE_ID, "x-b3-spanid": B3_SPAN_ID, "x-b3-sampled": "1"}
B3_SINGLE = {"b3": f"{B3_TRACE_ID}-{B3_SPAN_ID}-1"}
JAEGER = {"uber-trace-id": f"a1b2c3d4e5f60718:{JAEGER_SPAN_ID}:0:1", "uberctx-user": "bob"}


@pytest.mark.parametrize(
    ("value", "continued", "baggage"),
    [
        ("", {"w3c"}, {"w3c": {"user": "alice"}}),  # unset: tracecontext,baggage
        ("tracecontext", {"w3c"}, {}),
        ("tracecontext,baggage", {"w3c"}, {"w3c": {"user": "alice"}}),
        ("b3multi", {"b3multi", "b3single"}, {}),
        ("b3", {"b3multi", "b3single"}, {}),
        ("jaeger", {"jaeger"}, {"jaeger": {"user": "bob"}}),
        ("b3multi,tracecontext", {"w3c", "b3multi", "b3single"}, {}),
        ("none", set(), {}),
    ],
)
def test_otel_propagators_choose_which_incoming_headers_continue_a_trace(
    value: str, continued: set[str], baggage: dict[str, dict[str, str]]
) -> None:
    """OTEL_PROPAGATORS: B3 and Jaeger callers continue their trace when named; others don't.

    Each request carries one format; the SERVER span continues the caller's trace exactly
    when a configured propagator reads that format (both B3 propagators read the single and
    the multi headers, as OpenTelemetry's B3 package does), and the view sees the
    caller's baggage only through a baggage-reading propagator.
    """
    formats = {"w3c": W3C, "b3multi": B3_MULTI, "b3single": B3_SINGLE, "jaeger": JAEGER}
    expected_parent = {
        "w3c": (TRACE_ID, PARENT_ID),
        "b3multi": (B3_TRACE_ID, B3_SPAN_ID),
        "b3single": (B3_TRACE_ID, B3_SPAN_ID),
        "jaeger": (JAEGER_TRACE_ID, JAEGER_SPAN_ID),
    }
    env = {"OTEL_PROPAGATORS": value} if value else {}
    names = list(formats)
    data = run_app(env, [(f"/items/{i}", formats[name]) for i, name in enumerate(names)])
    spans = sorted(
        (s for s in data["spans"] if s["kind"] == "SpanKind.SERVER"),
        key=lambda s: int(s["attributes"]["url.path"].rsplit("/", 1)[1]),
    )
    assert len(spans) == len(names)
    for name, span, body in zip(names, spans, data["bodies"], strict=True):
        trace_id, parent = expected_parent[name]
        got = (span["context"]["trace_id"][2:], _parent(span))
        if name in continued:
            assert got == (trace_id, parent), (name, got)
        else:
            assert got[0] != trace_id and got[1] is None, (name, got)
        assert json.loads(body) == baggage.get(name, {}), name


def test_otel_propagators_missing_package_warns_and_the_others_still_work() -> None:
    """A propagator OpenTelemetry ships but whose package is absent: the app still starts.

    OpenTelemetry's own module raises at import then; pyobs warns once at setup, naming the
    package to install, and keeps continuing W3C traces. Here aws-xray is really not
    installed, and B3's module is made unimportable to stand for a missing b3 package.
    """
    block_b3 = textwrap.dedent(
        """
        import importlib.abc, sys
        class _NoB3(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry.propagators.b3":
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
                return None
        sys.meta_path.insert(0, _NoB3())
        """
    )
    for value, package, preamble in (
        ("tracecontext,xray", "opentelemetry-propagator-aws-xray", ""),
        ("b3multi,tracecontext", "opentelemetry-propagator-b3", block_b3),
    ):
        data = run_app({"OTEL_PROPAGATORS": value}, [("/items/1", W3C)], preamble=preamble)
        warnings = [line for line in data["logs"] if line["log.level"] == "warning"]
        assert len(warnings) == 1, warnings
        assert "OTEL_PROPAGATORS" in warnings[0]["message"]
        assert f"pip install {package}" in warnings[0]["message"]
        (span,) = data["spans"]
        assert (span["context"]["trace_id"][2:], _parent(span)) == (TRACE_ID, PARENT_ID)


def test_a_propagator_the_application_sets_later_is_the_one_used() -> None:
    """pyobs extracts with OpenTelemetry's global propagator as it is at request time: an
    application that calls set_global_textmap() after pyobs started is honoured."""
    import_or_require("opentelemetry.propagators.b3")
    from opentelemetry import propagate
    from opentelemetry.propagators.b3 import B3MultiFormat

    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client

    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"]())
    exporter = span_exporter()
    exporter.clear()
    before = propagate.get_global_textmap()
    try:
        assert client.get("/items/1", B3_MULTI).status == 200
        propagate.set_global_textmap(B3MultiFormat())
        assert client.get("/items/2", B3_MULTI).status == 200
        assert client.get("/items/3", W3C).status == 200
    finally:
        propagate.set_global_textmap(before)
    first, second, third = exporter.get_finished_spans()
    assert format(first.context.trace_id, "032x") != B3_TRACE_ID
    assert format(second.context.trace_id, "032x") == B3_TRACE_ID
    assert second.parent is not None and format(second.parent.span_id, "016x") == B3_SPAN_ID
    assert format(third.context.trace_id, "032x") != TRACE_ID


def test_otel_propagators_unknown_name_fails_setup() -> None:
    """A misspelled propagator fails setup() with the variable and the accepted names."""
    with pytest.raises(ConfigError, match=r"OTEL_PROPAGATORS='b3mutli'.*b3multi.*jaeger"):
        load_config(env={"OTEL_PROPAGATORS": "b3mutli"})


# --- resource and service name ----------------------------------------------------------


def test_otel_resource_attributes_reach_span_resource_logs_and_pyobs_info() -> None:
    """OTEL_RESOURCE_ATTRIBUTES: every pair on the span resource (values percent-decoded);
    its service.name/version/environment also in every log line and in pyobs_info."""
    value = (
        "service.name=checkout,service.version=2.1.0,deployment.environment.name=prod,"
        "team=blue%20team,broken-pair"
    )
    data = run_app({"OTEL_RESOURCE_ATTRIBUTES": value}, [("/items/1", {})])
    (span,) = data["spans"]
    resource = span["resource"]["attributes"]
    assert resource["service.name"] == "checkout"
    assert resource["service.version"] == "2.1.0"
    assert resource["deployment.environment.name"] == "prod"
    assert resource["team"] == "blue team"
    (access,) = _access(data)
    assert (access["service.name"], access["service.version"]) == ("checkout", "2.1.0")
    assert access["service.environment"] == "prod"
    info = _info_labels(data["page"])
    assert info["service_name"] == "checkout"
    assert info["service_version"] == "2.1.0"
    assert info["deployment_environment"] == "prod"


@pytest.mark.parametrize(
    ("env", "option", "expected"),
    [
        ({}, None, "unknown_service"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource"}, None, "from-resource"),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource", "OTEL_SERVICE_NAME": "otel"},
            None,
            "otel",
        ),
        (
            {
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource",
                "OTEL_SERVICE_NAME": "otel",
                "PYOBS_SERVICE_NAME": "pyobs-env",
            },
            None,
            "pyobs-env",
        ),
        (
            {
                "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource",
                "OTEL_SERVICE_NAME": "otel",
                "PYOBS_SERVICE_NAME": "pyobs-env",
            },
            "keyword",
            "keyword",
        ),
    ],
)
def test_otel_service_name_precedence_is_one_name_everywhere(
    env: dict[str, str], option: str | None, expected: str
) -> None:
    """OTEL_SERVICE_NAME: keyword > PYOBS_SERVICE_NAME > OTEL_SERVICE_NAME >
    OTEL_RESOURCE_ATTRIBUTES' service.name > unknown_service, and the span resource, the log
    lines and pyobs_info all carry the same name."""
    options = {"service_name": option} if option else {}
    data = run_app(env, [("/items/1", {})], options=options)
    (span,) = data["spans"]
    assert span["resource"]["attributes"]["service.name"] == expected
    assert {line["service.name"] for line in data["logs"]} == {expected}
    assert _info_labels(data["page"])["service_name"] == expected


def test_otel_experimental_resource_detectors_add_their_attributes() -> None:
    """OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process,os: the span resource gains the process
    and OS attributes the SDK's detectors find; without it, it does not."""
    from importlib.metadata import entry_points

    # The SDK's os detector exists since 1.27; on older SDKs only process is asked for.
    has_os = "os" in {e.name for e in entry_points(group="opentelemetry_resource_detector")}
    detectors = "process,os" if has_os else "process"
    data = run_app({"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": detectors}, [("/items/1", {})])
    (span,) = data["spans"]
    resource = span["resource"]["attributes"]
    assert resource["process.pid"] == data["pid"]
    if has_os:
        assert resource["os.type"] == sys.platform.rstrip("0123456789")
    assert resource["service.name"] == "unknown_service"  # a detector does not rename it
    plain = run_app({}, [("/items/1", {})])
    assert "process.pid" not in plain["spans"][0]["resource"]["attributes"]


def test_an_adopted_provider_naming_the_service_otherwise_is_warned_about() -> None:
    """When the application installed its own TracerProvider, pyobs keeps it; if its
    resource names the service unlike pyobs's logs, setup() warns once naming both."""
    preamble = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(
            TracerProvider(resource=Resource.create({"service.name": "app-named"})))
        """
    )
    data = run_app(
        {}, [("/items/1", {})], options={"service_name": "pyobs-named"}, preamble=preamble
    )
    (span,) = data["spans"]
    assert span["resource"]["attributes"]["service.name"] == "app-named"  # adopted, untouched
    warnings = [line["message"] for line in data["logs"] if line["log.level"] == "warning"]
    assert len(warnings) == 1 and "'app-named'" in warnings[0] and "'pyobs-named'" in warnings[0]
    same = run_app({}, [("/items/1", {})], options={"service_name": "app-named"}, preamble=preamble)
    assert [line for line in same["logs"] if line["log.level"] == "warning"] == []


# --- OTEL_SDK_DISABLED ------------------------------------------------------------------


def test_otel_sdk_disabled_turns_tracing_off_but_not_metrics_or_logs() -> None:
    """OTEL_SDK_DISABLED=true (any case): no tracer provider and no span even with an
    exporter configured; requests are still counted and access-logged, without trace ids."""
    for value in ("true", "TRUE"):
        env = {"OTEL_SDK_DISABLED": value, "OTEL_TRACES_EXPORTER": "console"}
        data = run_app(env, [("/items/1", W3C), ("/items/2", {})])
        assert data["spans"] == []
        assert '"trace_id"' not in data["stderr"]  # the console exporter wrote nothing
        access = _access(data)
        assert [line["http.response.status_code"] for line in access] == [200, 200]
        assert all("trace.id" not in line for line in access)
        assert (
            'http_server_request_duration_seconds_count{http_request_method="GET",'
            'http_response_status_code="200",http_route="/items/<int:i>"} 2.0'
        ) in data["page"]
    assert load_config(env={"OTEL_SDK_DISABLED": "false"}).tracing is True
    with pytest.raises(ConfigError, match=r"OTEL_SDK_DISABLED='yes'.*true or false"):
        load_config(env={"OTEL_SDK_DISABLED": "yes"})


# --- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG ----------------------------------------

# TraceIdRatioBased decides on a trace id's lower 64 bits: LOW is under any ratio > 0, HIGH
# over any ratio < 1. The upper halves differ so that every case has its own trace.
LOW = "0000000000000001"
HIGH = "fffffffffffffff0"


@pytest.mark.parametrize(
    ("sampler", "arg", "sampled"),
    [
        ("always_on", None, {"root", "low-yes", "low-no", "high-yes", "high-no"}),
        ("always_off", None, set()),
        ("parentbased_always_on", None, {"root", "low-yes", "high-yes"}),
        ("parentbased_always_off", None, {"low-yes", "high-yes"}),
        ("traceidratio", "0.5", {"low-yes", "low-no"}),
        ("traceidratio", "0", set()),
        ("traceidratio", "1", {"root", "low-yes", "low-no", "high-yes", "high-no"}),
        ("parentbased_traceidratio", "0.5", {"low-yes", "high-yes"}),
        ("parentbased_traceidratio", "0", {"low-yes", "high-yes"}),
    ],
)
def test_otel_traces_sampler_and_arg_decide_like_the_sdk(
    sampler: str, arg: str | None, sampled: set[str]
) -> None:
    """OTEL_TRACES_SAMPLER[_ARG]: every SDK sampler decides which SERVER spans are recorded
    (parent sampled yes/no, trace id under/over the ratio, or no parent); unsampled
    requests still log their trace id."""
    cases = {
        "low-yes": f"00-0af7651916cd43d1{LOW}-{PARENT_ID}-01",
        "low-no": f"00-0af7651916cd43d2{LOW}-{PARENT_ID}-00",
        "high-yes": f"00-0af7651916cd43d3{HIGH}-{PARENT_ID}-01",
        "high-no": f"00-0af7651916cd43d4{HIGH}-{PARENT_ID}-00",
    }
    requests: list[tuple[str, dict[str, str]]] = [
        (f"/items/{i}", {"traceparent": value}) for i, value in enumerate(cases.values())
    ]
    requests.append(("/items/99", {}))
    env = {"OTEL_TRACES_SAMPLER": sampler}
    if arg is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    data = run_app(env, requests)
    got = {name for name, tp in cases.items() if tp.split("-")[1] in _trace_ids(data["spans"])}
    roots = [s for s in data["spans"] if _parent(s) is None]
    if roots:
        got.add("root")
    if arg == "0.5":
        got.discard("root")  # a fresh trace id: sampled or not by chance
    assert got == sampled
    access = _access(data)
    assert len(access) == 5 and all(len(line["trace.id"]) == 32 for line in access)


def test_otel_traces_sampler_bad_values_fail_setup() -> None:
    """An unknown sampler or a ratio outside 0..1 fails setup() naming the variable."""
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_SAMPLER='sometimes'.*traceidratio"):
        load_config(env={"OTEL_TRACES_SAMPLER": "sometimes"})
    for bad in ("half", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"OTEL_TRACES_SAMPLER_ARG=.*0\.0 to 1\.0"):
            load_config(env={"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": bad})
    # The argument of a sampler that takes none is ignored, as in the SDK.
    load_config(env={"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "x"})


# --- OTEL_PYTHON_EXCLUDED_URLS ------------------------------------------------------------


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_otel_python_excluded_urls_silence_matching_requests(
    framework: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OTEL_PYTHON_EXCLUDED_URLS: regexes *searched* in the full URL (scheme://host/path);
    a match gets no metrics, span or access log, like PYOBS_EXCLUDED_PATHS."""
    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client, json_lines

    import_or_require(framework)
    # Searched, not fully matched: "items/7$" drops /items/7 but not /items/70; the empty
    # item is ignored; "//internal\." matches the host part of the URL only.
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", r"items/7$, ,//internal\.example")
    client = Client(framework, FACTORIES[framework]())
    exporter = span_exporter()
    exporter.clear()
    capsys.readouterr()
    assert client.get("/items/7").status == 200
    assert client.get("/items/8", {"host": "internal.example"}).status == 200
    assert client.get("/items/70").status == 200
    paths = [s.attributes["url.path"] for s in exporter.get_finished_spans()]
    assert paths == ["/items/70"]
    access = [r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.access"]
    assert [r["url.path"] for r in access] == ["/items/70"]
    page = client.get("/metrics").text
    counts = [
        line
        for line in page.splitlines()
        if line.startswith("http_server_request_duration_seconds_count{")
    ]
    assert len(counts) == 1 and counts[0].endswith(" 1.0"), counts


def test_otel_python_framework_excluded_urls_replace_the_generic_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_PYTHON_FLASK_EXCLUDED_URLS, when set, replaces OTEL_PYTHON_EXCLUDED_URLS for a
    Flask app (as contrib's get_excluded_urls does); a bad regex fails setup()."""
    from pyobs.testing import span_exporter
    from tests.core_apps import FACTORIES, Client

    import_or_require("flask")
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "items/1")
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "items/2")
    client = Client("flask", FACTORIES["flask"]())
    exporter = span_exporter()
    exporter.clear()
    for i in (1, 2):
        assert client.get(f"/items/{i}").status == 200
    assert [s.attributes["url.path"] for s in exporter.get_finished_spans()] == ["/items/1"]
    with pytest.raises(ConfigError, match=r"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS='\(oops'"):
        load_config(env={"OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "(oops"})


# --- exporters ------------------------------------------------------------------------------


@pytest.fixture
def otlp_http() -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP receiver, stopped after the test."""
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    receiver = OtlpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.mark.slow
def test_otel_traces_exporter_names_where_spans_go(otlp_http: OtlpReceiver) -> None:
    """OTEL_TRACES_EXPORTER: console (stderr JSON), otlp, both, or none (not even with an
    OTLP endpoint set); unset with an endpoint means otlp; an unknown name fails setup()."""
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_http.port}"}
    seen: dict[str, tuple[int, int]] = {}
    for value in ("console", "otlp", "console,otlp", "none", ""):
        env = dict(endpoint)
        if value:
            env["OTEL_TRACES_EXPORTER"] = value
        before = len(otlp_http.spans)
        data = run_app(env, [("/items/1", {})])
        console = [line for line in data["stderr"].splitlines() if line.startswith('{"name"')]
        seen[value] = (len(console), len(otlp_http.spans) - before)
    assert seen == {
        "console": (1, 0),
        "otlp": (0, 1),
        "console,otlp": (1, 1),
        "none": (0, 0),
        "": (0, 1),
    }
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER='zipkin_jsn'.*otlp, console"):
        load_config(env={"OTEL_TRACES_EXPORTER": "zipkin_jsn"})


@pytest.mark.slow
def test_otel_exporter_otlp_variables_are_read_by_the_exporter(
    otlp_http: OtlpReceiver,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT gets /v1/traces appended, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    is used as it is, OTEL_EXPORTER_OTLP_HEADERS arrive (percent-decoded); the spans carry
    the resource; a protocol pyobs cannot speak fails setup()."""
    base = f"http://127.0.0.1:{otlp_http.port}"
    run_app(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": base,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue,authorization=Bearer%20abc",
            "OTEL_SERVICE_NAME": "shop",
        },
        [("/items/1", {})],
    )
    run_app(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/unused",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{base}/custom/traces",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-tenant=green",
        },
        [("/items/2", {})],
    )
    first, second = otlp_http.posts
    assert first["path"] == "/v1/traces"
    assert first["headers"]["x-tenant"] == "blue"
    assert first["headers"]["authorization"] == "Bearer abc"
    (span,) = first["spans"]
    assert (span["name"], span["resource"]["service.name"]) == ("GET /items/<int:i>", "shop")
    assert second["path"] == "/custom/traces"
    assert second["headers"]["x-tenant"] == "green"
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        load_config(env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_otel_exporter_otlp_protocol_grpc_sends_over_grpc() -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: spans reach a gRPC trace service, with headers."""
    import_or_require("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received: list[tuple[dict[str, str], list[dict[str, Any]]]] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append((dict(context.invocation_metadata()), decode_spans(request)))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        run_app(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=red",
            },
            [("/items/1", {})],
        )
    finally:
        server.stop(grace=None)
    ((metadata, spans),) = received
    assert metadata["x-tenant"] == "red"
    assert [s["name"] for s in spans] == ["GET /items/<int:i>"]


def test_otel_bsp_variables_apply_because_otlp_uses_the_batch_processor(
    otlp_http: OtlpReceiver,
) -> None:
    """OTLP export goes through pyobs's counting batch span processor, so OTEL_BSP_* apply:
    with OTEL_BSP_MAX_EXPORT_BATCH_SIZE=2, five spans arrive in batches of at most two; the
    console exporter stays synchronous (the SDK's SimpleSpanProcessor)."""
    data = run_app(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_http.port}",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
            "OTEL_TRACES_EXPORTER": "otlp,console",
        },
        [(f"/items/{i}", {}) for i in range(5)],
        preamble=textwrap.dedent(
            """
            import atexit, sys
            def _report():
                from opentelemetry import trace
                names = [type(p).__name__ for p in
                         trace.get_tracer_provider()._active_span_processor._span_processors]
                print("processors=" + ",".join(names), file=sys.stderr)
            atexit.register(_report)
            """
        ),
    )
    assert len(otlp_http.spans) == 5
    assert all(len(post["spans"]) <= 2 for post in otlp_http.posts), otlp_http.posts
    assert len(otlp_http.posts) >= 3
    assert "processors=CountingBatchSpanProcessor,SimpleSpanProcessor" in data["stderr"]


def test_setup_keeps_working_in_process_with_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """setup() in the test process reads the OTEL identity variables into its Config."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=res,service.version=9")
    config = pyobs.setup()
    assert (config.service_name, config.service_version) == ("res", "9")


# --- end to end: a real OTLP receiver (Jaeger v2) -------------------------------------------


@pytest.mark.service
def test_spans_reach_jaeger_over_otlp_http(jaeger: Jaeger) -> None:
    """End to end: with only OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SERVICE_NAME set, the
    request's SERVER span arrives in Jaeger over OTLP/HTTP and is found through Jaeger's
    query API under the caller's trace id, service name, route and parent."""
    run_app(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.http_endpoint, "OTEL_SERVICE_NAME": "jaeger-e2e"},
        [("/items/5", W3C)],
    )
    # The exporter flushed at exit; Jaeger stores asynchronously.
    trace_data = jaeger.wait_trace(TRACE_ID)
    (span,) = trace_data["spans"]
    assert span["operationName"] == "GET /items/<int:i>"
    assert trace_data["processes"][span["processID"]]["serviceName"] == "jaeger-e2e"
    tags = {tag["key"]: tag["value"] for tag in span["tags"]}
    assert tags["http.route"] == "/items/<int:i>"
    assert tags["span.kind"] == "server"
    assert [(r["refType"], r["spanID"]) for r in span["references"]] == [("CHILD_OF", PARENT_ID)]
    assert "jaeger-e2e" in jaeger.services()
