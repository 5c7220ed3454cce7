"""Celery: one trace from the enqueuing request to the worker, task metrics, correlated logs.

``pyobs.celery.instrument(app)`` (docs/celery.md) connects receivers to Celery's public
signals, once per process:

- publish (``before_task_publish``/``after_task_publish``, in the process that enqueues):
  a PRODUCER span ``send <queue>``, child of the current span (the HTTP request's), whose
  context goes into the task headers with the configured propagators, plus the publish time
  (``pyobs_sent_at``); ``messaging_client_sent_messages_total`` and the publish duration;
- run (``task_prerun``/``task_failure``/``task_retry``/``task_postrun``, in the pool
  process): a CONSUMER span ``process <queue>``, child of the producer's, current while the
  task runs (so every log record carries its ``trace.id`` and ``span.id``, plus
  ``labels.celery_task_id``); the consumed count, queue wait, active tasks, duration and
  outcome by task name;
- the worker (``setup_logging``, ``worker_init``, ``worker_process_init``,
  ``worker_process_shutdown``): ECS JSON logs instead of Celery's own format, a warning when
  a pool's counts cannot add up, each pool process's spans flushed when it ends.

With OpenTelemetry's own Celery instrumentation active, pyobs adds no span and injects no
context (OTel's spans carry the trace); metrics and log fields are pyobs's either way.
Every receiver is failsafe: a fault inside pyobs is counted
(``pyobs_internal_errors_total{component="messaging"}``), logged at a limited rate, and never
fails the task or changes its result.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

from opentelemetry import trace

from pyobs import _context, _integration, _messaging, _state

SYSTEM = "celery"
MINIMUM_VERSION = "5.3"
MAX_PENDING = 10_000  # publishes awaiting after_task_publish, and tasks running per process
UNCONFIRMED = "unconfirmed"  # error_type of a publish whose after_task_publish never came

_log = logging.getLogger("pyobs")
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_new_lock_after_fork)
_apps: list[Any] = []  # the instrumented apps (their registered task names bound the label)
_connected: list[bool] = []
_logging_connected: list[bool] = []


def instrument(app: Any, *, logging_setup: bool = True, **options: Any) -> None:
    """Instrument Celery for ``app``: spans, metrics and log fields for every task.

    Idempotent; ``PYOBS_DISABLED=true`` makes it a no-op. ``logging_setup=False`` leaves the
    worker's logging to Celery (its own format, no ECS fields). The keyword options are
    those of ``pyobs.setup()``.
    """
    config = _state.ensure_setup("celery", **options)
    if config.disabled:
        return
    _check_version()
    with _lock:
        if _integration.instrumented(app):
            return
        _integration.mark(app)
        _apps.append(app)
        connect_logging = logging_setup and not _logging_connected
        if connect_logging:
            _logging_connected.append(True)
        connect = not _connected
        if connect:
            _connected.append(True)
    from celery import signals

    if connect_logging:
        signals.setup_logging.connect(_setup_logging, weak=False)
    if not connect:
        return
    _messaging.install_log_fields()

    # Strong references (weak=False), as OpenTelemetry's instrumentation connects its own.
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.after_task_publish.connect(_after_publish, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_failure.connect(_failure, weak=False)
    signals.task_retry.connect(_retry, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
    signals.worker_init.connect(_worker_init, weak=False)
    signals.worker_process_init.connect(_process_init, weak=False)
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False)


def _check_version() -> None:
    from importlib import metadata

    try:
        found = metadata.version("celery")
    except metadata.PackageNotFoundError:
        return
    if _integration.release(found) < _integration.release(MINIMUM_VERSION):
        raise _integration.UnsupportedFrameworkVersion(
            f"pyobs.celery needs celery >= {MINIMUM_VERSION}, found {found}: upgrade it "
            '(pip install "pyobs-kit[celery]" installs a supported version)'
        )


# --- interop with OpenTelemetry's Celery instrumentation ----------------------------------
_otel: list[Any] = []


def otel_active() -> bool:
    """True when OpenTelemetry's own Celery instrumentation is on in this process."""
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    if module is None:
        return False
    if not _otel:
        _otel.append(module.CeleryInstrumentor())  # a singleton (BaseInstrumentor)
    return bool(_otel[0].is_instrumented_by_opentelemetry)


