"""A real Prometheus scraping the instrumented example services, checked through its HTTP API.

Debian's Prometheus runs with ``--enable-feature=exemplar-storage`` on a free loopback port and
scrapes the Flask and FastAPI examples (subprocesses on free ports) every second while they
serve mixed traffic plus requests that carry a ``traceparent`` the test chose. The examples
export their spans to stderr (``OTEL_TRACES_EXPORTER=console``), so the test sees every span.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require, require_service
from tests.helpers import health_ready, http_status, kill_tree, start_server

REPO = Path(__file__).resolve().parents[1]
ROUTES = {"fastapi": "/items/{item_id}", "flask": "/items/<int:item_id>"}
CONTRACT_LABELS = {"http_request_method", "http_route", "http_response_status_code"}
SCRAPE_SECONDS = 1
DEADLINE_SECONDS = 40.0  # the whole live run: start, traffic, scrapes, queries


def _get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` every 0.3 s until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@dataclass
class Service:
    """One example service subprocess and the trace ids the test sent to it."""

    framework: str
    port: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    sent_trace_ids: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[dict[str, Any]]:
        """Every span the service exported so far (one JSON object per stderr line)."""
        found = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"trace_id"' in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found


@dataclass
class LiveRun:
    """Prometheus plus the example services, after traffic and a few scrapes."""

    prometheus: str
    services: dict[str, Service]

    def api(self, endpoint: str, **params: str) -> Any:
        url = f"{self.prometheus}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        status, body = _get(url)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", payload
        return payload["data"]


def _start_example(framework: str, tmp: Path) -> Service:
    """The example on a free port (another one when the port is taken before it binds)."""
    stderr_path = tmp / f"{framework}.stderr"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))},
        "PYOBS_SERVICE_NAME": f"live-{framework}",
        "OTEL_TRACES_EXPORTER": "console",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    app = str(REPO / "examples" / framework / "app.py")
    proc, port = start_server(
        lambda port: [sys.executable, app, "--host", "127.0.0.1", "--port", str(port)],
        health_ready,
        tmp / f"{framework}.stdout",
        stderr_log=stderr_path,
        env=env,
        cwd=str(tmp),
    )
    return Service(framework, port, proc, stderr_path)


def _prometheus_config(tmp: Path, services: dict[str, Service]) -> Path:
    jobs = "".join(
        f"  - job_name: example-{s.framework}\n"
        f"    metrics_path: /metrics\n"
        f"    static_configs:\n"
        f"      - targets: ['127.0.0.1:{s.port}']\n"
        for s in services.values()
    )
    path = tmp / "prometheus.yml"
    path.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_SECONDS}s\n"
        f"  scrape_timeout: {SCRAPE_SECONDS}s\n"
        "scrape_configs:\n" + jobs
    )
    return path


def _send_traced(service: Service, stop: threading.Event) -> None:
    """One request with a fresh, known traceparent every ~0.4 s (exemplars keep one per bucket)."""
    n = 0
    while not stop.is_set() and n < 60:
        n += 1
        trace_id = os.urandom(16).hex()
        service.sent_trace_ids.append(trace_id)
        _get(
            f"{service.base}/items/{1 + n % 5}",
            {"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"},
        )
        stop.wait(0.4)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    """Start both examples and Prometheus; drive traffic until Prometheus has scraped it."""
    binary = shutil.which("prometheus")
    require_service(binary is not None, "prometheus is not installed (scripts/setup.d)")
    assert binary is not None
    for module in ("fastapi", "uvicorn", "flask"):
        import_or_require(module)
    from pyobs import _traffic

    tmp = tmp_path_factory.mktemp("prom-live")
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        services: dict[str, Service] = {}
        for fw in ROUTES:
            services[fw] = _start_example(fw, tmp)
            procs.append(services[fw].proc)
        config = _prometheus_config(tmp, services)
        prom, prom_port = start_server(
            lambda port: [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            lambda port: http_status(f"http://127.0.0.1:{port}/-/ready") == 200,
            tmp / "prometheus.log",
            cwd=str(tmp),
        )
        procs.append(prom)
        run = LiveRun(f"http://127.0.0.1:{prom_port}", services)
        threads = [
            threading.Thread(
                target=_traffic.run,
                kwargs={
                    "targets": [s.base for s in services.values()],
                    "rate": 10.0,
                    "duration": 12.0,
                    "stop": stop,
                    "seed": 7,
                },
                daemon=True,
            ),
            *(
                threading.Thread(target=_send_traced, args=(s, stop), daemon=True)
                for s in services.values()
            ),
        ]
        for t in threads:
            t.start()
        yield run
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        for proc in procs:
            kill_tree(proc, grace=10)


@pytest.mark.service
@pytest.mark.parametrize("framework", sorted(ROUTES))
def test_duration_count_arrives_with_contract_labels(live: LiveRun, framework: str) -> None:
    """Prometheus stores the request-duration count with the contract's labels and real routes."""
    job = f"example-{framework}"

    def series() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = live.api(
            "query", query=f'http_server_request_duration_seconds_count{{job="{job}"}}'
        )["result"]
        statuses = {r["metric"].get("http_response_status_code") for r in result}
        # Wait until the mixed traffic's 200s, 404s and 500s have all been scraped.
        return result if {"200", "404", "500"} <= statuses else []

    result = _wait(series, DEADLINE_SECONDS, f"{job} duration series with 200/404/500")
    for r in result:
        assert set(r["metric"]) >= CONTRACT_LABELS, r["metric"]
        assert r["metric"]["http_route"] != r["metric"].get("url_path")
    by_key = {
        (
            r["metric"]["http_request_method"],
            r["metric"]["http_route"],
            r["metric"]["http_response_status_code"],
        ): float(r["value"][1])
        for r in result
    }
    assert by_key.get(("GET", ROUTES[framework], "200"), 0) > 0, by_key
    assert by_key.get(("GET", "/boom", "500"), 0) > 0, by_key
    assert by_key.get(("GET", "<unmatched>", "404"), 0) > 0, by_key
    routes = {r["metric"]["http_route"] for r in result}
    assert not any(route.startswith("/no/such/page/") for route in routes), routes
    assert "/health" not in routes and "/metrics" not in routes, routes


