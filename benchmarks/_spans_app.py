"""The app benchmarks/spans.py measures: Flask, traced by pyobs or by OpenTelemetry's contrib.

``SPANS_VARIANT`` picks the tracing: ``pyobs`` (``pyobs.flask.instrument``, OTLP export set up
by pyobs from the OTEL_* variables) or ``contrib`` (``FlaskInstrumentor`` with the SDK's
default ``BatchSpanProcessor`` in front of the OTLP/HTTP exporter). Every request to
``/items/<id>`` is one SERVER span; the view counts the requests it served.

Two ways to run it: ``python _spans_app.py REQUESTS THREADS RATE`` drives it in-process with
Flask's test client (as fast as it goes with RATE 0, else paced to RATE requests/s) and
prints one JSON line; gunicorn serves ``_spans_app:build()`` and the
``worker_exit`` hook (``gunicorn_conf.py`` written by spans.py) writes the same JSON to
``SPANS_RESULT`` after the tracer provider has flushed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from flask import Flask

_served = [0]
_lock = threading.Lock()


def build() -> Flask:
    """The app, traced as SPANS_VARIANT says."""
    app = Flask("spans")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        with _lock:
            _served[0] += 1
        return "ok"

    if os.environ["SPANS_VARIANT"] == "contrib":
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "spans"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]
    else:
        import pyobs.flask

        pyobs.flask.instrument(app, access_log=False)
    return app


def result(seconds: float) -> dict[str, Any]:
    """Shut the tracer provider down (exports what is queued), then what was served and lost."""
    from opentelemetry import trace

    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        shutdown()
    dropped: dict[str, float] = {}
    if os.environ["SPANS_VARIANT"] != "contrib":
        from prometheus_client import REGISTRY

        from pyobs import _spans

        for reason in _spans.REASONS:
            value = REGISTRY.get_sample_value("pyobs_spans_dropped_total", {"reason": reason})
            dropped[reason] = value or 0.0
    return {"served": _served[0], "dropped": dropped, "seconds": seconds}


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: write the worker's result to SPANS_RESULT."""
    started = float(os.environ.get("SPANS_STARTED", "0"))
    with open(os.environ["SPANS_RESULT"], "w") as out:
        json.dump(result(time.time() - started), out)


def _in_process(requests: int, threads: int, rate: float) -> None:
    app = build()
    per_thread = requests // threads
    interval = threads / rate if rate else 0.0  # each thread's share of the paced rate

    def hit() -> None:
        client = app.test_client()
        due = time.perf_counter()
        for n in range(per_thread):
            if interval:
                due += interval
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            client.get(f"/items/{n % 100}", buffered=True)

    workers = [threading.Thread(target=hit) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    print(json.dumps(result(seconds)))


if __name__ == "__main__":
    _in_process(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
