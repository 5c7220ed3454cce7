"""Flask-RESTful adapter: ``pyobs.flask_restful.instrument(api)``."""

from __future__ import annotations

from typing import Any

from pyobs import _integration
from pyobs import flask as pyobs_flask
from pyobs.wsgi import HANDLE_KEY


def _keep_answers(api: Any) -> None:
    """Flask-RESTful signals every error, 404s included: only a 5xx keeps its exception."""
    handle_error = api.handle_error

    def observed(exc: Exception) -> Any:
        response = handle_error(exc)
        if getattr(response, "status_code", 500) < 500:
            from flask import request

            handle = request.environ.get(HANDLE_KEY)
            if handle is not None:
                handle.exception = None
        return response

    api.handle_error = observed


def instrument(api: Any, **options: Any) -> Any:
    """Instrument a Flask-RESTful ``Api`` (or a plain Flask app); returns it.

    Resources are labelled with their Flask rules (``/items/<int:item_id>``). An ``Api``
    created without an app is instrumented when ``api.init_app(app)`` runs.
    """
    if not hasattr(api, "handle_error"):  # a plain Flask app
        return pyobs_flask.instrument(api, **options)
    if _integration.begin("flask-restful", api, options) is None:
        return api
    _keep_answers(api)
    if api.app is not None:
        pyobs_flask.instrument(api.app, **options)
        return api
    init_app = api.init_app

    def init_and_instrument(flask_app: Any) -> None:
        init_app(flask_app)
        pyobs_flask.instrument(flask_app, **options)

    api.init_app = init_and_instrument
    return api
