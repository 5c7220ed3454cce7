"""Per-request overhead of pyobs next to its peers, measured in-process (no sockets).

    python benchmarks/overhead.py                       # every framework, ~3-4 minutes
    python benchmarks/overhead.py --frameworks flask,fastapi --rounds 20
    python benchmarks/overhead.py --quick               # smoke run: a few requests each
    python benchmarks/overhead.py --floors              # the building blocks' own cost
    python benchmarks/overhead.py --profile flask:pyobs-full   # where the time goes

Each configuration (bare app, pyobs with metrics only, pyobs with metrics + spans + access
log, the Prometheus peers, the OTel contrib instrumentation) runs in its own worker process,
because pyobs, the OTel tracer provider and the Prometheus registry are process-wide. The
workers of one framework start together and then take turns: every round measures each
configuration for a short burst, in a shuffled order, so machine noise hits them alike. The
figure per configuration is the median over rounds of process CPU microseconds per request
(wall-clock time is shown too). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import os
import platform
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _intervals import BOOTSTRAP_SAMPLES, INTERVAL, MIN_ROUNDS_FOR_INTERVAL, central, describe, side
from _overhead_apps import (
    BASE_CONFIGS,
    DRIVEN_AS,
    FRAMEWORKS,
    NO_LOG_CONFIG,
    NO_SPAN_CONFIG,
    PART_CONFIGS,
    Target,
    build,
    missing_module,
    pyobs_signals,
)

ROOT = Path(__file__).resolve().parent.parent
REQUEST_PATH = "/items/7"
HEADERS = {
    "host": "bench.local",
    "user-agent": "pyobs-bench/1",
    "accept": "application/json",
    "accept-encoding": "gzip",
}
# Targets, as ratios of added per-request overhead. The first round's (issue 2):
METRICS_TARGET = 0.5  # pyobs-metrics vs the lightest Prometheus peer
FULL_TARGET = 0.25  # pyobs-full vs the OTel contrib instrumentation
# The performance round's (issue 18), against the lightest Prometheus peer's metrics-only cost:
METRICS_PEER_TARGET = 0.33  # pyobs-metrics
FULL_PEER_TARGET = 1.0  # pyobs-full: every signal for what the peer charges for metrics
EXPORT_TARGET = 1.2  # pyobs-full+jaeger (OTLP to a real Jaeger) vs pyobs-full (dropping)
# An extra row (--log-file): pyobs-full with its access log written to a file, as in
# production, instead of /dev/null.
LOG_FILE_CONFIG = "pyobs-full+log-file"
# An extra row (--sdk-bsp): pyobs-full on the SDK's own BatchSpanProcessor (512-span batches),
# as when the app installs its own provider and pyobs adopts it.
SDK_BSP_CONFIG = "pyobs-full+sdk-bsp"
# An extra row (--batch-512): pyobs-full with OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512 (the SDK's
# batch size instead of pyobs's 2048): what the queued spans cost the garbage collector.
BATCH_512_CONFIG = "pyobs-full+batch-512"
# An extra row (--jaeger): pyobs-full exporting OTLP over HTTP to a real Jaeger (started by the
# benchmark), with pyobs's own exporter, as pyobs.setup() installs it for an OTLP endpoint;
# spans count as exported only when Jaeger acknowledged them.
JAEGER_CONFIG = "pyobs-full+jaeger"
JAEGER_ENDPOINT_VAR = "BENCH_OTLP_ENDPOINT"  # the parent tells the worker where Jaeger is
FULL_VARIANTS = (LOG_FILE_CONFIG, SDK_BSP_CONFIG, BATCH_512_CONFIG, JAEGER_CONFIG)
# The part rows (--parts), NO_LOG_CONFIG and NO_SPAN_CONFIG, are in _overhead_apps.
EXTRA_CONFIGS = (*FULL_VARIANTS, *PART_CONFIGS)
# With --baseline DIR: pyobs's two rows again, with pyobs imported from DIR (another checkout),
# so a change is measured against the code before it in one interleaved run.
BASELINE = "@baseline"
BASELINE_CONFIGS = ("pyobs-metrics" + BASELINE, "pyobs-full" + BASELINE)
# With --baseline and --jaeger: the export row again, pyobs from DIR.
JAEGER_BASELINE = JAEGER_CONFIG + BASELINE
_baseline_dir: str | None = None  # set by main() from --baseline
_batch_512 = False  # set by main() from --batch-512
_jaeger_endpoint: str | None = None  # set by main() for --jaeger: Jaeger's OTLP/HTTP endpoint


# ======================================================================================
# worker side: one configuration per process
# ======================================================================================


class _FileWrapper:
    """The environ's ``wsgi.file_wrapper`` (PEP 3333's optional one; no route here uses it)."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike, self.blksize = filelike, blksize


