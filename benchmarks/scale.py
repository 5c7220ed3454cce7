"""Multiprocess scrape cost: time and page size vs routes, workers and worker restarts.

    python benchmarks/scale.py              # the three curves, about two minutes
    python benchmarks/scale.py --quick      # smoke run: small sizes, one repetition
    python benchmarks/scale.py --json out.json

Each curve compares pyobs's multiprocess scrape (``pyobs.exposition.render``: compaction of
dead workers, exemplars, OpenMetrics) with plain prometheus_client (``MultiProcessCollector``
and ``generate_latest`` in OpenMetrics) over the very same files. The files are real: one
child process records one request per route through pyobs's instruments in multiprocess
mode, and its files are copied under other pids. Live workers are sleeping child processes
(their pids are alive, so nothing of theirs is compacted); a restart is a dead worker's file
set under a pid that cannot exist, handed to ``_multiproc.compact`` as gunicorn's
``child_exit`` hook would. Plain prometheus_client keeps every dead worker's counters and
histograms (its ``mark_process_dead`` removes only live gauges). Scrape figures are the
median of several scrapes, wall clock, in this process. See docs/benchmarks.md, "Scale".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# Records one request (with a trace id, a request body and a log line) per route, then exits.
TEMPLATE = textwrap.dedent(
    """
    import sys
    import pyobs
    from pyobs.metrics import get_metrics

    pyobs.setup(service_name="scale", tracing=False, access_log=False)
    m = get_metrics()
    for i in range(int(sys.argv[1])):
        route = f"/route/{i}/{{item_id}}"
        m.request_started("GET")
        m.request_body("GET", route, 120)
        m.request_finished("GET", route, 200, 0.004, 512, f"{i + 1:032x}")
        m.log_event("info")
    """
)


def _template(routes: int, into: Path) -> dict[str, bytes]:
    """The files one worker writes after one request per route: name pattern -> contents."""
    into.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", TEMPLATE, str(routes)],
        env={
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(into),
            "PYTHONPATH": str(ROOT),
            "PYOBS_MAX_ROUTES": str(routes + 10),
        },
        check=True,
        timeout=300,
    )
    files = {}
    for path in into.iterdir():
        match = re.fullmatch(r"(.*_)\d+((?:-pyobs)?\.(?:db|bin))", path.name)
        if match:
            files[f"{match.group(1)}{{pid}}{match.group(2)}"] = path.read_bytes()
    return files


def _write_worker(directory: Path, files: dict[str, bytes], pid: int, live_gauges: bool) -> None:
    for pattern, data in files.items():
        if not live_gauges and pattern.startswith("gauge_live"):
            continue  # prometheus_client's mark_process_dead removed it
        (directory / pattern.format(pid=pid)).write_bytes(data)


def _dead_pids() -> Iterator[int]:
    """Pids above the largest pid Linux can hand out (4,194,304): no process has them."""
    pid = 2**22 + 1
    while True:
        yield pid
        pid += 1


@contextmanager
def _live_pids(count: int) -> Iterator[list[int]]:
    """``count`` sleeping child processes whose pids stand for live workers."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        for _ in range(count)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _median_seconds(scrape: Callable[[], bytes], repeat: int) -> tuple[float, int]:
    """(median seconds per scrape, page bytes)."""
    body = scrape()  # warm-up (and the first compaction, for pyobs)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        body = scrape()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(body)


def _pyobs_scrape(directory: Path) -> Callable[[], bytes]:
    import pyobs
    from pyobs import exposition

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    config = pyobs.setup(service_name="scale", tracing=False, access_log=False)

    def scrape() -> bytes:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        return exposition.render(config, OPENMETRICS, None)[2]

    return scrape


def _plain_scrape(directory: Path) -> Callable[[], bytes]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.openmetrics.exposition import generate_latest

    def scrape() -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))  # type: ignore[no-untyped-call]

    return scrape