# --- labels ------------------------------------------------------------------------------
_labels: dict[str, str] = {}  # registered task names already seen (bounded by the apps)


def task_label(name: str | None) -> str:
    """The task name when an instrumented app registered it, else ``<unregistered>``."""
    if name is None:
        return _messaging.UNREGISTERED
    found = _labels.get(name)
    if found is not None:
        return found
    for app in _apps:
        try:
            if name in app.tasks:
                _labels[name] = name
                return name
        except Exception:  # noqa: BLE001 - an app that cannot list its tasks yet
            continue
    return _messaging.UNREGISTERED


def _sampled_trace_id(span: Any) -> str | None:
    context = span.get_span_context()
    if context.is_valid and context.trace_flags & 1:
        return "%032x" % context.trace_id  # noqa: UP031
    return None


# --- publish -----------------------------------------------------------------------------
class _Publish:
    __slots__ = ("destination", "span", "start")

    def __init__(self, destination: str, span: _messaging.MessageSpan | None) -> None:
        self.destination = destination
        self.span = span
        self.start = time.perf_counter()


_publishing: OrderedDict[str, _Publish] = OrderedDict()


def _task_id(headers: Any, body: Any) -> str | None:
    """The task id: protocol 2 keeps it in the headers, protocol 1 in the body."""
    if isinstance(headers, dict) and headers.get("id"):
        return str(headers["id"])
    if isinstance(body, dict) and body.get("id"):
        return str(body["id"])
    return None


def _before_publish(
    sender: Any = None,
    body: Any = None,
    exchange: Any = None,
    routing_key: Any = None,
    headers: Any = None,
    **_: Any,
) -> None:
    try:
        task_id = _task_id(headers, body)
        if not isinstance(headers, dict) or task_id is None:
            return
        destination = _messaging.get_metrics().destination(routing_key or exchange or "")
        _messaging.stamp_sent_at(headers)
        entry = _Publish(destination, None)
        lost: list[_Publish] = []
        with _lock:
            _publishing[task_id] = entry
            while len(_publishing) > MAX_PENDING:  # never confirmed: end and count them
                lost.append(_publishing.popitem(last=False)[1])
        for gone in lost:
            _finish_publish(gone, UNCONFIRMED)
    except Exception as exc:  # noqa: BLE001 - the task is sent whatever happens here
        _messaging.report(exc, "celery.before_task_publish")
        return
    if otel_active():
        return  # OTel's PRODUCER span is current and OTel injects its context
    with _messaging.guard("celery.before_task_publish span"):
        # Not made current: a publish that fails never reaches after_task_publish, and the
        # request's own span must stay current. Its context travels in the headers.
        entry.span = _messaging.start_span(
            trace.SpanKind.PRODUCER,
            SYSTEM,
            destination,
            "send",
            message_id=task_id,
            attributes={"celery.task_name": str(sender)[:256]},
            make_current=False,
        )
        _messaging.inject(headers, trace.set_span_in_context(entry.span.span))


