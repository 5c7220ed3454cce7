"""pyobs.kafka against a real broker (tests/kafka_broker.py): one trace through the topic,
exact message metrics, the app's headers and callbacks kept, malformed context, faults."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import pytest

import pyobs
import pyobs.testing
from tests.conftest import import_or_require
from tests.core_apps import Client, json_lines, sample
from tests.kafka_broker import Broker

import_or_require("confluent_kafka")

import confluent_kafka  # noqa: E402

import pyobs.kafka  # noqa: E402

SENT = "messaging_client_sent_messages_total"
CONSUMED = "messaging_client_consumed_messages_total"
PROCESS = "messaging_process_duration_seconds"
BODY = "pyobs_messaging_message_body_size_bytes"
WAIT = "pyobs_messaging_queue_wait_seconds"
SEND_DURATION = "messaging_client_operation_duration_seconds"
ERRORS = "pyobs_internal_errors_total"


class Recorded:
    """The spans a test finished, and pyobs's internal-error count when it started."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        exporter.clear()
        # pyobs_internal_errors_total lives as long as the process: tests compare to this.
        self.errors_before = internal_errors()

    def get_finished_spans(self) -> Any:
        """The spans ended since the test started."""
        return self.exporter.get_finished_spans()


@pytest.fixture
def spans() -> Recorded:
    """pyobs set up for this test, with an in-memory span exporter."""
    from pyobs.testing import span_exporter

    pyobs.setup(service_name="kafka-tests")
    return Recorded(span_exporter())


def kafka_sample(name: str, topic: str, **labels: str) -> float:
    """One Kafka sample of ``topic`` (0 when the series does not exist)."""
    value = sample(name, messaging_system="kafka", messaging_destination_name=topic, **labels)
    return value or 0.0


def internal_errors() -> float:
    """pyobs_internal_errors_total{component="messaging"} now."""
    return sample(ERRORS, component="messaging") or 0.0


def read(broker: Broker, topic: str, count: int, instrument: bool = True) -> tuple[Any, list[Any]]:
    """A consumer of partition 0 of ``topic`` from its start and the first ``count`` messages."""
    raw = confluent_kafka.Consumer(
        broker.config(**{"group.id": topic, "enable.auto.commit": False})
    )
    raw.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    consumer = pyobs.kafka.instrument_consumer(raw) if instrument else raw
    got: list[Any] = []
    for _ in range(count * 30 + 30):  # one-second polls: a deadline, not a speed bound
        if len(got) == count:
            break
        message = consumer.poll(1.0)
        if message is not None:
            assert message.error() is None, message.error()
            got.append(message)
    assert len(got) == count, f"{len(got)} of {count} messages arrived"
    return consumer, got