def _both(
    work: Path, name: str, files: dict[str, bytes], pids: list[int], repeat: int
) -> dict[str, Any]:
    """Scrape ``len(pids)`` live workers' files with pyobs and with plain prometheus_client."""
    row: dict[str, Any] = {}
    for kind, make in (("pyobs", _pyobs_scrape), ("plain", _plain_scrape)):
        directory = work / f"{name}-{kind}"
        directory.mkdir()
        for pid in pids:
            _write_worker(directory, files, pid, live_gauges=True)
        seconds, size = _median_seconds(make(directory), repeat)
        row[kind] = {"ms": seconds * 1e3, "bytes": size, "files": len(list(directory.iterdir()))}
    row["compaction_ms"] = _compaction_ms(work / f"{name}-pyobs", files)
    return row


def _compaction_ms(directory: Path, files: dict[str, bytes]) -> float:
    """What one worker's exit costs gunicorn's master (child_exit) once an archive exists."""
    from pyobs import _multiproc

    dead = _dead_pids()
    times = []
    for _ in range(3):
        pid = next(dead)
        while any(directory.glob(f"*_{pid}*")):
            pid = next(dead)
        _write_worker(directory, files, pid, live_gauges=True)
        start = time.perf_counter()
        _multiproc.compact(str(directory), dead=[pid])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def routes_curve(work: Path, sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    """Scrape vs routes, 2 live workers."""
    rows = []
    with _live_pids(2) as pids:
        for routes in sizes:
            files = _template(routes, work / f"template-{routes}")
            rows.append({"routes": routes, **_both(work, f"routes-{routes}", files, pids, repeat)})
    return rows


def workers_curve(work: Path, counts: list[int], routes: int, repeat: int) -> list[dict[str, Any]]:
    """Scrape vs live workers, ``routes`` routes each."""
    files = _template(routes, work / "template-workers")
    rows = []
    with _live_pids(max(counts)) as pids:
        for count in counts:
            row = _both(work, f"workers-{count}", files, pids[:count], repeat)
            rows.append({"workers": count, **row})
    return rows


def restarts_curve(
    work: Path, points: list[int], routes: int, workers: int, repeat: int
) -> list[dict[str, Any]]:
    """Scrape vs dead workers (restarts), ``workers`` live workers and ``routes`` routes."""
    from pyobs import _multiproc

    files = _template(routes, work / "template-restarts")
    ours, plain, baseline = (work / f"restarts-{k}" for k in ("pyobs", "plain", "baseline"))
    for directory in (ours, plain, baseline):
        directory.mkdir()
    rows = []
    dead = _dead_pids()
    done = 0
    with _live_pids(workers) as pids:
        for pid in pids:
            for directory in (ours, plain, baseline):
                _write_worker(directory, files, pid, live_gauges=True)
        for point in points:
            compactions = []
            while done < point:
                pid = next(dead)
                _write_worker(ours, files, pid, live_gauges=True)
                _write_worker(plain, files, pid, live_gauges=False)
                start = time.perf_counter()
                _multiproc.compact(str(ours), dead=[pid])  # what child_exit does
                compactions.append(time.perf_counter() - start)
                done += 1
            row: dict[str, Any] = {"restarts": point}
            for kind, directory, make in (
                ("pyobs", ours, _pyobs_scrape),
                ("plain", plain, _plain_scrape),
            ):
                seconds, size = _median_seconds(make(directory), repeat)
                row[kind] = {
                    "ms": seconds * 1e3,
                    "bytes": size,
                    "files": len(list(directory.iterdir())),
                    "disk_mb": sum(p.stat().st_blocks * 512 for p in directory.iterdir()) / 1e6,
                }
            if compactions:
                row["compaction_ms"] = statistics.median(compactions) * 1e3
            # The same scrape of a directory without restarts, taken in turns with this one,
            # so that the ratio does not depend on how busy the machine was at each point.
            row["ratio_to_none"] = _interleaved_ratio(
                _pyobs_scrape(ours), _pyobs_scrape(baseline), repeat * 5
            )
            rows.append(row)
    return rows


# Times one request's metric updates (in flight +1, request body, duration with a trace id
# exemplar, response size, in flight -1) through pyobs's instruments; argv: mode, requests.
REQUEST_PATH = textwrap.dedent(
    """
    import sys, time
    from pyobs import _multiproc
    if sys.argv[1] == "multiprocess-public":
        _multiproc._fast = False
    import pyobs
    from pyobs.metrics import get_metrics

    pyobs.setup(service_name="scale", tracing=False, access_log=False)
    m = get_metrics()
    n = int(sys.argv[2])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            m.request_started("GET")
            m.request_body("GET", "/items/{item_id}", 120)
            m.request_finished("GET", "/items/{item_id}", 200, 0.004, 512, trace_id)
        best = min(best, time.perf_counter() - start)
    print(best / n * 1e6)
    """
)


def request_path(requests: int) -> dict[str, float]:
    """Microseconds of metric updates per request: single process, multiprocess (pyobs's own
    writes), multiprocess through prometheus_client's public API (pyobs before this round)."""
    found = {}
    for mode in ("single-process", "multiprocess", "multiprocess-public"):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as directory:
            if mode != "single-process":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            out = subprocess.run(
                [sys.executable, "-c", REQUEST_PATH, mode, str(requests)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
        found[mode] = float(out.stdout.split()[-1])
    return found


def _interleaved_ratio(
    scrape: Callable[[], bytes], base: Callable[[], bytes], repeat: int
) -> float:
    """Median CPU time of ``scrape`` over that of ``base``, the two taken in turns."""
    ours: list[float] = []
    theirs: list[float] = []
    scrape()
    base()
    pairs = [(scrape, ours), (base, theirs)]
    for _ in range(repeat):
        pairs.reverse()  # each goes first half of the time
        for run, into in pairs:
            start = time.process_time()  # CPU time: other tenants of the machine matter less
            run()
            into.append(time.process_time() - start)
    return float(statistics.median(ours) / statistics.median(theirs))


def _table(title: str, key: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{title}",
        "",
        f"| {key} | pyobs scrape ms | plain scrape ms | pyobs page KB | plain page KB "
        "| pyobs files | plain files | one compaction ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, plain = row["pyobs"], row["plain"]
        compaction = f"{row['compaction_ms']:.1f}" if "compaction_ms" in row else "-"
        lines.append(
            f"| {row[key]:,} | {ours['ms']:.1f} | {plain['ms']:.1f} | {ours['bytes'] / 1e3:,.0f} "
            f"| {plain['bytes'] / 1e3:,.0f} | {ours['files']} | {plain['files']} | {compaction} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the three curves and print them as Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    repeat = 1 if quick else 5
    work = Path(tempfile.mkdtemp(prefix="pyobs-scale-"))
    try:
        results: dict[str, Any] = {
            "request_path": request_path(2_000 if quick else 20_000),
            "routes": routes_curve(work, [10, 30] if quick else [10, 100, 1000], repeat),
            "workers": workers_curve(work, [1, 2] if quick else [1, 2, 4, 8], 100, repeat),
            "restarts": restarts_curve(
                work, [0, 5] if quick else [0, 10, 100, 1000], 20, 2, repeat
            ),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("Metric updates per request, microseconds (best of 7 runs):")
    print()
    print("| single process | multiprocess | multiprocess, public API |")
    print("|---|---|---|")
    cost = results["request_path"]
    print(
        f"| {cost['single-process']:.1f} | {cost['multiprocess']:.1f} "
        f"| {cost['multiprocess-public']:.1f} |"
    )
    print()
    print(_table("Scrape vs routes (2 live workers)", "routes", results["routes"]))
    print()
    print(_table("Scrape vs live workers (100 routes)", "workers", results["workers"]))
    print()
    print(_table("Scrape vs restarts (2 live workers, 20 routes)", "restarts", results["restarts"]))
    restarts = results["restarts"]
    compaction = [r["compaction_ms"] for r in restarts if "compaction_ms" in r]
    print()
    print(
        "pyobs scrape vs the scrape without restarts (taken in turns): "
        + ", ".join(f"{r['restarts']}: {r['ratio_to_none']:.2f} x" for r in restarts)
        + f" (target <= 1.2 at 1,000); disk {restarts[-1]['pyobs']['disk_mb']:.1f} MB vs "
        f"plain {restarts[-1]['plain']['disk_mb']:.1f} MB; one compaction (child_exit) "
        f"{statistics.median(compaction) if compaction else 0:.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
