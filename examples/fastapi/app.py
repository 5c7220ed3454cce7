"""Example FastAPI service, instrumented by pyobs with one line.

Run: python examples/fastapi/app.py --port 8001   (or: uvicorn app:app from this folder)
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

import pyobs.fastapi

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-fastapi")

app = FastAPI(title="example-fastapi")
pyobs.fastapi.instrument(app)

log = structlog.get_logger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


class NewItem(BaseModel):
    """Body of POST /items."""

    name: str = "unnamed"


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    """One item, or 404."""
    item = ITEMS.get(item_id)
    if item is None:
        log.info("item not found")
        raise HTTPException(status_code=404, detail="no such item")
    return item


@app.post("/items", status_code=201)
async def create_item(body: NewItem) -> dict[str, object]:
    """Create an item."""
    item_id = max(ITEMS) + 1
    ITEMS[item_id] = {"id": item_id, "name": body.name}
    log.info("item created")
    return ITEMS[item_id]


@app.get("/boom")
async def boom() -> None:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


@app.get("/slow")
async def slow() -> dict[str, str]:
    """A slow dependency."""
    await asyncio.sleep(0.3)
    return {"status": "slow but fine"}


@app.get("/stream")
async def stream() -> StreamingResponse:
    """A streamed body: its duration runs to the last chunk."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            await asyncio.sleep(0.05)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/health")
async def health() -> dict[str, str]:
    """Health check: pyobs records nothing for it."""
    return {"status": "ok"}


def main() -> None:
    """Serve with uvicorn; its own access log is off because pyobs writes one."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