class _Drivers:
    """Runs one request against a target; returns the status (every driver checks it)."""

    @staticmethod
    def wsgi(app: Any) -> Callable[[], int]:
        # The keys gunicorn's sync worker puts in the environ of this request (every one, so
        # the dict is the size a production environ is: with fewer, the key Flask or pyobs
        # adds can be the one that makes the dict grow, on every request;
        # docs/benchmarks-journal.md).
        template = {
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": _FileWrapper,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "gunicorn",
            "gunicorn.socket": None,
            "REQUEST_METHOD": "GET",
            "QUERY_STRING": "",
            "RAW_URI": REQUEST_PATH,
            "SERVER_PROTOCOL": "HTTP/1.1",
            **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in HEADERS.items()},
            "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "40000",
            "SERVER_NAME": "bench.local",
            "SERVER_PORT": "80",
            "PATH_INFO": REQUEST_PATH,
            "SCRIPT_NAME": "",
            "wsgi.early_hints": lambda headers: None,
        }
        status: list[str] = []

        def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(line)
            return lambda data: None

        def one() -> int:
            environ = dict(template)
            environ["wsgi.input"] = io.BytesIO(b"")
            status.clear()
            body = app(environ, start_response)
            try:
                for _chunk in body:
                    pass
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            return int(status[0].split(" ", 1)[0])

        return one

    @staticmethod
    def asgi(app: Any) -> Callable[[], Any]:
        template = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": REQUEST_PATH,
            "raw_path": REQUEST_PATH.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in HEADERS.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("bench.local", 80),
        }
        request_message = {"type": "http.request", "body": b"", "more_body": False}

        class Cycle:
            """What a server keeps per request, as uvicorn's RequestResponseCycle does: the
            scope, and the receive and send the app gets are its methods (so anything that
            keeps them keeps the scope too)."""

            def __init__(self, scope: dict[str, Any]) -> None:
                self.scope = scope
                self.first = True
                self.sent: list[int] = []

            async def receive(self) -> dict[str, Any]:
                if self.first:
                    self.first = False
                    return request_message
                # A real server blocks here until the client goes away; ours never does.
                await asyncio.get_running_loop().create_future()
                raise AssertionError("unreachable")

            async def send(self, message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    self.sent.append(message["status"])

        async def one() -> int:
            scope = dict(template)
            scope["state"] = {}
            cycle = Cycle(scope)
            await app(scope, cycle.receive, cycle.send)
            return cycle.sent[0]

        return one

    @staticmethod
    def tornado(app: Any) -> Callable[[], Any]:
        from tornado import httputil
        from tornado.concurrent import Future

        class Context:
            remote_ip = "127.0.0.1"
            protocol = "http"
            address = ("127.0.0.1", 40000)
            trusted_downstream: set[str] = set()

        class Connection(httputil.HTTPConnection):
            """What tornado's HTTP1Connection offers a handler, writing to memory."""

            def __init__(self) -> None:
                self.context = Context()
                self.status = 0
                self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def set_close_callback(self, callback: Any) -> None:
                pass

            def write_headers(
                self, start_line: Any, headers: Any, chunk: bytes | None = None
            ) -> Future[None]:
                self.status = start_line.code
                return _done_future()

            def write(self, chunk: bytes) -> Future[None]:
                return _done_future()

            def finish(self) -> None:
                if not self.done.done():
                    self.done.set_result(None)

            def detach(self) -> Any:
                raise NotImplementedError

        def _done_future() -> Future[None]:
            future: Future[None] = Future()
            future.set_result(None)
            return future

        start_line = httputil.RequestStartLine("GET", REQUEST_PATH, "HTTP/1.1")
        raw_headers = list(HEADERS.items())

        async def one() -> int:
            connection = Connection()
            headers = httputil.HTTPHeaders()
            for name, value in raw_headers:
                headers.add(name, value)
            delegate = app.start_request(object(), connection)
            pending = delegate.headers_received(start_line, headers)
            if pending is not None:
                await pending
            delegate.finish()
            await connection.done
            return connection.status

        return one

    @staticmethod
    def aiohttp(app: Any) -> Callable[[], Any]:
        from aiohttp import web

        class Transport(asyncio.Transport):
            """An in-memory connection: completes a future when a whole response is written."""

            def __init__(self) -> None:
                super().__init__()
                self.buffer = bytearray()
                self.waiter: asyncio.Future[int] | None = None
                self.closed = False

            def write(self, data: Any) -> None:
                self.buffer += data
                self._check()

            def writelines(self, lines: Any) -> None:
                for data in lines:
                    self.buffer += data
                self._check()

            def _check(self) -> None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                at = head.find(b"content-length:")
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop > 0 else None])
                if len(self.buffer) >= end + 4 + length:
                    status = int(self.buffer[9:12])
                    del self.buffer[: end + 4 + length]
                    if self.waiter is not None and not self.waiter.done():
                        self.waiter.set_result(status)

            def is_closing(self) -> bool:
                return self.closed

            def close(self) -> None:
                self.closed = True

            def get_extra_info(self, name: str, default: Any = None) -> Any:
                extra = {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 80)}
                return extra.get(name, default)

            def pause_reading(self) -> None:
                pass

            def resume_reading(self) -> None:
                pass

            def get_write_buffer_size(self) -> int:
                return 0

            def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
                pass

        raw = (
            f"GET {REQUEST_PATH} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
            + "\r\n"
        ).encode()
        state: dict[str, Any] = {}

        async def one() -> int:
            if not state:
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()  # freezes the app, runs on_startup
                protocol = runner.server()  # type: ignore[misc]
                transport = Transport()
                protocol.connection_made(transport)
                state.update(runner=runner, protocol=protocol, transport=transport)
            transport = state["transport"]
            transport.waiter = asyncio.get_running_loop().create_future()
            state["protocol"].data_received(raw)
            status: int = await transport.waiter
            return status

        return one


async def _sanic_lifespan(app: Any) -> None:
    """Run Sanic's ASGI lifespan startup so its routes are finalised."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            if message["type"].endswith("failed"):
                started.set_exception(RuntimeError(message.get("message", "startup failed")))
            else:
                started.set_result(None)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.get_running_loop().create_task(app(scope, inbox.get, send))
    _background.add(task)
    await asyncio.wait_for(started, 30)


_background: set[asyncio.Task[None]] = set()


class _CountingDropExporter:
    """A span exporter that drops every span after counting it."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.spans = 0
        self.scopes: dict[str, int] = {}
        # Imported once: an import inside export() would charge both pyobs-full and
        # otel-contrib the import machinery on every span.
        self.success = SpanExportResult.SUCCESS

    def export(self, spans: Sequence[Any]) -> Any:
        self.spans += len(spans)
        for span in spans:
            if type(span) is bytes:  # a pyobs request span, encoded as it ended (below)
                name = "pyobs"
            else:
                scope = span.instrumentation_scope
                name = scope.name if scope is not None else "?"
            self.scopes[name] = self.scopes.get(name, 0) + 1
        return self.success

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _AcknowledgedCount(_CountingDropExporter):
    """Counts the spans a real exporter delivered (the receiver acknowledged them)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        # As pyobs.setup() installs it: pyobs's batch processor has pyobs's OTLP exporter
        # encode each span as it ends and queues the bytes of its request spans.
        prepare = getattr(inner, "pyobs_prepare", None)
        if prepare is not None:
            self.pyobs_prepare = prepare

    def export(self, spans: Sequence[Any]) -> Any:
        result = self.inner.export(spans)
        if result is self.success:
            super().export(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def setup_timing_process(full: bool, service: str) -> tuple[Any, Any, Any]:
    """pyobs.setup() for a process that times several apps in turn (paired.py, context.py).

    With ``full``: spans through the batch processor ``pyobs.setup()`` installs, to an exporter
    that counts and drops them, and the access log on stdout, sent to /dev/null. Returns
    (the stream the result goes to, the exporter, the processor); the last two are None
    without ``full``.
    """
    import pyobs

    out: Any = sys.stdout
    exporter: Any = None
    processor: Any = None
    if full:
        out = _quiet_stdout()  # the access lines go to /dev/null, the result to the parent
        exporter = _CountingDropExporter()
        processor = install_span_pipeline(exporter, service=service)
    pyobs.setup(service_name=service, tracing=full, access_log=full)
    return out, exporter, processor


def in_turn(
    burst: Callable[[str, int], float], names: Sequence[str], rounds: int, requests: int
) -> dict[str, list[float]]:
    """Each app's figure per round, the apps taking turns (``burst(name, count)`` times one
    app's burst), after a warm-up burst each that takes first-use work out of the rounds."""
    for name in names:
        burst(name, max(requests, 50))
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            times[name].append(burst(name, requests))
    return times


