"""SIGTERM loses no span: real servers flush pyobs's span queue before they end, or count it.

uvicorn, and gunicorn with uvicorn and sync workers, serve an app instrumented by pyobs that
exports over OTLP/HTTP to a loopback receiver, with a batch delay long enough that nothing is
exported before the signal. After N requests and SIGTERM, the receiver holds all N spans and
the process ends as it would have without pyobs. With a receiver that never answers and a
tiny export timeout, every span is counted as dropped instead. An app's own SIGTERM handler
still runs with its exit code, and spans ending after the signal while a server handler winds
down (before it restores the default action and re-raises) are exported too.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.helpers import kill_tree, listening_socket
from tests.tracing_backends import OtlpReceiver

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 30
BOOT_TIMEOUT = 60.0
EXIT_TIMEOUT = 60.0

ASGI_APP = """
import asyncio
from fastapi import FastAPI
import pyobs.fastapi

app = FastAPI()

@app.get("/items/{i}")
def item(i: int) -> dict[str, int]:
    return {"i": i}

@app.get("/slow")
async def slow() -> dict[str, int]:
    open("slow-started", "w").close()
    await asyncio.sleep(1.0)
    return {"slow": 1}

pyobs.fastapi.instrument(app)
"""

WSGI_APP = """
from flask import Flask
import pyobs.flask

