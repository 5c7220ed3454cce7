"""Flask adapter: ``pyobs.flask.instrument(app)``.

Only public APIs: the request object Werkzeug puts in the environ
(``environ["werkzeug.request"]``, Flask's ``request``), its ``url_rule``,
``has_request_context()``, the ``got_request_exception`` signal and the app's URL map.
"""

from __future__ import annotations

from typing import Any

from pyobs import _integration
from pyobs.wsgi import HANDLE_KEY, Environ, ObservabilityMiddleware

# flask.has_request_context and flask.request, imported by instrument().
_has_context: Any = None
_request: Any = None


def _matched_rule(environ: Environ) -> str | None:
    """The rule Flask matched for this request (/items/<int:item_id>), None when none did.

    Flask's request object is in the environ (Werkzeug's documented
    ``environ["werkzeug.request"]``), so the rule is one attribute read away: no request
    context or proxy lookup, and it is still there after Flask dropped its context. Without
    a rule there (a request class that does not put itself there, another library's request
    object, no match) Flask's request context is asked.
    """
    rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
    if rule is None:  # not Flask's request (a test client's), or no rule matched
        return _context_rule(environ)
    return str(rule.rule)


def _context_rule(environ: Environ) -> str | None:
    """The rule read through Flask's request context (asked while it is active)."""
    if not _has_context() or _request.environ is not environ:
        return None  # no context, or another request's (an outer app's)
    rule = _request.url_rule
    return None if rule is None else str(rule.rule)


def _on_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    # Flask turns the exception into a 500 itself; record what it swallowed. With
    # PROPAGATE_EXCEPTIONS no response is started, so the route is taken here too.
    if not _has_context():
        return
    environ = _request.environ
    handle = environ.get(HANDLE_KEY)
    if handle is not None:
        handle.exception = exception
        if handle.route is None:
            handle.route = _matched_rule(environ)


def serves(app: Any, path: str) -> bool:
    """True when one of the app's rules is exactly this path (a catch-all does not count)."""
    return any(rule.rule == path for rule in app.url_map.iter_rules())


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a Flask app; routes are labelled with their rules (/items/<int:item_id>)."""
    global _has_context, _request
    from flask import got_request_exception, has_request_context, request

    _has_context, _request = has_request_context, request
    if _integration.begin("flask", app, options) is None:
        return app
    app.wsgi_app = ObservabilityMiddleware(
        app.wsgi_app,
        route_resolver=_matched_rule,
        framework="flask",
        app_serves=lambda environ: serves(app, environ["PATH_INFO"]),
        **options,
    )
    got_request_exception.connect(_on_exception, app, weak=False)
    return app
