"""Per-request cost of pyobs on real servers, driven by wrk, next to its peers.

    python benchmarks/realserver.py                         # every setup, 3 rounds x 5 s
    python benchmarks/realserver.py --rounds 6 --seconds 10
    python benchmarks/realserver.py --setups fastapi-uvicorn-1 --configs bare,pyobs-full \\
        --export otlp-http,otlp-grpc                        # OTLP export to a real Jaeger
    python benchmarks/realserver.py --setups flask-gunicorn-1 --configs bare,pyobs-full \\
        --export pyobs-http,pyobs-http@ack       # to Jaeger, and to a receiver that only acks
    python benchmarks/realserver.py --setups flask-gunicorn-1 --configs bare,pyobs-full \\
        --parts                            # what the access log and the span each cost
    python benchmarks/realserver.py --setups flask-gunicorn-1 \\
        --configs bare,minimal,pyobs-metrics,peer  # the floor under any metrics middleware
    python benchmarks/realserver.py --setups flask-gunicorn-1 --configs \
        bare,plain-contract,plain-contract-full,pyobs-metrics,pyobs-full,peer  # the contract's
    python benchmarks/realserver.py --setups flask-gunicorn-1 --configs bare,pyobs-full \\
        --stdout pipe                      # stdout through a pipe, as in a container
    python benchmarks/realserver.py --quick --json out.json # smoke run

Every configuration (bare app, pyobs metrics-only, pyobs full, the lightest Prometheus peer,
OTel contrib, and pyobs full exporting OTLP to Jaeger when asked) runs in its own real server
(gunicorn sync workers, or uvicorn), pinned to one CPU core with ``taskset``; ``wrk`` (one
thread) is pinned to another. All servers of a setup start together, then take turns: every
round runs wrk against each of them once, in a shuffled order, so machine noise hits them
alike. Per configuration the report gives the median over rounds of requests/s, p50 and p99
latency and the server's CPU time per request (utime + stime of the server's whole process
tree from /proc, over the requests wrk completed). See docs/benchmarks.md, "Real servers".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _intervals import (
    BOOTSTRAP_SAMPLES,
    MIN_ROUNDS_FOR_INTERVAL,
    central,
    describe,
    median_added,
    side,
)
from _overhead_apps import (
    FLOOR_CONFIGS,
    MINIMAL_CONFIG,
    NO_LOG_CONFIG,
    NO_SPAN_CONFIG,
    PART_CONFIGS,
    PLAIN_CONFIG,
    PLAIN_FULL_CONFIG,
    pyobs_signals,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUEST_PATH = "/items/7"
JAEGER = ROOT / ".cache" / "jaeger" / "bin" / "jaeger"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

# Targets of issue 18, as ratios of server CPU added per request over the bare app.
FULL_TARGET = 1.0  # pyobs full vs the lightest Prometheus peer (metrics only)
METRICS_TARGET = 0.33  # pyobs metrics-only vs the lightest Prometheus peer
EXPORT_TARGET = 1.2  # pyobs full exporting OTLP vs pyobs full with a dropping exporter


@dataclass(frozen=True)
class Setup:
    """A framework on a server: how to start it."""

    name: str
    framework: str
    server: str  # gunicorn | uvicorn
    workers: int
    peer: str  # the lightest Prometheus peer for this framework
    connections: int

    @property
    def multiprocess(self) -> bool:
        return self.server == "gunicorn" and self.workers > 1

    def describe(self) -> str:
        if self.server == "gunicorn":
            mode = ", multiprocess mode (PROMETHEUS_MULTIPROC_DIR)" if self.multiprocess else ""
            return f"{self.framework}, gunicorn {self.workers} sync worker(s){mode}"
        return f"{self.framework}, uvicorn {self.workers} worker"


SETUPS = {
    s.name: s
    for s in (
        Setup("flask-gunicorn-1", "flask", "gunicorn", 1, "prometheus-flask-exporter", 4),
        Setup("flask-gunicorn-2", "flask", "gunicorn", 2, "prometheus-flask-exporter", 8),
        Setup("fastapi-uvicorn-1", "fastapi", "uvicorn", 1, "prometheus-fastapi-instrumentator", 8),
        Setup("django-gunicorn-1", "django", "gunicorn", 1, "django-prometheus", 4),
    )
}
BASE = ("bare", "pyobs-metrics", "pyobs-full")
# A row of its own on Flask setups (``--configs ...,minimal``): _overhead_apps.MinimalMetrics,
# a timer, one duration histogram kept in the worker's memory (never exposed, not
# multiprocess-aware) and the in-flight count. What it adds is the floor under any WSGI
# metrics middleware on that server, so the report sets the targets against it.
MINIMAL = MINIMAL_CONFIG
# Two more such rows (``--configs ...,plain-contract,plain-contract-full``):
# _overhead_apps.PlainContract, what the contract asks of every request (metrics only; and
# with the SDK's span and the access line) written plainly with public APIs and nothing
# more. Each target applied to them says whether any implementation of the contract that
# plain could meet it on that server.


@dataclass(frozen=True)
class Floor:
    """How the report judges a floor row: against the peer, with ``target``, then what the
    pyobs row ``ours`` adds above it. ``name``, ``ratio_key`` and ``above_key`` are what the
    report prints and keys its JSON ratios by."""

    config: str
    name: str
    ours: str
    target: float
    ratio_key: str
    above_name: str
    above_key: str


FLOORS = (
    Floor(
        MINIMAL,
        "the minimal metrics middleware",
        "pyobs-metrics",
        METRICS_TARGET,
        "minimal_vs_peer",
        "pyobs metrics-only - the minimal middleware",
        "metrics_above_minimal_us",
    ),
    *(
        Floor(
            plain,
            f"{plain} (the contract, written plainly)",
            ours,
            target,
            plain.replace("-", "_") + "_vs_peer",
            f"{ours} - {plain}",
            ours.replace("-", "_") + "_above_plain_us",
        )
        for plain, ours, target in (
            (PLAIN_CONFIG, "pyobs-metrics", METRICS_TARGET),
            (PLAIN_FULL_CONFIG, "pyobs-full", FULL_TARGET),
        )
    ),
)
# --parts adds _overhead_apps's PART_CONFIGS, the rows overhead.py --parts adds: what the
# access log and the span each cost on a real server (full - no-log, full - no-span).

# Named OTLP export variants (``--export``); any of them takes extra ``+NAME=VALUE`` settings,
# e.g. ``otlp-http+OTEL_BSP_MAX_EXPORT_BATCH_SIZE=128``. An HTTP variant's name with
# ``@ack`` (``pyobs-http@ack``) sends to a receiver that acknowledges without parsing,
# on the same core as Jaeger: what exporting costs the service, Jaeger's own work left out.
ACK = "@ack"
EXPORTS: dict[str, dict[str, str]] = {
    "otlp-http": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    "otlp-http-gzip": {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    },
    "otlp-grpc": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    "otlp-grpc-gzip": {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    },
    # pyobs's own OTLP/HTTP exporter (pyobs/_otlp.py), what pyobs.setup() installs for
    # OTLP over HTTP; the otlp-* variants above are the SDK's exporters.
    "pyobs-http": {"RB_EXPORT": "pyobs-http", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    # The same exporter sending through requests to the plain-http endpoint (what it does for
    # https, a proxy or netrc credentials), next to its http.client path.
    "pyobs-http-requests": {
        "RB_EXPORT": "pyobs-http-requests",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    },
    "pyobs-http-gzip": {
        "RB_EXPORT": "pyobs-http",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    },
}

STDOUT_NOTES = {
    "file": "a file the server appends to",
    "pipe": "a pipe drained into a file by cat on the load generator's core",
}

WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "ok": %d, "bad": %d, "p50_us": %d, '
    .. '"p99_us": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, o, b, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout))
end
"""


