"""pyobs applied to each real app the way docs/frameworks.md documents it.

Each hook runs right after the app's module is imported (probe.py) and does what the app's
author would write in that module: one ``instrument()`` call, or the middleware first in
Django's ``MIDDLEWARE``. Nothing else: no PYOBS_ variable, default logging mode (auto).
"""

from __future__ import annotations

import functools
from typing import Any


def flower(module: Any) -> None:
    """Flower (Tornado): ``pyobs.tornado.instrument(application)`` on every Flower app made."""
    import pyobs.tornado

    init = module.Flower.__init__

    @functools.wraps(init)
    def instrumented(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        pyobs.tornado.instrument(self)

    module.Flower.__init__ = instrumented


def healthchecks(module: Any) -> None:
    """healthchecks (Django): the middleware first in MIDDLEWARE (hc/settings.py)."""
    module.MIDDLEWARE = ["pyobs.django.ObservabilityMiddleware", *module.MIDDLEWARE]


def aiohttp_chat(module: Any) -> None:
    """aiohttp-demos chat: ``pyobs.aiohttp.instrument(app)`` on the app init_app() builds."""
    import pyobs.aiohttp

    init_app = module.init_app

    @functools.wraps(init_app)
    async def instrumented(*args: Any, **kwargs: Any) -> Any:
        app = await init_app(*args, **kwargs)
        pyobs.aiohttp.instrument(app)
        return app

    module.init_app = instrumented


def fastapi_nano(module: Any) -> None:
    """fastapi-nano (FastAPI): ``pyobs.fastapi.instrument(app)`` on the app create_app() builds."""
    import pyobs.fastapi

    create_app = module.create_app

    @functools.wraps(create_app)
    def instrumented(*args: Any, **kwargs: Any) -> Any:
        return pyobs.fastapi.instrument(create_app(*args, **kwargs))

    module.create_app = instrumented
    module.app = pyobs.fastapi.instrument(module.app)
