"""What the same pyobs code costs on its own, and inside a framework's request.

pyobs's WSGI middleware is timed in one process around two apps: a trivial WSGI app (a
fixed JSON body, no framework: pyobs's code runs with the caches warm from its last
request) and the Flask app of ``overhead.py`` (``_overhead_apps``: between pyobs's start of
a request and its end, Flask routes, dispatches and builds the response). Each app runs
bare, with pyobs, and with a minimal metrics middleware: a timer, one duration histogram
(its bucket found by bisection, updated under a lock) and the in-flight count, with no
request id, no response-size histogram and no failure guards: the least any WSGI metrics
middleware does. Every app gets a burst of requests in turn, as in ``paired.py``, and the
report gives, per context, the CPU µs each middleware adds (medians over rounds of the
difference to the bare app's burst), and the ratio of the two contexts.

With ``--full`` pyobs records its span (through the batch processor ``pyobs.setup()``
installs, to an exporter that counts and drops spans) and writes its access line to
/dev/null, as ``paired.py --full`` measures it.

What it checks: every request answers 200; pyobs counted every request sent to its two apps
(its duration histogram's count) and the minimal middleware every request sent to its own;
with ``--full``, one span exported and one access line written per pyobs request.

    python benchmarks/context.py [--full] [--rounds 40] [--requests 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _intervals import median_added  # noqa: E402
from _overhead_apps import MinimalMetrics  # noqa: E402

CONTEXTS = ("trivial", "flask")
KINDS = ("bare", "pyobs", "minimal")
BODY = b'{"id":7,"name":"item 7"}'


def trivial_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The response the Flask app gives, without a framework."""
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


def child(rounds: int, requests: int, full: bool) -> int:
    """One process: the six apps, bursts in turn; prints one JSON line."""
    from _overhead_apps import _flask_app
    from overhead import _Drivers, _sample, emitted, in_turn, setup_timing_process

    import pyobs.flask
    from pyobs.wsgi import ObservabilityMiddleware

    out, exporter, processor = setup_timing_process(full, "context")
    apps: dict[str, Any] = {}
    minimal: list[MinimalMetrics] = []
    for context in CONTEXTS:
        for kind in KINDS:
            if context == "trivial":
                app: Any = trivial_app
                if kind == "pyobs":
                    app = ObservabilityMiddleware(
                        trivial_app,
                        route_resolver=lambda environ: "/items/<int:item_id>",
                        framework="wsgi",
                    )
                elif kind == "minimal":
                    app = MinimalMetrics(trivial_app)
                    minimal.append(app)
            else:
                app = _flask_app()
                if kind == "pyobs":
                    pyobs.flask.instrument(app)
                elif kind == "minimal":
                    app.wsgi_app = MinimalMetrics(app.wsgi_app)
                    minimal.append(app.wsgi_app)
            apps[f"{context}-{kind}"] = _Drivers.wsgi(app)
    sent = {"pyobs": 0, "minimal": 0}

    def burst(name: str, count: int) -> float:
        """CPU µs per request over ``count`` requests to one app."""
        one = apps[name]
        start = time.process_time()
        statuses = [one() for _ in range(count)]
        spent = time.process_time() - start
        if set(statuses) != {200}:
            raise RuntimeError(f"{name}: answered {sorted(set(statuses))}")
        kind = name.split("-", 1)[1]
        if kind in sent:
            sent[kind] += count
        return spent / count * 1e6

    times = in_turn(burst, list(apps), rounds, requests)
    result: dict[str, Any] = {
        "times": times,
        "sent": sent,
        "counted": _sample("http_server_request_duration_seconds_count"),
        "minimal_counted": sum(m.count() for m in minimal),
    }
    if full:
        result.update(emitted(exporter, processor))
    print(json.dumps(result), file=out, flush=True)
    return 0


def added(times: dict[str, list[float]], context: str, kind: str) -> float:
    """µs ``kind`` adds in ``context``: the median of its per-round differences to bare."""
    return median_added(times[f"{context}-{kind}"], times[f"{context}-bare"])


def check(result: dict[str, Any], full: bool) -> list[str]:
    """What the run got wrong (nothing, when every count is exact)."""
    problems = []
    sent = result["sent"]
    if result["counted"] != sent["pyobs"]:
        problems.append(f"pyobs counted {result['counted']} of {sent['pyobs']} requests")
    if result["minimal_counted"] != sent["minimal"]:
        problems.append(
            f"the minimal middleware counted {result['minimal_counted']} of {sent['minimal']}"
        )
    if full:
        for key, what in (("spans", "spans exported"), ("lines", "access lines")):
            if result[key] != sent["pyobs"]:
                problems.append(f"{result[key]} {what} for {sent['pyobs']} pyobs requests")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="bursts per app")
    parser.add_argument("--requests", type=int, default=300, help="requests per burst")
    parser.add_argument("--full", action="store_true", help="pyobs full: span and access line")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few requests")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds, requests = (3, 20) if args.quick else (args.rounds, args.requests)
    if args.child:
        return child(rounds, requests, args.full)
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    for name in list(env):
        if name.startswith(("PYOBS_", "OTEL_")):
            del env[name]  # the configuration is the benchmark's, not the shell's
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child",
         "--rounds", str(rounds), "--requests", str(requests), *(["--full"] if args.full else [])],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    problems = check(result, args.full)
    if problems:
        raise SystemExit("; ".join(problems))
    times = result["times"]
    measured = "pyobs full" if args.full else "pyobs metrics-only"
    print(
        f"# context: {measured} and a minimal metrics middleware around a trivial WSGI app and"
        f" inside Flask, one process; {rounds} rounds of {requests} requests, apps in turn;"
        " CPU µs per request"
    )
    print("context    bare   +pyobs  +minimal")
    for context in CONTEXTS:
        bare = statistics.median(times[f"{context}-bare"])
        ours, least = added(times, context, "pyobs"), added(times, context, "minimal")
        print(f"{context:<8} {bare:6.1f} {ours:+8.2f} {least:+9.2f}")
    for kind in ("pyobs", "minimal"):
        alone = added(times, "trivial", kind)
        inside = added(times, "flask", kind)
        ratio = f"{inside / alone:.1f} x" if alone > 0 else "n/a"
        print(f"{kind}: inside Flask / alone = {ratio}")
    spans = "; one span exported and one access line written per pyobs request" if args.full else ""
    print(
        "checked: every request answered 200; pyobs and the minimal middleware each counted"
        f" every request sent to their apps{spans}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
