"""Example aiohttp service, instrumented by pyobs with one line.

Run: python examples/aiohttp/app.py --port 8008
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from aiohttp import WSMsgType, web

import pyobs.aiohttp

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-aiohttp")

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}
routes = web.RouteTableDef()


@routes.get(r"/items/{item_id:\d+}")
async def get_item(request: web.Request) -> web.Response:
    """One item, or 404."""
    item = ITEMS.get(int(request.match_info["item_id"]))
    if item is None:
        log.info("item not found")
        raise web.HTTPNotFound(text="no such item")
    return web.json_response(item)


@routes.post("/items")
async def create_item(request: web.Request) -> web.Response:
    """Create an item from the JSON body."""
    try:
        body = await request.json()
    except ValueError:
        body = {}
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
    log.info("item created")
    return web.json_response(ITEMS[item_id], status=201)


@routes.get("/boom")
async def boom(request: web.Request) -> web.Response:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


@routes.get("/slow")
async def slow(request: web.Request) -> web.Response:
    """A slow dependency."""
    await asyncio.sleep(0.3)
    return web.json_response({"status": "slow but fine"})


@routes.get("/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """A streamed body: its duration runs to the last chunk."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    for i in range(5):
        await asyncio.sleep(0.05)
        await response.write(f"chunk {i}\n".encode())
    await response.write_eof()
    return response


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Health check: pyobs records nothing for it."""
    return web.json_response({"status": "ok"})


@routes.get("/ws")
async def echo(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket echo: connections, messages and their duration are measured."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


app = web.Application()
app.add_routes(routes)
pyobs.aiohttp.instrument(app)


def main() -> None:
    """Serve with aiohttp's own server (no banner, no aiohttp access log: pyobs writes one)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    args = parser.parse_args()
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
