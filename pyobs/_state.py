"""Process-wide pyobs state: the effective config and the observer built from it."""

from __future__ import annotations

import os
import threading
from typing import Any

from pyobs._config import Config, load_config
from pyobs._observer import RequestObserver
from pyobs._version import __version__

_lock = threading.RLock()
_config: Config | None = None
_explicit: dict[str, Any] = {}
_observer: RequestObserver | None = None
_frameworks: set[str] = set()


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
        if _config is not None and config == _config:
            return _config
        _explicit = merged
        _config = config
        if config.disabled:
            _observer = None
            return config
        _apply(config)
        return config


def _apply(config: Config) -> None:
    global _observer
    from pyobs import exposition, logs, tracing
    from pyobs.metrics import get_metrics

    metrics = get_metrics()
    metrics.max_routes = config.max_routes
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
        _observer.excluded_urls = _otel_env.excluded_urls(sorted(_frameworks), os.environ)


def _set_info(config: Config) -> None:
    from pyobs.metrics import get_metrics

    info = get_metrics().info
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        info.clear()  # prometheus_client cannot clear labels across processes
    for framework in sorted(_frameworks) or [""]:
        info.labels(
            config.service_name,
            config.service_version,
            config.environment,
            framework,
            __version__,
        ).set(1)


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
    global _config, _explicit, _observer
    from pyobs import _observer as observer_module
    from pyobs import exposition, logs, metrics, tracing

    with _lock:
        _config = None
        _explicit = {}
        _observer = None
        _frameworks.clear()
        exposition.stop_metrics_server()
        logs._reset()
        metrics._reset()
        tracing._reset()
        observer_module._reported.clear()
