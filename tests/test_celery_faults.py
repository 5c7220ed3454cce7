"""A broken span pipeline inside a real prefork worker never fails a task (issue 20).

Every span processor hook raises in the worker's processes. The tasks still run and return
their results, every metric still counts them exactly, the logs still carry the request's
trace id, and the faults are counted as ``pyobs_internal_errors_total{component="messaging"}``
and logged at a limited rate.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.brokers import Worker, celery_worker, redis_url  # noqa: F401 - a fixture
from tests.conftest import import_or_require
from tests.helpers import wait_until
from tests.test_celery import ADD, FAIL, WAIT, shop

pytestmark = pytest.mark.service  # a real redis-server and a real worker

import_or_require("celery")
import_or_require("flask")

N = 8


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:  # noqa: F811
    """A prefork worker whose span processor raises in every hook."""
    directory = tmp_path_factory.mktemp("worker-broken")
    with celery_worker(redis_url, directory, {"CELERY_TEST_BROKEN": "1"}) as running:
        yield running


def test_a_broken_span_processor_in_the_worker_never_fails_a_task(worker: Worker) -> None:
    """Results unchanged, counts exact, logs correlated; the faults counted and logged once
    per process and kind of error, not once per task."""
    from pyobs.testing import span_exporter

    client = shop(worker.queue).test_client()
    span_exporter()
    ids = client.get(f"/orders/{N}", buffered=True).get_json()["ids"]
    server = next(
        s for s in span_exporter().get_finished_spans() if s.name == "GET /orders/<int:count>"
    )
    fail_ids = client.get("/fail", buffered=True).get_json()["ids"]
    assert worker.results(ids, WAIT) == [2 * i for i in range(N)]
    (failed,) = worker.results(fail_ids, WAIT)
    assert type(failed).__name__ == "ValueError"

    tasks = "pyobs_celery_tasks_total"
    wait_until(lambda: worker.sample(tasks) >= N + 1, WAIT, "every run counted")
    assert worker.sample(tasks, celery_task_name=ADD, outcome="success") == N
    assert worker.sample(tasks, celery_task_name=FAIL, outcome="failure") == 1
    q = {"messaging_system": "celery", "messaging_destination_name": worker.queue}
    assert worker.sample("messaging_process_duration_seconds_count", **q) == N + 1
    assert worker.sample("pyobs_celery_active_tasks") == 0
    # start_span raised in every run (on_start): one fault per run at least.
    errors = worker.sample("pyobs_internal_errors_total", component="messaging")
    assert errors >= N + 1

    logs = worker.logs()
    adding = [
        line
        for line in logs
        if line.get("log.logger") == "tests.celery_app" and line["message"].startswith("adding")
    ]
    assert sorted(line["labels.celery_task_id"] for line in adding) == sorted(ids)
    # The CONSUMER span could not start; the logs still carry the request's trace.
    assert {line["trace.id"] for line in adding} == {f"{server.context.trace_id:032x}"}
    faults = [line for line in logs if "pyobs internal error in messaging" in line["message"]]
    pids = {line["process.pid"] for line in faults}
    assert 1 <= len(faults) <= 4 * len(pids)  # a line per process and kind, not per task
    assert len(faults) < errors