def _after_publish(sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
    try:
        task_id = _task_id(headers, body)
        if task_id is None:
            return
        with _lock:
            entry = _publishing.pop(task_id, None)
        if entry is not None:
            _finish_publish(entry, "")
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.after_task_publish")


def _finish_publish(entry: _Publish, error_type: str) -> None:
    duration = time.perf_counter() - entry.start
    span = entry.span
    trace_id = span.trace_id if span is not None else _sampled_trace_id(trace.get_current_span())
    with _messaging.guard("celery.publish metrics"):
        _messaging.get_metrics().record_sent(
            SYSTEM, entry.destination, error_type, duration, trace_id
        )
    if span is not None:
        with _messaging.guard("celery.publish span"):
            _messaging.end_span(span, error_type or None)


# --- run ---------------------------------------------------------------------------------
class _Run:
    __slots__ = (
        "context_token", "counted", "destination", "error", "log_token", "metrics", "span",
        "start", "task", "trace_id",
    )  # fmt: skip

    def __init__(self, task: str) -> None:
        self.task = task
        self.destination = ""
        self.counted = False
        self.error: BaseException | None = None
        self.span: _messaging.MessageSpan | None = None
        self.log_token: Any = None
        self.context_token: Any = None
        self.metrics: Any = None  # the families the run was counted in (ended in the same)
        self.trace_id: str | None = None
        self.start = time.perf_counter()


_running: dict[str, _Run] = {}


def _header(request: Any, name: str) -> Any:
    """A message header as Celery's task request holds it (an attribute, or in ``headers``)."""
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(name)
    return value


_fields: list[Any] = [None, ()]  # (propagator, the header names it reads), learned once


def _carrier(request: Any) -> dict[str, Any]:
    """The headers the configured propagators read, from the task request."""
    from pyobs import tracing

    propagator = tracing.textmap()
    if propagator is not _fields[0]:
        _fields[:] = [propagator, tuple(propagator.fields)]
    found: dict[str, Any] = {}
    for name in _fields[1]:
        value = _header(request, name)
        if isinstance(value, (str, bytes)):
            found[name] = value
    return found


def _queue_wait(request: Any) -> float | None:
    """Seconds from publish (or from the ETA, for a scheduled task) to the start of the run."""
    wait = _messaging.queue_wait(_header(request, _messaging.SENT_AT_HEADER))
    if wait is None:
        return None
    eta = getattr(request, "eta", None)
    if eta:
        from datetime import datetime

        try:
            due = datetime.fromisoformat(str(eta)).timestamp()
        except ValueError:
            return wait
        wait = min(wait, time.time() - due)
    return wait


def _prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        task = task if task is not None else sender
        if task is None or task_id is None:
            return
        request = task.request
        name = task_label(getattr(task, "name", None))
        run = _Run(name)
        metrics = _messaging.get_metrics()
        delivery = getattr(request, "delivery_info", None) or {}
        destination = metrics.destination(
            delivery.get("routing_key") or delivery.get("exchange") or ""
        )
        with _lock:
            _running[str(task_id)] = run
            if len(_running) > MAX_PENDING:  # postrun never came for the oldest
                _running.pop(next(iter(_running)))
        run.metrics = metrics
        metrics.task_started(name)
        run.counted = True
    except Exception as exc:  # noqa: BLE001 - the task runs whatever happens here
        _messaging.report(exc, "celery.task_prerun")
        return
    run.destination = destination
    # Each signal in its own guard (try/except: a context manager costs a microsecond).
    try:
        metrics.record_consumed(SYSTEM, destination)
        wait = _queue_wait(request)
        if wait is not None:
            metrics.record_queue_wait(SYSTEM, destination, wait)
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_prerun metrics")
    parent = None
    try:
        parent = _messaging.extract(_carrier(request))
        if otel_active():
            # OTel's CONSUMER span carries the trace; the exemplar takes the trace it joins.
            if parent is not None:
                run.trace_id = _sampled_trace_id(trace.get_current_span(parent))
        else:
            run.span = _messaging.start_span(
                trace.SpanKind.CONSUMER,
                SYSTEM,
                destination,
                "process",
                parent=parent,
                message_id=str(task_id),
                attributes={"celery.task_name": str(getattr(task, "name", ""))[:256]},
            )
            run.trace_id = run.span.trace_id
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_prerun span")
        if parent is not None and run.span is None:
            # No span of its own: the task's logs still carry the request's trace.
            run.context_token = _attach(parent)
    try:
        run.log_token = _messaging.set_log_fields(
            {"celery_task_id": str(task_id), "celery_task_name": name}
        )
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_prerun logs")


def _failure(sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any) -> None:
    try:
        run = _running.get(str(task_id))
        if run is not None and isinstance(exception, BaseException):
            run.error = exception
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_failure")


def _retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    try:
        run = _running.get(str(getattr(request, "id", None)))
        if run is not None:
            run.error = reason if isinstance(reason, BaseException) else None
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_retry")


_OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}


