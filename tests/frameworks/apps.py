"""One tiny app per framework, all with the same routes, each instrumented with its one line.

Routes: GET /items/{id} (logs "item fetched"), GET /boom (raises RuntimeError), GET /stream
(three chunks; logs "chunk streamed" while making the second, after the view returned),
GET /slow (0.2 s), GET /health, and an echo WebSocket at /ws where the framework has one.
Each builder returns the object its server serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

log = logging.getLogger("shop")
CHUNKS = [b"chunk 0\n", b"chunk 1\n", b"chunk 2\n"]
CHUNK_DELAY = 0.05
SLOW = 0.2


def _chunks() -> Iterator[bytes]:
    for i, chunk in enumerate(CHUNKS):
        time.sleep(CHUNK_DELAY)
        if i == 1:
            log.info("chunk streamed")
        yield chunk


async def _achunks() -> AsyncIterator[bytes]:
    for i, chunk in enumerate(CHUNKS):
        await asyncio.sleep(CHUNK_DELAY)
        if i == 1:
            log.info("chunk streamed")
        yield chunk


def _item(item_id: int, missing: Callable[[], BaseException]) -> dict[str, Any]:
    """Item 0 does not exist: the handler answers 404 the framework's own way."""
    if item_id == 0:
        raise missing()
    log.info("item fetched")
    return {"id": item_id}


# -- WSGI ------------------------------------------------------------------------------------


def flask_app() -> Any:
    import flask
    from werkzeug.exceptions import NotFound

    import pyobs.flask

    app = flask.Flask("contract")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return _item(item_id, lambda: NotFound())

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/stream")
    def stream() -> Any:
        return flask.Response(_chunks(), mimetype="text/plain")

    @app.get("/slow")
    def slow() -> str:
        time.sleep(SLOW)
        return "slow"

    @app.get("/health")
    def health() -> str:
        return "ok"

    pyobs.flask.instrument(app)
    return app


