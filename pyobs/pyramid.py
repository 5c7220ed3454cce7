"""Pyramid adapter: ``config.include("pyobs.pyramid")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyobs import _integration
from pyobs.wsgi import HANDLE_KEY, ObservabilityMiddleware, _ObservedBody, facts_from_environ


def _route(request: Any) -> str | None:
    """The matched route's pattern with a leading '/'; None when no route matched."""
    matched = getattr(request, "matched_route", None)
    pattern = str(getattr(matched, "pattern", "") or "")
    if matched is None or not pattern:
        return None
    return pattern if pattern.startswith("/") else "/" + pattern


def _serves(registry: Any, request: Any) -> bool:
    """True when one of the app's route patterns is exactly this path (not a catch-all)."""
    from pyramid.interfaces import IRoutesMapper

    mapper = registry.queryUtility(IRoutesMapper)
    routes = mapper.get_routes() if mapper is not None else ()
    return any("/" + str(r.pattern).lstrip("/") == request.path_info for r in routes)


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

            status, headers, body = page.respond(
                request.headers.get("Accept"), request.headers.get("Authorization")
            )
            return Response(body=body, status=status, headerlist=headers)
        handle: Any = _integration.start_request(
            observer,
            lambda: facts_from_environ(environ, observer.details),
            "pyramid.request",
            _ObservedBody,
        )
        if handle is None:
            return handler(request)
        environ[HANDLE_KEY] = handle
        try:
            response = handler(request)
        except BaseException as exc:
            handle.route = _route(request)
            observer.finish(handle, exception=exc)
            raise
        finally:
            observer.detach(handle)
        handle.route = _route(request)
        handle.status = response.status_int
        # An exception view already turned the error into a response; count it as raised.
        swallowed = getattr(request, "exception", None)
        if isinstance(swallowed, Exception) and response.status_int >= 500:
            handle.exception = swallowed
        for name, value in observer.response_headers(handle):
            response.headers[name] = value
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