def _postrun(
    sender: Any = None, task_id: Any = None, task: Any = None, state: Any = None, **_: Any
) -> None:
    try:
        with _lock:
            run = _running.pop(str(task_id), None)
        if run is None:
            return
        duration = time.perf_counter() - run.start
        outcome = _OUTCOMES.get(str(state), str(state).lower()[:32] if state else "unknown")
        error = run.error if outcome != "success" else None
        error_type = ""
        if outcome == "retry":
            error_type = "Retry"
        elif outcome != "success":
            error_type = _messaging.error_type(error) if error is not None else outcome
    except Exception as exc:  # noqa: BLE001 - the task's result is already decided
        _messaging.report(exc, "celery.task_postrun")
        return
    # Each signal in its own guard; the active-tasks gauge goes down first, exactly once.
    try:
        metrics = run.metrics or _messaging.get_metrics()
        if run.counted:
            run.counted = False
            metrics.task_ended(run.task, outcome, duration, run.trace_id)
        metrics.record_processed(SYSTEM, run.destination, error_type, duration, run.trace_id)
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.task_postrun metrics")
    if run.log_token is not None:
        try:
            _messaging.reset_log_fields(run.log_token)
        except Exception as exc:  # noqa: BLE001
            _messaging.report(exc, "celery.task_postrun logs")
    if run.context_token is not None:
        try:
            _context.detach(run.context_token)
        except Exception as exc:  # noqa: BLE001
            _messaging.report(exc, "celery.task_postrun context")
    if run.span is not None:
        try:
            failure: BaseException | str | None = error if error is not None else error_type
            _messaging.end_span(run.span, "Retry" if outcome == "retry" else failure or None)
        except Exception as exc:  # noqa: BLE001
            _messaging.report(exc, "celery.task_postrun span")


def _attach(context: Any) -> Any:
    """Make ``context`` current; the token for ``_context.detach``."""
    from opentelemetry import context as otel_context

    return otel_context.attach(context)


# --- the worker --------------------------------------------------------------------------
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery's own logging setup is replaced by pyobs's (CONTRACT §5's coexistence rule).

    A receiver of ``setup_logging`` makes Celery skip its own configuration (and its
    hijacking of the root logger). When the application configured logging, it is left as
    it is; otherwise pyobs's JSON handler writes every record, at the level ``celery -l``
    names unless ``PYOBS_LOG_LEVEL`` is set.
    """
    try:
        from pyobs import logs

        config = _state.ensure_setup()
        if config.disabled or config.log_handler == "never" or logs.app_configured():
            return
        if logs.handler_placement() == "last_resort":
            # Celery's loggers carry NullHandlers, so a handler of last resort never sees
            # their records: on the root, where Celery's own handler would have been.
            config = _state.setup(log_handler="always")
        if config.log_level is None and loglevel:
            logging.getLogger().setLevel(loglevel)
    except Exception as exc:  # noqa: BLE001 - the worker starts whatever happens here
        _messaging.report(exc, "celery.setup_logging")


def _worker_init(sender: Any = None, **_: Any) -> None:
    """In the worker's main process: say so when a pool's counts cannot add up."""
    try:
        from pyobs import exposition

        pool = str(getattr(sender, "pool_cls", "") or "")
        forks = not any(kind in pool.lower() for kind in ("solo", "thread", "gevent", "eventlet"))
        concurrency = getattr(sender, "concurrency", 1) or 1
        if forks and concurrency > 1 and not exposition.file_backed():
            _log.warning(
                "pyobs: this Celery worker runs %s pool processes, but PROMETHEUS_MULTIPROC_DIR "
                "is not set: each process counts only its own tasks, and the metrics page "
                "shows none of them. Fix: set PROMETHEUS_MULTIPROC_DIR to an empty directory "
                "in the environment the worker starts with (docs/celery.md).",
                concurrency,
            )
    except Exception as exc:  # noqa: BLE001
        _messaging.report(exc, "celery.worker_init")


def _process_init(**_: Any) -> None:
    """In each new pool process: sample its process metrics (as gunicorn's post_fork)."""
    with _messaging.guard("celery.worker_process_init"):
        from pyobs import exposition

        exposition.start_process_sampler()


def _process_shutdown(**_: Any) -> None:
    """A pool process ends: export its queued spans within the export timeout."""
    with _messaging.guard("celery.worker_process_shutdown"):
        from pyobs import _spans

        _spans.flush_all()
        _log.debug("pyobs: pool process %s flushed its spans", os.getpid())