def flask_restful_app() -> Any:
    import flask
    import flask_restful

    import pyobs.flask_restful

    app = flask.Flask("contract_restful")
    api = flask_restful.Api(app)

    class Item(flask_restful.Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> dict[str, Any]:
            try:
                return _item(item_id, LookupError)
            except LookupError:
                flask_restful.abort(404, message="no such item")
                raise

    class Boom(flask_restful.Resource):  # type: ignore[misc]
        def get(self) -> None:
            raise RuntimeError("boom")

    class Stream(flask_restful.Resource):  # type: ignore[misc]
        def get(self) -> Any:
            return flask.Response(_chunks(), mimetype="text/plain")

    class Slow(flask_restful.Resource):  # type: ignore[misc]
        def get(self) -> str:
            time.sleep(SLOW)
            return "slow"

    class Health(flask_restful.Resource):  # type: ignore[misc]
        def get(self) -> str:
            return "ok"

    api.add_resource(Item, "/items/<int:item_id>")
    api.add_resource(Boom, "/boom")
    api.add_resource(Stream, "/stream")
    api.add_resource(Slow, "/slow")
    api.add_resource(Health, "/health")
    pyobs.flask_restful.instrument(api)
    return app


def falcon_app() -> Any:
    import falcon

    import pyobs.falcon

    class Item:
        def on_get(self, req: Any, resp: Any, item_id: int) -> None:
            resp.media = _item(item_id, falcon.HTTPNotFound)

    class Boom:
        def on_get(self, req: Any, resp: Any) -> None:
            raise RuntimeError("boom")

    class Stream:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = "text/plain"
            resp.stream = _chunks()

    class Slow:
        def on_get(self, req: Any, resp: Any) -> None:
            time.sleep(SLOW)
            resp.text = "slow"

    class Health:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.text = "ok"

    app = falcon.App()
    app.add_route("/items/{item_id:int}", Item())
    app.add_route("/boom", Boom())
    app.add_route("/stream", Stream())
    app.add_route("/slow", Slow())
    app.add_route("/health", Health())
    pyobs.falcon.instrument(app)
    return app


def pyramid_app() -> Any:
    from pyramid.config import Configurator
    from pyramid.httpexceptions import HTTPNotFound
    from pyramid.response import Response

    def item(request: Any) -> Any:
        return _item(int(request.matchdict["item_id"]), HTTPNotFound)

    def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    def stream(request: Any) -> Any:
        return Response(app_iter=_chunks(), content_type="text/plain")

    def slow(request: Any) -> Any:
        time.sleep(SLOW)
        return Response("slow")

    def health(request: Any) -> Any:
        return Response("ok")

    with Configurator() as config:
        config.include("pyobs.pyramid")
        for name, pattern, view, renderer in (
            ("item", "/items/{item_id}", item, "json"),
            ("boom", "/boom", boom, None),
            ("stream", "/stream", stream, None),
            ("slow", "/slow", slow, None),
            ("health", "/health", health, None),
        ):
            config.add_route(name, pattern)
            config.add_view(view, route_name=name, renderer=renderer)
        return config.make_wsgi_app()


# -- Django (WSGI, ASGI, DRF) ----------------------------------------------------------------


def configure_django() -> None:
    """Settings for the Django apps, once per process (no database)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="contract-tests",
        ROOT_URLCONF="tests.frameworks.django_urls",
        MIDDLEWARE=["pyobs.django.ObservabilityMiddleware"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
        DATABASES={},
        LOGGING_CONFIG=None,
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()


def django_app(urlconf: str = "tests.frameworks.django_urls") -> Any:
    configure_django()
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.ROOT_URLCONF = urlconf
    return WSGIHandler()


def drf_app() -> Any:
    return django_app("tests.frameworks.drf_urls")


def django_asgi_app() -> Any:
    configure_django()
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    settings.ROOT_URLCONF = "tests.frameworks.django_urls"
    return ASGIHandler()


# -- ASGI ------------------------------------------------------------------------------------


def _starlette_routes() -> list[Any]:
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute

    async def item(request: Any) -> Any:
        return JSONResponse(_item(int(request.path_params["item_id"]), lambda: HTTPException(404)))

    async def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    async def stream(request: Any) -> Any:
        return StreamingResponse(_achunks(), media_type="text/plain")

    async def slow(request: Any) -> Any:
        await asyncio.sleep(SLOW)
        return PlainTextResponse("slow")

    async def health(request: Any) -> Any:
        return PlainTextResponse("ok")

    async def ws(websocket: Any) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except Exception:
            return

    return [
        Route("/items/{item_id:int}", item),
        Route("/boom", boom),
        Route("/stream", stream),
        Route("/slow", slow),
        Route("/health", health),
        WebSocketRoute("/ws", ws),
    ]


def starlette_app() -> Any:
    from starlette.applications import Starlette

    import pyobs.starlette

    app = Starlette(routes=_starlette_routes())
    pyobs.starlette.instrument(app)
    return app


def fastapi_app() -> Any:
    from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect
    from fastapi.responses import PlainTextResponse, StreamingResponse

    import pyobs.fastapi

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return _item(item_id, lambda: HTTPException(404))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/stream")
    async def stream() -> Any:
        return StreamingResponse(_achunks(), media_type="text/plain")

    @app.get("/slow", response_class=PlainTextResponse)
    async def slow() -> str:
        await asyncio.sleep(SLOW)
        return "slow"

    @app.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "ok"

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            return

    # Annotations are strings here (PEP 563) and WebSocket is a local name: resolve it for FastAPI.
    ws.__annotations__["websocket"] = WebSocket
    app.websocket("/ws")(ws)
    pyobs.fastapi.instrument(app)
    return app


def falcon_asgi_app() -> Any:
    import falcon.asgi
    from falcon import WebSocketDisconnected

    import pyobs.falcon

    class Item:
        async def on_get(self, req: Any, resp: Any, item_id: int) -> None:
            resp.media = _item(item_id, falcon.HTTPNotFound)

    class Boom:
        async def on_get(self, req: Any, resp: Any) -> None:
            raise RuntimeError("boom")

    class Stream:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.content_type = "text/plain"
            resp.stream = _achunks()

    class Slow:
        async def on_get(self, req: Any, resp: Any) -> None:
            await asyncio.sleep(SLOW)
            resp.text = "slow"

    class Health:
        async def on_get(self, req: Any, resp: Any) -> None:
            resp.text = "ok"

    class Echo:
        async def on_websocket(self, req: Any, ws: Any) -> None:
            await ws.accept()
            try:
                while True:
                    await ws.send_text(await ws.receive_text())
            except WebSocketDisconnected:
                return

    app = falcon.asgi.App()
    app.add_route("/items/{item_id:int}", Item())
    app.add_route("/boom", Boom())
    app.add_route("/stream", Stream())
    app.add_route("/slow", Slow())
    app.add_route("/health", Health())
    app.add_route("/ws", Echo())
    pyobs.falcon.instrument(app)
    return app


# -- servers with their own protocol layer ---------------------------------------------------


def tornado_app() -> Any:
    import tornado.web
    import tornado.websocket

    import pyobs.tornado

    class Item(tornado.web.RequestHandler):
        def get(self, item_id: str) -> None:
            self.write(_item(int(item_id), lambda: tornado.web.HTTPError(404)))

    class Boom(tornado.web.RequestHandler):
        def get(self) -> None:
            raise RuntimeError("boom")

    class Stream(tornado.web.RequestHandler):
        async def get(self) -> None:
            self.set_header("Content-Type", "text/plain")
            for i, chunk in enumerate(CHUNKS):
                await asyncio.sleep(CHUNK_DELAY)
                if i == 1:
                    log.info("chunk streamed")
                self.write(chunk)
                await self.flush()

    class Slow(tornado.web.RequestHandler):
        async def get(self) -> None:
            await asyncio.sleep(SLOW)
            self.write("slow")

    class Health(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("ok")

    class Echo(tornado.websocket.WebSocketHandler):
        def on_message(self, message: Any) -> None:
            self.write_message(message)

    app = tornado.web.Application(
        [
            (r"/items/([0-9]+)", Item),
            (r"/boom", Boom),
            (r"/stream", Stream),
            (r"/slow", Slow),
            (r"/health", Health),
            (r"/ws", Echo),
        ]
    )
    pyobs.tornado.instrument(app)
    return app


_sanic_count = 0


def sanic_app() -> Any:
    from sanic import Sanic, response
    from sanic.exceptions import NotFound

    import pyobs.sanic

    global _sanic_count
    _sanic_count += 1
    # Sanic rewrites some of its methods at the first start; test mode lets it start again.
    Sanic.test_mode = True
    app = Sanic(f"contract{_sanic_count}", configure_logging=False)

    @app.get("/items/<item_id:int>")
    async def item(request: Any, item_id: int) -> Any:
        return response.json(_item(item_id, NotFound))

    @app.get("/boom")
    async def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    @app.get("/stream")
    async def stream(request: Any) -> None:
        resp = await request.respond(content_type="text/plain")
        async for chunk in _achunks():
            await resp.send(chunk)
        await resp.eof()

    @app.get("/slow")
    async def slow(request: Any) -> Any:
        await asyncio.sleep(SLOW)
        return response.text("slow")

    @app.get("/health")
    async def health(request: Any) -> Any:
        return response.text("ok")

    @app.websocket("/ws")  # type: ignore[untyped-decorator]
    async def ws(request: Any, websocket: Any) -> None:
        while True:
            message = await websocket.recv()
            if message is None:
                return
            await websocket.send(message)

    pyobs.sanic.instrument(app)
    return app


def aiohttp_app() -> Any:
    from aiohttp import WSMsgType, web

    import pyobs.aiohttp

    async def item(request: Any) -> Any:
        return web.json_response(_item(int(request.match_info["item_id"]), web.HTTPNotFound))

    async def boom(request: Any) -> Any:
        raise RuntimeError("boom")

    async def stream(request: Any) -> Any:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        async for chunk in _achunks():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def slow(request: Any) -> Any:
        await asyncio.sleep(SLOW)
        return web.Response(text="slow")

    async def health(request: Any) -> Any:
        return web.Response(text="ok")

    async def ws(request: Any) -> Any:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
        return socket

    app = web.Application()
    app.router.add_get(r"/items/{item_id:\d+}", item)
    app.router.add_get("/boom", boom)
    app.router.add_get("/stream", stream)
    app.router.add_get("/slow", slow)
    app.router.add_get("/health", health)
    app.router.add_get("/ws", ws)
    pyobs.aiohttp.instrument(app)
    return app
