"""One request, one trace, through a Celery queue and a Kafka topic (issue 20's acceptance).

Everything is real and runs as a user runs it, configured by the environment only: a Flask
shop (pyobs.flask, Werkzeug) whose ``POST /orders/<n>`` enqueues the Celery task
``shop.charge`` on Redis and produces a Kafka record; a Celery worker with four prefork
processes (pyobs.celery, multiprocess metrics); a Kafka consumer (pyobs.kafka); Jaeger v2
receiving every process's spans over OTLP through the batch span processor; and a Prometheus
scraping the three processes with the workers rules (tests/messaging_app.py is the shop).

One scenario, twenty orders: order 5, 10, 15 and 20 are declined (the task fails), orders 1,
9, 13 and 17 find the bank busy once (one retry, then success). Everything below is read
back from what the processes wrote, served and exported.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.brokers import json_lines, redis_url  # noqa: F401 - the session's redis-server
from tests.conftest import import_or_require
from tests.helpers import kill_tree, listening_socket, start_server, wait_until
from tests.kafka_broker import Broker
from tests.messaging_app import busy_first, declined
from tests.tracing_backends import ROOT, Jaeger, app_env, parent_id, span_service, tags

pytestmark = [pytest.mark.service, pytest.mark.slow]

ORDERS = range(1, 21)
DECLINED = [n for n in ORDERS if declined(n)]
RETRIED = [n for n in ORDERS if busy_first(n)]
#: Deadlines for the processes to come up and for the work to be done; never speed bounds.
START = 60.0
DONE = 90.0
RATE = "$__rate_interval"

# The dashboard generator (grafana-foundation-sdk) needs Python 3.11; the library tests also
# run on 3.10, where the scenario runs with the committed rules and skips the dashboard test.
DASHGEN = sys.version_info >= (3, 11)


@dataclass
class Process:
    """A process of the shop: its metrics URL and its JSON log lines."""

    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str
    port: int
    stdout: Path

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of its metrics page, by name and sorted labels."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples ``name`` whose labels include ``labels``."""
        return sum(
            value
            for (sample, keys), value in self.samples().items()
            if sample == name and labels.items() <= dict(keys).items()
        )

    def logs(self, message: str = "") -> list[dict[str, Any]]:
        """Its JSON log lines whose message starts with ``message``."""
        return [
            line
            for line in json_lines(self.stdout)
            if str(line.get("message", "")).startswith(message)
        ]


@dataclass
class Shop:
    """The running shop after the twenty orders, and what it needs to be read back."""

    web: Process
    worker: Process
    consumer: Process
    jaeger: Jaeger
    prometheus_port: int
    queue: str
    topic: str
    services: dict[str, str]
    traces: dict[int, str] = field(default_factory=dict)


def _env(jaeger: Jaeger, service: str, extra: dict[str, str]) -> dict[str, str]:
    env = app_env({**jaeger.env(service), **extra})
    env.update(PYOBS_SERVICE_NAME=service, PYOBS_LOG_HANDLER="always", PYOBS_LOG_LEVEL="info")
    return env


def _metrics_ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


@contextlib.contextmanager
def _web(tmp_path: Path, env: dict[str, str]) -> Iterator[Process]:
    listener = listening_socket()
    port = listener.getsockname()[1]
    stdout = tmp_path / "web.out"
    with stdout.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.messaging_app", "web", str(listener.fileno())],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
            start_new_session=True,
        )
    listener.close()
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, f"web exited: {stdout.read_text()[-3000:]}"
            return _metrics_ready(base + "/health")

        wait_until(up, START, "the web app to serve")
        yield Process("web", proc, base + "/metrics", port, stdout)
    finally:
        kill_tree(proc, grace=10)


@contextlib.contextmanager
def _served(
    name: str, command: list[str], ready_line: str, tmp_path: Path, env: dict[str, str]
) -> Iterator[Process]:
    """A process serving its metrics on a free PYOBS_METRICS_PORT, ready once it logged
    ``ready_line``; ended (its whole tree) on exit."""
    stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"

    def ready(port: int) -> bool:
        return ready_line in stdout.read_text(errors="replace") and _metrics_ready(
            f"http://127.0.0.1:{port}/metrics"
        )

    proc, port = start_server(
        lambda port: ["env", f"PYOBS_METRICS_PORT={port}", *command],
        ready,
        stdout,
        stderr,
        timeout=START,
        cwd=str(ROOT),
        env=env,
    )
    try:
        yield Process(name, proc, f"http://127.0.0.1:{port}/metrics", port, stdout)
    finally:
        kill_tree(proc, grace=15)


