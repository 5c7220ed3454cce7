"""Example services under gunicorn with 4 workers: one scrape holds every worker's exact counts.

Real gunicorn (sync workers and uvicorn workers) on a loopback port, a real Logstash-style TCP
receiver and a real OTLP/HTTP endpoint. What this cannot prove: behaviour under other pre-fork
servers (uwsgi) or across hosts.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require, require_service
from tests.elk.receiver import JsonLinesReceiver
from tests.helpers import (
    PortTaken,
    kill_tree,
    listening_socket,
    start_with_retry,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4
BOOT_TIMEOUT = 30.0
# path -> (requests sent, expected route label, expected status)
TRAFFIC = {
    # First and side by side: a sync worker serves one request at a time, so eight 0.3 s
    # requests in flight at once reach several workers even when the kernel would hand every
    # quick connection to the same one on a busy machine.
    "/slow": (8, "/slow", "200"),
    "/items/3": (60, None, "200"),
    "/boom": (20, "/boom", "500"),
    "/no/such/page": (20, "<unmatched>", "404"),
}
HOOKS = "from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa: F401\n"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    """Counts the spans in OTLP/HTTP protobuf exports."""

    spans: Counter[str] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans[span.name] += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@dataclass
class Gunicorn:
    """A running gunicorn master and the sinks its workers report to."""

    proc: subprocess.Popen[bytes]
    url: str
    logs: JsonLinesReceiver
    spans: Counter[str]
    metrics_dir: Path
    stdout: Path

    def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def page(self, accept: str = "text/plain", port: int | None = None) -> str:
        """The metrics page as served for ``accept``."""
        host, app_port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, port or int(app_port), timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Accept": accept})
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def scrape(
        self, port: int | None = None
    ) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.page(port=port)
        return {
            (s.name, frozenset(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()]


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= lbls)


def _wait(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check`` until truthy (a deadline to wait, not a speed bound)."""
    return wait_until(check, timeout, what)


class BootFailed(Exception):
    """gunicorn exited while booting; the message is its stderr."""


@pytest.fixture
def gunicorn_run(tmp_path: Path) -> Iterator[Any]:
    """Start gunicorn on an example with logs and spans going to loopback sinks."""
    import_or_require("gunicorn")
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    require_service(sys.platform.startswith("linux"), "gunicorn test reads /proc (Linux only)")
    started: list[Gunicorn] = []
    sinks: list[Any] = []

    def run(
        example: str,
        *extra: str,
        worker_class: str = "sync",
        env: dict[str, str] | None = None,
        multiproc: bool = True,
        hooks: bool = True,
        workers: int = WORKERS,
    ) -> Gunicorn:
        logs = JsonLinesReceiver()
        logs.start()
        _OtlpSink.spans = Counter()
        otlp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
        threading.Thread(target=otlp.serve_forever, daemon=True).start()
        sinks.extend([logs, otlp])
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text(HOOKS if hooks else "")
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))},
            "PYOBS_LOGSTASH_HOST": "127.0.0.1",
            "PYOBS_LOGSTASH_PORT": str(logs.port),
            "PYOBS_LOG_SPOOL_DIR": str(tmp_path / "spool"),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{otlp.server_port}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if multiproc:
            full_env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
            (tmp_path / "metrics").mkdir(exist_ok=True)
        errors = tmp_path / f"gunicorn-{len(started)}.err"  # a file: a full pipe would block
        output = tmp_path / f"gunicorn-{len(started)}.out"
        # gunicorn takes over a socket already listening on a port the kernel chose: no race.
        listener = listening_socket()
        port = listener.getsockname()[1]
        with errors.open("wb") as stderr, output.open("wb") as stdout:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", str(workers),
                 "-k", worker_class, "-b", f"fd://{listener.fileno()}", "--graceful-timeout",
                 "5", *extra, "app:app"],
                cwd=ROOT / "examples" / example,
                env=full_env,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )  # fmt: skip
        listener.close()
        server = Gunicorn(
            proc, f"http://127.0.0.1:{port}", logs, _OtlpSink.spans, tmp_path / "metrics", output
        )
        started.append(server)

        def up() -> bool:
            if proc.poll() is not None:
                raise BootFailed(errors.read_text()[-3000:])
            try:
                return server.get("/health") == 200 and len(server.workers()) == workers
            except OSError:
                return False

        _wait(up, BOOT_TIMEOUT, f"gunicorn to boot {workers} workers")
        return server

    yield run
    for server in started:
        kill_tree(server.proc, grace=15)
    for sink in sinks:
        if isinstance(sink, JsonLinesReceiver):
            sink.stop()
        else:
            sink.shutdown()
            sink.server_close()


