"""Tiny identical apps for every framework, and the instrumentation each benchmark config adds.

Every app serves ``GET /items/{item_id}`` (the benchmarked route) next to a few other routes, so
routing does realistic work. ``build(framework, config)`` returns a ``Target``: the app plus how
it is driven in-process (see ``overhead.py``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import threading
import time
import types
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

# Configurations measured for every framework, then its peers (when installed).
BASE_CONFIGS = ("bare", "pyobs-metrics", "pyobs-full")
# Two rows more (overhead.py and realserver.py --parts): pyobs-full without its access log,
# and without its span, so the cost of each signal in context is the difference to pyobs-full.
NO_LOG_CONFIG = "pyobs-full-no-log"
NO_SPAN_CONFIG = "pyobs-full-no-span"
PART_CONFIGS = (NO_LOG_CONFIG, NO_SPAN_CONFIG)
# The minimal metrics middleware (MinimalMetrics below) on a Flask app: realserver.py's floor.
MINIMAL_CONFIG = "minimal"
# What the contract asks of every request, written plainly (PlainContract below), on a Flask
# app: metrics only, and with the span and the access line too. The floors of the two targets.
PLAIN_CONFIG = "plain-contract"
PLAIN_FULL_CONFIG = "plain-contract-full"
FLOOR_CONFIGS = (MINIMAL_CONFIG, PLAIN_CONFIG, PLAIN_FULL_CONFIG)


def pyobs_signals(config: str) -> tuple[bool, bool]:
    """(tracing, access_log) for a configuration: pyobs-full and its variants have both, a
    part row lacks the one it names, every other configuration has neither."""
    full = config.startswith("pyobs-full")
    return full and config != NO_SPAN_CONFIG, full and config != NO_LOG_CONFIG


# framework -> (driver kind, pyobs adapter module, peer configurations)
FRAMEWORKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "flask": ("wsgi", "pyobs.flask", ("prometheus-flask-exporter", "otel-contrib")),
    "flask-restful": (
        "wsgi",
        "pyobs.flask_restful",
        ("prometheus-flask-exporter", "otel-contrib"),
    ),
    "django": ("wsgi", "pyobs.django", ("django-prometheus", "otel-contrib")),
    "drf": ("wsgi", "pyobs.django", ("django-prometheus", "otel-contrib")),
    "fastapi": (
        "asgi",
        "pyobs.fastapi",
        ("prometheus-fastapi-instrumentator", "starlette-exporter", "otel-contrib"),
    ),
    "starlette": ("asgi", "pyobs.starlette", ("starlette-exporter", "otel-contrib")),
    "tornado": ("tornado", "pyobs.tornado", ("otel-contrib",)),
    "falcon": ("wsgi", "pyobs.falcon", ("otel-contrib",)),
    "sanic": ("asgi", "pyobs.sanic", ()),  # no OTel contrib instrumentation for Sanic
    "pyramid": ("wsgi", "pyobs.pyramid", ("otel-contrib",)),
    "aiohttp": ("aiohttp", "pyobs.aiohttp", ("otel-contrib",)),
}

# Python modules each peer configuration needs (checked before a worker starts).
PEER_MODULES: dict[str, dict[str, str]] = {
    "prometheus-flask-exporter": {"*": "prometheus_flask_exporter"},
    "prometheus-fastapi-instrumentator": {"*": "prometheus_fastapi_instrumentator"},
    "starlette-exporter": {"*": "starlette_exporter"},
    "django-prometheus": {"*": "django_prometheus"},
    "otel-contrib": {
        "flask": "opentelemetry.instrumentation.flask",
        "flask-restful": "opentelemetry.instrumentation.flask",
        "django": "opentelemetry.instrumentation.django",
        "drf": "opentelemetry.instrumentation.django",
        "fastapi": "opentelemetry.instrumentation.fastapi",
        "starlette": "opentelemetry.instrumentation.starlette",
        "tornado": "opentelemetry.instrumentation.tornado",
        "falcon": "opentelemetry.instrumentation.falcon",
        "pyramid": "opentelemetry.instrumentation.pyramid",
        "aiohttp": "opentelemetry.instrumentation.aiohttp_server",
    },
}

# The framework itself, by import name (a missing one is reported, not fatal).
FRAMEWORK_MODULES = {
    "flask": "flask",
    "flask-restful": "flask_restful",
    "django": "django",
    "drf": "rest_framework",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "tornado": "tornado",
    "falcon": "falcon",
    "sanic": "sanic",
    "pyramid": "pyramid",
    "aiohttp": "aiohttp",
}

DRIVEN_AS = {
    "wsgi": "WSGI callable, environ built per request, body iterated and closed",
    "asgi": "ASGI callable on one event loop, scope/receive/send per request",
    "tornado": (
        "Application.start_request() delegate fed headers_received()+finish(), "
        "as tornado's HTTP/1 connection does, with an in-memory connection"
    ),
    "aiohttp": (
        "aiohttp's own server protocol (AppRunner.server()) fed raw HTTP/1.1 bytes "
        "over an in-memory transport, keep-alive: HTTP parsing included"
    ),
}

ITEM = {"id": 7, "name": "widget", "price": 9.5}
PEER_LABEL = {
    "otel-contrib": "OTel contrib",
}


@dataclass
class Target:
    """An app ready to drive, and how to drive it."""

    kind: str  # wsgi | asgi | tornado | aiohttp
    app: Any
    note: str = ""


def _item(item_id: int) -> dict[str, Any]:
    return {**ITEM, "id": item_id}


def missing_module(framework: str, config: str) -> str | None:
    """The module a (framework, config) needs that is not installed, else None."""
    needed = [FRAMEWORK_MODULES[framework]]
    if config.startswith("pyobs"):
        needed.append(FRAMEWORKS[framework][1])
    elif config not in ("bare", *FLOOR_CONFIGS):  # the floors are this module's
        table = PEER_MODULES[config]
        needed.append(table.get(framework, table.get("*", "")))
    for name in needed:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def build(framework: str, config: str) -> Target:
    """Build the framework's app instrumented as ``config`` says (pyobs.setup ran already)."""
    builder = globals()["_build_" + framework.replace("-", "_")]
    target: Target = builder(config)
    return target


