"""Flask adapter: ``pyobs.flask.instrument(app)``."""

from __future__ import annotations

from typing import Any

from pyobs import _state
from pyobs.wsgi import HANDLE_KEY, ObservabilityMiddleware

_route_classes: dict[type, type] = {}


class _RuleSetter:
    """Catches ``request.url_rule = rule`` and hands the rule to pyobs.

    Only ``__set__`` is defined, so reads go straight to the instance dict (Flask reads the
    rule several times per request); ``__init__`` below puts the initial None there.
    """

    def __set__(self, request: Any, rule: Any) -> None:
        request.__dict__["url_rule"] = rule
        if rule is not None:
            handle = request.environ.get(HANDLE_KEY)
            if handle is not None:
                handle.route = rule.rule


def _route_recording(request_class: type) -> type:
    """A subclass of the app's request class that hands the matched rule to pyobs.

    Flask sets ``request.url_rule`` once, while routing, and forgets it before the response
    is sent; catching the assignment costs less than a signal receiver on every request.
    """
    found = _route_classes.get(request_class)
    if found is not None:
        return found
    base_init: Any = request_class.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base_init(self, *args, **kwargs)
        self.__dict__["url_rule"] = None

    found = type(
        request_class.__name__,
        (request_class,),
        {
            "url_rule": _RuleSetter(),
            "__init__": __init__,
            "__module__": request_class.__module__,
        },
    )
    _route_classes[request_class] = found
    return found


def _on_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    from flask.globals import _cv_request

    # Flask turns the exception into a 500 itself; record what it swallowed.
    ctx = _cv_request.get(None)
    handle = None if ctx is None else ctx.request.environ.get(HANDLE_KEY)
    if handle is not None:
        handle.exception = exception


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Flask app; routes are labelled with their rules (/items/<int:item_id>).

    Set a custom ``app.request_class`` before calling this: pyobs subclasses it.
    """
    from flask import got_request_exception

    if getattr(app, "_pyobs_instrumented", False):
        return app
    config = _state.ensure_setup("flask", **options)
    if config.disabled:
        return app
    app.wsgi_app = ObservabilityMiddleware(app.wsgi_app, framework="flask", **options)
    app.request_class = _route_recording(app.request_class)
    got_request_exception.connect(_on_exception, app, weak=False)
    app._pyobs_instrumented = True
    return app
