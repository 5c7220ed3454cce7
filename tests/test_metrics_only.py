"""Metrics-only (tracing and the access log off) records the same metrics as full.

Metrics-only reads fewer request facts and, on ASGI apps, takes its own shorter path through
pyobs (``pyobs/asgi.py``). Each test sends one set of requests to a fresh app in both
configurations and compares what a user reads off /metrics and the responses: every
``http_server_*`` sample (durations by count only, their values being times), the in-flight
gauge back at zero, the X-Request-ID each response carries, and the request id on the app's
own log line. Requests go through the frameworks' own test clients, and also straight
through the ASGI and WSGI interfaces, for what a test client cannot send (header names in
upper case, a repeated header, a client that leaves during a streamed response, a body
that fails half-way). On WSGI apps metrics-only takes its own shorter path too
(``pyobs/wsgi.py``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.core_apps import (
    FACTORIES,
    Client,
    SampleKey,
    compared_samples,
    id_kind,
    json_lines,
)

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "metrics-only": {"tracing": False, "access_log": False},
}
# (method, path, headers, body): what each framework's test client sends.
REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", "/items/7", {}, None),
    ("GET", "/items/8", {"X-Request-ID": "order-42.retry_1"}, None),
    ("GET", "/items/9", {"X-Request-ID": "not a safe id!"}, None),
    ("GET", "/items/10", {"X-Request-ID": "x" * 129}, None),
    ("POST", "/items", {"Content-Type": "application/json"}, b'{"name": "pen"}' * 40),
    ("GET", "/no/such/route", {}, None),
    ("GET", "/boom", {}, None),
    ("GET", "/stream", {}, None),
    ("GET", "/health", {}, None),
    ("HEAD", "/items/7", {}, None),
    ("PURGE", "/items/7", {}, None),
    ("GET", "/items/7", {"Content-Length": "not a number"}, None),
]


def http_samples() -> dict[SampleKey, float]:
    """The samples compared, from the default registry."""
    from prometheus_client import REGISTRY

    return compared_samples(REGISTRY.collect())


def request_ids(out: str) -> list[str]:
    """The request id on each of the app's own log lines (the item route logs one)."""
    return [r.get("http.request.id", "") for r in json_lines(out) if r.get("log.logger") == "app"]


def through_client(framework: str, options: dict[str, Any]) -> list[tuple[int, str]]:
    client = Client(framework, FACTORIES[framework](**options))
    return [
        (reply.status, reply.headers.get("x-request-id", ""))
        for reply in (client.request(*request) for request in REQUESTS)
    ]


def run_config(
    options: dict[str, Any],
    send: Callable[[dict[str, Any]], list[tuple[int, str]]],
    capsys: pytest.CaptureFixture[str],
) -> tuple[list[tuple[int, str]], dict[Any, float], list[str]]:
    from pyobs import testing

    testing.reset()
    capsys.readouterr()
    replies = send(options)
    out = capsys.readouterr().out
    return replies, http_samples(), request_ids(out)


