"""aiohttp adapter: ``pyobs.aiohttp.instrument(app)`` (HTTP handlers and WebSockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pyobs import _integration
from pyobs._observer import RequestFacts, RequestHandle, RequestObserver, report_internal_error
from pyobs._websocket import WebSocketSession, open_session
from pyobs.asgi import ensure_loop_lag_monitor

HANDLE_KEY: Any = "pyobs.handle"
WEBSOCKET_KEY: Any = "pyobs.websocket"
Handler = Callable[[Any], Awaitable[Any]]


def _facts(request: Any) -> RequestFacts:
    # From the Host header as sent: request.url needs a yarl the aiohttp release accepts.
    name, port = _integration.host_port(request.host)
    return RequestFacts(
        method=request.method,
        path=request.path,
        headers={k.lower(): v for k, v in request.headers.items()},
        scheme=request.scheme,
        query=request.query_string,
        client_addr=request.remote,
        server_addr=name,
        server_port=port,
        http_version=f"{request.version.major}.{request.version.minor}",
    )


def _route(request: Any) -> str | None:
    """The resource's canonical form (/items/{item_id}); None when nothing matched."""
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return None
    return str(info.route.resource.canonical)


def _make_keys() -> None:
    """aiohttp >= 3.12 wants typed request keys."""
    global HANDLE_KEY, WEBSOCKET_KEY
    from aiohttp import web

    if hasattr(web, "RequestKey") and isinstance(HANDLE_KEY, str):
        HANDLE_KEY = web.RequestKey(HANDLE_KEY, object)
        WEBSOCKET_KEY = web.RequestKey(WEBSOCKET_KEY, object)


def instrument(app: Any, **options: Any) -> Any:
    """Instrument an aiohttp ``web.Application``; /metrics is served by the app."""
    from aiohttp import WSMsgType, web

    if any(_integration.instrumented(m) for m in app.middlewares):
        return app
    _make_keys()
    observer = _integration.begin("aiohttp", None, options)
    if observer is None:
        return app

    page = _integration.metrics_page(
        "aiohttp",
        lambda request: _integration.serves_path(
            (r.canonical for r in app.router.resources()), request.path
        ),
    )

    @_integration.failsafe("aiohttp.prepare")  # the response goes out unobserved
    async def on_prepare(request: Any, response: Any) -> None:
        session = request.get(WEBSOCKET_KEY)
        if session is not None and not session.closed:
            if isinstance(response, web.WebSocketResponse):
                data = (WSMsgType.TEXT, WSMsgType.BINARY)
                sends = ("send_str", "send_bytes", "send_frame")
                _integration.watch_websocket(
                    session, response, "receive", sends, lambda message: message.type in data
                )
                return
            handle = session.hand_over()  # the app answered the upgrade with plain HTTP
            if handle is not None:
                request[HANDLE_KEY] = handle
        handle = request.get(HANDLE_KEY)
        if handle is None:
            return
        _integration.add_request_id(observer, handle, response.headers)
        if handle.finished:  # an HTTPException, recorded where it was raised
            return
        if handle.exception is not None:  # aiohttp's own error page for an exception
            handle.status = response.status
            body = getattr(response, "body", None)
            handle.response_bytes = len(body) if isinstance(body, (bytes, bytearray)) else 0
        elif not isinstance(response, web.Response):  # streamed: count what is written
            response.write = _counted_write(handle, response.write)

    async def upgrade(request: Any, handler: Handler, session: WebSocketSession) -> Any:
        """An ``Upgrade: websocket`` request: a WebSocket only if the app accepts it."""
        request[WEBSOCKET_KEY] = session
        with session.activate():
            try:
                response = await handler(request)
            except BaseException as exc:
                if session.accepted or isinstance(exc, asyncio.CancelledError):
                    session.on_close(exception=exc)
                    raise
                handle = session.hand_over()
                if handle is None:
                    raise
                request[HANDLE_KEY] = handle
                error = exc  # the except clause unbinds exc
                return await serve(request, lambda: _settled(None, error), handle)
            if session.accepted or (session.closed and request.get(HANDLE_KEY) is None):
                session.on_close(getattr(response, "close_code", None))
                return response
            handle = request.get(HANDLE_KEY) or session.hand_over()
            if handle is None:
                return response
            request[HANDLE_KEY] = handle
            return await serve(request, lambda: _settled(response), handle)

    async def serve(request: Any, run: Callable[[], Any], handle: RequestHandle) -> Any:
        try:
            response = await run()
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
        except Exception as exc:
            # aiohttp renders it as a 500 outside every middleware: on_prepare adds the
            # request id and counts that page; the request task's end records it.
            handle.exception = exc
            _finish_with_task(observer, handle, exc)
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

    @web.middleware
    async def middleware(request: Any, handler: Handler) -> Any:
        if page is not None and page.wanted(request.path, request):
            return page.answer(request.headers, lambda status, headers, body: web.Response(
                body=body, status=status, headers=dict(headers)))  # fmt: skip
        try:
            ensure_loop_lag_monitor()
            facts, route = _facts(request), _route(request)
        except Exception as exc:  # noqa: BLE001 - failsafe: serve it unobserved
            report_internal_error("aiohttp.request", exc)
            return await handler(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            session = open_session(facts, route)
            if session is not None:
                return await upgrade(request, handler, session)
        handle = observer.start(facts)
        if handle is None:
            return await handler(request)
        handle.route = route
        request[HANDLE_KEY] = handle
        return await serve(request, lambda: handler(request), handle)

    _integration.mark(middleware)
    app.middlewares.insert(0, middleware)
    app.on_response_prepare.append(on_prepare)
    return app


async def _settled(response: Any, exc: BaseException | None = None) -> Any:
    """What the app's handler already gave (an upgrade it answered with plain HTTP)."""
    if exc is not None:
        raise exc
    return response


def _counted_write(handle: RequestHandle, write: Any) -> Any:
    async def counted_write(data: Any) -> None:
        handle.response_bytes += len(data)
        await write(data)

    return counted_write


def _finish_with_task(observer: RequestObserver, handle: RequestHandle, exc: Exception) -> None:
    """Record when the request's task ends, after aiohttp sent its error page."""
    task = asyncio.current_task()
    if task is None:
        observer.finish(handle, exception=exc)
        return
    task.add_done_callback(lambda _: observer.finish(handle))
