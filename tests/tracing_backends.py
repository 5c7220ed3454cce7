"""A real trace backend for the tests (Jaeger v2 on free loopback ports) and the traced service.

The binary is built by scripts/setup.d/40-jaeger.sh into ``.cache/jaeger``. One Jaeger runs
for the whole session (``jaeger`` fixture in tests/conftest.py), in-memory storage, with
OTLP over HTTP and gRPC and its query API. Tests keep apart by service name and trace id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import import_or_require
from tests.helpers import (
    PortTaken,
    http_status,
    kill_tree,
    listening_socket,
    port_taken_in,
    start_with_retry,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / ".cache" / "jaeger" / "bin" / "jaeger"

CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
{telemetry}
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_http}
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""

#: Jaeger's own metrics off (the default) or served for scraping on the ``metrics`` port,
#: as the stack's Prometheus scrapes them on the telemetry port.
NO_OWN_METRICS = "      level: none"
OWN_METRICS = """      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {metrics}"""


def missing_reason() -> str | None:
    """Why Jaeger cannot run here, or None."""
    if not BINARY.is_file():
        return "Jaeger is not built (scripts/setup.d/40-jaeger.sh)"
    return None


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a URL and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Jaeger:
    """A running Jaeger: where to send spans and where to read them back."""

    otlp_http: int
    otlp_grpc: int
    query: int
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def http_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for http/protobuf."""
        return f"http://127.0.0.1:{self.otlp_http}"

    @property
    def grpc_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for grpc."""
        return f"http://127.0.0.1:{self.otlp_grpc}"

    def env(self, service: str, protocol: str = "http/protobuf") -> dict[str, str]:
        """The OTEL_* variables that send a service's spans here."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": service,
        }

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace (Jaeger's JSON) with that id, or None while it is not stored."""
        try:
            data = get_json(f"http://127.0.0.1:{self.query}/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError:  # 404 until stored
            return None
        return dict(data[0]) if data else None

    def wait_trace(self, trace_id: str, spans: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        """The trace once it holds at least ``spans`` spans; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        found: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            found = self.trace(trace_id)
            if found is not None and len(found["spans"]) >= spans:
                return found
            time.sleep(0.1)
        raise AssertionError(f"trace {trace_id} not in Jaeger with {spans} span(s): {found}")

    def traces(self, service: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every stored trace that has a span of ``service``."""
        params = urllib.parse.urlencode({"service": service, "limit": limit, "lookback": "1h"})
        data = get_json(f"http://127.0.0.1:{self.query}/api/traces?{params}")["data"]
        return list(data or [])

    def services(self) -> list[str]:
        """Service names Jaeger has seen."""
        return list(get_json(f"http://127.0.0.1:{self.query}/api/services")["data"] or [])

    def stop(self) -> None:
        """End the process (and anything it started)."""
        kill_tree(self.proc)


def start_jaeger(
    workdir: Path | None = None,
    render: Callable[[dict[str, int]], str] | None = None,
    own_metrics: bool = False,
    prefix: tuple[str, ...] = (),
) -> Jaeger:
    """Start Jaeger on free loopback ports, again on others when a bind loses a race.

    ``render(ports)`` makes the configuration from the ports (keys ``otlp_http``,
    ``otlp_grpc``, ``query``, ``query_grpc``, ``health``, ``metrics``); the default is the
    in-memory CONFIG above, which serves Jaeger's own metrics on ``ports["metrics"]`` when
    ``own_metrics`` is set. ``prefix`` goes before the command (a benchmark pins it to a core
    with ``taskset``). ``stop()`` ends it at any time (a test may stop it midway).
    """
    directory = workdir or Path(tempfile.mkdtemp(prefix="pyobs-jaeger-"))
    names = ("otlp_http", "otlp_grpc", "query", "query_grpc", "health", "metrics")

    def attempt(*picked: int) -> Jaeger:
        ports = dict(zip(names, picked, strict=True))
        telemetry = (OWN_METRICS if own_metrics else NO_OWN_METRICS).format(**ports)
        text = render(ports) if render else CONFIG.format(telemetry=telemetry, **ports)
        config = directory / f"jaeger-{ports['query']}.yaml"
        config.write_text(text)
        log = directory / f"jaeger-{ports['query']}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*prefix, str(BINARY), "--config", f"file:{config}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        jaeger = Jaeger(ports["otlp_http"], ports["otlp_grpc"], ports["query"], proc, log, ports)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    text = log.read_text(errors="replace")
                    if port_taken_in(text):
                        raise PortTaken(text[-300:])
                    raise RuntimeError(f"Jaeger exited {proc.returncode}: {text[-2000:]}")
                try:
                    jaeger.services()
                    if _listening(ports["otlp_grpc"]) and _listening(ports["otlp_http"]):
                        return jaeger
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"Jaeger not ready: {log.read_text(errors='replace')[-2000:]}")
        except BaseException:
            jaeger.stop()
            raise

    return start_with_retry(attempt, ports=len(names))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tags(item: dict[str, Any]) -> dict[str, Any]:
    """A Jaeger span's (or process's) tags as a dict."""
    return {tag["key"]: tag["value"] for tag in item.get("tags", [])}


def span_service(trace: dict[str, Any], span: dict[str, Any]) -> str:
    """The service name of a span in a Jaeger trace."""
    return str(trace["processes"][span["processID"]]["serviceName"])


def parent_id(span: dict[str, Any]) -> str | None:
    """The span id a Jaeger span is CHILD_OF, or None for a root span."""
    refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else None


# --- the instrumented service (tests/trace_app.py) ---------------------------------------


@dataclass
class Service:
    """A running instrumented service."""

    proc: subprocess.Popen[bytes]
    base: str
    output: Path
    metrics_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR under gunicorn

    def get_plain(self, path: str) -> int:
        """GET ``path`` with no trace context: the service starts the trace."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=15) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.read()
            return int(exc.code)

    def get(self, path: str, trace_id: str, parent: str) -> int:
        """GET ``path`` as part of trace ``trace_id`` (sampled), child of span ``parent``."""
        request = urllib.request.Request(self.base + path)
        request.add_header("traceparent", f"00-{trace_id}-{parent}-01")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.read()
            return int(exc.code)


def app_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a service: the test's, minus PYOBS_/OTEL_, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = str(ROOT)
    env["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # spans reach Jaeger within the test's patience
    env.update(extra)
    return env


@contextlib.contextmanager
def serve(
    tmp_path: Path, env: dict[str, str], workers: int = 0, name: str = "app"
) -> Iterator[Service]:
    """tests/trace_app.py on a loopback socket the kernel chose: Werkzeug (``workers=0``) or
    gunicorn with that many workers (multiprocess metrics). Ended on exit, also on failure."""
    import_or_require("flask")
    import_or_require("opentelemetry.instrumentation.requests")
    listener = listening_socket()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    full_env = app_env(env)
    metrics: Path | None = None
    if workers:
        import_or_require("gunicorn")
        metrics = tmp_path / f"{name}-metrics"
        metrics.mkdir()
        full_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        conf = tmp_path / f"{name}-gunicorn.conf.py"
        conf.write_text("from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa\n")
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(conf),
            "-w",
            str(workers),
            "-b",
            f"fd://{fd}",
            "--graceful-timeout",
            "5",
            "tests.trace_app:app",
        ]
    else:
        command = [sys.executable, "-m", "tests.trace_app", str(fd)]
    output = tmp_path / f"{name}.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(fd,),
            start_new_session=True,
        )
    listener.close()
    service = Service(proc, f"http://127.0.0.1:{port}", output, metrics)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited: {output.read_text()[-3000:]}")
            return http_status(service.base + "/health") == 200

        wait_until(up, 60, f"{name} to serve")
        yield service
    finally:
        kill_tree(proc, grace=10)


# --- a bare OTLP/HTTP receiver ---------------------------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free loopback port that decodes every export it answers.

    ``delay``: seconds spent on each export before answering (a slow collector).
    ``answer=False``: read each export and never answer until ``close()`` (a hung collector).
    ``decode=False``: only count the spans (a benchmark's receiver, kept cheap).
    """

    def __init__(
        self, delay: float = 0.0, answer: bool = True, hold: float = 60.0, decode: bool = True
    ) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.posts: list[dict[str, Any]] = []  # answered exports: path, headers, spans
        self.release = threading.Event()
        lock = threading.Lock()
        receiver = self
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not answer:
                    receiver.release.wait(hold)
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                scopes = [scope for rs in request.resource_spans for scope in rs.scope_spans]
                if delay:
                    time.sleep(delay)
                post = {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "count": sum(len(scope.spans) for scope in scopes),
                    "spans": decode_spans(request) if decode else [],
                }
                with lock:
                    receiver.posts.append(post)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, in arrival order."""
        return [span for post in list(self.posts) for span in post["spans"]]

    @property
    def span_count(self) -> int:
        """How many spans the answered exports carried."""
        return sum(post["count"] for post in list(self.posts))

    def close(self) -> None:
        """Release held exports and stop serving."""
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def decode_spans(request: Any) -> list[dict[str, Any]]:
    """Flatten an ExportTraceServiceRequest into spans with their resource attributes."""
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "kind": span.kind,
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                )
    return out
