"""Tornado adapter: ``pyobs.tornado.instrument(application)`` (RequestHandler, WebSocketHandler)."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import unquote

from pyobs import _integration
from pyobs._observer import RequestFacts, RequestHandle, RequestObserver
from pyobs._websocket import WebSocketSession, open_session
from pyobs.asgi import ensure_loop_lag_monitor


def _facts(request: Any) -> RequestFacts:
    return RequestFacts(
        method=request.method,
        path=unquote(request.path, errors="replace"),  # decoded, as under ASGI
        headers={k.lower(): v for k, v in request.headers.get_all()},
        scheme=request.protocol,
        query=request.query,
        client_addr=request.remote_ip,
        server_addr=request.host_name or None,
        server_port=_integration.host_port(request.host)[1],
        http_version=request.version.partition("/")[2] or "1.1",
    )


def route_template(rules: Any, request: Any, target: Any) -> str | None:
    """The URLSpec pattern that routed ``request`` to ``target``, as written (no added ``$``)."""
    from tornado.routing import PathMatches, RuleRouter

    for rule in rules:
        if rule.matcher.match(request) is None:
            continue
        if isinstance(rule.target, RuleRouter):
            found = route_template(rule.target.rules, request, target)
            if found is not None:
                return found
        elif rule.target is target and isinstance(rule.matcher, PathMatches):
            pattern = str(rule.matcher.regex.pattern)
            return pattern[:-1] if pattern.endswith("$") else pattern
    return None


class _Wrapper:
    """Tornado's object for this request, with the request's observer and handle at hand."""

    def __init__(self, inner: Any, observer: RequestObserver, handle: RequestHandle) -> None:
        self._inner, self._observer, self._handle = inner, observer, handle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Connection(_Wrapper):
    """The request's connection, counting body bytes and adding X-Request-ID to the headers."""

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> Any:
        _integration.add_request_id(self._observer, self._handle, headers)
        self._handle.response_bytes += len(chunk or b"")
        return self._inner.write_headers(start_line, headers, chunk)

    def write(self, chunk: bytes) -> Any:
        self._handle.response_bytes += len(chunk)
        return self._inner.write(chunk)


class _Delegate(_Wrapper):
    """Wraps the handler delegate so the request's context is left where it was entered."""

    def finish(self) -> None:
        try:
            self._inner.finish()  # starts the handler task, which copies the context
        finally:
            self._observer.detach(self._handle)

    def on_connection_close(self) -> None:
        self._handle.disconnected = True
        _integration.finish_request(self._observer, self._handle)
        self._inner.on_connection_close()


def _watch(session: WebSocketSession, handler: Any) -> None:
    """Count one WebSocketHandler's messages and close (instance attributes, not the class)."""
    on_message, write_message, on_close = (
        handler.on_message,
        handler.write_message,
        handler.on_close,
    )

    def observed_message(message: Any) -> Any:
        session.on_message("received")
        with session.activate():
            return on_message(message)

    def observed_write(message: Any, binary: bool = False) -> Any:
        session.on_message("sent")
        return write_message(message, binary=binary)

    def observed_close() -> None:
        try:
            with session.activate():
                on_close()
        finally:
            session.on_close(handler.close_code)

    handler.on_message, handler.write_message = observed_message, observed_write
    handler.on_close = observed_close


def instrument(application: Any, **options: Any) -> Any:
    """Instrument a ``tornado.web.Application``; /metrics is served by it."""
    from tornado.web import HTTPError, RequestHandler
    from tornado.websocket import WebSocketHandler

    observer = _integration.begin("tornado", application, options)
    if observer is None:
        return application
    rules = application.default_router.rules

    def serves(request: Any) -> bool:
        """True when a rule's pattern is exactly the path (a catch-all does not count)."""
        target = getattr(application.default_router.find_handler(request), "handler_class", None)
        return target is not None and route_template(rules, request, target) == request.path

    page = _integration.metrics_page("tornado", serves)

    class MetricsHandler(RequestHandler):
        def get(self) -> None:
            assert page is not None  # only routed here when there is a page
            page.answer(self.request.headers, self.send)

        def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.set_status(status)
            for name, value in headers:
                self.set_header(name, value)
            self.finish(body)

    find_handler, user_log = application.find_handler, application.settings.get("log_function")

    def find(request: Any, **kwargs: Any) -> Any:
        if page is not None and page.wanted(request.path, request):
            return application.get_handler_delegate(request, MetricsHandler)
        delegate = find_handler(request, **kwargs)
        return observe(request, delegate) or delegate  # unobserved when pyobs failed

    @_integration.failsafe("tornado.find_handler")
    def observe(request: Any, delegate: Any) -> Any:
        ensure_loop_lag_monitor()
        target = getattr(delegate, "handler_class", None)
        route = route_template(application.default_router.rules, request, target)
        if isinstance(target, type) and issubclass(target, WebSocketHandler):
            request._pyobs_ws = open_session(_facts(request), route)
            return delegate
        handle = observer.start(_facts(request))
        if handle is None:
            return delegate
        handle.route = route
        request._pyobs_handle = handle
        request.connection = _Connection(request.connection, observer, handle)
        return _Delegate(delegate, observer, handle)

    def log_request(handler: Any) -> None:
        record(handler)
        if user_log is not None:
            user_log(handler)

    @_integration.failsafe("tornado.log_request")
    def record(handler: Any) -> None:
        request, status = handler.request, handler.get_status()
        handle = getattr(request, "_pyobs_handle", None)
        if handle is not None:
            # Called from finish(); inside Tornado's exception handler when the handler raised.
            exc = sys.exc_info()[1]
            if isinstance(exc, Exception) and not isinstance(exc, HTTPError):
                _integration.keep_exception(handle, exc, status)
            observer.finish(handle, status)
        session = getattr(request, "_pyobs_ws", None)
        if session is not None and status == 101:
            _watch(session, handler)
            session.on_accept()
        elif session is not None:
            session.on_close(status=status)  # the handshake was refused

    application.find_handler = find
    application.log_request = log_request
    return application
