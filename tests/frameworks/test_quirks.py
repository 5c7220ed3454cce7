"""Framework-specific behaviour that the shared contract suite cannot express."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.frameworks import servers
from tests.frameworks.conftest import FRAMEWORKS, Framework, Served, by_name, serve, serving

WSGI_SERVERS = (servers.werkzeug_server, servers.django_server, servers.wsgiref_server)
ASYNC = [f for f in FRAMEWORKS if f.serve not in WSGI_SERVERS]


@pytest.fixture
def drf(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    yield from serve(by_name("drf"), monkeypatch)


def test_drf_view_and_action_are_on_the_span(drf: Served) -> None:
    """A DRF viewset request's span names the viewset and its action (code.function.name)."""
    assert drf.get("/items/7")[0] == 200
    (span,) = [s for s in drf.spans.get_finished_spans() if s.attributes["url.path"] == "/items/7"]
    assert str(span.attributes["code.function.name"]).endswith("ItemViewSet.retrieve")
    assert span.attributes["http.route"] == "/items/(?P<pk>[^/.]+)"


@pytest.mark.parametrize("framework", ASYNC, ids=[f.name for f in ASYNC])
def test_async_servers_report_event_loop_lag(
    framework: Framework, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Async servers export pyobs_event_loop_lag_seconds once they have served a request."""
    with serving(framework, monkeypatch) as served:
        assert served.get("/items/1")[0] == 200
        assert served.wait_for(
            lambda: (served.sample("pyobs_event_loop_lag_seconds_count") or 0) >= 1, timeout=3
        )


def test_flask_restful_api_without_app_is_instrumented_at_init_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Api created before its Flask app (the factory pattern) is instrumented by init_app."""
    flask: Any = import_or_require("flask")
    flask_restful: Any = import_or_require("flask_restful")
    import pyobs.flask_restful

    api = flask_restful.Api()

    class Item(flask_restful.Resource):  # type: ignore[misc]
        def get(self, item_id: int) -> dict[str, Any]:
            return {"id": item_id}

    api.add_resource(Item, "/items/<int:item_id>")
    pyobs.flask_restful.instrument(api)
    app = flask.Flask("factory")
    api.init_app(app)
    response = app.test_client().get("/items/2")
    assert response.status_code == 200
    assert response.headers.get("X-Request-ID")
    response.close()  # the WSGI server's close(): the request is recorded now
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'http_route="/items/<int:item_id>"' in metrics


def test_tornado_keeps_the_users_log_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tornado's log_function setting is still called; pyobs only adds its own access log."""
    import_or_require("tornado")
    seen: list[int] = []
    import tornado.web

    import pyobs.tornado

    class Item(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("ok")

    def custom() -> Any:
        app = tornado.web.Application(
            [(r"/items/1", Item)], log_function=lambda h: seen.append(h.get_status())
        )
        return pyobs.tornado.instrument(app)

    custom_fw = Framework("tornado-custom", ("tornado",), custom, servers.tornado_server,
                          "/items/1", "tornado")  # fmt: skip
    with serving(custom_fw, monkeypatch) as served:
        assert served.get("/items/1")[0] == 200
        assert served.wait_for(lambda: seen == [200])
        assert len(served.access_logs("/items/1")) == 1


def test_disabled_pyobs_leaves_apps_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PYOBS_DISABLED=true the adapters install nothing."""
    import_or_require("falcon")
    import_or_require("aiohttp")
    monkeypatch.setenv("PYOBS_DISABLED", "true")
    import falcon
    from aiohttp import web

    import pyobs.aiohttp
    import pyobs.falcon

    app = falcon.App()
    pyobs.falcon.instrument(app)
    assert type(app) is falcon.App
    aio = web.Application()
    pyobs.aiohttp.instrument(aio)
    assert list(aio.middlewares) == []
    logging.getLogger(__name__).debug("disabled: nothing installed")


FACTS = {
    "aiohttp": "pyobs.aiohttp._facts",
    "tornado": "pyobs.tornado._facts",
    "sanic": "pyobs.sanic._facts",
    "django": "pyobs.django.facts_from_environ",
    "pyramid": "pyobs.pyramid.facts_from_environ",
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_an_error_inside_pyobs_never_reaches_the_request(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If pyobs itself fails while reading a request, the request is still served (unobserved)."""
    framework = by_name(name)
    for module in framework.modules:
        import_or_require(module)

    def broken(*args: Any) -> Any:
        raise RuntimeError("pyobs bug")

    with serving(framework, monkeypatch) as served:
        monkeypatch.setattr(FACTS[name], broken)
        status, _, body = served.get("/items/1")
        assert status == 200
        assert b"1" in body
        assert any(
            r["log.logger"] == "pyobs.internal" and r.get("error.message") == "pyobs bug"
            for r in served.logs
        )


def test_pyramid_settings_carry_pyobs_options() -> None:
    """`pyobs.<option>` entries in the Pyramid settings configure pyobs (here the metrics path)."""
    import_or_require("pyramid")
    webtest: Any = import_or_require("webtest")
    from pyramid.config import Configurator

    with Configurator(settings={"pyobs.metrics_path": "/internal/metrics"}) as config:
        config.include("pyobs.pyramid")
        config.add_route("item", "/items/{item_id}")
        config.add_view(lambda request: {"id": 1}, route_name="item", renderer="json")
        app = webtest.TestApp(config.make_wsgi_app())
    assert app.get("/items/1").status_int == 200
    page = app.get("/internal/metrics").text
    assert 'http_route="/items/{item_id}"' in page
    assert app.get("/metrics", expect_errors=True).status_int == 404


def test_django_view_names_follow_the_method_after_caching() -> None:
    """One DRF view object serving two methods names each action, also once the name is cached."""
    from types import SimpleNamespace

    from pyobs import django as adapter

    class ItemViewSet:
        pass

    def view() -> None:
        """A view function as DRF's router makes it: the class and its method-to-action map."""

    view.cls = ItemViewSet  # type: ignore[attr-defined]
    view.actions = {"get": "retrieve", "delete": "destroy"}  # type: ignore[attr-defined]
    names = [adapter._cached_view_name(view, m) for m in ("GET", "DELETE", "GET", "DELETE")]
    assert [n.rsplit(".", 1)[-1] for n in names] == ["retrieve", "destroy"] * 2
    # SimpleNamespace defines __eq__ only: its instances cannot be dict keys.
    unhashable = SimpleNamespace(cls=ItemViewSet, actions={"get": "list"})
    assert adapter._cached_view_name(unhashable, "GET").endswith("ItemViewSet.list")


def test_django_route_templates_are_the_same_from_the_cache() -> None:
    """A URL pattern's route template is the same on the first request and the later ones."""
    from types import SimpleNamespace

    from pyobs import django as adapter

    match = SimpleNamespace(route="^items/(?P<pk>[^/.]+)$")
    assert [adapter._pattern(match) for _ in range(2)] == ["/items/(?P<pk>[^/.]+)"] * 2
    assert adapter._pattern(SimpleNamespace(route="")) == "/"
    assert adapter._pattern(None) is None
