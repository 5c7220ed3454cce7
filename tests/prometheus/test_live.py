"""A real Prometheus and Alertmanager over real example services under traffic.

Prometheus 2.42 and Alertmanager 0.25 (Debian) run on free loopback ports. Prometheus loads
prometheus/prometheus.yml with its targets rewritten to the test's ports, scrapes three example
services (flask and fastapi under mixed traffic, one more flask whose traffic the test controls)
every second, and evaluates the generated rules. To stay within minutes, the rules are the same
generator's output with every window and `for:` divided by 60 (1h -> 1m, 5m -> 5s) and
Alertmanager's group timings are one second. What this cannot prove: that Grafana renders the
panels (only that every Prometheus query behind them returns data), that the Elasticsearch logs
panel finds documents, and the grafana/jaeger scrape jobs (those services cannot run here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_service
from tests.prometheus.conftest import (
    PYTHON,
    REPO,
    Process,
    Webhook,
    alertmanager_config,
    http_json,
    query,
    running_webhook,
    spawn_server,
    start_alertmanager,
    start_prometheus,
    tool,
    wait_until,
)

SCALE = 1 / 60
EXAMPLE_FRAMEWORKS = (
    "flask", "flask-restful", "django", "fastapi", "starlette",
    "tornado", "falcon", "sanic", "pyramid", "aiohttp",
)  # fmt: skip
RATE_INTERVAL = "10s"
BURST_SECONDS = 10.0
#: The shipper (pyobs/shipper.py) makes the dropped-events series; without it they cannot exist.
SHIPPER = importlib.util.find_spec("pyobs.shipper") is not None
SHIPPER_SERIES = "pyobs_log_shipper_events_total"


def _require_examples() -> None:
    for module in ("flask", "fastapi", "uvicorn", "grafana_foundation_sdk"):
        require_service(importlib.util.find_spec(module) is not None, f"{module} is not installed")
    for app in ("flask", "fastapi"):
        require_service((REPO / "examples" / app / "app.py").is_file(), f"examples/{app} missing")
    tool("prometheus")
    tool("prometheus-alertmanager")


class Driver:
    """Steady requests to one service; `burst` switches them to GET /boom (always a 500)."""

    def __init__(self, base: str, rate: float = 20.0) -> None:
        self.base = base
        self.interval = 1.0 / rate
        self.burst = threading.Event()
        self.stop = threading.Event()
        self.sent: dict[int, int] = {}
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            path = "/boom" if self.burst.is_set() else "/items/1"
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.sent[status] = self.sent.get(status, 0) + 1
            self.stop.wait(self.interval)


@dataclass
class Stack:
    """Everything the live tests share."""

    prom_port: int
    am_port: int
    webhook: Webhook
    driver: Driver
    driven_service: str
    services: dict[str, Process]
    started: float


#: The live services with an SLO spec: example-flask with the stack's own spec, the driven
#: one with every default. example-fastapi has none: PyobsHighErrorRate is for such services.
SLO_SERVICES = ("example-flask", "localhost")


def _live_specs() -> list[Any]:
    from pyobs._dashgen import slospec

    shipped = slospec.load(REPO / "prometheus" / "slo" / "examples.yaml")
    return [s for s in shipped if s.service in SLO_SERVICES] + slospec.parse("service: localhost\n")


def _prometheus_config(
    workdir: Path, targets: dict[str, int], driven_port: int, prom_port: int, am_port: int
) -> Path:
    from pyobs._dashgen import promrules, slogen

    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    for name, rules in promrules.rule_files(scale=SCALE).items():
        (rules_dir / name).write_text(yaml.safe_dump(rules, sort_keys=False))
    slo_rules = slogen.rule_file(_live_specs(), scale=SCALE)
    (rules_dir / "pyobs-slo-live.yml").write_text(yaml.safe_dump(slo_rules, sort_keys=False))
    config["rule_files"] = [str(rules_dir / "*.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}
    ]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] == "pyobs-services":
            # Two targets labelled as in the stack, one left to the host-name relabelling.
            job["static_configs"] = [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
                for name, port in targets.items()
            ] + [{"targets": [f"localhost:{driven_port}"]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        elif job["job_name"] == "alertmanager":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
        else:
            continue  # grafana, jaeger: not runnable here
        jobs.append(job)
    config["scrape_configs"] = jobs
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Example services under traffic, Prometheus and Alertmanager, wired to a webhook."""
    _require_examples()
    from pyobs import _traffic

    workdir = tmp_path_factory.mktemp("live")
    # Bound but never listening: connections are refused for sure, and nobody else can take it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    processes: list[Process] = []
    stop_traffic = threading.Event()
    with running_webhook() as webhook, contextlib.ExitStack() as cleanup, closed:

        @cleanup.callback
        def _stop_all() -> None:
            for process in reversed(processes):
                process.stop()

        services: dict[str, Process] = {}
        for name, app in (
            ("example-flask", "flask"),
            ("example-fastapi", "fastapi"),
            ("localhost", "flask"),
        ):
            spool = workdir / f"spool-{name}"
            spool.mkdir()
            env = {
                "PYOBS_SERVICE_NAME": name,
                "PYOBS_LOGSTASH_HOST": "127.0.0.1",
                "PYOBS_LOGSTASH_PORT": str(closed_port),
                "PYOBS_LOG_SPOOL_DIR": str(spool),
                "PYOBS_LOG_SPOOL_MAX_BYTES": "4096",
            }
            process = spawn_server(
                name,
                lambda port, app=app: [  # type: ignore[misc]
                    PYTHON, f"examples/{app}/app.py", "--host", "127.0.0.1", "--port", str(port)
                ],
                "/health",
                workdir,
                env=env,
            )  # fmt: skip
            processes.append(process)
            services[name] = process
        ports = {name: services[name].port for name in ("example-flask", "example-fastapi")}
        driven_port = services["localhost"].port

        alertmanager = start_alertmanager(
            alertmanager_config(workdir, webhook, group_wait="1s", group_interval="1s"), workdir
        )
        processes.append(alertmanager)
        am_port = alertmanager.port
        prometheus = start_prometheus(
            lambda port: _prometheus_config(workdir, ports, driven_port, port, am_port), workdir
        )
        processes.append(prometheus)
        prom_port = prometheus.port

        bases = [f"http://127.0.0.1:{port}" for port in ports.values()]
        traffic = threading.Thread(
            target=_traffic.run,
            kwargs={"targets": bases, "rate": 15.0, "stop": stop_traffic, "seed": 4},
            daemon=True,
        )
        traffic.start()
        cleanup.callback(traffic.join, timeout=10)
        cleanup.callback(stop_traffic.set)
        driver = Driver(f"http://127.0.0.1:{driven_port}")
        driver.thread.start()
        cleanup.callback(driver.thread.join, timeout=10)
        cleanup.callback(driver.stop.set)

        yield Stack(prom_port, am_port, webhook, driver, "localhost", services, time.monotonic())


