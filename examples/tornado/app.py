"""Example Tornado service, instrumented by pyobs with one line.

Run: python examples/tornado/app.py --port 8005
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

import tornado.web
import tornado.websocket

import pyobs.tornado

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-tornado")

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


class ItemHandler(tornado.web.RequestHandler):
    """One item, or 404."""

    def get(self, item_id: str) -> None:
        item = ITEMS.get(int(item_id))
        if item is None:
            log.info("item not found")
            raise tornado.web.HTTPError(404)
        self.write(item)


class ItemsHandler(tornado.web.RequestHandler):
    """Create an item from the JSON body."""

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = {}
        item_id = max(ITEMS) + 1
        ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
        log.info("item created")
        self.set_status(201)
        self.write(ITEMS[item_id])


class BoomHandler(tornado.web.RequestHandler):
    """Always fails: shows 500s, the exception counter and error logs."""

    def get(self) -> None:
        raise RuntimeError("the warehouse is on fire")


class SlowHandler(tornado.web.RequestHandler):
    """A slow dependency."""

    async def get(self) -> None:
        await asyncio.sleep(0.3)
        self.write({"status": "slow but fine"})


class StreamHandler(tornado.web.RequestHandler):
    """A streamed body: its duration runs to the last chunk."""

    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        for i in range(5):
            await asyncio.sleep(0.05)
            self.write(f"chunk {i}\n")
            await self.flush()


class HealthHandler(tornado.web.RequestHandler):
    """Health check: pyobs records nothing for it."""

    def get(self) -> None:
        self.write({"status": "ok"})


class EchoHandler(tornado.websocket.WebSocketHandler):
    """A WebSocket echo: connections, messages and their duration are measured."""

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


app = tornado.web.Application(
    [
        (r"/items/([0-9]+)", ItemHandler),
        (r"/items", ItemsHandler),
        (r"/boom", BoomHandler),
        (r"/slow", SlowHandler),
        (r"/stream", StreamHandler),
        (r"/health", HealthHandler),
        (r"/ws", EchoHandler),
    ]
)
pyobs.tornado.instrument(app)


async def serve(host: str, port: int) -> None:
    """Listen until the process is stopped."""
    app.listen(port, address=host)
    log.info("serving on http://%s:%s", host, port)
    await asyncio.Event().wait()


def main() -> None:
    """Serve with Tornado's own HTTP server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8005)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
