"""pyobs.celery in one process: idempotence, bounded labels, clock skew, and fail-alone.

Tasks are published on Celery's in-memory broker and run with ``apply()``, which sends the
same signals a worker sends around a task; the real worker is tests/test_celery.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor
from prometheus_client import REGISTRY

from tests.conftest import import_or_require

import_or_require("celery")

TASKS = "pyobs_celery_tasks_total"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def app() -> Any:
    """A Celery app on the in-memory broker with two tasks, instrumented by pyobs."""
    from celery import Celery

    import pyobs.celery

    app = Celery("units", broker="memory://", backend="cache+memory://")
    task: Any = app.task

    @task(name="units.double")  # type: ignore[untyped-decorator]
    def double(x: int) -> int:
        logging.getLogger("units").info("doubling %s", x)
        return 2 * x

    @task(name="units.explode")  # type: ignore[untyped-decorator]
    def explode() -> None:
        raise LookupError("exploded on purpose")

    pyobs.celery.instrument(app)
    return app


def test_instrument_twice_connects_each_receiver_once(app: Any) -> None:
    """A second instrument() (and another app) adds no second receiver: nothing counts twice."""
    from celery import Celery, signals

    import pyobs.celery

    pyobs.celery.instrument(app)
    pyobs.celery.instrument(Celery("another", broker="memory://"))
    for signal, receiver in (
        (signals.task_prerun, pyobs.celery._prerun),
        (signals.task_postrun, pyobs.celery._postrun),
        (signals.before_task_publish, pyobs.celery._before_publish),
    ):
        assert [r for _, r in signal.receivers if r is receiver] == [receiver]
    before = _value(TASKS, celery_task_name="units.double", outcome="success")
    assert app.tasks["units.double"].apply((4,)).get() == 8
    assert _value(TASKS, celery_task_name="units.double", outcome="success") == before + 1


def test_disabled_makes_instrument_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """PYOBS_DISABLED=true: the app is not instrumented (not even marked)."""
    from celery import Celery

    import pyobs.celery
    from pyobs import _integration

    monkeypatch.setenv("PYOBS_DISABLED", "true")
    other = Celery("disabled", broker="memory://")
    pyobs.celery.instrument(other)
    assert not _integration.instrumented(other)


def test_unregistered_task_names_share_one_label(app: Any) -> None:
    """A task name no instrumented app registered becomes <unregistered>: no new series."""
    import pyobs.celery

    assert pyobs.celery.task_label("units.double") == "units.double"
    assert pyobs.celery.task_label("units.typo") == "<unregistered>"
    assert pyobs.celery.task_label(None) == "<unregistered>"


def test_failure_outcome_error_type_and_result_are_kept(app: Any) -> None:
    """A failing task: its own exception reaches the caller, and it is counted as a failure
    with its error type."""
    before = _value(TASKS, celery_task_name="units.explode", outcome="failure")
    result = app.tasks["units.explode"].apply()
    with pytest.raises(LookupError, match="exploded on purpose"):
        result.get()
    assert _value(TASKS, celery_task_name="units.explode", outcome="failure") == before + 1
    assert _value("pyobs_celery_active_tasks", celery_task_name="units.explode") == 0


def test_queue_wait_of_a_sender_with_a_clock_ahead_counts_as_zero() -> None:
    """A publish time in the future (clock skew) is observed as 0 s, not dropped."""
    from pyobs import _messaging

    metrics = _messaging.get_metrics()
    labels = {"messaging_system": "celery", "messaging_destination_name": "skew"}
    count = "pyobs_messaging_queue_wait_seconds_count"
    zero = "pyobs_messaging_queue_wait_seconds_bucket"
    before, before_zero = _value(count, **labels), _value(zero, **labels, le="0.001")
    wait = _messaging.queue_wait(repr(time.time() + 30))
    assert wait is not None and wait < 0
    metrics.record_queue_wait("celery", "skew", wait)
    assert _value(count, **labels) == before + 1
    assert _value(zero, **labels, le="0.001") == before_zero + 1
    assert _messaging.queue_wait("not a time") is None
    assert _messaging.queue_wait(None) is None


def test_headers_carry_the_context_and_the_publish_time() -> None:
    """inject() writes the configured propagators' headers, extract() reads them back, also
    from bytes values (Kafka)."""
    from opentelemetry import trace

    import pyobs
    from pyobs import _messaging

    pyobs.setup()
    with trace.get_tracer("t").start_as_current_span("parent") as span:
        headers: dict[str, Any] = {}
        _messaging.inject(headers)
        _messaging.stamp_sent_at(headers)
    assert set(headers) >= {"traceparent", _messaging.SENT_AT_HEADER}
    as_bytes = {k: v.encode() for k, v in headers.items()}
    for carrier in (headers, as_bytes):
        context = _messaging.extract(carrier)
        assert context is not None
        found = trace.get_current_span(context).get_span_context()
        assert found.trace_id == span.get_span_context().trace_id
    assert _messaging.extract({}) is None
    assert _messaging.extract({"traceparent": "garbage"}) is None


class _Armed(SpanProcessor):
    """A span processor that raises in every hook while armed (the SDK cannot remove one)."""

    armed = False

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Raise while armed."""
        if self.armed:
            raise RuntimeError("span processor on_start broke")

    def on_end(self, span: Any) -> None:
        """Raise while armed."""
        if self.armed:
            raise RuntimeError("span processor on_end broke")

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing to flush."""
        return True


_processor = _Armed()


@pytest.fixture
def broken_spans() -> Iterator[_Armed]:
    """The provider's span processors raise for the length of one test."""
    from opentelemetry import trace

    import pyobs
    from pyobs import _errors

    pyobs.setup()
    provider: Any = trace.get_tracer_provider()
    if not getattr(provider, "_pyobs_test_armed", False):
        provider.add_span_processor(_processor)
        provider._pyobs_test_armed = True
    _errors._reset_rate_limit()
    _processor.armed = True
    try:
        yield _processor
    finally:
        _processor.armed = False


