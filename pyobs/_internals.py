"""Every touch of another library's private names, in one place (STYLE.md, "Public APIs first").

A shortcut is registered with the distribution it reaches into and the version range it is
tested on. ``gate(name, check)`` runs ``check`` once, at first use: it must show that the
shortcut gives the same result as the public path. When the check fails, raises, or the
installed version is older than the tested range, the shortcut is off for the life of the
process: pyobs warns once (logger ``pyobs.internal``) and uses the public API. ``broken``
turns a shortcut off when it fails later, at run time, and counts the error. ``status()``
lists every shortcut and its state; the tests fail when one is off or diverges.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyobs import _errors

_log = logging.getLogger("pyobs.internal")
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _lock
    # A parent thread may have been running a first-use check (under the lock) at the fork;
    # the child runs that check again itself.
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


@dataclass
class Shortcut:
    """One use of another library's internals, and whether it is in use."""

    name: str
    distribution: str
    tested: tuple[str, str]  # lowest and newest version it is tested on
    component: str  # the pyobs_internal_errors_total component a run-time failure counts in
    what: str
    enabled: bool | None = None  # None until the first use checked it
    reason: str = ""


_SHORTCUTS: dict[str, Shortcut] = {}


def register(
    name: str, distribution: str, tested: tuple[str, str], component: str, what: str
) -> Shortcut:
    """Declare a shortcut (idempotent)."""
    found = _SHORTCUTS.get(name)
    if found is None:
        found = _SHORTCUTS[name] = Shortcut(name, distribution, tested, component, what)
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def gate(name: str, check: Callable[[], bool]) -> bool:
    """True when shortcut ``name`` may be used: checked once, against the public path."""
    shortcut = _SHORTCUTS[name]
    if shortcut.enabled is not None:
        return shortcut.enabled
    with _lock:
        if shortcut.enabled is not None:
            return shortcut.enabled
        version = installed(shortcut.distribution)
        try:
            if version is None:
                ok, reason = False, f"{shortcut.distribution} is not installed"
            elif _version(version) < _version(shortcut.tested[0]):
                ok, reason = False, f"{shortcut.distribution} {version} is older than tested"
            else:
                ok = bool(check())
                reason = "" if ok else "its result differs from the public API's"
        except Exception as exc:  # noqa: BLE001 - a changed library: use the public path
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        shortcut.enabled = ok
        shortcut.reason = reason
    if not ok:
        _log.warning(
            "pyobs: the %s shortcut (%s, tested on %s to %s) is off: %s; "
            "pyobs uses the public API instead (slower, nothing is lost)",
            name,
            shortcut.distribution,
            *shortcut.tested,
            reason,
        )
    return ok


def broken(name: str, exc: BaseException) -> None:
    """A shortcut failed at run time: turn it off, count and log the error."""
    shortcut = _SHORTCUTS[name]
    shortcut.enabled = False
    shortcut.reason = f"failed in use: {type(exc).__name__}: {exc}"
    _errors.report(shortcut.component, exc, f"shortcut {name}")


def status() -> list[Shortcut]:
    """Every registered shortcut and its state."""
    return list(_SHORTCUTS.values())


def recheck(name: str | None = None) -> None:
    """Forget the outcome of the checks (tests): the next use checks again."""
    for shortcut in _SHORTCUTS.values():
        if name is None or shortcut.name == name:
            shortcut.enabled = None
            shortcut.reason = ""


# -- OpenTelemetry SDK ------------------------------------------------------------------

OTEL_SPAN = register(
    "otel-sdk-span",
    "opentelemetry-sdk",
    ("1.25.0", "1.45.1"),
    "tracing",
    "pyobs records its SERVER span itself (a ReadableSpan whose fields it sets) and hands it "
    "to the provider's span processor (_active_span_processor, _on_ending); the limits come "
    "from the provider's _span_limits. Saves about 18 us per request over Tracer.start_span.",
)


def sdk_span_processor(provider: Any) -> Any:
    """The provider's span processor (``TracerProvider._active_span_processor``)."""
    return provider._active_span_processor