app = Flask("shutdown")
app.add_url_rule("/items/<int:i>", "item", lambda i: "ok")
pyobs.flask.instrument(app)
"""


@pytest.fixture
def receivers() -> Iterator[list[OtlpReceiver]]:
    """Receivers made by a test, closed after it."""
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    made: list[OtlpReceiver] = []
    yield made
    for receiver in made:
        receiver.close()


def _env(tmp_path: Path, receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "600000",  # nothing leaves before the signal
            "PYOBS_LOG_SPOOL_DIR": str(tmp_path / "spool"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
            **extra,
        }
    )
    return env


def _serve(tmp_path: Path, command: list[str], env: dict[str, str]) -> tuple[Any, str, Path]:
    """Start a server on a socket the kernel chose; wait until it answers; (proc, url, log)."""
    listener = listening_socket()
    port = listener.getsockname()[1]
    command = [part.replace("{fd}", str(listener.fileno())) for part in command]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,
        )
    listener.close()
    return proc, f"http://127.0.0.1:{port}", log


def _drive(proc: Any, url: str, log: Path, requests: int) -> None:
    """Send ``requests`` successful requests (the first ones wait for the server to boot)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    done = 0
    while done < requests:
        if proc.poll() is not None:
            raise AssertionError(f"server ended early: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/items/{done}", timeout=10) as response:
                assert response.status == 200
            done += 1
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _terminate(proc: Any, log: Path) -> int:
    """SIGTERM the server and wait for it to end; its return code."""
    try:
        proc.send_signal(signal.SIGTERM)
        return int(proc.wait(timeout=EXIT_TIMEOUT))
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise AssertionError(f"server did not end: {log.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            kill_tree(proc)


SERVERS = {
    # the server, the app, the return code the server ends with on SIGTERM without pyobs
    "uvicorn": (
        ["-m", "uvicorn", "--fd", "{fd}", "--no-access-log", "app:app"],
        ASGI_APP,
        -signal.SIGTERM,
    ),
    "gunicorn-uvicorn-worker": (
        ["-m", "gunicorn", "-w", "2", "-k", "uvicorn.workers.UvicornWorker", "-b", "fd://{fd}"],
        ASGI_APP,
        0,
    ),
    "gunicorn-sync": (["-m", "gunicorn", "-w", "2", "-b", "fd://{fd}"], WSGI_APP, 0),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_sigterm_exports_every_span(
    tmp_path: Path, receivers: list[OtlpReceiver], server: str
) -> None:
    """N requests then SIGTERM: the collector holds N spans; the exit status is unchanged."""
    import_or_require("gunicorn" if server.startswith("gunicorn") else "uvicorn")
    import_or_require("fastapi" if SERVERS[server][1] is ASGI_APP else "flask")
    args, app, expected = SERVERS[server]
    if server.startswith("gunicorn"):
        (tmp_path / "hooks.py").write_text("from pyobs.gunicorn import worker_exit  # noqa: F401\n")
        args = [*args, "-c", "hooks.py", "--graceful-timeout", "20", "app:app"]
    (tmp_path / "app.py").write_text(textwrap.dedent(app))
    receiver = OtlpReceiver()
    receivers.append(receiver)
    proc, url, log = _serve(tmp_path, [sys.executable, *args], _env(tmp_path, receiver))
    _drive(proc, url, log, REQUESTS)
    assert len(receiver.spans) == 0, "the batch delay should hold every span until the signal"
    code = _terminate(proc, log)
    assert code == expected, log.read_text()[-3000:]
    assert len(receiver.spans) == REQUESTS, log.read_text()[-3000:]


@pytest.mark.slow
def test_a_span_ending_during_uvicorns_graceful_shutdown_is_exported(
    tmp_path: Path, receivers: list[OtlpReceiver]
) -> None:
    """A request in flight at SIGTERM completes during uvicorn's shutdown; its span arrives."""
    import_or_require("uvicorn")
    import_or_require("fastapi")
    (tmp_path / "app.py").write_text(textwrap.dedent(ASGI_APP))
    receiver = OtlpReceiver()
    receivers.append(receiver)
    args = ["-m", "uvicorn", "--fd", "{fd}", "--no-access-log", "app:app"]
    proc, url, log = _serve(tmp_path, [sys.executable, *args], _env(tmp_path, receiver))
    _drive(proc, url, log, REQUESTS)
    answers: list[int] = []

    def slow() -> None:
        with urllib.request.urlopen(f"{url}/slow", timeout=30) as response:
            answers.append(response.status)

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + BOOT_TIMEOUT
    while not (tmp_path / "slow-started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    code = _terminate(proc, log)
    client.join(30)
    assert answers == [200], log.read_text()[-3000:]
    assert code == -signal.SIGTERM
    assert len(receiver.spans) == REQUESTS + 1, log.read_text()[-3000:]


@pytest.mark.slow
def test_sigterm_counts_what_a_hung_collector_did_not_take(
    tmp_path: Path, receivers: list[OtlpReceiver]
) -> None:
    """A collector that never answers: SIGTERM waits only the export timeout, counts every span."""
    import_or_require("uvicorn")
    import_or_require("fastapi")
    (tmp_path / "app.py").write_text(textwrap.dedent(ASGI_APP))
    receiver = OtlpReceiver(answer=False, hold=EXIT_TIMEOUT)
    receivers.append(receiver)
    env = _env(tmp_path, receiver, OTEL_BSP_EXPORT_TIMEOUT="300")
    args = ["-m", "uvicorn", "--fd", "{fd}", "--no-access-log", "app:app"]
    proc, url, log = _serve(tmp_path, [sys.executable, *args], env)
    _drive(proc, url, log, REQUESTS)
    code = _terminate(proc, log)
    text = log.read_text()
    assert code == -signal.SIGTERM, text[-3000:]
    assert len(receiver.spans) == 0
    counted = [int(n) for n in re.findall(r"(\d+) span\(s\) dropped", text)]
    # shutdown, or export_failed when the exporter's own timeout ends the export first
    assert sum(counted) == REQUESTS, text[-3000:]


APP_HANDLER = """
import os, signal
from pathlib import Path

def on_term(signum, frame):
    Path("handler-ran").write_text("yes")
    os._exit(3)  # no atexit: only pyobs's flush before this handler exports the spans

signal.signal(signal.SIGTERM, on_term)

import pyobs
from opentelemetry import trace

pyobs.setup()
tracer = trace.get_tracer("app")
for i in range({n}):
    with tracer.start_as_current_span(f"work {{i}}"):
        pass
Path("ready").write_text("yes")
while True:
    signal.pause()
"""


def _run_until_ready_then_terminate(tmp_path: Path, receiver: OtlpReceiver) -> tuple[int, Path]:
    """Run tmp_path/main.py until it writes ``ready``, send SIGTERM; (exit code, its log)."""
    log = tmp_path / "main.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "main.py"],
            cwd=tmp_path,
            env=_env(tmp_path, receiver),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not get ready"
            time.sleep(0.05)
        return _terminate(proc, log), log
    finally:
        if proc.poll() is None:
            kill_tree(proc)


def test_the_apps_own_sigterm_handler_still_runs(
    tmp_path: Path, receivers: list[OtlpReceiver]
) -> None:
    """The app's handler (set before pyobs) runs after pyobs has flushed; its exit code stands."""
    import_or_require("flask")
    receiver = OtlpReceiver()
    receivers.append(receiver)
    (tmp_path / "main.py").write_text(APP_HANDLER.format(n=REQUESTS))
    code, log = _run_until_ready_then_terminate(tmp_path, receiver)
    assert code == 3, log.read_text()[-3000:]
    assert (tmp_path / "handler-ran").read_text() == "yes"
    assert len(receiver.spans) == REQUESTS


SERVER_LIKE = """
import signal, time
from pathlib import Path

stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))  # like uvicorn

import pyobs
from opentelemetry import trace

pyobs.setup()  # loaded after the server took SIGTERM: pyobs chains in front of it
tracer = trace.get_tracer("app")
for i in range({n}):
    with tracer.start_as_current_span(f"work {{i}}"):
        pass
Path("ready").write_text("yes")
while not stop:
    time.sleep(0.01)
with tracer.start_as_current_span("graceful shutdown"):
    pass  # a request that ends while the server winds down
time.sleep(2)  # its other shutdown work
signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server restores what it found
signal.raise_signal(signal.SIGTERM)
"""


def test_spans_ending_after_sigterm_behind_a_server_handler_are_exported(
    tmp_path: Path, receivers: list[OtlpReceiver]
) -> None:
    """A server that restores SIG_DFL and re-raises: spans ending in its shutdown still arrive."""
    receiver = OtlpReceiver()
    receivers.append(receiver)
    (tmp_path / "main.py").write_text(SERVER_LIKE.format(n=REQUESTS))
    code, log = _run_until_ready_then_terminate(tmp_path, receiver)
    assert code == -signal.SIGTERM, log.read_text()[-3000:]
    assert len(receiver.spans) == REQUESTS + 1