# --- WSGI frameworks --------------------------------------------------------------------


# The least any WSGI metrics middleware does (context.py, and realserver.py's ``minimal``
# row): what pyobs metrics-only is measured against as a floor.
MINIMAL_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class MinimalMetrics:
    """The least a WSGI metrics middleware does: time the request to the body's close, and
    count it in one duration histogram per (method, route, status) under a lock, with an
    in-flight count. The route is read as pyobs's Flask adapter reads it."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.series: dict[tuple[Any, ...], list[Any]] = {}
        self.inflight: deque[None] = deque()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = _MinimalBody()
        body.owner, body.environ, body.start = self, environ, time.perf_counter()
        body.route = None
        self.inflight.append(None)

        def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            body.status = status
            # Read while Flask's request context is active: it takes its request out of the
            # environ when the context ends, before the server sends the body.
            rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
            body.route = None if rule is None else rule.rule
            return start_response(status, headers, *args)

        body.inner = self.app(environ, respond)
        return body

    def count(self) -> int:
        return sum(sum(buckets) for _, buckets in self.series.values())


class _MinimalBody:
    __slots__ = ("environ", "inner", "owner", "route", "start", "status")
    owner: MinimalMetrics
    environ: dict[str, Any]
    route: str | None
    inner: Iterable[bytes]
    start: float
    status: str

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
        duration = time.perf_counter() - self.start
        key = (self.environ["REQUEST_METHOD"], self.route, self.status)
        owner = self.owner
        series = owner.series.get(key)
        if series is None:
            series = owner.series.setdefault(key, [0.0, [0] * (len(MINIMAL_BOUNDS) + 1)])
        bucket = bisect_left(MINIMAL_BOUNDS, duration)
        with owner.lock:
            owner.inflight.pop()
            series[0] += duration
            series[1][bucket] += 1


# -- what the contract asks of a request, written plainly ---------------------------------

_STANDARD_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_NOT_OBSERVED = frozenset(("/metrics", "/health", "/healthz", "/ready", "/readyz", "/livez"))
_SIZE_BOUNDS = (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)
# Log correlation: a record logged inside the request finds its request id here.
PLAIN_REQUEST_ID: ContextVar[str | None] = ContextVar("plain_request_id", default=None)


class PlainContract(MinimalMetrics):
    """What the contract (metrics, and with ``full`` traces and the access log) asks of
    every request, written the plain way with public APIs only, and nothing more: no
    exposition, no multiprocess mode, no exemplars, no counting of its own faults, no
    redaction (the benchmarked request has no query string), no configuration.

    Per request: health and metrics paths left alone; ``X-Request-ID`` kept when safe, else a
    pooled random id, set in a context variable for log correlation and echoed; the method
    folded to ``_OTHER`` outside the standard set; the in-flight count per method; the body
    counted and its end noted (a client gone before it is 499); duration, response size
    (and request size when the request has a body) per (method, route, status), route
    ``<unmatched>`` when none matched; an escaping exception counted as 500. With ``full``:
    the duration's ``trace_id`` exemplar, the SERVER span through the OTel SDK's public API
    (W3C parent when ``traceparent`` is sent, current while the app runs, the contract's
    attributes, named after the route, ERROR on 5xx), and one ECS JSON access line per
    request written to stdout with one system call, counted per level.
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], full: bool = False, tracer: Any = None
    ) -> None:
        super().__init__(app)
        self.full = full
        self.inflight_by_method: dict[str, deque[None]] = {}
        self.sizes: dict[tuple[str, str, int], list[Any]] = {}
        self.request_sizes: dict[tuple[str, str], list[Any]] = {}
        self.lines: dict[str, int] = {}
        self.exemplars: dict[tuple[str, str, int], tuple[int, float]] = {}
        self.ids: list[str] = []
        self.tracer: Any = None
        self.pid = os.getpid()
        self.second = -1
        self.stamp = ""
        if full:  # the OTel API's functions, looked up once
            from opentelemetry import context, propagate, trace

            self.tracer = tracer or trace.get_tracer("plain-contract")
            self.attach, self.detach = context.attach, context.detach
            self.extract = propagate.extract
            self.in_context, self.server = trace.set_span_in_context, trace.SpanKind.SERVER
            self.error = trace.Status(trace.StatusCode.ERROR)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in _NOT_OBSERVED:
            return self.app(environ, start_response)
        request_id = environ.get("HTTP_X_REQUEST_ID")
        if request_id is None or _SAFE_ID.fullmatch(request_id) is None:
            ids = self.ids
            if not ids:
                pool = os.urandom(16 * 256).hex()
                ids.extend(pool[i : i + 32] for i in range(0, len(pool), 32))
            request_id = ids.pop()
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in _STANDARD_METHODS:
            method = "_OTHER"
        body = _PlainBody()
        body.owner, body.environ, body.method, body.request_id = self, environ, method, request_id
        body.path, body.status, body.size, body.sent, body.span = path, 500, 0, False, None
        body.route = None
        inflight = self.inflight_by_method.get(method)
        if inflight is None:
            inflight = self.inflight_by_method.setdefault(method, deque())
        inflight.append(None)
        token = PLAIN_REQUEST_ID.set(request_id)
        context_token = None
        if self.full:
            parent = None
            if "HTTP_TRACEPARENT" in environ:
                parent = self.extract(
                    {k[5:].lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
                )
            body.span = self.tracer.start_span(
                method,
                parent,
                self.server,
                {
                    "http.request.method": method,
                    "url.path": path,
                    "url.scheme": environ.get("wsgi.url_scheme", "http"),
                    "server.address": environ.get("SERVER_NAME", ""),
                    "server.port": int(environ.get("SERVER_PORT") or 0),
                    "client.address": environ.get("REMOTE_ADDR", ""),
                    "user_agent.original": environ.get("HTTP_USER_AGENT", ""),
                    "network.protocol.version": environ.get("SERVER_PROTOCOL", "")[5:],
                },
            )
            context_token = self.attach(self.in_context(body.span))
        body.start = time.perf_counter()

        def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            body.status = int(status[:3])
            rule = getattr(environ.get("werkzeug.request"), "url_rule", None)  # as minimal's
            body.route = None if rule is None else rule.rule
            return start_response(status, [*headers, ("X-Request-ID", request_id)], *args)

        try:
            body.inner = self.app(environ, respond)
        except BaseException:
            body.status, body.inner, body.sent = 500, (), True
            body.close()
            raise
        finally:
            if context_token is not None:
                self.detach(context_token)
            PLAIN_REQUEST_ID.reset(token)
        return body

    def timestamp(self) -> str:
        """Now as ECS's @timestamp (UTC, milliseconds); the seconds formatted once each."""
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.stamp}.{int((now - second) * 1000):03d}Z"


