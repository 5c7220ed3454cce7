"""The app a real server (gunicorn, uvicorn) loads for benchmarks/realserver.py.

Each worker process imports this module, which builds one configuration of one framework from
``_overhead_apps`` (the same apps the in-process benchmark measures), with the span pipeline
users run in production: the batch processor ``pyobs.setup()`` installs (for pyobs) or the
SDK's ``BatchSpanProcessor`` (for OTel contrib), ``OTEL_BSP_*`` honoured by both, feeding
either an exporter that counts spans and drops them, or the OTLP exporter (HTTP/protobuf or
gRPC, configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables) behind a counter.

Driven by environment variables, set by realserver.py:

- ``RB_FRAMEWORK``: flask | fastapi | django
- ``RB_CONFIG``: bare | pyobs-metrics | pyobs-full | pyobs-full-no-log | pyobs-full-no-span |
  a Prometheus peer | otel-contrib | minimal (Flask only: ``_overhead_apps.MinimalMetrics``,
  the least a WSGI metrics middleware does) | plain-contract, plain-contract-full (Flask only:
  ``_overhead_apps.PlainContract``, what the contract asks of a request, written plainly)
- ``RB_EXPORT``: drop (default) | otlp (the SDK's exporter for the protocol) | pyobs-http
  (pyobs's own OTLP/HTTP exporter, ``pyobs._otlp``, what ``pyobs.setup()`` installs) |
  pyobs-http-requests (the same, sending through requests even to a plain-http endpoint:
  how it sent before it used http.client there)
- ``RB_SERVER``: gunicorn | uvicorn
- ``RB_FACTS``: a directory; every worker writes ``spans.<pid>`` there (spans exported and
  spans the exporter failed to deliver, as JSON) after each export batch and at exit, and
  with ``minimal`` and the ``plain-contract`` rows, ``minimal.<pid>`` (the requests that
  middleware counted) at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _overhead_apps import FLOOR_CONFIGS, PLAIN_FULL_CONFIG, build, pyobs_signals


class CountingExporter:
    """Counts the spans another exporter delivered (or failed to), or drops them after counting.

    The counts go to a small file per process after each batch (the export thread's cost, once
    per batch), so the benchmark reads them after the server has stopped.
    """

    def __init__(self, inner: Any, facts: Path | None) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.inner = inner
        self.success = SpanExportResult.SUCCESS
        self.exported = 0
        self.failed = 0
        self.scopes: dict[str, int] = {}
        self.facts = facts
        self.lock = threading.Lock()
        # pyobs's OTLP exporter encodes each span as it ends, when its processor finds this
        # hook on the exporter it was given (pyobs/_spans.py): passed through, so that the
        # pyobs-http rows run what pyobs.setup() installs.
        prepare = getattr(inner, "pyobs_prepare", None)
        if prepare is not None:
            self.pyobs_prepare = prepare

    def export(self, spans: Sequence[Any]) -> Any:
        result = self.success if self.inner is None else self.inner.export(spans)
        with self.lock:
            if result == self.success:
                self.exported += len(spans)
            else:
                self.failed += len(spans)
            for span in spans:
                if type(span) is bytes:  # a pyobs request span that pyobs_prepare encoded
                    name = "pyobs"
                else:
                    scope = span.instrumentation_scope
                    name = scope.name if scope is not None else "?"
                self.scopes[name] = self.scopes.get(name, 0) + 1
        self.write()
        return result

    def write(self) -> None:
        """Record this process's counts (overwritten: the last write holds the totals)."""
        if self.facts is None:
            return
        data = {"exported": self.exported, "failed": self.failed, "scopes": self.scopes}
        path = self.facts / f"spans.{os.getpid()}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def shutdown(self) -> None:
        if self.inner is not None:
            self.inner.shutdown()
        self.write()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        if self.inner is not None:
            return bool(self.inner.force_flush(timeout_millis))
        return True


def _otlp_exporter() -> Any:
    """The OTLP span exporter pyobs itself would build from the OTEL_ variables."""
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter()


def _install_tracing(facts: Path | None, config: str) -> CountingExporter:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from pyobs._spans import batch_processor

    export = os.environ.get("RB_EXPORT", "drop")
    inner: Any = None
    if export == "otlp":
        inner = _otlp_exporter()
    elif export in ("pyobs-http", "pyobs-http-requests"):
        from pyobs._otlp import OtlpHttpSpanExporter

        inner = OtlpHttpSpanExporter()
        if export == "pyobs-http-requests":
            inner._plain = None  # requests' path, as for https, a proxy or netrc credentials
    exporter = CountingExporter(inner, facts)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    # The processor each side installs for an exporter: pyobs.setup()'s for pyobs (the SDK's
    # class with its losses counted, pyobs/_spans.py), the SDK's own for contrib.
    processor = batch_processor if config.startswith("pyobs") else BatchSpanProcessor
    provider.add_span_processor(processor(exporter))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    # The SDK registers its own exit hook (shutdown flushes the batch); this one runs first
    # (last registered, first run) only to make sure the counts are written even if that
    # hook is missing.
    atexit.register(exporter.write)
    if os.environ.get("RB_SERVER") == "uvicorn":
        _flush_on_sigterm(provider)
    return exporter


def _flush_on_sigterm(provider: Any) -> None:
    """Under uvicorn, flush the last span batch on SIGTERM before the process ends.

    uvicorn handles SIGTERM itself and, after its graceful shutdown, raises the signal again
    with the handler that was there before it started: with the default one the process dies
    without running exit hooks, so the batch processor's last partial batch would be lost (and
    the benchmark would count it as lost). Installed at import, this handler is the one uvicorn
    restores; gunicorn workers keep their own handlers (they install them before the import).
    """

    def flush_then_end(signum: int, frame: Any) -> None:
        provider.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, flush_then_end)


def make_app() -> Any:
    """Build the configured app: tracing first (pyobs and contrib adopt it), then pyobs."""
    framework = os.environ["RB_FRAMEWORK"]
    config = os.environ["RB_CONFIG"]
    facts = Path(os.environ["RB_FACTS"]) if os.environ.get("RB_FACTS") else None
    # pyobs full without one signal (realserver.py --parts): the same app, one signal off.
    tracing, access_log = pyobs_signals(config)
    if tracing or config in ("otel-contrib", PLAIN_FULL_CONFIG):
        _install_tracing(facts, config)
    if config.startswith("pyobs"):
        import pyobs

        pyobs.setup(service_name="bench", tracing=tracing, access_log=access_log)
    if config.startswith("pyobs-full"):
        config = "pyobs-full"
    app = build(framework, config).app
    if config in FLOOR_CONFIGS and facts is not None:
        _count_at_exit(app.wsgi_app, facts)
    return app


def _count_at_exit(middleware: Any, facts: Path) -> None:
    """At the worker's exit, the requests a floor middleware counted (one file per
    process: realserver.py adds them up and checks them against wrk's count)."""

    def write() -> None:
        (facts / f"minimal.{os.getpid()}").write_text(str(middleware.count()))

    atexit.register(write)


# The server imports this module for ``app``; tests import it for the encoder alone.
if os.environ.get("RB_FRAMEWORK"):
    app = make_app()