def assert_same(
    send: Callable[[dict[str, Any]], list[tuple[int, str]]],
    capsys: pytest.CaptureFixture[str],
    sent_ids: list[str | None],
    excluded: int = 0,
    excluded_items: int = 0,
    unanswered: int = 0,
) -> None:
    """``unanswered``: requests recorded whose response pyobs never saw start (no X-Request-ID)."""
    full = run_config(CONFIGS["full"], send, capsys)
    lean = run_config(CONFIGS["metrics-only"], send, capsys)
    (full_replies, full_samples, full_logged), (replies, samples, logged) = full, lean
    assert [status for status, _ in replies] == [status for status, _ in full_replies]
    kinds = [id_kind(echoed, sent) for (_, echoed), sent in zip(replies, sent_ids, strict=True)]
    assert kinds == [
        id_kind(echoed, sent) for (_, echoed), sent in zip(full_replies, sent_ids, strict=True)
    ]
    # A safe incoming id is echoed, any other gets a fresh one; an excluded path gets none.
    for kind, sent in zip(kinds, sent_ids, strict=True):
        safe = sent is not None and re.fullmatch(r"[A-Za-z0-9._-]{1,128}", sent) is not None
        assert kind in (("echoed", "none") if safe else ("generated", "none")), (kind, sent)
    assert kinds.count("none") == excluded + unanswered
    generated = [e for (_, e), kind in zip(replies, kinds, strict=True) if kind == "generated"]
    assert len(set(generated)) == len(generated)
    assert samples == full_samples
    counts = {k: v for k, v in samples.items() if k[0].endswith("duration_seconds_count")}
    assert sum(counts.values()) == len(replies) - excluded  # nothing lost, nothing twice
    active = [v for k, v in samples.items() if k[0].startswith("http_server_active_requests")]
    assert active and set(active) == {0.0}
    # The app's log line carries the request's id in both configurations.
    echoed_ids = {echoed for _, echoed in replies if echoed}
    assert len(logged) == len(full_logged) > 0
    # "": a line of an excluded request; an unanswered request's id is logged, never echoed.
    assert len(set(logged) - {""} - echoed_ids) == unanswered
    assert logged.count("") == full_logged.count("") == excluded_items


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_metrics_only_records_what_full_records(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import_or_require(framework)
    sent = [headers.get("X-Request-ID") for _, _, headers, _ in REQUESTS]
    excluded = sum(path == "/health" for _, path, _, _ in REQUESTS)
    assert_same(lambda options: through_client(framework, options), capsys, sent, excluded)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_excluded_urls_see_the_scheme_in_every_configuration(
    framework: str, config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_PYTHON_EXCLUDED_URLS is searched in scheme://host/path with metrics only too (it
    used to see "http" there, as metrics-only did not read the scheme)."""
    import_or_require(framework)
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "^https://")
    app = FACTORIES[framework](**CONFIGS[config])
    statuses = []
    for base in ("https://testserver", "http://testserver"):
        if framework == "flask":
            reply: Any = app.test_client().get("/items/7", base_url=base, buffered=True)
            statuses.append((reply.status_code, "X-Request-ID" in reply.headers))
        else:
            from starlette.testclient import TestClient

            reply = TestClient(app, base_url=base).get("/items/7")
            statuses.append((reply.status_code, "x-request-id" in reply.headers))
    assert statuses == [(200, False), (200, True)]
    counts = [v for k, v in http_samples().items() if k[0].endswith("duration_seconds_count")]
    assert counts == [1.0]


# -- straight through the ASGI interface -------------------------------------------------

# (method, path, headers, request body, the client leaves during the response: no, "send"
# (the server's send fails), "quietly" (the server says so only through receive()))
ASGI_REQUESTS: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, str]] = [
    ("GET", "/items/1", [(b"host", b"t"), (b"X-Request-ID", b"upper-case-name")], b"", ""),
    ("GET", "/items/2", [(b"x-request-id", b"first"), (b"x-request-id", b"second")], b"", ""),
    ("GET", "/items/3", [(b"Content-Length", b"0"), (b"Host", b"t")], b"", ""),
    ("POST", "/items", [(b"content-length", b"600"), (b"host", b"t")], b"x" * 600, ""),
    ("GET", "/stream", [(b"host", b"t")], b"", "send"),
    ("GET", "/stream", [(b"host", b"t")], b"", "quietly"),
    ("GET", "/items/4", [(b"x-request-id", b"\xff\xfe")], b"", ""),
    ("get", "/items/5", [], b"", ""),
    ("GET", "/items/6", [], b"", ""),  # no Host: the URL is the server's (EXCLUDED_URL)
]
# Searched in scheme://host/path; without a Host header the host is the server's address.
EXCLUDED_URL = r"^https://api\.internal:8443/items/6$"


def through_asgi(options: dict[str, Any]) -> list[tuple[int, str]]:
    app = FACTORIES["fastapi"](**options)
    return [asyncio.run(_asgi_request(app, *request)) for request in ASGI_REQUESTS]


async def _asgi_request(
    app: Any,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    leaves: str,
) -> tuple[int, str]:
    sent: list[dict[str, Any]] = []
    gone = asyncio.Event()
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if leaves and message["type"] == "http.response.body":
            gone.set()  # the client leaves after the first chunk
            if leaves == "send":
                raise OSError("the client went away")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},  # the app waits on no receive()
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("api.internal", 8443),
        "state": {},
    }
    try:
        await app(scope, receive, send)
    except Exception:
        assert leaves == "send"
    start = next(m for m in sent if m["type"] == "http.response.start")
    ids = [v.decode() for k, v in start["headers"] if k == b"x-request-id"]
    return start["status"], ids[-1] if ids else ""


@pytest.mark.parametrize("excluded_urls", [None, EXCLUDED_URL], ids=["", "excluded-urls"])
def test_metrics_only_records_what_full_records_through_asgi(
    excluded_urls: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without OTEL_PYTHON_EXCLUDED_URLS metrics-only takes its own path through pyobs/asgi.py;
    with it, the full URL is read and the path is the common one (both compared to full)."""
    import_or_require("fastapi")
    if excluded_urls is not None:
        monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", excluded_urls)
    sent: list[str | None] = []
    for _, _, headers, _, _ in ASGI_REQUESTS:
        values = [v for k, v in headers if k.lower() == b"x-request-id"]
        # Repeated headers are joined (RFC 9110), which no safe id contains.
        sent.append(b",".join(values).decode("latin-1") if values else None)
    excluded = int(excluded_urls is not None)
    assert_same(through_asgi, capsys, sent, excluded=excluded, excluded_items=excluded)


# -- straight through the WSGI interface -------------------------------------------------

# (method, PATH_INFO, extra environ, request body, the server's quirk: "" none, "leaves" (the
# client leaves after the first chunk), "closes twice")
WSGI_REQUESTS: list[tuple[str, str, dict[str, str], bytes, str]] = [
    ("GET", "/items/1", {"HTTP_HOST": "t", "HTTP_X_REQUEST_ID": "safe-id.1"}, b"", ""),
    ("GET", "/items/2", {"HTTP_X_REQUEST_ID": "\xff\xfe"}, b"", ""),  # latin-1, unsafe
    ("POST", "/items", {"CONTENT_LENGTH": "600", "HTTP_HOST": "t"}, b"x" * 600, ""),
    ("GET", "/stream", {"HTTP_HOST": "t"}, b"", "leaves"),
    ("GET", "/stream", {"HTTP_HOST": "t"}, b"", ""),
    ("GET", "/items/caf\xc3\xa9", {}, b"", ""),  # PEP 3333: UTF-8 bytes as latin-1
    ("get", "/items/5", {}, b"", ""),
    ("BREW", "/items/5", {}, b"", ""),
    ("GET", "/boom", {}, b"", ""),
    ("GET", "/health", {}, b"", ""),
    ("GET", "/items/6", {}, b"", ""),  # no Host: the URL is the server's (EXCLUDED_URL)
]
# The raw app's paths (pyobs.wsgi.ObservabilityMiddleware around a bare WSGI callable).
RAW_WSGI_REQUESTS: list[tuple[str, str, dict[str, str], bytes, str]] = [
    ("GET", "/lazy", {}, b"", ""),  # start_response called at the first chunk
    ("GET", "/fails-midway", {}, b"", ""),  # the body raises after one chunk
    ("GET", "/fails-midway", {}, b"", "leaves"),
    ("GET", "/ok", {"CONTENT_LENGTH": "12", "SCRIPT_NAME": "/mounted"}, b"twelve bytes", ""),
    ("GET", "/ok", {}, b"", "leaves"),
    ("GET", "/ok", {}, b"", "closes twice"),
    ("GET", "/no-start", {}, b"", ""),  # never starts a response: the server answers 500
]


def _raw_wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    logging.getLogger("app").info("raw app")  # while the app is called: with the request id
    if environ["PATH_INFO"] == "/no-start":
        return []
    return _raw_body(environ["PATH_INFO"], start_response)


def _raw_body(path: str, start_response: Any) -> Iterator[bytes]:
    if path == "/lazy":
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"late start"
        return
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first chunk"
    if path == "/fails-midway":
        raise RuntimeError("the body failed half-way")
    yield b"second chunk"


def _wsgi_request(
    app: Any, method: str, path: str, extra: dict[str, str], body: bytes, quirk: str
) -> tuple[int, str]:
    """One request as a WSGI server makes it: iterate the body, then close() it."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "api.internal",
        "SERVER_PORT": "8443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **extra,
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
        started.append((status, headers))
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        for _ in chunks:
            if quirk == "leaves":
                break  # the client went away after the first chunk
    except RuntimeError:
        assert path == "/fails-midway"
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
            if quirk == "closes twice":
                close()
    if not started:
        return 500, ""  # the server's own error response
    status, headers = started[-1]
    ids = [value for name, value in headers if name.lower() == "x-request-id"]
    return int(status[:3]), ids[-1] if ids else ""


def through_wsgi(options: dict[str, Any]) -> list[tuple[int, str]]:
    from pyobs.wsgi import ObservabilityMiddleware

    flask_app = FACTORIES["flask"](**options)
    raw = ObservabilityMiddleware(_raw_wsgi_app, route_resolver=lambda environ: None)
    return [_wsgi_request(flask_app, *request) for request in WSGI_REQUESTS] + [
        _wsgi_request(raw, *request) for request in RAW_WSGI_REQUESTS
    ]


@pytest.mark.parametrize("excluded_urls", [None, EXCLUDED_URL], ids=["", "excluded-urls"])
def test_metrics_only_records_what_full_records_through_wsgi(
    excluded_urls: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without OTEL_PYTHON_EXCLUDED_URLS metrics-only takes its own path through pyobs/wsgi.py;
    with it, the full URL is read and the path is the common one (both compared to full).
    Flask's own requests, then a bare WSGI app's: a body that starts the response late, one
    that fails half-way, a client that leaves, a Content-Length the app never reads."""
    import_or_require("flask")
    if excluded_urls is not None:
        monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", excluded_urls)
    sent = [
        extra.get("HTTP_X_REQUEST_ID") for _, _, extra, _, _ in WSGI_REQUESTS + RAW_WSGI_REQUESTS
    ]
    excluded = sum(path == "/health" for _, path, _, _, _ in WSGI_REQUESTS)
    excluded += int(excluded_urls is not None)
    assert_same(
        through_wsgi, capsys, sent, excluded=excluded, excluded_items=excluded - 1, unanswered=1
    )
