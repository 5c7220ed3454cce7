"""Example Sanic service, instrumented by pyobs with one line.

Run: python examples/sanic/app.py --port 8009
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from sanic import Request, Sanic, response
from sanic.exceptions import BadRequest, NotFound

import pyobs.sanic

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-sanic")

app = Sanic("example_sanic", configure_logging=False)  # pyobs owns logging: JSON lines
log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


@app.get("/items/<item_id:int>")
async def get_item(request: Request, item_id: int) -> response.HTTPResponse:
    """One item, or 404."""
    item = ITEMS.get(item_id)
    if item is None:
        log.info("item not found")
        raise NotFound("no such item")
    return response.json(item)


@app.post("/items")
async def create_item(request: Request) -> response.HTTPResponse:
    """Create an item from the JSON body."""
    try:
        body = request.json or {}
    except BadRequest:  # a malformed body
        body = {}
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
    log.info("item created")
    return response.json(ITEMS[item_id], status=201)


@app.get("/boom")
async def boom(request: Request) -> response.HTTPResponse:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


@app.get("/slow")
async def slow(request: Request) -> response.HTTPResponse:
    """A slow dependency."""
    await asyncio.sleep(0.3)
    return response.json({"status": "slow but fine"})


@app.get("/stream")
async def stream(request: Request) -> None:
    """A streamed body: its duration runs to the last chunk."""
    resp = await request.respond(content_type="text/plain")
    for i in range(5):
        await asyncio.sleep(0.05)
        await resp.send(f"chunk {i}\n")
    await resp.eof()


@app.get("/health")
async def health(request: Request) -> response.HTTPResponse:
    """Health check: pyobs records nothing for it."""
    return response.json({"status": "ok"})


@app.websocket("/ws")  # type: ignore[untyped-decorator]
async def echo(request: Request, ws: Any) -> None:
    """A WebSocket echo: connections, messages and their duration are measured."""
    while True:
        message = await ws.recv()
        if message is None:
            return
        await ws.send(message)


pyobs.sanic.instrument(app)


def main() -> None:
    """Serve with Sanic's own server, one process, no access log (pyobs writes one)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8009)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
