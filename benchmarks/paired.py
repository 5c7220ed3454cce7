"""pyobs (metrics-only or full), the bare app and the lightest Prometheus peer, timed in one
process.

`overhead.py` gives each configuration its own worker process. On a noisy host the workers
drift apart by more than a change is worth. This script keeps the bare app, the app with
pyobs metrics-only and the app with the peer in one process. Each gets a burst of requests
in turn, so whatever slows the host slows all three alike. The ratio is the median over
rounds of the CPU time pyobs adds to a burst, divided by the median of what the peer adds.

With ``--baseline DIR`` (another checkout), processes that import pyobs from this checkout
and from DIR alternate ``--pairs`` times, and both series of ratios are printed: a change
measured against the code before it.

With ``--full`` the pyobs app is pyobs full, as ``overhead.py`` measures it: metrics, a span
per request through the batch processor ``pyobs.setup()`` installs (to an exporter that counts
and drops spans) and the ECS access line on stdout, which goes to /dev/null. The target is
then 1.0 (issue 18: every signal for what the peer charges for metrics alone). The bare app
and the peer call no tracing API and log nothing per request, so the process-wide setup
leaves them as they were; the checks below would catch it if they did.

What it checks: every request answers 200, pyobs counted every request sent to its app
(its duration histogram's count) and the peer every request sent to its own (its request
counter), so neither instrumented another app; with ``--full``, also that the exporter
received exactly one span and pyobs wrote exactly one access line per request sent to the
pyobs app, so the other two apps emitted none.

With ``--floors`` (Flask) two more apps take their turns in the same processes: the minimal
metrics middleware and the contract written plainly (``_overhead_apps.MinimalMetrics`` and
``PlainContract``; with ``--full``, the plain one also records an SDK span through the SDK's
``BatchSpanProcessor`` on a provider of its own and writes an access line), each with its
ratio to the peer: what the targets leave once the contract's own work is paid for. More apps
in the rotation change every app's cache weather, so compare the floors with pyobs within
such a run, not with a run without them. Each floor must count every request sent to it (and
the plain full one export one span and write one line per request).

Flask, FastAPI, Starlette and Django. Django's settings exist once per process, so its three
apps share them, each with its own request handler made with its own middleware list
(``_overhead_apps.build_many``).

    python benchmarks/paired.py --framework fastapi [--full] [--baseline DIR] [--pairs 3] [--quick]
    python benchmarks/paired.py --framework flask [--full] --floors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _intervals import median_added  # noqa: E402
from _overhead_apps import (  # noqa: E402
    MINIMAL_CONFIG,
    PLAIN_CONFIG,
    PLAIN_FULL_CONFIG,
    build_many,
    missing_module,
)

# framework -> its lightest Prometheus peer (overhead.py's runs; the peers on the same driver)
PEERS = {
    "django": "django-prometheus",
    "flask": "prometheus-flask-exporter",
    "fastapi": "prometheus-fastapi-instrumentator",
    "starlette": "starlette-exporter",
}
# framework -> the peer's own request counter (its samples summed), checked like pyobs's count
PEER_COUNTERS = {
    "django": "django_http_requests_before_middlewares_total",
    "flask": "flask_http_request_total",
    "fastapi": "http_requests_total",
    "starlette": "starlette_requests_total",
}
TARGET = 0.33  # issue 18: metrics-only at most a third of the lightest peer's cost
FULL_TARGET = 1.0  # issue 18: full (metrics, span, access line) at most the peer's cost
NAMES = ("bare", "pyobs", "peer")
FLOORS = ("minimal", "plain")  # --floors: their apps' names in a run


def child(
    framework: str, rounds: int, requests: int, full: bool = False, floors: bool = False
) -> int:
    """One process: the three apps (five with the floors), bursts in turn; prints one JSON
    line."""
    from overhead import (
        _CountingDropExporter,
        _Drivers,
        _sample,
        emitted,
        in_turn,
        setup_timing_process,
    )

    import pyobs

    out, exporter, processor = setup_timing_process(full, "paired")
    configs = {
        "bare": "bare",
        "pyobs": "pyobs-full" if full else "pyobs-metrics",
        "peer": PEERS[framework],
    }
    if floors:
        configs.update(minimal=MINIMAL_CONFIG, plain=PLAIN_FULL_CONFIG if full else PLAIN_CONFIG)
    built = build_many(framework, list(configs.values()))
    targets = {name: built[config] for name, config in configs.items()}
    plain_spans: Any = None
    if floors and full:
        # The plain span goes through the SDK's own batch processor on a provider of its
        # own, so pyobs's exporter still counts pyobs's spans alone.
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        plain_spans = _CountingDropExporter()
        provider = TracerProvider()
        plain_processor = BatchSpanProcessor(plain_spans)
        provider.add_span_processor(plain_processor)
        targets["plain"].app.wsgi_app.tracer = provider.get_tracer("plain-contract")
    drivers = {name: getattr(_Drivers, t.kind)(t.app) for name, t in targets.items()}
    is_async = asyncio.iscoroutinefunction(drivers["bare"])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sent = 0
    peer_sent = 0
    floor_sent = dict.fromkeys(FLOORS, 0)

    def burst(name: str, count: int) -> float:
        """CPU µs per request over ``count`` requests to one app."""
        nonlocal sent, peer_sent
        one = drivers[name]
        start = time.process_time()
        if is_async:
            statuses = loop.run_until_complete(_many(one, count))
        else:
            statuses = [one() for _ in range(count)]
        spent = time.process_time() - start
        if set(statuses) != {200}:
            raise RuntimeError(f"{name}: answered {sorted(set(statuses))}")
        if name == "pyobs":
            sent += count
        elif name == "peer":
            peer_sent += count
        elif name in floor_sent:
            floor_sent[name] += count
        return spent / count * 1e6

    times = in_turn(burst, list(configs), rounds, requests)
    where = str(Path(pyobs.__file__).resolve().parents[1])
    result: dict[str, Any] = {
        "times": times,
        "sent": sent,
        "counted": _sample("http_server_request_duration_seconds_count"),
        "from": where,
        "peer_sent": peer_sent,
        "peer_counted": _sample(PEER_COUNTERS[framework]),
    }
    if full:
        result.update(emitted(exporter, processor))
    if floors:
        plain = targets["plain"].app.wsgi_app
        result["floors"] = {
            name: {"sent": floor_sent[name], "counted": targets[name].app.wsgi_app.count()}
            for name in FLOORS
        }
        if plain_spans is not None:
            plain_processor.force_flush()
            result["floors"]["plain"].update(
                spans=plain_spans.spans, lines=sum(plain.lines.values())
            )
    print(json.dumps(result), file=out, flush=True)
    return 0


async def _many(one: Any, count: int) -> list[int]:
    return [await one() for _ in range(count)]


def ratios(times: dict[str, list[float]]) -> tuple[float, float, float]:
    """(µs pyobs adds, µs the peer adds, their ratio): medians of the per-round differences."""
    added = median_added(times["pyobs"], times["bare"])
    peer = median_added(times["peer"], times["bare"])
    return added, peer, added / peer if peer > 0 else float("nan")


def floor_problem(name: str, facts: dict[str, int]) -> str:
    """What a floor's counts got wrong: every request sent counted, and the plain full one's
    span and line per request; empty when they hold."""
    sent = facts["sent"]
    if facts["counted"] != sent:
        return f"the {name} floor counted {facts['counted']} of {sent} requests"
    for key in ("spans", "lines"):
        if key in facts and facts[key] != sent:
            return f"the {name} floor: {facts[key]} {key} for {sent} requests"
    return ""


def run_child(
    framework: str,
    rounds: int,
    requests: int,
    pyobs_from: str | None,
    full: bool = False,
    floors: bool = False,
) -> Any:
    roots = [str(ROOT)] if pyobs_from is None else [pyobs_from, str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", framework, str(rounds),
         str(requests), *(["--full"] if full else []), *(["--floors"] if floors else [])],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framework", default="fastapi", choices=sorted(PEERS))
    parser.add_argument("--rounds", type=int, default=40, help="bursts per app per process")
    parser.add_argument("--requests", type=int, default=300, help="requests per burst")
    parser.add_argument("--pairs", type=int, default=3, help="processes per checkout")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout, alternated")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few requests")
    parser.add_argument(
        "--full", action="store_true", help="pyobs full (span and access line too), target 1.0"
    )
    parser.add_argument(
        "--floors",
        action="store_true",
        help="Flask: also the minimal middleware and the contract written plainly",
    )
    parser.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "ROUNDS", "REQUESTS"))
    args = parser.parse_args(argv)
    if args.child:
        framework, rounds, requests = args.child
        return child(framework, int(rounds), int(requests), args.full, args.floors)
    framework = args.framework
    if args.floors and framework != "flask":
        parser.error("--floors is measured on Flask only (the floors read Flask's route)")
    measured = "pyobs-full" if args.full else "pyobs-metrics"
    target = FULL_TARGET if args.full else TARGET
    for config in ("bare", measured, PEERS[framework]):
        missing = missing_module(framework, config)
        if missing is not None:
            parser.error(f"{config} needs {missing}, which is not installed")
    baseline = None
    if args.baseline:
        baseline = str(Path(args.baseline).resolve())
        if not (Path(baseline) / "pyobs" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no pyobs package there")
    rounds, requests, pairs = (3, 20, 1) if args.quick else (args.rounds, args.requests, args.pairs)
    checkouts = [("this", None)] + ([("baseline", baseline)] if baseline else [])
    print(
        f"# paired: {framework}, {measured}, bare and {PEERS[framework]} in one process;"
        f" {rounds} rounds of {requests} requests each, apps in turn; CPU µs per request"
    )
    floor_names = FLOORS if args.floors else ()
    print(
        "pair  checkout   bare  +pyobs   +peer  ratio"
        + "".join(f"  +{name:<7} ratio" for name in floor_names)
    )
    found: dict[str, list[float]] = {name: [] for name, _ in checkouts}
    floor_found: dict[str, list[float]] = {name: [] for name in floor_names}
    checked = 0
    for pair in range(1, pairs + 1):
        for name, pyobs_from in checkouts:
            result = run_child(framework, rounds, requests, pyobs_from, args.full, args.floors)
            if result["counted"] != result["sent"]:
                raise SystemExit(
                    f"{name}: pyobs counted {result['counted']} of {result['sent']} requests"
                )
            if result["peer_counted"] != result["peer_sent"]:
                raise SystemExit(
                    f"{name}: the peer counted {result['peer_counted']} of"
                    f" {result['peer_sent']} requests"
                )
            for key, what in (("spans", "spans exported"), ("lines", "access lines")):
                if args.full and result[key] != result["sent"]:
                    raise SystemExit(f"{name}: {result[key]} {what} for {result['sent']} requests")
            expected = str(Path(pyobs_from).resolve()) if pyobs_from else str(ROOT)
            if result["from"] != expected:
                raise SystemExit(f"{name}: pyobs came from {result['from']}, not {expected}")
            for floor, facts in result.get("floors", {}).items():
                problem = floor_problem(floor, facts)
                if problem:
                    raise SystemExit(f"{name}: {problem}")
            checked += 1
            added, peer, ratio = ratios(result["times"])
            bare = statistics.median(result["times"]["bare"])
            found[name].append(ratio)
            line = f"{pair:>4}  {name:<8} {bare:6.1f} {added:+7.1f} {peer:+7.1f}  {ratio:5.3f}"
            for floor in floor_names:
                plus = median_added(result["times"][floor], result["times"]["bare"])
                floor_found[floor].append(plus / peer if peer > 0 else float("nan"))
                line += f"  {plus:+8.1f} {floor_found[floor][-1]:5.3f}"
            print(line)
    summary = ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in found.items())
    print(f"median ratio to {PEERS[framework]}: {summary} (target <= {target})")
    for floor in floor_names:
        what = "the minimal middleware" if floor == "minimal" else "the contract written plainly"
        print(
            f"{what} ({floor}) / {PEERS[framework]}: {statistics.median(floor_found[floor]):.3f}"
            " (median over processes)"
        )
    spans = "; one span exported and one access line written per request" if args.full else ""
    if args.floors:
        spans += "; each floor counted every request sent to it" + (
            " (the plain one with its span and line)" if args.full else ""
        )
    print(
        "checked: every request answered 200; pyobs and the peer each counted every request"
        f" sent to their app, pyobs came from the checkout named{spans}, in {checked} processes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
