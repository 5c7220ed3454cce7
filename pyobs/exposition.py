"""Serve /metrics: content negotiation, multiprocess aggregation, auth, and the own-port server."""

from __future__ import annotations

import base64
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from pyobs._config import Config, MetricsAuth
from pyobs._interop import UniqueFamilies

Headers = list[tuple[str, str]]

_log = logging.getLogger("pyobs")


_process_gauges: dict[str, Gauge] = {}
_process_lock = threading.Lock()
_sampler_pid: int | None = None
PROCESS_SAMPLE_INTERVAL = 5.0  # seconds between a worker's process_* updates


def _file_backed() -> bool:
    """True when this process's metric values are written to PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import values

    return getattr(values.ValueClass, "__name__", "") == "MmapedValue"


def sample_process_metrics() -> None:
    """Multiprocess mode: write this process's ``process_*`` values for any worker's scrape.

    They are ``liveall`` gauges, so each worker shows up with a ``pid`` label and a dead
    worker's values go away with ``mark_process_dead`` (the gunicorn ``child_exit`` hook).
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not _file_backed():
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
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not _file_backed():
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
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return get_metrics().registry  # the default registry unless setup() was given one
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if _file_backed():
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
            b"metrics: authentication required\n",
        )
    encoder, content_type = choose_encoder(accept or "")
    body = encoder(UniqueFamilies(_registry_for_scrape()))
    return 200, [("Content-Type", content_type), ("Content-Length", str(len(body)))], body


class _MetricsHandler(BaseHTTPRequestHandler):
    config: Config

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


_server: ThreadingHTTPServer | None = None
_server_lock = threading.Lock()


def start_metrics_server(config: Config, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve metrics on ``config.metrics_port`` in a daemon thread; once per process.

    Under a pre-fork server only the first worker gets the port; in multiprocess mode any
    worker's page holds every worker's counts, so the others skip quietly.
    """
    global _server
    if config.metrics_port is None:
        return None
    with _server_lock:
        if _server is not None:
            return _server
        handler = type("MetricsHandler", (_MetricsHandler,), {"config": config})
        try:
            server = ThreadingHTTPServer((host, config.metrics_port), handler)
        except OSError as exc:
            _log.warning(
                "pyobs: metrics port %s is taken (%s); another worker serves it",
                config.metrics_port,
                exc,
            )
            return None
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="pyobs-metrics", daemon=True)
        thread.start()
        _server = server
        return server


def stop_metrics_server() -> None:
    """Stop the own-port server (tests)."""
    global _server
    with _server_lock:
        if _server is not None:
            _server.shutdown()
            _server.server_close()
            _server = None
