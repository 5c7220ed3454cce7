"""A tiny Flask app under real gunicorn (one sync worker) for the fault and hostile-input suites.

Logs are read from the worker's stdout (JSON lines), spans from its stderr (the console
exporter writes one JSON span per line), metrics from the app's own /metrics. A fault is
armed inside the worker by ``PROBE_FAULT`` (see APP).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import import_or_require

ROOT = Path(__file__).resolve().parents[1]
BOOT_TIMEOUT = 30.0
BIND_ATTEMPTS = 3

APP = textwrap.dedent(
    """
    import logging
    import os

    from flask import Flask, Response

    import pyobs.flask

    app = Flask("probe")


    @app.get("/items/<int:item_id>")
    def item(item_id):
        return {"id": item_id}


    @app.get("/boom")
    def boom():
        raise RuntimeError(
            "db postgres://app:s3cret-pw@db.internal/prod refused; Bearer abcdef0123456789"
        )


    @app.route("/<path:anything>")
    def anything(anything):
        return "ok"


    pyobs.flask.instrument(app)

    FAULT = os.environ.get("PROBE_FAULT", "")
    if FAULT == "span_on_start":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import SpanProcessor

        class Raising(SpanProcessor):
            def on_start(self, span, parent_context=None):
                raise RuntimeError("span processor broke")

        trace.get_tracer_provider().add_span_processor(Raising())
    elif FAULT == "log_handler":

        class RaisingHandler(logging.Handler):
            def emit(self, record):
                raise RuntimeError("log handler broke")

        logging.getLogger().addHandler(RaisingHandler())
    elif FAULT == "metrics":
        from pyobs.metrics import PyobsMetrics

        def broken(self, *args, **kwargs):
            raise AttributeError("'MutexValue' object has no attribute '_value'")

        from pyobs import _internals

        _internals.prom_request = broken
        PyobsMetrics._public_observe = broken
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gunicorn:
    """A running gunicorn with the probe app, and what its worker wrote."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    out: Path
    err: Path

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request(method, path, headers={"Connection": "close", **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Send raw bytes (a request http.client would refuse to build); the reply's bytes."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def sample(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.request("GET", "/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def logs(self) -> list[dict[str, Any]]:
        return _json_lines(self.out)

    def access_logs(self) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("log.logger") == "pyobs.access"]

    def spans(self) -> list[dict[str, Any]]:
        return [r for r in _json_lines(self.err) if "context" in r and "kind" in r]

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_for(check: Any, timeout: float = 10.0) -> bool:
    """Poll ``check`` (bounded): the worker writes its lines just after the response."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


@contextmanager
def gunicorn(tmp_path: Path, **env: str) -> Iterator[Gunicorn]:
    """The probe app under gunicorn, one sync worker, on a free loopback port (retried)."""
    import_or_require("gunicorn")
    import_or_require("flask")
    (tmp_path / "probe_app.py").write_text(APP)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    base.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full_env = {
        **base,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}",
        "PYOBS_SERVICE_NAME": "probe",
        "PYOBS_LOG_HANDLER": "always",
        "OTEL_TRACES_EXPORTER": "console",
        **env,
    }
    for attempt in range(BIND_ATTEMPTS):
        port = _free_port()
        out, err = tmp_path / f"out-{attempt}.log", tmp_path / f"err-{attempt}.log"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
                 "--graceful-timeout", "5", "probe_app:app"],
                cwd=tmp_path, env=full_env, stdout=stdout, stderr=stderr,
            )  # fmt: skip
        server = Gunicorn(proc, "127.0.0.1", port, out, err)
        try:
            if _wait_up(server):
                yield server
                return
            if "Address already in use" not in server.stderr():
                raise AssertionError(f"gunicorn did not start: {server.stderr()[-3000:]}")
        finally:
            _stop(proc)
    raise AssertionError(f"gunicorn found no free port in {BIND_ATTEMPTS} attempts")


def _wait_up(server: Gunicorn) -> bool:
    deadline = time.monotonic() + BOOT_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
