"""ASGI middleware: metrics, a SERVER span and the access log for any ASGI app."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from threading import get_ident
from typing import Any

from pyobs import _errors, _state
from pyobs._integration import MetricsPage
from pyobs._observer import (
    _SAFE_REQUEST_ID,
    REQUEST_ID_HEADER,
    UNREAD,
    RequestFacts,
    RequestHandle,
    RequestObserver,
    _fill_ids,
    _new_facts,
    _PairHeaders,
    _perf_counter,
    _reset_request_id,
    _set_request_id,
    _take_id,
    headers_from_pairs,
    method_label,
    report_internal_error,
    request_id_and_length,
)
from pyobs._websocket import open_session
from pyobs.logs import STANDARD_METHODS

HANDLE_KEY = "pyobs.handle"
REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()  # ASGI header names are lower-case bytes
ROOT_PATH_KEY = "pyobs.root_path"  # the scope's root_path before the app ran
WEBSOCKET_KEY = "pyobs.websocket"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RouteResolver = Callable[[Scope], "str | None"]

LAG_INTERVAL = 0.5  # seconds between event-loop lag probes


def facts_from_scope(scope: Scope, details: bool = True) -> tuple[RequestFacts, Mapping[str, str]]:
    """Plain request facts (and the lower-cased headers) from an ASGI HTTP scope.

    Without ``details`` only method, path and headers are filled (all that metrics need).
    """
    get = scope.get
    headers = headers_from_pairs(get("headers") or ())
    if not details:
        return RequestFacts(get("method", "GET"), get("path", "/"), headers), headers
    client = get("client") or (None, None)
    server = get("server") or (None, None)
    query = get("query_string") or b""
    host = headers.get("host")
    facts = _new_facts(RequestFacts)  # no Python __init__: see RequestFacts
    facts.method = get("method", "GET")
    facts.path = get("path", "/")
    facts.headers = headers
    facts.scheme = get("scheme", "http")
    if query:
        facts.query = query.decode("latin-1") if isinstance(query, bytes) else str(query)
    else:
        facts.query = ""
    facts.client_addr = client[0]
    facts.server_addr = host.partition(":")[0] if host else server[0]
    facts.server_port = server[1]
    facts.http_version = get("http_version", "1.1")
    facts.user_agent = UNREAD
    return facts, headers


_lag_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
# Fast path: the loop probed last and the thread it ran in; a new loop is checked again.
_last_loop: asyncio.AbstractEventLoop | None = None
_last_thread = 0


def ensure_loop_lag_monitor() -> None:
    """Start one lag probe per running event loop (pyobs_event_loop_lag_seconds).

    Called on every request, so the common case does not ask asyncio: before Python 3.12,
    ``asyncio.get_running_loop()`` makes a ``getpid()`` system call each time. A coroutine
    runs on its thread's running loop, so when the loop probed last was probed from this
    thread and is still running, it is this request's loop.
    """
    global _last_loop, _last_thread
    last = _last_loop
    if last is not None and _last_thread == get_ident() and last.is_running():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _last_loop, _last_thread = loop, get_ident()
    if loop in _lag_loops:
        return
    _lag_loops.add(loop)
    from pyobs.metrics import get_metrics

    histogram = get_metrics().loop_lag

    async def probe() -> None:
        while True:
            expected = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            histogram.observe(max(0.0, loop.time() - expected))

    task = loop.create_task(probe(), name="pyobs-loop-lag")
    _lag_tasks.add(task)
    task.add_done_callback(_lag_tasks.discard)


_lag_tasks: set[asyncio.Task[None]] = set()


class _DisconnectWatch:
    """Reads the request's input on the app's behalf while it streams a response without
    reading it, so a client that leaves is seen; the app still gets every message, in order."""

    __slots__ = ("_queue", "_receive", "busy", "gone", "handle", "task")

    def __init__(self, receive: Receive, handle: RequestHandle, busy: int = 0) -> None:
        self._receive = receive
        self.handle = handle
        self.task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Message] | None = None
        self.busy = busy  # the app's receive() calls in progress: it watches for itself
        self.gone = False

    async def receive(self) -> Message:
        queue = self._queue
        if queue is not None and (not queue.empty() or not self._stopped()):
            return await queue.get()
        self.busy += 1
        try:
            return await self._receive()
        finally:
            self.busy -= 1

    def start(self) -> None:
        """Start watching (first streamed chunk), unless the app is reading itself."""
        if self.busy or self.task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop library: no watcher
            return
        # Bounded: an app that streams while it still has a large body to read is not made to
        # buffer it; the watcher waits for the app to catch up.
        self._queue = asyncio.Queue(maxsize=8)
        self.task = loop.create_task(self._watch(), name="pyobs-disconnect-watch")

    async def _watch(self) -> None:
        assert self._queue is not None
        try:
            while True:
                message = await self._receive()
                await self._queue.put(message)
                if message.get("type") == "http.disconnect":
                    if not self.handle.finished:
                        self.gone = True
                        self.handle.disconnected = True
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the server's receive failed: nothing to watch
            return

    def _stopped(self) -> bool:
        return self.task is None or self.task.done()

    def stop(self) -> None:
        """Stop watching (the response is done); a receive() waiting on the watcher gets
        http.disconnect, as the ASGI spec has it once the response is complete."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            assert self._queue is not None
            if not self._queue.full():
                self._queue.put_nowait({"type": "http.disconnect"})


