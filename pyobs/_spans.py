"""The span pipeline pyobs sets up for OTLP: a batch span processor with every loss counted.

The SDK's ``BatchSpanProcessor`` drops a span when its queue is full and logs "Queue full,
dropping Span." for each one (issue 16: a log flood and no metric), and a batch the exporter
refuses or raises on is gone with one log line. ``CountingBatchSpanProcessor`` does what the
SDK's processor does (a queue, an export thread, the same batching rules and ``OTEL_BSP_*``
settings, instrumentation suppressed while exporting, a fresh queue in a fork child), with
counting built in:

- admission in ``on_end``: a span is queued only while the queue holds fewer spans than its
  size; a refused span is counted as ``queue_full``, and nothing is logged per span;
- the exporter is wrapped: a batch it refuses, raises on or times out on is counted as
  ``export_failed``; spans that end after shutdown, or that shutdown leaves unexported, as
  ``shutdown``.

It is pyobs's own class, not a subclass of the SDK's: queueing through the SDK's class made
the span's ``SpanContext``, read the process id and went through two more calls for each
span: 6-7 us of CPU per request in the interleaved benchmark (docs/benchmarks-journal.md, "Sixth
round"). It uses only the SDK's public ``SpanProcessor`` interface; the context it exports
in is the one the SDK's own ``SimpleSpanProcessor`` exports in (``_suppressing_context``).

So spans sampled = spans exported + ``pyobs_spans_dropped_total`` (over every reason),
exactly. Drops are logged on ``pyobs`` at most once per minute, with the count since the last
line. The defaults suit a service doing thousands of requests per second (docs/configuration.md);
the standard ``OTEL_BSP_*`` variables win when set.

At SIGTERM, pyobs's handler (``install_sigterm``, chained in front of the handler it finds,
like the log shipper's) flushes the processors of this process within
``OTEL_BSP_EXPORT_TIMEOUT`` before the signal goes on: with the default disposition it then
shuts them down (what is still unexported is counted as ``shutdown``) and re-raises the signal
with SIG_DFL, so the process dies by SIGTERM as it would have; with an app or server handler
it flushes, calls that handler, and keeps flushing every DRAIN_INTERVAL from a daemon thread
so that spans ending during the app's graceful shutdown are out before a server that
restores SIG_DFL and re-raises ends the process. The shipper's handler and this one chain
in either order: each runs its own flush and calls the one it found. A fork child flushes
only its own spans (the child starts with an empty queue, as the SDK's does).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Sequence
from types import FrameType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from pyobs._otel_env import BatchSettings, batch_settings

REASONS = ("queue_full", "export_failed", "shutdown")
# A batch still not taken this many spans after the SDK woke its export thread: the request
# thread steps aside for at most NUDGE_WAIT seconds (CountingBatchSpanProcessor._nudge).
NUDGE_AFTER = 4
NUDGE_WAIT = 0.005  # CPython's default switch interval
INTERVAL = 60.0  # seconds between two log lines about dropped spans

_log = logging.getLogger("pyobs")
_clock = time.monotonic  # the drop log's clock (tests stop it)
_now = time.monotonic  # deadlines of flushes


class _Dropped:
    """pyobs_spans_dropped_total{reason} (default registry, multiprocess-aware) and its log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children: dict[str, Any] = {}
        self.last_line: float | None = None
        self.since: dict[str, int] = {}
        self.last_error = ""  # the exporter's last exception, for the next line

    def ensure(self) -> None:
        """Make the counter and its series (at 0) so that rates and alerts see them at once."""
        if self.children:
            return
        from prometheus_client import REGISTRY, Counter

        with self.lock:
            if self.children:
                return
            counter = Counter(
                "pyobs_spans_dropped",
                "Spans the trace pipeline lost, by reason (queue_full, export_failed, "
                "shutdown); see docs/configuration.md, span export.",
                ["reason"],
                registry=REGISTRY,
            )
            self.children = {reason: counter.labels(reason) for reason in REASONS}

    def add(self, reason: str, count: int) -> None:
        """Count ``count`` dropped spans; log at most once per INTERVAL. Never raises."""
        try:
            self.ensure()
            self.children[reason].inc(count)
        except Exception:  # noqa: BLE001 - counting must not reach the request
            pass
        try:
            now = _clock()
            with self.lock:
                self.since[reason] = self.since.get(reason, 0) + count
                if self.last_line is not None and now - self.last_line < INTERVAL:
                    return
                first = self.last_line is None
                self.last_line = now
                since, self.since = self.since, {}
            self._line(since, first)
        except Exception:  # noqa: BLE001
            pass

    def flush_line(self) -> None:
        """Log what was dropped since the last line (at shutdown)."""
        with self.lock:
            since, self.since = self.since, {}
        if since:
            self._line(since, False)

    def _line(self, since: dict[str, int], first: bool) -> None:
        from pyobs.redact import scrub

        total = sum(since.values())
        parts = ", ".join(f"{reason}: {since[reason]}" for reason in REASONS if since.get(reason))
        error, self.last_error = self.last_error, ""
        _log.warning(
            "pyobs: %d span(s) dropped %s(%s)%s; the trace backend is slower than the span "
            "rate or unreachable. They are counted in pyobs_spans_dropped_total; see "
            "OTEL_BSP_MAX_QUEUE_SIZE in pyobs's configuration docs. This line is written at "
            "most once a minute.",
            total,
            "" if first else f"in the last {INTERVAL:.0f} s or so ",
            parts,
            f"; last export error: {scrub(error)[:300]}" if error else "",
        )


