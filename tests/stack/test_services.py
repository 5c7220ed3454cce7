"""The stack's Python services, started here the way their containers start them.

Each example runs from a copy of the image's /app (the Dockerfile's COPY sources,
with PYTHONPATH as the image sets it), with the command, environment and health
check of its compose service; only host names and ports are mapped to 127.0.0.1.
A local TCP listener stands in for Logstash and a local HTTP listener for Jaeger's
OTLP endpoint. This proves the wiring (command, env, shipping, export, health
check, traffic); it cannot prove the image builds or that the real Logstash and
Jaeger accept the data (checked only with Docker).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.stack import validate
from tests.stack.helpers import ROOT

FRAMEWORK_MODULES = {"flask-restful": "flask_restful", "django": "django"}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Received:
    """What the stand-ins for Logstash and Jaeger received."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.otlp_posts: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()


@pytest.fixture
def received() -> Iterator[tuple[Received, int, int]]:
    """Start a JSON-lines TCP listener (Logstash) and an OTLP/HTTP listener (Jaeger)."""
    box = Received()

    class Lines(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for raw in self.rfile:
                with box.lock:
                    box.lines.append(json.loads(raw))

    class Otlp(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            with box.lock:
                box.otlp_posts.append((self.path, self.headers.get("Content-Type", ""), length))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    socketserver.ThreadingTCPServer.daemon_threads = True
    logstash = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Lines)
    jaeger = ThreadingHTTPServer(("127.0.0.1", 0), Otlp)
    for server in (logstash, jaeger):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield box, logstash.server_address[1], jaeger.server_address[1]
    finally:
        for server in (logstash, jaeger):
            server.shutdown()
            server.server_close()


def image_root(tmp_path: Path) -> Path:
    """A copy of what the Dockerfile COPYs into /app."""
    app = tmp_path / "app"
    dockerfile = (ROOT / "examples" / "Dockerfile").read_text()
    for source in validate.dockerfile_copy_sources(dockerfile):
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(
                src, app / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            (app / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, app / source)
    return app


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll check() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def health(url: str) -> bool:
    """True when url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("framework", validate.example_frameworks(ROOT))
def test_example_service_runs_as_its_container_does(
    framework: str, tmp_path: Path, received: tuple[Received, int, int]
) -> None:
    """The example answers, passes its compose health check, ships logs and exports spans."""
    import_or_require(FRAMEWORK_MODULES.get(framework, framework))
    box, logstash_port, otlp_port = received
    model, _ = validate.load_compose(ROOT, validate.example_env(ROOT))
    name = f"example-{framework}"
    service = validate.services(model)[name]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.update(validate.environment(service))
    assert env["PYOBS_LOGSTASH_HOST"] == "logstash"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    env.update(
        PYOBS_LOGSTASH_HOST="127.0.0.1",
        PYOBS_LOGSTASH_PORT=str(logstash_port),
        PYOBS_LOG_SPOOL_DIR=str(tmp_path / "spool"),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_BSP_SCHEDULE_DELAY="200",  # test only: export spans quickly
        PYTHONPATH=str(tmp_path / "app"),
    )
    app = image_root(tmp_path)
    command = [
        "127.0.0.1" if part == "0.0.0.0" else str(port) if part == "8000" else part
        for part in service["command"]
    ]
    assert command[0] == "python"
    command[0] = sys.executable
    process = subprocess.Popen(
        command, cwd=app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: health(base + "/health") or process.poll() is not None, 30, "health")
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        check = [part.replace("8000", str(port)) for part in service["healthcheck"]["test"]]
        assert check[:2] == ["CMD", "python"]
        assert subprocess.run([sys.executable, *check[2:]], timeout=10).returncode == 0

        traffic = validate.services(model)["traffic"]["command"]
        assert f"http://{name}:8000" in traffic
        result = subprocess.run(
            [sys.executable, "-m", "pyobs._traffic", base, "--rate", "20", "--duration", "2"],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        statuses = json.loads(result.stdout.strip().splitlines()[-1])["statuses"]
        assert "0" not in statuses, statuses

        def shipped() -> list[dict[str, Any]]:
            with box.lock:
                return [
                    line
                    for line in box.lines
                    if line.get("log.logger") == "pyobs.access" and line.get("trace.id")
                ]

        access = wait_for(shipped, 15, "access logs on the Logstash port")
        assert {line["service.name"] for line in access} == {name}
        assert all(line["service.environment"] == "demo" for line in access)
        wait_for(lambda: box.otlp_posts, 15, "spans on the OTLP endpoint")
        path, content_type, size = box.otlp_posts[0]
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        assert size > 0
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"http_server_request_duration_seconds" in response.read()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
