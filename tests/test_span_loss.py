"""Span loss is visible and bounded: every span the export pipeline loses is counted.

pyobs's batch processor (pyobs/_spans.py) is driven past its queue with a slow exporter, a
failing one and a raising one; spans sampled must equal spans exported plus
``pyobs_spans_dropped_total``, exactly, with the SDK's per-span warnings replaced by pyobs's
rate-limited line. Then the same through ``pyobs.setup()`` in a fresh interpreter, exporting
over OTLP to a slow loopback receiver, in-process and in multiprocess mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import REGISTRY

from pyobs import ConfigError, _spans
from pyobs._config import load_config
from pyobs._otel_env import BatchSettings, batch_settings
from tests.conftest import import_or_require
from tests.helpers import wait_until
from tests.tracing_backends import OtlpReceiver

ROOT = Path(__file__).resolve().parents[1]
SMALL = BatchSettings(
    max_queue_size=64, max_export_batch_size=16, schedule_delay_millis=5, export_timeout_millis=1000
)


def dropped() -> dict[str, float]:
    """pyobs_spans_dropped_total by reason, from the default registry."""
    _spans.DROPPED.ensure()
    return {
        reason: REGISTRY.get_sample_value("pyobs_spans_dropped_total", {"reason": reason}) or 0.0
        for reason in _spans.REASONS
    }


class TestExporter(SpanExporter):
    """Takes ``delay`` seconds per batch; fails (FAILURE, or raises) on some batches."""

    __test__ = False

    def __init__(self, delay: float = 0.0, refuse: int = 0, raise_on: int = 0) -> None:
        self.delay = delay
        self.refuse = refuse
        self.raise_on = raise_on
        self.batches = 0
        self.exported = 0
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Count a batch; refuse every ``refuse``-th, raise on every ``raise_on``-th."""
        time.sleep(self.delay)
        with self.lock:
            self.batches += 1
            number = self.batches
        if self.refuse and number % self.refuse == 0:
            return SpanExportResult.FAILURE
        if self.raise_on and number % self.raise_on == 0:
            raise ConnectionError("the collector went away")
        with self.lock:
            self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyobs's drop-log clock stands still: the once-a-minute limit is deterministic."""
    monkeypatch.setattr(_spans, "_clock", lambda: 1000.0)
    monkeypatch.setattr(_spans.DROPPED, "last_line", None)
    monkeypatch.setattr(_spans.DROPPED, "since", {})


def run_spans(exporter: SpanExporter, threads: int = 4, per_thread: int = 1000) -> int:
    """End ``threads * per_thread`` sampled spans through pyobs's processor; flush; shut down."""
    provider = TracerProvider()
    processor = _spans.CountingBatchSpanProcessor(exporter, SMALL)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("loss")

    def work() -> None:
        for _ in range(per_thread):
            tracer.start_span("op").end()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    processor.force_flush()
    provider.shutdown()
    return threads * per_thread


def _sdk_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]


