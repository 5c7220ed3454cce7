"""Example Django + Django REST framework service in one file, instrumented with one line.

The line is ``"pyobs.django.ObservabilityMiddleware"`` first in MIDDLEWARE; /metrics needs no
urls.py entry.

Run: python examples/django/app.py --port 8004   (or: gunicorn -w 4 app:app from this folder,
uvicorn app:asgi_app for ASGI)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import django
from django.conf import settings

os.environ.setdefault("PYOBS_SERVICE_NAME", "example-django")

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="example-only-not-secret",
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["pyobs.django.ObservabilityMiddleware"],
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework"],
    DATABASES={},
    LOGGING_CONFIG=None,  # pyobs owns logging: JSON lines on stdout
    REST_FRAMEWORK={
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_PERMISSION_CLASSES": [],
        "UNAUTHENTICATED_USER": None,
    },
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - needs settings
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework import status, viewsets  # noqa: E402
from rest_framework.decorators import api_view  # noqa: E402
from rest_framework.exceptions import NotFound  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.routers import SimpleRouter  # noqa: E402

log = logging.getLogger("shop")
ITEMS: dict[int, dict[str, object]] = {i: {"id": i, "name": f"item {i}"} for i in range(1, 11)}


class ItemViewSet(viewsets.ViewSet):  # type: ignore[misc]
    """GET /items/{pk} and POST /items."""

    def retrieve(self, request: Request, pk: str) -> Response:
        """One item, or 404."""
        item = ITEMS.get(int(pk)) if pk.isdigit() else None
        if item is None:
            log.info("item not found")
            raise NotFound("no such item")
        return Response(item)

    def create(self, request: Request) -> Response:
        """Create an item from the JSON body."""
        item_id = max(ITEMS) + 1
        ITEMS[item_id] = {"id": item_id, "name": str(request.data.get("name", "unnamed"))}
        log.info("item created")
        return Response(ITEMS[item_id], status=status.HTTP_201_CREATED)


@api_view(["GET"])  # type: ignore[untyped-decorator]
def boom(request: Request) -> Response:
    """Always fails: shows 500s, the exception counter and error logs."""
    raise RuntimeError("the warehouse is on fire")


@api_view(["GET"])  # type: ignore[untyped-decorator]
def slow(request: Request) -> Response:
    """A slow dependency."""
    time.sleep(0.3)
    return Response({"status": "slow but fine"})


@api_view(["GET"])  # type: ignore[untyped-decorator]
def stream(request: Request) -> Any:
    """A streamed body: its duration runs to the last chunk."""

    def chunks() -> Iterator[bytes]:
        for i in range(5):
            time.sleep(0.05)
            yield f"chunk {i}\n".encode()

    return StreamingHttpResponse(chunks(), content_type="text/plain")


@api_view(["GET"])  # type: ignore[untyped-decorator]
def health(request: Request) -> Response:
    """Health check: pyobs records nothing for it."""
    return Response({"status": "ok"})


router = SimpleRouter(trailing_slash=False)
router.register("items", ItemViewSet, basename="item")
urlpatterns = [
    *router.urls,
    path("boom", boom),
    path("slow", slow),
    path("stream", stream),
    path("health", health),
]

app = get_wsgi_application()
asgi_app = get_asgi_application()


def main() -> None:
    """Serve with Django's own threaded server (runserver's, without its banner)."""
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):  # type: ignore[misc]
        def log_message(self, format: str, *args: Any) -> None:
            """pyobs writes the access log."""

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    args = parser.parse_args()
    server = ThreadedWSGIServer((args.host, args.port), QuietHandler)
    server.set_app(app)
    log.info("serving on http://%s:%s", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
