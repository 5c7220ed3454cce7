"""Helpers for tests, in pyobs's own suite and in users' suites."""

from __future__ import annotations

from typing import Any

from pyobs import _state

_span_exporter: Any = None


def reset() -> None:
    """Return pyobs to its just-imported state: config, metrics, handlers, servers."""
    _state.reset()
    if _span_exporter is not None:
        _span_exporter.clear()


def span_exporter() -> Any:
    """An in-memory exporter attached to the SDK tracer provider (set up pyobs first).

    Call ``.get_finished_spans()`` on it; ``reset()`` clears it.
    """
    global _span_exporter
    if _span_exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            raise RuntimeError("call pyobs.setup() first: no SDK TracerProvider is installed")
        _span_exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_span_exporter))
    return _span_exporter
