"""The messaging core shared by the Celery and Kafka integrations (docs/celery.md, issue 20).

Framework-neutral, plain values in and out, like the HTTP request observer:

- ``MessagingMetrics``: every messaging metric family (names, types, labels, buckets), made
  once per registry. OTel's messaging semantic-convention metrics as Prometheus spells them,
  with the same labels for every system, plus ``pyobs_*`` families for what OTel has no
  metric for (queue wait, Celery task outcome, duration by task and active tasks);
- ``inject()``/``extract()``: trace context in message headers with the configured
  propagators (``OTEL_PROPAGATORS``), the same ones the HTTP path reads;
- ``start_span()``/``end_span()``: PRODUCER and CONSUMER spans named and attributed after
  OTel's messaging conventions (``send <destination>``, ``process <destination>``);
- ``message_log_fields()``: fields every log record carries while a message is processed
  (the task id), added through the log record factory so any formatter sees them;
- ``guard()``/``report()``: a fault in messaging code is counted as
  ``pyobs_internal_errors_total{component="messaging"}``, logged at a limited rate, and
  never reaches the task or the message.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from pyobs import _context, _errors, _interop, _multiproc

COMPONENT = "messaging"  # pyobs_internal_errors_total{component}

# --- names -------------------------------------------------------------------------------
SYSTEM = "messaging_system"  # "celery" / "kafka"
DESTINATION = "messaging_destination_name"  # the Celery queue / the Kafka topic
OPERATION = "messaging_operation_name"  # "send", "receive", "process", ...
OPERATION_TYPE = "messaging_operation_type"  # OTel's: create, send, receive, process, settle
ERROR = "error_type"  # "" when the operation succeeded
TASK = "celery_task_name"  # registered task names only (TaskNames)
OUTCOME = "outcome"  # success / failure / retry

SHARED = (SYSTEM, DESTINATION, ERROR)

# OTel's advice for messaging durations (the HTTP one), extended for long-running tasks.
PROCESS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
OPERATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
BODY_SIZE_BUCKETS = (0, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)

UNREGISTERED = "<unregistered>"  # a task name the process has not registered
OVERFLOW = "<overflow>"  # a destination beyond the cap (PYOBS_MAX_ROUTES)

# The header pyobs adds at publish: the sender's wall clock (seconds since the epoch, as a
# decimal string so that every broker and serializer keeps it as it is).
SENT_AT_HEADER = "pyobs_sent_at"

_log = logging.getLogger("pyobs")


# --- errors ------------------------------------------------------------------------------
def report(exc: BaseException, where: str) -> None:
    """Count a fault of pyobs's messaging code and log it at a limited rate; never raises."""
    _errors.report(COMPONENT, exc, where)


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Run a block of pyobs's own messaging code; an Exception in it is reported, not raised."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - pyobs never fails the task or the message
        report(exc, where)


