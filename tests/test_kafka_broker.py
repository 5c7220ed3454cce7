"""The test broker itself (tests/kafka_broker.py): it starts, serves and stops."""

from __future__ import annotations

import pytest

from tests.kafka_broker import Broker

pytest.importorskip("confluent_kafka")


def test_broker_round_trip(kafka: Broker) -> None:
    """A message produced to a fresh topic on the session broker is consumed back, intact."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = kafka.new_topic("roundtrip")
    producer = Producer(kafka.config())
    producer.produce(topic, b"hello", key=b"k", headers=[("h", b"v")])
    assert producer.flush(30) == 0
    consumer = Consumer(kafka.config(**{"group.id": topic, "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        message = consumer.poll(30)
    finally:
        consumer.close()
    assert message is not None and message.error() is None
    assert (message.key(), message.value(), message.headers()) == (b"k", b"hello", [("h", b"v")])
