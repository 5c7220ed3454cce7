"""Falcon adapter: ``pyobs.falcon.instrument(app)`` for ``falcon.App`` and ``falcon.asgi.App``."""

from __future__ import annotations

import inspect
from typing import Any

from pyobs import _state, asgi, wsgi


def _handle(req: Any) -> Any:
    holder = getattr(req, "scope", None)
    if holder is None:
        holder = req.env
    return holder.get(wsgi.HANDLE_KEY)


class _Routes:
    """Falcon middleware: labels the request with the matched URI template (/items/{item_id})."""

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        handle = _handle(req)
        if handle is not None:
            handle.route = req.uri_template


class _AsyncRoutes:
    """The same for ``falcon.asgi.App``, WebSocket routes included."""

    async def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        handle = _handle(req)
        if handle is not None:
            handle.route = req.uri_template

    async def process_resource_ws(self, req: Any, ws: Any, resource: Any, params: Any) -> None:
        session = req.scope.get(asgi.WEBSOCKET_KEY)
        if session is not None:
            session.route = req.uri_template


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Falcon app in place (WSGI or ASGI); /metrics is served by the app."""
    import falcon.asgi

    if getattr(type(app), "_pyobs_instrumented", False):
        return app
    config = _state.ensure_setup("falcon", **options)
    if config.disabled:
        return app
    is_asgi = isinstance(app, falcon.asgi.App)
    app.add_middleware(_AsyncRoutes() if is_asgi else _Routes())
    previous = app._error_handlers.get(Exception)

    # Falcon turns unhandled exceptions into a 500 itself; record what it swallowed.
    def on_error(req: Any, resp: Any, ex: Exception, params: Any) -> None:
        handle = _handle(req)
        if handle is not None:
            handle.exception = ex
        previous(req, resp, ex, params)

    async def on_error_async(
        req: Any, resp: Any, ex: Exception, params: Any, ws: Any = None
    ) -> None:
        handle = _handle(req)
        if handle is not None:
            handle.exception = ex
        result = previous(req, resp, ex, params, ws=ws)
        if inspect.isawaitable(result):
            await result

    if previous is not None:
        app.add_error_handler(Exception, on_error_async if is_asgi else on_error)
    cls = type(app)
    middleware: Any
    if is_asgi:
        middleware = asgi.ObservabilityMiddleware(
            lambda scope, receive, send: cls.__call__(app, scope, receive, send),
            framework="falcon",
            **options,
        )
    else:
        middleware = wsgi.ObservabilityMiddleware(
            lambda environ, start: cls.__call__(app, environ, start), framework="falcon", **options
        )

    # Falcon apps use __slots__ and are served as the object itself, so the wrapper goes in
    # through the class: a one-off subclass whose __call__ runs the pyobs middleware.
    def call_wsgi(self: Any, environ: Any, start_response: Any) -> Any:
        return middleware(environ, start_response)

    async def call_asgi(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await middleware(scope, receive, send)

    app.__class__ = type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__call__": call_asgi if is_asgi else call_wsgi,
            "_pyobs_instrumented": True,
        },
    )
    return app