class _ObservedExchange(RequestHandle):
    """The request's handle, and also the receive and send the app gets: one object per
    request instead of two closures and their cells."""

    # Set per request by the middleware after observer.start().
    __slots__ = ("_busy", "_middleware", "_receive", "_scope", "_send", "_watch")
    _middleware: ObservabilityMiddleware
    _scope: Scope  # the scope as the middleware got it (routers may copy theirs)
    _receive: Receive  # the server's
    _send: Send
    # A raw app that streams without ever reading its input would not see the client
    # leave (some servers drop sends to a closed connection silently): once it streams,
    # a watcher reads the input for it and keeps the messages for the app (issue 13.9).
    # The watcher is made at the first streamed chunk (most responses are one chunk);
    # until then ``_busy`` counts the app's receive() calls in progress, as the watcher's
    # own count does after.
    _watch: _DisconnectWatch | None
    _busy: int

    async def receive(self) -> Message:
        """The app's receive: notes a client that went away."""
        watch = self._watch
        if watch is not None:
            message = await watch.receive()
        else:
            self._busy += 1
            try:
                message = await self._receive()
            finally:
                watch = self._watch
                if watch is None:
                    self._busy -= 1
                else:  # the watcher was made meanwhile, with this call in its count
                    watch.busy -= 1
        if message.get("type") == "http.disconnect" and not self.finished:
            self.disconnected = True
        return message

    async def send(self, message: Message) -> None:
        """The app's send: notes status and size, adds the request id header, and finishes
        the request when the last body byte is out."""
        kind = message.get("type")
        if kind == "http.response.start":
            self.status = message.get("status")
            message = dict(message)
            # RequestObserver.response_headers(), inlined and encoded (the id is ASCII).
            message["headers"] = [
                *message.get("headers", ()),
                (REQUEST_ID_NAME, self.request_id.encode()),
            ]
        elif kind == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                try:
                    await self._send(message)
                except OSError:
                    self.disconnected = True
                    raise
                # The last byte is out: this is where the duration ends.
                watch = self._watch
                if watch is None:
                    self.disconnected = False
                else:
                    self.disconnected = watch.gone
                    watch.stop()
                middleware = self._middleware
                if middleware.server_errors_reraised:
                    status = self.status
                    if type(status) is not int or status >= 500:
                        # The framework re-raises the exception it rendered as this 5xx:
                        # __call__ records the request with it (this byte ends the duration).
                        self.ended = time.perf_counter()
                        return
                # ObservabilityMiddleware._finish(), inlined: one call less per request.
                if self.route is None:
                    resolver = middleware.route_resolver
                    if resolver is not None:
                        try:
                            self.route = resolver(self._scope)
                        except Exception:  # noqa: BLE001 - an unresolvable route is unmatched
                            self.route = None
                self._done()
                return
            watch = self._watch
            if watch is None:
                watch = self._watch = _DisconnectWatch(self._receive, self, self._busy)
            if watch.task is None:
                watch.start()
        try:
            await self._send(message)
        except OSError:
            self.disconnected = True
            raise


class _MetricsOnlyExchange(_ObservedExchange):
    """The exchange when pyobs records metrics only, made by _start_metrics_only(): it
    records a whole response itself (RequestHandle._done), and its request facts are made
    only if something asks for them."""

    __slots__ = ("_facts", "_read")
    _read: tuple[str, str, dict[bytes, bytes] | None, Mapping[str, str] | None]
    _facts: RequestFacts  # unset until asked for

    @property
    def facts(self) -> RequestFacts:
        """The request facts, made when first asked (the common path asks for none)."""
        try:
            return self._facts
        except AttributeError:
            method, path, raw, headers = self._read
            if headers is None:
                view = _PairHeaders()
                view._raw = raw or {}
                headers = view
            facts = self._facts = RequestFacts(method, path, headers)
            return facts

    @facts.setter
    def facts(self, facts: RequestFacts) -> None:
        self._facts = facts