def _drive(server: Gunicorn) -> int:
    """Send the known traffic from 8 client threads; returns the number of requests."""
    paths = [p for p, (n, _, _) in TRAFFIC.items() for _ in range(n)]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(server.get, paths))
    expected: Counter[int] = Counter()
    for count, _, status in TRAFFIC.values():
        expected[int(status)] += count
    assert Counter(statuses) == expected
    return len(paths)


def _assert_exact(server: Gunicorn, item_route: str, total: int) -> None:
    # A sync worker records a request when it closes the body, just after the last byte.
    _wait(
        lambda: _value(server.scrape(), "http_server_request_duration_seconds_count") >= total,
        5,
        "the last requests to be recorded",
    )
    samples = server.scrape()
    assert _value(samples, "http_server_request_duration_seconds_count") == total
    for path, (count, route, status) in TRAFFIC.items():
        got = _value(samples, "http_server_request_duration_seconds_count",
                     http_route=route or item_route, http_response_status_code=status)  # fmt: skip
        assert got == count, (path, got)
    assert _value(samples, "pyobs_http_server_exceptions_total", http_route="/boom") == 20
    assert _value(samples, "http_server_active_requests") == 0
    # Every worker's process metrics, each under its own pid.
    pids = {dict(lbls).get("pid") for (n, lbls) in samples if n == "process_resident_memory_bytes"}
    assert {str(p) for p in server.workers()} <= pids
    assert _value(samples, "python_info") == 1
    # The shipper and the span processor work in every worker: nothing is missing.
    _wait(lambda: len(_access(server)) >= total, 15, "every access log to be shipped")
    assert len(_access(server)) == total
    _wait(lambda: sum(server.spans.values()) >= total, 15, "every span to be exported")
    assert sum(server.spans.values()) == total
    assert len({e["process.pid"] for e in _access(server)}) >= 2


def _access(server: Gunicorn) -> list[dict[str, Any]]:
    return [e for e in list(server.logs.events) if e.get("log.logger") == "pyobs.access"]


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_flask_under_gunicorn_sums_exactly(gunicorn_run: Any, preload: bool) -> None:
    """With 4 sync workers (with and without --preload) one scrape holds the exact totals."""
    import_or_require("flask")
    server = gunicorn_run("flask", *(["--preload"] if preload else []))
    total = _drive(server)
    _assert_exact(server, "/items/<int:item_id>", total)


@pytest.mark.slow
def test_fastapi_under_gunicorn_uvicorn_workers_sums_exactly(gunicorn_run: Any) -> None:
    """With 4 uvicorn workers (ASGI) and --preload, one scrape holds the exact totals."""
    import_or_require("fastapi")
    import_or_require("uvicorn")
    worker = "uvicorn.workers.UvicornWorker"
    try:
        __import__("uvicorn.workers")
    except ImportError:
        import_or_require("uvicorn_worker")
        worker = "uvicorn_worker.UvicornWorker"
    server = gunicorn_run("fastapi", "--preload", worker_class=worker)
    total = _drive(server)
    _assert_exact(server, "/items/{item_id}", total)


