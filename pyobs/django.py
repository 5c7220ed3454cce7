"""Django adapter: ``"pyobs.django.ObservabilityMiddleware"`` first in ``MIDDLEWARE``.

Works under WSGI and ASGI, serves /metrics without a urls.py entry, labels requests with the
URL pattern (``/items/<int:item_id>``; DRF routers' regexes without their ``^``/``$`` anchors)
and puts the view (DRF viewset action included) on the span as ``code.function.name``.
"""

from __future__ import annotations

from typing import Any

from pyobs import _integration
from pyobs._observer import (
    REQUEST_ID_HEADER,
    RequestHandle,
    RequestObserver,
    report_internal_error,
)
from pyobs.asgi import ensure_loop_lag_monitor
from pyobs.wsgi import facts_from_environ


def route_template(request: Any) -> str | None:
    """The matched URL pattern with a leading '/', or None when no pattern matched."""
    return _pattern(getattr(request, "resolver_match", None))


# A URLconf pattern -> its route template (a URLconf has a fixed, small set of patterns).
_TEMPLATES: dict[str, str] = {}


def _pattern(match: Any) -> str | None:
    if match is None:
        return None
    raw = getattr(match, "route", None) or ""
    if type(raw) is str:
        found = _TEMPLATES.get(raw)
        if found is not None:
            return found
    route = str(raw).removeprefix("^").removesuffix("$")
    template = _integration.template(route) or "/"
    if type(raw) is str:
        if len(_TEMPLATES) >= 1024:
            _TEMPLATES.clear()
        _TEMPLATES[raw] = template
    return template


def _serves(request: Any) -> bool:
    """True when the URLconf has a pattern for exactly this path (not one that also matches)."""
    from django.urls import Resolver404, resolve

    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    return bool(_pattern(match) == request.path_info)


# (view, method) -> code.function.name: views live as long as the URLconf, and the name is
# the same on every request. Bounded: a URLconf that makes views per request stays small.
_VIEW_NAMES: dict[tuple[Any, str], str] = {}


def _cached_view_name(view: Any, method: str) -> str:
    """_view_name(), computed once per view and method."""
    try:
        return _VIEW_NAMES[view, method]
    except KeyError:
        name = _view_name(view, method)
        if len(_VIEW_NAMES) >= 1024:
            _VIEW_NAMES.clear()
        _VIEW_NAMES[view, method] = name
        return name
    except TypeError:  # an unhashable view object
        return _view_name(view, method)


def _view_name(view: Any, method: str) -> str:
    cls = getattr(view, "cls", None) or getattr(view, "view_class", None)
    if cls is None:
        return f"{getattr(view, '__module__', '')}.{getattr(view, '__qualname__', view)}"
    qualname = cls.__qualname__
    # DRF's @api_view wraps the function in a class that carries the function's __name__.
    if "<locals>" in qualname or qualname.endswith("WrappedAPIView"):
        qualname = cls.__name__
    name = f"{cls.__module__}.{qualname}"
    action = (getattr(view, "actions", None) or {}).get(method.lower())
    return f"{name}.{action}" if action else name