def sdk_span_limits(provider: Any) -> Any:
    """The provider's SpanLimits (``TracerProvider._span_limits``); from the env if absent."""
    from opentelemetry.sdk.trace import SpanLimits

    limits = getattr(provider, "_span_limits", None)
    return limits if isinstance(limits, SpanLimits) else SpanLimits()


def sdk_on_ending(processor: Any) -> Callable[[Any], None] | None:
    """The processor's ``_on_ending`` hook (called by the SDK's span before ``on_end``)."""
    hook = getattr(processor, "_on_ending", None)
    return hook if callable(hook) else None


def sdk_tracer_enabled(tracer: Any) -> bool:
    """False when the tracer configurator turned pyobs's tracer off (``Tracer._is_enabled``)."""
    is_enabled = getattr(tracer, "_is_enabled", None)
    return bool(is_enabled()) if callable(is_enabled) else True


# -- prometheus_client ------------------------------------------------------------------

PROM_VALUES = register(
    "prometheus-client-values",
    "prometheus_client",
    ("0.20.0", "0.26.0"),
    "metrics",
    "pyobs writes a request's gauge and histogram values straight into prometheus_client's "
    "in-process MutexValue objects (_value, _exemplar; a histogram child's _sum, _buckets, "
    "_upper_bounds) under one lock of its own. Saves 3-7 us per request over observe()/inc().",
)


class AfterGauge(Exception):
    """prom_request failed after the in-flight gauge was already taken down."""


class AfterRequest(AfterGauge):
    """prom_request recorded the request, then failed to count its access line."""


def prom_value(child: Any) -> Any:
    """A counter or gauge child's in-process MutexValue, or None for any other layout."""
    from prometheus_client.values import MutexValue

    value = getattr(child, "_value", None)
    if type(value) is not MutexValue or not hasattr(value, "_value"):
        return None
    return value


def prom_histogram(child: Any) -> tuple[Any, list[Any], list[float]] | None:
    """(sum, buckets, upper bounds) of a histogram child in the in-process layout, or None."""
    from prometheus_client.values import MutexValue

    try:
        total, buckets, bounds = child._sum, child._buckets, child._upper_bounds
    except AttributeError:
        return None
    if any(type(v) is not MutexValue or not hasattr(v, "_value") for v in [total, *buckets]):
        return None
    if len(buckets) != len(bounds) or list(bounds) != sorted(bounds):
        return None
    return total, buckets, bounds


def prom_add(lock: Any, value: Any, amount: float) -> None:
    """``value.inc(amount)``, under pyobs's lock instead of the value's own."""
    # acquire()/release() rather than ``with``: half the cost on CPython 3.10-3.13, where
    # ``with`` also calls __exit__ with three arguments; this runs twice per request.
    lock.acquire()
    try:
        value._value += amount
    finally:
        lock.release()


def prom_inc_cached(lock: Any, values: dict[str, Any], key: str) -> bool:
    """``values[key].inc(1)`` under pyobs's lock, for a value pyobs cached (a log level's
    counter): one call on the request path instead of a lookup and prom_add.
    False when none is cached or the write failed; the caller then takes its public path,
    which finds and reports a broken layout."""
    value = values.get(key)
    if value is None:
        return False
    lock.acquire()  # not ``with``: see prom_add
    try:
        value._value += 1
    except Exception:  # noqa: BLE001 - a changed layout: the caller's public path reports it
        return False
    finally:
        lock.release()
    return True


