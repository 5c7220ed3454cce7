"""Example Starlette service, instrumented by pyobs with one line.

Run: python examples/starlette/app.py --port 8002   (or: uvicorn app:app from this folder)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import pyobs.starlette

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-starlette")

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


async def get_item(request: Request) -> JSONResponse:
    """One item, or 404."""
    item = ITEMS.get(request.path_params["item_id"])
    if item is None:
        log.info("item not found")
        raise HTTPException(status_code=404, detail="no such item")
    return JSONResponse(item)


async def create_item(request: Request) -> JSONResponse:
    """Create an item from the JSON body."""
    try:
        body = await request.json()
    except ValueError:
        body = {}
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": str(body.get("name", "unnamed"))}
    log.info("item created")
    return JSONResponse(ITEMS[item_id], status_code=201)


async def boom(request: Request) -> JSONResponse:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


async def slow(request: Request) -> JSONResponse:
    """A slow dependency."""
    await asyncio.sleep(0.3)
    return JSONResponse({"status": "slow but fine"})


async def stream(request: Request) -> StreamingResponse:
    """A streamed body: its duration runs to the last chunk."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.05)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def health(request: Request) -> JSONResponse:
    """Health check: pyobs records nothing for it."""
    return JSONResponse({"status": "ok"})


async def echo(websocket: WebSocket) -> None:
    """A WebSocket echo: connections, messages and their duration are measured."""
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/items/{item_id:int}", get_item),
        Route("/items", create_item, methods=["POST"]),
        Route("/boom", boom),
        Route("/slow", slow),
        Route("/stream", stream),
        Route("/health", health),
        WebSocketRoute("/ws", echo),
    ]
)
pyobs.starlette.instrument(app)


def main() -> None:
    """Serve with uvicorn; its own access log is off because pyobs writes one."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