class ObservabilityMiddleware:
    """Django middleware (sync and async): metrics, a SERVER span and the access log."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.observer: RequestObserver | None = _integration.begin("django", None, {})
        self.metrics_page = _integration.metrics_page("django", _serves)

    def _facts(self, request: Any) -> Any:
        details = self.observer is None or self.observer.details
        facts = facts_from_environ(request.META, details)
        if details:
            facts.scheme = request.scheme or facts.scheme
        return facts

    def _begin(self, request: Any) -> tuple[Any, RequestHandle | None]:
        """(the metrics page, None) for the metrics path, else (None, the request's handle)."""
        observer = self.observer
        if observer is None:
            return None, None
        page = self.metrics_page
        if page is not None and page.wanted(request.path_info, request):
            return page.answer(request.headers, _http_response), None
        # _integration.start_request(), inlined: no closure per request.
        try:
            handle = observer.start(self._facts(request))
        except Exception as exc:  # noqa: BLE001 - failsafe: serve it unobserved
            report_internal_error("django", exc)
            handle = None
        request._pyobs_handle = handle
        return None, handle

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        page, handle = self._begin(request)
        if page is not None:
            return page
        if handle is None:
            return self.get_response(request)
        observer: RequestObserver = self.observer  # type: ignore[assignment]
        # _integration.request_scope(), inlined: a generator context manager per request
        # costs more than the rest of this method.
        try:
            response = self.get_response(request)
        except BaseException as exc:
            observer.finish(handle, exception=exc)
            raise
        finally:
            observer.detach(handle)
        return self._watch(request, response, handle)

    async def __acall__(self, request: Any) -> Any:
        ensure_loop_lag_monitor()
        page, handle = self._begin(request)
        if page is not None:
            return page
        if handle is None:
            return await self.get_response(request)
        observer: RequestObserver = self.observer  # type: ignore[assignment]
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            observer.finish(handle, exception=exc)
            raise
        finally:
            observer.detach(handle)
        return self._watch(request, response, handle)

    def process_view(self, request: Any, view: Any, args: Any, kwargs: Any) -> None:
        handle = getattr(request, "_pyobs_handle", None)
        if handle is not None and handle.span is not None and handle.owns_span:
            handle.span.set_attribute("code.function.name", _cached_view_name(view, request.method))

    def process_exception(self, request: Any, exception: Exception) -> None:
        # Django turns the exception into a response itself; keep it for the record.
        handle = getattr(request, "_pyobs_handle", None)
        if handle is not None:
            handle.exception = exception

    def _watch(self, request: Any, response: Any, handle: Any) -> Any:
        """Label, add X-Request-ID, count the body; the record is made when Django closes it."""
        assert self.observer is not None  # a handle means an observer
        try:
            return self._observe(self.observer, request, response, handle)
        except Exception as exc:  # noqa: BLE001 - failsafe: the response goes out unobserved
            report_internal_error("django.response", exc)
            self.observer.finish(handle)
            return response

    @staticmethod
    def _observe(observer: RequestObserver, request: Any, response: Any, handle: Any) -> Any:
        handle.route = _pattern(getattr(request, "resolver_match", None))  # route_template()
        handle.status = response.status_code
        # Http404, PermissionDenied...: an answer, not a failure (_integration.keep_exception).
        if handle.exception is not None and response.status_code < 500:
            handle.exception = None
        # RequestObserver.response_headers(), inlined.
        response[REQUEST_ID_HEADER] = handle.request_id
        closer = _Closer(observer, handle, request, response)
        if response.streaming:
            count = _integration.acounted if response.is_async else _integration.counted
            response.streaming_content = count(handle, response.streaming_content, closer.sent)
        else:
            handle.response_bytes = len(response.content)
        # The server (or Django's test client) calls close() once the body is sent.
        response.close = closer
        return response


class _Closer:
    """``response.close`` while pyobs watches the response: records the request, then closes.

    A closure here would be a reference cycle (response -> close -> closure -> the
    response's own close -> response) left for the cyclic garbage collector on every
    request; this object undoes its own attribute (and the request's ``_pyobs_handle``) when
    called, so the response and pyobs's records are freed by reference counting as without
    pyobs.
    """

    __slots__ = ("close", "done", "handle", "observer", "request", "response")

    def __init__(self, observer: RequestObserver, handle: Any, request: Any, response: Any) -> None:
        self.observer = observer
        self.handle = handle
        self.request = request
        self.response = response
        self.close = response.close  # what close() was before pyobs: called last
        self.done = not response.streaming  # a streamed body: when its last chunk is sent

    def sent(self) -> None:
        self.done = True

    def __call__(self) -> None:
        response, self.response = self.response, None
        try:
            handle = self.handle
            handle.disconnected = not self.done and handle.exception is None
            self.observer.finish(handle)
        finally:
            if response is not None and vars(response).get("close") is self:
                del response.close  # a second close() is the response's own, as without pyobs
            # The request no longer leads to pyobs's records: when the app's own objects
            # form a cycle around the request (DRF's Request does), they are not in it.
            request, self.request = self.request, None
            if request is not None and vars(request).get("_pyobs_handle") is self.handle:
                del request._pyobs_handle
            self.close()


def _http_response(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(body, status=status)
    for name, value in headers:
        response[name] = value
    return response
