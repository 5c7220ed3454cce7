"""Real Prometheus and Alertmanager on free loopback ports, plus small helpers for the tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tests.helpers import (
    PortTaken,
    free_port,
    http_status,
    kill_tree,
    port_taken_in,
    serving,
    start_with_retry,
)

__all__ = ["free_port"]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"


def tool(name: str) -> str:
    """Absolute path of a command-line tool; skip (fail in CI) when it is not installed."""
    path = shutil.which(name)
    require_service(path is not None, f"{name} is not installed (scripts/setup.d/10-prometheus.sh)")
    assert path is not None
    return path


def run_tool(args: Sequence[str], cwd: Path = REPO, timeout: float = 60) -> str:
    """Run a tool; fail the test with its output when it exits non-zero."""
    result = subprocess.run(
        [tool(args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{output}")
    return output


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET a URL and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(check: Any, timeout: float, interval: float = 0.5, what: str = "") -> Any:
    """Call ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, ValueError, KeyError) as exc:  # not up yet / not there yet
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or check} ({last_error})")


@dataclass
class Process:
    """A child process whose output goes to a log file, stopped by pid at teardown."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0

    def tail(self, lines: int = 40) -> str:
        """The end of the process's output, for failure messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate it and everything it started; kill what is left after five seconds."""
        kill_tree(self.popen)


def spawn(
    name: str,
    args: Sequence[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Process:
    """Start ``args`` with output captured in ``log_dir/<name>.log``."""
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        list(args),
        cwd=cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    handle.close()
    return Process(name, popen, log)


def spawn_server(
    name: str,
    args: Callable[[int], Sequence[str]],
    ready_path: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 30.0,
) -> Process:
    """Start ``args(port)`` on a free port until ``ready_path`` answers 2xx.

    When the port is taken before the server binds it, it starts again on another one.
    """

    def attempt(port: int) -> Process:
        process = spawn(f"{name}-{port}", args(port), log_dir, env=env, cwd=cwd)
        process.port = port
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if process.popen.poll() is not None:
                    if port_taken_in(process.tail()):
                        raise PortTaken(process.tail(5))
                    pytest.fail(f"{name} exited {process.popen.returncode}:\n{process.tail()}")
                with contextlib.suppress(OSError):
                    if 200 <= http_status(f"http://127.0.0.1:{port}{ready_path}") < 300:
                        return process
                time.sleep(0.3)
            pytest.fail(f"{name} not ready after {timeout:.0f}s:\n{process.tail()}")
        except BaseException:
            process.stop()
            raise

    return start_with_retry(attempt)


def wait_ready(process: Process, url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers 2xx; fail with the process's output otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            pytest.fail(f"{process.name} exited {process.popen.returncode}:\n{process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    pytest.fail(f"{process.name} not ready at {url} after {timeout:.0f}s:\n{process.tail()}")


def start_prometheus(config: Path | Callable[[int], Path], workdir: Path) -> Process:
    """A real Prometheus with exemplar storage on a free port (``.port``).

    ``config`` may be a function of the port, for a configuration that scrapes Prometheus itself.
    """

    def args(port: int) -> list[str]:
        path = config(port) if callable(config) else config
        return [
            tool(PROMETHEUS_BIN),
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / f'prometheus-data-{port}'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ]

    cwd = workdir if callable(config) else config.parent  # rule_files are relative to it
    return spawn_server("prometheus", args, "/-/ready", workdir, cwd=cwd)


def alertmanager_config(workdir: Path, webhook: Webhook, **timings: str) -> Path:
    """The stack's alertmanager.yml and its templates in ``workdir``, each receiver posting to
    ``webhook`` (same path) and ``timings`` (group_wait="1s", ...) set on every route."""
    import yaml

    config = yaml.safe_load((REPO / "prometheus" / "alertmanager.yml").read_text())

    def fast(route: dict[str, Any]) -> None:
        route.update(timings)
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook.url(urllib.parse.urlparse(hook["url"]).path)
    (workdir / "templates").mkdir(exist_ok=True)
    for template in (REPO / "prometheus" / "templates").glob("*.tmpl"):
        (workdir / "templates" / template.name).write_text(template.read_text())
    path = workdir / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_alertmanager(config: Path, workdir: Path) -> Process:
    """A real Alertmanager without clustering, on a free port (``.port``)."""

    def args(port: int) -> list[str]:
        return [
            tool(ALERTMANAGER_BIN),
            f"--config.file={config}",
            f"--storage.path={workdir / f'alertmanager-data-{port}'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    return spawn_server("alertmanager", args, "/-/ready", workdir, cwd=config.parent)


@dataclass
class Webhook:
    """An Alertmanager webhook receiver on 127.0.0.1 that keeps every notification."""

    port: int
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def alerts(self) -> list[tuple[str, dict[str, Any]]]:
        """(receiver path, alert) for every alert of every notification so far."""
        with self.lock:
            return [(path, alert) for path, body in self.received for alert in body["alerts"]]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A running webhook receiver; stopped after the test."""
    with running_webhook() as hook:
        yield hook


@contextlib.contextmanager
def running_webhook() -> Iterator[Webhook]:
    """A webhook receiver on a free loopback port that records every POST."""
    hook = Webhook(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with hook.lock:
                hook.received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    with serving(Handler) as url:
        hook.port = int(url.rsplit(":", 1)[1])
        yield hook


def query(prom_port: int, promql: str) -> dict[str, Any]:
    """Instant query; returns Prometheus's JSON (status, data or error)."""
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)})


PYTHON = sys.executable
