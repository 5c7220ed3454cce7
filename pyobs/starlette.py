"""Starlette adapter: ``pyobs.starlette.instrument(app)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import Host, Match, Mount

from pyobs import _state
from pyobs.asgi import ROOT_PATH_KEY, ObservabilityMiddleware, Scope


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


def instrument_asgi(app: Any, framework: str, **options: Any) -> Any:
    """Add the ASGI middleware to a Starlette-based app (also used by FastAPI)."""
    if getattr(app.state, "pyobs_instrumented", False):
        return app
    config = _state.ensure_setup(framework, **options)
    if config.disabled:
        return app

    def resolve(scope: Scope) -> str | None:
        return resolve_route(app.router.routes, scope)

    app.add_middleware(
        ObservabilityMiddleware, route_resolver=resolve, framework=framework, **options
    )
    app.state.pyobs_instrumented = True
    return app


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Starlette app; /metrics is served on it (or on PYOBS_METRICS_PORT)."""
    return instrument_asgi(app, "starlette", **options)