DROPPED = _Dropped()


def _new_dropped_lock_after_fork() -> None:
    DROPPED.lock = threading.Lock()  # the parent's export thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_dropped_lock_after_fork)


class _CountingExporter(SpanExporter):
    """The real exporter, with the spans of a failed batch counted as dropped."""

    def __init__(self, inner: SpanExporter, progress: Any) -> None:
        self.inner = inner
        self._progress = progress  # called when a batch is taken and when its export ends
        self.in_flight = 0  # spans of the batch being exported (counted if the process dies)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export through the real exporter; a refused or raising batch is counted."""
        self._progress()
        self.in_flight = len(spans)
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - counted and logged at a limited rate instead
            DROPPED.last_error = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        finally:
            self.in_flight = 0
            self._progress()
        if result is not SpanExportResult.SUCCESS:
            reason = getattr(self.inner, "last_error", "")  # pyobs's OTLP exporter says why
            if reason and isinstance(reason, str):
                DROPPED.last_error = reason
            DROPPED.add("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        """Shut the real exporter down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the real exporter."""
        return bool(self.inner.force_flush(timeout_millis))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _suppressing_context() -> Context:
    """The context the SDK's span processors export in: instrumentation suppressed.

    Taken from the SDK's own ``SimpleSpanProcessor`` through public calls (its exporter is
    called inside that context and reads it with ``get_current()``), so that an HTTP client
    that OpenTelemetry instruments makes no span of its own while it exports pyobs's spans
    (the key that marks it is private to the API). Should a later SDK stop suppressing
    there, this is the plain current context and export still works (tests/test_span_loss.py
    checks that it suppresses).
    """
    seen: list[Context] = []

    class _Look(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            seen.append(context_api.get_current())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            """Nothing to release."""

    probe = ReadableSpan(
        name="pyobs-probe", context=SpanContext(1, 1, False, TraceFlags(TraceFlags.SAMPLED))
    )
    try:
        SimpleSpanProcessor(_Look()).on_end(probe)
    except Exception:  # noqa: BLE001 - no suppression then: export still works
        pass
    return seen[0] if seen else context_api.get_current()


# How an export pass ends (the SDK's batch strategies).
_FULL_BATCHES, _ONE_BATCH, _EVERYTHING = 0, 1, 2


class CountingBatchSpanProcessor(SpanProcessor):
    """A batch span processor like the SDK's, whose every lost span is counted.

    It behaves as the SDK's ``BatchSpanProcessor`` does (a queue, an export thread that
    sends a batch when one is full or when the schedule delay has passed, ``OTEL_BSP_*``,
    ``force_flush``, ``shutdown``, a fresh queue and thread in a fork child, instrumentation
    suppressed while exporting), with admission and counting built in: a span is queued
    only while the queue holds fewer than its size and is otherwise counted as
    ``queue_full``; a batch the exporter refuses or raises on is counted as
    ``export_failed``; spans left at shutdown as ``shutdown``. Queueing a span is one
    length check and one append on the request thread (docs/benchmarks-journal.md, "Sixth round").
    """

    def __init__(self, exporter: SpanExporter, settings: BatchSettings | None = None) -> None:
        self.settings = settings = settings or batch_settings(os.environ)
        self._max_queue = settings.max_queue_size
        self._batch_size = settings.max_export_batch_size
        self._delay = settings.schedule_delay_millis / 1000
        self._nudge_at = min(settings.max_export_batch_size + NUDGE_AFTER, settings.max_queue_size)
        self._closed = False  # shutdown began: spans that end now are counted as shutdown
        self._stopped = False  # shutdown's time ran out: no export is started any more
        self.exporter = exporter
        self._counting = _CountingExporter(exporter, self._advance)
        # pyobs's OTLP exporter encodes each span as it ends (pyobs/_otlp.py, pyobs_prepare).
        self._prepare = getattr(exporter, "pyobs_prepare", None)
        if self._prepare is not None:
            exporter.ready_max = 2 * settings.max_queue_size  # type: ignore[attr-defined]
        self._suppressed = _suppressing_context()
        DROPPED.ensure()
        self._start()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def _after_in_child() -> None:
                processor = ref()
                if processor is not None:
                    processor._start()  # the child starts empty; the parent exports its own

            os.register_at_fork(after_in_child=_after_in_child)
        _processors.add(self)

    def _start(self) -> None:
        """A fresh queue, locks and export thread (at start, and in a fork child)."""
        # Oldest on the left. deque's append and popleft are atomic: the request thread
        # appends and the export thread pops without a lock between them.
        # Spans, or what the exporter's pyobs_prepare handed back for them (their bytes).
        self._queue: collections.deque[Any] = collections.deque()
        # Re-entrant: pyobs's SIGTERM handler exports on the main thread, which the signal may
        # have interrupted inside _nudge while it held this lock.
        self._pending_lock = threading.RLock()
        self._progressed = threading.Condition(self._pending_lock)  # see _nudge
        self._progress = 0  # batches the exporter has taken, and exports it has finished
        self._gave_up_at = -1  # _progress when a nudge last waited in vain
        self._export_lock = threading.Lock()  # one export pass at a time
        self._wake = threading.Event()
        self._counting.in_flight = 0
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._work, name="pyobs-span-export", daemon=True)
        self._thread.start()

    def _advance(self) -> None:
        """The exporter took a batch, or finished an export: progress for _nudge."""
        with self._pending_lock:
            self._progress += 1
            self._progressed.notify_all()

    # -- the export thread -------------------------------------------------------------

    def _work(self) -> None:
        wake = self._wake
        while not self._closed:
            woken = wake.wait(self._delay)
            wake.clear()  # a span queued from here on wakes the next wait at once
            if self._closed:
                break
            self._export(_FULL_BATCHES if woken else _ONE_BATCH)
        self._export(_EVERYTHING)

    def _export(self, until: int, deadline: float | None = None) -> bool:
        """Export batches (``until`` says how many); False when ``deadline`` ran out first."""
        lock = self._export_lock
        if deadline is None:
            lock.acquire()
        elif not lock.acquire(timeout=max(0.0, deadline - _now())):
            return False
        try:
            queue = self._queue
            first = True
            while queue and not self._stopped:
                if len(queue) < self._batch_size and not (
                    until == _EVERYTHING or (until == _ONE_BATCH and first)
                ):
                    break
                if deadline is not None and not first and _now() >= deadline:
                    return False
                first = False
                pop = queue.popleft
                batch = [pop() for _ in range(min(self._batch_size, len(queue)))]
                token = context_api.attach(self._suppressed)
                try:
                    self._counting.export(batch)
                except Exception:  # noqa: BLE001 - counted by the exporter wrapper; never raise here
                    pass
                finally:
                    context_api.detach(token)
            return not queue
        finally:
            lock.release()

    def _nudge(self) -> None:
        """Step aside until the export thread makes progress (at most NUDGE_WAIT).

        The processor wakes its export thread when a batch is queued, and that thread then
        needs the GIL. A request thread that releases the GIL only for short system calls
        (one ``write`` per access line) takes it straight back each time, and CPython forces
        a switch only after a full switch interval without one: the export thread is woken
        in vain per request and starved until the queue overflows (docs/benchmarks-journal.md, "The
        export thread and the GIL"); so is an export whose socket call returned. Blocking
        here, every NUDGE_AFTER spans while a batch is overdue, lets that thread in until it
        takes a batch or finishes an export. A wait that ends without either (an export
        blocked on a slow backend) is not repeated until one happens: a slow backend costs
        one request at most NUDGE_WAIT per export, and what it cannot take is counted as
        dropped as before.
        """
        with self._progressed:
            seen = self._progress
            if seen == self._gave_up_at:
                return
            if not self._progressed.wait_for(lambda: self._progress != seen, NUDGE_WAIT):
                self._gave_up_at = seen

    # -- the span processor hooks --------------------------------------------------------

    # Nothing to do when a span starts or is ending, as in the SDK's batch processor; said
    # here so that pyobs's own provider may skip these calls (PyobsTracerProvider.sole_processor).
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing: spans are queued when they end."""

    def _on_ending(self, span: Span) -> None:
        """Nothing: spans are queued when they end."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a sampled span, or count it as dropped when the queue is full."""
        sampled = getattr(span, "is_sampled", None)  # pyobs's request span knows it
        if type(sampled) is not bool:  # any other span: its context says
            context = span.context
            sampled = context is not None and context.trace_flags.sampled
        if not sampled:
            return
        if self._closed:
            DROPPED.add("shutdown", 1)
            return
        queue = self._queue
        # Threads that check at the same moment may each add one span past the size; none
        # is ever dropped uncounted.
        if len(queue) >= self._max_queue:
            DROPPED.add("queue_full", 1)
            return
        prepare = self._prepare
        item: Any = span
        if prepare is not None:
            try:
                # pyobs's OTLP exporter may hand back the span's bytes: queued in its place.
                item = prepare(span) or span
            except Exception:  # noqa: BLE001 - encoded again at export, which reports it
                pass
        queue.append(item)
        pending = len(queue)
        if pending >= self._batch_size:
            wake = self._wake
            if not wake.is_set():
                wake.set()
            if pending >= self._nudge_at and not (pending - self._nudge_at) % NUDGE_AFTER:
                self._nudge()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every queued span from this thread; False when time ran out first."""
        if self._closed:
            return False
        return self._export(_EVERYTHING, _now() + timeout_millis / 1000)

    def shutdown(self) -> None:
        """Export what is queued (within the export timeout); count what is left."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._pid == os.getpid():
            self._thread.join(self.settings.export_timeout_millis / 1000)
        self._stopped = True  # an export still running finishes; no other starts
        with contextlib.suppress(Exception):
            self._counting.shutdown()
        left = self._take_all()
        if left:
            DROPPED.add("shutdown", left)
        DROPPED.flush_line()

    def _take_all(self) -> int:
        """Empty the queue; how many spans it held."""
        left = 0
        pop = self._queue.popleft
        with contextlib.suppress(IndexError):
            while True:
                pop()
                left += 1
        return left

    def shutdown_on_signal(self) -> None:
        """Flush within the export timeout, then count every span not exported (process ends)."""
        if self._closed or self._pid != os.getpid():
            return
        self._closed = True  # spans that end from now on are counted as shutdown
        with contextlib.suppress(Exception):
            self._export(_EVERYTHING, _now() + self.settings.export_timeout_millis / 1000)
        self._stopped = True
        self._wake.set()
        left = self._take_all()
        left += self._counting.in_flight  # a batch still on the wire is not known as exported
        self._counting.in_flight = 0
        if left:
            DROPPED.add("shutdown", left)
        DROPPED.flush_line()

    def flush_on_signal(self) -> None:
        """Flush within the export timeout (the app's own SIGTERM handler runs next)."""
        if not self._closed and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self.force_flush(self.settings.export_timeout_millis)


_processors: weakref.WeakSet[CountingBatchSpanProcessor] = weakref.WeakSet()
_previous_sigterm: Any = None
_sigterm_pid: int | None = None  # the process whose SIGTERM pyobs's span handler chains


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Flush the spans of this process, then let the previous SIGTERM disposition run."""
    previous = _previous_sigterm
    if previous in (None, signal.SIG_DFL):
        for processor in list(_processors):
            processor.shutdown_on_signal()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    for processor in list(_processors):
        processor.flush_on_signal()
    _start_drain()
    if callable(previous):
        previous(signum, frame)


_drain_pid: int | None = None
DRAIN_INTERVAL = 0.02  # seconds between two flushes while an app handler winds down


def _start_drain() -> None:
    """Keep exporting spans that end during the app's graceful shutdown (once per process).

    A server such as uvicorn restores the default action when it is done and re-raises
    SIGTERM, which pyobs cannot see: spans ending meanwhile are exported within
    DRAIN_INTERVAL plus one export instead of waiting for the batch delay.
    """
    global _drain_pid
    if _drain_pid == os.getpid():
        return
    _drain_pid = os.getpid()

    def drain() -> None:
        while True:
            time.sleep(DRAIN_INTERVAL)
            for processor in list(_processors):
                processor.flush_on_signal()

    with contextlib.suppress(Exception):
        threading.Thread(target=drain, name="pyobs-span-drain", daemon=True).start()


def install_sigterm() -> None:
    """Chain in front of the current SIGTERM handler (main thread only; once per process).

    A fork child inherits the handler; when the child's server replaced it (gunicorn's
    worker), a later call in the child chains in front of the new one.
    """
    global _previous_sigterm, _sigterm_pid
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm or _sigterm_pid == os.getpid():
            return
        if current is signal.SIG_IGN:
            return  # the app ignores SIGTERM: the process does not end by it
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_pid = os.getpid()


def flush_all() -> None:
    """Shut down this process's processors within the export timeout (a worker ends)."""
    for processor in list(_processors):
        processor.shutdown_on_signal()


