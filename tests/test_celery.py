"""Celery end to end (issue 20): a real prefork worker (4 processes) on a real redis-server.

Tasks are enqueued by an instrumented Flask app in this process; the worker
(``tests/celery_app.py``) writes ECS JSON logs to stdout, its spans to stderr and serves its
metrics from the main process (``PYOBS_METRICS_PORT``, ``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.brokers import Worker, celery_worker, redis_url  # noqa: F401 - a fixture
from tests.conftest import import_or_require
from tests.helpers import alive, wait_until

pytestmark = pytest.mark.service  # a real redis-server and a real worker

import_or_require("celery")
import_or_require("flask")

N = 20  # add tasks enqueued by one request
WAIT = 60.0  # a deadline for the worker, never a speed bound
ADD = "tests.celery_app.add"
FAIL = "tests.celery_app.fail"
FLAKY = "tests.celery_app.flaky"
HANG = "tests.celery_app.hang"


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:  # noqa: F811
    """One prefork worker with four pool processes (replaced as they go) for the module."""
    # Each pool process is replaced after 5 tasks: counts must survive the churn.
    directory = tmp_path_factory.mktemp("worker")
    with celery_worker(redis_url, directory, max_tasks_per_child=5) as running:
        yield running


def shop(queue: str) -> Any:
    """An instrumented Flask app whose routes enqueue tasks on ``queue``."""
    from flask import Flask

    import pyobs.flask
    from tests import celery_app

    app = Flask("shop")
    pyobs.flask.instrument(app)
    log = logging.getLogger("shop")

    @app.get("/orders/<int:count>")
    def orders(count: int) -> dict[str, Any]:
        ids = [celery_app.add.apply_async((i, i), queue=queue).id for i in range(count)]
        log.info("enqueued %s", count)
        return {"ids": ids}

    @app.get("/fail")
    def fail() -> dict[str, Any]:
        return {"ids": [celery_app.fail.apply_async(queue=queue).id]}

    @app.get("/flaky/<int:times>")
    def flaky(times: int) -> dict[str, Any]:
        return {"ids": [celery_app.flaky.apply_async((times,), queue=queue).id]}

    return app


def _sent(task_queue: str) -> tuple[float, float]:
    """(messages sent, publish durations observed) to ``task_queue`` by this process."""
    labels = {
        "messaging_system": "celery",
        "messaging_destination_name": task_queue,
        "error_type": "",
    }
    sent = REGISTRY.get_sample_value("messaging_client_sent_messages_total", labels)
    timed = REGISTRY.get_sample_value(
        "messaging_client_operation_duration_seconds_count",
        {**labels, "messaging_operation_name": "send"},
    )
    return sent or 0.0, timed or 0.0


def test_tasks_from_a_request_are_one_trace_with_exact_counts(worker: Worker) -> None:
    """N tasks, a failing and a retrying one, sent by a request: results unchanged, counts
    exact across the pool, gauge back to 0, logs and spans in the request's trace."""
    from pyobs.testing import span_exporter

    client = shop(worker.queue).test_client()
    span_exporter()  # before the first request
    sent_before = _sent(worker.queue)
    add_ids = client.get(f"/orders/{N}", buffered=True).get_json()["ids"]
    fail_ids = client.get("/fail", buffered=True).get_json()["ids"]
    flaky_ids = client.get("/flaky/2", buffered=True).get_json()["ids"]

    # The tasks' own results are untouched.
    assert worker.results(add_ids, WAIT) == [2 * i for i in range(N)]
    (failed,) = worker.results(fail_ids, WAIT)
    assert type(failed).__name__ == "ValueError"
    assert worker.results(flaky_ids, WAIT) == ["done after 2"]

    runs = N + 1 + 3  # flaky ran three times: two retries, then success
    tasks = "pyobs_celery_tasks_total"
    wait_until(lambda: worker.sample(tasks) >= runs, WAIT, "every run counted")
    assert worker.sample(tasks, celery_task_name=ADD, outcome="success") == N
    assert worker.sample(tasks, celery_task_name=FAIL, outcome="failure") == 1
    assert worker.sample(tasks, celery_task_name=FLAKY, outcome="retry") == 2
    assert worker.sample(tasks, celery_task_name=FLAKY, outcome="success") == 1
    assert worker.sample(tasks) == runs
    q = {"messaging_system": "celery", "messaging_destination_name": worker.queue}
    assert worker.sample("messaging_client_consumed_messages_total", **q) == runs
    assert worker.sample("messaging_process_duration_seconds_count", **q) == runs
    assert (
        worker.sample("messaging_process_duration_seconds_count", **q, error_type="ValueError") == 1
    )
    assert worker.sample("pyobs_messaging_queue_wait_seconds_count", **q) == runs
    assert worker.sample("pyobs_celery_task_duration_seconds_count", celery_task_name=ADD) == N
    # The retries were published by the pool processes themselves.
    assert worker.sample("messaging_client_sent_messages_total", **q) == 2
    assert worker.sample("pyobs_celery_active_tasks") == 0
    assert "pyobs_celery_active_tasks" in worker.page()
    assert worker.sample("pyobs_internal_errors_total") == 0
    # Pool processes that ended are compacted by the next scrape: after one, no file of a
    # dead process is left. A pool process replaced after its last task may end after the
    # scrapes above, so the check scrapes first (and again if one ended in between).
    left: list[str] = []

    def none_left_after_a_scrape() -> bool:
        worker.page()
        left[:] = [
            f.name
            for f in worker.multiproc.glob("*.db")
            if (pid := f.stem.rsplit("_", 1)[-1].split("-")[0]).isdigit() and not alive(int(pid))
        ]
        return not left

    try:
        wait_until(none_left_after_a_scrape, WAIT, "a scrape to compact the ended processes")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; files of dead processes: {left}") from None
    # The enqueuing process counted its own sends.
    sent, timed = _sent(worker.queue)
    assert (sent - sent_before[0], timed - sent_before[1]) == (N + 2, N + 2)

    # Spans: SERVER (here) -> PRODUCER (here) -> CONSUMER (in a pool process).
    here = span_exporter().get_finished_spans()
    server = next(s for s in here if s.name == "GET /orders/<int:count>")
    producers = {
        s.attributes["messaging.message.id"]: s
        for s in here
        if s.kind.name == "PRODUCER" and s.parent and s.parent.span_id == server.context.span_id
    }
    assert set(producers) == set(add_ids)
    assert {s.name for s in producers.values()} == {f"send {worker.queue}"}
    trace_id = f"0x{server.context.trace_id:032x}"

    def consumers() -> dict[str, dict[str, Any]]:
        return {
            s["attributes"].get("messaging.message.id"): s
            for s in worker.spans()
            if s["kind"] == "SpanKind.CONSUMER"
        }

    wait_until(lambda: set(add_ids) <= set(consumers()), WAIT, "the worker's spans")
    found = consumers()
    for task_id in add_ids:
        span = found[task_id]
        assert span["name"] == f"process {worker.queue}"
        assert span["context"]["trace_id"] == trace_id
        assert span["parent_id"] == f"0x{producers[task_id].context.span_id:016x}"
        assert span["attributes"]["messaging.system"] == "celery"
        assert span["attributes"]["messaging.operation.type"] == "process"
    failing = found[fail_ids[0]]
    assert failing["status"]["status_code"] == "ERROR"
    assert failing["attributes"]["error.type"] == "ValueError"

    # Logs: each task's line carries the request's trace id, its span id and the task id.
    lines = {
        line.get("labels.celery_task_id"): line
        for line in worker.logs()
        if line.get("log.logger") == "tests.celery_app" and line["message"].startswith("adding")
    }
    assert set(add_ids) <= set(lines)
    for task_id in add_ids:
        line = lines[task_id]
        assert line["trace.id"] == trace_id[2:]
        assert line["span.id"] == found[task_id]["context"]["span_id"][2:]
        assert line["labels.celery_task_name"] == ADD
        assert line["log.level"] == "info"
    # The work was spread over several pool processes, and still counted exactly.
    assert len({lines[t]["process.pid"] for t in add_ids}) >= 2


