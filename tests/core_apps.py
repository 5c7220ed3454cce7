"""Tiny Flask and FastAPI apps with identical routes, and one client interface over both."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

STREAM_CHUNKS = 3
STREAM_PAUSE = 0.1  # seconds between chunks: the duration must include them


@dataclass
class Reply:
    """What a client saw."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class Client:
    """Uniform `request()` over Flask's and Starlette's test clients."""

    def __init__(self, framework: str, app: Any) -> None:
        self.framework = framework
        self.app = app
        if framework == "flask":
            self._client: Any = app.test_client()
        else:
            from starlette.testclient import TestClient

            # The test client's own request log is not the app's; keep it out of stdout.
            logging.getLogger("httpx").setLevel(logging.WARNING)
            self._client = TestClient(app, raise_server_exceptions=False)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        headers = headers or {}
        if self.framework == "flask":
            r = self._client.open(path, method=method, headers=headers, data=body, buffered=True)
            return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.data)
        r = self._client.request(method, path, headers=headers, content=body)
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers)


def make_flask(**options: Any) -> Any:
    from flask import Flask, Response

    import pyobs.flask

    app = Flask("core-flask")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        import logging

        logging.getLogger("app").info("looking up item")
        return {"id": item_id}

    @app.post("/items")
    def create() -> tuple[dict[str, bool], int]:
        return {"created": True}, 201

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom from the app")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(STREAM_CHUNKS):
                time.sleep(STREAM_PAUSE)
                yield f"chunk {i}\n".encode()

        return Response(chunks(), mimetype="text/plain")

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/internal/ping")
    def ping() -> str:
        return "pong"

    pyobs.flask.instrument(app, **options)
    return app


def make_fastapi(**options: Any) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, StreamingResponse

    import pyobs.fastapi

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        import logging

        logging.getLogger("app").info("looking up item")
        return {"id": item_id}

    @app.post("/items", status_code=201)
    async def create() -> dict[str, bool]:
        return {"created": True}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom from the app")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                await asyncio.sleep(STREAM_PAUSE)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok"

    @app.get("/internal/ping", response_class=PlainTextResponse)
    async def ping() -> str:
        return "pong"

    pyobs.fastapi.instrument(app, **options)
    return app


FACTORIES: dict[str, Callable[..., Any]] = {"flask": make_flask, "fastapi": make_fastapi}
TEMPLATES = {"flask": "/items/<int:item_id>", "fastapi": "/items/{item_id}"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line must be a JSON object; return them parsed."""
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def sample(name: str, **labels: str) -> float | None:
    """Current value of one sample in the default registry."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def series(metric_prefix: str) -> set[tuple[tuple[str, str], ...]]:
    """Label sets of every sample whose name starts with ``metric_prefix``."""
    from prometheus_client import REGISTRY

    found = set()
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name.startswith(metric_prefix):
                found.add(tuple(sorted(s.labels.items())))
    return found


GENERATED_ID = re.compile(r"[0-9a-f]{32}")
DURATION = "http_server_request_duration_seconds"
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def compared_samples(families: Iterable[Any]) -> dict[SampleKey, float]:
    """The http_server_* and exception samples two configurations must agree on: all of them
    but the duration's sum and buckets (times) and the _created timestamps."""
    found = {}
    for family in families:
        for s in family.samples:
            name = s.name
            if not name.startswith(("http_server_", "pyobs_http_server_")):
                continue
            if name.endswith("_created") or (
                name.startswith(DURATION) and name != DURATION + "_count"
            ):
                continue
            found[(name, tuple(sorted(s.labels.items())))] = s.value
    return found


def id_kind(echoed: str | None, sent: str | None) -> str:
    """What a response's X-Request-ID is: the one sent, a generated one, or none."""
    if not echoed:
        return "none"
    if echoed == sent:
        return "echoed"
    assert GENERATED_ID.fullmatch(echoed), echoed
    return "generated"


def run_async(coro: Any) -> Any:
    return asyncio.new_event_loop().run_until_complete(coro)