def test_a_broken_span_processor_never_fails_a_task(
    app: Any, broken_spans: _Armed, caplog: pytest.LogCaptureFixture
) -> None:
    """Every span hook raises: tasks are still published and run with their own results,
    every metric still counts them, the errors are counted as messaging and logged once."""
    errors = "pyobs_internal_errors_total"
    before_errors = _value(errors, component="messaging")
    before_ok = _value(TASKS, celery_task_name="units.double", outcome="success")
    before_sent = _value(
        "messaging_client_sent_messages_total",
        messaging_system="celery",
        messaging_destination_name="celery",
        error_type="",
    )
    with caplog.at_level(logging.ERROR, logger="pyobs.internal"):
        sent = [app.tasks["units.double"].apply_async((i,)) for i in range(3)]
        results = [app.tasks["units.double"].apply((i,)).get() for i in range(3)]
    assert all(s.id for s in sent)
    assert results == [0, 2, 4]
    assert _value(TASKS, celery_task_name="units.double", outcome="success") == before_ok + 3
    assert _value("pyobs_celery_active_tasks", celery_task_name="units.double") == 0
    sent_now = _value(
        "messaging_client_sent_messages_total",
        messaging_system="celery",
        messaging_destination_name="celery",
        error_type="",
    )
    assert sent_now == before_sent + 3
    assert _value(errors, component="messaging") >= before_errors + 6
    lines = [r for r in caplog.records if "internal error in messaging" in r.getMessage()]
    assert len(lines) == 1  # one line per error type and minute; the count has them all


