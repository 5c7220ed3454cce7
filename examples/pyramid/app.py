"""Example Pyramid service, instrumented by pyobs with one line (``config.include``).

Run: python examples/pyramid/app.py --port 8007   (or: gunicorn -w 4 app:app from this folder)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from pyramid.response import Response

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-pyramid")

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


def get_item(request: Request) -> dict[str, object]:
    """One item, or 404."""
    raw = request.matchdict["item_id"]
    item = ITEMS.get(int(raw)) if raw.isdigit() else None
    if item is None:
        log.info("item not found")
        raise HTTPNotFound("no such item")
    return item


def create_item(request: Request) -> dict[str, object]:
    """Create an item from the JSON body."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        body = {}
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
    log.info("item created")
    request.response.status = 201
    return ITEMS[item_id]


def boom(request: Request) -> Response:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


def slow(request: Request) -> dict[str, str]:
    """A slow dependency."""
    time.sleep(0.3)
    return {"status": "slow but fine"}


def stream(request: Request) -> Response:
    """A streamed body: its duration runs to the last chunk."""

    def chunks() -> Iterator[bytes]:
        for i in range(5):
            time.sleep(0.05)
            yield f"chunk {i}\n".encode()

    return Response(app_iter=chunks(), content_type="text/plain")


def health(request: Request) -> dict[str, str]:
    """Health check: pyobs records nothing for it."""
    return {"status": "ok"}


with Configurator() as config:
    config.include("pyobs.pyramid")
    for name, pattern, view, method in (
        ("item", "/items/{item_id}", get_item, "GET"),
        ("items", "/items", create_item, "POST"),
        ("boom", "/boom", boom, "GET"),
        ("slow", "/slow", slow, "GET"),
        ("stream", "/stream", stream, "GET"),
        ("health", "/health", health, "GET"),
    ):
        config.add_route(name, pattern, request_method=method)
        config.add_view(view, route_name=name, renderer="json")
    app = config.make_wsgi_app()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """pyobs writes the access log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main() -> None:
    """Serve with the stdlib WSGI server from Pyramid's quick start, threaded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8007)
    args = parser.parse_args()
    server = make_server(
        args.host, args.port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    log.info("serving on http://%s:%s", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
