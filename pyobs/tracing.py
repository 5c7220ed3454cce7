"""Tracer-provider adoption, W3C context extraction and exporter selection (CONTRACT §4)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

from pyobs import _internals, _otel_env
from pyobs._config import Config
from pyobs._version import __version__
from pyobs.redact import exception_attributes as exception_attributes  # its home until now

_log = logging.getLogger("pyobs")

_tracer: trace.Tracer | None = None

# OpenTelemetry's global propagator, configured by OTEL_PROPAGATORS when the API is imported.
# The API raises at import when a named propagator's package is missing; pyobs must not take
# the application down with it, so it then uses the propagators that do load (and warns at
# setup, naming the package to install).
_propagate: Any
_propagate_error: str | None = None
try:
    from opentelemetry import propagate as _propagate
except Exception as _exc:  # noqa: BLE001 - "Propagator b3multi not found. ...", or its ImportError
    _propagate = None
    _propagate_error = str(_exc)
_fallback_textmap: TextMapPropagator | None = None
# The API's public getter of the global propagator (None when the API failed to import).
_global_textmap: Any = None if _propagate is None else _propagate.get_global_textmap
_installed: list[Any] = []  # the provider pyobs installed (kept: the global one stays set)
_missing_propagators: list[str] = []
_warned: list[bool] = []  # the missing-propagator warning was given (once per process)


class _MappingGetter(Getter[Mapping[str, str]]):
    """Reads lower-cased header names from a plain mapping."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _MappingGetter()

# Headers whose presence makes a known propagator's extract() find something; without any of
# them extraction is skipped (it is on every request's path). An unknown propagator type is
# always asked.
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "opentelemetry.trace.propagation.tracecontext.TraceContextTextMapPropagator": ("traceparent",),
    "opentelemetry.baggage.propagation.W3CBaggagePropagator": ("baggage",),
    # Both B3 formats read the single `b3` header and the multi headers alike.
    "opentelemetry.propagators.b3.B3MultiFormat": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.b3.B3SingleFormat": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.b3.B3Format": ("b3", "x-b3-traceid"),
    "opentelemetry.propagators.jaeger.JaegerPropagator": ("uber-trace-id",),
}
_triggers_for: Any = None
_triggers: tuple[str, ...] | None = ()
_W3C_TRIGGERS = ("traceparent", "baggage")


def _learn_triggers(textmap: TextMapPropagator) -> None:
    global _triggers_for, _triggers
    from opentelemetry.propagators.composite import CompositePropagator

    parts: list[Any] = [textmap]
    if type(textmap) is CompositePropagator:
        parts = list(getattr(textmap, "_propagators", [textmap]))
    found: list[str] = []
    for part in parts:
        kind = type(part)
        headers = _TRIGGERS.get(f"{kind.__module__}.{kind.__qualname__}")
        if headers is None:
            _triggers_for, _triggers = textmap, None
            return
        found.extend(h for h in headers if h not in found)
    _triggers_for = textmap
    _triggers = _W3C_TRIGGERS if tuple(found) == _W3C_TRIGGERS else tuple(found)


def textmap() -> TextMapPropagator:
    """The propagator pyobs extracts with: OpenTelemetry's global one (``OTEL_PROPAGATORS``)."""
    if _propagate is not None:
        return _propagate.get_global_textmap()  # type: ignore[no-any-return]
    return _fallback()


def _fallback() -> TextMapPropagator:
    """The propagators of OTEL_PROPAGATORS that load, when OpenTelemetry's import failed."""
    global _fallback_textmap
    if _fallback_textmap is None:
        from importlib.metadata import entry_points

        from opentelemetry.propagators.composite import CompositePropagator

        loaded: list[TextMapPropagator] = []
        for name in _otel_env.propagator_names(os.environ):
            found = list(entry_points(group="opentelemetry_propagator", name=name))
            try:
                loaded.append(found[0].load()())
            except Exception:  # noqa: BLE001 - missing or broken: warned about at setup
                _missing_propagators.append(name)
        _fallback_textmap = CompositePropagator(loaded)
    return _fallback_textmap