# --- metrics -----------------------------------------------------------------------------
class MessagingMetrics:
    """The messaging families (docs/celery.md, "Metrics"), made once per registry."""

    def __init__(self, registry: Any, prefix: str = "", max_values: int = 500) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.prefix = prefix
        self.max_values = max_values
        p = prefix
        self.sent = Counter(
            p + "messaging_client_sent_messages",
            "Messages a producer sent (Celery: tasks published), by destination and error.",
            list(SHARED),
            registry=registry,
        )
        self.consumed = Counter(
            p + "messaging_client_consumed_messages",
            "Messages a consumer received and handed to processing (Celery: tasks started).",
            list(SHARED),
            registry=registry,
        )
        self.operation_duration = Histogram(
            p + "messaging_client_operation_duration_seconds",
            "Duration of a messaging client operation (send: publishing one message).",
            [SYSTEM, OPERATION, DESTINATION, ERROR],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        self.process_duration = Histogram(
            p + "messaging_process_duration_seconds",
            "Duration of processing one message (Celery: running one task).",
            list(SHARED),
            buckets=PROCESS_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            p + "pyobs_messaging_queue_wait_seconds",
            "Time a message waited between publish and the start of its processing "
            "(sender and consumer clocks; negative skew counts as 0).",
            [SYSTEM, DESTINATION],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.body_size = Histogram(
            p + "pyobs_messaging_message_body_size_bytes",
            "Size of message bodies sent or received (where the client exposes it).",
            [SYSTEM, DESTINATION, OPERATION_TYPE],
            buckets=BODY_SIZE_BUCKETS,
            registry=registry,
        )
        self.tasks = Counter(
            p + "pyobs_celery_tasks",
            "Celery task runs that ended, by task name and outcome (success, failure, retry).",
            [TASK, OUTCOME],
            registry=registry,
        )
        self.task_duration = Histogram(
            p + "pyobs_celery_task_duration_seconds",
            "Duration of Celery task runs, by task name and outcome.",
            [TASK, OUTCOME],
            buckets=PROCESS_BUCKETS,
            registry=registry,
        )
        self.active_tasks = Gauge(
            p + "pyobs_celery_active_tasks",
            "Celery tasks running now, by task name (every pool process of every worker).",
            [TASK],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._destinations: set[str] = set()
        # Each histogram's label names, for its multiprocess exemplar slots.
        self._label_names: dict[int, tuple[str, ...]] = {
            id(self.operation_duration): (SYSTEM, OPERATION, DESTINATION, ERROR),
            id(self.process_duration): SHARED,
            id(self.task_duration): (TASK, OUTCOME),
        }

    def collectors(self) -> list[Any]:
        """Every family this instance registered (for the exposition's de-duplication)."""
        return [
            self.sent,
            self.consumed,
            self.operation_duration,
            self.process_duration,
            self.queue_wait,
            self.body_size,
            self.tasks,
            self.task_duration,
            self.active_tasks,
        ]

    def destination(self, name: str | None) -> str:
        """The destination label: at most ``max_values`` distinct ones, then ``<overflow>``
        (counted in ``pyobs_cardinality_overflow_total``)."""
        name = "" if name is None else str(name)[:128]
        if name in self._destinations:
            return name
        with self._lock:
            if name in self._destinations:
                return name
            if len(self._destinations) < self.max_values:
                self._destinations.add(name)
                return name
        from pyobs.metrics import get_metrics

        get_metrics().cardinality_overflow.inc()  # as for routes (CONTRACT §3)
        return OVERFLOW

    def _child(self, metric: Any, labels: tuple[str, ...], buckets: Any = None) -> Any:
        """A bound child, cached; a histogram's keeps its exemplars in multiprocess mode."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if buckets is not None and _multiproc.file_backed():
                name = metric.describe()[0].name
                names = self._label_names[id(metric)]
                found = _multiproc.ExemplarHistogram(found, name, names, labels, buckets)
            if len(self._children) < 20_000:
                self._children[key] = found
        return found

    @staticmethod
    def _observe(child: Any, value: float, trace_id: str | None) -> None:
        child.observe(value, {"trace_id": trace_id} if trace_id else None)

    def record_sent(
        self,
        system: str,
        destination: str,
        error_type: str,
        duration: float | None,
        trace_id: str | None = None,
        operation: str = "send",
    ) -> None:
        """One message sent (or failed to send): the counter and the send duration."""
        self._child(self.sent, (system, destination, error_type)).inc()
        if duration is not None:
            child = self._child(
                self.operation_duration,
                (system, operation, destination, error_type),
                OPERATION_BUCKETS,
            )
            self._observe(child, duration, trace_id)

    def record_consumed(self, system: str, destination: str, error_type: str = "") -> None:
        """One message received and handed to processing."""
        self._child(self.consumed, (system, destination, error_type)).inc()

    def record_processed(
        self, system: str, destination: str, error_type: str, duration: float, trace_id: str | None
    ) -> None:
        """One message processed: its duration, with a trace_id exemplar when sampled."""
        child = self._child(
            self.process_duration, (system, destination, error_type), PROCESS_BUCKETS
        )
        self._observe(child, duration, trace_id)

    def record_queue_wait(self, system: str, destination: str, seconds: float) -> None:
        """Time between publish and the start of processing (clamped at 0 for clock skew)."""
        self._child(self.queue_wait, (system, destination)).observe(max(0.0, seconds))

    def record_body_size(
        self, system: str, destination: str, operation_type: str, size: int
    ) -> None:
        """The size of one message body sent (``send``) or received (``receive``)."""
        self._child(self.body_size, (system, destination, operation_type)).observe(size)

    def task_started(self, task: str) -> None:
        """pyobs_celery_active_tasks{task} + 1; pair it with exactly one ``task_ended``."""
        self._child(self.active_tasks, (task,)).inc()

    def task_ended(
        self, task: str, outcome: str, duration: float | None, trace_id: str | None
    ) -> None:
        """A task run ended: active - 1 first (always), then its outcome and duration."""
        self._child(self.active_tasks, (task,)).dec()
        self._child(self.tasks, (task, outcome)).inc()
        if duration is not None:
            child = self._child(self.task_duration, (task, outcome), PROCESS_BUCKETS)
            self._observe(child, duration, trace_id)

    def unregister(self) -> None:
        """Remove every family from the registry (tests and re-setup)."""
        for collector in self.collectors():
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass


_metrics: MessagingMetrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> MessagingMetrics:
    """The process-wide messaging families, on the registry and prefix pyobs's config names."""
    global _metrics, _built_for
    from pyobs import _state

    found = _metrics
    if found is not None and _state._config is _built_for:  # the per-message path
        return found
    config = _state.ensure_setup()
    from prometheus_client import REGISTRY

    registry = config.metrics_registry if config.metrics_registry is not None else REGISTRY
    with _metrics_lock:
        found = _metrics
        if found is None or found.registry is not registry or found.prefix != config.metrics_prefix:
            if found is not None:
                found.unregister()
            found = _metrics = MessagingMetrics(registry, config.metrics_prefix, config.max_routes)
        found.max_values = config.max_routes
        _built_for = config
        return found


_built_for: Any = None  # the pyobs config the families were checked against


def _new_locks_after_fork() -> None:
    """A thread of the parent may have held a lock at the fork: the child gets fresh ones."""
    global _metrics_lock
    _metrics_lock = threading.Lock()
    if _metrics is not None:
        _metrics._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def current_metrics() -> MessagingMetrics | None:
    """The families if they were made in this process, else None."""
    return _metrics


def _own_collectors() -> list[Any]:
    found = _metrics
    return found.collectors() if found is not None else []


# On a page shared with OTel's Prometheus exporter, these families are pyobs's (they win).
_interop.register_own(_own_collectors)


def _reset() -> None:
    """Forget the families (tests)."""
    global _metrics
    with _metrics_lock:
        if _metrics is not None:
            _metrics.unregister()
        _metrics = None


class TaskNames:
    """A bounded label for task names: names registered in the app, a placeholder otherwise.

    Like routes versus raw paths: a name the process does not know (``send_task`` with a
    typo, a hostile message) never becomes a new series.
    """

    def __init__(self, registered: Mapping[str, Any]) -> None:
        self._registered = registered

    def label(self, name: str | None) -> str:
        """``name`` when the app registered it, ``<unregistered>`` otherwise."""
        if name is not None and name in self._registered:
            return name
        return UNREGISTERED


# --- context propagation -----------------------------------------------------------------
class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation headers from a mapping whose values are str or bytes."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes):
            return [value.decode("utf-8", "replace")]
        if isinstance(value, str):
            return [value]
        return None  # not a header a propagator wrote

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [str(key) for key in carrier]


_GETTER = _HeaderGetter()


def inject(headers: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write the current (or ``context``'s) trace context into ``headers``.

    The configured propagators (``OTEL_PROPAGATORS``; default W3C ``traceparent``,
    ``tracestate`` and ``baggage``) write their own header names, as over HTTP.
    """
    from pyobs import tracing

    tracing.textmap().inject(headers, context)


def extract(headers: Mapping[str, Any]) -> Context | None:
    """The context the configured propagators read from ``headers``; None without one."""
    from pyobs import tracing

    context = tracing.textmap().extract(headers, getter=_GETTER)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None if context == Context() else context  # baggage alone is kept
    return context


def stamp_sent_at(headers: MutableMapping[str, Any], now: float | None = None) -> None:
    """Add the publish time (this process's wall clock) for the consumer's queue-wait metric."""
    headers[SENT_AT_HEADER] = repr(time.time() if now is None else now)


def queue_wait(sent_at: Any, now: float | None = None) -> float | None:
    """Seconds since the publish time in a header; None when absent or unreadable.

    Sender and consumer clocks differ: a negative wait (the consumer's clock behind) is
    clamped to 0 by the histogram, never dropped, so the count stays exact.
    """
    if sent_at is None:
        return None
    if isinstance(sent_at, bytes):
        sent_at = sent_at.decode("ascii", "replace")
    try:
        value = float(sent_at)
    except (TypeError, ValueError):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return (time.time() if now is None else now) - value


# --- spans -------------------------------------------------------------------------------
@dataclass
class MessageSpan:
    """A PRODUCER or CONSUMER span made current, with what ending it needs."""

    span: Any
    token: Any
    trace_id: str | None  # hex, for exemplars: set when the span is sampled
    ids: tuple[str, str] | None = None  # (trace id, span id) in hex
    ended: bool = field(default=False)


def start_span(
    kind: trace.SpanKind,
    system: str,
    destination: str,
    operation_name: str,
    *,
    parent: Context | None = None,
    message_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    make_current: bool = True,
) -> MessageSpan:
    """Start a PRODUCER (``send``) or CONSUMER (``process``) span and make it current.

    Named ``"{operation_name} {destination}"`` with the messaging attributes of OTel's
    conventions: ``messaging.system``, ``messaging.destination.name``,
    ``messaging.operation.type`` and ``.name``, ``messaging.message.id``. A CONSUMER span's
    parent is ``parent`` (the producer's context from the headers) when there is one.
    ``make_current=False`` starts it without making it current (a PRODUCER span whose
    context only travels in the headers).
    """
    from pyobs import tracing

    operation_type = "send" if kind is trace.SpanKind.PRODUCER else "process"
    attrs: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation_name,
    }
    if message_id:
        attrs["messaging.message.id"] = message_id
    if attributes:
        attrs.update(attributes)
    base = parent if parent is not None else _context.current()
    span = tracing.get_tracer().start_span(
        f"{operation_name} {destination}", context=base, kind=kind, attributes=attrs
    )
    token = _context.attach_span(span, base) if make_current else None
    trace_id, span_id, sampled = tracing.span_ids(span)
    valid = span.get_span_context().is_valid
    return MessageSpan(
        span, token, trace_id if sampled and valid else None, (trace_id, span_id) if valid else None
    )


def end_span(handle: MessageSpan, error: BaseException | str | None = None) -> None:
    """Detach and end the span once; an error sets ``error.type`` and status ERROR."""
    if handle.ended:
        return
    handle.ended = True
    try:
        if error is not None and handle.span.is_recording():
            from opentelemetry.trace import Status, StatusCode

            if isinstance(error, BaseException):
                handle.span.record_exception(error)
                handle.span.set_attribute("error.type", error_type(error))
                handle.span.set_status(Status(StatusCode.ERROR, str(error)[:256]))
            else:
                handle.span.set_attribute("error.type", error)
                handle.span.set_status(Status(StatusCode.ERROR))
    finally:
        try:
            if handle.token is not None:
                _context.detach(handle.token)
        finally:
            handle.span.end()


def error_type(exc: BaseException) -> str:
    """The ``error_type`` label and ``error.type`` attribute: the exception's class name."""
    return type(exc).__qualname__


# --- logs --------------------------------------------------------------------------------
# Fields every log record carries while a message is processed in this context (the task
# id). ECS has no field for a task or message id; by the contract's rule a non-ECS scalar
# goes to labels.<name>, so the record attribute ``celery_task_id`` becomes
# ``labels.celery_task_id`` in pyobs's ECS output.
message_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "pyobs_message_fields", default=None
)
_factory_installed: list[Any] = []


def install_log_fields() -> None:
    """Put ``message_fields`` on every LogRecord made while a message is processed; once.

    Through the log record factory (chained to the one in place), so the fields reach any
    handler and formatter, Celery's own included. Outside a message it costs one
    context-variable read per record.
    """
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = message_fields.get()
        if fields:
            for key, value in fields.items():
                record.__dict__.setdefault(key, value)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed.append(factory)


def set_log_fields(fields: Mapping[str, Any]) -> contextvars.Token[Mapping[str, Any] | None]:
    """Make ``fields`` part of every log record in this context; ``reset_log_fields`` undoes."""
    return message_fields.set(fields)


def reset_log_fields(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    """Undo ``set_log_fields`` (a token from another context is ignored)."""
    try:
        message_fields.reset(token)
    except ValueError:
        message_fields.set(None)
