"""WebSocket connections: one SERVER span, the pyobs_websocket_* metrics, connect/disconnect logs.

Framework-neutral like the request observer: adapters report plain events (accepted, a message
in or out, closed) and never hand over a framework object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from pyobs import _state, tracing
from pyobs._observer import RequestFacts, report_internal_error, request_id_for
from pyobs.logs import ACCESS_LOGGER, request_id_var
from pyobs.redact import redact_query

_access = logging.getLogger(ACCESS_LOGGER)


class WebSocketSession:
    """One WebSocket connection from the upgrade request to its close."""

    def __init__(self, facts: RequestFacts, route: str | None) -> None:
        observer = _state.get_observer()
        assert observer is not None  # open() checked
        self.observer = observer
        self.facts = facts
        self.route = route
        self.request_id = request_id_for(facts.headers)
        self.start = time.perf_counter()
        self.accepted = False
        self.closed = False
        self.received_count = 0
        self.sent_count = 0
        self.span: Any = None
        if observer.tracer is not None:
            attrs: dict[str, Any] = {
                "http.request.method": "GET",
                "url.path": facts.path,
                "url.scheme": "wss" if facts.scheme in ("https", "wss") else "ws",
                "network.protocol.name": "websocket",
            }
            if facts.query:
                attrs["url.query"] = redact_query(facts.query)
            client = observer.client_ip(facts)
            if client:
                attrs["client.address"] = client
            ua = facts.headers.get("user-agent")
            if ua:
                attrs["user_agent.original"] = ua
            self.span = observer.tracer.start_span(
                "WEBSOCKET",
                context=tracing.extract(facts.headers),
                kind=SpanKind.SERVER,
                attributes=attrs,
            )

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Run a block (a message handler) inside the connection's trace and request id."""
        tokens: list[Any] = [request_id_var.set(self.request_id)]
        if self.span is not None:
            tokens.append(otel_context.attach(trace.set_span_in_context(self.span)))
        try:
            yield
        finally:
            for token in reversed(tokens):
                try:
                    if token.var is request_id_var:
                        request_id_var.reset(token)
                    else:
                        otel_context.detach(token)
                except Exception as exc:  # noqa: BLE001 - a token from another context
                    report_internal_error("websocket.detach", exc)

    def _label(self) -> str:
        return str(self.observer.metrics.route_label(self.route))

    def on_accept(self) -> None:
        """The handshake succeeded: count the connection and log it."""
        if self.accepted or self.closed:
            return
        self.accepted = True
        try:
            m = self.observer.metrics
            m.child(m.ws_active, self._label()).inc()
            if self.span is not None and self.route is not None:
                self.span.update_name(f"WEBSOCKET {self.route}")
                self.span.set_attribute("http.route", self.route)
            self._log(logging.INFO, "connected", {"event.action": "websocket-connect"})
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("websocket.accept", exc)

    def hand_over(self) -> Any:
        """The upgrade request was answered with plain HTTP: observe it as a request instead.

        Call inside ``activate()``. The request (a RequestHandle, or None when not observed)
        keeps the session's start, request id and span (renamed and given the request's
        scheme); the session itself records nothing.
        """
        if self.accepted or self.closed:
            return None
        self.closed = True
        span = self.span
        try:
            if span is not None:
                span.update_name(self.facts.method)
                span.set_attribute("url.scheme", self.facts.scheme)
                span.set_attribute("network.protocol.name", "http")
            handle = self.observer.start(self.facts)
            if handle is None:
                if span is not None:
                    span.end()
                return None
            handle.start = self.start
            handle.request_id = self.request_id
            handle.route = self.route
            if span is not None and handle.span is span:
                handle.owns_span = True  # adopted: the request ends it
            elif span is not None:
                span.end()
            return handle
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("websocket.hand_over", exc)
            return None

    def sender(self, send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap a framework's async send so that every message sent is counted."""

        async def counted(*args: Any, **kwargs: Any) -> Any:
            result = await send(*args, **kwargs)
            self.on_message("sent")
            return result

        return counted

    def receiver(
        self,
        receive: Callable[..., Awaitable[Any]],
        is_message: Callable[[Any], bool],
        close_code: Callable[[], int | None] | None = None,
    ) -> Callable[..., Awaitable[Any]]:
        """Wrap a framework's async receive: count what ``is_message`` accepts; with
        ``close_code``, a receive that raises (the connection closed) ends the session."""

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                message = await receive(*args, **kwargs)
            except BaseException:
                if close_code is not None:
                    self.on_close(close_code())
                raise
            if is_message(message):
                self.on_message("received")
            return message

        return counted

    def on_message(self, direction: str) -> None:
        """Count one message, ``received`` or ``sent``."""
        if direction == "received":
            self.received_count += 1
        else:
            self.sent_count += 1
        try:
            m = self.observer.metrics
            m.child(m.ws_messages, self._label(), direction).inc()
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("websocket.message", exc)

    def on_close(
        self,
        code: int | None = None,
        exception: BaseException | None = None,
        status: int | None = None,
    ) -> None:
        """The connection ended (or the handshake was refused): record it once.

        ``status`` is the HTTP status of a refused handshake when the framework knows it;
        without it a refused handshake is recorded as 403, what ASGI servers send.
        """
        if self.closed:
            return
        self.closed = True
        try:
            self._close(code, exception, status)
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("websocket.close", exc)

    def _close(self, code: int | None, exception: BaseException | None, status: int | None) -> None:
        duration = time.perf_counter() - self.start
        if self.accepted:
            m = self.observer.metrics
            label = self._label()
            m.child(m.ws_active, label).dec()
            m.child(m.ws_duration, label).observe(duration)
            extra: dict[str, Any] = {
                "event.action": "websocket-disconnect",
                "event.duration": int(duration * 1e9),
            }
            level = logging.ERROR if exception is not None else logging.INFO
            what = "disconnected" if code is None else f"disconnected {code}"
            self._log(level, what, extra, exception)
        span = self.span
        if span is None:
            return
        if self.route is not None:
            span.set_attribute("http.route", self.route)
        if self.accepted:
            status = 101
        span.set_attribute("http.response.status_code", status or 403)
        if code is not None:
            span.set_attribute("websocket.close.code", code)
        if exception is not None:
            span.set_attribute("error.type", type(exception).__qualname__)
            span.record_exception(exception)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _log(
        self,
        level: int,
        what: str,
        extra: dict[str, Any],
        exception: BaseException | None = None,
    ) -> None:
        if not self.observer.config.access_log or not _access.isEnabledFor(level):
            return
        facts = self.facts
        extra.update(
            {
                "http.request.id": self.request_id,
                "event.dataset": ACCESS_LOGGER,
                "http.request.method": "GET",
                "url.path": facts.path,
            }
        )
        if self.route is not None:
            extra["http.route"] = self.route
        if self.span is not None:
            ctx = self.span.get_span_context()
            extra["trace.id"] = format(ctx.trace_id, "032x")
            extra["span.id"] = format(ctx.span_id, "016x")
        client = self.observer.client_ip(facts)
        if client:
            extra["client.ip"] = client
        ua = facts.headers.get("user-agent")
        if ua:
            extra["user_agent.original"] = ua
        exc_info = (type(exception), exception, exception.__traceback__) if exception else None
        _access.log(level, f"WEBSOCKET {facts.path} {what}", extra=extra, exc_info=exc_info)


def open_session(facts: RequestFacts, route: str | None = None) -> WebSocketSession | None:
    """A session for an upgrade request; None when pyobs is off or the path is excluded."""
    try:
        observer = _state.get_observer()
        if observer is None or observer.config.is_excluded(facts.path):
            return None
        return WebSocketSession(facts, route)
    except Exception as exc:  # noqa: BLE001 - failsafe: the connection must go on
        report_internal_error("websocket.open", exc)
        return None
