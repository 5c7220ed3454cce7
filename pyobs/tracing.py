"""Tracer-provider adoption, W3C context extraction and exporter selection (CONTRACT §4)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from pyobs._config import Config
from pyobs._version import __version__

_log = logging.getLogger("pyobs")

_tracer: trace.Tracer | None = None


class _MappingGetter(Getter[Mapping[str, str]]):
    """Reads lower-cased header names from a plain mapping."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _MappingGetter()


def extract(headers: Mapping[str, str]) -> Context | None:
    """The incoming context from traceparent/tracestate/baggage; None when there is none.

    A malformed header yields a context without a valid span, so a fresh trace starts.
    """
    if "traceparent" not in headers and "baggage" not in headers:
        return None
    return propagate.extract(headers, getter=_GETTER)


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        return [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        return ["otlp"]
    return []


def _one_line_span(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _make_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # Spans go to stderr, one per line, so stdout stays pure JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line_span)
    if name == "otlp":
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                    OTLPSpanExporter,
                )
        except ImportError:
            _log.warning(
                "pyobs: OTLP export was asked for but the exporter is not installed; "
                'install "pyobs[otlp]". Spans are not exported.'
            )
            return None
        return OTLPSpanExporter()
    _log.warning("pyobs: unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console, none)", name)
    return None


def configure_tracing(config: Config) -> trace.Tracer:
    """Adopt the global TracerProvider if the app set one; otherwise install an SDK provider."""
    global _tracer
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider) and config.tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        attributes: dict[str, str] = {"service.name": config.service_name}
        if config.service_version:
            attributes["service.version"] = config.service_version
        if config.environment:
            attributes["deployment.environment.name"] = config.environment
        # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; the sampler comes from
        # OTEL_TRACES_SAMPLER[_ARG] inside the SDK.
        sdk = TracerProvider(resource=Resource.create(attributes))
        for name in _exporter_names():
            exporter = _make_exporter(name)
            if exporter is not None:
                processor = SimpleSpanProcessor if name == "console" else BatchSpanProcessor
                sdk.add_span_processor(processor(exporter))
        trace.set_tracer_provider(sdk)
        provider = trace.get_tracer_provider()
    _tracer = provider.get_tracer("pyobs", __version__)
    return _tracer


def get_tracer() -> trace.Tracer:
    """The pyobs tracer (configured by setup)."""
    return _tracer if _tracer is not None else trace.get_tracer("pyobs", __version__)


def _reset() -> None:
    global _tracer
    _tracer = None