def emitted(exporter: Any, processor: Any) -> dict[str, int]:
    """Spans exported (the processor flushed first) and access lines written so far."""
    processor.force_flush()
    return {"spans": exporter.spans, "lines": _LineCount().value()}


def install_span_pipeline(exporter: Any, sdk_bsp: bool = False, service: str = "bench") -> Any:
    """Install a tracer provider exporting to ``exporter``; return its span processor.

    As in production: a batch processor (spans leave on its own thread) and a resource
    naming the service, as pyobs.setup(service_name=...) does. The provider and processor
    are the ones each side installs for an exporter: the SDK's for contrib (and for the
    --sdk-bsp row, as when the app brings its own provider), pyobs's (pyobs/_spans.py) for
    pyobs.setup().
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from pyobs import _spans

    # A baseline from before pyobs had its own provider: the SDK's, as it installed.
    pyobs_provider: Any = getattr(_spans, "PyobsTracerProvider", TracerProvider)
    processor = BatchSpanProcessor(exporter) if sdk_bsp else _spans.batch_processor(exporter)
    settings = getattr(processor, "settings", None)  # pyobs's processor says
    exporter.batch_size = getattr(settings, "max_export_batch_size", None)
    provider_type = TracerProvider if sdk_bsp else pyobs_provider
    provider = provider_type(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return processor


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client import REGISTRY

    total = 0.0
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def _route_labels() -> set[str]:
    from prometheus_client import REGISTRY

    found = set()
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == "http_server_request_duration_seconds_count":
                found.add(s.labels.get("http_route", ""))
    return found


@dataclass
class Burst:
    """What one burst measured."""

    count: int
    wall_ns: int
    cpu_ns: int
    bad: int
    switches: int = 0  # voluntary context switches of all the process's threads
    gc_ns: int = 0  # CPU time the cyclic garbage collector took, all threads


class _GcClock:
    """CPU time spent in the cyclic garbage collector, from ``gc.callbacks`` (every
    generation, on whichever thread collects): spans waiting in a batch processor's queue
    survive into older generations and make collections longer and more frequent."""

    def __init__(self) -> None:
        self.total_ns = 0
        self._started: dict[int, int] = {}
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict[str, Any]) -> None:
        now = time.thread_time_ns()
        if phase == "start":
            self._started[info["generation"]] = now
        else:
            self.total_ns += now - self._started.pop(info["generation"], now)


_gc_clock: _GcClock | None = None


def _gc_ns() -> int:
    global _gc_clock
    if _gc_clock is None:
        _gc_clock = _GcClock()
    return _gc_clock.total_ns


def _voluntary_switches() -> int:
    """Voluntary context switches so far, summed over this process's threads (Linux; else 0).

    A thread that waits for the GIL while the request thread keeps releasing it for short
    system calls (an access-log write) is woken and put back to sleep once per release: the
    switches per request show that hand-off, which costs system time but few instructions.
    """
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


class Bench:
    """One configuration built in this process, ready to run bursts of requests."""

    def __init__(self, framework: str, config: str) -> None:
        for name in list(os.environ):
            if name.startswith(("PYOBS_", "OTEL_")):
                del os.environ[name]
        self.config = config
        config = config.removesuffix(BASELINE)  # the same row; pyobs came from the baseline
        sdk_bsp = config in (SDK_BSP_CONFIG, "otel-contrib")
        tracing, access_log = pyobs_signals(config)
        if config == BATCH_512_CONFIG:
            os.environ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] = "512"  # read by batch_processor()
        if config in EXTRA_CONFIGS:
            config = "pyobs-full"  # the same app; only stdout, processor or signals differ
        self.exporter: _CountingDropExporter | None = None
        if tracing or config == "otel-contrib":
            self.exporter = _CountingDropExporter()
            if self.config.removesuffix(BASELINE) == JAEGER_CONFIG:
                from pyobs._otlp import OtlpHttpSpanExporter

                endpoint = os.environ[JAEGER_ENDPOINT_VAR]
                otlp = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
                self.exporter = _AcknowledgedCount(otlp)
            install_span_pipeline(self.exporter, sdk_bsp)
        if config.startswith("pyobs"):
            import pyobs

            pyobs.setup(service_name="bench", tracing=tracing, access_log=access_log)

        self.access_lines = _LineCount()
        self.target = build(framework, config)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        if framework == "sanic":
            self.loop.run_until_complete(_sanic_lifespan(self.target.app))
        make = getattr(_Drivers, self.target.kind)
        self.served = 0  # requests sent so far (first request and warm-up included)
        self.one = make(self.target.app)
        self.is_async = asyncio.iscoroutinefunction(self.one)
        # Start-up in CPU time (the workers start side by side, so wall time would mostly
        # measure each other): the interpreter, imports, setup and app (the bare row is the
        # framework's own), then the first request, which pays every first-use cost.
        self.startup_ms = time.process_time() * 1000
        first = time.process_time()
        status = self.loop.run_until_complete(self.one()) if self.is_async else self.one()
        if status != 200:
            raise RuntimeError(f"the first request answered {status}")
        self.served += 1
        self.first_request_ms = (time.process_time() - first) * 1000

    def run(self, seconds: float, limit: int) -> Burst:
        """Send requests in groups of 16 until ``seconds`` pass or ``limit`` requests are sent.

        Wall and process CPU time are both taken; CPU time (all threads of this process) is
        what the report uses, because it does not count time the OS gave other processes.
        """
        if self.is_async:
            return self.loop.run_until_complete(self._run_async(seconds, limit))
        one = self.one
        count, bad = 0, 0
        switches = _voluntary_switches()
        collecting = _gc_ns()
        cpu = time.process_time_ns()
        start = time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)
        while count < limit:
            for _ in range(16):
                if one() != 200:
                    bad += 1
            count += 16
            if time.perf_counter_ns() >= deadline:
                break
        wall = time.perf_counter_ns() - start
        self.served += count
        cpu = time.process_time_ns() - cpu
        return Burst(count, wall, cpu, bad, _voluntary_switches() - switches, _gc_ns() - collecting)

    async def _run_async(self, seconds: float, limit: int) -> Burst:
        one = self.one
        count, bad = 0, 0
        switches = _voluntary_switches()
        collecting = _gc_ns()
        cpu = time.process_time_ns()
        start = time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)
        while count < limit:
            for _ in range(16):
                if await one() != 200:
                    bad += 1
            count += 16
            if time.perf_counter_ns() >= deadline:
                break
        wall = time.perf_counter_ns() - start
        self.served += count
        cpu = time.process_time_ns() - cpu
        return Burst(count, wall, cpu, bad, _voluntary_switches() - switches, _gc_ns() - collecting)

    def facts(self) -> dict[str, Any]:
        """What the warm-up proved: spans per request, recorded routes, access log lines."""
        if self.exporter is not None:
            from opentelemetry import trace

            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if flush is not None:
                flush()  # the batch processor exports on its own thread: count every span
        facts = _facts(self.config, self.served, self.exporter, self.target)
        facts["warmup_requests"] = self.served
        facts["access_log_lines"] = self.access_lines.value()
        facts["startup_ms"] = round(self.startup_ms, 1)
        facts["first_request_ms"] = round(self.first_request_ms, 2)
        return facts


def _quiet_stdout(to_file: bool = False) -> Any:
    """Send fd 1 (the app's and pyobs's JSON logs) to /dev/null, or to a temporary file as a
    production log file would take them; return a stream to the old fd 1."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    if to_file:
        sink = tempfile.TemporaryFile("wb")  # noqa: SIM115 - open for the worker's life
        os.dup2(sink.fileno(), 1)
    else:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    return out