def _substitute(expr: str) -> str:
    """What Grafana would send: template variables replaced by match-everything values."""
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    return re.sub(r"\$\{?(service|route)\}?", ".*", expr)


def _series_count(stack: Stack, promql: str) -> tuple[int, str]:
    answer = query(stack.prom_port, promql)
    if answer.get("status") != "success":
        return -1, str(answer.get("error"))
    return len(answer["data"]["result"]), ""


def _label_values_ok(stack: Stack, expr: str) -> bool:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr.strip())
    assert match, f"unexpected variable query {expr!r}"
    selector, label = _substitute(match[1]), match[2]
    url = (
        f"http://127.0.0.1:{stack.prom_port}/api/v1/label/{label}/values?"
        + urllib.parse.urlencode({"match[]": selector})
    )
    return bool(http_json(url)["data"])


def _all_queries() -> list[tuple[str, str]]:
    from pyobs._dashgen.dashboards import prometheus_queries

    out: list[tuple[str, str]] = []
    # The committed dashboards; of the SLO ones, those of the services running here. The
    # stack dashboard's exporter series (Elasticsearch, Logstash, Jaeger): test_stack_live.py;
    # the workers dashboard's Celery and Kafka series: tests/test_messaging_e2e.py.
    slo_board = REPO / "dashboards" / "slo" / "pyobs-slo-example-flask.json"
    boards = [*sorted((REPO / "dashboards").glob("*.json")), slo_board]
    for path in boards:
        if path.name in ("pyobs-stack.json", "pyobs-workers.json"):
            continue
        board = json.loads(path.read_text())
        out += [(f"{path.name}: {title}", expr) for title, expr in prometheus_queries(board)]
    return out


