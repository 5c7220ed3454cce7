"""The shop of the messaging end-to-end test (tests/test_messaging_e2e.py), in three processes.

- web: ``python -m tests.messaging_app web FD``: a Flask app (pyobs.flask) on an inherited
  listening socket; ``POST /orders/<n>`` enqueues the Celery task ``shop.charge`` and produces
  one Kafka record (pyobs.kafka), then answers;
- worker: ``celery -A tests.messaging_app worker``: runs ``shop.charge`` (pyobs.celery);
- consumer: ``python -m tests.messaging_app consume``: reads the topic from its start and
  handles each record inside ``pyobs.kafka.process`` until SIGTERM.

Configured by the environment only, as a user would: ``SHOP_REDIS`` (the Celery broker),
``SHOP_KAFKA`` (bootstrap servers), ``SHOP_QUEUE``, ``SHOP_TOPIC``, plus PYOBS_* and OTEL_*.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from celery import Celery

import pyobs.celery
import pyobs.kafka

QUEUE = os.environ.get("SHOP_QUEUE", "shop")
TOPIC = os.environ.get("SHOP_TOPIC", "shop-orders")
KAFKA = {"bootstrap.servers": os.environ.get("SHOP_KAFKA", "127.0.0.1:9092"), "log_level": 2}

celery_app = Celery("tests.messaging_app", broker=os.environ.get("SHOP_REDIS", "memory://"))
celery_app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
pyobs.celery.instrument(celery_app)
log = logging.getLogger("shop")


def declined(order: int) -> bool:
    """Orders the card company declines: the task fails for good."""
    return order % 5 == 0


def busy_first(order: int) -> bool:
    """Orders whose first charge finds the bank busy: one retry, then success."""
    return order % 4 == 1 and not declined(order)


@celery_app.task(bind=True, name="shop.charge", max_retries=1)  # type: ignore[untyped-decorator]
def charge(self: Any, order: int) -> str:
    """Charges an order; takes a moment, so that the pool's processes share the work."""
    log.info("charging order %s", order)
    time.sleep(0.2)
    if declined(order):
        raise ValueError(f"card declined for order {order}")
    if busy_first(order) and self.request.retries == 0:
        raise self.retry(countdown=0, exc=ConnectionError("the bank is busy"))
    return "charged"


def web() -> Any:
    """The Flask app: each order is one task and one Kafka record."""
    from flask import Flask

    import pyobs.flask

    app = Flask("shop-web")
    producer = pyobs.kafka.producer(KAFKA)

    @app.post("/orders/<int:order>")
    def place(order: int) -> dict[str, int]:
        charge.delay(order)
        producer.produce(TOPIC, json.dumps({"order": order}).encode(), key=str(order))
        if producer.flush(30) != 0:
            raise RuntimeError("the order record was not delivered")
        log.info("order %s accepted", order)
        return {"order": order}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    pyobs.flask.instrument(app)
    return app


def consume() -> None:
    """Handle every record of the topic, from its start, until SIGTERM."""
    import confluent_kafka

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = pyobs.kafka.consumer(
        {**KAFKA, "group.id": f"{TOPIC}-shipping", "enable.auto.commit": False}
    )
    consumer.assign([confluent_kafka.TopicPartition(TOPIC, 0, confluent_kafka.OFFSET_BEGINNING)])
    log.info("shipping consumer ready")
    while not stop.is_set():
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        with pyobs.kafka.process(message):
            log.info("shipping order %s", json.loads(message.value())["order"])
    consumer.close()


if __name__ == "__main__":
    if sys.argv[1] == "web":
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        make_server("127.0.0.1", 0, web(), threaded=True, fd=int(sys.argv[2])).serve_forever()
    else:
        consume()
