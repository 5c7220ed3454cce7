"""Kafka through confluent-kafka: one trace from producer to consumer, message metrics, logs.

``instrument_producer(producer)`` and ``instrument_consumer(consumer)`` return wrappers
(confluent-kafka's ``Producer`` and ``Consumer`` are C types: their methods cannot be patched
in place, so pyobs wraps the object, as OpenTelemetry's confluent-kafka instrumentation does).
Everything not listed here passes straight through to the wrapped client.

- ``produce``: a PRODUCER span ``send <topic>`` under the current span (the request's SERVER
  span inside a request), its context written into the message headers (the app's own
  headers kept), and the delivery report counted: ``messaging_client_sent_messages_total``
  and the body size when the broker acknowledged, with the error type when it did not.
- ``poll``/``consume``: every message received counted, with its body size.
- ``process(message)`` (a context manager, also ``consumer.process``): the CONSUMER span
  ``process <topic>``, a child of the producer's span from the headers, current while the
  block runs (logs carry its trace id and the topic, partition and offset), its duration in
  ``messaging_process_duration_seconds`` and the time the message waited in the topic.

A fault inside pyobs is counted in ``pyobs_internal_errors_total{component="messaging"}``,
logged at a limited rate, and the message goes out (or is handed over) as the app made it.
docs/kafka.md has the whole story.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace

from pyobs import _context, _messaging, _state

SYSTEM = "kafka"
MINIMUM_VERSION = "2.0"  # confluent-kafka; tested on 2.16
MARK = "_pyobs_kafka"
# produce()'s parameters after the topic, in the order the C function takes them.
PRODUCE_ARGS = ("value", "key", "partition", "callback", "on_delivery", "timestamp", "headers")
# OpenTelemetry's confluent-kafka instrumentation (its proxies and its patched classes).
OTEL_MODULE = "opentelemetry.instrumentation.confluent_kafka"
PARTITION_EOF = -191  # KafkaError._PARTITION_EOF: an event, not a message nor a failure

__all__ = [
    "InstrumentedConsumer",
    "InstrumentedProducer",
    "consumer",
    "instrument_consumer",
    "instrument_producer",
    "process",
    "producer",
]


def _check_version() -> None:
    from importlib import metadata

    from pyobs._integration import UnsupportedFrameworkVersion, release

    try:
        found = metadata.version("confluent-kafka")
    except metadata.PackageNotFoundError:
        return
    if release(found) < release(MINIMUM_VERSION):
        raise UnsupportedFrameworkVersion(
            f"pyobs.kafka needs confluent-kafka >= {MINIMUM_VERSION}, found {found}: upgrade "
            'it (pip install "pyobs-kit[kafka]" installs a supported version)'
        )


def _begin(client: Any, options: dict[str, Any]) -> bool:
    """setup(), the version check and log fields; False when pyobs is disabled."""
    config = _state.ensure_setup("kafka", **options)
    if config.disabled:
        return False
    _check_version()
    _messaging.install_log_fields()
    return True


def _otel_wrapped(client: Any) -> bool:
    """True when OpenTelemetry's confluent-kafka instrumentation already traces ``client``."""
    return any(cls.__module__.startswith(OTEL_MODULE) for cls in type(client).__mro__)


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    try:
        return len(value)
    except TypeError:
        return 0


def _foreign_span(kind: trace.SpanKind) -> bool:
    """True when the current span is another instrumentation's span of this kind."""
    current = _context.current_span()
    return bool(
        current is not _context.INVALID_SPAN
        and current.is_recording()
        and getattr(current, "kind", None) is kind
    )


