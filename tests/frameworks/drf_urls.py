"""URLconf of the Django REST framework contract app: a ViewSet behind a router."""

from __future__ import annotations

import time
from typing import Any

from django.http import StreamingHttpResponse
from django.urls import path
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter

from tests.frameworks.apps import SLOW, _chunks, _item


class ItemViewSet(viewsets.ViewSet):  # type: ignore[misc]
    def retrieve(self, request: Any, pk: str) -> Response:
        return Response(_item(int(pk), NotFound))


@api_view(["GET"])  # type: ignore[untyped-decorator]
def boom(request: Any) -> Response:
    raise RuntimeError("boom")


@api_view(["GET"])  # type: ignore[untyped-decorator]
def stream(request: Any) -> Any:
    return StreamingHttpResponse(_chunks(), content_type="text/plain")


@api_view(["GET"])  # type: ignore[untyped-decorator]
def slow(request: Any) -> Response:
    time.sleep(SLOW)
    return Response("slow")


@api_view(["GET"])  # type: ignore[untyped-decorator]
def health(request: Any) -> Response:
    return Response("ok")


router = SimpleRouter(trailing_slash=False)
router.register("items", ItemViewSet, basename="item")

urlpatterns = [
    *router.urls,
    path("boom", boom),
    path("stream", stream),
    path("slow", slow),
    path("health", health),
]
