"""What each private-name shortcut pyobs removed (issue 15) would save, per call.

    python benchmarks/shortcuts.py            # 7 repeats of 200,000 calls each
    python benchmarks/shortcuts.py --quick    # smoke run

For each shortcut pyobs used to take and now leaves to the public API, the old direct path
and today's public path run side by side in this process; the figure is the minimum over the
repeats (the least disturbed run), in microseconds per call, and the difference is what the
public path costs. The direct paths reach into OpenTelemetry's private names on purpose: they
are timed here only, never used by pyobs (its remaining shortcuts are in pyobs/_internals.py).
What it verifies: each pair returns the same value before it is timed.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any


def pairs() -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    """(shortcut, old direct path, public path), each returning a comparable value."""
    from opentelemetry import context, propagate, trace
    from opentelemetry.context import _RUNTIME_CONTEXT  # the removed shortcut, timed only
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    state = trace.DEFAULT_TRACE_STATE
    ids = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    parent = trace.NonRecordingSpan(trace.SpanContext(ids[0], ids[1], False, flags))
    variable = _RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
    prepared = trace.set_span_in_context(parent)
    span_context = parent.get_span_context()
    multi = provider._active_span_processor
    textmap = propagate.get_global_textmap()

    def direct_context() -> Any:
        token = variable.set(prepared)
        current = trace.get_current_span()
        variable.reset(token)
        return current

    def public_context() -> Any:
        token = context.attach(trace.set_span_in_context(parent))
        current = trace.get_current_span()
        context.detach(token)
        return current

    def direct_span_context() -> Any:
        return tuple.__new__(trace.SpanContext, (*ids, False, flags, state, True))

    def public_span_context() -> Any:
        return trace.SpanContext(ids[0], ids[1], False, flags, None)

    def direct_ids() -> Any:
        return f"{span_context[0]:032x}", f"{span_context[1]:016x}"

    def public_ids() -> Any:
        return (
            trace.format_trace_id(span_context.trace_id),
            trace.format_span_id(span_context.span_id),
        )

    no_hooks: tuple[Callable[[Any], None], ...] = ()  # every processor's on_start was empty

    def skipped_on_start() -> Any:
        for hook in no_hooks:
            hook(parent)
        return None

    def provider_on_start() -> Any:
        multi.on_start(parent, parent_context=None)  # type: ignore[arg-type]
        return None

    return [
        ("OTel context variable set directly -> context.attach/detach", direct_context,
         public_context),
        ("SpanContext by tuple.__new__ -> SpanContext()", direct_span_context,
         public_span_context),
        ("hex ids from the tuple -> format_trace_id/format_span_id", direct_ids, public_ids),
        ("empty on_start skipped (bytecode check) -> the provider's processor",
         skipped_on_start, provider_on_start),
        ("propagator kept in a reference -> get_global_textmap()", lambda: textmap,
         propagate.get_global_textmap),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Print per-call figures for every pair; exit 1 if a pair's results differ."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    args = parser.parse_args(argv)
    number, repeat = (2_000, 2) if args.quick else (200_000, 7)
    print(f"# minimum of {repeat} x {number:,} calls; us per call")
    print(f"{'shortcut':<72} {'direct':>7} {'public':>7} {'cost':>7}")
    total = 0.0
    for name, direct, public in pairs():
        if direct() != public():
            print(f"{name}: the two paths disagree ({direct()!r} != {public()!r})")
            return 1
        best = [min(timeit.repeat(f, number=number, repeat=repeat)) / number * 1e6
                for f in (direct, public)]  # fmt: skip
        total += best[1] - best[0]
        print(f"{name:<72} {best[0]:7.3f} {best[1]:7.3f} {best[1] - best[0]:+7.3f}")
    print(f"{'all removed shortcuts, once each per request':<72} {'':7} {'':7} {total:+7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