class _PlainBody(_MinimalBody):
    __slots__ = ("method", "path", "request_id", "sent", "size", "span")
    owner: PlainContract
    method: str
    path: str
    request_id: str
    sent: bool
    size: int
    span: Any
    status: int  # type: ignore[assignment]

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.size += len(chunk)
            yield chunk
        self.sent = True

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.record()

    def record(self) -> None:
        duration = time.perf_counter() - self.start
        environ, owner, method = self.environ, self.owner, self.method
        matched = self.route
        route = "<unmatched>" if matched is None else matched
        status = self.status if self.sent else 499
        key = (method, route, status)
        series = owner.series.get(key)
        if series is None:
            series = owner.series.setdefault(key, [0.0, [0] * (len(MINIMAL_BOUNDS) + 1)])
            owner.sizes[key] = [0, [0] * (len(_SIZE_BOUNDS) + 1)]
        sizes = owner.sizes[key]
        bucket = bisect_left(MINIMAL_BOUNDS, duration)
        size_bucket = bisect_left(_SIZE_BOUNDS, self.size)
        length = environ.get("CONTENT_LENGTH")
        full = owner.full
        if full:  # the access line's level, counted with the request
            level = "info" if status < 400 else "warning" if status < 500 else "error"
        with owner.lock:
            owner.inflight_by_method[method].pop()
            series[0] += duration
            series[1][bucket] += 1
            sizes[0] += self.size
            sizes[1][size_bucket] += 1
            if length:
                request = owner.request_sizes.setdefault(
                    (method, route), [0, [0] * (len(_SIZE_BOUNDS) + 1)]
                )
                request[0] += int(length)
                request[1][bisect_left(_SIZE_BOUNDS, int(length))] += 1
            if full:
                owner.lines[level] = owner.lines.get(level, 0) + 1
        span = self.span
        if span is None:
            return
        span.update_name(f"{method} {route}" if matched is not None else method)
        if matched is not None:
            span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(owner.error)
            span.set_attribute("error.type", str(status))
        span.end()
        ids = span.get_span_context()
        owner.exemplars[key] = (ids.trace_id, duration)  # the duration's trace_id exemplar
        line = {
            "@timestamp": owner.timestamp(),
            "log.level": level,
            "message": f"{method} {self.path} {status}",
            "ecs.version": "8.17.0",
            "service.name": "bench",
            "service.version": "0",
            "service.environment": "bench",
            "log.logger": "pyobs.access",
            "process.pid": owner.pid,
            "trace.id": f"{ids.trace_id:032x}",
            "span.id": f"{ids.span_id:016x}",
            "http.request.id": self.request_id,
            "http.request.method": method,
            "url.path": self.path,
            "http.route": route,
            "http.response.status_code": status,
            "http.response.body.bytes": self.size,
            "event.duration": int(duration * 1e9),
            "client.ip": environ.get("REMOTE_ADDR"),
            "user_agent.original": environ.get("HTTP_USER_AGENT"),
        }
        os.write(1, (json.dumps(line, separators=(",", ":")) + "\n").encode())


