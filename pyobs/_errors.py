"""Errors inside pyobs: counted in ``pyobs_internal_errors_total`` and logged at a limited rate.

An error in one signal never reaches the request (CONTRACT §3). Each one is counted by
component, and its log line is written at most once per ``INTERVAL`` for each (component,
error type); the next line after a quiet spell says how many were left out, so a recurring
fault stays visible for the life of the process instead of going silent after the first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

# "messaging": the Celery and Kafka integrations (pyobs/_messaging.py, docs/celery.md).
COMPONENTS = (
    "metrics",
    "tracing",
    "access_log",
    "shipper",
    "exposition",
    "adapter",
    "messaging",
)
INTERVAL = 60.0  # seconds between two log lines for the same (component, error type)

_log = logging.getLogger("pyobs.internal")
_clock = time.monotonic
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)
# (component, error type) -> [monotonic time of the last line, errors left out since]
_last: dict[tuple[str, str], list[float]] = {}
_counter: Any = None
_children: dict[str, Any] = {}

# Old names pyobs passed to report_internal_error(); anything else is an adapter's.
_WHERE = {
    "detach": "tracing",
    "metrics": "metrics",
    "tracing": "tracing",
    "access_log": "access_log",
    "shipper": "shipper",
    "exposition": "exposition",
}


def _count(component: str) -> None:
    """pyobs_internal_errors_total{component} + 1, on the default registry (made lazily)."""
    global _counter
    child = _children.get(component)
    if child is None:
        from prometheus_client import REGISTRY, Counter

        with _lock:
            if _counter is None:
                _counter = Counter(
                    "pyobs_internal_errors",
                    "Errors inside pyobs, by component; the request went on (see the "
                    "pyobs.internal log).",
                    ["component"],
                    registry=REGISTRY,
                )
            child = _children.get(component)
            if child is None:
                child = _counter.labels(component)
                _children[component] = child
    child.inc()


_input_warnings: Any = None
_input_children: dict[str, Any] = {}


def count_input_warning(logger: str) -> None:
    """pyobs_request_input_warnings_total{logger} + 1: a library warned about request input."""
    global _input_warnings
    try:
        child = _input_children.get(logger)
        if child is None:
            from prometheus_client import REGISTRY, Counter

            with _lock:
                if _input_warnings is None:
                    _input_warnings = Counter(
                        "pyobs_request_input_warnings",
                        "Warnings a library logged about request input while pyobs read it "
                        "(bad baggage or tracestate entries); one line a minute is logged.",
                        ["logger"],
                        registry=REGISTRY,
                    )
                child = _input_children.get(logger)
                if child is None and len(_input_children) < 64:
                    child = _input_children[logger] = _input_warnings.labels(logger)
        if child is not None:
            child.inc()
    except Exception:  # noqa: BLE001 - counting must not break the request
        pass


def report(component: str, exc: BaseException, where: str | None = None) -> None:
    """Count an error inside pyobs and log it at a limited rate; never raises."""
    if component not in COMPONENTS:
        component = "adapter"
    try:
        _count(component)
    except Exception:  # noqa: BLE001 - counting must not break the request either
        pass
    try:
        key = (component, type(exc).__name__)
        now = _clock()
        with _lock:
            entry = _last.get(key)
            if entry is not None and now - entry[0] < INTERVAL:
                entry[1] += 1
                return
            left_out = int(entry[1]) if entry is not None else 0
            _last[key] = [now, 0]
        _log.error(
            "pyobs internal error in %s%s; the request was served%s",
            component,
            f" ({where})" if where else "",
            f" ({left_out} more of this kind in the last {INTERVAL:.0f} s were not logged)"
            if left_out
            else "",
            exc_info=exc,
        )
    except Exception:  # noqa: BLE001 - never let reporting break the request
        pass


def report_internal_error(where: str, exc: BaseException) -> None:
    """The older entry point: ``where`` is a place (``"asgi.scope"``) mapped to a component."""
    component = _WHERE.get(where.partition(".")[0], "adapter")
    report(component, exc, where)


def _reset_rate_limit() -> None:
    with _lock:
        _last.clear()
