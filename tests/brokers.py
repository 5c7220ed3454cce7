"""Real message brokers and workers for the tests, on loopback with free ports, always stopped.

``start_redis(directory)`` starts one redis-server (Debian's package) and yields its URL;
the ``redis_url`` fixture (import it into a test module) gives every module of a session
the same one. ``celery_worker(broker, directory)`` runs a real prefork
worker of ``tests/celery_app.py``. Missing binaries skip locally and fail in CI
(``require_service``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_service
from tests.helpers import LOOPBACK, descendants, free_port, kill_tree, start_server

START_ATTEMPTS = 5


def _answers(port: int) -> bool:
    """True when a redis-server on ``port`` answers PING."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def start_redis(directory: Path) -> Iterator[str]:
    """A redis-server on a free loopback port (retried when the port is taken); its URL."""
    binary = shutil.which("redis-server")
    require_service(binary is not None, "redis-server missing (scripts/setup.d/40-redis.sh)")
    assert binary is not None
    directory.mkdir(parents=True, exist_ok=True)
    for _attempt in range(START_ATTEMPTS):  # a port taken between choosing and binding
        port = free_port()
        log = directory / f"redis-{port}.log"
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", str(directory), "--logfile", str(log)],
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and not _answers(port):
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not answer: {log.read_text()[-1000:]}")
                time.sleep(0.05)
            if proc.poll() is None:
                yield f"redis://{LOOPBACK}:{port}/0"
                return
        finally:
            kill_tree(proc)
    pytest.fail(f"redis-server could not bind a free port in {START_ATTEMPTS} attempts")


_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session, shared by every module that imports this fixture.

    pytest makes one instance per importing module; the first starts the server, the last
    to end stops it (before the session's check for processes left running).
    """
    if "url" not in _shared:
        stack = contextlib.ExitStack()
        _shared["url"] = stack.enter_context(start_redis(tmp_path_factory.mktemp("redis")))
        _shared["stack"] = stack
        _shared["users"] = 0
    _shared["users"] += 1
    try:
        yield str(_shared["url"])
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            stack = _shared.pop("stack")
            _shared.clear()
            stack.close()


# --- a real Celery worker ----------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent
WORKER_WAIT = 60.0  # a deadline for the worker to come up, never a speed bound


@dataclass
class Worker:
    """A running ``celery worker`` (tests/celery_app.py) and where its outputs go."""

    proc: subprocess.Popen[bytes]
    port: int
    queue: str
    stdout: Path
    stderr: Path
    multiproc: Path

    def page(self) -> str:
        """The worker's metrics page (every pool process, merged)."""
        url = f"http://{LOOPBACK}:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """Sum of the samples ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.page()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def logs(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines (stdout)."""
        return json_lines(self.stdout)

    def results(self, ids: list[str], timeout: float) -> list[Any]:
        """Each task's return value, or the exception it raised, in the order of ``ids``.

        A result that does not come within ``timeout`` fails the test with what the worker
        did with those tasks (its log lines naming them) and where each of its processes
        stands now (a stack dump), so that a rare hang can be told from a lost message.
        """
        from celery.exceptions import TimeoutError as ResultTimeout
        from celery.result import AsyncResult

        from tests import celery_app

        out: list[Any] = []
        late: list[str] = []
        for task_id in ids:
            result = AsyncResult(task_id, app=celery_app.app)
            try:
                out.append(result.get(timeout=timeout))
            except ResultTimeout:
                late.append(task_id)
            except Exception as exc:
                out.append(exc)
        if late:
            raise AssertionError(f"no result within {timeout} s for {late}\n{self.diagnosis(late)}")
        return out

    def diagnosis(self, ids: list[str]) -> str:
        """The worker's log lines that name any of ``ids``, then every process's stacks."""
        named: list[str] = []
        for line in self.logs():
            text = json.dumps(line)  # once per line, whichever field names the task
            if any(task_id in text for task_id in ids):
                named.append(line.get("message", ""))
        stacks = self.stdout.with_name("stacks.txt")
        dumps: list[str] = []
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            before = stacks.stat().st_size if stacks.exists() else 0
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGUSR2)  # tests/celery_app.py dumps its threads' stacks
            time.sleep(0.5)
            with contextlib.suppress(OSError), stacks.open("rb") as f:
                f.seek(before)
                dumps.append(f"process {pid}:\n{f.read().decode(errors='replace')}")
        dumped = "\n".join(dumps)
        return "worker log lines naming them:\n" + "\n".join(named) + "\nstacks:\n" + dumped

    def spans(self) -> list[dict[str, Any]]:
        """The spans the worker's processes exported (console exporter: stderr)."""
        return [line for line in json_lines(self.stderr) if "context" in line]


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` that is a JSON object."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


@contextlib.contextmanager
def celery_worker(
    broker: str,
    directory: Path,
    extra_env: dict[str, str] | None = None,
    concurrency: int = 4,
    max_tasks_per_child: int | None = None,
) -> Iterator[Worker]:
    """``celery -A tests.celery_app worker --pool=prefork`` on a queue of its own, with this
    process's ``tests.celery_app`` pointed at the same broker.

    Its metrics are served by the main process on a free ``PYOBS_METRICS_PORT`` with a fresh
    ``PROMETHEUS_MULTIPROC_DIR``; spans go to stderr (console exporter), ECS logs to stdout.
    The whole process tree is ended on exit, failure or timeout.
    """
    from tests import celery_app

    # This process's Celery app (the enqueuing side) sends to the same broker.
    celery_app.app.conf.broker_url = broker
    celery_app.app.conf.result_backend = broker
    queue = f"pyobs-test-{uuid.uuid4().hex[:8]}"
    multiproc = directory / "multiproc"
    multiproc.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYOBS_", "OTEL_", "CELERY_TEST_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        PYTHONPATH=str(REPO),
        CELERY_TEST_BROKER=broker,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        PYOBS_SERVICE_NAME="celery-worker",
        OTEL_TRACES_EXPORTER="console",
        CELERY_TEST_STACKS=str(directory / "stacks.txt"),
        **(extra_env or {}),
    )
    stdout, stderr = directory / "worker.out", directory / "worker.err"

    def command(port: int) -> list[str]:
        env["PYOBS_METRICS_PORT"] = str(port)  # the dict start_server hands to Popen
        return [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "-l", "INFO", "-Q", queue,
            "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            *([f"--max-tasks-per-child={max_tasks_per_child}"] if max_tasks_per_child else []),
        ]  # fmt: skip

    def ready(port: int) -> bool:
        if "ready." not in stdout.read_text(errors="replace"):
            return False
        url = f"http://{LOOPBACK}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    proc, port = start_server(
        command, ready, stdout, stderr, timeout=WORKER_WAIT, cwd=str(REPO), env=env
    )
    try:
        yield Worker(proc, port, queue, stdout, stderr, multiproc)
    finally:
        kill_tree(proc, grace=15.0)