# --- producer ----------------------------------------------------------------------------
class InstrumentedProducer:
    """A confluent-kafka Producer that traces and counts what it produces.

    ``wrapped`` is the producer it wraps; every attribute pyobs does not handle is the
    wrapped producer's.
    """

    def __init__(self, wrapped: Any, on_delivery: Callable[..., Any] | None = None) -> None:
        self.wrapped = wrapped
        self._default_delivery = on_delivery
        self._only_errors = False
        # OTel's instrumentation starts its own PRODUCER span and writes the headers itself.
        self._otel = _otel_wrapped(wrapped)
        setattr(self, MARK, True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __len__(self) -> int:
        return len(self.wrapped)

    def __enter__(self) -> InstrumentedProducer:
        self.wrapped.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.wrapped.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<pyobs.kafka.InstrumentedProducer of {self.wrapped!r}>"

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        """``Producer.produce`` with a PRODUCER span, trace headers and a counted delivery."""
        try:
            prepared = self._prepare(topic, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the message goes out as the app made it
            _messaging.report(exc, "kafka.produce")
            prepared = None
        if prepared is None:
            return self.wrapped.produce(topic, *args, **kwargs)
        call, span = prepared
        try:
            result = self.wrapped.produce(topic, **call)
        except BaseException as exc:
            self._failed(topic, span, exc)
            raise
        if span is not None:
            with _messaging.guard("kafka.produce"):
                _messaging.end_span(span)
        return result

    def _prepare(
        self, topic: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], _messaging.MessageSpan | None] | None:
        """The keyword arguments to produce with and the PRODUCER span (None: not ours).

        None when the arguments do not bind: produce() itself then tells the app why.
        """
        if len(args) > len(PRODUCE_ARGS) or any(n in kwargs for n in PRODUCE_ARGS[: len(args)]):
            return None
        call = dict(zip(PRODUCE_ARGS, args, strict=False))
        call.update(kwargs)
        user_callback = call.pop("on_delivery", None) or call.pop("callback", None)
        call.pop("callback", None)
        if user_callback is None:
            user_callback = self._default_delivery
        destination = _messaging.get_metrics().destination(topic)
        # Each part on its own: a fault in one (reported) leaves the message as the app made
        # it and the others working.
        span = None
        if not (self._otel or _foreign_span(trace.SpanKind.PRODUCER)):
            with _messaging.guard("kafka.produce"):
                span = _producer_span(topic, call)
        if not self._otel:
            with _messaging.guard("kafka.produce"):
                call["headers"] = _with_context(call.get("headers"), span)
        trace_id = span.trace_id if span is not None else _current_trace_id()
        call["on_delivery"] = _DeliveryReport(
            destination, user_callback, trace_id, self._only_errors
        )
        return call, span

    def _failed(self, topic: str, span: _messaging.MessageSpan | None, exc: BaseException) -> None:
        """produce() raised (a full queue, an unknown topic): counted, the span ends failed."""
        with _messaging.guard("kafka.produce"):
            metrics = _messaging.get_metrics()
            metrics.record_sent(
                SYSTEM, metrics.destination(topic), _messaging.error_type(exc), None
            )
        if span is not None:
            with _messaging.guard("kafka.produce"):
                _messaging.end_span(span, exc)


def _producer_span(topic: str, call: Mapping[str, Any]) -> _messaging.MessageSpan:
    """Start the PRODUCER span ``send <topic>`` under the current span."""
    attributes: dict[str, Any] = {"messaging.message.body.size": _size(call.get("value"))}
    partition = call.get("partition")
    if isinstance(partition, int) and partition >= 0:
        attributes["messaging.destination.partition.id"] = str(partition)
    # Not made current: its context only travels in the headers.
    return _messaging.start_span(
        trace.SpanKind.PRODUCER,
        SYSTEM,
        str(topic),
        "send",
        attributes=attributes,
        make_current=False,
    )


def _current_trace_id() -> str | None:
    context = _context.current_span().get_span_context()
    if context.is_valid and context.trace_flags & 1:
        return format(context.trace_id, "032x")
    return None


def _with_context(headers: Any, span: _messaging.MessageSpan | None) -> Any:
    """The app's headers plus the trace context (``span``'s, else the current one), as a new
    object of the same shape.

    The app's own object is never changed; a propagation header the app (or another
    instrumentation) already set is kept as it is, and nothing is added then.
    """
    carrier: dict[str, str] = {}
    # On top of the current context, so that its baggage travels too.
    context = trace.set_span_in_context(span.span, _context.current()) if span else None
    _messaging.inject(carrier, context)
    if not carrier:
        return headers
    if headers is None:
        return list(carrier.items())
    if isinstance(headers, Mapping):
        if any(name in headers for name in carrier):
            return headers
        merged = dict(headers)
        merged.update(carrier)
        return merged
    items = list(headers)
    present = {item[0] for item in items}
    if any(name in present for name in carrier):
        return headers
    return items + list(carrier.items())


class _DeliveryReport:
    """The delivery callback pyobs passes: counts the outcome, then calls the app's."""

    __slots__ = ("callback", "destination", "only_errors", "started", "trace_id")

    def __init__(
        self,
        destination: str,
        callback: Callable[..., Any] | None,
        trace_id: str | None,
        only_errors: bool,
    ) -> None:
        self.destination = destination
        self.callback = callback
        self.trace_id = trace_id
        self.only_errors = only_errors
        self.started = time.perf_counter()

    def __call__(self, err: Any, msg: Any) -> None:
        with _messaging.guard("kafka.delivery"):
            duration = time.perf_counter() - self.started
            metrics = _messaging.get_metrics()
            if err is None:
                metrics.record_sent(SYSTEM, self.destination, "", duration, self.trace_id)
                metrics.record_body_size(SYSTEM, self.destination, "send", _size(msg.value()))
            else:
                metrics.record_sent(
                    SYSTEM, self.destination, _kafka_error(err), duration, self.trace_id
                )
        if self.callback is not None and (err is not None or not self.only_errors):
            self.callback(err, msg)


def _kafka_error(err: Any) -> str:
    """The error_type label of a KafkaError: its name (``_MSG_TIMED_OUT``, ``UNKNOWN...``)."""
    try:
        return str(err.name())
    except Exception:  # noqa: BLE001 - not a KafkaError after all
        return type(err).__qualname__


def instrument_producer(
    producer: Any, *, on_delivery: Callable[..., Any] | None = None, **options: Any
) -> Any:
    """Wrap a confluent-kafka Producer; returns the producer to use from now on.

    ``on_delivery``: the delivery callback set in the producer's configuration, if any
    (pyobs passes its own per-message callback, which librdkafka prefers to the configured
    one, and calls this one from it). ``producer(config)`` reads it from the config itself.
    Wrapping twice returns the same wrapper; with ``PYOBS_DISABLED`` the producer itself.
    """
    if getattr(producer, MARK, False):
        return producer
    if not _begin(producer, options):
        return producer
    return InstrumentedProducer(producer, on_delivery)


def producer(config: Mapping[str, Any], **options: Any) -> Any:
    """Make a confluent-kafka Producer from ``config`` and instrument it.

    A delivery callback in the config (``on_delivery``) keeps being called as before, and
    ``delivery.report.only.error`` keeps its meaning for the app's callback while pyobs still
    counts the acknowledged messages.
    """
    import confluent_kafka

    if _state.ensure_setup(**options).disabled:
        return confluent_kafka.Producer(dict(config))
    conf = dict(config)
    callback = conf.pop("on_delivery", None)
    only_errors = str(conf.get("delivery.report.only.error", "false")).lower() in {"true", "1"}
    if only_errors:
        conf["delivery.report.only.error"] = False
    made = confluent_kafka.Producer(conf)
    wrapped = instrument_producer(made, on_delivery=callback)
    wrapped._only_errors = only_errors
    return wrapped


# --- consumer ----------------------------------------------------------------------------
class InstrumentedConsumer:
    """A confluent-kafka Consumer that counts what it receives; ``process`` traces a message.

    ``wrapped`` is the consumer it wraps; every attribute pyobs does not handle is the
    wrapped consumer's.
    """

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        setattr(self, MARK, True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __enter__(self) -> InstrumentedConsumer:
        self.wrapped.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.wrapped.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<pyobs.kafka.InstrumentedConsumer of {self.wrapped!r}>"

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        """``Consumer.poll``; the message (or failure) it returns is counted."""
        message = self.wrapped.poll(*args, **kwargs)
        if message is not None:
            _received(message)
        return message

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        """``Consumer.consume``; every message (or failure) it returns is counted."""
        messages = self.wrapped.consume(*args, **kwargs)
        for message in messages:
            _received(message)
        return messages

    @staticmethod
    def process(message: Any) -> Any:
        """``pyobs.kafka.process(message)``: the block that processes one message."""
        return process(message)


def _received(message: Any) -> None:
    """Count one message (or a failure event) a consumer handed to the app."""
    with _messaging.guard("kafka.consume"):
        err = message.error()
        metrics = _messaging.get_metrics()
        if err is None:
            destination = metrics.destination(message.topic())
            metrics.record_consumed(SYSTEM, destination)
            metrics.record_body_size(SYSTEM, destination, "receive", _size(message.value()))
        elif err.code() != PARTITION_EOF:
            metrics.record_consumed(SYSTEM, metrics.destination(message.topic()), _kafka_error(err))


def _headers(message: Any) -> dict[str, Any]:
    """A message's headers as a mapping (the first value of a repeated key)."""
    found: dict[str, Any] = {}
    for key, value in message.headers() or ():
        found.setdefault(key, value)
    return found


def _queue_wait(message: Any) -> float | None:
    """Seconds since the message's timestamp (producer's or broker's clock), or None."""
    kind, stamp = message.timestamp()
    if kind == 0 or stamp is None or stamp <= 0:  # TIMESTAMP_NOT_AVAILABLE
        return None
    return time.time() - float(stamp) / 1000.0


@contextmanager
def process(message: Any) -> Iterator[None]:
    """Mark the processing of one consumed message: ``with pyobs.kafka.process(message): ...``.

    Inside the block the CONSUMER span ``process <topic>`` is current (a child of the
    producer's span found in the headers, a fresh trace without one) and log records carry
    its trace id and the message's topic, partition and offset. Its duration and outcome go
    to ``messaging_process_duration_seconds``. An exception from the block is recorded and
    raised unchanged. With another instrumentation's CONSUMER span current (OpenTelemetry's
    confluent-kafka instrumentation), that span is used and pyobs adds none.
    """
    state = None
    try:
        state = _start_processing(message)
    except Exception as exc:  # noqa: BLE001 - the app processes its message regardless
        _messaging.report(exc, "kafka.process")
    if state is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        _finish_processing(state, exc)
        raise
    _finish_processing(state, None)


class _Processing:
    __slots__ = ("destination", "log_token", "span", "started", "trace_id")

    def __init__(self) -> None:
        self.destination = ""
        self.span: _messaging.MessageSpan | None = None
        self.log_token: Any = None
        self.started = 0.0
        self.trace_id: str | None = None


def _start_processing(message: Any) -> _Processing | None:
    config = _state.ensure_setup()
    if config.disabled or message is None or message.error() is not None:
        return None
    state = _Processing()
    topic = message.topic()
    metrics = _messaging.get_metrics()
    state.destination = metrics.destination(topic)
    partition, offset = message.partition(), message.offset()
    _messaging.install_log_fields()
    fields: dict[str, Any] = {"messaging_destination_name": topic}
    if partition is not None:
        fields["messaging_destination_partition_id"] = str(partition)
    if offset is not None:
        fields["messaging_kafka_offset"] = offset
    try:
        if not _foreign_span(trace.SpanKind.CONSUMER):
            attributes: dict[str, Any] = {
                "messaging.message.body.size": _size(message.value()),
            }
            if partition is not None:
                attributes["messaging.destination.partition.id"] = str(partition)
            if offset is not None:
                attributes["messaging.kafka.offset"] = offset
            state.span = _messaging.start_span(
                trace.SpanKind.CONSUMER,
                SYSTEM,
                str(topic),
                "process",
                parent=_messaging.extract(_headers(message)),
                attributes=attributes,
            )
            state.trace_id = state.span.trace_id
        else:
            state.trace_id = _current_trace_id()
        state.log_token = _messaging.set_log_fields(fields)
        wait = _queue_wait(message)
        if wait is not None:
            metrics.record_queue_wait(SYSTEM, state.destination, wait)
    except BaseException:
        _end(state, None)
        raise
    state.started = time.perf_counter()
    return state


def _finish_processing(state: _Processing, error: BaseException | None) -> None:
    with _messaging.guard("kafka.process"):
        duration = time.perf_counter() - state.started
        _messaging.get_metrics().record_processed(
            SYSTEM,
            state.destination,
            _messaging.error_type(error) if error is not None else "",
            duration,
            state.trace_id,
        )
    with _messaging.guard("kafka.process"):
        _end(state, error)


def _end(state: _Processing, error: BaseException | None) -> None:
    try:
        if state.log_token is not None:
            _messaging.reset_log_fields(state.log_token)
            state.log_token = None
    finally:
        if state.span is not None:
            _messaging.end_span(state.span, error)


def instrument_consumer(consumer: Any, **options: Any) -> Any:
    """Wrap a confluent-kafka Consumer; returns the consumer to use from now on.

    Wrapping twice returns the same wrapper; with ``PYOBS_DISABLED`` the consumer itself.
    """
    if getattr(consumer, MARK, False):
        return consumer
    if not _begin(consumer, options):
        return consumer
    return InstrumentedConsumer(consumer)


def consumer(config: Mapping[str, Any], **options: Any) -> Any:
    """Make a confluent-kafka Consumer from ``config`` and instrument it."""
    import confluent_kafka

    return instrument_consumer(confluent_kafka.Consumer(dict(config)), **options)
