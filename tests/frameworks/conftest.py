"""The framework matrix of the contract suite and the fixture that serves one tiny app."""

from __future__ import annotations

import http.client
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.frameworks import apps, servers

EXCLUDED = r"/items/9\d+"
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Framework:
    """One row of the matrix: how to build and serve the app, and what its route looks like."""

    name: str
    modules: tuple[str, ...]
    build: Callable[[], Any]
    serve: Callable[[Any], AbstractContextManager[str]]
    item_route: str
    info: str
    websocket: bool = False


FRAMEWORKS = [
    Framework("flask", ("flask",), apps.flask_app, servers.werkzeug_server,
              "/items/<int:item_id>", "flask"),
    Framework("flask-restful", ("flask_restful",), apps.flask_restful_app,
              servers.werkzeug_server, "/items/<int:item_id>", "flask-restful"),
    Framework("django", ("django",), apps.django_app, servers.django_server,
              "/items/<int:item_id>", "django"),
    Framework("django-asgi", ("django", "uvicorn"), apps.django_asgi_app,
              servers.uvicorn_server, "/items/<int:item_id>", "django"),
    Framework("drf", ("django", "rest_framework"), apps.drf_app, servers.django_server,
              "/items/(?P<pk>[^/.]+)", "django"),
    Framework("fastapi", ("fastapi", "uvicorn"), apps.fastapi_app, servers.uvicorn_server,
              "/items/{item_id}", "fastapi", websocket=True),
    Framework("starlette", ("starlette", "uvicorn"), apps.starlette_app,
              servers.uvicorn_server, "/items/{item_id:int}", "starlette", websocket=True),
    Framework("tornado", ("tornado",), apps.tornado_app, servers.tornado_server,
              "/items/([0-9]+)", "tornado", websocket=True),
    Framework("falcon", ("falcon",), apps.falcon_app, servers.wsgiref_server,
              "/items/{item_id:int}", "falcon"),
    Framework("falcon-asgi", ("falcon", "uvicorn"), apps.falcon_asgi_app,
              servers.uvicorn_server, "/items/{item_id:int}", "falcon", websocket=True),
    Framework("sanic", ("sanic",), apps.sanic_app, servers.sanic_server,
              "/items/<item_id:int>", "sanic", websocket=True),
    Framework("pyramid", ("pyramid",), apps.pyramid_app, servers.wsgiref_server,
              "/items/{item_id}", "pyramid"),
    Framework("aiohttp", ("aiohttp",), apps.aiohttp_app, servers.aiohttp_server,
              "/items/{item_id}", "aiohttp", websocket=True),
]  # fmt: skip


class _Capture(logging.Handler):
    """Keeps every record as the ECS dict pyobs would print (context captured at emit time)."""

    def __init__(self) -> None:
        super().__init__()
        from pyobs.logs import ECSFormatter

        self.formatter_ = ECSFormatter()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.formatter_.to_dict(record))


@dataclass
class Served:
    """A running instrumented app and what it produced."""

    framework: Framework
    url: str
    logs: list[dict[str, Any]]
    spans: Any
    _metrics_cache: str = field(default="", repr=False)

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        parsed = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(
            parsed.hostname or "", parsed.port, timeout=REQUEST_TIMEOUT
        )
        try:
            conn.request("GET", path, headers={"User-Agent": "contract-suite/1", **(headers or {})})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def metrics(self) -> str:
        status, _, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one sample in a fresh scrape, or None when it is absent."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def access_logs(self, path: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.logs
            if r.get("log.logger") == "pyobs.access" and (path is None or r["url.path"] == path)
        ]

    def wait_for(self, check: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``check`` (bounded): servers record some things just after the response."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return check()


def serve(framework: Framework, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Build the framework's tiny app, instrumented, and serve it on a free loopback port."""
    for module in framework.modules:
        import_or_require(module)
    monkeypatch.setenv("PYOBS_SERVICE_NAME", "contract")
    monkeypatch.setenv("PYOBS_EXCLUDED_PATHS", EXCLUDED)
    from pyobs import testing

    app = framework.build()
    exporter = testing.span_exporter()
    exporter.clear()
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        with framework.serve(app) as url:
            yield Served(framework, url, capture.records, exporter)
    finally:
        root.removeHandler(capture)


serving = contextmanager(serve)


@pytest.fixture(params=FRAMEWORKS, ids=[f.name for f in FRAMEWORKS])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """Every framework's tiny app, one at a time."""
    yield from serve(request.param, monkeypatch)


WEBSOCKET_FRAMEWORKS = [f for f in FRAMEWORKS if f.websocket]


@pytest.fixture(params=WEBSOCKET_FRAMEWORKS, ids=[f.name for f in WEBSOCKET_FRAMEWORKS])
def served_ws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The tiny app of every framework that has WebSockets."""
    yield from serve(request.param, monkeypatch)


def by_name(name: str) -> Framework:
    """One row of the matrix, for framework-specific quirk tests."""
    return next(f for f in FRAMEWORKS if f.name == name)
