"""Instructions each configuration adds per request, counted by valgrind: the same figure on
every run, where the timed benchmarks move by 10-50 % between rounds on a noisy machine.

    python benchmarks/instructions.py                    # flask, fastapi, django; ~15 minutes
    python benchmarks/instructions.py --frameworks flask --requests 500
    python benchmarks/instructions.py --configs bare,pyobs-metrics,prometheus-flask-exporter
    python benchmarks/instructions.py --cache            # cache misses and mispredicts too
    python benchmarks/instructions.py --seeds 3          # medians over three hash seeds

Each configuration of benchmarks/overhead.py (the same apps, the same request, the same span
pipeline: pyobs's batch processor or the SDK's BatchSpanProcessor to an exporter that drops)
runs in its own process under valgrind's callgrind tool, twice: WARMUP requests, then WARMUP +
REQUESTS. The difference of the two totals, divided by REQUESTS, is what one request costs in
user-space instructions on every thread of the process (the span export thread included:
each run flushes its spans before it exits). ``PYTHONHASHSEED=0`` keeps dict and set layouts
the same from run to run. The seed also decides where each (type, attribute name) pair lands
in the interpreter's type-attribute cache: under an unlucky seed two pairs a request uses
evict each other, and every request pays those lookups again (about 3k instructions on a
Flask request, either way: one change measured +3.2k under seed 0 and -3.6k under seed 1).
``--seeds N`` runs every configuration under the seeds 0 .. N-1 and reports each count's
median over them, and pyobs's added counts per seed. The ratios are those of issue 18's
targets, as added instructions.

What it verifies: every request answered 200 in every run (the worker exits non-zero
otherwise). What it cannot show: time. An instruction is not a fixed cost: a cache miss, a
contended lock, a system call or the garbage collector's pauses weigh more than their count,
so these ratios complement the timed ones of overhead.py and realserver.py; they do not
replace them. ``--cache`` runs cachegrind instead of callgrind, with its cache and branch
simulation: first-level instruction- and data-cache misses and mispredicted branches per
request, which show the kinds of work that cost more than their instruction count (a
simulation of this machine's cache sizes, not of its timings). Needs valgrind (Debian's
package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _overhead_apps import BASE_CONFIGS, FRAMEWORKS, PART_CONFIGS  # noqa: E402
from overhead import (  # noqa: E402
    FULL_PEER_TARGET,
    FULL_TARGET,
    METRICS_PEER_TARGET,
    Bench,
    _quiet_stdout,
)

WARMUP = 300  # requests before the counted ones, in both runs: first-use work cancels out
DEFAULT_FRAMEWORKS = ("flask", "fastapi", "django")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(framework: str, config: str, requests: int) -> int:
    """Serve ``requests`` requests to one configuration (run under valgrind by the parent)."""
    _quiet_stdout()
    bench = Bench(framework, config)
    # Not Bench.run(): it sends whole groups of 16 and reads clocks and counters per burst,
    # instructions that would be counted here; this loop sends exactly ``requests``.
    if bench.is_async:

        async def serve() -> int:
            return sum([await bench.one() != 200 for _ in range(requests)])

        bad = bench.loop.run_until_complete(serve())
    else:
        bad = sum(bench.one() != 200 for _ in range(requests))
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:  # the spans still queued are exported inside the counted run
        flush()
    return 1 if bad else 0


# The events --cache reports, as cachegrind names them, and how the tables head them.
CACHE_EVENTS = {
    "Ir": "instr",
    "I1mr": "I1 miss",
    "D1mr": "D1 rd miss",
    "D1mw": "D1 wr miss",
    "Bim": "ind mispred",
    "Bcm": "cond mispred",
}


def count(
    framework: str, config: str, requests: int, cache: bool = False, seed: int = 0
) -> dict[str, int]:
    """Events valgrind counted for one run of ``requests`` requests under PYTHONHASHSEED
    ``seed``: instructions (``Ir``) with callgrind; with ``cache``, cachegrind's simulated
    cache and branch events too."""
    child = [sys.executable, os.path.abspath(__file__), "--child", framework, config]
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "events.out")
        if cache:
            tool = [
                "--tool=cachegrind",
                "--cache-sim=yes",
                "--branch-sim=yes",
                f"--cachegrind-out-file={out}",
            ]
        else:
            tool = ["--tool=callgrind", "--callgrind-out-file=/dev/null"]
        command = ["valgrind", *tool, *child, str(requests)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        events = None
        if done.returncode == 0:
            if cache:
                events = summary(Path(out).read_text()) if os.path.exists(out) else None
            elif (found := _COLLECTED.search(done.stderr)) is not None:
                events = {"Ir": int(found.group(1))}
    if events is None:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise RuntimeError(f"{framework}:{config} failed ({done.returncode}):\n{tail}")
    return events


def summary(text: str) -> dict[str, int] | None:
    """The totals of a cachegrind output file: its ``events:`` names, its ``summary:`` counts."""
    names = values = None
    for line in text.splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:"):
            values = [int(v) for v in line.split()[1:]]
    if names is None or values is None or len(names) != len(values):
        return None
    return dict(zip(names, values, strict=True))


def per_request(
    framework: str, config: str, requests: int, cache: bool = False, seed: int = 0
) -> dict[str, float]:
    """Events one request costs: the (WARMUP + requests) run minus the WARMUP run."""
    longer = count(framework, config, WARMUP + requests, cache, seed)
    shorter = count(framework, config, WARMUP, cache, seed)
    return {event: (longer[event] - shorter[event]) / requests for event in longer}


def median_events(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each event's median over the runs of one configuration (one run per hash seed)."""
    return {event: statistics.median(run[event] for run in runs) for event in runs[0]}


