"""Flask adapter: ``pyobs.flask.instrument(app)``."""

from __future__ import annotations

from typing import Any

from pyobs import _state
from pyobs.wsgi import HANDLE_KEY, Environ, ObservabilityMiddleware

_cv_request: Any = None  # flask.globals._cv_request, imported by instrument()


def _matched_rule(environ: Environ) -> str | None:
    """The rule Flask matched for this request (/items/<int:item_id>), None when none did.

    The middleware asks when the app starts its response: Flask does that inside its request
    context, which it drops before the body is sent.
    """
    ctx = _cv_request.get(None)
    if ctx is None:
        return None
    request = ctx.request
    if request.environ is not environ:
        return None  # not this request's context (Flask's is gone, or an outer app's)
    rule = request.url_rule
    return None if rule is None else str(rule.rule)


def _on_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    # Flask turns the exception into a 500 itself; record what it swallowed. With
    # PROPAGATE_EXCEPTIONS no response is started, so the route is taken here too.
    ctx = _cv_request.get(None)
    handle = None if ctx is None else ctx.request.environ.get(HANDLE_KEY)
    if handle is not None:
        handle.exception = exception
        if handle.route is None:
            handle.route = _matched_rule(ctx.request.environ)


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Flask app; routes are labelled with their rules (/items/<int:item_id>)."""
    global _cv_request
    from flask import got_request_exception
    from flask.globals import _cv_request

    if getattr(app, "_pyobs_instrumented", False):
        return app
    config = _state.ensure_setup("flask", **options)
    if config.disabled:
        return app
    app.wsgi_app = ObservabilityMiddleware(
        app.wsgi_app, route_resolver=_matched_rule, framework="flask", **options
    )
    got_request_exception.connect(_on_exception, app, weak=False)
    app._pyobs_instrumented = True
    return app