def prom_request(
    lock: Any,
    direct: tuple[Any, ...],
    duration: float,
    response_bytes: int,
    exemplar: Any,
    line: Any = None,
) -> None:
    """One request's values: in-flight gauge - 1 (``direct[0]`` is pyobs's own deque of the
    requests in flight, PyobsMetrics.inflight), duration (+ exemplar), response size; and,
    when ``line`` is a log-level counter's value, + 1 for the request's access line (the
    same lock: one acquisition for both).

    Raises AfterGauge (from the cause) when a write after the gauge's failed, so the caller
    knows the gauge is already down and completes the rest through the public API; its
    subclass AfterRequest when only the line's count failed (the request is recorded).
    """
    active, d_sum, d_buckets, d_bounds, r_sum, r_buckets, r_bounds = direct
    d_bucket = d_buckets[bisect_left(d_bounds, duration)]
    r_bucket = r_buckets[bisect_left(r_bounds, response_bytes)] if r_sum is not None else None
    lock.acquire()  # not ``with``: see prom_add
    try:
        try:
            active.pop()
        except IndexError:  # a -1 without its +1: RequestHandle.counted rules it out
            pass
        try:
            d_sum._value += duration
            d_bucket._value += 1.0
            if r_bucket is not None:
                r_sum._value += response_bytes
                r_bucket._value += 1.0
            if exemplar is not None:
                d_bucket._exemplar = exemplar
        except Exception as exc:
            raise AfterGauge() from exc
        if line is not None:
            try:
                line._value += 1.0
            except Exception as exc:
                raise AfterRequest() from exc
    finally:
        lock.release()


def prom_observe(lock: Any, direct: tuple[Any, list[Any], list[float]], amount: float) -> None:
    """``histogram_child.observe(amount)`` (no exemplar), under pyobs's lock."""
    total, buckets, bounds = direct
    bucket = buckets[bisect_left(bounds, amount)]
    lock.acquire()  # not ``with``: see prom_add
    try:
        total._value += amount
        bucket._value += 1
    finally:
        lock.release()


# -- web frameworks (the adapters) --------------------------------------------------------

FALCON_ERROR_HANDLER = register(
    "falcon-error-handler",
    "falcon",
    ("3.1.0", "4.4.0"),
    "adapter",
    "pyobs wraps the app's handler for Exception (App._error_handlers: Falcon has no public "
    "getter) so an exception Falcon renders as a 500 is recorded with its type. Off: the "
    "500 is still recorded, with error.type '500' instead of the exception's type.",
)


def falcon_exception_handler(app: Any) -> Any:
    """The app's handler for ``Exception`` (``App._error_handlers``); None when it is off."""

    def check() -> bool:
        # The private read returns what the public add_error_handler() installed.
        import falcon

        def marker(req: Any, resp: Any, ex: Exception, params: Any) -> None:
            """A probe handler."""

        probe = falcon.App()
        probe.add_error_handler(Exception, marker)
        return probe._error_handlers.get(Exception) is marker

    if not gate(FALCON_ERROR_HANDLER.name, check):
        return None
    try:
        handler = app._error_handlers.get(Exception)
    except Exception as exc:  # noqa: BLE001 - a changed Falcon: the public path
        broken(FALCON_ERROR_HANDLER.name, exc)
        return None
    return handler if callable(handler) else None


FASTAPI_TRACING = register(
    "fastapi-native-tracing",
    "fastapi",
    ("0.162.5", "0.165.0"),  # 0.162.5: the newest FastAPI on Python 3.10 (the 3.10 run)
    "adapter",
    "FastAPI's native telemetry makes its own SERVER span; pyobs owns the request's span, so "
    "it sets the app's telemetry option 'tracing' to False after the app was built "
    "(FastAPI._telemetry; the public way is FastAPI(telemetry={'tracing': False})). Off: "
    "pyobs adopts FastAPI's span, one span per request, and says how to turn it off.",
)


def fastapi_tracing_off(app: Any) -> bool:
    """Turn FastAPI's native SERVER span off on a built app; False when the shortcut is off."""

    def check() -> bool:
        # Setting the option afterwards gives the app the public constructor's config.
        from fastapi import FastAPI

        public: Any = FastAPI(telemetry={"tracing": False})
        probe: Any = FastAPI()
        probe._telemetry["tracing"] = False
        return bool(
            probe._telemetry == public._telemetry
            and probe._native_telemetry.config is probe._telemetry
        )

    if not gate(FASTAPI_TRACING.name, check):
        return False
    try:
        app._telemetry["tracing"] = False
    except Exception as exc:  # noqa: BLE001 - a changed FastAPI: the public path
        broken(FASTAPI_TRACING.name, exc)
        return False
    return True
