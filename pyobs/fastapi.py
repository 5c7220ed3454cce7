"""FastAPI adapter: ``pyobs.fastapi.instrument(app)``."""

from __future__ import annotations

from typing import Any

from pyobs.starlette import instrument_asgi


def instrument(app: Any, **options: Any) -> Any:
    """Instrument a FastAPI app; routes are labelled with their templates (/items/{item_id}).

    Recent FastAPI releases create their own OTel SERVER span once a tracer provider exists.
    pyobs owns the request's server span, so it switches FastAPI's native tracing off (one
    span per request, as the contract promises); FastAPI's other telemetry is left alone.
    """
    telemetry = getattr(app, "_telemetry", None)
    if isinstance(telemetry, dict) and "tracing" in telemetry:
        telemetry["tracing"] = False
    return instrument_asgi(app, "fastapi", **options)