def test_the_shipped_config_loads_in_real_prometheus(tmp_path: Path) -> None:
    """prometheus/prometheus.yml as committed starts a real Prometheus with all rule groups."""
    tool("prometheus")
    process = start_prometheus(REPO / "prometheus" / "prometheus.yml", tmp_path)
    port = process.port
    try:
        groups = http_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
        services = [f"example-{f}" for f in EXAMPLE_FRAMEWORKS]
        slo_groups = {f"pyobs-slo-{s}{suffix}" for s in services for suffix in ("", "-alerts")}
        workers = {"pyobs-workers-recording", "pyobs-workers-alerts"}
        expected = {"pyobs-red", "pyobs-alerts", "pyobs-stack", *workers, *slo_groups}
        assert {g["name"] for g in groups} == expected
        flags = http_json(f"http://127.0.0.1:{port}/api/v1/status/flags")["data"]
        assert flags["enable-feature"] == "exemplar-storage"
    finally:
        process.stop()


def test_every_dashboard_and_alert_query_returns_data(stack: Stack) -> None:
    """Every PromQL query of every dashboard panel and variable returns a series."""
    wait_until(
        lambda: _series_count(stack, 'up{job="pyobs-services"} == 1')[0] == 3,
        timeout=30,
        what="three example services scraped",
    )
    wait_until(
        lambda: _series_count(stack, "service:pyobs_slo_errors:ratio_rate5m")[0] >= 4,
        timeout=30,
        what="SLO recording rules for two services",
    )
    queries = _all_queries()
    assert len(queries) > 30
    pending = dict.fromkeys(queries, "")
    deadline = time.monotonic() + 45
    while pending and time.monotonic() < deadline:
        for key in list(pending):
            title, expr = key
            if title.split(": ")[-1].startswith("$"):
                if _label_values_ok(stack, expr):
                    del pending[key]
                continue
            count, error = _series_count(stack, _substitute(expr))
            assert count >= 0, f"{title}: Prometheus rejects {expr!r}: {error}"
            if count > 0:
                del pending[key]
        if pending:
            time.sleep(2)
    if not SHIPPER:
        # Without pyobs/shipper.py there is no shipper and no dropped-events series: only
        # the queries on that series may come back empty.
        exempt = [title for title, expr in pending if SHIPPER_SERIES in expr]
        if exempt:
            warnings.warn(f"no log shipper yet, not checked: {exempt}", stacklevel=1)
        pending = {k: v for k, v in pending.items() if SHIPPER_SERIES not in k[1]}
    assert not pending, "queries without data:\n" + "\n".join(
        f"  {title}: {expr}" for title, expr in pending
    )


def test_exemplars_reach_prometheus(stack: Stack) -> None:
    """Histogram samples carry trace_id exemplars that Prometheus stores (for the heatmap)."""
    now = time.time()
    url = f"http://127.0.0.1:{stack.prom_port}/api/v1/query_exemplars?" + urllib.parse.urlencode(
        {
            "query": "http_server_request_duration_seconds_bucket",
            "start": str(now - 300),
            "end": str(now),
        }
    )

    def exemplar_trace_ids() -> list[str]:
        data = http_json(url)["data"]
        return [e["labels"].get("trace_id", "") for s in data for e in s["exemplars"]]

    ids = wait_until(exemplar_trace_ids, timeout=30, what="exemplars")
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def _webhook_alerts(stack: Stack, name: str, status: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, alert)
        for path, alert in stack.webhook.alerts()
        if alert["labels"].get("alertname") == name
        and alert["labels"].get("service") == stack.driven_service
        and alert["status"] == status
    ]


def _inhibited(stack: Stack, name: str) -> bool:
    url = f"http://127.0.0.1:{stack.am_port}/api/v2/alerts?" + urllib.parse.urlencode(
        {"filter": [f'alertname="{name}"', f'service="{stack.driven_service}"']}, doseq=True
    )
    return any(a["status"]["inhibitedBy"] for a in http_json(url))


def _page_notifications(stack: Stack, service: str, status: str) -> list[dict[str, Any]]:
    """Webhook calls to the page receiver for ``service``'s group (one call = one page)."""
    with stack.webhook.lock:
        return [
            body
            for path, body in stack.webhook.received
            if path == "/alerts/page"
            and body["groupLabels"].get("service") == service
            and body["status"] == status
        ]


