"""Ready logging configs that make a server's own lines ECS JSON and turn its access log off.

pyobs writes the access log (``pyobs.access``, with trace ids and redaction), so the server's
own access logger goes to a NullHandler; its other loggers (start-up, errors) go to the root's
ECS JSON stdout handler. The JSON files beside this module (for ``uvicorn --log-config`` and
``gunicorn --log-config-json``) are ``server_config(name)`` written out; ``pyobs logconfig``
prints any of them at another level.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from pyobs.logs import dict_config

# server -> (its own loggers kept at INFO as the server sets them, its access logger)
SERVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "uvicorn": (("uvicorn", "uvicorn.error"), "uvicorn.access"),
    "gunicorn": (("gunicorn.error",), "gunicorn.access"),
    "tornado": ((), "tornado.access"),
    "aiohttp": ((), "aiohttp.access"),
    "sanic": (("sanic.root", "sanic.error", "sanic.server", "sanic.websockets"), "sanic.access"),
}


def server_config(server: str, level: str = "WARNING") -> dict[str, Any]:
    """The dictConfig for ``server`` (one of SERVERS); ``level`` is the root's (the app's) level.

    The server's own loggers stay at INFO, as the server configures them by default;
    ``propagate`` sends their records to the root's ECS handler, and none keeps a handler of
    its own, so no line is written twice.
    """
    try:
        own, access = SERVERS[server]
    except KeyError:
        raise ValueError(f"unknown server {server!r}; known: {', '.join(SERVERS)}") from None
    loggers: dict[str, dict[str, Any]] = {
        name: {"level": "INFO", "handlers": [], "propagate": True} for name in own
    }
    # Off: a NullHandler (so Python's last resort does not print it), no propagation, and a
    # level above INFO so the server skips building the line at all.
    loggers[access] = {"level": "WARNING", "handlers": ["null"], "propagate": False}
    return dict_config(level, loggers=loggers)


def path(server: str) -> str:
    """The shipped JSON file for ``server`` (root level WARNING), for ``--log-config``."""
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
    return str(resources.files(__package__).joinpath(f"{server}.json"))