def worker(framework: str, config: str) -> int:
    """Build one configuration, then serve 'run SECONDS LIMIT' commands from stdin."""
    proto = _quiet_stdout(to_file=config == LOG_FILE_CONFIG)
    bench = Bench(framework, config)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] in ("run", "warmup"):
            b = bench.run(float(words[1]), int(words[2]))
            reply: dict[str, Any] = {
                "count": b.count,
                "ns": b.wall_ns,
                "cpu_ns": b.cpu_ns,
                "bad": b.bad,
                "switches": b.switches,
                "gc_ns": b.gc_ns,
            }
            if words[0] == "warmup":
                reply["facts"] = bench.facts()
            proto.write(json.dumps(reply) + "\n")
    return 0


def _package_of(filename: str, name: str) -> str:
    """A readable owner for a profiled function: pyobs module, top-level package or builtin."""
    if filename == "~":
        return "builtins: " + name.split(" of ")[0].strip("{}<>").replace("built-in method ", "")
    path = Path(filename)
    parts = path.parts
    if "pyobs" in parts:
        return "pyobs/" + "/".join(parts[parts.index("pyobs") + 1 :])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if path.name in ("overhead.py", "_overhead_apps.py"):
        return "benchmark driver"
    folder = "" if path.parent.name.startswith("python3") else path.parent.name + "/"
    return f"stdlib {folder}{path.stem}"


def floors(iterations: int) -> int:
    """Print what the building blocks cost here: the floor under any instrumentation."""
    import logging

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind
    from prometheus_client import CollectorRegistry, Gauge, Histogram

    import pyobs

    out = _quiet_stdout()
    registry = CollectorRegistry()
    histogram = Histogram("floor_seconds", "floor", ["a", "b", "c"], registry=registry)
    child = histogram.labels("GET", "/items/{item_id}", "200")
    gauge = Gauge("floor_active", "floor", ["a"], registry=registry).labels("GET")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_CountingDropExporter()))  # type: ignore[arg-type]
    tracer = provider.get_tracer("floor")
    attributes: dict[str, Any] = {
        "http.request.method": "GET",
        "url.path": "/items/7",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "bench.local",
        "server.port": 80,
        "client.address": "127.0.0.1",
        "user_agent.original": "pyobs-bench/1",
    }
    os.environ.pop("PYOBS_LOG_FORMAT", None)
    pyobs.setup(service_name="floor", tracing=False)
    access = logging.getLogger("pyobs.access")
    extra = {
        "http.request.id": "0" * 32,
        "event.dataset": "pyobs.access",
        "http.request.method": "GET",
        "url.path": "/items/7",
        "http.route": "/items/{item_id}",
        "http.response.status_code": 200,
        "http.response.body.bytes": 42,
        "event.duration": 123456,
        "client.ip": "127.0.0.1",
        "user_agent.original": "pyobs-bench/1",
    }

    def inc_dec() -> None:
        gauge.inc()
        gauge.dec()

    def span() -> None:
        s = tracer.start_span("GET", kind=SpanKind.SERVER, attributes=attributes)
        s.set_attribute("http.route", "/items/{item_id}")
        s.set_attribute("http.response.status_code", 200)
        s.end()

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("histogram observe (bound child)", lambda: child.observe(0.01)),
        (
            "histogram observe with exemplar",
            lambda: child.observe(0.01, {"trace_id": "0" * 32}),
        ),
        ("gauge inc + dec (bound child)", inc_dec),
        ("SDK span: start, 2 attributes, end (8 at start)", span),
        (
            "pyobs ECS access-log line to /dev/null",
            lambda: access.info("GET /items/7 200", extra=extra),
        ),
    ]
    out.write(f"# floors: process CPU us per operation, median of 5 x {iterations}\n")
    for name, fn in cases:
        samples = []
        for _ in range(5):
            start = time.process_time_ns()
            for _ in range(iterations):
                fn()
            samples.append((time.process_time_ns() - start) / iterations / 1000)
        out.write(f"{name:<52}{statistics.median(samples):>8.2f}\n")
    return 0


