"""The shipper's totals per outcome, mirrored into the contract's Prometheus series, and its
rate-limited warnings on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

OUTCOMES = ("acknowledged", "unconfirmed", "spooled", "dropped", "rejected", "quarantined")
WARN_EVERY_S = 10.0


_retries_counters: dict[int, Any] = {}


def _retries_counter(metrics: Any) -> Any:
    """pyobs_log_shipper_retries_total: metrics.py's if it defines one, else made here once."""
    found = getattr(metrics, "log_shipper_retries", None)
    if found is not None:
        return found
    key = id(metrics.registry)
    if key not in _retries_counters:
        from prometheus_client import Counter

        _retries_counters[key] = Counter(
            "pyobs_log_shipper_retries",
            "Log events sent again after a failed or unanswered attempt (not new deliveries).",
            registry=metrics.registry,
        )
    return _retries_counters[key]


class Counters:
    """The handler's own totals (``stats``) mirrored into the Prometheus counters."""

    def __init__(self) -> None:
        self.stats = dict.fromkeys((*OUTCOMES, "retries"), 0)
        self._lock = threading.Lock()

    def add(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.stats[outcome] += n
        try:
            from pyobs.metrics import get_metrics

            metrics = get_metrics()
            if outcome == "retries":
                _retries_counter(metrics).inc(n)
            else:
                metrics.child(metrics.log_shipper_events, outcome).inc(n)
        except Exception:  # noqa: BLE001 - a metric failure never stops shipping
            pass

    def register(self) -> None:
        """Make every series exist (at 0) before the first event: dashboards see zeros."""
        with contextlib.suppress(Exception):
            from pyobs.metrics import get_metrics

            metrics = get_metrics()
            _retries_counter(metrics)
            for outcome in OUTCOMES:
                metrics.child(metrics.log_shipper_events, outcome)

    def gauge(self, waiting: int) -> None:
        with contextlib.suppress(Exception):
            from pyobs.metrics import get_metrics

            get_metrics().log_shipper_queue.set(waiting)


class RateLimited:
    """stderr warnings at most once per WARN_EVERY_S per kind, with what happened meanwhile."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def warn(self, kind: str, message: str, count: int = 1) -> None:
        now = time.monotonic()
        self._pending[kind] = self._pending.get(kind, 0) + count
        if now - self._last.get(kind, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        self._last[kind] = now
        total = self._pending.pop(kind, 0)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"pyobs shipper: {message} ({total} since the last warning)\n")
            sys.stderr.flush()