def test_worker_metrics_carry_exemplars_and_the_families_once(worker: Worker) -> None:
    """The worker page, asked for OpenMetrics, has trace_id exemplars on the task histogram
    and each messaging family exactly once."""
    import urllib.request

    client = shop(worker.queue).test_client()
    ids = client.get("/orders/2", buffered=True).get_json()["ids"]
    assert worker.results(ids, WAIT) == [0, 2]
    request = urllib.request.Request(
        f"http://127.0.0.1:{worker.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )

    def page() -> str:
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    def exemplar_lines() -> list[str]:
        return [
            line
            for line in page().splitlines()
            if line.startswith("pyobs_celery_task_duration_seconds_bucket")
            and "# {trace_id=" in line
        ]

    assert wait_until(exemplar_lines, WAIT, "an exemplar on the task duration histogram")
    text = page()
    for family in (
        "messaging_client_consumed_messages",
        "messaging_process_duration_seconds",
        "pyobs_celery_tasks",
        "pyobs_celery_active_tasks",
    ):
        assert text.count(f"# TYPE {family} ") == 1


def test_celerys_own_worker_lines_are_ecs_json(worker: Worker) -> None:
    """Celery's own log lines (ready, received, succeeded) come out as ECS JSON, at the level
    ``celery -l INFO`` asked for; the task's outcome line carries its task id."""
    client = shop(worker.queue).test_client()
    (task_id,) = client.get("/orders/1", buffered=True).get_json()["ids"]
    assert worker.results([task_id], WAIT) == [0]

    def lines() -> dict[str, dict[str, Any]]:
        return {line["log.logger"]: line for line in worker.logs() if task_id in line["message"]}

    found = wait_until(
        lambda: {"celery.app.trace", "celery.worker.strategy"} <= set(lines()) and lines(),
        WAIT,
        "Celery's lines",
    )
    assert found["celery.worker.strategy"]["message"].endswith("received")
    done = found["celery.app.trace"]
    assert "succeeded" in done["message"]
    assert done["labels.celery_task_id"] == task_id
    assert done["log.level"] == "info"
    ready = [line for line in worker.logs() if line["message"].endswith(" ready.")]
    assert ready
    assert ready[0]["log.logger"] == "celery.apps.worker"
    assert ready[0]["service.name"] == "celery-worker"


def test_a_killed_pool_process_leaves_no_task_active(worker: Worker) -> None:
    """A pool process killed in the middle of a task: the active-tasks gauge is back to 0 at
    the next scrape, and the counts of the tasks that ended are kept."""
    from tests import celery_app

    wait_until(lambda: worker.sample("pyobs_celery_active_tasks") == 0, WAIT, "an idle worker")
    before = worker.sample("pyobs_celery_tasks_total")
    task_id = celery_app.hang.apply_async((120,), queue=worker.queue).id

    def running_in() -> int | None:
        for line in worker.logs():
            if line.get("labels.celery_task_id") == task_id and line["message"] == "hanging":
                return int(line["process.pid"])
        return None

    pid = wait_until(running_in, WAIT, "the task to start")
    assert worker.sample("pyobs_celery_active_tasks", celery_task_name=HANG) == 1
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), WAIT, "the pool process to end")
    wait_until(lambda: worker.sample("pyobs_celery_active_tasks") == 0, WAIT, "the gauge back to 0")
    # The killed run reported no outcome; nothing else was lost or counted twice.
    assert worker.sample("pyobs_celery_tasks_total") == before
