"""Example Falcon service, instrumented by pyobs with one line.

Run: python examples/falcon/app.py --port 8006   (or: gunicorn -w 4 app:app from this folder)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import falcon

import pyobs.falcon

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-falcon")

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


class ItemResource:
    """One item, or 404."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: int) -> None:
        item = ITEMS.get(item_id)
        if item is None:
            log.info("item not found")
            raise falcon.HTTPNotFound(description="no such item")
        resp.media = item


class ItemsResource:
    """Create an item from the JSON body."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media(default_when_empty={}) or {}
        item_id = max(ITEMS) + 1
        ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
        log.info("item created")
        resp.status = falcon.HTTP_201
        resp.media = ITEMS[item_id]


class BoomResource:
    """Always fails: shows 500s, the exception counter and error logs."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RuntimeError("the warehouse is on fire")


class SlowResource:
    """A slow dependency."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        time.sleep(0.3)
        resp.media = {"status": "slow but fine"}


class StreamResource:
    """A streamed body: its duration runs to the last chunk."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        def chunks() -> Iterator[bytes]:
            for i in range(5):
                time.sleep(0.05)
                yield f"chunk {i}\n".encode()

        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = chunks()


class HealthResource:
    """Health check: pyobs records nothing for it."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/items/{item_id:int}", ItemResource())
app.add_route("/items", ItemsResource())
app.add_route("/boom", BoomResource())
app.add_route("/slow", SlowResource())
app.add_route("/stream", StreamResource())
app.add_route("/health", HealthResource())
pyobs.falcon.instrument(app)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """pyobs writes the access log."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main() -> None:
    """Serve with the stdlib WSGI server that Falcon's tutorial uses, threaded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8006)
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
