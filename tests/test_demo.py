"""`pyobs demo`: example services with traffic, JSON on stdout, live /metrics, clean stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import import_or_require

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_NAMES = (
    "http_server_request_duration_seconds_bucket",
    "http_server_active_requests",
    "http_server_response_body_size_bytes",
    "pyobs_http_server_exceptions_total",
    "pyobs_info",
    "process_cpu_seconds_total",
)


def free_base_port() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no two adjacent free ports")


def test_demo_runs_examples_with_traffic_and_stops() -> None:
    """The demo's stdout is JSON lines with trace ids; /metrics shows the contract's names."""
    import_or_require("flask")
    import_or_require("fastapi")
    port = free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyobs", "demo", "--port", str(port), "--duration", "8",
         "--framework", "flask,fastapi", "--rate", "20"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    pages: dict[int, str] = {}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(pages) < 2 and proc.poll() is None:
        for p in (port, port + 1):
            if p in pages:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=2) as r:
                    page = r.read().decode()
                if "http_server_request_duration_seconds_bucket" in page:
                    pages[p] = page
            except OSError:
                pass
        time.sleep(0.5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert len(pages) == 2, err[-3000:]
    for page in pages.values():
        for name in CONTRACT_NAMES:
            assert name in page, name
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    access = [r for r in records if r.get("log.logger") == "pyobs.access"]
    assert len(access) > 20
    assert all(len(r["trace.id"]) == 32 for r in access)
    assert {r["service.name"] for r in access} == {"example-flask", "example-fastapi"}
    statuses = {r["http.response.status_code"] for r in access}
    assert {200, 404, 500} <= statuses
    assert any("metrics at" in r["message"] for r in records)
    # Spans go to stderr as one JSON object per line.
    spans = [json.loads(line) for line in err.splitlines() if line.startswith('{"name"')]
    assert spans and all(s["kind"] == "SpanKind.SERVER" for s in spans)


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    """Ctrl-C (SIGINT) stops the demo and its services with exit code 0."""
    import_or_require("flask")
    port = free_base_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyobs", "demo", "--framework", "flask", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    with socket.socket() as s:  # the service is gone: its port is free again
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert all(json.loads(line) for line in out.splitlines() if line.strip())
