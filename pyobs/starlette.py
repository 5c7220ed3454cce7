"""Starlette adapter: ``pyobs.starlette.instrument(app)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import Host, Match, Mount

from pyobs import _integration
from pyobs.asgi import HANDLE_KEY, ROOT_PATH_KEY, ObservabilityMiddleware, Scope


def route_template(routes: Sequence[Any], scope: Scope, prefix: str = "") -> str | None:
    """The template of the route that serves ``scope``, mounts included (e.g. /api/items/{id})."""
    partial: str | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, (Mount, Host)):
            path = prefix + (route.path if isinstance(route, Mount) else "")
            inner_routes = getattr(route, "routes", None) or []
            inner = route_template(inner_routes, {**scope, **child}, path)
            found = inner if inner is not None else path + "/{path:path}"
        else:
            found = prefix + route.path
        if match is Match.FULL:
            return found
        partial = partial or found
    return partial


def resolve_route(routes: Sequence[Any], scope: Scope) -> str | None:
    """The route template for a request, after the app ran (or before, for websockets).

    Starlette's router leaves the matched route in ``scope["route"]``; outside a mount its
    ``path`` is the template. Under a mount (root_path changed) the router is walked again
    to add the mount's own template.
    """
    before = scope.get(ROOT_PATH_KEY, scope.get("root_path", ""))
    route = scope.get("route")
    if (
        route is not None
        and scope.get("root_path", "") == before
        and not isinstance(route, (Mount, Host))
    ):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
    probe = {
        "type": scope.get("type", "http"),
        "path": scope.get("path", "/"),
        "root_path": before,
        "method": scope.get("method", "GET"),
    }
    return route_template(routes, probe)


def serves(routes: Sequence[Any], path: str, prefix: str = "") -> bool:
    """True when a route's template is exactly this path (a catch-all does not count);
    mounted apps that are not Starlette routers cannot be asked."""
    for route in routes:
        if isinstance(route, (Mount, Host)):
            inner = getattr(route, "routes", None) or []
            mount = prefix + (route.path if isinstance(route, Mount) else "")
            if serves(inner, path, mount):
                return True
        elif prefix + str(getattr(route, "path", "")) == path:
            return True
    return False


class _Adopted:
    """Just inside pyobs's middleware: the framework's own SERVER span, adopted by pyobs,
    gets pyobs's request attributes before the app runs."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        _integration.redact_adopted_span(scope.get(HANDLE_KEY))
        await self.app(scope, receive, send)


def instrument_asgi(
    app: Any, framework: str, before: Callable[[], bool] | None = None, **options: Any
) -> Any:
    """Wrap a Starlette-based app (also FastAPI) outermost: around Starlette's own error
    middleware, so the 500s it renders carry X-Request-ID and are counted in full.
    ``before`` runs once pyobs is sure to instrument the app; when it returns True, a span
    pyobs adopts from the framework gets pyobs's request attributes (redaction included)."""
    if _integration.begin(framework, app.state, options) is None:
        return app
    adopting = before is not None and before()
    build = app.build_middleware_stack

    def resolve(scope: Scope) -> str | None:
        # resolve_route()'s common case, inlined (it runs on every request): the router left
        # a plain route in the scope and no mount changed root_path.
        route = scope.get("route")
        if (
            route is not None
            and scope.get("root_path", "") == scope.get(ROOT_PATH_KEY, "")
            and not isinstance(route, (Mount, Host))
        ):
            path = getattr(route, "path", None)
            if type(path) is str:
                return path
        return resolve_route(app.router.routes, scope)

    def build_observed() -> Any:
        inner = build()
        middleware = ObservabilityMiddleware(
            _Adopted(inner) if adopting else inner,
            route_resolver=resolve,
            framework=framework,
            app_serves=lambda scope: serves(app.router.routes, scope["path"]),
            **options,
        )
        # Starlette's error middleware sends the 500 and then re-raises the exception: the
        # request is recorded once it comes out, with its type (no middleware of pyobs's
        # inside the app's stack to catch it earlier).
        middleware.server_errors_reraised = True
        return middleware

    # Already serving: rebuilt with pyobs outermost on the next request.
    app.middleware_stack = None
    app.build_middleware_stack = build_observed
    return app


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Starlette app; /metrics is served on it (or on PYOBS_METRICS_PORT)."""
    return instrument_asgi(app, "starlette", **options)