@pytest.mark.service
@pytest.mark.parametrize("framework", sorted(ROUTES))
def test_exemplars_carry_trace_ids_of_seen_spans(live: LiveRun, framework: str) -> None:
    """query_exemplars returns trace_id exemplars that match a SERVER span the test sent and saw."""
    service = live.services[framework]
    job = f"example-{framework}"

    def matching() -> list[tuple[str, dict[str, Any]]]:
        now = time.time()
        data = live.api(
            "query_exemplars",
            query=f'http_server_request_duration_seconds_bucket{{job="{job}"}}',
            start=str(now - 120),
            end=str(now + 5),
        )
        exemplar_ids = {
            e["labels"].get("trace_id", ""): series["seriesLabels"]
            for series in data
            for e in series["exemplars"]
        }
        spans = {
            s["context"]["trace_id"].removeprefix("0x"): s
            for s in service.spans()
            if s.get("kind") == "SpanKind.SERVER"
        }
        sent = set(service.sent_trace_ids)
        return [
            (tid, labels)
            for tid, labels in exemplar_ids.items()
            if tid in sent and tid in spans and spans[tid]["name"] == f"GET {ROUTES[framework]}"
        ]

    found = _wait(matching, DEADLINE_SECONDS, f"{job} exemplars matching a sent, seen span")
    trace_id, labels = found[0]
    assert len(trace_id) == 32
    assert labels["http_route"] == ROUTES[framework], labels
    assert labels["http_request_method"] == "GET", labels
    assert labels["__name__"] == "http_server_request_duration_seconds_bucket", labels