def _worker_command(queue: str) -> list[str]:
    """``celery worker`` with four prefork processes on the shop's own queue."""
    return [
        sys.executable, "-m", "celery", "-A", "tests.messaging_app", "worker",
        "--pool=prefork", "--concurrency=4", "-l", "INFO", "-Q", queue,
        "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def _prometheus(tmp_path: Path, targets: dict[str, int], stack: contextlib.ExitStack) -> int:
    """A real Prometheus scraping the three processes every second, with the workers rules."""
    from tests.prometheus.conftest import REPO, start_prometheus, tool

    tool("prometheus")
    rules = tmp_path / "rules"
    rules.mkdir()
    if DASHGEN:  # the rules with their windows scaled down to the test's minute
        from pyobs._dashgen import workers

        text = yaml.safe_dump(workers.rule_file(scale=1 / 60), sort_keys=False)
    else:  # the committed rules (the dashboard test, which reads them, needs the generator)
        text = (REPO / "prometheus" / "rules" / "pyobs-workers.yml").read_text(encoding="utf-8")
    (rules / "pyobs-workers.yml").write_text(text)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "scrape_configs": [
            {
                "job_name": "pyobs-services",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"service": service}}
                    for service, port in targets.items()
                ],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = start_prometheus(path, tmp_path)
    stack.callback(process.stop)
    return process.port


