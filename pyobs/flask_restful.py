"""Flask-RESTful adapter: ``pyobs.flask_restful.instrument(api)``."""

from __future__ import annotations

from typing import Any

from pyobs import _state
from pyobs import flask as pyobs_flask


def instrument(api: Any, **options: Any) -> Any:
    """Instrument a Flask-RESTful ``Api`` (or a plain Flask app); returns it.

    Resources are labelled with their Flask rules (``/items/<int:item_id>``). Flask-RESTful
    turns exceptions into 500 responses itself but still signals them, so they are counted.
    An ``Api`` created without an app is instrumented when ``api.init_app(app)`` runs.
    """
    config = _state.ensure_setup("flask-restful", **options)
    if config.disabled:
        return api
    app = getattr(api, "app", api)
    if app is not None and hasattr(app, "wsgi_app"):
        pyobs_flask.instrument(app, **options)
        return api
    init_app = api.init_app

    def init_and_instrument(flask_app: Any) -> None:
        init_app(flask_app)
        pyobs_flask.instrument(flask_app, **options)

    api.init_app = init_and_instrument
    return api