def _flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, Any]:
        return _item(item_id)

    @app.get("/users/<name>")
    def get_user(name: str) -> dict[str, Any]:
        return {"name": name}

    @app.post("/items")
    def create_item() -> tuple[dict[str, Any], int]:
        return _item(1), 201

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _instrument_flask(app: Any, config: str) -> None:
    if config.startswith("pyobs"):
        import pyobs.flask

        pyobs.flask.instrument(app)
    elif config == MINIMAL_CONFIG:
        app.wsgi_app = MinimalMetrics(app.wsgi_app)
    elif config in (PLAIN_CONFIG, PLAIN_FULL_CONFIG):
        app.wsgi_app = PlainContract(app.wsgi_app, full=config == PLAIN_FULL_CONFIG)
    elif config == "prometheus-flask-exporter":
        from prometheus_flask_exporter import PrometheusMetrics

        PrometheusMetrics(app)
    elif config == "otel-contrib":
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app)  # type: ignore[no-untyped-call]


def _build_flask(config: str) -> Target:
    app = _flask_app()
    _instrument_flask(app, config)
    return Target("wsgi", app)


def _build_flask_restful(config: str) -> Target:
    from flask import Flask
    from flask_restful import Api, Resource

    class Item(Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> dict[str, Any]:
            return _item(item_id)

    class User(Resource):  # type: ignore[misc]
        def get(self, name: str) -> dict[str, Any]:
            return {"name": name}

    app = Flask("bench")
    api = Api(app)
    api.add_resource(Item, "/items/<int:item_id>")
    api.add_resource(User, "/users/<name>")
    if config.startswith("pyobs"):
        adapter = importlib.import_module("pyobs.flask_restful")
        adapter.instrument(api)
    else:
        _instrument_flask(app, config)
    return Target("wsgi", app)


def _django_middleware(config: str) -> tuple[list[str], list[str]]:
    """(MIDDLEWARE, the INSTALLED_APPS it needs beyond the base ones) for a configuration."""
    middleware = [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    if config.startswith("pyobs"):
        return ["pyobs.django.ObservabilityMiddleware", *middleware], []
    if config == "django-prometheus":
        before = "django_prometheus.middleware.PrometheusBeforeMiddleware"
        after = "django_prometheus.middleware.PrometheusAfterMiddleware"
        return [before, *middleware, after], ["django_prometheus"]
    return middleware, []


def _django_setup(middleware: list[str], extra_apps: list[str], drf: bool, otel: bool) -> None:
    """Configure Django once for this process, and the benchmark's URLconf."""
    import django
    from django.conf import settings
    from django.http import JsonResponse
    from django.urls import path

    apps = ["django.contrib.contenttypes", "django.contrib.auth", *extra_apps]
    if drf:
        apps.append("rest_framework")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="bench_urls",
        MIDDLEWARE=middleware,
        INSTALLED_APPS=apps,
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "UNAUTHENTICATED_USER": None,
        },
    )
    if otel:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()  # inserts its middleware into settings.MIDDLEWARE
    django.setup()

    urls = types.ModuleType("bench_urls")
    if drf:
        from rest_framework.response import Response
        from rest_framework.views import APIView

        class ItemView(APIView):  # type: ignore[misc]
            def get(self, request: Any, item_id: int) -> Any:
                return Response(_item(item_id))

        class UserView(APIView):  # type: ignore[misc]
            def get(self, request: Any, name: str) -> Any:
                return Response({"name": name})

        item_view: Any = ItemView.as_view()
        user_view: Any = UserView.as_view()
    else:

        def item_view(request: Any, item_id: int) -> Any:
            return JsonResponse(_item(item_id))

        def user_view(request: Any, name: str) -> Any:
            return JsonResponse({"name": name})

    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("items/<int:item_id>", item_view),
        path("users/<str:name>", user_view),
    ]
    sys.modules["bench_urls"] = urls