def flask_app(producer: Any, topic: str) -> Client:
    """A Flask app whose view produces one message per request, with a header of its own."""
    import_or_require("flask")
    from flask import Flask

    import pyobs.flask

    app = Flask("kafka-producer")

    @app.post("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        producer.produce(topic, f"order {order_id}".encode(), headers=[("app-id", b"shop")])
        assert producer.flush(30) == 0
        return "queued"

    pyobs.flask.instrument(app)
    return Client("flask", app)


def test_request_produce_consume_is_one_trace_with_exact_metrics(
    kafka: Broker, spans: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    """SERVER → PRODUCER → CONSUMER in one trace; logs carry it; 3 sent, 3 consumed, bytes."""
    topic = kafka.new_topic("orders")
    producer = pyobs.kafka.producer(kafka.config())
    client = flask_app(producer, topic)
    for order_id in (1, 22, 333):
        assert client.request("POST", f"/orders/{order_id}").status == 200
    consumer, messages = read(kafka, topic, 3)
    worker = logging.getLogger("worker")
    for message in messages:
        with pyobs.kafka.process(message):
            worker.info("processing %s", message.value().decode())
    consumer.close()

    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.name == "POST /orders/<int:order_id>"]
    producers = [s for s in finished if s.name == f"send {topic}"]
    consumers = [s for s in finished if s.name == f"process {topic}"]
    assert (len(servers), len(producers), len(consumers)) == (3, 3, 3)
    kinds = {s.kind.name for s in producers} | {s.kind.name for s in consumers}
    assert kinds == {"PRODUCER", "CONSUMER"}
    lines = {
        line["message"]: line
        for line in json_lines(capsys.readouterr().out)
        if line.get("log.logger") == "worker"
    }
    for server, message in zip(servers, messages, strict=True):
        produced = next(s for s in producers if s.parent.span_id == server.context.span_id)
        processed = next(s for s in consumers if s.parent.span_id == produced.context.span_id)
        trace_id = server.context.trace_id
        assert produced.context.trace_id == processed.context.trace_id == trace_id
        assert produced.attributes["messaging.system"] == "kafka"
        assert processed.attributes["messaging.destination.name"] == topic
        # The app's own header is kept, first, and the producer's context follows it.
        headers = message.headers()
        assert headers[0] == ("app-id", b"shop")
        traceparent = dict(headers)["traceparent"].decode()
        assert traceparent.split("-")[1:3] == [
            f"{trace_id:032x}",
            f"{produced.context.span_id:016x}",
        ]
        line = lines[f"processing {message.value().decode()}"]
        assert line["trace.id"] == f"{trace_id:032x}"
        assert line["span.id"] == f"{processed.context.span_id:016x}"
        assert line["labels.messaging_destination_name"] == topic
        assert line["labels.messaging_kafka_offset"] == str(message.offset())
        assert line["labels.messaging_destination_partition_id"] == "0"

    sizes = sum(len(m.value()) for m in messages)
    assert kafka_sample(SENT, topic, error_type="") == 3
    assert kafka_sample(CONSUMED, topic, error_type="") == 3
    assert kafka_sample(PROCESS + "_count", topic, error_type="") == 3
    assert kafka_sample(WAIT + "_count", topic) == 3
    assert kafka_sample(BODY + "_sum", topic, messaging_operation_type="send") == sizes
    assert kafka_sample(BODY + "_sum", topic, messaging_operation_type="receive") == sizes
    assert (
        kafka_sample(
            SEND_DURATION + "_count", topic, messaging_operation_name="send", error_type=""
        )
        == 3
    )
    # The durations carry trace_id exemplars of these traces (OpenMetrics exposition).
    trace_ids = {f"{s.context.trace_id:032x}" for s in servers}
    for family in (PROCESS, SEND_DURATION):
        exemplars = {
            line.split('trace_id="')[1].split('"')[0]
            for line in openmetrics_page().splitlines()
            if line.startswith(family + "_bucket") and f'="{topic}"' in line and "# {" in line
        }
        assert exemplars and exemplars <= trace_ids, (family, exemplars)
    assert internal_errors() == spans.errors_before


def openmetrics_page() -> str:
    """pyobs's metrics page in OpenMetrics text (the format that carries exemplars)."""
    from pyobs import exposition

    accept = "application/openmetrics-text; version=1.0.0"
    status, _, body = exposition.render(pyobs.setup(), accept, None)
    assert status == 200
    return body.decode()


def test_consumer_outside_process_block_is_counted_but_not_traced(
    kafka: Broker, spans: Recorded
) -> None:
    """Messages polled but not processed in a block are counted; no CONSUMER span is made."""
    topic = kafka.new_topic("plain")
    producer = pyobs.kafka.instrument_producer(confluent_kafka.Producer(kafka.config()))
    for index in range(4):
        producer.produce(topic, value=b"x" * index, key=b"k")
    assert producer.flush(30) == 0
    consumer, messages = read(kafka, topic, 4)
    consumer.close()
    assert [m.value() for m in messages] == [b"", b"x", b"xx", b"xxx"]
    assert kafka_sample(SENT, topic, error_type="") == 4
    assert kafka_sample(CONSUMED, topic, error_type="") == 4
    assert kafka_sample(BODY + "_sum", topic, messaging_operation_type="receive") == 6
    assert kafka_sample(PROCESS + "_count", topic, error_type="") == 0
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count(f"send {topic}") == 4
    assert f"process {topic}" not in names
    # Produced outside any request: each PRODUCER span is the root of its own trace.
    assert all(s.parent is None for s in spans.get_finished_spans())


def test_consumer_failures_are_counted_and_end_of_partition_is_not(
    kafka: Broker, spans: Recorded
) -> None:
    """A failure event from poll() counts with its error; the end-of-partition event does not."""
    missing = f"missing-{kafka.new_topic('x')}"
    config = kafka.config(**{"group.id": missing, "enable.partition.eof": True})
    consumer = pyobs.kafka.instrument_consumer(confluent_kafka.Consumer(config))
    consumer.subscribe([missing])
    failure = None
    for _ in range(30):
        failure = consumer.poll(1.0)
        if failure is not None:
            break
    assert failure is not None and failure.error() is not None
    name = failure.error().name()
    assert kafka_sample(CONSUMED, missing, error_type=name) == 1
    ran = []
    with pyobs.kafka.process(failure):  # not a message: the block runs, nothing is traced
        ran.append(name)
    assert ran == [name]

    empty = kafka.new_topic("empty")
    consumer.unsubscribe()
    consumer.assign([confluent_kafka.TopicPartition(empty, 0, confluent_kafka.OFFSET_BEGINNING)])
    eof = None
    for _ in range(30):
        eof = consumer.poll(1.0)
        if eof is not None:
            break
    consumer.close()
    assert eof is not None and eof.error() is not None
    assert eof.error().code() == confluent_kafka.KafkaError._PARTITION_EOF
    assert kafka_sample(CONSUMED, empty, error_type=eof.error().name()) == 0
    assert kafka_sample(CONSUMED, empty, error_type="") == 0
    assert not [s for s in spans.get_finished_spans() if s.kind.name == "CONSUMER"]


def test_baggage_travels_with_the_message(kafka: Broker, spans: Recorded) -> None:
    """Baggage set by the producing code is current again while the message is processed."""
    from opentelemetry import baggage, context

    topic = kafka.new_topic("baggage")
    producer = pyobs.kafka.producer(kafka.config())
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        producer.produce(topic, b"with baggage")
    finally:
        context.detach(token)
    assert producer.flush(30) == 0
    consumer, (message,) = read(kafka, topic, 1)
    consumer.close()
    assert baggage.get_baggage("tenant") is None
    with pyobs.kafka.process(message):
        seen = baggage.get_baggage("tenant")
    assert seen == "acme"
    assert dict(message.headers())["baggage"] == b"tenant=acme"


def test_malformed_traceparent_starts_a_new_trace(kafka: Broker, spans: Recorded) -> None:
    """A message whose traceparent is garbage is processed in a fresh trace, silently."""
    topic = kafka.new_topic("malformed")
    raw = confluent_kafka.Producer(kafka.config())
    good_parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw.produce(topic, b"bad", headers=[("traceparent", b"00-not-a-trace-!!")])
    raw.produce(topic, b"good", headers=[("traceparent", good_parent.encode())])
    raw.produce(topic, b"binary", headers=[("traceparent", b"\xff\xfe\x00")])
    assert raw.flush(30) == 0
    consumer, messages = read(kafka, topic, 3)
    done = []
    for message in messages:
        with pyobs.kafka.process(message):
            done.append(message.value())
    consumer.close()
    assert done == [b"bad", b"good", b"binary"]
    by_body = {}
    for span in spans.get_finished_spans():
        if span.name == f"process {topic}":
            by_body[span.attributes["messaging.kafka.offset"]] = span
    bad, good, binary = (by_body[m.offset()] for m in messages)
    assert bad.parent is None and binary.parent is None
    assert bad.context.trace_id not in {0, good.context.trace_id}
    assert good.parent is not None and good.parent.span_id == 0xB7AD6B7169203331
    assert good.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert kafka_sample(PROCESS + "_count", topic, error_type="") == 3
    assert internal_errors() == spans.errors_before


def test_processing_error_is_recorded_and_raised_unchanged(kafka: Broker, spans: Recorded) -> None:
    """An exception in the processing block ends the span failed, is counted, and propagates."""
    topic = kafka.new_topic("failing")
    producer = pyobs.kafka.producer(kafka.config())
    producer.produce(topic, b"poison")
    assert producer.flush(30) == 0
    consumer, (message,) = read(kafka, topic, 1)
    consumer.close()
    error = ValueError("cannot parse")
    with pytest.raises(ValueError, match="cannot parse") as raised, pyobs.kafka.process(message):
        raise error
    assert raised.value is error
    (span,) = [s for s in spans.get_finished_spans() if s.name == f"process {topic}"]
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["error.type"] == "ValueError"
    assert kafka_sample(PROCESS + "_count", topic, error_type="ValueError") == 1
    assert kafka_sample(PROCESS + "_count", topic, error_type="") == 0


def test_app_delivery_callbacks_are_kept(kafka: Broker, spans: Recorded) -> None:
    """The config's on_delivery, a per-message callback and only-error reports behave as before."""
    topic = kafka.new_topic("callbacks")
    configured: list[tuple[Any, bytes]] = []
    per_message: list[tuple[Any, bytes]] = []
    producer = pyobs.kafka.producer(
        kafka.config(on_delivery=lambda err, msg: configured.append((err, msg.value())))
    )
    producer.produce(topic, b"a")
    producer.produce(topic, b"b", on_delivery=lambda e, m: per_message.append((e, m.value())))
    producer.produce(topic, b"c", callback=lambda e, m: per_message.append((e, m.value())))
    assert producer.flush(30) == 0
    assert configured == [(None, b"a")]
    assert per_message == [(None, b"b"), (None, b"c")]

    only_errors: list[Any] = []
    quiet = pyobs.kafka.producer(
        kafka.config(
            **{
                "delivery.report.only.error": True,
                "on_delivery": lambda e, m: only_errors.append(e),
            }
        )
    )
    quiet.produce(topic, b"d")
    assert quiet.flush(30) == 0
    assert only_errors == []  # the app still hears of failures only
    assert kafka_sample(SENT, topic, error_type="") == 4  # pyobs counted every acknowledgement


def test_failed_deliveries_are_counted_with_their_error(kafka: Broker, spans: Recorded) -> None:
    """A message the broker never acknowledges, and one produce() refuses, count as errors."""
    topic = f"missing-{kafka.new_topic('x')}"  # never created; auto-creation is off
    reports: list[Any] = []
    producer = pyobs.kafka.producer(
        kafka.config(**{"message.timeout.ms": 500, "queue.buffering.max.messages": 1})
    )
    producer.produce(topic, b"lost", on_delivery=lambda err, msg: reports.append(err))
    with pytest.raises(BufferError):
        producer.produce(topic, b"no room")
    producer.flush(30)
    assert len(reports) == 1 and reports[0] is not None
    assert kafka_sample(SENT, topic, error_type=reports[0].name()) == 1
    assert kafka_sample(SENT, topic, error_type="BufferError") == 1
    assert kafka_sample(SENT, topic, error_type="") == 0
    failed = [s for s in spans.get_finished_spans() if s.status.status_code.name == "ERROR"]
    assert [s.attributes["error.type"] for s in failed] == ["BufferError"]


def test_fault_in_pyobs_never_changes_or_loses_a_message(
    kafka: Broker, spans: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each broken part of pyobs is counted once; messages, callbacks and the rest go on."""
    from pyobs import _messaging

    topic = kafka.new_topic("faults")
    producer = pyobs.kafka.producer(kafka.config())
    metrics = _messaging.get_metrics()
    before = spans.errors_before

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("pyobs bug")

    app_headers = [("app-id", b"shop")]
    delivered: list[Any] = []
    with monkeypatch.context() as patch:  # header injection broken: delivery still counted
        patch.setattr(_messaging, "inject", broken)
        producer.produce(topic, b"one", headers=app_headers, on_delivery=lambda e, m: None)
        assert producer.flush(30) == 0
    assert app_headers == [("app-id", b"shop")]  # the app's list is never changed
    assert internal_errors() == before + 1
    assert kafka_sample(SENT, topic, error_type="") == 1
    with monkeypatch.context() as patch:  # counting broken: the app's callback still runs
        patch.setattr(metrics, "record_sent", broken)
        producer.produce(topic, b"two", on_delivery=lambda e, m: delivered.append(m.value()))
        assert producer.flush(30) == 0
    assert delivered == [b"two"]
    assert internal_errors() == before + 2

    with monkeypatch.context() as patch:  # counting at poll broken: messages still arrive
        patch.setattr(metrics, "record_consumed", broken)
        consumer, (first, second) = read(kafka, topic, 2)
        consumer.close()
    assert internal_errors() == before + 4
    assert (first.value(), first.headers()) == (b"one", [("app-id", b"shop")])
    assert second.value() == b"two"
    with pyobs.kafka.process(first):  # the span does not depend on the broken counter
        pass
    ran = []
    with monkeypatch.context() as patch:  # span start broken: the block runs, no span
        patch.setattr(_messaging, "start_span", broken)
        with pyobs.kafka.process(second):
            ran.append(second.value())
    assert ran == [b"two"]
    assert internal_errors() == before + 5
    processed = [s for s in spans.get_finished_spans() if s.name == f"process {topic}"]
    assert [s.attributes["messaging.kafka.offset"] for s in processed] == [first.offset()]


def test_otel_confluent_kafka_instrumentation_leads_no_duplicates(
    kafka: Broker, spans: Recorded
) -> None:
    """With OTel's instrumentation on the clients, one PRODUCER and one CONSUMER span each."""
    import_or_require("opentelemetry.instrumentation.confluent_kafka")
    otel = importlib.import_module("opentelemetry.instrumentation.confluent_kafka")
    instrumentor = otel.ConfluentKafkaInstrumentor
    topic = kafka.new_topic("interop")
    # pyobs around OTel's proxy, and OTel's proxy around pyobs's wrapper: both orders.
    inner = pyobs.kafka.instrument_producer(
        instrumentor.instrument_producer(confluent_kafka.Producer(kafka.config()))
    )
    outer = instrumentor.instrument_producer(
        pyobs.kafka.instrument_producer(confluent_kafka.Producer(kafka.config()))
    )
    inner.produce(topic, b"inner", headers=[("app-id", b"a")])
    outer.produce(topic, b"outer", headers=[("app-id", b"b")])
    assert inner.flush(30) == 0 and outer.flush(30) == 0

    raw = confluent_kafka.Consumer(kafka.config(**{"group.id": topic}))
    raw.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    consumer = pyobs.kafka.instrument_consumer(instrumentor.instrument_consumer(raw))
    got = []
    for _ in range(60):
        message = consumer.poll(1.0)
        if message is None:
            continue
        with pyobs.kafka.process(message):
            got.append(message.value())
        if len(got) == 2:
            break
    consumer.close()
    assert sorted(got) == [b"inner", b"outer"]

    finished = spans.get_finished_spans()
    producing = [s for s in finished if s.kind.name == "PRODUCER"]
    processing = [s for s in finished if s.kind.name == "CONSUMER" and "process" in s.name]
    assert len(producing) == 2
    assert {s.instrumentation_scope.name for s in producing} == {otel.__name__}
    assert len(processing) == 2
    assert {s.instrumentation_scope.name for s in processing} == {otel.__name__}
    assert kafka_sample(SENT, topic, error_type="") == 2
    assert kafka_sample(CONSUMED, topic, error_type="") == 2
    assert kafka_sample(PROCESS + "_count", topic, error_type="") == 2
    assert internal_errors() == spans.errors_before


def test_instrument_once_and_disabled(kafka: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instrumenting twice returns the same wrapper; PYOBS_DISABLED returns the client itself."""
    raw = confluent_kafka.Producer(kafka.config())
    wrapped = pyobs.kafka.instrument_producer(raw)
    assert pyobs.kafka.instrument_producer(wrapped) is wrapped
    assert wrapped.wrapped is raw and len(wrapped) == 0
    assert wrapped.list_topics(timeout=10).brokers  # the rest of the API passes through
    pyobs.testing.reset()
    monkeypatch.setenv("PYOBS_DISABLED", "true")
    assert pyobs.kafka.instrument_producer(raw) is raw
    consumer = confluent_kafka.Consumer(kafka.config(**{"group.id": "disabled"}))
    try:
        assert pyobs.kafka.instrument_consumer(consumer) is consumer
    finally:
        consumer.close()