def extract(headers: Mapping[str, str]) -> Context | None:
    """The incoming context as the configured propagators read it; None when there is none.

    ``OTEL_PROPAGATORS`` chooses the formats (default W3C tracecontext and baggage; b3,
    b3multi, jaeger with their packages; none). A malformed header yields a context without
    a valid span, so a fresh trace starts.
    """
    propagator = textmap()
    if not _may_carry_context(propagator, headers):
        return None
    return propagator.extract(headers, getter=_GETTER)


def may_carry_context(headers: Mapping[str, str]) -> bool:
    """False when none of the headers the current global propagator reads is present.

    It runs on every request: one call, the propagator asked for with the API's
    ``get_global_textmap()``, and its headers learned again only when the app set another.
    """
    propagator = _global_textmap() if _global_textmap is not None else _fallback()
    if propagator is _triggers_for and _triggers is not None:
        # _may_carry_context()'s common case, inlined: pyobs's own header view.
        has_any = getattr(headers, "has_any", None)
        if has_any is not None:
            return bool(has_any(_triggers))
    return _may_carry_context(propagator, headers)


def _may_carry_context(propagator: TextMapPropagator, headers: Mapping[str, str]) -> bool:
    """False when none of the headers ``propagator`` reads is present.

    pyobs's own header views answer in one call (``has_any``: a set operation on the
    environ or the raw header names); any other mapping is asked name by name.
    """
    if propagator is not _triggers_for:  # set_global_textmap() since: learn its headers
        _learn_triggers(propagator)
    triggers = _triggers
    if triggers is None:
        return True
    has_any = getattr(headers, "has_any", None)
    if has_any is not None:
        return bool(has_any(triggers))
    if triggers is _W3C_TRIGGERS:  # the default: tracecontext,baggage
        return "traceparent" in headers or "baggage" in headers
    return any(name in headers for name in triggers)


def _exporter_names() -> list[str]:
    """OTEL_TRACES_EXPORTER; unset: otlp when an OTLP endpoint is configured, else none."""
    return _otel_env.exporter_names(os.environ)


