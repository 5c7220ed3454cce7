"""OTel's current context, read and set without the API's layers where that is safe.

``opentelemetry.context`` keeps the current context in one ``ContextVar`` (its default
runtime context) and reaches it through three or four function calls per operation. On
the request path pyobs reads the current span, attaches the request's context and detaches
it again; ``VAR`` lets it do that on the variable itself. It is None when another runtime
context is configured (``OTEL_PYTHON_CONTEXT``) or the layout is not the one checked here,
and then the public API is used.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from opentelemetry import context as api
from opentelemetry import trace
from opentelemetry.context import Context

INVALID_SPAN = trace.INVALID_SPAN


def _pick() -> tuple[ContextVar[Context] | None, str]:
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        runtime: Any = getattr(api, "_RUNTIME_CONTEXT", None)
        if type(runtime) is not ContextVarsRuntimeContext:
            return None, ""
        var: ContextVar[Context] = runtime._current_context
        # A context set on the variable must be what the API reports as current.
        probe = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        token = var.set(Context({**var.get(), _SPAN_KEY: probe}))
        try:
            same = trace.get_current_span() is probe and api.get_current() is var.get()
        finally:
            var.reset(token)
        return (var, _SPAN_KEY) if same else (None, "")
    except Exception:  # noqa: BLE001 - another API layout: use the public functions
        return None, ""


VAR, SPAN_KEY = _pick()


def current() -> Context:
    """The current context (``opentelemetry.context.get_current()``)."""
    return VAR.get() if VAR is not None else api.get_current()


def span_in(context: Context) -> trace.Span:
    """The span in ``context``, INVALID_SPAN when there is none (``get_current_span``)."""
    if VAR is None:
        return trace.get_current_span(context)
    span = context.get(SPAN_KEY)
    if span is None:
        return INVALID_SPAN
    return span if isinstance(span, trace.Span) else INVALID_SPAN


def current_span() -> trace.Span:
    """The current span (``trace.get_current_span()``)."""
    return span_in(current())


def attach_span(span: trace.Span, context: Context) -> Any:
    """Make ``context`` plus ``span`` current; returns the token for ``detach``."""
    if VAR is None:
        return api.attach(trace.set_span_in_context(span, context))
    return VAR.set(Context({**context, SPAN_KEY: span}))


def detach(token: Any) -> None:
    """Restore the context from before ``attach_span``; raises ValueError for a token that
    belongs to another context (the API would log that and go on)."""
    if VAR is None:
        api.detach(token)
    else:
        VAR.reset(token)
