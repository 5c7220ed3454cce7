"""Sanic adapter: ``pyobs.sanic.instrument(app)`` (HTTP handlers and WebSockets)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from pyobs import _integration
from pyobs._observer import RequestFacts, report_internal_error
from pyobs._websocket import open_session
from pyobs.asgi import ensure_loop_lag_monitor


def _facts(request: Any) -> RequestFacts:
    # Runs before Sanic fills request.conn_info, so the peer comes from the transport.
    peer = request.transport.get_extra_info("peername") if request.transport else None
    peer = peer if isinstance(peer, tuple) and len(peer) >= 2 else (None, None)
    return RequestFacts(
        method=request.method,
        path=unquote(request.path, errors="replace"),  # decoded, as under ASGI
        headers={k.lower(): v for k, v in request.headers.items()},
        scheme=request.scheme,
        query=request.query_string,
        client_addr=peer[0],
        server_addr=request.server_name or None,
        server_port=request.server_port or None,
        http_version=request.version or "1.1",
    )


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Sanic app (its own server or ASGI); routes read /items/<item_id:int>."""
    from sanic import response as responses
    from sanic.exceptions import SanicException
    from sanic.request import Request

    observer = _integration.begin("sanic", app.ctx, options)
    if observer is None:
        return app
    page = _integration.metrics_page("sanic")

    def websocket_route(request: Any) -> bool:
        """True when the request is routed to one of the app's WebSocket handlers."""
        host = request.headers.getone("host", None)
        route = app.router.get(request.path, request.method, host)[0]
        return bool(getattr(route.extra, "websocket", False))

    async def on_request(request: Any) -> None:
        ensure_loop_lag_monitor()
        if request.headers.get("upgrade", "").lower() == "websocket":
            try:
                websocket = websocket_route(request)
            except Exception:  # noqa: BLE001 - not routed: Sanic answers it over HTTP
                websocket = False
            if websocket:
                request.ctx.pyobs_ws = open_session(_facts(request))
                return
        request.ctx.pyobs_handle = _integration.start_request(
            observer, lambda: _facts(request), "sanic.request"
        )

    async def on_routed(request: Any, route: Any, kwargs: Any, handler: Any) -> None:
        target = getattr(request.ctx, "pyobs_handle", None) or getattr(
            request.ctx, "pyobs_ws", None
        )
        if target is not None:
            target.route = _integration.template(route.path)

    async def on_exception(request: Any, exception: BaseException) -> None:
        handle = getattr(request.ctx, "pyobs_handle", None)
        status = getattr(exception, "status_code", 500)
        if handle is not None and (not isinstance(exception, SanicException) or status >= 500):
            handle.exception = exception

    async def on_response(request: Any, response: Any) -> None:
        handle = getattr(request.ctx, "pyobs_handle", None)
        if handle is None or handle.finished:
            return
        if handle.status is None and isinstance(response.body, bytes):  # not streamed
            handle.response_bytes = len(response.body)
        _integration.finish_request(observer, handle, response.status)

    async def on_send(data: bytes) -> None:
        # Streamed bodies: count what the handler writes; the first write carries the head.
        try:
            request = Request.get_current()
        except Exception:  # noqa: BLE001 - WebSocket frames are sent outside any request
            return
        handle = getattr(request.ctx, "pyobs_handle", None)
        if handle is None or handle.finished:
            return
        if handle.status is None:
            handle.status = 0  # the head went out with this write
            data = data[data.find(b"\r\n\r\n") + 4 :]
        handle.response_bytes += len(data)

    async def add_request_id(request: Any, response: Any) -> None:
        handle = getattr(request.ctx, "pyobs_handle", None)
        if handle is not None:
            _integration.add_request_id(observer, handle, response.headers)

    async def ws_before(request: Any, websocket: Any) -> None:
        session = getattr(request.ctx, "pyobs_ws", None)
        if session is None:
            return
        # A receive that raises: closed, or cancelled by Sanic when the client went away.
        _integration.watch_websocket(session, websocket, "recv", ("send",),
            lambda message: message is not None,
            lambda: getattr(websocket.ws_proto, "close_code", None))  # fmt: skip

    async def ws_after(request: Any, websocket: Any) -> None:
        session = getattr(request.ctx, "pyobs_ws", None)
        if session is not None:
            session.on_close(getattr(websocket.ws_proto, "close_code", None))

    async def ws_error(request: Any, websocket: Any, exception: BaseException) -> None:
        session = getattr(request.ctx, "pyobs_ws", None)
        if session is not None:
            session.on_close(exception=exception)

    def raw(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
        fields = {k: v for k, v in headers if k != "Content-Length"}
        content_type = fields.pop("Content-Type")
        return responses.raw(body, status=status, headers=fields, content_type=content_type)

    async def metrics(request: Any) -> Any:
        assert page is not None  # only routed when there is a page
        return page.answer(request.headers, raw)

    for event, handler in (
        ("http.lifecycle.request", on_request),
        ("http.routing.after", on_routed),
        ("http.lifecycle.exception", on_exception),
        ("http.lifecycle.response", on_response),
        ("http.lifecycle.send", on_send),
        ("websocket.handler.before", ws_before),
        ("websocket.handler.after", ws_after),
        ("websocket.handler.exception", ws_error),
    ):
        # Signal handlers run inline in Sanic's request path: an error in pyobs stays here.
        app.signal(event)(_integration.failsafe(f"sanic.{handler.__name__}")(handler))
    app.on_response(add_request_id)
    if page is not None:

        async def add_metrics_route(*_: Any) -> None:
            # Once the app's own routes are all known: a route of the app at the metrics
            # path wins (no RouteExists, whatever the order), and pyobs warns once.
            path = page.config.metrics_path
            try:
                paths = {_integration.template(r.path): r.name for r in app.router.routes}
                if path not in paths:
                    with app.amend():
                        app.add_route(metrics, path, name="pyobs_metrics")
                elif not str(paths[path]).endswith("pyobs_metrics"):
                    page.warn()  # the app's own route at exactly that path
            except Exception as exc:  # noqa: BLE001 - failsafe: the server starts without it
                report_internal_error("sanic.metrics_route", exc)

        app.register_listener(add_metrics_route, "before_server_start")
    return app
