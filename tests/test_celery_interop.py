"""pyobs beside OpenTelemetry's own Celery instrumentation (issue 20, the rule of issue 10).

Both are on, in the enqueuing process and in a real prefork worker: the trace is OTel's
(its PRODUCER and CONSUMER spans, none of pyobs's), the metrics are pyobs's and counted
once, and the worker's logs still carry the request's trace id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.brokers import Worker, celery_worker, redis_url  # noqa: F401 - a fixture
from tests.conftest import import_or_require
from tests.helpers import wait_until
from tests.test_celery import ADD, WAIT, shop

pytestmark = pytest.mark.service  # a real redis-server and a real worker

import_or_require("celery")
import_or_require("flask")
import_or_require("opentelemetry.instrumentation.celery")

N = 6


@pytest.fixture(scope="module")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:  # noqa: F811
    """A prefork worker with OTel's Celery instrumentation on as well as pyobs's."""
    directory = tmp_path_factory.mktemp("worker-otel")
    with celery_worker(redis_url, directory, {"CELERY_TEST_OTEL": "1"}) as running:
        yield running


@pytest.fixture
def otel_here() -> Iterator[None]:
    """OTel's Celery instrumentation on in this (the enqueuing) process for one test."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor: Any = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def test_with_otels_celery_instrumentation_nothing_is_doubled(
    worker: Worker, otel_here: None
) -> None:
    """OTel's spans carry the trace (no second PRODUCER or CONSUMER span from pyobs); task
    metrics are counted once; worker logs carry the request's trace id."""
    from pyobs import celery as pyobs_celery
    from pyobs.testing import span_exporter

    assert pyobs_celery.otel_active()
    labels = {
        "messaging_system": "celery",
        "messaging_destination_name": worker.queue,
        "error_type": "",
    }
    sent_before = REGISTRY.get_sample_value("messaging_client_sent_messages_total", labels) or 0
    client = shop(worker.queue).test_client()
    span_exporter()
    ids = client.get(f"/orders/{N}", buffered=True).get_json()["ids"]
    assert worker.results(ids, WAIT) == [2 * i for i in range(N)]

    here = span_exporter().get_finished_spans()
    server = next(s for s in here if s.name == "GET /orders/<int:count>")
    producers = [s for s in here if s.kind.name == "PRODUCER"]
    assert sorted(s.name for s in producers) == [f"apply_async/{ADD}"] * N  # OTel's only
    assert all(s.parent and s.parent.span_id == server.context.span_id for s in producers)
    trace_id = f"0x{server.context.trace_id:032x}"

    def consumers() -> list[dict[str, Any]]:
        return [s for s in worker.spans() if s["kind"] == "SpanKind.CONSUMER"]

    wait_until(lambda: len(consumers()) >= N, WAIT, "the worker's spans")
    assert sorted(s["name"] for s in consumers()) == [f"run/{ADD}"] * N  # OTel's only
    assert {s["context"]["trace_id"] for s in consumers()} == {trace_id}
    producer_ids = {f"0x{s.context.span_id:016x}" for s in producers}
    assert {s["parent_id"] for s in consumers()} == producer_ids

    tasks = "pyobs_celery_tasks_total"
    wait_until(lambda: worker.sample(tasks) >= N, WAIT, "every run counted")
    assert worker.sample(tasks, celery_task_name=ADD, outcome="success") == N
    q = {"messaging_system": "celery", "messaging_destination_name": worker.queue}
    assert worker.sample("messaging_client_consumed_messages_total", **q) == N
    assert worker.sample("pyobs_celery_active_tasks") == 0
    sent = REGISTRY.get_sample_value("messaging_client_sent_messages_total", labels) or 0
    assert sent - sent_before == N
    for family in ("pyobs_celery_tasks_total", "messaging_process_duration_seconds"):
        assert worker.page().count(f"# TYPE {family} ") == 1

    lines = [
        line
        for line in worker.logs()
        if line.get("log.logger") == "tests.celery_app" and line["message"].startswith("adding")
    ]
    assert sorted(line["labels.celery_task_id"] for line in lines) == sorted(ids)
    assert {line["trace.id"] for line in lines} == {trace_id[2:]}
