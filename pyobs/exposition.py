"""Serve /metrics: content negotiation, multiprocess aggregation, auth, and the own-port server."""

from __future__ import annotations

import base64
import contextlib
import errno
import hmac
import http.client
import logging
import os
import queue
import re
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from pyobs import _multiproc
from pyobs._config import Config, MetricsAuth
from pyobs._interop import UniqueFamilies

Headers = list[tuple[str, str]]

_log = logging.getLogger("pyobs")


_process_gauges: dict[str, Gauge] = {}
_process_lock = threading.Lock()
_sampler_pid: int | None = None
PROCESS_SAMPLE_INTERVAL = 5.0  # seconds between a worker's process_* updates
FORK_WAIT = 2.0  # seconds a fork waits at most for a process sample to end
# The own metrics port (PYOBS_METRICS_PORT): see MetricsServer.
MAX_THREADS = 4  # requests handled at once; a scrape takes milliseconds
MAX_WAITING = 128  # connections that have sent nothing yet; beyond it the oldest is closed
IDLE_TIMEOUT = 10.0  # seconds a client may stay silent, before or within its request
PROBE_TIMEOUT = 2.0  # seconds to ask the holder of a taken port who it is
_AUTH_REQUIRED = b"metrics: authentication required\n"


def file_backed() -> bool:
    """True when this process's metric values are written to PROMETHEUS_MULTIPROC_DIR."""
    return _multiproc.file_backed()


def sample_process_metrics() -> None:
    """Multiprocess mode: write this process's ``process_*`` values for any worker's scrape.

    They are ``liveall`` gauges, so each worker shows up with a ``pid`` label and a dead
    worker's values go away with ``mark_process_dead`` (the gunicorn ``child_exit`` hook).
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not file_backed():
        return
    with _process_lock:
        for family in ProcessCollector(registry=None).collect():
            for sample in family.samples:
                gauge = _process_gauges.get(sample.name)
                if gauge is None:
                    gauge = Gauge(
                        sample.name,
                        family.documentation,
                        multiprocess_mode="liveall",
                        registry=None,
                    )
                    _process_gauges[sample.name] = gauge
                gauge.set(sample.value)


def start_process_sampler(interval: float = PROCESS_SAMPLE_INTERVAL) -> None:
    """Keep this worker's ``process_*`` values fresh in multiprocess mode (once per process)."""
    global _sampler_pid
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not file_backed():
        return
    with _process_lock:
        if _sampler_pid == os.getpid():
            return
        _sampler_pid = os.getpid()

    def run() -> None:
        while True:
            try:
                sample_process_metrics()
            except Exception as exc:  # noqa: BLE001 - a sampling failure must not kill the worker
                _log.debug("pyobs: process metrics sampling failed: %s", exc)
            time.sleep(interval)

    threading.Thread(target=run, name="pyobs-process-metrics", daemon=True).start()


_scrape_hooks: list[Callable[[], None]] = []


def before_scrape(hook: Callable[[], None]) -> None:
    """Run ``hook`` before every scrape renders (pyobs_info is written then); added once."""
    if hook not in _scrape_hooks:
        _scrape_hooks.append(hook)


def _registry_for_scrape() -> CollectorRegistry:
    """The default registry, or in multiprocess mode a fresh one that sums every worker's files."""
    from pyobs.metrics import get_metrics

    for hook in _scrape_hooks:
        hook()
    path = _multiproc.directory()
    if path is None:
        return get_metrics().registry  # the default registry unless setup() was given one
    registry = CollectorRegistry()
    # Every process's files summed (dead ones compacted first), with their exemplars.
    registry.register(_multiproc.MultiprocessCollector(path))
    if file_backed():
        # Every worker's process_* come from the files (pid label); this one's are fresh now.
        start_process_sampler()
        sample_process_metrics()
    else:
        # This process imported prometheus_client before the variable was set: its own
        # values live in memory, so report them directly.
        ProcessCollector(registry=registry)
    # The scraping process's own Python runtime metrics, as in single-process mode.
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def check_auth(auth: MetricsAuth | None, authorization: str | None) -> bool:
    """True when ``authorization`` (the raw header) satisfies the configured credentials."""
    if auth is None:
        return True
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if auth.scheme == "bearer":
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.encode(), auth.secret.encode()
        )
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value, validate=True)
    except ValueError:
        return False
    expected = f"{auth.user}:{auth.secret}".encode()
    return hmac.compare_digest(decoded, expected)