def _start_metrics_only(observer: RequestObserver, scope: Scope) -> _MetricsOnlyExchange | None:
    """RequestObserver.start() for metrics only (no span, no access log, no label hook, no
    URL exclusion: ``RequestObserver.details`` is False), reading the scope as it goes: a
    handle that records a whole response itself (``whole_record``, see RequestHandle._done),
    or None for an excluded path. Only method, path and the X-Request-ID and Content-Length
    headers are read.

    Written out, with _blank()'s fields, as the WSGI middleware's metrics-only path is (two
    calls less on every request). Keep the three in step: tests/test_handles.py reads every
    slot of the handles both middlewares make, and tests/test_metrics_only.py and
    tests/frameworks/test_signals_off.py compare this path's samples, X-Request-ID and log
    ids with every signal's.
    """
    get = scope.get
    pairs = get("headers") or ()
    raw = dict(pairs) if type(pairs) is list or type(pairs) is tuple else None
    headers: Mapping[str, str] | None = None
    if raw is not None and len(raw) == len(pairs) and (b"x" + b"".join(raw)).islower():
        # headers_from_pairs()'s common case: lower-case names, none repeated.
        incoming = raw.get(b"x-request-id")
        length = raw.get(b"content-length")
        if incoming is not None:
            incoming = incoming.decode("latin-1")
        if length is not None:
            length = length.decode("latin-1")
    else:
        headers = headers_from_pairs(pairs)
        incoming = headers.get("x-request-id")
        length = headers.get("content-length")
    method = get("method", "GET")
    path = get("path", "/")
    if path in observer._quiet or (
        observer._excluded is not None and observer._excluded.fullmatch(path) is not None
    ):
        return None
    if incoming is None or _SAFE_REQUEST_ID.fullmatch(incoming) is None:
        try:  # as request_id_for()
            incoming = _take_id()
        except IndexError:
            incoming = _fill_ids()
    handle = _MetricsOnlyExchange()  # no __init__: see RequestHandle
    label = method if method in STANDARD_METHODS else method_label(method)
    handle.method = label
    handle.request_id = incoming
    # Not cut to MAX_FIELD_LENGTH: only the access log and spans write the path out, and
    # neither is on here (RequestObserver.start() cuts it for them).
    handle.path = path
    # _blank(handle, observer, True); ``facts`` is made when asked (_MetricsOnlyExchange).
    handle.route = handle.status = handle.exception = handle.ended = None
    handle.span = handle.trace_id = handle.trace_ids = None
    handle.client = handle.user_agent = handle.context_token = None
    handle.response_bytes = 0
    handle.disconnected = handle.finished = handle.owns_span = False
    handle.whole_record = True
    handle._observer = observer
    handle._read = (method, path, raw, headers)
    handle.raw_length = length
    handle.start = _perf_counter()
    try:
        inflight = observer.metrics.inflight.get(label)  # the in-flight gauge + 1
        if inflight is not None:
            inflight.append(None)
        else:
            observer.metrics.request_started(label)
        handle.counted = True
    except Exception as exc:  # noqa: BLE001
        handle.counted = False
        _errors.report("metrics", exc, "start")
    handle.request_id_token = _set_request_id(incoming)
    return handle


