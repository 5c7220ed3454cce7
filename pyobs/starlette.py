"""Starlette adapter: ``pyobs.starlette.instrument(app)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyobs import _state
from pyobs.asgi import ObservabilityMiddleware, Scope


def route_template(routes: Sequence[Any], scope: Scope, prefix: str = "") -> str | None:
    """The template of the route that serves ``scope``, mounts included (e.g. /api/items/{id})."""
    from starlette.routing import Host, Match, Mount

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


def instrument_asgi(app: Any, framework: str, **options: Any) -> Any:
    """Add the ASGI middleware to a Starlette-based app (also used by FastAPI)."""
    if getattr(app.state, "pyobs_instrumented", False):
        return app
    config = _state.ensure_setup(framework, **options)
    if config.disabled:
        return app

    def resolve(scope: Scope) -> str | None:
        return route_template(app.router.routes, scope)

    app.add_middleware(
        ObservabilityMiddleware, route_resolver=resolve, framework=framework, **options
    )
    app.state.pyobs_instrumented = True
    return app


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Starlette app; /metrics is served on it (or on PYOBS_METRICS_PORT)."""
    return instrument_asgi(app, "starlette", **options)