def test_dead_workers_live_gauges_do_not_linger(gunicorn_run: Any) -> None:
    """Workers killed mid-request leave no in-flight requests or process metrics behind."""
    import_or_require("flask")
    server = gunicorn_run("flask", "--preload")
    before = server.workers()

    def live_files(pids: list[int]) -> list[Path]:
        return [f for p in pids for f in server.metrics_dir.glob(f"gauge_live*_{p}.db")]

    with ThreadPoolExecutor(WORKERS) as pool:
        pending = [pool.submit(_quietly, server, "/slow") for _ in range(WORKERS)]
        # The workers are inside /slow (0.3 s) once their live gauges have files.
        _wait(lambda: bool(live_files(before)), 10, "the workers to enter /slow")
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        for future in pending:
            future.result(15)
    _wait(lambda: len(set(server.workers()) - set(before)) == WORKERS, BOOT_TIMEOUT,
          "gunicorn to replace the killed workers")  # fmt: skip
    assert live_files(before) == []
    # A request that sat in the listen backlog when its worker died is served by a new
    # worker; its client can hold the whole response a moment before the worker's
    # end-of-request code lowers the gauge. A gauge a dead worker left behind would read
    # 1 for ever, so the wait still fails on a lingering value.
    samples = _wait(_settled(server), 10, "the in-flight gauge to drop to 0")
    assert _value(samples, "http_server_active_requests") == 0
    pids = {dict(lbls).get("pid") for (n, lbls) in samples if n == "process_resident_memory_bytes"}
    assert not pids & {str(p) for p in before}


def _settled(server: Gunicorn) -> Any:
    """A check that returns a scrape once no request is in flight (for `_wait`)."""

    def check() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = server.scrape()
        return samples if _value(samples, "http_server_active_requests") == 0 else None

    return check


def _quietly(server: Gunicorn, path: str) -> int:
    try:
        return server.get(path)
    except OSError:
        return 0  # the worker was killed under it


def _own_port_run(gunicorn_run: Any, **kwargs: Any) -> tuple[Gunicorn, int]:
    """Flask under gunicorn --preload with PYOBS_METRICS_PORT on a free port (retried)."""

    def start(port: int) -> tuple[Gunicorn, int]:
        server = gunicorn_run("flask", "--preload", env={"PYOBS_METRICS_PORT": str(port)}, **kwargs)
        if "is taken by another program" in server.stdout.read_text():
            kill_tree(server.proc)
            raise PortTaken(str(port))
        return server, port

    return start_with_retry(start)


@pytest.mark.slow
def test_preload_with_metrics_port_and_multiproc_dir_counts_every_request(
    gunicorn_run: Any,
) -> None:
    """--preload + PYOBS_METRICS_PORT + PROMETHEUS_MULTIPROC_DIR: the port shows every request."""
    import_or_require("flask")
    server, port = _own_port_run(gunicorn_run)
    total = _drive(server)
    _wait(
        lambda: _value(server.scrape(port), "http_server_request_duration_seconds_count") >= total,
        5,
        "the last requests to be recorded",
    )
    assert _value(server.scrape(port), "http_server_request_duration_seconds_count") == total


def test_preload_with_metrics_port_without_multiproc_dir_refuses_to_start(
    gunicorn_run: Any,
) -> None:
    """With the pyobs.gunicorn hooks, that setup stops gunicorn with the fix, not empty metrics."""
    import_or_require("flask")
    with pytest.raises(BootFailed) as failed:
        _own_port_run(gunicorn_run, multiproc=False)
    message = str(failed.value)
    assert "is served by the gunicorn master" in message
    assert "set PROMETHEUS_MULTIPROC_DIR to an empty directory" in message


