"""FastAPI adapter: ``pyobs.fastapi.instrument(app)``."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pyobs import _internals
from pyobs.starlette import instrument_asgi


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a FastAPI app; routes are labelled with their templates (/items/{item_id}).

    Recent FastAPI releases make their own OTel SERVER span once a tracer provider exists
    (native telemetry). pyobs owns the request's span (one per request, redacted the pyobs
    way), so it turns FastAPI's request spans off; FastAPI's other telemetry is left alone.
    When it cannot (the shortcut is off), pyobs adopts FastAPI's span and puts its own
    request attributes, redacted and bounded, over FastAPI's.
    """

    def native_span_stays() -> bool:
        """True when FastAPI keeps its native span (pyobs adopts and redacts it)."""
        native = "telemetry" in inspect.signature(type(app).__init__).parameters
        if native and not _internals.fastapi_tracing_off(app):
            logging.getLogger("pyobs").warning(
                "pyobs: FastAPI's native telemetry makes the request's SERVER span, and "
                "pyobs adds to it; build the app with FastAPI(telemetry={'tracing': False}) "
                "to have pyobs make it"
            )
            return True
        return False

    return instrument_asgi(app, "fastapi", native_span_stays, **options)