def _order(web: Process, order: int, trace_id: str) -> int:
    request = urllib.request.Request(f"{web.metrics_url.removesuffix('/metrics')}/orders/{order}")
    request.method = "POST"
    request.add_header("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return int(response.status)


@pytest.fixture(scope="module")
def shop(
    tmp_path_factory: pytest.TempPathFactory,
    jaeger: Jaeger,
    kafka: Broker,
    redis_url: str,  # noqa: F811 - the imported fixture
) -> Iterator[Shop]:
    """The shop running, Prometheus scraping it, twenty orders placed and fully processed."""
    for module in ("flask", "celery", "confluent_kafka"):
        import_or_require(module)
    tmp_path = tmp_path_factory.mktemp("shop")
    suffix = secrets.token_hex(3)
    queue, topic = f"shop-{suffix}", kafka.new_topic("shop-orders")
    services = {name: f"shop-{name}-{suffix}" for name in ("web", "worker", "consumer")}
    shared = {"SHOP_REDIS": redis_url, "SHOP_KAFKA": kafka.bootstrap, "SHOP_QUEUE": queue}
    shared["SHOP_TOPIC"] = topic
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    with contextlib.ExitStack() as stack:
        web = stack.enter_context(_web(tmp_path, _env(jaeger, services["web"], shared)))
        worker_env = {**shared, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        worker = stack.enter_context(
            _served(
                "worker",
                _worker_command(queue),
                "ready.",
                tmp_path,
                _env(jaeger, services["worker"], worker_env),
            )
        )
        consumer = stack.enter_context(
            _served(
                "consumer",
                [sys.executable, "-m", "tests.messaging_app", "consume"],
                "shipping consumer ready",
                tmp_path,
                _env(jaeger, services["consumer"], shared),
            )
        )
        targets = {services[p.name]: p.port for p in (web, worker, consumer)}
        prometheus_port = _prometheus(tmp_path, targets, stack)
        found = Shop(web, worker, consumer, jaeger, prometheus_port, queue, topic, services)
        wait_until(
            lambda: _instant(prometheus_port, 'count(up{job="pyobs-services"} == 1)') == 3,
            START,
            "Prometheus to scrape the three processes",
        )
        for order in ORDERS:
            found.traces[order] = secrets.token_hex(16)
            assert _order(web, order, found.traces[order]) == 200
        runs = len(ORDERS) + len(RETRIED)
        wait_until(
            lambda: (
                worker.total("pyobs_celery_tasks_total") == runs
                and worker.total("pyobs_celery_active_tasks") == 0
            ),
            DONE,
            f"the worker to end {runs} task runs",
        )
        wait_until(
            lambda: consumer.total("messaging_process_duration_seconds_count") == len(ORDERS),
            DONE,
            f"the consumer to process {len(ORDERS)} records",
        )
        yield found


def _instant(port: int, promql: str) -> float | None:
    """The value of an instant query with one result, or None."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        result = json.loads(response.read())["data"]["result"]
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_one_trace_holds_the_request_the_task_and_the_message(shop: Shop) -> None:
    """Jaeger (queried through its HTTP API) holds one trace per order: the web's SERVER span,
    its PRODUCER spans for the task and the record, the worker's CONSUMER span under the task's
    PRODUCER and the consumer's CONSUMER span under the record's PRODUCER; a retried order
    holds the retry's publish and second run in the same trace."""
    web, worker, consumer = (shop.services[n] for n in ("web", "worker", "consumer"))
    for order, trace_id in shop.traces.items():
        retried = order in RETRIED
        trace = shop.jaeger.wait_trace(trace_id, spans=7 if retried else 5, timeout=DONE)
        spans: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for span in trace["spans"]:
            kind = tags(span)["span.kind"]
            spans.setdefault((span_service(trace, span), kind, span["operationName"]), []).append(
                span
            )
        expected = {
            (web, "server", "POST /orders/<int:order>"): 1,
            (web, "producer", f"send {shop.queue}"): 1,
            (web, "producer", f"send {shop.topic}"): 1,
            (worker, "consumer", f"process {shop.queue}"): 2 if retried else 1,
            (consumer, "consumer", f"process {shop.topic}"): 1,
        }
        if retried:
            expected[(worker, "producer", f"send {shop.queue}")] = 1
        assert {key: len(found) for key, found in spans.items()} == expected, order
        assert {span["traceID"] for span in trace["spans"]} == {trace_id}
        (server,) = spans[(web, "server", "POST /orders/<int:order>")]
        (task_send,) = spans[(web, "producer", f"send {shop.queue}")]
        (record_send,) = spans[(web, "producer", f"send {shop.topic}")]
        (record_process,) = spans[(consumer, "consumer", f"process {shop.topic}")]
        runs = sorted(
            spans[(worker, "consumer", f"process {shop.queue}")], key=lambda s: s["startTime"]
        )
        assert parent_id(task_send) == parent_id(record_send) == server["spanID"]
        assert parent_id(runs[0]) == task_send["spanID"]
        assert parent_id(record_process) == record_send["spanID"]
        assert tags(runs[-1]).get("otel.status_code") == ("ERROR" if declined(order) else None)
        assert tags(record_process)["messaging.system"] == "kafka"
        assert tags(runs[0])["messaging.system"] == "celery"
        if retried:
            (resend,) = spans[(worker, "producer", f"send {shop.queue}")]
            assert parent_id(resend) == runs[0]["spanID"]
            assert parent_id(runs[1]) == resend["spanID"]


def test_the_worker_and_the_consumer_log_with_the_request_s_trace_id(shop: Shop) -> None:
    """Every log line the task and the consumer write carries the trace id of the request
    that placed the order (and the task id); the work spread over the pool's processes."""
    charged: dict[int, set[str]] = {}
    pids = set()
    for line in shop.worker.logs("charging order "):
        order = int(line["message"].rsplit(" ", 1)[1])
        charged.setdefault(order, set()).add(line["trace.id"])
        assert line["labels.celery_task_id"] and line["labels.celery_task_name"] == "shop.charge"
        assert line["span.id"]
        pids.add(line["process.pid"])
    assert charged == {order: {shop.traces[order]} for order in ORDERS}
    assert len(shop.worker.logs("charging order ")) == len(ORDERS) + len(RETRIED)
    assert len(pids) > 1, "every task ran in one pool process: the sum proves nothing"
    shipped = {
        int(line["message"].rsplit(" ", 1)[1]): line["trace.id"]
        for line in shop.consumer.logs("shipping order ")
    }
    assert shipped == shop.traces
    accepted = {
        int(line["message"].split()[1]): line["trace.id"]
        for line in shop.web.logs("order ")
        if line["message"].endswith(" accepted")
    }
    assert accepted == shop.traces


def test_task_and_message_metrics_are_exact_across_the_pool(shop: Shop) -> None:
    """The worker's one metrics page sums its four processes exactly: 16 successes, 4
    failures, 4 retries, 24 runs started; the web sent 20 tasks and 20 records; the consumer
    received and processed 20 records of known size."""
    worker, web, consumer = shop.worker, shop.web, shop.consumer
    name = {"celery_task_name": "shop.charge"}
    successes = len(ORDERS) - len(DECLINED)
    assert worker.total("pyobs_celery_tasks_total", outcome="success", **name) == successes
    assert worker.total("pyobs_celery_tasks_total", outcome="failure", **name) == len(DECLINED)
    assert worker.total("pyobs_celery_tasks_total", outcome="retry", **name) == len(RETRIED)
    runs = len(ORDERS) + len(RETRIED)
    assert worker.total("pyobs_celery_task_duration_seconds_count", **name) == runs
    assert worker.total("pyobs_celery_active_tasks") == 0
    celery = {"messaging_system": "celery", "messaging_destination_name": shop.queue}
    kafka = {"messaging_system": "kafka", "messaging_destination_name": shop.topic}
    assert worker.total("messaging_client_consumed_messages_total", **celery) == runs
    assert worker.total("messaging_process_duration_seconds_count", **celery) == runs
    assert worker.total("pyobs_messaging_queue_wait_seconds_count", **celery) == runs
    # The retries are published again by the worker itself.
    assert worker.total("messaging_client_sent_messages_total", **celery) == len(RETRIED)
    assert web.total("messaging_client_sent_messages_total", error_type="", **celery) == 20
    assert web.total("messaging_client_sent_messages_total", error_type="", **kafka) == 20
    body = sum(len(json.dumps({"order": n}).encode()) for n in ORDERS)
    sizes = "pyobs_messaging_message_body_size_bytes_sum"
    assert web.total(sizes, messaging_operation_type="send", **kafka) == body
    assert consumer.total(sizes, messaging_operation_type="receive", **kafka) == body
    assert consumer.total("messaging_client_consumed_messages_total", **kafka) == 20
    assert consumer.total("messaging_process_duration_seconds_count", **kafka) == 20
    assert web.total("http_server_request_duration_seconds_count") == 20


def _series(port: int, promql: str) -> int:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", f"Prometheus rejects {promql!r}: {answer}"
    return len(answer["data"]["result"])


def _rule_health(port: int) -> dict[str, str]:
    """Each rule's health and last error, as Prometheus reports them (for failure messages)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as response:
        groups = json.loads(response.read())["data"]["groups"]
    return {
        rule["name"]: f"{rule['health']} {rule.get('lastError', '')}".strip()
        for group in groups
        for rule in group["rules"]
    }


def _label_values(port: int, expr: str) -> list[str]:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr.strip())
    assert match, f"unexpected variable query {expr!r}"
    selector = re.sub(r"\$\{?(service|task)\}?", ".*", match[1])
    url = f"http://127.0.0.1:{port}/api/v1/label/{match[2]}/values?" + urllib.parse.urlencode(
        {"match[]": selector}
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(json.loads(response.read())["data"])


@pytest.mark.skipif(not DASHGEN, reason="dashboard generation needs Python 3.11 or newer")
def test_prometheus_gets_the_exact_counts_and_every_dashboard_query_returns_data(
    shop: Shop,
) -> None:
    """A real Prometheus scraping the worker reads the same exact sums; every query of the
    workers dashboard (panels and variables) and every workers rule returns data; the task
    duration exemplars carry the orders' trace ids (the heatmap's links to Jaeger)."""
    from pyobs._dashgen import workers
    from pyobs._dashgen.dashboards import prometheus_queries

    port = shop.prometheus_port
    worker = shop.services["worker"]
    runs = len(ORDERS) + len(RETRIED)
    wait_until(
        lambda: (
            _instant(port, f'sum(pyobs_celery_tasks_total{{service="{worker}"}})') == runs
            and _instant(
                port, 'sum(messaging_process_duration_seconds_count{messaging_system="kafka"})'
            )
            == len(ORDERS)
        ),
        30,
        "Prometheus to scrape the final counts",
    )
    failed = f'pyobs_celery_tasks_total{{service="{worker}", outcome="failure"}}'
    assert _instant(port, f"sum({failed})") == len(DECLINED)

    board = json.loads((ROOT / "dashboards" / "pyobs-workers.json").read_text())
    queries = prometheus_queries(board)
    assert len(queries) > 25
    # Nothing failed to be sent or received here: those two records stay empty.
    records = [r["record"] for r in workers.recording_rules()]
    errors = [r for r in records if r.endswith("_errors:rate5m")]
    assert len(errors) == 2 and all(_series(port, record) == 0 for record in errors)

    def no_data() -> list[tuple[str, str]]:
        empty = []
        for title, expr in queries:
            if title.startswith("$"):
                if not _label_values(port, expr):
                    empty.append((title, expr))
                continue
            promql = re.sub(r"\$\{?(service|task)\}?", ".*", expr.replace(RATE, "5m"))
            if _series(port, promql) == 0:
                empty.append((title, expr))
        return empty + [(r, r) for r in records if r not in errors and _series(port, r) == 0]

    empty = no_data()
    deadline = time.monotonic() + 30  # the rules' first evaluations after the scrape
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = no_data()
    assert not empty, (
        "no data for:\n"
        + "\n".join(f"  {t}: {e}" for t, e in empty)
        + f"\nrule health: {_rule_health(port)}"
    )
    services = _label_values(port, next(e for t, e in queries if t == "$service"))
    assert set(shop.services.values()) <= set(services)

    now = time.time()
    url = f"http://127.0.0.1:{port}/api/v1/query_exemplars?" + urllib.parse.urlencode(
        {
            "query": f'pyobs_celery_task_duration_seconds_bucket{{service="{worker}"}}',
            "start": now - 600,
            "end": now + 60,
        }
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        data = json.loads(response.read())["data"]
    linked = {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}
    assert linked and linked <= set(shop.traces.values())