def _one_line_span(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _make_exporter(name: str) -> Any:
    """The span exporter OTEL_TRACES_EXPORTER names; None (with a warning) when unavailable.

    ``console`` writes one JSON span per line to stderr. ``otlp`` picks HTTP or gRPC from
    ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` (default ``http/protobuf``); over HTTP it is
    pyobs's own exporter (``pyobs._otlp``: the same request, encoded for a fifth of the
    CPU), ``otlp_proto_http`` and ``otlp_proto_grpc`` are the SDK's. Each reads its endpoint,
    headers, timeout, compression and certificates from the environment itself. Any other
    name is loaded like the SDK loads it (entry point group
    ``opentelemetry_traces_exporter``) and built without arguments.
    """
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # Spans go to stderr, one per line, so stdout stays pure JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line_span)
    if name in ("otlp", "otlp_proto_http", "otlp_proto_grpc"):
        protocol = _otel_env.otlp_protocol(os.environ)
        grpc = name == "otlp_proto_grpc" or (name == "otlp" and protocol == "grpc")
        if name == "otlp" and not grpc:
            from pyobs import _otlp

            if _otlp.takes_over(os.environ):
                try:
                    return _otlp.OtlpHttpSpanExporter()
                except ImportError:  # requests: installed with pyobs-kit[otlp]
                    pass
        try:
            if grpc:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
        except ImportError:
            _log.warning(
                "pyobs: OTLP export (%s) was asked for but the exporter is not installed; "
                'install "pyobs-kit[otlp]". Spans are not exported.',
                "grpc" if grpc else "http/protobuf",
            )
            return None
        try:
            return OTLPSpanExporter()
        except Exception as exc:  # noqa: BLE001 - e.g. a credential provider that is missing
            _log.warning(
                "pyobs: the OTLP exporter (%s) cannot be built (%s); spans are not exported",
                "grpc" if grpc else "http/protobuf",
                exc,
            )
            return None
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    try:
        return found[0].load()()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop the app
        _log.warning(
            "pyobs: OTEL_TRACES_EXPORTER names %r, which cannot be loaded (%s); "
            "its spans are not exported",
            name,
            exc,
        )
        return None


def _warn_missing_propagators() -> None:
    """Say once, at setup, which OTEL_PROPAGATORS entries are not installed."""
    if _propagate is not None or _warned:
        return
    _warned.append(True)
    _fallback()
    names = list(dict.fromkeys(_missing_propagators))
    packages = sorted({_otel_env.KNOWN_PROPAGATORS.get(n, n) for n in names})
    _log.warning(
        "pyobs: OTEL_PROPAGATORS names %s, but the package is not installed "
        "(pip install %s); incoming %s headers are not read until it is. OpenTelemetry's "
        "own propagation module cannot be imported in this process (%s).",
        ", ".join(names) or "a propagator",
        " ".join(packages),
        "/".join(names) or "its",
        _propagate_error,
    )


def configure_tracing(config: Config) -> trace.Tracer:
    """Adopt the global TracerProvider if the app set one; otherwise install an SDK provider.

    The provider's resource names the service exactly as pyobs's logs and ``pyobs_info`` do
    (``config.service_name``, resolved from the options, PYOBS_ and OTEL_ variables), merged
    over what the resource detectors and OTEL_RESOURCE_ATTRIBUTES give.
    """
    global _tracer
    _warn_missing_propagators()
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider) and config.tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from pyobs._spans import PyobsTracerProvider, batch_processor

        attributes: dict[str, str] = {"service.name": config.service_name}
        if config.service_version:
            attributes["service.version"] = config.service_version
        if config.environment:
            attributes["deployment.environment.name"] = config.environment
        # Resource.create runs the detectors (OTEL_EXPERIMENTAL_RESOURCE_DETECTORS) and merges
        # OTEL_RESOURCE_ATTRIBUTES; the SDK's own samplers come from OTEL_TRACES_SAMPLER[_ARG]
        # inside TracerProvider, a plug-in sampler from its entry point.
        sdk = PyobsTracerProvider(resource=Resource.create(attributes), sampler=_plugin_sampler())
        for name in _exporter_names():
            exporter = _make_exporter(name)
            if exporter is not None:
                # Batched export counts every span it loses (pyobs/_spans.py, issue 16).
                processor = SimpleSpanProcessor if name == "console" else batch_processor
                sdk.add_span_processor(processor(exporter))
                if processor is batch_processor:
                    # SIGTERM flushes the queued spans before the process ends (_spans.py).
                    from pyobs._spans import install_sigterm

                    install_sigterm()
        trace.set_tracer_provider(sdk)
        provider = trace.get_tracer_provider()
        _installed.append(provider)
    elif config.tracing and provider not in _installed:
        _check_adopted_resource(provider, config)
    _tracer = provider.get_tracer("pyobs", __version__)
    return _tracer