# Code that works on behalf of its caller: its time is charged to whoever called it.
_HELPERS = ("builtins: ", "stdlib ", "prometheus_client", "opentelemetry", "structlog")


def _own_time(raw: dict[Any, Any]) -> dict[str, float]:
    table: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in raw.items():
        key = _package_of(filename, name)
        table[key] = table.get(key, 0.0) + tottime
    return table


def _charged(raw: dict[Any, Any]) -> dict[str, float]:
    """Own time, with helper code's time charged (through its callers) to the calling owner."""
    memo: dict[Any, dict[str, float]] = {}

    def owners(func: Any, stack: frozenset[Any]) -> dict[str, float]:
        if func in memo:
            return memo[func]
        key = _package_of(func[0], func[2])
        callers = raw.get(func, (0, 0, 0, 0, {}))[4]
        if not key.startswith(_HELPERS) or not callers or func in stack:
            return {key: 1.0}
        weights = {c: v[2] + 1e-12 for c, v in callers.items()}
        total = sum(weights.values())
        shares: dict[str, float] = {}
        for caller, weight in weights.items():
            for owner, share in owners(caller, stack | {func}).items():
                shares[owner] = shares.get(owner, 0.0) + share * weight / total
        memo[func] = shares
        return shares

    table: dict[str, float] = {}
    for func, (_, _, tottime, _, _) in raw.items():
        for owner, share in owners(func, frozenset()).items():
            table[owner] = table.get(owner, 0.0) + tottime * share
    return table


def profile(framework: str, config: str, seconds: float, top: int) -> int:
    """Run one configuration under cProfile and print where the time goes."""
    import cProfile
    import pstats

    out = _quiet_stdout()
    bench = Bench(framework, config)
    bench.run(0.5, 10**9)  # warm-up
    profiler = cProfile.Profile(time.process_time)  # CPU time: not the other tenants
    profiler.enable()
    b = bench.run(seconds, 10**9)
    profiler.disable()
    out.write(
        f"# {framework} {config}: {b.count} requests, "
        f"{b.cpu_ns / b.count / 1000:.1f} us CPU/request under cProfile\n"
    )
    stats = pstats.Stats(profiler, stream=out)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for title, table in (
        ("own time by package", _own_time(raw)),
        ("time by owner: library, stdlib and builtin calls charged to their caller", _charged(raw)),
    ):
        total = sum(table.values()) or 1.0
        out.write(f"# {title} (us CPU/request under cProfile, share):\n")
        for key, spent in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            out.write(f"{key:<48}{spent / b.count * 1e6:>9.1f}{100 * spent / total:>7.1f}%\n")
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return 0


class _LineCount:
    """Log lines pyobs wrote, from its own pyobs_log_events_total counter.

    A counting logging filter would be simpler, but any filter switches pyobs's access log
    from its direct path to the general logging path, so it would change what is measured.
    """

    def value(self) -> int:
        from prometheus_client import REGISTRY

        total = 0.0
        for level in ("info", "warning", "error"):
            total += REGISTRY.get_sample_value("pyobs_log_events_total", {"level": level}) or 0
        return int(total)


def _facts(config: str, requests: int, exporter: Any, target: Target) -> dict[str, Any]:
    """What the warm-up proved: spans per request, recorded routes, access log lines."""
    facts: dict[str, Any] = {"note": target.note}
    if exporter is not None:
        facts["spans_exported"] = exporter.spans
        facts["spans_per_request"] = round(exporter.spans / max(requests, 1), 2)
        facts["span_scopes"] = {
            name: round(n / max(requests, 1), 2) for name, n in sorted(exporter.scopes.items())
        }
        facts["export_batch_size"] = getattr(exporter, "batch_size", None)
    if config.startswith("pyobs"):
        facts["pyobs_requests"] = _sample("http_server_request_duration_seconds_count")
        facts["pyobs_routes"] = sorted(_route_labels())
        # pyobs's modules this worker runs as compiled extensions (benchmarks/compiled.py)
        facts["pyobs_compiled"] = sorted(
            name
            for name, module in list(sys.modules.items())
            if name.startswith("pyobs.")
            and str(getattr(module, "__file__", None) or "").endswith((".so", ".pyd"))
        )
    return facts


# ======================================================================================
# parent side: start the workers of one framework, interleave their bursts, report
# ======================================================================================


