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
import re
import shutil
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
import tomllib

from tests.conftest import import_or_require, require_service
from tests.helpers import health_ready, kill_tree, start_server
from tests.stack import validate
from tests.stack.helpers import ROOT, load_script

GUARD = Path(__file__).with_name("only_installed.py")


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

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True

    logstash = Server(("127.0.0.1", 0), Lines)
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
                src,
                app / source,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,  # examples/requirements/ is copied before examples/
            )
        else:
            (app / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, app / source)
    return app


def image_requirements(service: dict[str, Any], tmp_path: Path) -> Path:
    """A JSON file with what the service's image installs (its PYOBS_EXTRAS build arg)."""
    requirements = load_script("requirements")
    extras = str(service["build"]["args"]["PYOBS_EXTRAS"]).split(",")
    with (ROOT / "pyproject.toml").open("rb") as file:
        data = tomllib.load(file)
    path = tmp_path / f"requirements-{len(list(tmp_path.glob('requirements-*')))}.json"
    path.write_text(json.dumps(requirements.requirements(data, extras)))
    return path


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
    import_or_require(framework)  # examples/<framework>/ is named after its module
    box, logstash_port, otlp_port = received
    model, _ = validate.load_compose(ROOT, validate.example_env(ROOT))
    name = validate.example_service(framework)
    service = validate.services(model)[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.update(validate.environment(service))
    assert env["PYOBS_LOGSTASH_URL"] == "http://logstash:8080"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    # The stand-in here reads JSON lines; the http input's protocol has its own tests.
    del env["PYOBS_LOGSTASH_URL"]
    env.update(
        PYOBS_LOGSTASH_HOST="127.0.0.1",
        PYOBS_LOGSTASH_PORT=str(logstash_port),
        PYOBS_LOG_SPOOL_DIR=str(tmp_path / "spool"),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_BSP_SCHEDULE_DELAY="200",  # test only: export spans quickly
        PYTHONPATH=str(tmp_path / "app"),
    )
    app = image_root(tmp_path)
    assert service["command"][0] == "python"

    def command(port: int) -> list[str]:
        parts = [
            "127.0.0.1" if part == "0.0.0.0" else str(port) if part == "8000" else part
            for part in service["command"]
        ]
        # Only what the image installs is importable: a missing extra fails here too.
        parts[:1] = [sys.executable, str(GUARD), str(image_requirements(service, tmp_path))]
        return parts

    stderr_path = tmp_path / "stderr.log"

    def service_output() -> str:
        return stderr_path.read_text(errors="replace")[-3000:]

    process, port = start_server(
        command,
        health_ready,
        tmp_path / "stdout.log",
        stderr_log=stderr_path,
        cwd=app,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        check = [part.replace("8000", str(port)) for part in service["healthcheck"]["test"]]
        assert check[:2] == ["CMD", "python"]
        assert subprocess.run([sys.executable, *check[2:]], timeout=10).returncode == 0

        traffic = validate.services(model)["traffic"]
        assert f"http://{name}:8000" in traffic["command"]
        assert traffic["command"][:3] == ["python", "-m", "pyobs._traffic"]
        result = subprocess.run(
            [
                *(sys.executable, str(GUARD), str(image_requirements(traffic, tmp_path))),
                *("-m", "pyobs._traffic", base, "--rate", "20", "--duration", "2"),
            ],
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
        assert wait_for(lambda: box.otlp_posts, 15, "spans on the OTLP endpoint"), service_output()
        path, content_type, size = box.otlp_posts[0]
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        assert size > 0
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            assert b"http_server_request_duration_seconds" in response.read()
    finally:
        kill_tree(process, grace=10)


def test_an_example_missing_from_its_extra_fails_as_in_the_image(tmp_path: Path) -> None:
    """Run with only another framework's extra installed, the Flask example cannot start."""
    import_or_require("flask")
    requirements = load_script("requirements")
    with (ROOT / "pyproject.toml").open("rb") as file:
        data = tomllib.load(file)
    allowed = tmp_path / "allowed.json"
    allowed.write_text(json.dumps(requirements.requirements(data, ["fastapi", "otlp"])))
    result = subprocess.run(
        [sys.executable, str(GUARD), str(allowed), "examples/flask/app.py", "--port", "1"],
        cwd=image_root(tmp_path),
        env={**os.environ, "PYTHONPATH": str(tmp_path / "app")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError: import of flask halted" in result.stderr


NETWORK_ERRORS = ("NewConnectionError", "Temporary failure in name resolution", "ProxyError")


def image_requirement_sets() -> dict[str, list[str]]:
    """What each distinct PYOBS_EXTRAS build argument of the compose file installs."""
    requirements = load_script("requirements")
    with (ROOT / "pyproject.toml").open("rb") as file:
        data = tomllib.load(file)
    model, _ = validate.load_compose(ROOT, validate.example_env(ROOT))
    extras = {
        str(service["build"]["args"]["PYOBS_EXTRAS"])
        for service in validate.services(model).values()
        if isinstance(service.get("build"), dict)
    }
    return {extra: requirements.requirements(data, extra.split(",")) for extra in sorted(extras)}


def test_image_requirements_resolve_for_the_image_python(tmp_path: Path) -> None:
    """pip finds wheels for every image's requirements on the image's Python (linux x86_64).

    One dry run against the package index for the union of all images' requirements
    (faster than one per image; a conflict between two frameworks would show here
    although separate images would not have it). It proves `pip install` in the
    Dockerfile resolves; it does not build the image.
    """
    sets = image_requirement_sets()
    assert len(sets) >= 3, sets
    wanted = sorted({requirement for group in sets.values() for requirement in group})
    python = validate.parse_env_file(ROOT / ".env.example")["PYTHON_VERSION"]
    major_minor = ".".join(python.split(".")[:2])
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--quiet"),
            *("--disable-pip-version-check", "--ignore-installed", "--only-binary=:all:"),
            *("--python-version", major_minor, "--implementation", "cp"),
            *("--platform", "manylinux_2_17_x86_64", "--target", str(tmp_path / "t")),
            *("--report", str(tmp_path / "report.json"), *wanted),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    require_service(
        not any(error in output for error in NETWORK_ERRORS), "the package index is not reachable"
    )
    assert result.returncode == 0, output[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    installed = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower() for item in report["install"]
    }
    for requirement in wanted:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in installed, requirement
