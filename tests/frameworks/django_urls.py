"""URLconf of the plain Django contract app."""

from __future__ import annotations

import time
from typing import Any

from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from tests.frameworks.apps import SLOW, _chunks, _item


def item(request: Any, item_id: int) -> Any:
    return JsonResponse(_item(item_id, Http404))


def boom(request: Any) -> Any:
    raise RuntimeError("boom")


def stream(request: Any) -> Any:
    return StreamingHttpResponse(_chunks(), content_type="text/plain")


def stream_span(request: Any) -> Any:
    """A streamed body that starts a span of its own while it is made."""
    from opentelemetry import trace

    def chunks() -> Any:
        with trace.get_tracer("shop").start_as_current_span("making a chunk"):
            yield b"chunk\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def slow(request: Any) -> Any:
    time.sleep(SLOW)
    return HttpResponse("slow")


def health(request: Any) -> Any:
    return HttpResponse("ok")


urlpatterns = [
    path("items/<int:item_id>", item),
    path("boom", boom),
    path("stream", stream),
    path("stream-span", stream_span),
    path("slow", slow),
    path("health", health),
]