def test_burst_of_500s_pages_once_then_resolves(stack: Stack) -> None:
    """A burst of 500s pages once (the SLO's fast burn, nothing else); calm resolves it."""
    page = "PyobsAvailabilityBudgetBurnFast"
    wait_until(
        lambda: (
            _series_count(
                stack, f'service:pyobs_slo_errors:ratio_rate5m{{service="{stack.driven_service}"}}'
            )[0]
            == 2
        ),
        timeout=30,
        what="the driven service's SLO series",
    )
    assert not _webhook_alerts(stack, page, "firing"), f"{page} fired before the burst"
    assert not _page_notifications(stack, stack.driven_service, "firing")

    stack.driver.burst.set()
    burst_started = time.monotonic()
    try:
        fired = wait_until(
            lambda: _webhook_alerts(stack, page, "firing"),
            timeout=40,
            what=f"{page} at the webhook",
        )
        path, alert = fired[0]
        assert path == "/alerts/page", f"{page} routed to {path}"
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["notify"] == "page"
        annotations = alert["annotations"]
        assert annotations["runbook_url"].endswith("#" + page.lower())
        assert annotations["dashboard_url"].endswith(f"/d/pyobs-slo-{stack.driven_service}")
        assert stack.driven_service in annotations["summary"]
        # The slow burn fires too, but Alertmanager holds it back while the page is active.
        assert wait_until(
            lambda: _inhibited(stack, "PyobsAvailabilityBudgetBurnSlow"),
            timeout=40,
            what="the slow-burn ticket inhibited by the page",
        )
        assert not _webhook_alerts(stack, "PyobsAvailabilityBudgetBurnSlow", "firing")
    finally:
        remaining = BURST_SECONDS - (time.monotonic() - burst_started)
        if remaining > 0:
            time.sleep(remaining)
        stack.driver.burst.clear()

    resolved = wait_until(
        lambda: _webhook_alerts(stack, page, "resolved"),
        timeout=90,
        what=f"{page} resolved at the webhook",
    )
    assert resolved[0][0] == "/alerts/page"
    # One outage, one page: the plain error-rate alert stayed quiet for a service with an SLO,
    # and the page group got exactly one firing notification.
    assert not _webhook_alerts(stack, "PyobsHighErrorRate", "firing")
    firing = _page_notifications(stack, stack.driven_service, "firing")
    assert len(firing) == 1, [[a["labels"]["alertname"] for a in b["alerts"]] for b in firing]
    assert stack.driver.sent.get(500, 0) > 20
    assert stack.driver.sent.get(200, 0) > 100


def _post_alerts(stack: Stack, alerts: list[dict[str, str]]) -> None:
    body = json.dumps(
        [{"labels": labels, "annotations": {"summary": labels["alertname"]}} for labels in alerts]
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.am_port}/api/v2/alerts",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_every_alert_of_one_outage_makes_one_page(stack: Stack) -> None:
    """All alerts of one outage make one page: grouped per service, the rest inhibited."""
    service = "checkout-outage"
    _post_alerts(
        stack,
        [
            {**labels, "service": service}
            for labels in (
                {"alertname": "PyobsHighErrorRate", "severity": "critical", "notify": "page"},
                {
                    "alertname": "PyobsAvailabilityBudgetBurnFast",
                    "severity": "critical",
                    "notify": "page",
                    "slo": "availability",
                    "sli": "availability",
                },
                {
                    "alertname": "PyobsLatencyBudgetBurnFast",
                    "severity": "critical",
                    "notify": "page",
                    "slo": "latency",
                    "sli": "latency",
                },
                {
                    "alertname": "PyobsAvailabilityBudgetBurnSlow",
                    "severity": "warning",
                    "notify": "ticket",
                    "slo": "availability",
                    "sli": "availability",
                },
            )
        ],
    )
    pages = wait_until(
        lambda: _page_notifications(stack, service, "firing"), timeout=30, what="the page"
    )
    # Several group_intervals (1 s here) for a second page to show up, if one were coming.
    time.sleep(5)
    pages = _page_notifications(stack, service, "firing")
    assert len(pages) == 1
    names = sorted(a["labels"]["alertname"] for a in pages[0]["alerts"])
    assert names == ["PyobsAvailabilityBudgetBurnFast", "PyobsLatencyBudgetBurnFast"]
    with stack.webhook.lock:
        others = [
            (path, body)
            for path, body in stack.webhook.received
            if path != "/alerts/page" and body["commonLabels"].get("service") == service
        ]
    assert others == []  # the ticket was inhibited
    assert _inhibited_service(stack, service, "PyobsHighErrorRate")
    assert _inhibited_service(stack, service, "PyobsAvailabilityBudgetBurnSlow")


def _inhibited_service(stack: Stack, service: str, name: str) -> bool:
    url = f"http://127.0.0.1:{stack.am_port}/api/v2/alerts?" + urllib.parse.urlencode(
        {"filter": [f'alertname="{name}"', f'service="{service}"']}, doseq=True
    )
    return any(a["status"]["inhibitedBy"] for a in http_json(url))