def test_preload_with_metrics_port_without_hooks_logs_the_fix_in_every_worker(
    gunicorn_run: Any,
) -> None:
    """Without the hooks, every worker logs an error that names PROMETHEUS_MULTIPROC_DIR."""
    import_or_require("flask")
    server, _ = _own_port_run(gunicorn_run, multiproc=False, hooks=False)

    def errors() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in server.stdout.read_text().splitlines() if line]
        return [
            line for line in lines
            if line.get("log.level") == "error" and "PROMETHEUS_MULTIPROC_DIR" in line["message"]
        ]  # fmt: skip

    found = _wait(lambda: len(errors()) >= WORKERS and errors(), 10, "every worker's error")
    assert {e["process.pid"] for e in found} == set(server.workers())


# --- exemplars in multiprocess mode ----------------------------------------------------------

DURATION = "http_server_request_duration_seconds"
# path -> (route label, status) for the Flask example
SERIES = {
    "/items/3": ("/items/<int:item_id>", "200"),
    "/no/such/page": ("<unmatched>", "404"),
    "/boom": ("/boom", "500"),
}
Bucket = tuple[str, str, str]  # route, status, le


def _bucket_of(seconds: float) -> str:
    """The ``le`` of the duration bucket ``seconds`` falls in (pyobs's default buckets)."""
    from bisect import bisect_left

    from prometheus_client.utils import floatToGoString

    from pyobs.metrics import DURATION_BUCKETS

    bounds = [*DURATION_BUCKETS, float("inf")]
    return str(floatToGoString(bounds[bisect_left(bounds, seconds)]))  # type: ignore[no-untyped-call]