def _django_app(config: str, drf: bool) -> Target:
    middleware, extra_apps = _django_middleware(config)
    _django_setup(middleware, extra_apps, drf, otel=config == "otel-contrib")
    from django.core.wsgi import get_wsgi_application

    return Target("wsgi", get_wsgi_application())


def build_many(framework: str, configs: list[str]) -> dict[str, Target]:
    """Apps for several configurations served side by side in one process.

    Django's settings exist once per process, so its apps share them: INSTALLED_APPS holds
    every app any of the configurations needs, and each configuration gets its own
    request handler, built while MIDDLEWARE is its own list (a handler reads MIDDLEWARE
    once, when it is made). OTel contrib's Django instrumentation patches the settings
    for the whole process, so it cannot be one of them.
    """
    if framework not in ("django", "drf"):
        return {config: build(framework, config) for config in configs}
    if "otel-contrib" in configs:
        raise ValueError("otel-contrib's Django instrumentation acts on the whole process")
    lists = {config: _django_middleware(config) for config in configs}
    extra_apps = sorted({app for _, apps in lists.values() for app in apps})
    _django_setup(lists[configs[0]][0], extra_apps, framework == "drf", otel=False)
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    targets = {}
    for config, (middleware, _) in lists.items():
        with override_settings(MIDDLEWARE=middleware):
            targets[config] = Target("wsgi", WSGIHandler())
    return targets