@dataclass
class Worker:
    """A running configuration and its per-round figures."""

    framework: str
    config: str
    proc: subprocess.Popen[str] | None = None
    stderr: Any = None
    us_per_request: list[float] = field(default_factory=list)  # CPU time, per round
    wall_us: list[float] = field(default_factory=list)  # wall-clock time, per round
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    requests: int = 0
    switches: int = 0  # voluntary context switches over the measured bursts
    gc_ns: int = 0  # CPU time in the cyclic garbage collector over the measured bursts

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        """Send one command; wait at most ``timeout`` seconds for its JSON reply."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"no reply to {command!r}: {self.stderr_tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stderr_tail(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        text: str = self.stderr.read()
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-400:] or f"worker exited ({self.returncode()})"

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.write("quit\n")
                    self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        if self.stderr is not None:
            self.stderr.close()


def configs_for(
    framework: str, log_file: bool = False, sdk_bsp: bool = False, parts: bool = False
) -> list[str]:
    """Every configuration measured for a framework (--log-file, --sdk-bsp, --parts: more)."""
    extra = [LOG_FILE_CONFIG] if log_file else []
    extra += [SDK_BSP_CONFIG] if sdk_bsp else []
    extra += [BATCH_512_CONFIG] if _batch_512 else []
    extra += [JAEGER_CONFIG] if _jaeger_endpoint else []
    extra += list(PART_CONFIGS) if parts else []
    extra += list(BASELINE_CONFIGS) if _baseline_dir else []
    extra += [JAEGER_BASELINE] if _baseline_dir and _jaeger_endpoint else []
    return [*BASE_CONFIGS, *extra, *FRAMEWORKS[framework][2]]


def _start(framework: str, config: str) -> Worker:
    w = Worker(framework, config)
    missing = missing_module(framework, config)
    if missing is not None:
        w.error = (
            "pyobs adapter missing"
            if config.startswith("pyobs") and missing.startswith("pyobs")
            else f"not installed: {missing}"
        )
        return w
    w.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by Worker.stop()
    roots = [str(ROOT)]
    if config.endswith(BASELINE) and _baseline_dir:
        roots.insert(0, _baseline_dir)  # its pyobs package comes first
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")]),
    }
    if config in (JAEGER_CONFIG, JAEGER_BASELINE) and _jaeger_endpoint:
        env[JAEGER_ENDPOINT_VAR] = _jaeger_endpoint
    w.proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", framework, config],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=w.stderr,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    return w


def measure_framework(
    framework: str,
    rounds: int,
    burst: float,
    warmup: float,
    limit: int,
    seed: int,
    log_file: bool = False,
    sdk_bsp: bool = False,
    parts: bool = False,
    replicas: int = 1,
) -> list[Worker]:
    """Start every configuration of ``framework``, warm up, then interleave bursts.

    With ``replicas`` > 1 each configuration runs in that many worker processes, all
    interleaved, and its figures pool their rounds: one process's memory layout (address
    space randomisation, hash seed) can make it a microsecond or two faster or slower for
    its whole life, which more rounds do not average out but more processes do.
    """
    configs = configs_for(framework, log_file, sdk_bsp, parts)
    workers = [_start(framework, c) for c in configs for _ in range(replicas)]
    live = [w for w in workers if w.proc is not None]
    try:
        for w in live:
            try:
                reply = w.ask(f"warmup {warmup} {limit}", timeout=120)
                w.facts = reply["facts"]
                if reply["bad"]:
                    w.error = f"{reply['bad']} of {reply['count']} warm-up requests not 200"
            except (RuntimeError, ValueError, KeyError) as exc:
                w.error = f"failed to start: {exc}"
        live = [w for w in live if not w.error]
        rng = random.Random(seed)
        for _ in range(rounds):
            order = live[:]
            rng.shuffle(order)
            for w in order:
                if w.error:
                    continue
                try:
                    reply = w.ask(f"run {burst} {limit}", timeout=60)
                except (RuntimeError, ValueError) as exc:
                    w.error = f"crashed: {exc}"
                    continue
                if reply["bad"]:
                    w.error = f"{reply['bad']} of {reply['count']} requests not 200"
                w.requests += reply["count"]
                w.switches += int(reply.get("switches", 0))
                w.gc_ns += int(reply.get("gc_ns", 0))
                w.us_per_request.append(reply["cpu_ns"] / reply["count"] / 1000)
                w.wall_us.append(reply["ns"] / reply["count"] / 1000)
    finally:
        for w in workers:
            w.stop()
    return [_pooled([w for w in workers if w.config == c]) for c in configs]


def _pooled(replicas: list[Worker]) -> Worker:
    """One configuration's replicas as one worker: rounds and counts pooled, the first error."""
    first = replicas[0]
    if len(replicas) == 1:
        return first
    # The facts of the replica that exported the fewest spans per request: a loss shows.
    worst = min(replicas, key=lambda w: w.facts.get("spans_per_request", 0))
    pooled = Worker(first.framework, first.config, facts=worst.facts)
    pooled.error = next((w.error for w in replicas if w.error), "")
    for w in replicas:
        pooled.us_per_request += w.us_per_request
        pooled.wall_us += w.wall_us
        pooled.requests += w.requests
        pooled.switches += w.switches
        pooled.gc_ns += w.gc_ns
    return pooled


def median(w: Worker) -> float | None:
    """Median CPU microseconds per request over the rounds."""
    return statistics.median(w.us_per_request) if w.us_per_request and not w.error else None


def spread(values: list[float]) -> float:
    """Interquartile range relative to the median, in percent (how noisy the rounds were)."""
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return 100 * (q3 - q1) / statistics.median(values)


def report_framework(framework: str, workers: list[Worker], out: Any) -> list[str]:
    """Print one framework's table; return its target verdict lines."""
    kind = FRAMEWORKS[framework][0]
    by_config = {w.config: w for w in workers}
    bare = median(by_config["bare"])
    peers = [
        w
        for w in workers
        if w.config not in (*BASE_CONFIGS, *EXTRA_CONFIGS, *BASELINE_CONFIGS, JAEGER_BASELINE)
    ]
    out.write(f"\n## {framework}  (driven as: {DRIVEN_AS[kind]})\n")
    notes = sorted({w.facts.get("note", "") for w in workers if w.facts.get("note")})
    for note in notes:
        out.write(f"   note: {note}\n")
    out.write(
        f"{'configuration':<34}{'us/req':>8}{'+us':>8}{'x bare':>7}{'IQR%':>6}{'wall':>8}"
        "  vs peers / notes\n"
    )
    for w in workers:
        m = median(w)
        if m is None:
            dashes = f"{'-':>8}{'-':>8}{'-':>7}{'-':>6}{'-':>8}"
            out.write(f"{w.config:<34}{dashes}  {w.error or 'no data'}\n")
            continue
        added = m - bare if bare is not None else None
        cells = [
            f"{w.config:<34}{m:>8.1f}",
            f"{added:>+8.1f}" if added is not None else f"{'-':>8}",
            f"{m / bare:>7.2f}" if bare else f"{'-':>7}",
            f"{spread(w.us_per_request):>6.0f}",
            f"{statistics.median(w.wall_us):>8.1f}",
        ]
        extra = []
        if added is not None and w.config.startswith("pyobs"):
            for p in peers:
                pm = median(p)
                if pm is not None and bare is not None and pm - bare > 0:
                    extra.append(f"{added / (pm - bare):.2f} of {p.config}")
        if "spans_per_request" in w.facts:
            scopes = ", ".join(f"{k} {v:g}" for k, v in w.facts.get("span_scopes", {}).items())
            extra.append(f"{w.facts['spans_per_request']:g} spans/req ({scopes})")
            served = w.facts.get("warmup_requests", 0)
            exported = w.facts.get("spans_exported", 0)
            # Every request makes at least one SERVER span: fewer exported ones were lost.
            if exported < served:
                extra.append(f"LOSES SPANS: {exported} exported for {served} requests")
        if w.config.startswith("pyobs"):
            routes = [r for r in w.facts.get("pyobs_routes", []) if r != "<unmatched>"]
            extra.append(f"route {routes[0]}" if routes else "NO route recorded")
            if w.config in ("pyobs-full", "pyobs-full" + BASELINE, *FULL_VARIANTS, JAEGER_BASELINE):
                per_request = w.facts.get("access_log_lines", 0) / max(
                    w.facts.get("pyobs_requests", 1), 1
                )
                extra.append(f"{per_request:g} access-log lines/req")
        if w.requests:
            extra.append(f"{w.switches / w.requests:.2f} thread switches/req")
            extra.append(f"gc {w.gc_ns / w.requests / 1000:.2f} us/req")
        if "startup_ms" in w.facts:
            extra.append(
                f"start {w.facts['startup_ms']:g} ms, first request "
                f"{w.facts['first_request_ms']:g} ms"
            )
        out.write("".join(cells) + "  " + "; ".join(extra) + "\n")
    return _verdicts(framework, by_config, bare)


