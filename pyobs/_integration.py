"""What the ten framework adapters share, so they behave the same everywhere.

- ``begin()``: the start of every ``instrument()``: setup, ``PYOBS_DISABLED``, the minimum
  version check (a clear error instead of a strange one later) and the instrument-once marker;
- ``MetricsPage``: the one metrics responder. It answers the metrics path with
  (status, headers, body) for the framework to send, unless the app serves that path itself:
  then pyobs warns once, naming the path and the fix, and leaves the route alone;
- ``start_request()``/``request_scope()``/``finish_request()``: one request's observation for
  frameworks that are neither WSGI nor ASGI (Tornado, aiohttp, Sanic, Django, Pyramid),
  failsafe; ``add_request_id()``, ``counted()``/``acounted()`` (body bytes),
  ``keep_exception()`` (exception to status) and ``failsafe()`` for their hooks;
- route templates: ``template()`` (a leading '/') and ``serves_path()`` (route coexistence);
  ``host_port()`` for the Host header.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any, TypeVar

from pyobs import _state, exposition
from pyobs._config import Config
from pyobs._observer import (
    RequestFacts,
    RequestHandle,
    RequestObserver,
    capped,
    enter_again,
    leave_again,
    report_internal_error,
)
from pyobs._websocket import WebSocketSession
from pyobs.logs import STANDARD_METHODS
from pyobs.redact import redact_header, redact_query

MARK = "_pyobs_instrumented"

# framework -> (distribution, lowest version tested); pyproject's extras say the same.
MINIMUM_VERSIONS: dict[str, tuple[str, str]] = {
    "flask": ("flask", "2.3"),
    "flask-restful": ("flask-restful", "0.3.10"),
    "django": ("django", "4.2"),
    "fastapi": ("fastapi", "0.110"),
    "starlette": ("starlette", "0.37"),
    "tornado": ("tornado", "6.3"),
    "falcon": ("falcon", "3.1"),
    "sanic": ("sanic", "25.3"),
    "pyramid": ("pyramid", "2.1"),
    "aiohttp": ("aiohttp", "3.11"),
}

_log = logging.getLogger("pyobs")
F = TypeVar("F", bound=Callable[..., Any])


class UnsupportedFrameworkVersion(ImportError):
    """The installed framework is older than the lowest version pyobs is tested on."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "3.2.0.dev" -> (3, 2, 0), "0.3.10" -> (0, 3, 10)."""
    parts: list[int] = []
    for part in version.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(part):
            break  # "0rc1": the release ends here
    return tuple(parts)


def check_minimum_version(framework: str) -> None:
    """Raise UnsupportedFrameworkVersion when the framework is older than pyobs supports.

    A framework installed without package metadata (vendored, run from a source tree) is
    not checked: its version is unknown, not too old.
    """
    known = MINIMUM_VERSIONS.get(framework)
    if known is None:
        return
    distribution, minimum = known
    try:
        found = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return
    if release(found) < release(minimum):
        raise UnsupportedFrameworkVersion(
            f"pyobs.{framework.replace('-', '_')} needs {distribution} >= {minimum}, "
            f'found {found}: upgrade it (pip install "pyobs-kit[{framework}]" '
            "installs a supported version)"
        )


def begin(framework: str, holder: Any, options: dict[str, Any]) -> RequestObserver | None:
    """The start of every instrument(): the observer to install, or None when there is
    nothing to do (pyobs disabled, or ``holder`` was instrumented before).

    ``holder`` keeps the instrument-once mark (an attribute); None when the adapter keeps
    its own mark. Raises UnsupportedFrameworkVersion for a framework that is too old.
    """
    config = _state.ensure_setup(framework, **options)
    if config.disabled:
        return None
    check_minimum_version(framework)
    if holder is not None:
        if instrumented(holder):
            return None
        mark(holder)
    return _state.get_observer()


def instrumented(holder: Any) -> bool:
    """True when ``holder`` (an app, its state, pyobs's middleware or app class) is marked."""
    return bool(getattr(holder, MARK, False))


def mark(holder: Any) -> None:
    """Mark ``holder`` as instrumented, so a second instrument() changes nothing."""
    setattr(holder, MARK, True)