def _build_django(config: str) -> Target:
    return _django_app(config, drf=False)


def _build_drf(config: str) -> Target:
    return _django_app(config, drf=True)


def _build_falcon(config: str) -> Target:
    if config == "otel-contrib":
        from opentelemetry.instrumentation.falcon import FalconInstrumentor

        FalconInstrumentor().instrument()  # patches falcon.App: must precede the app
    import falcon

    class ItemResource:
        def on_get(self, req: Any, resp: Any, item_id: int) -> None:
            resp.media = _item(item_id)

    class UserResource:
        def on_get(self, req: Any, resp: Any, name: str) -> None:
            resp.media = {"name": name}

    app = falcon.App()
    app.add_route("/items/{item_id:int}", ItemResource())
    app.add_route("/users/{name}", UserResource())
    if config.startswith("pyobs"):
        adapter = importlib.import_module("pyobs.falcon")
        app = adapter.instrument(app) or app
    return Target("wsgi", app)


def _build_pyramid(config: str) -> Target:
    if config == "otel-contrib":
        from opentelemetry.instrumentation.pyramid import PyramidInstrumentor

        PyramidInstrumentor().instrument()  # patches Configurator: must precede it
    from pyramid.config import Configurator

    def item_view(request: Any) -> dict[str, Any]:
        return _item(int(request.matchdict["item_id"]))

    def user_view(request: Any) -> dict[str, Any]:
        return {"name": request.matchdict["name"]}

    with Configurator() as cfg:
        if config.startswith("pyobs"):
            cfg.include("pyobs.pyramid")
        cfg.add_route("item", "/items/{item_id}")
        cfg.add_route("user", "/users/{name}")
        cfg.add_view(item_view, route_name="item", renderer="json")
        cfg.add_view(user_view, route_name="user", renderer="json")
        app = cfg.make_wsgi_app()
    return Target("wsgi", app)


# --- ASGI frameworks --------------------------------------------------------------------


def _fastapi_app(native_tracing: bool) -> Any:
    """FastAPI with its native telemetry off, except tracing when ``native_tracing``.

    Native metrics and logs stay off everywhere: with FastAPI's defaults each request checks
    the OTel meter and logger providers, a cost of FastAPI's own that is the same with or
    without an instrumentation, so it would only blur the comparison.
    """
    from fastapi import FastAPI

    kwargs: dict[str, Any] = {
        "telemetry": {"tracing": native_tracing, "metrics": False, "logs": False}
    }
    try:
        app = FastAPI(**kwargs)
    except TypeError:  # a FastAPI release without native telemetry
        app = FastAPI()

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return _item(item_id)

    @app.get("/users/{name}")
    async def get_user(name: str) -> dict[str, Any]:
        return {"name": name}

    @app.post("/items", status_code=201)
    async def create_item() -> dict[str, Any]:
        return _item(1)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _build_fastapi(config: str) -> Target:
    # Every app has FastAPI's native metrics and logs telemetry off. Native tracing is off for
    # the bare and Prometheus-peer apps; pyobs-full and otel-contrib keep it on as by default,
    # pyobs switches it off itself and FastAPI stands down for contrib's middleware
    # (overhead.py counts spans by scope).
    app = _fastapi_app(native_tracing=config in ("otel-contrib", "pyobs-full"))
    note = (
        "FastAPI's native metrics/logs telemetry off everywhere; native tracing on for "
        "pyobs-full (pyobs turns it off) and otel-contrib (spans by scope show FastAPI "
        "standing down), off for the others"
    )
    if config.startswith("pyobs"):
        import pyobs.fastapi

        pyobs.fastapi.instrument(app)
    elif config == "prometheus-fastapi-instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app)
    elif config == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    elif config == "otel-contrib":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    return Target("asgi", app, note)


