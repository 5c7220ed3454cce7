"""A tiny Celery app for the Celery tests, instrumented by pyobs (``celery -A tests.celery_app``).

The worker reads its broker and result backend from ``CELERY_TEST_BROKER``; with
``CELERY_TEST_OTEL=1`` OpenTelemetry's own Celery instrumentation is on as well, and with
``CELERY_TEST_BROKEN=1`` every span processor hook raises (the fail-alone test). With
``CELERY_TEST_STACKS`` set, SIGUSR2 makes any of the worker's processes (the pool processes
inherit the handler) append its threads' stacks to that file: a test that waits in vain for a
result shows where each process stands.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import time
from typing import Any

from celery import Celery
from opentelemetry.sdk.trace import SpanProcessor

import pyobs
import pyobs.celery

BROKER = os.environ.get("CELERY_TEST_BROKER", "memory://")
app = Celery(
    "tests.celery_app", broker=BROKER, backend=BROKER.replace("memory://", "cache+memory://")
)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_track_started=False,
    result_expires=600,
)
log = logging.getLogger("tests.celery_app")
if os.environ.get("CELERY_TEST_STACKS"):
    # Kept open for the life of the process; append mode, so forked pool processes share it.
    _stacks = open(os.environ["CELERY_TEST_STACKS"], "a")  # noqa: SIM115
    faulthandler.register(signal.SIGUSR2, file=_stacks, all_threads=True)
task: Any = app.task


class BrokenProcessor(SpanProcessor):
    """A span processor whose hooks raise (a broken exporter or processor)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Raise, as a broken processor would."""
        raise RuntimeError("span processor on_start broke")

    def on_end(self, span: Any) -> None:
        """Raise, as a broken exporter behind a simple processor would."""
        raise RuntimeError("span processor on_end broke")


if os.environ.get("CELERY_TEST_BROKEN") == "1":
    from opentelemetry import trace

    pyobs.setup()
    trace.get_tracer_provider().add_span_processor(BrokenProcessor())  # type: ignore[attr-defined]
if os.environ.get("CELERY_TEST_OTEL") == "1":
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    pyobs.setup()
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
pyobs.celery.instrument(app)


@task  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    """Adds; logs one line inside the task; takes a moment so that the pool spreads work."""
    log.info("adding %s and %s", x, y)
    time.sleep(0.02)
    return x + y


@task  # type: ignore[untyped-decorator]
def fail() -> None:
    """Always fails."""
    log.info("about to fail")
    raise ValueError("the task failed on purpose")


@task(bind=True, max_retries=5)  # type: ignore[untyped-decorator]
def flaky(self: Any, times: int) -> str:
    """Fails ``times`` times (retried at once each time), then succeeds."""
    if self.request.retries < times:
        raise self.retry(countdown=0, exc=KeyError("not yet"))
    return f"done after {self.request.retries}"


@task  # type: ignore[untyped-decorator]
def hang(seconds: float) -> None:
    """Sleeps (a task whose pool process the test kills)."""
    log.info("hanging")
    time.sleep(seconds)