def _pyobs_counts(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The span counts of pyobs's drop lines."""
    lines = [r.getMessage() for r in caplog.records if "span(s) dropped" in r.getMessage()]
    return [int(line.split()[1]) for line in lines]


def test_slow_exporter_every_span_exported_or_counted(
    caplog: pytest.LogCaptureFixture, frozen_clock: None
) -> None:
    """A slow exporter behind a small queue: exported + dropped(queue_full) == spans ended,
    exactly; no SDK "Queue full" line per span, and pyobs's own line once (plus its summary
    at shutdown), carrying the whole count."""
    caplog.set_level(logging.INFO)
    before = dropped()
    exporter = TestExporter(delay=0.02)
    started = run_spans(exporter)
    after = dropped()
    lost = {reason: int(after[reason] - before[reason]) for reason in after}
    assert lost["queue_full"] > 0, "the queue never filled: the test proves nothing"
    assert exporter.exported + sum(lost.values()) == started
    assert lost["export_failed"] == lost["shutdown"] == 0
    assert _sdk_lines(caplog) == []
    counts = _pyobs_counts(caplog)
    assert len(counts) == 2 and sum(counts) == lost["queue_full"], counts


def test_failing_exporter_refused_and_raising_batches_are_counted(
    caplog: pytest.LogCaptureFixture, frozen_clock: None
) -> None:
    """An exporter that refuses every third batch and raises on every fifth: spans exported
    plus spans counted (export_failed, queue_full) == spans ended; the SDK logs no traceback."""
    caplog.set_level(logging.INFO)
    before = dropped()
    exporter = TestExporter(delay=0.005, refuse=3, raise_on=5)
    started = run_spans(exporter)
    after = dropped()
    lost = {reason: int(after[reason] - before[reason]) for reason in after}
    assert lost["export_failed"] > 0
    assert exporter.exported + lost["export_failed"] + lost["queue_full"] == started
    assert lost["shutdown"] == 0
    assert _sdk_lines(caplog) == []
    assert sum(_pyobs_counts(caplog)) == lost["export_failed"] + lost["queue_full"]
    lines = [r.getMessage() for r in caplog.records if "span(s) dropped" in r.getMessage()]
    assert any("last export error: ConnectionError: the collector went away" in line
               for line in lines), lines  # fmt: skip


def test_spans_ending_after_shutdown_are_counted(frozen_clock: None) -> None:
    """A span that ends after the pipeline shut down is counted as ``shutdown``, not lost."""
    provider = TracerProvider()
    exporter = TestExporter()
    provider.add_span_processor(_spans.CountingBatchSpanProcessor(exporter, SMALL))
    span = provider.get_tracer("late").start_span("late")
    provider.shutdown()
    before = dropped()["shutdown"]
    span.end()
    assert dropped()["shutdown"] - before == 1
    assert exporter.exported == 0


class _RecordingExporter(TestExporter):
    """Notes each batch's size, its thread, and whether instrumentation was on while exporting."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, str, bool]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled

        self.calls.append(
            (len(spans), threading.current_thread().name, is_instrumentation_enabled())
        )
        return super().export(spans)


def test_batches_leave_as_the_sdk_sends_them_with_instrumentation_suppressed() -> None:
    """pyobs's processor batches as the SDK's BatchSpanProcessor does: a full batch leaves on
    the export thread at once, a partial one after the schedule delay or at force_flush; it
    exports with instrumentation suppressed (an instrumented HTTP client makes no span of
    the export), and the application's own context is untouched; after shutdown,
    force_flush says False."""
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    exporter = _RecordingExporter()
    settings = BatchSettings(
        max_queue_size=64, max_export_batch_size=16, schedule_delay_millis=60_000,
        export_timeout_millis=1000,
    )  # fmt: skip
    provider = TracerProvider()
    processor = _spans.CountingBatchSpanProcessor(exporter, settings)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("batches")
    for _ in range(40):
        tracer.start_span("op").end()
    wait_until(lambda: exporter.exported == 32, 10, "two full batches")
    time.sleep(0.2)  # the 8 left wait for the (one minute) delay
    assert exporter.exported == 32
    assert processor.force_flush() is True
    assert exporter.exported == 40
    sizes = [size for size, _, _ in exporter.calls]
    assert sizes == [16, 16, 8]
    assert exporter.calls[0][1] == "pyobs-span-export"
    assert exporter.calls[2][1] == threading.current_thread().name  # force_flush exports here
    assert [enabled for _, _, enabled in exporter.calls] == [False, False, False]
    assert is_instrumentation_enabled()
    provider.shutdown()
    assert processor.force_flush() is False

    quick = _RecordingExporter()  # a short delay sends a partial batch without a flush
    processor = _spans.CountingBatchSpanProcessor(quick, SMALL)  # 5 ms delay
    provider = TracerProvider()
    provider.add_span_processor(processor)
    for _ in range(3):
        provider.get_tracer("delay").start_span("op").end()
    wait_until(lambda: quick.exported == 3, 10, "the delay's partial batch")
    provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_accounts_for_its_own_spans(frozen_clock: None) -> None:
    """After a fork (gunicorn --preload builds the pipeline in the master) with the parent's
    queue full, the child's pipeline starts empty (its spans are exported, not refused for
    the parent's) and accounts for every span it ends: exported + counted == ended."""
    provider = TracerProvider()
    exporter = TestExporter(delay=0.2)
    processor = _spans.CountingBatchSpanProcessor(exporter, SMALL)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("fork")
    for _ in range(200):  # the parent's queue is full when it forks
        tracer.start_span("parent").end()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: end spans fast enough to overflow, report, leave at once
        code = 1
        try:
            exporter.lock = threading.Lock()  # a parent thread may have held it at the fork
            exporter.delay = 0.02
            before, exported_before = dropped(), exporter.exported
            workers = [
                threading.Thread(target=lambda: [tracer.start_span("c").end() for _ in range(500)])
                for _ in range(4)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            provider.shutdown()
            after = dropped()
            report = {
                "exported": exporter.exported - exported_before,
                "dropped": {r: after[r] - before[r] for r in after},
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    provider.shutdown()
    assert os.WEXITSTATUS(status) == 0 and report, report
    lost = report["dropped"]
    assert lost["queue_full"] > 0
    assert report["exported"] > 0, "the parent's queued spans took the child's queue"
    assert report["exported"] + sum(lost.values()) == 2000


def test_defaults_and_otel_bsp_variables() -> None:
    """pyobs's defaults (8192 queue, 2048 batch, 1 s delay, 10 s timeout); OTEL_BSP_* win,
    a batch set alone raises the queue, a queue set alone lowers the batch; a malformed or
    inconsistent value fails setup() naming the variable."""
    assert batch_settings({}) == BatchSettings(8192, 2048, 1000, 10000)
    assert batch_settings(
        {
            "OTEL_BSP_MAX_QUEUE_SIZE": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_BSP_EXPORT_TIMEOUT": "7000",
        }
    ) == BatchSettings(100, 10, 50, 7000)
    assert batch_settings({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10000"}).max_queue_size == 10000
    assert batch_settings({"OTEL_BSP_MAX_QUEUE_SIZE": "500"}).max_export_batch_size == 500
    with pytest.raises(ConfigError, match=r"OTEL_BSP_MAX_QUEUE_SIZE='lots'.*positive integer"):
        load_config(env={"OTEL_BSP_MAX_QUEUE_SIZE": "lots"})
    with pytest.raises(ConfigError, match=r"OTEL_BSP_MAX_EXPORT_BATCH_SIZE=20.*must not exceed"):
        load_config(env={"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"})


# --- through pyobs.setup(), exporting over OTLP ----------------------------------------------


@pytest.fixture
def slow_receiver() -> Iterator[OtlpReceiver]:
    """A slow OTLP receiver (0.1 s per export), stopped after the test."""
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    receiver = OtlpReceiver(delay=0.1)
    try:
        yield receiver
    finally:
        receiver.close()


APP = textwrap.dedent(
    """
    import json, sys, threading
    from flask import Flask
    from opentelemetry import trace
    import pyobs.flask

    app = Flask("loss")
    app.add_url_rule("/items/<int:i>", "item", lambda i: "ok")
    pyobs.flask.instrument(app)

    def hit():
        client = app.test_client()
        for _ in range(250):
            client.get("/items/1", buffered=True)

    threads = [threading.Thread(target=hit) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    trace.get_tracer_provider().shutdown()
    page = app.test_client().get("/metrics").text
    lines = [l for l in page.splitlines() if l.startswith("pyobs_spans_dropped_total")]
    print(json.dumps({"dropped": lines}))
    """
)


@pytest.mark.parametrize("multiproc", [False, True], ids=["in-process", "multiprocess"])
def test_setup_pipeline_counts_its_losses_on_the_metrics_page(
    slow_receiver: OtlpReceiver, tmp_path: Path, multiproc: bool
) -> None:
    """pyobs.setup() with an OTLP endpoint and a small OTEL_BSP_MAX_QUEUE_SIZE, 1,000 requests
    against a receiver taking 0.1 s per export: spans received + pyobs_spans_dropped_total on
    /metrics == 1,000 (also with PROMETHEUS_MULTIPROC_DIR); no per-span SDK warning."""
    import_or_require("flask")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{slow_receiver.port}",
            "OTEL_BSP_MAX_QUEUE_SIZE": "40",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20",
            "PYOBS_ACCESS_LOG": "false",
        }
    )
    if multiproc:
        (tmp_path / "metrics").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    result = subprocess.run(
        [sys.executable, "-c", APP],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = json.loads(result.stdout.strip().splitlines()[-1])["dropped"]
    by_reason = {
        m.group(1): float(m.group(2))
        for m in (re.match(r'pyobs_spans_dropped_total\{reason="(\w+)"\} (\S+)', x) for x in lines)
        if m
    }
    assert set(by_reason) == set(_spans.REASONS), lines
    assert by_reason["queue_full"] > 0, (by_reason, len(slow_receiver.spans), result.stderr[-2000:])
    assert len(slow_receiver.spans) + sum(by_reason.values()) == 1000
    output = result.stdout + result.stderr
    assert "Queue full" not in output
    assert output.count("span(s) dropped") <= 2


@pytest.mark.slow
@pytest.mark.service
def test_gunicorn_workers_count_their_losses_in_one_scrape(
    slow_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """gunicorn, 2 workers, multiprocess mode, a small queue and a receiver taking 0.1 s per
    export: one scrape shows every worker's requests and drops, and once gunicorn has stopped
    (each worker flushes at exit) the spans received plus pyobs_spans_dropped_total, read
    from the metric files the workers leave, equal the requests served.

    The final count is read from the files, not from a scrape: a request is recorded before
    its span ends, so a live scrape can show the last request but not yet that span's drop,
    and drops counted while a worker ends come after any scrape."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from pyobs import _multiproc
    from tests.tracing_backends import serve

    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{slow_receiver.port}",
        "OTEL_BSP_MAX_QUEUE_SIZE": "20",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
        "PYOBS_ACCESS_LOG": "false",
    }

    def served_on(page: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith("http_server_request_duration_seconds_count{")
        )

    def dropped_on(page: str) -> dict[str, float]:
        return {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^pyobs_spans_dropped_total\{reason="(\w+)"\} (\S+)$', page, re.M)
        }

    with serve(tmp_path, env, workers=2) as app:
        assert app.metrics_dir is not None
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: app.get_plain(f"/items/{n}"), range(800)))
        assert statuses == [200] * 800

        def scrape() -> str:
            with urllib.request.urlopen(f"{app.base}/metrics", timeout=10) as response:
                return str(response.read().decode())

        # A request is recorded when the server closes its response, just after the client
        # has read it: the last one may land a moment after the last answer.
        def complete_page() -> str | None:
            page = scrape()
            return page if served_on(page) >= 800 else None

        page = wait_until(complete_page, 10, "every request on the metrics page")
    assert served_on(page) == 800
    live = dropped_on(page)
    assert live["queue_full"] > 0, page

    registry = CollectorRegistry()
    registry.register(_multiproc.MultiprocessCollector(str(app.metrics_dir)))
    final_page = generate_latest(registry).decode()
    final = dropped_on(final_page)
    assert served_on(final_page) == 800
    assert all(final[reason] >= count for reason, count in live.items()), (live, final)
    assert len(slow_receiver.spans) + sum(final.values()) == 800, (live, final)


class _BlockingExporter(TestExporter):
    """Holds every export until ``release`` is set (an export stuck on a slow backend)."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Wait for the release, then count the batch."""
        self.entered.set()
        self.release.wait(10)
        return super().export(spans)


def test_a_starved_export_thread_is_let_in_once_per_export(
    monkeypatch: pytest.MonkeyPatch, frozen_clock: None
) -> None:
    """While a batch is overdue, the thread ending spans steps aside for the export thread
    (docs/benchmarks-journal.md, "The export thread and the GIL") every NUDGE_AFTER spans, but an
    export that makes no progress (a slow backend) costs one such wait, not one per span;
    once the export goes on, every span is exported or counted."""
    monkeypatch.setattr(_spans, "NUDGE_WAIT", 0.05)
    exporter = _BlockingExporter()
    provider = TracerProvider()
    processor = _spans.CountingBatchSpanProcessor(exporter, SMALL)  # batch 16, queue 64
    provider.add_span_processor(processor)
    waits: list[bool] = []
    real_wait = processor._progressed.wait_for

    def counting_wait(predicate: Any, timeout: float | None = None) -> bool:
        result = bool(real_wait(predicate, timeout))
        waits.append(result)
        return result

    monkeypatch.setattr(processor._progressed, "wait_for", counting_wait)
    tracer = provider.get_tracer("nudge")
    before = dropped()
    for _ in range(16):  # one batch: the SDK wakes its export thread, which takes it
        tracer.start_span("op").end()
    assert exporter.entered.wait(10), "the export thread never took the first batch"
    for _ in range(100):  # far past the queue while that export is stuck
        tracer.start_span("op").end()
    assert waits == [False], "one wait in vain while the export is stuck, then none"
    exporter.release.set()
    processor.force_flush()
    provider.shutdown()
    lost = dropped()["queue_full"] - before["queue_full"]
    assert lost > 0, "the queue never filled: the test proves nothing"
    assert exporter.exported + lost == 116


def test_the_export_thread_keeps_up_with_a_thread_that_writes_per_span(
    monkeypatch: pytest.MonkeyPatch, frozen_clock: None
) -> None:
    """A request thread that releases the GIL only for one short write per span (an access
    line to a fast sink) at full speed: every span is exported, none dropped, and every
    wait for the export thread ended with the batch taken."""
    monkeypatch.setattr(_spans, "NUDGE_WAIT", 2.0)  # a loaded machine may be slow to switch
    exporter = TestExporter()
    provider = TracerProvider()
    settings = BatchSettings(
        max_queue_size=256, max_export_batch_size=64, schedule_delay_millis=5000,
        export_timeout_millis=1000,
    )  # fmt: skip
    processor = _spans.CountingBatchSpanProcessor(exporter, settings)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("starve")
    before = dropped()
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        for _ in range(20_000):
            tracer.start_span("op").end()
            os.write(sink, b'{"message":"GET /items/7 200"}\n')
    finally:
        os.close(sink)
    assert processor._gave_up_at == -1, "a wait for the export thread ended in vain"
    processor.force_flush()
    provider.shutdown()
    assert dropped() == before
    assert exporter.exported == 20_000
