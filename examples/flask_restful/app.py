"""Example Flask-RESTful service, instrumented by pyobs with one line.

Run: python examples/flask_restful/app.py --port 8003   (or: gunicorn -w 4 app:app from this folder)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, request
from flask_restful import Api, Resource, abort

import pyobs.flask_restful

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-flask-restful")

app = Flask(__name__)
api = Api(app)
log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


class Item(Resource):  # type: ignore[misc]
    """One item."""

    def get(self, item_id: int) -> dict[str, object]:
        """One item, or 404."""
        item = ITEMS.get(item_id)
        if item is None:
            log.info("item not found")
            abort(404, message="no such item")
        return item  # type: ignore[return-value]


class Items(Resource):  # type: ignore[misc]
    """The item collection."""

    def post(self) -> tuple[dict[str, object], int]:
        """Create an item from the JSON body."""
        body = request.get_json(silent=True) or {}
        item_id = max(ITEMS) + 1
        ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
        log.info("item created")
        return ITEMS[item_id], 201


class Boom(Resource):  # type: ignore[misc]
    """Always fails: shows 500s, the exception counter and error logs."""

    def get(self) -> None:
        raise RuntimeError("the warehouse is on fire")


class Slow(Resource):  # type: ignore[misc]
    """A slow dependency."""

    def get(self) -> dict[str, str]:
        time.sleep(0.3)
        return {"status": "slow but fine"}


class Stream(Resource):  # type: ignore[misc]
    """A streamed body: its duration runs to the last chunk."""

    def get(self) -> Response:
        def chunks() -> Iterator[str]:
            for i in range(5):
                time.sleep(0.05)
                yield f"chunk {i}\n"

        return Response(chunks(), mimetype="text/plain")


class Health(Resource):  # type: ignore[misc]
    """Health check: pyobs records nothing for it."""

    def get(self) -> dict[str, str]:
        return {"status": "ok"}


api.add_resource(Item, "/items/<int:item_id>")
api.add_resource(Items, "/items")
api.add_resource(Boom, "/boom")
api.add_resource(Slow, "/slow")
api.add_resource(Stream, "/stream")
api.add_resource(Health, "/health")
pyobs.flask_restful.instrument(api)


def main() -> None:
    """Serve with Werkzeug's threaded server (no banner, so stdout stays JSON)."""
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
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