# Verdicts are read off an interval, not one number (benchmarks/_intervals.py): here each
# configuration's rounds are resampled on their own (replicas pool rounds of several
# processes, so rounds of different configurations do not pair up).
WORDS = {"within": "meets", "above": "MISSES", "across": "undecided"}


def _resampled(values: list[float], rng: random.Random) -> list[float]:
    """The median of BOOTSTRAP_SAMPLES resamplings of one configuration's rounds."""
    n = len(values)
    return [statistics.median(rng.choices(values, k=n)) for _ in range(BOOTSTRAP_SAMPLES)]


def ratio_interval(
    samples: dict[str, list[float]], numerator: str, denominator: str
) -> tuple[float, float] | None:
    """The INTERVAL range of (numerator - bare) / (denominator - bare) over the resamplings;
    a resampling where the denominator added nothing counts as an infinite ratio."""
    bare, a, b = (samples.get(n) for n in ("bare", numerator, denominator))
    if bare is None or a is None or b is None:
        return None
    return central(
        [(x - z) / (y - z) if y > z else float("inf") for x, y, z in zip(a, b, bare, strict=True)]
    )


def judge(ratio: float, interval: tuple[float, float] | None, target: float) -> str:
    """meets / MISSES / undecided for one target (see benchmarks/_intervals.py)."""
    if interval is None:  # too few rounds: the point ratio, flagged
        return f"target <= {target}: {'meets' if ratio <= target else 'MISSES'}"
    return f"target <= {target}: {WORDS[side(interval, target)]}"


def _spread_note(interval: tuple[float, float] | None) -> str:
    return "too few rounds for an interval" if interval is None else describe(interval)