class MetricsPage:
    """The metrics page on the app's own port, never shadowing a route the app serves.

    ``app_serves(request)`` tells whether the app has its own route at exactly the metrics
    path (the request is whatever the framework hands over); asked only for that path.
    """

    def __init__(
        self,
        config: Config,
        framework: str,
        app_serves: Callable[[Any], bool] | None = None,
    ) -> None:
        self.config = config
        self.framework = framework
        self.app_serves = app_serves
        self.path: str | None = config.metrics_path if config.metrics_port is None else None
        self.warned = False

    def wanted(self, path: str, request: Any = None) -> bool:
        """True when pyobs should answer this request with the metrics page."""
        if path != self.path:
            return False
        return not self.yields(request)

    def yields(self, request: Any) -> bool:
        """True (after one warning) when the app serves the metrics path itself."""
        if self.app_serves is None:
            return False
        try:
            served = bool(self.app_serves(request))
        except Exception as exc:  # noqa: BLE001 - failsafe: serve the metrics page
            report_internal_error("adapter.metrics_route", exc)
            return False
        if served:
            self.warn()
        return served

    def warn(self) -> None:
        """Say once that the app serves the metrics path itself, and what to do about it."""
        if self.warned:
            return
        self.warned = True
        _log.warning(
            "pyobs: the %s app serves %s itself, so pyobs leaves that route alone and serves "
            "no metrics there; set PYOBS_METRICS_PATH to a free path, or PYOBS_METRICS_PORT "
            "to serve metrics on their own port",
            self.framework,
            self.config.metrics_path,
        )

    def respond(
        self, accept: str | None, authorization: str | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of the metrics page, for the framework to send."""
        return exposition.render(self.config, accept, authorization)

    def answer(
        self, headers: Any, build: Callable[[int, list[tuple[str, str]], bytes], Any]
    ) -> Any:
        """The metrics page as the framework's response: ``build(status, headers, body)``;
        ``headers`` is the request's case-insensitive header mapping."""
        return build(*self.respond(headers.get("Accept"), headers.get("Authorization")))


def metrics_page(
    framework: str, app_serves: Callable[[Any], bool] | None = None
) -> MetricsPage | None:
    """The metrics page for an app, or None when metrics have their own port or pyobs is off."""
    config = _state.ensure_setup()
    if config.disabled or config.metrics_port is not None:
        return None
    return MetricsPage(config, framework, app_serves)


def status_line(status: int) -> str:
    """The WSGI status line for a metrics page status."""
    return f"{status} {'OK' if status == 200 else 'Unauthorized'}"


def start_request(
    observer: RequestObserver,
    facts: Callable[[], RequestFacts],
    where: str,
    kind: type[RequestHandle] = RequestHandle,
) -> RequestHandle | None:
    """Begin observing a request whose framework is neither WSGI nor ASGI (Tornado, aiohttp,
    Sanic; Django and Pyramid too). None for excluded paths, or when the request's facts
    cannot be read: then the error is reported and the request is served unobserved."""
    try:
        return observer.start(facts(), kind)
    except Exception as exc:  # noqa: BLE001 - failsafe: serve it unobserved
        report_internal_error(where, exc)
        return None


def finish_request(
    observer: RequestObserver,
    handle: RequestHandle,
    status: int | None = None,
    exception: BaseException | None = None,
) -> None:
    """Record the request (once) and leave its context, where start_request() entered it."""
    observer.finish(handle, status, exception)
    observer.detach(handle)


@contextmanager
def request_scope(
    observer: RequestObserver, handle: RequestHandle, route: Callable[[], str | None] = lambda: None
) -> Iterator[RequestHandle]:
    """Run the app's part of one request: an exception it raises is recorded (with the route
    when ``route()`` knows it) and raised again; the request's context is left at the end."""
    try:
        yield handle
    except BaseException as exc:
        if handle.route is None:
            handle.route = route()
        observer.finish(handle, exception=exc)
        raise
    finally:
        observer.detach(handle)


def add_request_id(observer: RequestObserver, handle: RequestHandle, headers: Any) -> None:
    """Put pyobs's response headers (X-Request-ID) into a response's header mapping."""
    for name, value in observer.response_headers(handle):
        headers[name] = value


def keep_exception(handle: RequestHandle, exception: BaseException | None, status: int) -> None:
    """Keep the exception the framework rendered only for a server error: a 404 or 403 it
    raised is an answer, not a failure (and no error.type)."""
    handle.exception = exception if status >= 500 else None


def counted(
    handle: RequestHandle, chunks: Iterable[bytes], done: Callable[[], None] = lambda: None
) -> Iterator[bytes]:
    """A streamed body that counts its bytes on the handle; ``done()`` after the last one.
    The request's ids are current while each chunk is made (see enter_again)."""
    chunks = iter(chunks)
    while True:
        tokens = enter_again(handle)
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        finally:
            leave_again(tokens)
        handle.response_bytes += len(chunk)
        yield chunk
    done()


async def acounted(
    handle: RequestHandle, chunks: AsyncIterable[bytes], done: Callable[[], None] = lambda: None
) -> AsyncIterator[bytes]:
    """The same for an asynchronous body."""
    chunks = aiter(chunks)
    while True:
        tokens = enter_again(handle)
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        finally:
            leave_again(tokens)
        handle.response_bytes += len(chunk)
        yield chunk
    done()


def failsafe(where: str) -> Callable[[F], F]:
    """A framework hook (sync or async) whose errors are reported, never raised: an error
    inside pyobs stays in pyobs and the request goes on (the hook returns None)."""

    def wrap(hook: F) -> F:
        if inspect.iscoroutinefunction(hook):

            @functools.wraps(hook)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await hook(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - failsafe
                    report_internal_error(where, exc)
                    return None

            return guarded_async  # type: ignore[return-value]

        @functools.wraps(hook)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return hook(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - failsafe
                report_internal_error(where, exc)
                return None

        return guarded  # type: ignore[return-value]

    return wrap


def watch_websocket(
    session: WebSocketSession,
    ws: Any,
    receive: str,
    sends: Iterable[str],
    is_message: Callable[[Any], bool],
    close_code: Callable[[], int | None] | None = None,
) -> None:
    """Count one accepted WebSocket's messages: its receive and send methods are wrapped on
    this one object (never the class), then the session is told it was accepted."""
    setattr(ws, receive, session.receiver(getattr(ws, receive), is_message, close_code))
    for name in sends:
        send = getattr(ws, name, None)
        if send is not None:  # e.g. aiohttp's send_frame, new in 3.11
            setattr(ws, name, session.sender(send))
    session.on_accept()


def request_attributes(observer: RequestObserver, handle: RequestHandle) -> dict[str, Any]:
    """The request attributes pyobs gives its own SERVER span, bounded and redacted the pyobs
    way (RequestObserver._start_span builds the same; tests compare the two spans)."""
    facts = handle.facts
    attrs: dict[str, Any] = {
        "http.request.method": handle.method,
        "url.path": handle.path,
        "url.scheme": facts.scheme,
        "network.protocol.version": facts.http_version,
    }
    optional = {
        "http.request.method_original": capped(facts.method, 256)
        if handle.method not in STANDARD_METHODS  # _OTHER
        else None,
        "url.query": redact_query(capped(facts.query) or "") if facts.query else None,
        "server.address": capped(facts.server_addr, 256) if facts.server_addr else None,
        "server.port": facts.server_port or None,
        "client.address": handle.client or None,
        "user_agent.original": handle.user_agent or None,
    }
    attrs.update((k, v) for k, v in optional.items() if v is not None)
    capture = observer._capture_headers
    if capture is not None:
        for name, value in facts.headers.items():
            if capture.fullmatch(name):
                attrs[f"http.request.header.{name}"] = (capped(redact_header(name, value)),)
    return attrs


def redact_adopted_span(handle: RequestHandle | None) -> None:
    """A SERVER span pyobs adopted from the framework (FastAPI's native one) gets pyobs's
    request attributes over the framework's own: the same redaction and bounds as pyobs's
    span. Failsafe: the request goes on."""
    observer = _state.get_observer()
    if handle is None or handle.span is None or handle.owns_span or observer is None:
        return
    try:
        handle.span.set_attributes(request_attributes(observer, handle))
    except Exception as exc:  # noqa: BLE001 - failsafe
        report_internal_error("adapter.adopted_span", exc)


def template(pattern: Any) -> str | None:
    """A framework's route pattern with one leading '/' ("" is the root); None for None."""
    return None if pattern is None else "/" + str(pattern).lstrip("/")


def serves_path(patterns: Iterable[Any], path: str) -> bool:
    """True when one route pattern is exactly ``path`` (a catch-all that matches it does not
    count): the app's own route at the metrics path wins."""
    return any(template(p) == path for p in patterns)


def host_port(host: str | None) -> tuple[str | None, int | None]:
    """(name, port) from a Host header value ("shop:8000"); None for what it does not say."""
    name, colon, port = (host or "").rpartition(":")
    if not colon or not port.isdigit():
        return host or None, None
    return name or None, int(port)
