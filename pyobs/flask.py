"""Flask adapter: ``pyobs.flask.instrument(app)``."""

from __future__ import annotations

from typing import Any

from pyobs import _state
from pyobs.wsgi import HANDLE_KEY, ObservabilityMiddleware


def _current_request() -> Any:
    ctx = _cv_request.get(None)
    return None if ctx is None else ctx.request


def _load_request_var() -> None:
    global _cv_request
    # Flask >= 2.3 (the extra's floor): the context variable itself, without the
    # LocalProxy's indirection on every request.
    from flask.globals import _cv_request as var

    _cv_request = var


_cv_request: Any = None


def _on_request_started(sender: Any, **_: Any) -> None:
    # Routing has run when request_started fires; Flask forgets the rule before we finish.
    request = _current_request()
    if request is None or request.url_rule is None:
        return
    handle = request.environ.get(HANDLE_KEY)
    if handle is not None:
        handle.route = request.url_rule.rule


def _on_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    # Flask turns the exception into a 500 itself; record what it swallowed.
    request = _current_request()
    handle = None if request is None else request.environ.get(HANDLE_KEY)
    if handle is not None:
        handle.exception = exception


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Flask app; routes are labelled with their rules (/items/<int:item_id>)."""
    from flask import got_request_exception, request_started

    if _cv_request is None:
        _load_request_var()
    if getattr(app, "_pyobs_instrumented", False):
        return app
    config = _state.ensure_setup("flask", **options)
    if config.disabled:
        return app
    app.wsgi_app = ObservabilityMiddleware(app.wsgi_app, framework="flask", **options)
    request_started.connect(_on_request_started, app, weak=False)
    got_request_exception.connect(_on_exception, app, weak=False)
    app._pyobs_instrumented = True
    return app