class BenchError(RuntimeError):
    """A server or the load generator did not do what the benchmark needs."""


# ======================================================================================
# processes
# ======================================================================================


def free_port() -> int:
    """A loopback port free right now (the caller retries if it is taken before binding)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cores() -> tuple[list[str], list[str], str]:
    """taskset prefixes for the server and the load generator, and a note on the pinning."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or shutil.which("taskset") is None:
        return [], [], "not pinned (fewer than 2 cores or no taskset)"
    server, load = available[-1], available[0]
    note = f"server on core {server}, wrk and Jaeger on core {load}"
    return ["taskset", "-c", str(server)], ["taskset", "-c", str(load)], note


def cpu_ticks(root: int) -> dict[int, tuple[int, int]]:
    """(utime, stime) in clock ticks of ``root`` and every descendant, by pid."""
    parents: dict[int, int] = {}
    ticks: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = (int(fields[11]), int(fields[12]))
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {pid: ticks[pid] for pid in tree if pid in ticks}


def cpu_delta(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[float, float]:
    """(user + system, user) CPU seconds the tree used between two readings.

    A process that appeared in between counts from zero.
    """
    user = system = 0
    for pid, (utime, stime) in after.items():
        old = before.get(pid, (0, 0))
        user += utime - old[0]
        system += stime - old[1]
    return (user + system) / CLOCK_TICK, user / CLOCK_TICK


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_", "RB_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env["PYTHONHASHSEED"] = "0"
    return env


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM (graceful: exit hooks flush the span batch), then SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Server:
    """One configuration served by a real server."""

    setup: Setup
    config: str  # bare | pyobs-metrics | pyobs-full | peer | otel-contrib | pyobs-full <export>
    extra_env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0  # requests sent outside wrk's measured runs (readiness probes)
    warm_requests: int = 0
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # With a pipe for stdout (--stdout pipe), the command that drains it into stdout_path,
    # pinned to the load generator's core: what a container runtime does with a container's
    # stdout. Empty: the server writes to stdout_path itself.
    reader: list[str] = field(default_factory=list)
    reader_proc: subprocess.Popen[bytes] | None = None

    @property
    def app_config(self) -> str:
        return self.config.split(" ", 1)[0]

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def facts_dir(self) -> Path:
        return self.workdir / "facts"

    def command(self, port: int) -> list[str]:
        s = self.setup
        if s.server == "gunicorn":
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(s.workers),
                "--worker-class",
                "sync",
                "--chdir",
                str(HERE),
                "--log-level",
                "warning",
                "--graceful-timeout",
                "10",
            ]
            if s.multiprocess and self.app_config.startswith("pyobs"):
                cmd += ["--config", str(self.workdir / "gunicorn.conf.py")]
            return [*cmd, "_realserver_apps:app"]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(s.workers),
            "--app-dir",
            str(HERE),
            "--no-access-log",
            "--log-level",
            "warning",
            "_realserver_apps:app",
        ]

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env.update(
            RB_FRAMEWORK=self.setup.framework,
            RB_CONFIG=self.app_config,
            RB_SERVER=self.setup.server,
            RB_FACTS=str(self.facts_dir),
        )
        if self.setup.multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / "multiproc")
        env.update(self.extra_env)
        return env

    def start(self, pin: list[str], boot_timeout: float) -> None:
        """Start on a free port (another one if it was taken) and wait for a 200."""
        self.facts_dir.mkdir(parents=True, exist_ok=True)
        if self.setup.multiprocess:
            (self.workdir / "multiproc").mkdir(exist_ok=True)
            (self.workdir / "gunicorn.conf.py").write_text(
                "from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa: F401\n"
            )
        for _attempt in range(3):
            port = free_port()
            with (
                self.stdout_path.open("ab") as out,
                (self.workdir / "stderr.log").open("ab") as err,
            ):
                stdout: Any = out
                if self.reader:
                    drain, stdout = os.pipe()
                    try:
                        self.reader_proc = subprocess.Popen(
                            self.reader, stdin=drain, stdout=out, start_new_session=True
                        )
                    finally:
                        os.close(drain)
                try:
                    self.proc = subprocess.Popen(
                        [*pin, *self.command(port)],
                        stdout=stdout,
                        stderr=err,
                        env=self.env(),
                        cwd=str(HERE),
                        start_new_session=True,
                    )
                finally:
                    if stdout is not out:
                        os.close(stdout)  # the server holds the pipe's only write end
            self.port = port
            deadline = time.monotonic() + boot_timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    status, _ = _get(self.url)
                    self.sent += 1
                    if status == 200:
                        return
                    raise BenchError(f"{self.label}: GET {REQUEST_PATH} answered {status}")
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    time.sleep(0.1)
            stderr = (self.workdir / "stderr.log").read_text(errors="replace")
            if self.proc.poll() is None:
                self.stop()
                raise BenchError(f"{self.label}: no answer in {boot_timeout} s\n{stderr[-2000:]}")
            if "already in use" not in stderr:
                raise BenchError(f"{self.label}: the server exited\n{stderr[-2000:]}")
        raise BenchError(f"{self.label}: no free port in 3 attempts")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{REQUEST_PATH}"

    @property
    def label(self) -> str:
        return f"{self.setup.name} {self.config}"

    def stop(self) -> None:
        """Stop the server and its whole process group, whatever state it is in."""
        if self.proc is None:
            return
        _stop(self.proc)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of its own session only
        except (ProcessLookupError, PermissionError):
            pass
        reader, self.reader_proc = self.reader_proc, None
        if reader is not None:
            # Every writer is gone: the reader drains the rest of the pipe and ends by itself.
            try:
                reader.wait(30)
            except subprocess.TimeoutExpired:
                _stop(reader)

    def metrics_count(self) -> float | None:
        """Requests pyobs counted (its duration histogram), from the app's own /metrics."""
        if not self.app_config.startswith("pyobs"):
            return None
        status, body = _get(f"http://127.0.0.1:{self.port}/metrics", timeout=10)
        if status != 200:
            return None
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("http_server_request_duration_seconds_count{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def run_wrk(
    server: Server, seconds: float, pin: list[str], script: Path, connections: int
) -> dict[str, Any]:
    """One wrk run against ``server``; returns wrk's figures and the server's CPU seconds."""
    assert server.proc is not None
    if server.proc.poll() is not None:
        raise BenchError(f"{server.label}: the server died")
    before = cpu_ticks(server.proc.pid)
    result = subprocess.run(
        [
            *pin,
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(script),
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    after = cpu_ticks(server.proc.pid)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("WRK ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"{server.label}: wrk failed\n{result.stdout}\n{result.stderr}")
    figures: dict[str, Any] = json.loads(line[4:])
    figures["cpu_s"], figures["user_s"] = cpu_delta(before, after)
    return figures


# ======================================================================================
# Jaeger
# ======================================================================================


@contextmanager
def jaeger(workdir: Path, pin: list[str]) -> Iterator[dict[str, int]]:
    """Jaeger v2 on free loopback ports (OTLP over HTTP and gRPC); stopped on the way out."""
    if not JAEGER.exists():
        raise BenchError("Jaeger is not built (scripts/setup.d/40-jaeger.sh)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.tracing_backends import start_jaeger  # the suite's launcher, pinned here

    try:
        running = start_jaeger(workdir, prefix=tuple(pin))
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    try:
        yield running.ports
    finally:
        running.stop()


@contextmanager
def acknowledger(pin: list[str]) -> Iterator[dict[str, int]]:
    """A loopback OTLP/HTTP receiver that answers every POST with an empty 200 without
    parsing it, in its own process (pinned with ``pin``, as Jaeger is); stopped on the way
    out."""
    port = free_port()
    command = [*pin, sys.executable, str(Path(__file__).resolve()), "--acknowledge", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise BenchError(f"the acknowledging receiver did not start: {err}") from None
                time.sleep(0.05)
        yield {"ack_http": port}
    finally:
        _stop(proc)


def is_ack(variant: str) -> bool:
    """True for an export variant sent to the acknowledging receiver (``NAME@ack``)."""
    return variant.split("+")[0].endswith(ACK)


def export_env(variant: str, ports: dict[str, int]) -> dict[str, str]:
    """The OTEL_ variables of an export variant: ``NAME[@ack][+VAR=VALUE...]``."""
    name, *settings = variant.split("+")
    name = name.removesuffix(ACK)
    if name not in EXPORTS:
        raise SystemExit(f"unknown export variant {name!r}; known: {', '.join(EXPORTS)}")
    env = {"RB_EXPORT": "otlp", **EXPORTS[name]}
    grpc = env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    if is_ack(variant):
        if grpc:
            raise SystemExit(f"{variant}: the acknowledging receiver speaks OTLP over HTTP only")
        port = ports["ack_http"]
    else:
        port = ports["otlp_grpc"] if grpc else ports["otlp_http"]
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    for setting in settings:
        key, _, value = setting.partition("=")
        if not key.startswith("OTEL_") or not value:
            raise SystemExit(f"export setting {setting!r}: expected OTEL_NAME=VALUE")
        env[key] = value
    return env


# ======================================================================================
# the run
# ======================================================================================


def missing_modules(setup: Setup, config: str) -> str | None:
    """A module the (setup, config) needs that is not installed, else None."""
    import importlib.util

    from _overhead_apps import missing_module

    need = [setup.server]
    if config.startswith("pyobs-full otlp"):
        need.append("opentelemetry.exporter.otlp.proto.http")
        if "grpc" in config:
            need.append("opentelemetry.exporter.otlp.proto.grpc")
    for name in need:
        if importlib.util.find_spec(name) is None:
            return name
    return missing_module(setup.framework, config.split(" ", 1)[0])


def _collect_facts(server: Server) -> None:
    """After the server stopped: spans exported, access-log lines, what pyobs counted."""
    spans = failed = 0
    scopes: dict[str, int] = {}
    for path in server.facts_dir.glob("spans.*"):
        if path.suffix == ".tmp":
            continue
        data = json.loads(path.read_text())
        spans += data["exported"]
        failed += data["failed"]
        for name, count in data["scopes"].items():
            scopes[name] = scopes.get(name, 0) + count
    counts = [int(path.read_text()) for path in server.facts_dir.glob("minimal.*")]
    access = queue_full = 0
    with server.stdout_path.open("rb") as out:
        for line in out:
            if b'"pyobs.access"' in line:
                access += 1
            elif b"Queue full" in line:
                queue_full += 1
    stderr = (server.workdir / "stderr.log").read_text(errors="replace")
    queue_full += stderr.count("Queue full")
    server.facts.update(
        spans=spans,
        spans_failed=failed,
        span_scopes=scopes,
        access_lines=access,
        # The minimal middleware's requests, from each worker's count at exit (None: no file).
        minimal_counted=sum(counts) if counts else None,
        # The SDK's batch processor logs "Queue full, dropping spans" when it drops one.
        queue_full_warnings=queue_full,
        stderr_tail=stderr[-1500:],
    )


def measure_setup(
    setup: Setup,
    configs: list[str],
    exports: list[str],
    rounds: int,
    seconds: float,
    warmup: float,
    workdir: Path,
    pins: tuple[list[str], list[str]],
    log: Any,
    stdout: str = "file",
) -> dict[str, Server]:
    """Start every configuration of ``setup``, run the interleaved rounds, stop them all.

    ``stdout``: "file" (each server writes its stdout file itself) or "pipe" (a pipe that
    ``cat``, pinned with the load generator, drains into that file)."""
    server_pin, load_pin = pins
    script = workdir / "status.lua"
    script.write_text(WRK_SCRIPT)
    wanted = [c.replace("peer", setup.peer) for c in configs]
    servers: dict[str, Server] = {}
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        if any(not is_ack(v) for v in exports):
            ports.update(stack.enter_context(jaeger(workdir, load_pin)))
        if any(is_ack(v) for v in exports):
            ports.update(stack.enter_context(acknowledger(load_pin)))
        specs: list[tuple[str, dict[str, str]]] = [(c, {}) for c in wanted]
        specs += [(f"pyobs-full {v}", export_env(v, ports)) for v in exports]
        for config, env in specs:
            folder = workdir / f"{setup.name}-{len(servers)}"
            folder.mkdir()
            servers[config] = Server(setup, config, env, folder)
            if stdout == "pipe":
                servers[config].reader = [*load_pin, "cat"]

        def stop_all() -> None:
            for server in servers.values():
                server.stop()

        stack.callback(stop_all)
        live: list[Server] = []
        for server in servers.values():
            if server.config in FLOOR_CONFIGS and setup.framework != "flask":
                server.error = f"the {server.config} row is measured on Flask only"
                continue
            missing = missing_modules(setup, server.config)
            if missing is not None:
                server.error = f"not installed: {missing}"
                continue
            server.start(server_pin, boot_timeout=60)
            live.append(server)
        for server in live:  # warm up: imports done, caches filled, batch thread running
            figures = run_wrk(server, warmup, load_pin, script, setup.connections)
            server.warm_requests = figures["requests"]
            server.facts["warm_bad"] = figures["bad"]
            server.facts["warm_errors"] = _socket_errors(figures)
        for number in range(rounds):
            order = live[:]
            random.shuffle(order)
            for server in order:
                figures = run_wrk(server, seconds, load_pin, script, setup.connections)
                server.rounds.append(figures)
            log(f"  {setup.name}: round {number + 1}/{rounds} done")
        for server in live:
            server.facts["pyobs_counted"] = server.metrics_count()
            server.stop()
            _collect_facts(server)
    return servers


def _socket_errors(figures: dict[str, Any]) -> int:
    return int(figures["connect"] + figures["read"] + figures["write"] + figures["timeout"])


def summarize(server: Server) -> dict[str, Any]:
    """Median figures over rounds, plus what was verified."""
    row: dict[str, Any] = {"config": server.config, "error": server.error}
    if server.error or not server.rounds:
        return row
    per_round = [
        {
            "rps": r["requests"] / (r["duration_us"] / 1e6),
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "cpu_us": r["cpu_s"] * 1e6 / max(r["requests"], 1),
            "user_us": r["user_s"] * 1e6 / max(r["requests"], 1),
        }
        for r in server.rounds
    ]
    for key in ("rps", "p50_ms", "p99_ms", "cpu_us", "user_us"):
        row[key] = statistics.median(r[key] for r in per_round)
    row["cpu_us_rounds"] = [r["cpu_us"] for r in per_round]
    row["user_us_rounds"] = [r["user_us"] for r in per_round]
    cpus = [r["cpu_us"] for r in per_round]
    row["cpu_spread"] = (max(cpus) - min(cpus)) / row["cpu_us"] if row["cpu_us"] else 0.0
    measured = sum(r["requests"] for r in server.rounds)
    total = measured + server.warm_requests + server.sent
    bad = sum(r["bad"] for r in server.rounds) + server.facts.get("warm_bad", 0)
    errors = sum(_socket_errors(r) for r in server.rounds) + server.facts.get("warm_errors", 0)
    facts = server.facts
    row.update(
        requests=measured,
        requests_total=total,
        non_200=bad,
        socket_errors=errors,
        spans=facts["spans"],
        spans_failed=facts["spans_failed"],
        span_scopes=facts["span_scopes"],
        access_lines=facts["access_lines"],
        pyobs_counted=facts["pyobs_counted"],
        minimal_counted=facts["minimal_counted"],
        queue_full_warnings=facts["queue_full_warnings"],
        stderr_tail=facts["stderr_tail"],
    )
    # Server-side count of requests: pyobs's own histogram when it has one, else wrk's total
    # (wrk does not count a request still in flight when it stops: up to one per connection).
    served = facts["pyobs_counted"] or facts["minimal_counted"] or total
    row["spans_per_request"] = facts["spans"] / served if served else 0.0
    row["access_per_request"] = facts["access_lines"] / served if served else 0.0
    return row


def verify(setup: Setup, row: dict[str, Any], runs: int) -> list[str]:
    """What a row must show to be a valid measurement; empty when it holds."""
    problems: list[str] = []
    if row.get("error"):
        return problems
    if row["non_200"]:
        problems.append(f"{row['non_200']} responses were not 200")
    config = row["config"]
    counted = row["pyobs_counted"]
    if config in FLOOR_CONFIGS:
        counted = row.get("minimal_counted")
        if counted is None:
            problems.append(f"the {config} middleware left no count")
    total = row["requests_total"]
    # Requests the server handled but wrk did not count as completed: those in flight when a
    # run stopped (one per connection, and one more seen answered as wrk stops) and those
    # that ended in a socket error or timeout.
    slack = (setup.connections + 1) * runs + row["socket_errors"]
    if counted is not None and not total <= counted <= total + slack:
        who = f"the {config} middleware" if config in FLOOR_CONFIGS else "pyobs"
        problems.append(f"{who} counted {counted:.0f} requests, wrk completed {total}")
    traced = config.startswith("pyobs-full") or config in ("otel-contrib", PLAIN_FULL_CONFIG)
    if traced and row["spans_failed"]:
        problems.append(f"{row['spans_failed']} spans failed to export")
    if config == PLAIN_FULL_CONFIG:
        if row["spans"] != counted or row["access_lines"] != counted:
            problems.append(
                f"{row['spans']} spans and {row['access_lines']} access lines for "
                f"{counted} requests"
            )
    elif config in FLOOR_CONFIGS:
        if row["spans"] or row["access_lines"]:
            problems.append(f"the {config} middleware wrote spans or access lines")
    elif config.startswith("pyobs-full"):
        tracing, access_log = pyobs_signals(config)
        spans = counted if tracing else 0
        lines = counted if access_log else 0
        if row["spans"] != spans:
            expected = "" if tracing else " (the span is off in this row)"
            problems.append(f"{row['spans']} spans exported for {counted:.0f} requests{expected}")
            if row["queue_full_warnings"]:
                problems.append(f"{row['queue_full_warnings']} 'Queue full' warnings")
        if row["access_lines"] != lines:
            expected = "" if access_log else " (the access log is off in this row)"
            problems.append(
                f"{row['access_lines']} access lines for {counted:.0f} requests{expected}"
            )
        if tracing and set(row["span_scopes"]) != {"pyobs"}:
            problems.append(f"span scopes {row['span_scopes']}")
    elif config == "pyobs-metrics":
        if row["spans"] or row["access_lines"]:
            problems.append("metrics-only wrote spans or access lines")
    elif config == "otel-contrib" and not row["spans"]:
        problems.append("no span exported")  # the instrumentation did not run
    return problems


def findings(row: dict[str, Any]) -> list[str]:
    """What a valid row measured that the checks column also shows: the spans OTel contrib
    lost (issue 18 compares pyobs's losses with contrib's; pyobs's own must be none)."""
    if row.get("error") or row["config"] != "otel-contrib":
        return []
    lost = row["requests_total"] - row["spans"]
    if lost <= 0:
        return []
    note = f"OTel contrib lost {lost} of {row['requests_total']} spans"
    if row["queue_full_warnings"]:
        note += f" ({row['queue_full_warnings']} 'Queue full' warnings)"
    return [note]


# ======================================================================================
# report
# ======================================================================================


def _ratio(a: float | None, b: float | None, b_noise: float = 0.0) -> float | None:
    """a / b for added costs; None when either is missing or not above zero, or b is not
    above its noise (the spread of its per-round differences to bare).

    A configuration that measured no dearer than bare, or a denominator the machine's noise
    could produce, gives no ratio and so no verdict.
    """
    if a is None or b is None or b <= max(b_noise, 0.0) or a <= 0:
        return None
    return a / b


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


# A ratio of added CPU is judged on a paired bootstrap interval (benchmarks/_intervals.py):
# the rounds are resampled with each round's differences to bare kept together, and the
# ratio of the median differences recomputed. An interval across the target is
# "undecided", as is a ratio without a decidable denominator (see _ratio).
WORDS = {"within": "met", "above": "MISSED"}


def paired_interval(
    rows: dict[str, dict[str, Any]], numerator: str, denominator: str, key: str, seed: int = 0
) -> tuple[float, float] | None:
    """The INTERVAL range of median(numerator - bare) / median(denominator - bare) over
    resamplings of the rounds (a round's three figures stay together); None with too few
    rounds or a row missing. A resampling whose denominator added nothing is infinite."""
    series = [rows.get(name) or {} for name in ("bare", numerator, denominator)]
    if any(row.get("error") or not row.get(key) for row in series):
        return None
    bare, top, bottom = (row[key] for row in series)
    n = len(bare)
    if n < MIN_ROUNDS_FOR_INTERVAL or len(top) != n or len(bottom) != n:
        return None
    d_top = [a - z for a, z in zip(top, bare, strict=True)]
    d_bottom = [b - z for b, z in zip(bottom, bare, strict=True)]
    rng = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP_SAMPLES):
        picks = [rng.randrange(n) for _ in range(n)]
        den = statistics.median(d_bottom[i] for i in picks)
        num = statistics.median(d_top[i] for i in picks)
        ratios.append(num / den if den > 0 else float("inf"))
    return central(ratios)


def verdict(value: float | None, target: float, interval: tuple[float, float] | None = None) -> str:
    """met / MISSED / undecided for one ratio; with an interval, only a whole interval on one
    side of the target decides."""
    if value is None:
        return "undecided: an added cost within the noise"
    if interval is None:
        return "met" if value <= target else "MISSED"
    return WORDS.get(side(interval, target), f"undecided: {describe(interval)}")


def _judged(value: float | None, target: float, interval: tuple[float, float] | None) -> str:
    """'0.45 (90% interval 0.30-0.61; target <= 0.33: undecided)' for a report line."""
    if value is None or interval is None:
        return f"{_fmt(value)} (target <= {target}: {verdict(value, target)})"
    word = WORDS.get(side(interval, target), "undecided")
    return f"{_fmt(value)} ({describe(interval)}; target <= {target}: {word})"


def _paired(row: dict[str, Any], bare: dict[str, Any], key: str) -> float | None:
    """Median over rounds of (this row - bare) in the same round.

    The machine's load changes from minute to minute; a round runs every configuration within
    seconds, so differences taken inside a round cancel most of it.
    """
    if not bare.get(key) or not row.get(key):
        return None
    return median_added(row[key], bare[key])


def _noise(row: dict[str, Any], bare: dict[str, Any], key: str) -> float:
    """How far the per-round differences to bare spread: interquartile range (4+ rounds)."""
    if not bare.get(key) or not row.get(key):
        return 0.0
    diffs = [float(a - b) for a, b in zip(row[key], bare[key], strict=True)]
    if len(diffs) < 4:
        return max(diffs) - min(diffs)
    q1, _, q3 = statistics.quantiles(diffs, n=4)
    return float(q3 - q1)


def report(setup: Setup, rows: dict[str, dict[str, Any]], runs: int, out: Any) -> dict[str, Any]:
    """Print one setup's table and its ratios against the targets; return the ratios."""
    out.write(f"\n## {setup.name}: {setup.describe()}, wrk -t1 -c{setup.connections}\n\n")
    bare_p99 = rows.get("bare", {}).get("p99_ms")
    head = (
        f"{'config':<44} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'spread':>6} {'+us':>7} {'+-':>5} {'user +us':>8} {'spans/req':>9} {'access/req':>10}"
        "  checks"
    )
    out.write(head + "\n" + "-" * len(head) + "\n")
    added: dict[str, float | None] = {}
    added_user: dict[str, float | None] = {}
    noise: dict[str, float] = {}
    noise_user: dict[str, float] = {}
    for config, row in rows.items():
        if row.get("error"):
            out.write(f"{config:<44} {row['error']}\n")
            added[config] = None
            continue
        plus = _paired(row, rows.get("bare", {}), "cpu_us_rounds")
        added[config] = plus
        row["added_cpu_us"] = plus
        noise[config] = row["added_cpu_noise"] = _noise(row, rows.get("bare", {}), "cpu_us_rounds")
        noise_user[config] = _noise(row, rows.get("bare", {}), "user_us_rounds")
        plus_user = _paired(row, rows.get("bare", {}), "user_us_rounds")
        added_user[config] = plus_user
        row["added_user_us"] = plus_user
        row["problems"] = verify(setup, row, runs)
        row["findings"] = findings(row)
        checks = "; ".join(row["problems"] or ["ok", *row["findings"]])
        out.write(
            f"{config:<44} {row['rps']:>7.0f} {row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} "
            f"{row['cpu_us']:>10.1f} {row['cpu_spread']:>5.0%} {_fmt(plus, '+.1f'):>7} "
            f"{noise[config]:>5.0f} "
            f"{_fmt(plus_user, '+.1f'):>8} {row['spans_per_request']:>9.2f} "
            f"{row['access_per_request']:>10.2f}  {checks}\n"
        )
    peer = added.get(setup.peer)
    ratios: dict[str, Any] = {
        "metrics_vs_peer": _ratio(added.get("pyobs-metrics"), peer, noise.get(setup.peer, 0)),
        "full_vs_peer": _ratio(added.get("pyobs-full"), peer, noise.get(setup.peer, 0)),
        "full_vs_otel": _ratio(
            added.get("pyobs-full"), added.get("otel-contrib"), noise.get("otel-contrib", 0)
        ),
        # The same on user CPU only: the kernel's share (sockets, a new connection per request
        # on sync workers) is the same for every configuration but adds most of the noise.
        "user_metrics_vs_peer": _ratio(
            added_user.get("pyobs-metrics"),
            added_user.get(setup.peer),
            noise_user.get(setup.peer, 0),
        ),
        "user_full_vs_peer": _ratio(
            added_user.get("pyobs-full"), added_user.get(setup.peer), noise_user.get(setup.peer, 0)
        ),
    }
    intervals = {
        "metrics_vs_peer": paired_interval(rows, "pyobs-metrics", setup.peer, "cpu_us_rounds"),
        "full_vs_peer": paired_interval(rows, "pyobs-full", setup.peer, "cpu_us_rounds"),
        "user_metrics_vs_peer": paired_interval(
            rows, "pyobs-metrics", setup.peer, "user_us_rounds"
        ),
        "user_full_vs_peer": paired_interval(rows, "pyobs-full", setup.peer, "user_us_rounds"),
    }
    ratios["intervals"] = intervals
    out.write("\n")
    if peer is not None:
        out.write(
            f"pyobs metrics-only / {setup.peer}: "
            f"{_judged(ratios['metrics_vs_peer'], METRICS_TARGET, intervals['metrics_vs_peer'])}\n"
            f"pyobs full / {setup.peer}: "
            f"{_judged(ratios['full_vs_peer'], FULL_TARGET, intervals['full_vs_peer'])}\n"
        )
    if added_user.get(setup.peer) is not None:
        metrics_user = ratios["user_metrics_vs_peer"]
        full_user = ratios["user_full_vs_peer"]
        out.write(
            "on user CPU only: metrics-only "
            f"{_judged(metrics_user, METRICS_TARGET, intervals['user_metrics_vs_peer'])}, "
            f"full {_judged(full_user, FULL_TARGET, intervals['user_full_vs_peer'])}\n"
        )
    if ratios["full_vs_otel"] is not None:
        out.write(f"pyobs full / OTel contrib: {_fmt(ratios['full_vs_otel'])}\n")
    for floor in FLOORS:
        # A floor: the same target applied to the least that does the work (FLOORS).
        least = added.get(floor.config)
        if least is None or peer is None:
            continue
        ratio = ratios[floor.ratio_key] = _ratio(least, peer, noise.get(setup.peer, 0))
        interval = intervals[floor.ratio_key] = paired_interval(
            rows, floor.config, setup.peer, "cpu_us_rounds"
        )
        out.write(f"{floor.name} / {setup.peer}: {_judged(ratio, floor.target, interval)}\n")
        ours = rows.get(floor.ours, {})
        if not ours.get("error") and ours.get("cpu_us_rounds"):
            above = ratios[floor.above_key] = _paired(ours, rows[floor.config], "cpu_us_rounds")
            leaves = ""
            if floor.config == MINIMAL:  # what the target leaves a metrics middleware
                leaves = (
                    f"; the target leaves {_fmt(floor.target * peer - least, '.1f')} us over "
                    "the minimal middleware"
                )
            out.write(f"{floor.above_name}: {_fmt(above, '+.1f')} us CPU per request{leaves}\n")
    full = added.get("pyobs-full")
    full_p99 = rows.get("pyobs-full", {}).get("p99_ms")
    exports: dict[str, Any] = {}
    for config, row in rows.items():
        if not config.startswith("pyobs-full ") or row.get("error"):
            continue
        cpu = _ratio(added[config], full, noise.get("pyobs-full", 0))
        user = _ratio(
            added_user[config], added_user.get("pyobs-full"), noise_user.get("pyobs-full", 0)
        )
        p99 = _ratio(row["p99_ms"], full_p99)
        cpu_interval = paired_interval(rows, config, "pyobs-full", "cpu_us_rounds")
        exports[config] = {"cpu": cpu, "user_cpu": user, "p99": p99, "cpu_interval": cpu_interval}
        # p99 is one figure per row (over all its rounds): no interval, the figure decides.
        out.write(
            f"{config} / pyobs-full (dropping exporter): added CPU "
            f"{_judged(cpu, EXPORT_TARGET, cpu_interval)}, user CPU {_fmt(user)}, "
            f"p99 {_fmt(p99)} ({verdict(p99, EXPORT_TARGET)}); "
            f"target <= {EXPORT_TARGET}\n"
        )
    parts: dict[str, Any] = {}
    full_row = rows.get("pyobs-full", {})
    for part, signal_name in ((NO_LOG_CONFIG, "access log"), (NO_SPAN_CONFIG, "span")):
        part_row = rows.get(part)
        if part_row is None or part_row.get("error") or not full_row.get("cpu_us_rounds"):
            continue
        # Taken inside each round, as the +us column is: full's CPU minus the part's.
        cost = _paired(full_row, part_row, "cpu_us_rounds")
        cost_user = _paired(full_row, part_row, "user_us_rounds")
        parts[signal_name] = {"cpu_us": cost, "user_us": cost_user}
        out.write(
            f"the {signal_name} (pyobs-full - {part}): {_fmt(cost, '+.1f')} us CPU per request, "
            f"user CPU {_fmt(cost_user, '+.1f')} us\n"
        )
    if bare_p99 is not None:
        ratios["bare_p99_ms"] = bare_p99
    ratios["exports"] = exports
    ratios["parts"] = parts
    return ratios


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in (
        "gunicorn",
        "uvicorn",
        "flask",
        "fastapi",
        "django",
        "prometheus-client",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-grpc",
        "prometheus-flask-exporter",
        "prometheus-fastapi-instrumentator",
        "django-prometheus",
    ):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} -")
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    parts.append(wrk.stdout.split(" [")[0].strip() or "wrk ?")
    return ", ".join(parts)


def _request_spans(count: int) -> list[Any]:
    """``count`` of pyobs's own request spans (RequestSpan), made by Flask requests through
    pyobs (the benchmarks' Flask app, user agent as in the real-server runs), as its exporter
    gets them."""
    from _overhead_apps import build
    from werkzeug.test import Client

    import pyobs
    from pyobs.testing import span_exporter

    pyobs.setup(service_name="bench", tracing=True, access_log=False)
    app = build("flask", "pyobs-full").app
    memory = span_exporter()
    client = Client(app)
    for index in range(count):
        response = client.get(f"/items/{index}", headers={"User-Agent": "wrk"})
        response.get_data()
        response.close()  # the span ends with the body's close, as under a WSGI server
    spans = list(memory.get_finished_spans())
    if len(spans) != count or type(spans[0]).__name__ != "RequestSpan":
        raise SystemExit(f"encode cost: expected {count} pyobs request spans, got {len(spans)}")
    return spans


def encode_cost(batch: int = 512, repeat: int = 10) -> int:
    """Print what serializing spans costs in the exporting process, per span (CPU time).

    The spans look like pyobs's request spans (10 attributes). Compared: the SDK's OTLP
    encoder (as both SDK exporters run it), pyobs's encoder (pyobs/_otlp.py), and compressing
    the result (the SDK's HTTP exporter gzips at level 9, pyobs's at 6).
    """
    import gzip
    import zlib

    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pyobs._otlp import _Encoder, encode

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("pyobs", "1.0")
    for index in range(max(batch, 2048)):  # distinct spans for the send cost's batches too
        with tracer.start_as_current_span(
            "GET /items/{item_id}",
            kind=trace.SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "url.path": f"/items/{index}",
                "url.scheme": "http",
                "http.route": "/items/{item_id}",
                "http.response.status_code": 200,
                "network.protocol.version": "1.1",
                "server.address": "127.0.0.1",
                "server.port": 8000,
                "client.address": "127.0.0.1",
                "user_agent.original": "wrk",
            },
        ):
            pass
    every = memory.get_finished_spans()
    spans = every[:batch]
    body = encode_spans(spans).SerializeToString()
    warm = _Encoder()  # an exporter's encoder after its first batch: pairs already seen
    warm.request(spans)

    def per_span(work: Any) -> float:
        start = time.process_time()
        for _ in range(repeat):
            work()
        return (time.process_time() - start) / repeat / batch * 1e6

    own = _request_spans(batch)
    warm_own = _Encoder()
    warm_own.request(own)
    for span in own:
        span.encoded = warm_own.span(span)  # as pyobs's exporter leaves them when they end

    rows = [
        (
            "SDK OTLP encoder + SerializeToString",
            per_span(lambda: encode_spans(spans).SerializeToString()),
        ),
        ("pyobs encoder, first batch", per_span(lambda: encode(spans))),
        ("pyobs encoder, pairs seen", per_span(lambda: warm.request(spans))),
        (
            "pyobs encoder, pyobs's request spans",
            per_span(lambda: [warm_own.span(span) for span in own]),
        ),
        # What the export thread does, GIL held, with spans encoded as they ended.
        ("pyobs exporter, joining those", per_span(lambda: warm_own.request(own))),
        ("gzip level 9 (SDK HTTP exporter)", per_span(lambda: gzip.compress(body, 9))),
        ("gzip level 6 (pyobs)", per_span(lambda: gzip.compress(body, 6))),
        ("gzip level 1", per_span(lambda: zlib.compress(body, 1, wbits=31))),
    ]
    print(f"# serialization cost, CPU us per span, batches of {batch} request spans")
    print(f"# {len(body) / batch:.0f} bytes per span; gzip: {len(gzip.compress(body)) / batch:.0f}")
    for name, cost in rows:
        print(f"{name:<40} {cost:>7.1f}")
    send_cost(every)
    return 0


def send_cost(spans: Any, sizes: tuple[int, ...] = (128, 512, 2048), rounds: int = 8) -> None:
    """Print what sending one batch costs pyobs's exporter, spans encoded as they ended.

    The receiver is a loopback HTTP server in another process that acknowledges each POST
    with 200, so the figure is the exporting thread's own CPU time (the HTTP client, joining
    the bytes): a fixed part per batch and a part per span, all of it time the thread holds
    the GIL except the socket calls. The first columns are what pyobs does for a plain-http
    endpoint with no proxy (``http.client``, pyobs/_otlp.py); then the same batches through
    requests (what it does for https, a proxy or netrc credentials), and through requests
    with a session that reads the environment on every request, as requests does by
    default (pyobs reads it once). The suite's
    ``OtlpReceiver`` (tests/tracing_backends.py) is not used here: it answers in HTTP/1.0,
    so every batch would pay for a new connection, where a collector keeps it alive.
    """
    from opentelemetry.sdk.trace.export import SpanExportResult

    from pyobs._otlp import OtlpHttpSpanExporter

    with ExitStack() as stack:
        try:
            port = stack.enter_context(acknowledger([]))["ack_http"]
        except BenchError as exc:
            print(f"# send cost: {exc}")
            return
        exporter = OtlpHttpSpanExporter(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces"}
        )

        def per_batch(size: int) -> float:
            batch = spans[:size]
            spent = 0.0
            for _ in range(rounds):
                for span in batch:
                    exporter.pyobs_prepare(span)  # as pyobs's processor does when it ends
                start = time.thread_time()
                result = exporter.export(batch)
                spent += time.thread_time() - start
                if result is not SpanExportResult.SUCCESS:
                    raise SystemExit(
                        f"send cost: a batch was not acknowledged: {exporter.last_error}"
                    )
            return spent / rounds * 1e6

        plain = exporter._plain
        if plain is None:
            raise SystemExit("send cost: the exporter did not take the plain-http path")
        per_batch(16)  # the connections are open
        exporter._plain = None
        per_batch(16)
        exporter._plain = plain
        print("# sending, CPU us of the exporting thread, loopback receiver answering 200")
        print(
            f"{'batch':>6} {'per batch':>10} {'per span':>9} {'through requests':>17} "
            f"{'requests, env read per request':>31}"
        )
        for size in sizes:
            direct = per_batch(size)
            exporter._plain = None  # requests, as for https, a proxy or netrc credentials
            through = per_batch(size)
            exporter._session.trust_env = True  # requests' default: the environment each time
            each = per_batch(size)
            exporter._session.trust_env = False
            exporter._plain = plain
            print(f"{size:>6} {direct:>10.0f} {direct / size:>9.2f} {through:>17.0f} {each:>31.0f}")
        exporter.shutdown()


def _acknowledge(port: int) -> None:
    """A loopback OTLP/HTTP receiver that answers every POST with an empty 200 (the process
    ``acknowledger()`` starts)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma list of " + ", ".join(SETUPS)
    )
    parser.add_argument(
        "--configs",
        default="bare,pyobs-metrics,pyobs-full,peer,otel-contrib",
        help="comma list; 'peer' is the setup's lightest Prometheus peer; 'minimal' (Flask "
        "setups) a minimal metrics middleware, the floor the report sets the targets against; "
        "'plain-contract' and 'plain-contract-full' (Flask setups) what the contract asks of a "
        "request, metrics only and with every signal, written plainly",
    )
    parser.add_argument(
        "--export",
        default="",
        help="OTLP export variants of pyobs-full to add, sent to a real Jaeger: "
        + ", ".join(EXPORTS)
        + "; each may add +OTEL_VAR=VALUE settings; an HTTP one named NAME@ack is sent "
        "to a receiver that acknowledges without parsing instead",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help=f"two rows more, {NO_LOG_CONFIG} and {NO_SPAN_CONFIG}: what the access log and "
        "the span each cost (pyobs-full minus the row, taken inside each round)",
    )
    parser.add_argument(
        "--stdout",
        choices=("file", "pipe"),
        default="file",
        help="where the servers' stdout (pyobs's access lines) goes: a file, or a pipe that "
        "cat drains into that file on the load generator's core, as a container runtime does",
    )
    parser.add_argument("--acknowledge", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--connections", type=int, default=0, help="wrk connections (default: per setup)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--encode-cost",
        action="store_true",
        help="only print what serializing a span and sending a batch cost",
    )
    args = parser.parse_args(argv)
    if args.acknowledge:  # the receiver process acknowledger() starts
        _acknowledge(args.acknowledge)
        return 0
    if args.encode_cost:
        return encode_cost()
    # SIGTERM unwinds like Ctrl-C: every server and Jaeger started so far is stopped on the way.
    signal.signal(signal.SIGTERM, _terminate)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 1.0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    unknown = [name for name in args.setups.split(",") if name and name not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {', '.join(unknown)}; known: {', '.join(SETUPS)}")
    setups = [SETUPS[name] for name in args.setups.split(",") if name]
    if args.connections:
        setups = [dataclasses.replace(s, connections=args.connections) for s in setups]
    configs = [c for c in args.configs.split(",") if c]
    if args.parts:
        configs += [part for part in PART_CONFIGS if part not in configs]
    exports = [e for e in args.export.split(",") if e]
    server_pin, load_pin, pin_note = cores()
    out = sys.stdout
    out.write(
        f"# real servers: {args.rounds} rounds x {args.seconds:g} s per configuration, "
        f"interleaved; {pin_note}; stdout: {STDOUT_NOTES[args.stdout]}\n"
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {_versions()}\n"
        "# figures: medians over rounds; CPU us/req = server process tree utime+stime / "
        "requests wrk completed; spread = (max - min) / median of CPU us/req over rounds; "
        "+us = median over rounds of (CPU us/req - bare's in the same round); "
        "+- = interquartile range of those per-round differences (no ratio is drawn over a "
        "denominator within it); user +us: the same on user CPU only\n"
    )
    data: dict[str, Any] = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "pinning": pin_note,
        "stdout": args.stdout,
        "setups": {},
    }
    failed = False
    with tempfile.TemporaryDirectory(prefix="pyobs-realserver-") as tmp:
        for setup in setups:
            workdir = Path(tmp) / setup.name
            workdir.mkdir()
            try:
                servers = measure_setup(
                    setup,
                    configs,
                    exports,
                    args.rounds,
                    args.seconds,
                    args.warmup,
                    workdir,
                    (server_pin, load_pin),
                    lambda msg: print(msg, file=sys.stderr, flush=True),
                    args.stdout,
                )
            except BenchError as exc:
                out.write(f"\n## {setup.name}: FAILED\n{textwrap.indent(str(exc), '  ')}\n")
                data["setups"][setup.name] = {"error": str(exc)}
                failed = True
                continue
            rows = {name: summarize(server) for name, server in servers.items()}
            ratios = report(setup, rows, args.rounds + 1, out)
            failed = failed or any(row.get("problems") for row in rows.values())
            data["setups"][setup.name] = {
                "describe": setup.describe(),
                "peer": setup.peer,
                "rows": rows,
                "ratios": ratios,
            }
            out.flush()
    out.write(
        "\nVerified per row (checks): every response was a 200 (wrk's Lua hook counts statuses); "
        "pyobs rows: pyobs's request counter matches the requests wrk completed (give or take "
        "those in flight when a run stopped); pyobs full: one span exported per "
        "request, from pyobs's scope, none failed, and one access-log line per request in the "
        "server's stdout file (without the access log, none; without the span, no span); "
        "metrics-only: no span, no access line; the minimal middleware and the plain-contract "
        "rows: their own count of requests matches wrk's (plain-contract-full: one span and "
        "one access line per request); OTel contrib: spans "
        "exported (fewer than one per request is its loss, shown after 'ok', not a failed "
        "check).\n"
    )
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