class ObservabilityMiddleware:
    """Wrap an ASGI app: HTTP requests and WebSocket connections; lifespan passes through.

    ``route_resolver(scope)`` returns the route template after the app ran; adapters may
    instead set ``scope["pyobs.handle"].route`` while routing (for a WebSocket, set
    ``scope["pyobs.websocket"].route`` before the app accepts the connection).
    ``app_serves(scope)`` tells whether the app has its own route at the metrics path (then
    pyobs leaves it to the app).

    ``server_errors_reraised`` (set by adapters, False by default): the framework renders an
    exception as a 5xx response and then re-raises it (Starlette's ServerErrorMiddleware
    does), so a 5xx is recorded when the app call ends, with that exception's type; its
    duration still ends at the response's last byte.
    """

    server_errors_reraised = False

    def __init__(
        self,
        app: ASGIApp,
        *,
        route_resolver: RouteResolver | None = None,
        framework: str | None = None,
        app_serves: Callable[[Scope], bool] | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.route_resolver = route_resolver
        self.config = _state.ensure_setup(framework or "asgi", **options)
        # Asked for the metrics path only: pyobs never shadows a route the app serves.
        self.metrics_page = MetricsPage(self.config, framework or "asgi", app_serves)
        self.observer: RequestObserver | None = (
            None if self.config.disabled else _state.get_observer()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = self.observer
        kind = scope["type"]
        if observer is not None and kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if observer is None or kind != "http":
            await self.app(scope, receive, send)
            return
        page = self.metrics_page
        if scope.get("path") == page.path and not page.yields(scope):
            await self._serve_metrics(page, scope, send)
            return
        handle: _ObservedExchange | None
        try:
            last = _last_loop  # ensure_loop_lag_monitor()'s fast path, inlined
            if last is None or _last_thread != get_ident() or not last.is_running():
                ensure_loop_lag_monitor()
            if observer.details:
                facts, headers = facts_from_scope(scope)
                incoming_id, raw_length = request_id_and_length(headers)
                # A handle of the kind asked for, or None (no typing.cast: a call per request).
                handle = observer.start(  # type: ignore[assignment]
                    facts, _ObservedExchange, incoming_id
                )
                if handle is not None:
                    handle.raw_length = raw_length
            else:
                handle = _start_metrics_only(observer, scope)
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("asgi.scope", exc)
            await self.app(scope, receive, send)
            return
        if handle is None:  # not observed (excluded path)
            await self.app(scope, receive, send)
            return
        # Routers rewrite root_path in place (mounts); resolvers compare it with this.
        scope[ROOT_PATH_KEY] = scope.get("root_path", "")
        scope[HANDLE_KEY] = handle
        handle._middleware = self
        handle._scope = scope
        handle._receive = receive
        handle._send = send
        handle._watch = None
        handle._busy = 0
        app = self.app  # an instance field: loaded, then called (no method lookup)
        try:
            await app(scope, handle.receive, handle.send)
        except BaseException as exc:
            if not handle.finished:
                error: BaseException | None = exc
                if isinstance(exc, asyncio.CancelledError):
                    if handle.ended is None:
                        handle.disconnected = True
                    else:  # cancelled after the whole response went out: recorded as sent
                        error = None
                self._finish(observer, handle, scope, error)
            raise
        else:
            if not handle.finished:
                # The app returned before the last body byte (or sent nothing: 500).
                self._finish(observer, handle, scope)
        finally:
            # handle -> scope -> handle, scope -> handle -> the server's receive and send ->
            # the server's per-request object -> scope (uvicorn's RequestResponseCycle), and
            # handle -> watcher -> handle: cycles that would leave the request to the cyclic
            # collector (its full passes stall the event loop); broken once the app is done.
            handle._scope = {}
            current: object = scope.get(HANDLE_KEY)
            if current is handle:
                del scope[HANDLE_KEY]
            watch = handle._watch
            if watch is not None:
                watch.stop()
                handle._watch = None
            if handle.context_token is None:  # observer.detach(handle), inlined: no span
                token, handle.request_id_token = handle.request_id_token, None
                try:
                    if token is not None:
                        _reset_request_id(token)
                except Exception as exc:  # noqa: BLE001 - a token from another context
                    _errors.report("adapter", exc, "detach")
            else:
                observer.detach(handle)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One span, the pyobs_websocket_* metrics and connect/disconnect logs per connection."""
        try:
            ensure_loop_lag_monitor()
            facts, _ = facts_from_scope(scope)
            facts.method = "GET"
            route = self.route_resolver(scope) if self.route_resolver is not None else None
            session = open_session(facts, route)
        except Exception as exc:  # noqa: BLE001 - failsafe
            report_internal_error("asgi.websocket", exc)
            session = None
        if session is None:
            await self.app(scope, receive, send)
            return
        scope[WEBSOCKET_KEY] = session

        async def observed_receive() -> Message:
            message = await receive()
            kind = message.get("type")
            if kind == "websocket.receive":
                session.on_message("received")
            elif kind == "websocket.disconnect":
                session.on_close(message.get("code"))
            return message

        async def observed_send(message: Message) -> None:
            kind = message.get("type")
            await send(message)
            if kind == "websocket.accept":
                session.on_accept()
            elif kind == "websocket.send":
                session.on_message("sent")
            elif kind == "websocket.close":
                session.on_close(message.get("code", 1000))

        with session.activate():
            try:
                await self.app(scope, observed_receive, observed_send)
            except BaseException as exc:
                session.on_close(exception=exc)
                raise
            session.on_close()

    def _finish(
        self,
        observer: RequestObserver,
        handle: RequestHandle,
        scope: Scope,
        exc: BaseException | None = None,
    ) -> None:
        if handle.route is None and self.route_resolver is not None:
            try:
                handle.route = self.route_resolver(scope)
            except Exception:  # noqa: BLE001 - an unresolvable route is just unmatched
                handle.route = None
        observer.finish(handle, exception=exc)

    @staticmethod
    async def _serve_metrics(page: MetricsPage, scope: Scope, send: Send) -> None:
        headers = headers_from_pairs(scope.get("headers") or ())
        status, out_headers, body = page.respond(
            headers.get("accept"), headers.get("authorization")
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers],
            }
        )
        await send({"type": "http.response.body", "body": body})