def render(
    config: Config, accept: str | None, authorization: str | None
) -> tuple[int, Headers, bytes]:
    """Render the metrics page: (status, headers, body). OpenMetrics when ``accept`` asks for it."""
    if not check_auth(config.metrics_auth, authorization):
        challenge = (
            'Basic realm="metrics"'
            if config.metrics_auth is not None and (config.metrics_auth.scheme == "basic")
            else "Bearer"
        )
        return (
            401,
            [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", challenge)],
            _AUTH_REQUIRED,
        )
    encoder, content_type = choose_encoder(accept or "")
    body = encoder(UniqueFamilies(_registry_for_scrape()))
    return 200, [("Content-Type", content_type), ("Content-Length", str(len(body)))], body


class _MetricsHandler(BaseHTTPRequestHandler):
    config: Config
    # A client that sends nothing (or too slowly) for this long loses its connection.
    timeout = IDLE_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != self.config.metrics_path:
            self.send_error(404)
            return
        status, headers, body = render(
            self.config, self.headers.get("Accept"), self.headers.get("Authorization")
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not access-logged."""


class MetricsServer(HTTPServer):
    """The own-port server: idle connections cost no thread, and requests use a bounded pool.

    One thread accepts and watches connections that have sent nothing yet; a connection goes
    to one of ``MAX_THREADS`` handler threads only once its request starts to arrive. A
    connection idle for ``IDLE_TIMEOUT`` seconds is closed, the oldest first when more than
    ``MAX_WAITING`` wait, and a handler gives up on a client that stalls mid-request for
    ``IDLE_TIMEOUT``. A flood of idle or slow connections therefore neither grows the
    thread count nor keeps a scrape out.
    """

    request_queue_size = MAX_WAITING  # listen backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._jobs: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._queued = 0  # connections handed to the pool and not yet taken by a thread
        self._count_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.owner_pid = os.getpid()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and watch connections until ``shutdown()``."""
        self.socket.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ)
        workers = [
            threading.Thread(target=self._work, name=f"pyobs-metrics-{i}", daemon=True)
            for i in range(MAX_THREADS)
        ]
        for worker in workers:
            worker.start()
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(min(poll_interval, IDLE_TIMEOUT)):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj in self._waiting:  # not dropped earlier in this round
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        self._selector.unregister(conn)
                        del self._waiting[conn]
                        self._dispatch(conn)
                self._expire(time.monotonic())
        finally:
            for conn in list(self._waiting):
                self._drop(conn)
            self._selector.close()
            for _ in workers:
                self._jobs.put(None)
            self._stopped.set()

    def _accept(self) -> None:
        """Take every connection the kernel has queued (a burst must not wait in the backlog)."""
        for _ in range(MAX_WAITING):
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: keep serving the others
                _log.debug("pyobs: metrics port accept failed: %s", exc)
                return
            conn.setblocking(True)
            self._waiting[conn] = time.monotonic()
            self._selector.register(conn, selectors.EVENT_READ)
            while len(self._waiting) > MAX_WAITING:
                self._drop(next(iter(self._waiting)))  # dicts keep order: the oldest first

    def _expire(self, now: float) -> None:
        for conn, since in list(self._waiting.items()):
            if now - since < IDLE_TIMEOUT:
                break  # accepted in order: the rest are younger
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self.shutdown_request(conn)

    def _dispatch(self, conn: socket.socket) -> None:
        """Hand a connection whose request is arriving to the pool (closed when it is full)."""
        with self._count_lock:
            if self._queued >= MAX_WAITING:
                full = True
            else:
                full = False
                self._queued += 1
        if full:
            self.shutdown_request(conn)
            return
        self._jobs.put(conn)

    def _work(self) -> None:
        """One of the MAX_THREADS handler threads (daemons: a stuck client never holds exit)."""
        while (conn := self._jobs.get()) is not None:
            with self._count_lock:
                self._queued -= 1
            try:
                self.finish_request(conn, conn.getpeername())
            except Exception as exc:  # noqa: BLE001 - a broken client must not end the thread
                _log.debug("pyobs: metrics request failed: %s", exc)
            finally:
                self.shutdown_request(conn)

    def shutdown(self) -> None:
        """Stop accepting and wait for the accept loop to end."""
        self._stopping.set()
        self._stopped.wait(5)


_server: MetricsServer | None = None
_server_lock = threading.Lock()


def _probe_holder(config: Config, host: str) -> str:
    """Who holds the metrics port: "sibling", "other-pyobs:<service>" or "program".

    The probe carries no credentials: the holder may be a program we know nothing about.
    """
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        conn = http.client.HTTPConnection(host, config.metrics_port, timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", config.metrics_path, headers={"Accept": "text/plain"})
            response = conn.getresponse()
            body = response.read(4 * 1024 * 1024).decode("utf-8", "replace")
            status = response.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return "program"
    if status == 401 and body == _AUTH_REQUIRED.decode():
        return "sibling"  # a pyobs page behind auth; most likely this service's own worker
    for line in body.splitlines():
        if line.startswith("pyobs_info{"):
            match = re.search(r'service_name="((?:[^"\\]|\\.)*)"', line)
            name = match.group(1) if match else ""
            return "sibling" if name == config.service_name else f"other-pyobs:{name}"
    return "program"


def _port_taken(config: Config, host: str, exc: OSError) -> None:
    """Say plainly why the metrics port could not be bound, and what to do."""
    where = f"{host}:{config.metrics_port}"
    if exc.errno != errno.EADDRINUSE:
        _log.warning(
            "pyobs: cannot serve metrics on %s (%s); check PYOBS_METRICS_ADDR and "
            "PYOBS_METRICS_PORT",
            where,
            exc.strerror or exc,
        )
        return
    holder = _probe_holder(config, host)
    if holder == "sibling":
        multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        _log.info(
            "pyobs: metrics port %s is served by another worker of service %r; %s",
            where,
            config.service_name,
            "its page holds every worker's counts (PROMETHEUS_MULTIPROC_DIR)"
            if multi
            else "without PROMETHEUS_MULTIPROC_DIR its page shows only that worker's requests",
        )
    elif holder.startswith("other-pyobs:"):
        _log.warning(
            "pyobs: metrics port %s is taken by another pyobs service (%r), not %r: this "
            "process serves no metrics; give each service its own PYOBS_METRICS_PORT",
            where,
            holder.split(":", 1)[1],
            config.service_name,
        )
    else:
        _log.warning(
            "pyobs: metrics port %s is taken by another program (it does not serve pyobs "
            "metrics): this process serves no metrics; choose a free PYOBS_METRICS_PORT",
            where,
        )


def start_metrics_server(config: Config, host: str | None = None) -> MetricsServer | None:
    """Serve metrics on ``config.metrics_port`` at ``config.metrics_addr``; once per process.

    Under a pre-fork server only the first worker gets the port; in multiprocess mode any
    worker's page holds every worker's counts, so the others say so at INFO level. A port held
    by another program or another service is reported as such (WARNING).
    """
    global _server
    if config.metrics_port is None:
        return None
    host = config.metrics_addr if host is None else host
    with _server_lock:
        if _server is not None and _server.owner_pid == os.getpid():
            return _server
        handler = type("MetricsHandler", (_MetricsHandler,), {"config": config})
        try:
            server = MetricsServer((host, config.metrics_port), handler)
        except OSError as exc:
            _port_taken(config, host, exc)
            return None
        thread = threading.Thread(target=server.serve_forever, name="pyobs-metrics", daemon=True)
        thread.start()
        _server = server
        return server


def _after_fork_in_child() -> None:
    """A forked child does not serve the parent's port; say so when its requests go unseen.

    Typical case: gunicorn ``--preload`` runs ``setup()`` in the master, which binds the
    metrics port and then forks the workers that handle the requests.

    The child also gets fresh locks: a thread of the parent may have held one at the fork,
    and the child would wait for it forever. The sampler's lock is taken by the forking
    thread itself (_hold_sampler), so no fork lands inside a sample: a sample sets gauges
    through prometheus_client, whose multiprocess values share one lock it does not renew
    in a child (a Celery worker's main process samples every PROCESS_SAMPLE_INTERVAL and
    at every scrape while it forks new pool processes).
    """
    global _server, _process_lock, _server_lock
    _process_lock = threading.Lock()
    _server_lock = threading.Lock()
    server = _server
    if server is None or server.owner_pid == os.getpid():
        return
    _server = None
    if file_backed():
        return  # every process writes to PROMETHEUS_MULTIPROC_DIR: the parent's page has it all
    # Only under a pre-fork server do forked children serve the requests; a pool child of
    # multiprocessing (fork) serves none, and its silence is right.
    if not any(name in sys.modules for name in ("gunicorn.arbiter", "uwsgi")):
        return
    _log.error(
        "pyobs: metrics port %s is served by process %s, which forked this one after "
        "pyobs.setup() (gunicorn --preload?). Without PROMETHEUS_MULTIPROC_DIR each process "
        "counts only its own requests, so that page shows none of this process's. Fix: set "
        "PROMETHEUS_MULTIPROC_DIR to an empty directory every worker can write (and use the "
        "hooks of pyobs.gunicorn), or do not preload the app.",
        server.server_address[1],
        server.owner_pid,
    )


_forking = threading.local()  # .holds: this thread took the sampler's lock for its fork


def _hold_sampler() -> None:
    # A sample in progress ends before the fork (it takes milliseconds). Bounded: a fork from
    # a signal handler that interrupted a sample on the same thread goes ahead without it.
    _forking.holds = _process_lock.acquire(timeout=FORK_WAIT)


def _release_sampler() -> None:
    if getattr(_forking, "holds", False):
        _forking.holds = False
        _process_lock.release()


os.register_at_fork(
    before=_hold_sampler, after_in_parent=_release_sampler, after_in_child=_after_fork_in_child
)


def serving_in_this_process() -> MetricsServer | None:
    """The own-port server when this very process serves it, else None."""
    server = _server
    return server if server is not None and server.owner_pid == os.getpid() else None


def stop_metrics_server() -> None:
    """Stop the own-port server (tests)."""
    global _server
    with _server_lock:
        if _server is not None:
            if _server.owner_pid == os.getpid():
                _server.shutdown()
                _server.server_close()
            _server = None