def test_a_broken_metrics_registry_never_fails_a_task(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics code raising in every receiver: the task runs and returns its result, the
    error is counted as messaging."""
    from pyobs import _messaging

    def broken() -> Any:
        raise RuntimeError("metrics broke")

    before = _value("pyobs_internal_errors_total", component="messaging")
    monkeypatch.setattr(_messaging, "get_metrics", broken)
    assert app.tasks["units.double"].apply((21,)).get() == 42
    assert app.tasks["units.double"].apply_async((1,)).id
    assert _value("pyobs_internal_errors_total", component="messaging") >= before + 2


def test_task_logs_carry_the_task_id_only_inside_the_task(
    app: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inside a task every record carries labels.celery_task_id and the CONSUMER span's ids;
    after it, none does."""
    import json

    import pyobs

    pyobs.setup()
    result = app.tasks["units.double"].apply((5,))
    logging.getLogger("units").info("after the task")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    inside = next(line for line in lines if line["message"] == "doubling 5")
    assert inside["labels.celery_task_id"] == result.id
    assert inside["labels.celery_task_name"] == "units.double"
    assert len(inside["trace.id"]) == 32 and len(inside["span.id"]) == 16
    after = next(line for line in lines if line["message"] == "after the task")
    assert "labels.celery_task_id" not in after
    assert "trace.id" not in after


def test_a_pool_process_forked_during_a_scrape_does_not_keep_the_lock(tmp_path: Any) -> None:
    """A process forked while a scrape holds the multiprocess lock (a Celery pool process
    started beside the metrics thread) does not keep holding it once the scrape is done."""
    import os
    import signal

    from pyobs import _multiproc

    with _multiproc._flock(str(tmp_path), exclusive=True, wait=None):
        child = os.fork()
        if child == 0:  # the pool process: lives on, never touches the lock
            time.sleep(30)
            os._exit(0)
    try:
        with _multiproc._flock(str(tmp_path), exclusive=True, wait=2.0) as locked:
            assert locked
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_process_forked_while_the_lock_file_opens_does_not_keep_the_lock(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork that lands while a scrape thread is inside ``os.open`` of the lock file (which
    releases the GIL) waits until that thread has noted the file, so the child closes its copy:
    the lock the scrape takes next is released when the scrape ends, not when the child does.
    Without the wait, every later scrape blocked for the child's whole life."""
    import os
    import signal

    from pyobs import _multiproc

    real_open = os.open
    opened = threading.Event()

    def slow_open(path: Any, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(_multiproc.LOCK_NAME):
            opened.set()
            time.sleep(0.3)  # the window a fork from another thread could land in
        return fd

    monkeypatch.setattr(os, "open", slow_open)

    def compaction() -> None:  # what a scrape does first
        with _multiproc._flock(str(tmp_path), exclusive=True, wait=None):
            pass

    scrape = threading.Thread(target=compaction)
    scrape.start()
    assert opened.wait(10)
    child = os.fork()
    if child == 0:  # the pool process: lives on, never touches the lock
        time.sleep(30)
        os._exit(0)
    try:
        scrape.join(10)
        monkeypatch.undo()
        with _multiproc._flock(str(tmp_path), exclusive=True, wait=2.0) as locked:
            assert locked
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_prefork_worker_without_a_multiprocess_directory_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker with several pool processes and no PROMETHEUS_MULTIPROC_DIR: one warning
    naming the fix; a solo pool: none."""
    import pyobs
    import pyobs.celery

    pyobs.setup()

    class Worker:
        concurrency = 4
        pool_cls = "celery.concurrency.prefork:TaskPool"

    class Solo:
        concurrency = 1
        pool_cls = "solo"

    with caplog.at_level(logging.WARNING, logger="pyobs"):
        pyobs.celery._worker_init(sender=Solo())
        assert not [r for r in caplog.records if "PROMETHEUS_MULTIPROC_DIR" in r.getMessage()]
        pyobs.celery._worker_init(sender=Worker())
    (line,) = [r for r in caplog.records if "PROMETHEUS_MULTIPROC_DIR" in r.getMessage()]
    assert "4 pool processes" in line.getMessage()


def test_queue_wait_of_a_scheduled_task_starts_at_its_eta() -> None:
    """A task published with a countdown waits from its ETA, not from its publish time."""
    from datetime import datetime, timezone

    import pyobs.celery

    class Request:
        def __init__(self, sent: float, eta: float | None) -> None:
            self.pyobs_sent_at = repr(sent)
            self.eta = (
                None if eta is None else datetime.fromtimestamp(eta, timezone.utc).isoformat()
            )

    now = time.time()
    plain = pyobs.celery._queue_wait(Request(now - 10, None))
    scheduled = pyobs.celery._queue_wait(Request(now - 10, now - 2))
    assert plain is not None and 10 <= plain < 11
    assert scheduled is not None and 2 <= scheduled < 3


def test_destinations_beyond_the_cap_become_overflow() -> None:
    """Queue names beyond PYOBS_MAX_ROUTES share <overflow>, counted like routes."""
    from prometheus_client import CollectorRegistry

    from pyobs import _messaging

    metrics = _messaging.MessagingMetrics(CollectorRegistry(), max_values=2)
    before = _value("pyobs_cardinality_overflow_total")
    assert [metrics.destination(q) for q in ("a", "b", "a", "c", "d")] == [
        "a", "b", "a", "<overflow>", "<overflow>",
    ]  # fmt: skip
    assert _value("pyobs_cardinality_overflow_total") == before + 2


def test_the_metrics_prefix_applies_to_the_task_families(app: Any) -> None:
    """PYOBS_METRICS_PREFIX prefixes the messaging and task families like the HTTP ones."""
    import pyobs

    pyobs.setup(metrics_prefix="shop_")
    assert app.tasks["units.double"].apply((1,)).get() == 2
    labels = {"celery_task_name": "units.double", "outcome": "success"}
    assert _value("shop_pyobs_celery_tasks_total", **labels) == 1
    assert (
        _value(
            "shop_messaging_process_duration_seconds_count",
            messaging_system="celery",
            messaging_destination_name="",
            error_type="",
        )
        == 1
    )