def seed_spread(framework: str, runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """pyobs's rows: the instructions each adds over bare under each seed (bare's run of
    the same seed subtracted), to show how far the layout alone moves the median."""
    bare = runs.get("bare")
    if bare is None or len(bare) < 2:
        return []
    lines = []
    for config, seeded in runs.items():
        if config.startswith("pyobs"):
            added = [run["Ir"] - base["Ir"] for run, base in zip(seeded, bare, strict=True)]
            each = ", ".join(f"{value / 1000:+.1f}k" for value in added)
            lines.append(f"{framework}: {config} added per seed: {each}")
    return lines


def cache_table(framework: str, figures: dict[str, dict[str, float]]) -> list[str]:
    """Per configuration, each cache and branch event added per request over bare, and the
    same for each pyobs row as a share of the lightest Prometheus peer's (by instructions)."""
    bare = figures.get("bare")
    if bare is None:
        return []
    added = {
        config: {e: events[e] - bare[e] for e in CACHE_EVENTS}
        for config, events in figures.items()
        if config != "bare"
    }
    lightest = lightest_peer({config: events["Ir"] for config, events in added.items()})
    lines = [
        f"{framework}: added per request over bare (cachegrind's simulation)",
        f"{'configuration':34}" + "".join(f"{head:>13}" for head in CACHE_EVENTS.values()),
    ]
    for config, events in added.items():
        lines.append(f"{config:34}" + "".join(f"{events[e]:>+13.0f}" for e in CACHE_EVENTS))
        if lightest is not None and config.startswith("pyobs"):
            shares = [
                f"{events[e] / added[lightest][e]:>13.2f}"
                if added[lightest][e] > 0
                else f"{'-':>13}"
                for e in CACHE_EVENTS
            ]
            lines.append(f"{'  / ' + lightest:34}" + "".join(shares))
    return lines


def configs_of(framework: str, chosen: list[str] | None) -> list[str]:
    """Every configuration of ``framework`` (default), or those of ``chosen`` it has: the
    part rows (pyobs-full without its log or its span) only when named."""
    if chosen is None:
        return [*BASE_CONFIGS, *FRAMEWORKS[framework][2]]
    every = [*BASE_CONFIGS, *PART_CONFIGS, *FRAMEWORKS[framework][2]]
    return [c for c in every if c in chosen]


def lightest_peer(added: dict[str, float]) -> str | None:
    """The Prometheus peer (not pyobs, not OTel contrib) that adds the fewest instructions."""
    peers = [config for config in added if not config.startswith(("pyobs", "otel"))]
    return min(peers, key=lambda config: added[config]) if peers else None


def verdicts(framework: str, figures: dict[str, float]) -> list[str]:
    """Issue 18's ratios, read off added instructions (bare's subtracted)."""
    bare = figures.get("bare")
    if bare is None:
        return []
    added = {config: value - bare for config, value in figures.items() if config != "bare"}
    name = lightest_peer(added)
    lines = []
    if name is not None:
        lightest = added[name]
        for config, target in (
            ("pyobs-metrics", METRICS_PEER_TARGET),
            ("pyobs-full", FULL_PEER_TARGET),
        ):
            if config in added and lightest > 0:
                ratio = added[config] / lightest
                verdict = "meets" if ratio <= target else "MISSES"
                lines.append(
                    f"{framework}: {config} {added[config] / 1000:+.1f}k = {ratio:.2f} x lightest"
                    f" Prometheus peer ({name} {lightest / 1000:+.1f}k); target <= {target}:"
                    f" {verdict}"
                )
    contrib = added.get("otel-contrib")
    if contrib and "pyobs-full" in added:
        ratio = added["pyobs-full"] / contrib
        verdict = "meets" if ratio <= FULL_TARGET else "MISSES"
        lines.append(
            f"{framework}: pyobs-full {added['pyobs-full'] / 1000:+.1f}k = {ratio:.2f} x OTel"
            f" contrib ({contrib / 1000:+.1f}k); target <= {FULL_TARGET}: {verdict}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS))
    parser.add_argument("--configs", help="a comma-separated subset (default: all of each)")
    parser.add_argument("--requests", type=int, default=2000, help="counted requests per run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--cache",
        action="store_true",
        help="count with cachegrind instead: simulated cache misses and branch mispredictions"
        " per request too (about twice as slow)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run under PYTHONHASHSEED 0 .. N-1 and report medians (default 1: seed 0 only)",
    )
    parser.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "CONFIG", "REQUESTS"))
    args = parser.parse_args(argv)
    if args.child:
        framework, config, requests = args.child
        return child(framework, config, int(requests))
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    chosen = args.configs.split(",") if args.configs else None
    frameworks = args.frameworks.split(",")
    jobs = [(fw, config) for fw in frameworks for config in configs_of(fw, chosen)]
    seeds = range(max(1, args.seeds))
    tool = "cachegrind, cache and branch simulation" if args.cache else "callgrind"
    hashing = (
        "PYTHONHASHSEED=0" if len(seeds) == 1 else f"medians over PYTHONHASHSEED 0-{len(seeds) - 1}"
    )
    print(
        f"# user-space instructions per request (valgrind {tool}, {hashing}):"
        f" a run of {WARMUP} + {args.requests} requests minus a run of {WARMUP}"
    )
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures: dict[tuple[str, str, int], Any] = {
            (*job, seed): pool.submit(per_request, *job, args.requests, args.cache, seed)
            for job in jobs
            for seed in seeds
        }
        seeded = {key: future.result() for key, future in futures.items()}
    runs = {job: [seeded[(*job, seed)] for seed in seeds] for job in jobs}
    results = {job: median_events(job_runs) for job, job_runs in runs.items()}
    for framework in frameworks:
        events = {config: results[(framework, config)] for config in configs_of(framework, chosen)}
        figures = {config: counted["Ir"] for config, counted in events.items()}
        bare = figures.get("bare")
        print(f"\n{framework}\n{'configuration':34} {'instr/req':>10} {'added':>10} {'x bare':>7}")
        for config, value in figures.items():
            extra = "" if bare is None else f"{value - bare:+10.0f} {value / bare:7.2f}"
            print(f"{config:34} {value:10.0f} {extra}")
        for line in verdicts(framework, figures):
            print(line)
        by_config = {config: runs[(framework, config)] for config in configs_of(framework, chosen)}
        for line in seed_spread(framework, by_config):
            print(line)
        if args.cache:
            print("\n" + "\n".join(cache_table(framework, events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
