"""Serve an app on a loopback port with the server its framework provides, in a thread.

Every server binds port 0 or takes a socket already listening on a port the kernel chose, so
no other process can take the port between picking and binding it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.helpers import free_port, listening_socket

__all__ = ["free_port"]  # re-exported for older imports; new code uses tests.helpers

START_TIMEOUT = 15.0


def _wait_listening(port: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the server thread died while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT}s")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """pyobs writes the access log."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def wsgiref_server(app: Any) -> Iterator[str]:
    """The stdlib reference server (what the Falcon and Pyramid quick starts use), threaded."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    port = server.server_port
    yield from _serve_threaded(server.serve_forever, server.shutdown, server.server_close, port)


@contextmanager
def werkzeug_server(app: Any) -> Iterator[str]:
    """Flask's own development server."""
    from werkzeug.serving import make_server as werkzeug_make_server

    server = werkzeug_make_server("127.0.0.1", 0, app, threaded=True)
    port = server.server_port
    yield from _serve_threaded(server.serve_forever, server.shutdown, server.server_close, port)


@contextmanager
def django_server(app: Any) -> Iterator[str]:
    """Django's runserver/LiveServerTestCase server."""
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class Quiet(WSGIRequestHandler):  # type: ignore[misc]
        def log_message(self, format: str, *args: Any) -> None:
            """pyobs writes the access log."""

    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet)
    port = server.server_port
    server.set_app(app)
    yield from _serve_threaded(server.serve_forever, server.shutdown, server.server_close, port)


def _serve_threaded(
    serve: Callable[[], None], shutdown: Callable[[], None], close: Callable[[], None], port: int
) -> Iterator[str]:
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        _wait_listening(port, thread)
        yield f"http://127.0.0.1:{port}"
    finally:
        shutdown()
        close()
        thread.join(10)


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """uvicorn, the server FastAPI and Starlette document."""
    import uvicorn

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_listening(port, thread)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def _loop_thread(
    start: Callable[[socket.socket], Any], stop: Callable[[Any], Any]
) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """Run ``await start(sock)`` on a new loop in a thread; ``await stop(state)`` at the end.

    ``sock`` is already listening (non-blocking) on a port the kernel chose.
    """
    sock = listening_socket()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state = asyncio.run_coroutine_threadsafe(start(sock), loop).result(START_TIMEOUT)
    try:
        _wait_listening(port, thread)
        yield f"http://127.0.0.1:{port}", loop
    finally:
        try:
            asyncio.run_coroutine_threadsafe(stop(state), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


@contextmanager
def tornado_server(app: Any) -> Iterator[str]:
    """Tornado's own HTTPServer."""

    async def start(sock: socket.socket) -> Any:
        from tornado.httpserver import HTTPServer

        server = HTTPServer(app)
        server.add_sockets([sock])
        return server

    async def stop(server: Any) -> None:
        server.stop()
        await server.close_all_connections()

    with _loop_thread(start, stop) as (url, _):
        yield url


@contextmanager
def aiohttp_server(app: Any) -> Iterator[str]:
    """aiohttp's own server (AppRunner + TCPSite)."""
    from aiohttp import web

    async def start(sock: socket.socket) -> Any:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return runner

    async def stop(runner: Any) -> None:
        await runner.cleanup()

    with _loop_thread(start, stop) as (url, _):
        yield url


@contextmanager
def sanic_server(app: Any) -> Iterator[str]:
    """Sanic's own server, started on our loop (its documented low-level API)."""

    async def start(sock: socket.socket) -> Any:
        server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
        await server.startup()
        await server.before_start()
        await server.after_start()
        return server

    async def stop(server: Any) -> None:
        await server.before_stop()
        await server.close()
        await server.after_stop()

    with _loop_thread(start, stop) as (url, _):
        yield url
