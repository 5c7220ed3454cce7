"""WSGI middleware: metrics, a SERVER span and the access log for any WSGI app."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pyobs import _context, _errors, _state, logs
from pyobs._integration import MetricsPage, status_line
from pyobs._observer import (
    _SAFE_REQUEST_ID,
    REQUEST_ID_HEADER,
    RequestFacts,
    RequestHandle,
    RequestObserver,
    _fill_ids,
    _new_facts,
    _perf_counter,
    _reset_request_id,
    _set_request_id,
    _take_id,
    method_label,
    report_internal_error,
)
from pyobs.logs import STANDARD_METHODS

HANDLE_KEY = "pyobs.handle"
_BODIES_OPEN = logs.bodies_open  # the bodies being iterated
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
RouteResolver = Callable[[Environ], "str | None"]

# Status line -> code, for the lines seen ("200 OK" is one dict lookup, not a slice and a parse).
_STATUS_CODES: dict[str, int] = {}

# Errors a WSGI server raises when the client went away mid-response.
_DISCONNECTS: tuple[type[BaseException], ...] = (ConnectionError, BrokenPipeError)


# Header name -> environ key, for the names pyobs reads on every request and any others seen.
_ENVIRON_KEYS: dict[str, str] = {
    "content-length": "CONTENT_LENGTH",
    "content-type": "CONTENT_TYPE",
    "x-request-id": "HTTP_X_REQUEST_ID",
    "user-agent": "HTTP_USER_AGENT",
    "traceparent": "HTTP_TRACEPARENT",
    "baggage": "HTTP_BAGGAGE",
    "x-forwarded-for": "HTTP_X_FORWARDED_FOR",
}


# Header-name tuples (a propagator's headers) as environ keys, for _EnvironHeaders.has_any.
_NAME_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}


class _EnvironHeaders(Mapping[str, str]):
    """Lower-cased header view over a WSGI environ, without copying it."""

    __slots__ = ("_environ",)
    _environ: Environ  # set by its maker (no __init__: one C call to make one)

    @staticmethod
    def _key(name: str) -> str:
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            upper = name.upper().replace("-", "_")
            key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
            if len(_ENVIRON_KEYS) < 1024:
                _ENVIRON_KEYS[name] = key
        return key

    def __getitem__(self, name: str) -> str:
        value = self._environ[self._key(name)]
        return str(value)

    # get and __contains__ run several times per request: the known names skip the call.
    def get(self, name: str, default: Any = None) -> Any:
        return self._environ.get(_ENVIRON_KEYS.get(name) or self._key(name), default)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return (_ENVIRON_KEYS.get(name) or self._key(name)) in self._environ

    def has_any(self, names: tuple[str, ...]) -> bool:
        """True when one of ``names`` is present (one set operation on the environ's keys)."""
        keys = _NAME_KEYS.get(names)
        if keys is None:
            keys = _NAME_KEYS[names] = tuple(self._key(name) for name in names)
        return not self._environ.keys().isdisjoint(keys)

    def __iter__(self) -> Iterator[str]:
        for key in self._environ:
            if key.startswith("HTTP_"):
                yield key[5:].lower().replace("_", "-")
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield key.lower().replace("_", "-")

    def __len__(self) -> int:
        return sum(1 for _ in self)


def facts_from_environ(environ: Environ, details: bool = True) -> RequestFacts:
    """Plain request facts from a WSGI environ (method, path and headers only without details)."""
    get = environ.get
    path = (get("SCRIPT_NAME", "") + get("PATH_INFO", "")) or "/"
    if not path.isascii():
        path = decoded_path(path)
    view = _EnvironHeaders()
    view._environ = environ
    method = get("REQUEST_METHOD") or "GET"
    if not details:  # the other fields at RequestFacts's defaults
        return RequestFacts(method, path, view)
    facts = _new_facts(RequestFacts)  # no Python __init__: see RequestFacts
    facts.method = method
    facts.path = path
    facts.headers = view
    key = (get("HTTP_HOST") or get("SERVER_NAME") or "", get("SERVER_PORT"), get("SERVER_PROTOCOL"))
    try:
        server = _SERVER_FACTS.get(key)
    except TypeError:  # an unhashable environ value
        server = None
    if server is None:
        server = _server_facts(key)
    facts.scheme = get("wsgi.url_scheme") or "http"
    facts.query = get("QUERY_STRING") or ""
    facts.client_addr = get("REMOTE_ADDR")
    facts.user_agent = get("HTTP_USER_AGENT")
    facts.server_addr, facts.server_port, facts.http_version = server
    return facts


# (host, SERVER_PORT, SERVER_PROTOCOL) -> (server.address, server.port, protocol version):
# the same few values on every request, so each is worked out once (bounded: Host is the
# client's to choose).
_SERVER_FACTS: dict[tuple[Any, ...], tuple[str | None, int | None, str]] = {}


def _server_facts(key: tuple[Any, ...]) -> tuple[str | None, int | None, str]:
    host, port, protocol = key
    protocol = protocol or "HTTP/1.1"
    facts = (
        str(host).partition(":")[0] or None,
        _port(port),
        protocol[5:] if type(protocol) is str and protocol.startswith("HTTP/") else "1.1",
    )
    if len(_SERVER_FACTS) >= 256:
        _SERVER_FACTS.clear()
    try:
        _SERVER_FACTS[key] = facts
    except TypeError:  # an unhashable environ value: not remembered
        pass
    return facts


def decoded_path(path: str) -> str:
    """The path as ASGI servers give it: PEP 3333 hands WSGI apps the raw bytes as latin-1
    characters (``/cafÃ©``), so they are taken back to bytes and read as UTF-8 (``/café``);
    bytes that are not UTF-8 become U+FFFD, as uvicorn decodes them."""
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # not a PEP 3333 string: a server that already decoded it
        return path


def _status_code(status: str) -> int:
    """The code of a WSGI status line (500 when it has none), remembered for the next time."""
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 500
    if len(_STATUS_CODES) < 256:
        _STATUS_CODES[status] = code
    return code


def _port(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class ObservabilityMiddleware:
    """Wrap a WSGI app: ``app.wsgi_app = ObservabilityMiddleware(app.wsgi_app)``.

    ``route_resolver(environ)`` returns the route template; it is asked when the app starts
    its response (routing is done, the app's request context still active) and, if it
    returned None, again when the request ends. Adapters may instead set
    ``environ["pyobs.handle"].route`` while routing. ``app_serves(environ)`` tells whether
    the app has its own route at the metrics path (then pyobs leaves it to the app).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        route_resolver: RouteResolver | None = None,
        framework: str | None = None,
        app_serves: Callable[[Environ], bool] | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.route_resolver = route_resolver
        self.config = _state.ensure_setup(framework or "wsgi", **options)
        # Asked for the metrics path only: pyobs never shadows a route the app serves.
        self.metrics_page = MetricsPage(self.config, framework or "wsgi", app_serves)
        self.observer: RequestObserver | None = (
            None if self.config.disabled else _state.get_observer()
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        observer = self.observer
        if observer is None:
            return self.app(environ, start_response)
        get = environ.get
        path_info = get("PATH_INFO", "")
        page = self.metrics_page
        if path_info == page.path and not page.yields(environ):
            status, headers, body = page.respond(
                environ.get("HTTP_ACCEPT"), environ.get("HTTP_AUTHORIZATION")
            )
            start_response(status_line(status), headers)
            return [body]
        handle: _ObservedBody | None
        try:
            if observer.details:
                facts = facts_from_environ(environ)
                # A handle of the kind asked for, or None.
                handle = observer.start(  # type: ignore[assignment]
                    facts, _ObservedBody, get("HTTP_X_REQUEST_ID")
                )
            else:
                # RequestObserver.start() for metrics only, written out with _blank()'s
                # fields as asgi._start_metrics_only() does it: two calls less on every
                # request. Keep the three in step (tests/test_handles.py reads every slot;
                # tests/test_metrics_only.py compares this path's samples, X-Request-ID and
                # log ids with every signal's).
                path = get("SCRIPT_NAME", "") + path_info or "/"
                if not path.isascii():
                    path = decoded_path(path)
                if path in observer._quiet or (
                    observer._excluded is not None
                    and observer._excluded.fullmatch(path) is not None
                ):
                    return self.app(environ, start_response)
                incoming = get("HTTP_X_REQUEST_ID")
                if incoming is None or _SAFE_REQUEST_ID.fullmatch(incoming) is None:
                    try:
                        incoming = _take_id()
                    except IndexError:
                        incoming = _fill_ids()
                handle = _MetricsOnlyBody()
                method = get("REQUEST_METHOD") or "GET"
                if method not in STANDARD_METHODS:
                    method = method_label(method)
                handle.method = method
                handle.request_id = incoming
                handle.path = path
                # _blank(handle, observer, True)
                handle.route = handle.status = handle.exception = handle.ended = None
                handle.span = handle.trace_id = handle.trace_ids = None
                handle.client = handle.user_agent = handle.context_token = None
                handle.response_bytes = 0
                handle.disconnected = handle.finished = handle.owns_span = False
                handle.whole_record = True
                handle._observer = observer
                handle.start = _perf_counter()
                try:
                    inflight = observer.metrics.inflight.get(method)
                    if inflight is not None:
                        inflight.append(None)
                    else:
                        observer.metrics.request_started(method)
                    handle.counted = True
                except Exception as exc:  # noqa: BLE001
                    handle.counted = False
                    _errors.report("metrics", exc, "start")
                handle.request_id_token = _set_request_id(incoming)
        except Exception as exc:  # noqa: BLE001 - failsafe: a malformed environ is the app's call
            report_internal_error("wsgi.environ", exc)
            return self.app(environ, start_response)
        if handle is None:  # not observed (excluded path)
            return self.app(environ, start_response)
        handle.raw_length = get("CONTENT_LENGTH")
        environ[HANDLE_KEY] = handle
        handle._middleware = self
        handle._environ = environ
        handle._server = start_response
        app = self.app  # an instance field: loaded, then called (no method lookup)
        try:
            handle.inner = app(environ, handle.start_response)
        except BaseException as exc:
            handle.resolve_route()
            observer.finish(handle, exception=exc)
            observer.detach(handle)
            environ.pop(HANDLE_KEY, None)
            raise
        # observer.detach(handle), inlined (one call less per request). Nothing detaches this
        # handle again, so its tokens are left on it.
        token = handle.request_id_token
        try:
            if token is not None:
                _reset_request_id(token)
            context_token = handle.context_token
            if context_token is not None:
                _context.detach(context_token)
        except Exception as exc:  # noqa: BLE001 - a token from another context
            _errors.report("adapter", exc, "detach")
        return handle


class _ObservedBody(RequestHandle):
    """The request's handle, and also the body the server gets: it counts body bytes and
    finishes the request when the server closes it (one object per request, not two)."""

    # Set per request by the middleware (or the Pyramid tween) after observer.start().
    __slots__ = ("_environ", "_middleware", "_server", "inner")
    _middleware: ObservabilityMiddleware
    _environ: Environ
    _server: StartResponse  # the server's start_response
    inner: Iterable[bytes]  # the app's body, set once the app returned it

    def start_response(self, status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
        """The app's start_response: notes the status and adds pyobs's response headers."""
        code = _STATUS_CODES.get(status)
        self.status = code if code is not None else _status_code(status)
        # Routing is done and the app's request context is still active: ask for the route
        # now, and again at the end if it is still unknown.
        if self.route is None:  # resolve_route(), inlined
            resolver = self._middleware.route_resolver
            if resolver is not None:
                try:
                    self.route = resolver(self._environ)
                except Exception:  # noqa: BLE001 - an unresolvable route is just unmatched
                    self.route = None
        # RequestObserver.response_headers(), inlined; exc_info, when given, passed on.
        headers = [*headers, (REQUEST_ID_HEADER, self.request_id)]
        server = self._server  # a slot: one specialised load, then a plain call
        return server(status, headers, *args) if args else server(status, headers)

    def resolve_route(self) -> None:
        """Ask the middleware's route_resolver for the route, unless it is already known."""
        resolver = self._middleware.route_resolver
        if self.route is None and resolver is not None:
            try:
                self.route = resolver(self._environ)
            except Exception:  # noqa: BLE001 - an unresolvable route is just unmatched
                self.route = None

    def __iter__(self) -> Iterator[bytes]:
        # A generator: the server's iter() and each next() are one call each. The handle is
        # in _BODIES_OPEN from the first next(), when the server starts sending the body,
        # until the next() after the last chunk: still in it when close() comes means the
        # server stopped sending (the client went away).
        # The app's body may be its own generator, run here after __call__ left the
        # request's context: a line it logs finds this frame on the stack and takes the
        # request's ids from ``self`` (logs.body_on_stack, which looks only while
        # _BODIES_OPEN is not empty; the OTel context is not entered again, so a span
        # started here has no parent).
        _BODIES_OPEN.add(self)
        try:
            for chunk in self.inner:
                self.response_bytes += len(chunk)
                yield chunk
        except _DISCONNECTS:
            self.disconnected = True
            raise
        except GeneratorExit:
            # Closed before the last next(): the server dropped the body (a failed write
            # unwound its loop, or it stopped after the bytes it expected).
            self.disconnected = True
            raise
        except BaseException as exc:
            self.exception = exc
            raise
        finally:
            _BODIES_OPEN.discard(self)

    def close(self) -> None:
        try:
            if self in _BODIES_OPEN and self.exception is None:
                # The server stopped before the last byte: the client went away.
                self.disconnected = True
                _BODIES_OPEN.discard(self)  # the server may keep the suspended iterator
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            if self.route is None:
                self.resolve_route()
            if self.whole_record:
                self._done()
            else:  # what _done() does for this handle, one call less
                self._observer.finish(self)
            # environ -> handle -> environ is a cycle; break it so refcounting
            # frees the request at once instead of leaving it to the cyclic GC.
            try:
                del self._environ[HANDLE_KEY]
            except KeyError:  # the app took it out
                pass


class _MetricsOnlyBody(_ObservedBody):
    """The body when pyobs records metrics only, made by ObservabilityMiddleware: it records a
    whole response itself (RequestHandle._done), and its request facts are made only if
    something asks for them."""

    __slots__ = ("_facts",)
    _facts: RequestFacts  # unset until asked for

    @property
    def facts(self) -> RequestFacts:
        """The request facts, made when first asked (the common path asks for none)."""
        try:
            return self._facts
        except AttributeError:
            facts = self._facts = facts_from_environ(self._environ, False)
            return facts

    @facts.setter
    def facts(self, facts: RequestFacts) -> None:
        self._facts = facts


# A line logged while a body's chunk is made finds its request through this code object on
# the stack (logs.body_code). A build compiled to C has no frames for it: no ids there.
logs.body_code = getattr(_ObservedBody.__iter__, "__code__", None)
