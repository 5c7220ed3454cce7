"""Pyramid adapter: ``config.include("pyobs.pyramid")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyobs import _integration
from pyobs.wsgi import HANDLE_KEY, ObservabilityMiddleware, _ObservedBody, facts_from_environ


def _route(request: Any) -> str | None:
    """The matched route's pattern with a leading '/'; None when no route matched."""
    pattern = getattr(getattr(request, "matched_route", None), "pattern", None)
    return _integration.template(pattern) if pattern else None


def _serves(registry: Any, request: Any) -> bool:
    """True when one of the app's route patterns is exactly this path (not a catch-all)."""
    from pyramid.interfaces import IRoutesMapper

    mapper = registry.queryUtility(IRoutesMapper)
    routes = mapper.get_routes() if mapper is not None else ()
    return _integration.serves_path((r.pattern for r in routes), request.path_info)


def _no_app(environ: Any, start_response: Any) -> list[bytes]:
    return []  # pragma: no cover - the tween serves the app, this middleware only records


def tween_factory(handler: Callable[[Any], Any], registry: Any) -> Callable[[Any], Any]:
    """The outermost tween: one request, one record; routes are labelled with their patterns."""
    recorder = ObservabilityMiddleware(_no_app, framework="pyramid")
    observer = recorder.observer
    if observer is None:
        return handler
    page = _integration.metrics_page("pyramid", lambda request: _serves(registry, request))

    def tween(request: Any) -> Any:
        environ = request.environ
        if page is not None and page.wanted(request.path_info, request):
            from pyramid.response import Response

            return page.answer(request.headers, lambda status, headers, body: Response(
                body=body, status=status, headerlist=headers))  # fmt: skip
        handle: Any = _integration.start_request(
            observer,
            lambda: facts_from_environ(environ, observer.details),
            "pyramid.request",
            _ObservedBody,
        )
        if handle is None:
            return handler(request)
        environ[HANDLE_KEY] = handle
        with _integration.request_scope(observer, handle, lambda: _route(request)):
            response = handler(request)
        handle.route = _route(request)
        handle.status = response.status_int
        # An exception view already turned the error into a response; count it as raised.
        swallowed = getattr(request, "exception", None)
        if isinstance(swallowed, Exception):
            _integration.keep_exception(handle, swallowed, response.status_int)
        _integration.add_request_id(observer, handle, response.headers)
        length = response.content_length
        handle._middleware = recorder
        handle._environ = environ
        handle.inner = response.app_iter
        response.app_iter = handle
        response.content_length = length
        return response

    return tween


def includeme(config: Any) -> None:
    """``config.include("pyobs.pyramid")``: add the tween, nearest to the server."""
    from pyramid.tweens import INGRESS

    settings = config.get_settings() or {}
    options = {
        key[len("pyobs.") :]: value for key, value in settings.items() if key.startswith("pyobs.")
    }
    if _integration.begin("pyramid", None, options) is None:
        return
    config.add_tween("pyobs.pyramid.tween_factory", under=INGRESS)