def _plugin_sampler() -> Any:
    """A sampler OTEL_TRACES_SAMPLER names through its entry point; None for the SDK's own."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not name or name in _otel_env.SDK_SAMPLERS:
        return None
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_sampler", name=name))
    try:
        factory = found[0].load()
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG")
        return factory(arg) if arg is not None else factory()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in: the SDK's default instead
        _log.warning(
            "pyobs: OTEL_TRACES_SAMPLER=%s cannot be loaded (%s); using parentbased_always_on",
            name,
            exc,
        )
        return None


def _check_adopted_resource(provider: Any, config: Config) -> None:
    """Warn when the application's own provider names the service unlike pyobs's logs."""
    resource = getattr(provider, "resource", None)
    name = getattr(resource, "attributes", {}).get("service.name")
    if isinstance(name, str) and name != config.service_name:
        _log.warning(
            "pyobs: the application's TracerProvider names the service %r, but pyobs's logs "
            "and pyobs_info say %r; set PYOBS_SERVICE_NAME (or OTEL_SERVICE_NAME) so they "
            "agree",
            name,
            config.service_name,
        )


# pyobs._span (the SDK-backed RequestSpan), imported when a span is first recorded: a
# metrics-only service never loads the OpenTelemetry SDK.
_recorder: Any = None  # a pyobs._span._Recorder for _recorder_for, or None
_recorder_for: Any = None
_start_recorded: Any = None  # pyobs._span._start_recorded, once loaded
request_span_type: Any = None  # pyobs._span.RequestSpan, once loaded (None: no span is one)


def _span_module() -> Any:
    """pyobs._span, imported on first use (it imports the OpenTelemetry SDK)."""
    global _start_recorded, request_span_type
    from pyobs import _span

    _start_recorded, request_span_type = _span._start_recorded, _span.RequestSpan
    return _span


# No module __getattr__ (PEP 562) here: CPython's specialising interpreter reads a
# module's attributes in one guarded load only when the module has none, and the request
# path reads this module's (``tracing._recorder``, ``tracing.request_span_type``) on every
# request. pyobs._span's names are read from pyobs._span.


def _internal_metrics_on() -> bool:
    raw = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "")
    return raw.strip().lower() == "true"


def _get_recorder() -> Any:
    """A recorder for the global provider when the shortcut may serve it; None otherwise."""
    global _recorder, _recorder_for
    provider = trace.get_tracer_provider()
    if provider is _recorder_for:
        return _recorder
    _recorder_for = provider
    _recorder = None
    try:
        from opentelemetry.sdk.trace import Tracer, TracerProvider

        if not isinstance(provider, TracerProvider) or _internal_metrics_on():
            return None
        tracer = provider.get_tracer("pyobs", __version__)
        # A disabled SDK (OTEL_SDK_DISABLED) hands out a no-op tracer: the public path.
        if not isinstance(tracer, Tracer) or not _internals.sdk_tracer_enabled(tracer):
            return None
        span = _span_module()
        if _internals.gate(_internals.OTEL_SPAN.name, span._same_as_sdk):
            _recorder = span._Recorder(provider, tracer)
    except Exception as exc:  # noqa: BLE001 - another SDK layout: the tracer API instead
        _internals.broken(_internals.OTEL_SPAN.name, exc)
        _recorder = None
    return _recorder


def span_ids(span: trace.Span) -> tuple[str, str, bool]:
    """(trace id, span id) in hex and whether the span is sampled.

    For any span; the request path reads pyobs's own span's ``trace_hex``, ``span_hex`` and
    ``is_sampled`` directly (RequestObserver._start_span).
    """
    context = span.get_span_context()
    return (
        "%032x" % context.trace_id,  # noqa: UP031 - faster than format()
        "%016x" % context.span_id,  # noqa: UP031
        context.trace_flags & 1 == 1,
    )


def start_server_span(
    name: str,
    parent: Context | None,
    attributes: dict[str, Any],
    current: trace.Span | None = None,
) -> Any:
    """Start the request's SERVER span: a RequestSpan on the SDK, the tracer API otherwise.

    ``parent`` is the extracted incoming context; without one, the span's parent is the
    current span (``current`` when the caller already looked it up), as the SDK does.
    """
    recorder = _recorder
    # OpenTelemetry sets the global provider once (set_tracer_provider refuses a second
    # one), so a recorder made for it stays right; pyobs's reset forgets it (tests).
    if recorder is None or _recorder_for is None:
        recorder = _get_recorder()
    if recorder is None:
        return get_tracer().start_span(
            name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )
    return _start_recorded(recorder, name, parent, attributes, current)


def get_tracer() -> trace.Tracer:
    """The pyobs tracer (configured by setup)."""
    return _tracer if _tracer is not None else trace.get_tracer("pyobs", __version__)


def _reset() -> None:
    global _tracer, _recorder, _recorder_for
    _tracer = None
    _recorder = None
    _recorder_for = None
