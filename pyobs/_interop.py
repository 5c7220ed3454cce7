"""Living beside OpenTelemetry's own instrumentations (docs/interop.md).

OpenTelemetry's Prometheus exporter (``PrometheusMetricReader``) registers its collector on
prometheus_client's default registry, the one pyobs serves. With an OTel HTTP server
instrumentation also active, that collector yields families pyobs already exports under
the same names (``http_server_active_requests``, and with the stable HTTP conventions
``http_server_request_duration_seconds``): a page with two families of one name is
rejected by promtool, and Prometheus would count every request twice. pyobs keeps its own
family, leaves the other collector's copy out of the page, and warns once, naming the fix.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_log = logging.getLogger("pyobs")
_warned: set[str] = set()
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread (a scrape) may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


def _family_names(family: Any) -> set[str]:
    """Every name a family puts on the page (its own and its samples', suffixes included)."""
    names = {family.name}
    names.update(sample.name for sample in family.samples)
    return names


def _pyobs_collectors() -> set[Any]:
    """The collectors that hold pyobs's own metrics."""
    from pyobs.metrics import get_metrics

    found: set[Any] = set()
    for value in vars(get_metrics()).values():
        if hasattr(value, "collect") and hasattr(value, "_name"):
            found.add(value)
    for source in _own_sources:  # the Celery and Kafka families (pyobs/_messaging.py)
        found.update(source())
    return found


# Other pyobs modules' families, named by a callable each (registered at their import).
_own_sources: list[Callable[[], Iterable[Any]]] = []


def register_own(source: Callable[[], Iterable[Any]]) -> None:
    """Count the collectors ``source()`` returns as pyobs's own (they win a name clash)."""
    if source not in _own_sources:
        _own_sources.append(source)


class UniqueFamilies:
    """A registry view for exposition that never shows two families with one name.

    pyobs's own families win, then prometheus_client's own metrics (the application's),
    then other collectors in registration order.
    Every dropped family is warned about once per process.
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        """The registry's families, without a second family of any name already shown."""
        collectors = getattr(self.registry, "_collector_to_names", None)
        with getattr(self.registry, "_lock", threading.Lock()):
            ordered = list(collectors) if collectors is not None else None
        if ordered is None:  # another registry layout: first family of a name wins
            yield from self._first_wins(self.registry.collect())
            return
        own = _pyobs_collectors()

        def rank(collector: Any) -> int:
            if collector in own:
                return 0
            return 1 if type(collector).__module__.startswith("prometheus_client") else 2

        ordered.sort(key=rank)  # pyobs's, then prometheus_client's, then foreign; stable
        seen: set[str] = set()
        dropped: dict[str, set[str]] = {}
        for collector in ordered:
            for family in collector.collect():
                names = _family_names(family)
                clash = names & seen
                if clash:
                    dropped.setdefault(type(collector).__module__, set()).update(clash)
                    continue
                seen.update(names)
                yield family
        for kind, names in dropped.items():
            _warn(kind, names)

    @staticmethod
    def _first_wins(families: Iterator[Any]) -> Iterator[Any]:
        seen: set[str] = set()
        dropped: set[str] = set()
        for family in families:
            names = _family_names(family)
            if names & seen:
                dropped.update(names & seen)
                continue
            seen.update(names)
            yield family
        if dropped:
            _warn("another collector", dropped)


def _warn(kind: str, names: set[str]) -> None:
    """Warn once per process and kind of collector whose families were left out."""
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    otel = kind.startswith("opentelemetry")
    _log.warning(
        "pyobs: %s also exports %s on the registry pyobs serves; pyobs already records "
        "HTTP server metrics, so its own family is kept and the other copy is left out of "
        "the metrics page. %s",
        "OpenTelemetry's Prometheus exporter" if otel else kind,
        ", ".join(sorted(n for n in names if not n.endswith(("_bucket", "_sum", "_count")))),
        "Fix: drop OTel's HTTP server metrics with a View on your MeterProvider "
        '(View(instrument_name="http.server.*", aggregation=DropAggregation())), or give '
        "PrometheusMetricReader its own registry or a prefix (docs/interop.md)."
        if otel
        else "Fix: rename or unregister the other metric.",
    )
