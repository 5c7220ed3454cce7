"""Falcon adapter: ``pyobs.falcon.instrument(app)`` for ``falcon.App`` and ``falcon.asgi.App``."""

from __future__ import annotations

import inspect
import re
from typing import Any

from pyobs import _integration, _internals, asgi, wsgi


def _handle(req: Any) -> Any:
    holder = getattr(req, "scope", None)
    if holder is None:
        holder = req.env
    return holder.get(wsgi.HANDLE_KEY)


class _Routes:
    """Falcon middleware: labels the request with the matched URI template (/items/{item_id})."""

    def __init__(self, page: _integration.MetricsPage | None) -> None:
        self.page = page

    def route(self, req: Any, resource: Any) -> None:
        handle = _handle(req)
        if handle is not None:
            handle.route = req.uri_template
        elif self.page is not None and resource is not None and req.path == self.page.path:
            self.page.warn()  # the app's own route beat pyobs's sink

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        self.route(req, resource)


class _AsyncRoutes(_Routes):
    """The same for ``falcon.asgi.App``, WebSocket routes included."""

    async def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:  # type: ignore[override]
        self.route(req, resource)

    async def process_resource_ws(self, req: Any, ws: Any, resource: Any, params: Any) -> None:
        session = req.scope.get(asgi.WEBSOCKET_KEY)
        if session is not None:
            session.route = req.uri_template


def _keep_exceptions(app: Any, is_asgi: bool) -> None:
    """Wrap the app's handler for ``Exception`` so the exception Falcon renders as a 500 is
    recorded with its type. Falcon has no public getter for that handler (gated shortcut)."""
    previous = _internals.falcon_exception_handler(app)
    if previous is None:
        return

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

    app.add_error_handler(Exception, on_error_async if is_asgi else on_error)


def _add_metrics_sink(app: Any, page: _integration.MetricsPage, is_asgi: bool) -> None:
    """Serve the metrics page as a Falcon sink: Falcon tries routes first, so an app route at
    the metrics path wins (and pyobs warns once)."""

    def sink(req: Any, resp: Any, **_: Any) -> None:
        status, headers, body = page.respond(req.get_header("Accept"), req.auth)
        resp.status = status
        for name, value in headers:
            if name.lower() != "content-length":
                resp.set_header(name, value)
        resp.data = body

    async def sink_async(req: Any, resp: Any, **kwargs: Any) -> None:
        sink(req, resp, **kwargs)

    app.add_sink(
        sink_async if is_asgi else sink, re.compile(re.escape(page.config.metrics_path) + r"\Z")
    )


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Falcon app in place (WSGI or ASGI); /metrics is served by the app."""
    import falcon.asgi

    if _integration.instrumented(type(app)):  # the one-off class below carries the mark
        return app
    if _integration.begin("falcon", None, options) is None:
        return app
    is_asgi = isinstance(app, falcon.asgi.App)
    page = _integration.metrics_page("falcon")
    app.add_middleware((_AsyncRoutes if is_asgi else _Routes)(page))
    _keep_exceptions(app, is_asgi)
    if page is not None:
        _add_metrics_sink(app, page, is_asgi)
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
    middleware.metrics_page.path = None  # served by the sink, inside Falcon's routing

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
            _integration.MARK: True,
        },
    )
    return app