def _page_exemplars(text: str) -> dict[Bucket, str]:
    """(route, status, le) -> trace id of every duration bucket exemplar on an OpenMetrics page."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        for s in family.samples:
            if s.name == f"{DURATION}_bucket" and s.exemplar is not None:
                key = (
                    s.labels["http_route"],
                    s.labels["http_response_status_code"],
                    s.labels["le"],
                )
                found[key] = s.exemplar.labels["trace_id"]
    return found


def _send_traced(server: Gunicorn, paths: list[str], sent: list[tuple[str, str]]) -> None:
    """One request per path with a sampled traceparent; each is recorded before the next goes.

    Waiting for the count makes the send order the order of the exemplars' timestamps.
    """
    for path in paths:
        trace_id = os.urandom(16).hex()
        server.get(path, {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
        sent.append((trace_id, path))
        _wait(
            lambda: _value(server.scrape(), f"{DURATION}_count") >= len(sent),
            10,
            "the request to be recorded",
        )


def _newest_per_bucket(
    server: Gunicorn, sent: list[tuple[str, str]]
) -> dict[Bucket, tuple[str, int]]:
    """From the access logs: (route, status, le) -> (trace id, worker pid) of the last request."""
    _wait(lambda: len(_access(server)) >= len(sent), 15, "every access log")
    by_trace = {e["trace.id"]: e for e in _access(server)}
    newest: dict[Bucket, tuple[str, int]] = {}
    for trace_id, path in sent:  # in send order: a later request replaces an earlier one
        event = by_trace[trace_id]
        route, status = SERIES[path]
        le = _bucket_of(event["event.duration"] / 1e9)
        newest[(route, status, le)] = (trace_id, event["process.pid"])
    return newest


@pytest.mark.slow
def test_exemplars_of_every_worker_in_one_scrape(gunicorn_run: Any, tmp_path: Path) -> None:
    """4 sync workers: one OpenMetrics scrape has, per bucket, the newest request's trace id,
    from several workers; promtool accepts the page and a real Prometheus stores them."""
    import_or_require("flask")
    server = gunicorn_run("flask")
    sent: list[tuple[str, str]] = []
    for _ in range(8):  # until the newest exemplars come from at least two workers
        _send_traced(server, [p for _ in range(4) for p in SERIES], sent)
        expected = _newest_per_bucket(server, sent)
        if len({pid for _, pid in expected.values()}) >= 2:
            break
    assert len({pid for _, pid in expected.values()}) >= 2, expected
    page = server.page("application/openmetrics-text; version=1.0.0")
    assert _page_exemplars(page) == {key: trace_id for key, (trace_id, _) in expected.items()}
    # promtool (2.x) lints the classic text format: the same target's text page passes.
    from tests.prometheus.conftest import tool

    lint = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=server.page(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    _check_prometheus_stores(server, tmp_path, {t for t, _ in expected.values()})


def _check_prometheus_stores(server: Gunicorn, tmp_path: Path, trace_ids: set[str]) -> None:
    """A real Prometheus with exemplar storage scrapes the target and returns ``trace_ids``."""
    import urllib.parse

    import yaml

    from tests.prometheus.conftest import http_json, start_prometheus, wait_until

    config = tmp_path / "prometheus.yml"
    target = server.url.removeprefix("http://")
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {"job_name": "gunicorn", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    prometheus = start_prometheus(config, tmp_path)
    try:

        def stored() -> set[str]:
            now = time.time()
            query = urllib.parse.urlencode(
                {"query": f"{DURATION}_bucket", "start": str(now - 600), "end": str(now + 60)}
            )
            data = http_json(f"http://127.0.0.1:{prometheus.port}/api/v1/query_exemplars?{query}")
            found = {e["labels"]["trace_id"] for s in data["data"] for e in s["exemplars"]}
            return found if trace_ids <= found else set()

        wait_until(stored, timeout=30, what="Prometheus to store the exemplars")
    finally:
        prometheus.stop()


# --- worker churn ------------------------------------------------------------------------------


def _dead_workers_files(server: Gunicorn) -> list[str]:
    """Metric files in the directory that are named after a process that no longer runs."""
    import re

    found = []
    for path in server.metrics_dir.iterdir():
        match = re.search(r"_(\d+)(-pyobs)?\.(db|bin)$", path.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            found.append(path.name)
        elif "-dead" in path.name:
            found.append(path.name)  # a compaction that did not finish
    return found


def _files_by_owner(server: Gunicorn) -> tuple[set[str], set[str]]:
    """The names of the files that belong to no process, and the pids the others are named after."""
    import re

    shared, pids = set(), set()
    for path in server.metrics_dir.iterdir():
        match = re.search(r"_(\d+)(-pyobs)?\.(db|bin)$", path.name)
        if match:
            pids.add(match.group(1))
        else:
            shared.add(path.name)
    return shared, pids


@pytest.mark.slow
def test_worker_restarts_keep_exact_counts_and_no_dead_files(gunicorn_run: Any) -> None:
    """--max-requests 5 with 2 workers: after dozens of restarts every request is counted
    exactly once and no dead worker's file stays in the directory."""
    import_or_require("flask")
    server = gunicorn_run("flask", "--max-requests", "5", workers=2)
    total = 0
    files: list[tuple[set[str], set[str]]] = []
    for _ in range(4):
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(server.get, ["/items/3"] * 50))
        assert statuses == [200] * 50
        total += 50
        _wait(
            lambda: _value(server.scrape(), f"{DURATION}_count") >= total,  # noqa: B023
            30,
            "the requests to be recorded",
        )
        assert _value(server.scrape(), f"{DURATION}_count") == total
        # child_exit compacts (batched under fast churn), and so does every scrape.
        _wait(
            lambda: server.scrape() and not _dead_workers_files(server),
            30,
            "dead workers' files to be compacted",
        )
        files.append(_files_by_owner(server))
    _wait(lambda: len(_access(server)) >= total, 15, "every access log")
    assert len({e["process.pid"] for e in _access(server)}) >= 30  # workers did restart
    # Nothing accumulates: the files of no particular process (archives, lock) are the same set
    # once the first workers were compacted, and the per-process files belong to the two
    # workers, the master and at most two workers caught mid-restart.
    shared = [names for names, _ in files]
    assert shared[1] == shared[2] == shared[3], shared
    assert all(len(pids) <= 5 for _, pids in files), files