class PyobsTracerProvider(TracerProvider):
    """The SDK's TracerProvider as ``pyobs.setup()`` installs it (when the app has none).

    It is the SDK's class, used through its public methods, and it also remembers the
    processors added to it. While pyobs's batch processor is the only one,
    ``sole_processor`` returns it, and pyobs's request span hands itself straight to its
    ``on_end``. This skips the fan-out to every processor and the two hooks that this
    processor leaves empty. When another processor is added, the listeners
    (``on_processors_changed``) hear it, and every span takes the SDK's path again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pyobs_processors: list[SpanProcessor] = []
        self._listeners: list[Any] = []
        super().__init__(*args, **kwargs)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        """The SDK's method; then the listeners learn that the processors changed."""
        super().add_span_processor(span_processor)
        self.pyobs_processors.append(span_processor)
        for listener in list(self._listeners):
            listener()

    def on_processors_changed(self, listener: Any) -> None:
        """Call ``listener()`` whenever a span processor is added."""
        self._listeners.append(listener)

    def sole_processor(self) -> CountingBatchSpanProcessor | None:
        """pyobs's batch processor when it is the provider's only processor, else None."""
        if len(self.pyobs_processors) != 1:
            return None
        processor = self.pyobs_processors[0]
        return processor if type(processor) is CountingBatchSpanProcessor else None


def batch_processor(exporter: SpanExporter) -> CountingBatchSpanProcessor:
    """The processor pyobs puts in front of an OTLP (or plug-in) exporter."""
    return CountingBatchSpanProcessor(exporter)