def _build_starlette(config: str) -> Target:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def get_item(request: Request) -> JSONResponse:
        return JSONResponse(_item(request.path_params["item_id"]))

    async def get_user(request: Request) -> JSONResponse:
        return JSONResponse({"name": request.path_params["name"]})

    app = Starlette(
        routes=[
            Route("/items/{item_id:int}", get_item),
            Route("/users/{name}", get_user),
        ]
    )
    if config.startswith("pyobs"):
        import pyobs.starlette

        pyobs.starlette.instrument(app)
    elif config == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware

        app.add_middleware(PrometheusMiddleware)
    elif config == "otel-contrib":
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor

        StarletteInstrumentor.instrument_app(app)
    return Target("asgi", app)


def _build_sanic(config: str) -> Target:
    from sanic import Sanic
    from sanic.response import json

    Sanic.test_mode = True  # no signal handlers, no banner
    app = Sanic("bench", configure_logging=False)
    app.config.MOTD = False
    app.config.ACCESS_LOG = False

    @app.get("/items/<item_id:int>")
    async def get_item(request: Any, item_id: int) -> Any:
        return json(_item(item_id))

    @app.get("/users/<name:str>")
    async def get_user(request: Any, name: str) -> Any:
        return json({"name": name})

    if config.startswith("pyobs"):
        adapter = importlib.import_module("pyobs.sanic")
        adapter.instrument(app)
    return Target("asgi", app, "Sanic in ASGI mode (lifespan run first)")


# --- tornado and aiohttp ----------------------------------------------------------------


def _build_tornado(config: str) -> Target:
    if config == "otel-contrib":
        from opentelemetry.instrumentation.tornado import TornadoInstrumentor

        # It patches Application and RequestHandler.
        TornadoInstrumentor().instrument()  # type: ignore[no-untyped-call]
    import tornado.web

    class ItemHandler(tornado.web.RequestHandler):
        def get(self, item_id: str) -> None:
            self.write(_item(int(item_id)))

    class UserHandler(tornado.web.RequestHandler):
        def get(self, name: str) -> None:
            self.write({"name": name})

    app = tornado.web.Application(
        [(r"/items/(\d+)", ItemHandler), (r"/users/([^/]+)", UserHandler)],
        log_function=lambda handler: None,  # the bare app writes no access log either
    )
    if config.startswith("pyobs"):
        adapter = importlib.import_module("pyobs.tornado")
        app = adapter.instrument(app) or app
    return Target("tornado", app)


def _build_aiohttp(config: str) -> Target:
    if config == "otel-contrib":
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        AioHttpServerInstrumentor().instrument()  # replaces web.Application: must precede it
    from aiohttp import web

    async def get_item(request: Any) -> Any:
        return web.json_response(_item(int(request.match_info["item_id"])))

    async def get_user(request: Any) -> Any:
        return web.json_response({"name": request.match_info["name"]})

    app = web.Application()
    app.router.add_get(r"/items/{item_id:\d+}", get_item)
    app.router.add_get("/users/{name}", get_user)
    if config.startswith("pyobs"):
        adapter = importlib.import_module("pyobs.aiohttp")
        app = adapter.instrument(app) or app
    return Target("aiohttp", app)
