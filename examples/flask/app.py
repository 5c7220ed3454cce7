"""Example Flask service, instrumented by pyobs with one line.

Run: python examples/flask/app.py --port 8000   (or: gunicorn -w 4 app:app from this folder)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, abort, request

import pyobs.flask

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-flask")

app = Flask(__name__)
pyobs.flask.instrument(app)

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


@app.get("/items/<int:item_id>")
def get_item(item_id: int) -> dict[str, object]:
    """One item, or 404."""
    item = ITEMS.get(item_id)
    if item is None:
        log.info("item not found")
        abort(404)
    return item


@app.post("/items")
def create_item() -> tuple[dict[str, object], int]:
    """Create an item from the JSON body."""
    body = request.get_json(silent=True) or {}
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
    log.info("item created")
    return ITEMS[item_id], 201


@app.get("/boom")
def boom() -> str:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


@app.get("/slow")
def slow() -> dict[str, str]:
    """A slow dependency."""
    time.sleep(0.3)
    return {"status": "slow but fine"}


@app.get("/stream")
def stream() -> Response:
    """A streamed body: its duration runs to the last chunk."""

    def chunks() -> Iterator[str]:
        for i in range(5):
            time.sleep(0.05)
            yield f"chunk {i}\n"

    return Response(chunks(), mimetype="text/plain")


@app.get("/health")
def health() -> dict[str, str]:
    """Health check: pyobs records nothing for it."""
    return {"status": "ok"}


def main() -> None:
    """Serve with Werkzeug's threaded server (no banner, so stdout stays JSON)."""
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # pyobs writes the access log
    server = make_server(args.host, args.port, app, threaded=True)
    log.info("serving on http://%s:%s", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
