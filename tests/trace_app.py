"""A small Flask service for the trace tests, instrumented by pyobs with the interop recipe.

Outgoing calls through ``requests`` get OpenTelemetry's CLIENT span (docs/interop.md), so a
call to another instrumented service continues the trace there. Served by Werkzeug on an
inherited listening socket (``python -m tests.trace_app FD``) or by gunicorn
(``tests.trace_app:app``). ``TRACE_APP_DOWNSTREAM`` is the base URL ``/call`` goes to.
"""

from __future__ import annotations

import logging
import os
import sys

import requests
from flask import Flask
from opentelemetry.instrumentation.requests import RequestsInstrumentor

import pyobs.flask

app = Flask("trace-app")
pyobs.flask.instrument(app)
RequestsInstrumentor().instrument()
log = logging.getLogger("shop")


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, int]:
    """One item; logs a line inside the request."""
    log.info("item served")
    return {"id": item_id}


@app.get("/boom")
def boom() -> str:
    """Always fails."""
    raise RuntimeError("the warehouse is on fire")


@app.get("/call/<int:item_id>")
def call(item_id: int) -> dict[str, int]:
    """Asks the downstream service for the item (a CLIENT span, traceparent sent)."""
    downstream = os.environ["TRACE_APP_DOWNSTREAM"]
    answer = requests.get(f"{downstream}/items/{item_id}", timeout=10)
    log.info("downstream answered")
    return {"downstream": answer.status_code}


@app.get("/health")
def health() -> dict[str, str]:
    """Health check: pyobs records nothing for it."""
    return {"status": "ok"}


if __name__ == "__main__":
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True, fd=int(sys.argv[1]))
    server.serve_forever()
