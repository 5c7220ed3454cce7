"""Every field of pyobs's per-request objects is set while, and after, a request runs.

The request handle (and the WSGI body, the ASGI exchange built on it) and the request facts
are slotted, with no defaults on their classes, so the interpreter reads each field in one
guarded step; whoever makes one sets every field. A field left unset would raise
AttributeError in the middle of a request: pyobs would count an internal error and a
signal would lose the request. These tests read every field of the objects the WSGI and
ASGI middlewares and ``RequestObserver.start()`` make, with every signal and with metrics
only, from inside the app and once the response is over. What they cannot show is the
speed itself (see docs/benchmarks.md for the measurement).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from tests.helpers import asgi_get_scope

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "metrics-only": {"tracing": False, "access_log": False},
}


def _errors() -> float:
    """Every pyobs_internal_errors_total sample, summed."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "pyobs_internal_errors"
        for sample in family.samples
        if sample.name == "pyobs_internal_errors_total"
    )


def _slots(obj: object) -> list[str]:
    return [name for cls in type(obj).__mro__ for name in cls.__dict__.get("__slots__", ())]


def _read_all(obj: object, lazy: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every slot's value (AttributeError for one never set), ``lazy`` ones left out."""
    assert not hasattr(obj, "__dict__"), f"{type(obj).__name__} instances have a __dict__"
    return {name: getattr(obj, name) for name in _slots(obj) if name not in lazy}


def _check(handle: Any, lazy: tuple[str, ...] = ()) -> dict[str, Any]:
    # A metrics-only handle makes its facts when first asked (its _facts slot until then).
    fields = _read_all(handle, lazy=("_facts", *lazy))
    _read_all(handle.facts)
    return fields


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_wsgi_handles_have_every_field_set(config: str) -> None:
    from pyobs import testing
    from pyobs.wsgi import HANDLE_KEY, ObservabilityMiddleware

    testing.reset()
    before = _errors()
    seen: list[tuple[Any, dict[str, Any]]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        handle = environ[HANDLE_KEY]
        # The body the server gets (``inner``: the app's) is set once the app returned it.
        seen.append((handle, _check(handle, lazy=("inner",))))
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    wrapped = ObservabilityMiddleware(app, framework="wsgi", **CONFIGS[config])
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/orders",
        "SERVER_NAME": "shop.local",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    statuses: list[str] = []
    body = wrapped(environ, lambda status, headers, *exc: statuses.append(status))
    assert b"".join(body) == b"made"
    body.close()  # type: ignore[attr-defined]
    ((handle, during),) = seen
    assert statuses == ["201 Created"]
    assert during["status"] is None and during["finished"] is False
    after = _check(handle)
    assert after["status"] == 201 and after["finished"] is True
    assert after["response_bytes"] == 4 and after["route"] is None
    assert _errors() == before


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_asgi_handles_have_every_field_set(config: str) -> None:
    from pyobs import testing
    from pyobs.asgi import HANDLE_KEY, ObservabilityMiddleware

    testing.reset()
    before = _errors()
    seen: list[tuple[Any, dict[str, Any]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        handle = scope[HANDLE_KEY]
        seen.append((handle, _check(handle)))
        await receive()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"queued"})

    wrapped = ObservabilityMiddleware(app, framework="asgi", **CONFIGS[config])
    scope = asgi_get_scope("/jobs/7", "shop.local")
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(wrapped(scope, receive, send))
    ((handle, during),) = seen
    assert sent[0]["status"] == 202
    assert during["status"] is None and during["finished"] is False
    after = _check(handle)
    assert after["status"] == 202 and after["finished"] is True
    assert after["response_bytes"] == len(b"queued")
    assert _errors() == before


def test_handles_the_observer_makes_have_every_field_set() -> None:
    """The handle Django, Tornado, aiohttp, Sanic and Pyramid adapters get from start()."""
    from pyobs import testing
    from pyobs._observer import RequestFacts
    from pyobs._state import ensure_setup, get_observer

    testing.reset()
    before = _errors()
    ensure_setup("django")
    observer = get_observer()
    assert observer is not None
    handle = observer.start(RequestFacts("DELETE", "/carts/3", {"user-agent": "probe/1"}))
    assert handle is not None
    during = _check(handle)
    assert during["user_agent"] == "probe/1" and during["exception"] is None
    handle.route = "/carts/<id>"
    observer.finish(handle, 204)
    observer.detach(handle)
    after = _check(handle)
    assert after["finished"] is True and after["counted"] is False
    assert _errors() == before
