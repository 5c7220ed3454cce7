"""Process-wide pyobs state: the effective config and the observer built from it."""

from __future__ import annotations

import os
import threading
from typing import Any

from pyobs._config import Config, ConfigError, load_config
from pyobs._observer import RequestObserver
from pyobs._version import __version__

_lock = threading.RLock()


def _new_lock_after_fork() -> None:
    global _lock
    _lock = threading.RLock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)
_config: Config | None = None
_explicit: dict[str, Any] = {}
_observer: RequestObserver | None = None
_frameworks: set[str] = set()
# A framework built on another instruments that one too; pyobs_info names the outer one.
_SUBSUMED = {"flask-restful": "flask"}
_info_written: tuple[int, tuple[str, ...]] | None = None  # (pid, labels) of pyobs_info


def setup(
    service_name: str | None = None,
    service_version: str | None = None,
    environment: str | None = None,
    **options: Any,
) -> Config:
    """Configure pyobs from the environment and options (options win); idempotent.

    Configures ECS JSON logging, tracing (adopting an existing global TracerProvider) and the
    metrics; returns the effective, frozen config. A malformed value raises ``ConfigError``.
    """
    global _config, _explicit, _observer
    given = {
        k: v
        for k, v in {
            "service_name": service_name,
            "service_version": service_version,
            "environment": environment,
            **options,
        }.items()
        if v is not None
    }
    with _lock:
        merged = {**_explicit, **given}
        config = load_config(**merged)
        _check_metrics_options(config)
        if _config is not None and config == _config:
            return _config
        _explicit = merged
        _config = config
        if config.disabled:
            _observer = None
            return config
        _apply(config)
        return config


def _check_metrics_options(config: Config) -> None:
    from pyobs.metrics import options_for

    try:
        options_for(config)
    except ValueError as exc:
        raise ConfigError(f"metrics customisation: {exc}") from None


def _apply(config: Config) -> None:
    global _observer
    from pyobs import exposition, logs, tracing
    from pyobs.metrics import configure_metrics, options_for

    metrics = configure_metrics(config.metrics_registry, config.max_routes, options_for(config))
    exposition.before_scrape(refresh_info)
    logs.configure_logging(config)
    tracing.configure_tracing(config)
    _set_info(config)
    exposition.start_metrics_server(config)
    _observer = RequestObserver(config, metrics)
    _set_excluded_urls()


def _set_excluded_urls() -> None:
    """OTEL_PYTHON_EXCLUDED_URLS and the variables of the frameworks instrumented so far."""
    from pyobs import _otel_env

    if _observer is not None:
        _observer.exclude_urls(_otel_env.excluded_urls(sorted(_frameworks), os.environ))


def _set_info(config: Config) -> None:
    """Write pyobs_info now in single-process mode; in multiprocess mode at the next scrape.

    A process has exactly one series (its frameworks joined by ","), reading 1. In
    multiprocess mode a series written by the gunicorn master before the fork (``--preload``)
    or before the framework was known would linger in the shared files, so each process
    writes its own when a scrape renders the page (``refresh_info``).
    """
    global _info_written
    _info_written = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        refresh_info()


def _info_labels(config: Config) -> tuple[str, ...]:
    return (
        config.service_name,
        config.service_version,
        config.environment,
        ",".join(sorted(_frameworks - {_SUBSUMED.get(f, "") for f in _frameworks})),
        __version__,
    )


def refresh_info() -> None:
    """Make this process's one pyobs_info series current (exposition calls it per scrape)."""
    global _info_written
    config = _config
    if config is None or config.disabled:
        return
    labels = _info_labels(config)
    written = _info_written
    if written is not None and written == (os.getpid(), labels):
        return
    from pyobs.metrics import get_metrics

    with _lock:
        info = get_metrics().info
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            info.clear()  # prometheus_client cannot clear labels across processes
        elif written is not None and written[0] == os.getpid():
            info.labels(*written[1]).set(0)  # this process's earlier series, now stale
        info.labels(*labels).set(1)
        _info_written = (os.getpid(), labels)


def ensure_setup(framework: str | None = None, **options: Any) -> Config:
    """setup() unless it ran already with the same options; records the framework for pyobs_info."""
    with _lock:
        config = _config if (_config is not None and not options) else setup(**options)
        if framework and framework not in _frameworks and not config.disabled:
            _frameworks.add(framework)
            _set_info(config)
            _set_excluded_urls()
        return config


def get_observer() -> RequestObserver | None:
    """The observer for the current config; None while pyobs is disabled."""
    with _lock:
        if _config is None:
            ensure_setup()
        return _observer


def reset() -> None:
    """Forget everything (tests)."""
    global _config, _explicit, _observer, _info_written
    from pyobs import _observer as observer_module
    from pyobs import exposition, logs, metrics, tracing

    with _lock:
        _config = None
        _explicit = {}
        _observer = None
        _frameworks.clear()
        _info_written = None
        exposition.stop_metrics_server()
        logs._reset()
        metrics._reset()
        tracing._reset()
        observer_module._reported.clear()