def _verdicts(framework: str, by_config: dict[str, Worker], bare: float | None) -> list[str]:
    lines: list[str] = []
    if bare is None:
        return lines

    def added(name: str) -> float | None:
        w = by_config.get(name)
        m = median(w) if w is not None else None
        return None if m is None else m - bare

    prom_peers = [
        c
        for c in by_config
        if c not in (*BASE_CONFIGS, *EXTRA_CONFIGS, *BASELINE_CONFIGS, JAEGER_BASELINE)
        and c != "otel-contrib"
    ]
    pm, pf = added("pyobs-metrics"), added("pyobs-full")
    peer_added = [(a, c) for c in prom_peers if (a := added(c)) is not None]
    lightest_peer = min(peer_added) if peer_added else None
    # Resampled: only the configurations a verdict reads (bare, pyobs's rows, the lightest
    # peer, OTel contrib), and only those with enough rounds.
    judged = ["bare", "pyobs-metrics", "pyobs-full", JAEGER_CONFIG, "otel-contrib"]
    if lightest_peer is not None:
        judged.append(lightest_peer[1])
    rng = random.Random(0)
    samples = {
        name: _resampled(w.us_per_request, rng)
        for name in judged
        if (w := by_config.get(name)) is not None
        and not w.error
        and len(w.us_per_request) >= MIN_ROUNDS_FOR_INTERVAL
    }
    if lightest_peer is not None:
        lightest, name = lightest_peer
        for config, value, targets in (
            ("pyobs-metrics", pm, (METRICS_TARGET, METRICS_PEER_TARGET)),
            ("pyobs-full", pf, (FULL_PEER_TARGET,)),
        ):
            if value is None:
                continue
            ratio = value / lightest if lightest > 0 else float("inf")
            interval = ratio_interval(samples, config, name)
            verdict = ", ".join(judge(ratio, interval, t) for t in targets)
            lines.append(
                f"{framework}: {config} {value:+.1f} us = {ratio:.2f} x lightest Prometheus "
                f"peer ({name} {lightest:+.1f} us; {_spread_note(interval)}); {verdict}"
            )
    exporting = added(JAEGER_CONFIG)
    if exporting is not None and pf is not None:
        ratio = exporting / pf if pf > 0 else float("inf")
        interval = ratio_interval(samples, JAEGER_CONFIG, "pyobs-full")
        lines.append(
            f"{framework}: {JAEGER_CONFIG} {exporting:+.1f} us = {ratio:.2f} x pyobs-full "
            f"with a dropping exporter ({pf:+.1f} us; {_spread_note(interval)}); "
            f"{judge(ratio, interval, EXPORT_TARGET)}"
        )
    otel = added("otel-contrib")
    if pf is not None and otel is not None:
        ratio = pf / otel if otel > 0 else float("inf")
        interval = ratio_interval(samples, "pyobs-full", "otel-contrib")
        lines.append(
            f"{framework}: pyobs-full {pf:+.1f} us = {ratio:.2f} x OTel contrib "
            f"({otel:+.1f} us; {_spread_note(interval)}); {judge(ratio, interval, FULL_TARGET)}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frameworks", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--rounds", type=int, default=15, help="bursts per configuration")
    parser.add_argument("--burst", type=float, default=0.15, help="seconds per burst")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="two rows more, pyobs-metrics@baseline and pyobs-full@baseline: pyobs imported "
        "from DIR, a checkout of another commit (measure a change against the code before it)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="worker processes per configuration, their rounds pooled (see measure_framework)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few requests each")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--log-file",
        action="store_true",
        help=f"one row more, {LOG_FILE_CONFIG}: pyobs-full with the access log in a file",
    )
    parser.add_argument(
        "--sdk-bsp",
        action="store_true",
        help=f"one row more, {SDK_BSP_CONFIG}: pyobs-full on the SDK's own BatchSpanProcessor",
    )
    parser.add_argument(
        "--batch-512",
        action="store_true",
        help=f"one row more, {BATCH_512_CONFIG}: pyobs-full exporting batches of 512 spans",
    )
    parser.add_argument(
        "--jaeger",
        action="store_true",
        help=f"one row more, {JAEGER_CONFIG}: pyobs-full exporting OTLP/HTTP to a real Jaeger "
        "(built by scripts/setup.d/40-jaeger.sh)",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help=f"two rows more, {NO_LOG_CONFIG} and {NO_SPAN_CONFIG}: what each signal costs",
    )
    parser.add_argument(
        "--profile",
        metavar="FRAMEWORK:CONFIG",
        help="instead of comparing, run one configuration under cProfile (e.g. flask:pyobs-full)",
    )
    parser.add_argument("--profile-seconds", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=30, help="rows of profile output")
    parser.add_argument(
        "--floors", action="store_true", help="instead of comparing, time the building blocks"
    )
    parser.add_argument(
        "--worker", nargs=2, metavar=("FRAMEWORK", "CONFIG"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    global _baseline_dir, _batch_512
    _batch_512 = args.batch_512
    if args.baseline:
        if not (Path(args.baseline) / "pyobs" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no pyobs package there")
        _baseline_dir = str(Path(args.baseline).resolve())
    if args.worker:
        return worker(*args.worker)
    if args.floors:
        return floors(200 if args.quick else 20_000)
    if args.profile:
        framework, _, config = args.profile.partition(":")
        if framework not in FRAMEWORKS or config not in configs_for(framework):
            parser.error(
                f"--profile takes FRAMEWORK:CONFIG, e.g. flask:pyobs-full, not {args.profile}"
            )
        return profile(framework, config, args.profile_seconds, args.top)

    names = list(FRAMEWORKS) if args.frameworks == "all" else args.frameworks.split(",")
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {unknown}; known: {', '.join(FRAMEWORKS)}")
    with contextlib.ExitStack() as stack:
        if args.jaeger:
            global _jaeger_endpoint
            ports = stack.enter_context(_jaeger())
            _jaeger_endpoint = f"http://127.0.0.1:{ports['otlp_http']}"
        return compare(args, names)


@contextlib.contextmanager
def _jaeger() -> Iterator[dict[str, int]]:
    """A real Jaeger v2 on free loopback ports (realserver.py's launcher), stopped after."""
    from realserver import BenchError, jaeger

    with tempfile.TemporaryDirectory(prefix="pyobs-bench-jaeger-") as workdir:
        try:
            with jaeger(Path(workdir), []) as ports:
                yield ports
        except BenchError as exc:
            raise SystemExit(f"--jaeger: {exc}") from exc


def compare(args: argparse.Namespace, names: list[str]) -> int:
    """Measure the named frameworks side by side and print their tables and verdicts."""
    rounds, burst, warmup, limit = args.rounds, args.burst, args.warmup, 10**9
    if args.quick:
        rounds, burst, warmup, limit = 2, 0.0, 0.0, 32

    out = sys.stdout
    out.write(
        f"# pyobs overhead benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}\n"
        f"# in-process, GET {REQUEST_PATH} -> 200 JSON; {rounds} interleaved rounds of "
        f"{burst:g} s bursts per configuration (after {warmup:g} s warm-up)"
        f"{f', in each of {args.replicas} processes, rounds pooled' if args.replicas > 1 else ''}"
        "\n"
        "# us/req: median over rounds of process CPU microseconds per request (all threads);\n"
        "#   wall: the same in wall-clock time; IQR%: spread of the rounds around the median.\n"
        "# pyobs-metrics: tracing=False, access_log=False.  pyobs-full: metrics + SDK span "
        "(the batch processor pyobs.setup() installs, exporter drops) + ECS access log to "
        "/dev/null.\n"
        "# otel-contrib: the same SDK provider and exporter on the SDK's BatchSpanProcessor, "
        "contrib instrumentation only.\n"
        f"# {LOG_FILE_CONFIG} (--log-file): pyobs-full, access log to a file on disk.\n"
        f"# {SDK_BSP_CONFIG} (--sdk-bsp): pyobs-full on the SDK's BatchSpanProcessor.\n"
        f"# {BATCH_512_CONFIG} (--batch-512): pyobs-full, batches of 512 spans.\n"
        f"# {JAEGER_CONFIG} (--jaeger): pyobs-full exporting OTLP/HTTP to a real Jaeger "
        "(spans counted when acknowledged).\n"
        f"# {NO_LOG_CONFIG}, {NO_SPAN_CONFIG} (--parts): pyobs-full without one signal.\n"
        f"# {', '.join(BASELINE_CONFIGS)} (--baseline DIR; with --jaeger also "
        f"{JAEGER_BASELINE}): the same, pyobs from DIR.\n"
        "# spans/req: spans exported per request served (fewer than one: spans were lost);\n"
        "#   start: CPU ms of a fresh worker until ready (interpreter, imports, setup, app;\n"
        "#   bare: the framework's own); first request: its CPU ms (first-use work included).\n"
        "# gc: CPU us per request in the cyclic garbage collector (part of us/req).\n"
        "# +us: added per request vs bare;  'N of PEER': pyobs's added us / the peer's.\n"
        f"# targets: meets / MISSES when the whole {INTERVAL:.0%} bootstrap interval of the ratio"
        " (rounds resampled) is within / above the target; undecided when it straddles it.\n"
    )
    out.flush()
    verdicts: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        workers = measure_framework(
            name,
            rounds,
            burst,
            warmup,
            limit,
            args.seed + i,
            args.log_file,
            args.sdk_bsp,
            args.parts,
            max(1, args.replicas),
        )
        verdicts += report_framework(name, workers, out)
        results[name] = {
            w.config: {
                "us_per_request": median(w),
                "rounds": w.us_per_request,
                "wall_us_per_request": statistics.median(w.wall_us) if w.wall_us else None,
                "requests": w.requests,
                "thread_switches_per_request": w.switches / w.requests if w.requests else None,
                "gc_us_per_request": w.gc_ns / w.requests / 1000 if w.requests else None,
                "error": w.error,
                "facts": w.facts,
            }
            for w in workers
        }
        out.flush()
    if verdicts:
        out.write("\n## targets\n" + "\n".join(verdicts) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"frameworks": results, "targets": verdicts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
