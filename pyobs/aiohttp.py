"""aiohttp adapter: ``pyobs.aiohttp.instrument(app)`` (HTTP handlers and WebSockets)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pyobs import _state, exposition
from pyobs._observer import RequestFacts, report_internal_error
from pyobs._websocket import WebSocketSession, open_session
from pyobs.asgi import ensure_loop_lag_monitor

HANDLE_KEY: Any = "pyobs.handle"
WEBSOCKET_KEY: Any = "pyobs.websocket"
Handler = Callable[[Any], Awaitable[Any]]


def _facts(request: Any) -> RequestFacts:
    host = request.host or ""
    return RequestFacts(
        method=request.method,
        path=request.path,
        headers={k.lower(): v for k, v in request.headers.items()},
        scheme=request.scheme,
        query=request.query_string,
        client_addr=request.remote,
        server_addr=host.split(":")[0] or None,
        server_port=request.url.port,
        http_version=f"{request.version.major}.{request.version.minor}",
    )


def _route(request: Any) -> str | None:
    """The resource's canonical form (/items/{item_id}); None when nothing matched."""
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return None
    return str(info.route.resource.canonical)


def _count(session: WebSocketSession, ws: Any) -> None:
    """Count messages on this one WebSocketResponse (its senders bypass each other)."""
    from aiohttp import WSMsgType

    receive = ws.receive

    async def counted_receive(*args: Any, **kwargs: Any) -> Any:
        message = await receive(*args, **kwargs)
        if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            session.on_message("received")
        return message

    def counting(send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            result = await send(*args, **kwargs)
            session.on_message("sent")
            return result

        return counted

    ws.receive = counted_receive
    ws.send_str = counting(ws.send_str)
    ws.send_bytes = counting(ws.send_bytes)
    ws.send_frame = counting(ws.send_frame)


def instrument(app: Any, **options: Any) -> Any:
    """Instrument an aiohttp ``web.Application``; /metrics is served by the app."""
    from aiohttp import web

    global HANDLE_KEY, WEBSOCKET_KEY
    if any(getattr(m, "_pyobs", False) for m in app.middlewares):
        return app
    if hasattr(web, "RequestKey") and isinstance(HANDLE_KEY, str):  # aiohttp >= 3.12
        HANDLE_KEY = web.RequestKey(HANDLE_KEY, object)
        WEBSOCKET_KEY = web.RequestKey(WEBSOCKET_KEY, object)
    config = _state.ensure_setup("aiohttp", **options)
    observer = _state.get_observer()
    if config.disabled or observer is None:
        return app

    async def on_prepare(request: Any, response: Any) -> None:
        handle = request.get(HANDLE_KEY)
        if handle is not None:
            for name, value in observer.response_headers(handle):
                response.headers[name] = value
            if not isinstance(response, web.Response):  # streamed: count what the handler writes
                write = response.write

                async def counted_write(data: Any) -> None:
                    handle.response_bytes += len(data)
                    await write(data)

                response.write = counted_write
        session = request.get(WEBSOCKET_KEY)
        if session is not None and isinstance(response, web.WebSocketResponse):
            _count(session, response)
            session.on_accept()

    @web.middleware
    async def middleware(request: Any, handler: Handler) -> Any:
        if config.metrics_port is None and request.path == config.metrics_path:
            status, headers, body = exposition.render(
                config, request.headers.get("Accept"), request.headers.get("Authorization")
            )
            return web.Response(body=body, status=status, headers=dict(headers))
        try:
            ensure_loop_lag_monitor()
            facts, route = _facts(request), _route(request)
        except Exception as exc:  # noqa: BLE001 - failsafe: serve it unobserved
            report_internal_error("aiohttp.request", exc)
            return await handler(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            session = open_session(facts, route)
            if session is None:
                return await handler(request)
            request[WEBSOCKET_KEY] = session
            with session.activate():
                try:
                    response = await handler(request)
                except BaseException as exc:
                    session.on_close(exception=exc)
                    raise
                session.on_close(getattr(response, "close_code", None))
                return response
        handle = observer.start(facts)
        if handle is None:
            return await handler(request)
        handle.route = route
        request[HANDLE_KEY] = handle
        try:
            response = await handler(request)
            # Send it here, so the duration runs until the last body byte is out.
            if not response.prepared:
                await response.prepare(request)
            await response.write_eof()
        except web.HTTPException as exc:
            handle.status = exc.status
            sent = exc.body
            handle.response_bytes = len(sent) if isinstance(sent, (bytes, bytearray)) else 0
            observer.finish(handle)
            raise
        except BaseException as exc:
            observer.finish(handle, exception=exc)
            raise
        finally:
            observer.detach(handle)
        handle.status = response.status
        if isinstance(response, web.Response):
            handle.response_bytes = response.content_length or 0
        observer.finish(handle)
        return response

    middleware._pyobs = True  # type: ignore[attr-defined]
    app.middlewares.insert(0, middleware)
    app.on_response_prepare.append(on_prepare)
    return app
