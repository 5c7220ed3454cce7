"""`pyobs demo`: example services with traffic, a block that says where they are, clean stops."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import import_or_require
from tests.helpers import (
    alive,
    default_sigint,
    descendants,
    kill_tree,
    listening_socket,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_NAMES = (
    "http_server_request_duration_seconds_bucket",
    "http_server_active_requests",
    "http_server_response_body_size_bytes",
    "pyobs_http_server_exceptions_total",
    "pyobs_info",
    "process_cpu_seconds_total",
)
SERVICE_LINE = re.compile(r"^  (example-[\w-]+)\s+(http://127\.0\.0\.1:\d+)$", re.M)
BLOCK_END = "=" * 72


def _blocks(stderr: str) -> list[dict[str, str]]:
    """Each block the demo printed on stderr, as service name -> base URL."""
    found = []
    for block in stderr.split(BLOCK_END + "\n")[1:]:
        services = dict(SERVICE_LINE.findall(block))
        if services:
            found.append(services)
    return found


@contextlib.contextmanager
def _demo(*args: str, stdout: Path, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``pyobs demo --port 0 ...`` with its output in files, ready for Ctrl-C.

    On failure or timeout the demo and every service it started are ended, including services
    that the demo could not stop itself.
    """
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyobs", "demo", "--port", "0", *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=default_sigint,  # SIGINT may be ignored where the suite runs
        )
    seen: list[int] = []
    try:
        yield proc
    finally:
        seen = descendants(proc.pid)
        kill_tree(proc)
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _up(proc: subprocess.Popen[bytes], stderr: Path) -> dict[str, str]:
    """Wait for the start block; the services it lists."""

    def listed() -> dict[str, str] | None:
        assert proc.poll() is None, stderr.read_text()[-3000:]
        blocks = _blocks(stderr.read_text(errors="replace"))
        return blocks[0] if blocks else None

    services: dict[str, str] = wait_until(listed, 60, "the demo's start block")
    return services


def _traffic_seen(base: str) -> str | None:
    """The service's metrics page once it has recorded traffic."""
    page = _metrics(base)
    return page if "http_server_request_duration_seconds_bucket" in page else None


def _metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.slow
def test_demo_runs_examples_with_traffic_and_stops(tmp_path: Path) -> None:
    """A block on stderr lists each service and its /metrics; stdout is JSON lines with traces."""
    import_or_require("flask")
    import_or_require("fastapi")
    out, err = tmp_path / "out", tmp_path / "err"
    args = ("--duration", "8", "--framework", "flask,fastapi", "--rate", "20")
    with _demo(*args, stdout=out, stderr=err) as proc:
        services = _up(proc, err)
        assert set(services) == {"example-flask", "example-fastapi"}
        pages = {
            name: wait_until(
                functools.partial(_traffic_seen, base),
                30,
                f"{name}'s traffic in /metrics",
            )
            for name, base in services.items()
        }
        assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    for page in pages.values():
        for name in CONTRACT_NAMES:
            assert name in page, name
    stderr = err.read_text()
    assert f"{services['example-flask']}/metrics" in stderr
    assert f"curl {services['example-flask']}/items/1" in stderr
    end = _blocks(stderr)[-1]
    assert end == services and "every service has ended" in stderr  # the end block repeats it
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    access = [r for r in records if r.get("log.logger") == "pyobs.access"]
    assert len(access) > 20
    assert all(len(r["trace.id"]) == 32 for r in access)
    assert {r["service.name"] for r in access} == {"example-flask", "example-fastapi"}
    statuses = {r["http.response.status_code"] for r in access}
    assert {200, 404, 500} <= statuses
    assert any("metrics at" in r["message"] for r in records)
    # Spans go to stderr as one JSON object per line.
    spans = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"name"')]
    assert spans and all(s["kind"] == "SpanKind.SERVER" for s in spans)


@pytest.mark.slow
def test_demo_default_is_the_two_services_the_readme_names(tmp_path: Path) -> None:
    """Without --framework the demo runs Flask and FastAPI, not every installed example."""
    import_or_require("flask")
    import_or_require("fastapi")
    import_or_require("starlette")  # installed with FastAPI: once the third service
    out, err = tmp_path / "out", tmp_path / "err"
    with _demo("--duration", "2", stdout=out, stderr=err) as proc:
        assert proc.wait(timeout=90) == 0, err.read_text()[-3000:]
    blocks = _blocks(err.read_text())
    assert [set(b) for b in blocks] == [{"example-flask", "example-fastapi"}] * 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_stops_every_service_on_signal(sig: signal.Signals, tmp_path: Path) -> None:
    """Ctrl-C and SIGTERM stop the demo with exit code 0, and no service process is left."""
    import_or_require("flask")
    import_or_require("fastapi")
    out, err = tmp_path / "out", tmp_path / "err"
    with _demo("--framework", "flask,fastapi", stdout=out, stderr=err) as proc:
        services = _up(proc, err)
        children = descendants(proc.pid)
        assert len(children) >= len(services) == 2
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, err.read_text()[-2000:]
    assert not [pid for pid in children if alive(pid)]
    assert "every service has ended" in err.read_text()
    assert all(json.loads(line) for line in out.read_text().splitlines() if line.strip())


def test_a_taken_port_is_named_with_the_fix(tmp_path: Path) -> None:
    """--port on a port another program holds: exit 1, naming the port and --port 0."""
    import_or_require("flask")
    with listening_socket() as held:
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pyobs", "demo", "--framework", "flask", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    (line,) = [json.loads(line) for line in result.stdout.splitlines() if str(port) in line]
    assert line["log.level"] == "error"
    assert f"port(s) {port} already in use" in line["message"] and "--port 0" in line["message"]
    assert f"pyobs demo: port(s) {port} already in use" in result.stderr
