"""Per-task overhead on Celery: pyobs against OpenTelemetry's Celery instrumentation and bare.

Three configurations, each in a process of its own (signal receivers cannot be removed),
measured side by side in one run, in rounds that alternate the order:

- ``bare``: Celery alone;
- ``pyobs``: ``pyobs.celery.instrument(app)`` (spans, metrics, log fields);
- ``otel``: ``CeleryInstrumentor().instrument()`` with an SDK MeterProvider (its task
  histogram is recorded, not dropped).

Tracing is in production shape for both: an SDK TracerProvider with a ``BatchSpanProcessor``
whose exporter discards the batches (no network, so the figure is the instrumentation's own
cost, not a collector's), parent-based sampling (every span sampled).

Two measurements:

- ``signals`` (always): the pool process's path for one task, Celery's own ``build_tracer``
  trace function, the one a prefork pool process calls for every message, fed a request with
  a ``traceparent`` header (the CONSUMER span has a remote parent): prerun, the task, the
  outcome, postrun; results are not stored. And the enqueue path, ``apply_async`` on
  kombu's in-memory transport (before/after publish). Broker I/O is left out on purpose: it
  is the same in every configuration and would hide the difference.
- ``worker`` (``--worker``, needs redis-server): a real ``celery worker --pool=prefork
  --concurrency=1`` against a real redis-server drains a queue of 1,000 pre-enqueued no-op
  tasks (best of 4 rounds); the time per task from the first task's start to the last one's,
  with ``PROMETHEUS_MULTIPROC_DIR`` set for pyobs as a prefork deployment has it. Broker
  round trips dominate here; the difference is the overhead as a worker sees it.

Run: ``python benchmarks/tasks.py`` (signals only, about 30 s), ``--worker`` (adds about
two minutes), ``--quick`` (a smoke run). Prints microseconds per task and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = ("bare", "pyobs", "otel")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- one configuration, in its own process ------------------------------------------------
_exported: list[int] = []  # spans the discarding exporter took, batch by batch


def _setup(config: str, broker: str) -> Any:
    """A Celery app with a no-op task, instrumented as ``config`` says; tracing batched."""
    from celery import Celery
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Discard(SpanExporter):
        """Takes every batch and drops it (the network is not what is measured)."""

        def export(self, spans: Any) -> SpanExportResult:
            _exported.append(len(spans))
            return SpanExportResult.SUCCESS

    backend = "redis" + broker[5:] if broker.startswith("redis") else "cache+memory://"
    app = Celery("bench", broker=broker, backend=backend)
    app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=1)
    task: Any = app.task

    @task(name="bench.noop")  # type: ignore[untyped-decorator]
    def noop() -> None:
        return None

    @task(name="bench.mark", ignore_result=False)  # type: ignore[untyped-decorator]
    def mark() -> float:
        return time.time()

    if config != "bare":
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
    if config == "pyobs":
        import pyobs.celery

        pyobs.celery.instrument(app, service_name="bench", access_log=False)
    elif config == "otel":
        from opentelemetry import metrics
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    return app


def _signals(config: str, count: int) -> dict[str, float]:
    """Microseconds per task: the pool process's trace function, and apply_async."""
    import logging

    from celery.app.trace import build_tracer

    logging.getLogger().setLevel(logging.WARNING)  # Celery's "succeeded" lines off for all
    app = _setup(config, "memory://")
    noop = app.tasks["bench.noop"]
    run = build_tracer(noop.name, noop, app=app, eager=False, propagate=False)
    request = {
        "delivery_info": {"exchange": "", "routing_key": "celery"},
        "traceparent": TRACEPARENT,
        "pyobs_sent_at": repr(time.time()),
        "hostname": "bench@localhost",
    }
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for task_id in ids[: count // 10]:  # warm up
        run(task_id, (), {}, request={**request, "id": task_id})
    start = time.perf_counter()
    for task_id in ids:
        run(task_id, (), {}, request={**request, "id": task_id})
    consume = (time.perf_counter() - start) / count * 1e6
    sends = max(count // 4, 10)
    for _ in range(sends // 10):
        noop.apply_async()
    start = time.perf_counter()
    for _ in range(sends):
        noop.apply_async()
    publish = (time.perf_counter() - start) / sends * 1e6
    return {"consume_us": consume, "publish_us": publish, **_observed(config)}


def _observed(config: str) -> dict[str, float]:
    """What the instrumentation recorded: spans exported, and pyobs's task count."""
    if config == "bare":
        return {"spans": 0.0, "tasks_counted": 0.0}
    from opentelemetry import trace
    from prometheus_client import REGISTRY

    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    labels = {"celery_task_name": "bench.noop", "outcome": "success"}
    counted = REGISTRY.get_sample_value("pyobs_celery_tasks_total", labels) or 0.0
    return {"spans": float(sum(_exported)), "tasks_counted": counted}


def _child(config: str, count: int) -> None:
    print(json.dumps(_signals(config, count)))


# --- the side-by-side run -----------------------------------------------------------------
def _in_child(config: str, count: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env["PYTHONPATH"] = str(REPO)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", config, "--count", str(count)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config}: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _best(runs: list[dict[str, float]], key: str) -> float:
    return min(r[key] for r in runs)


def measure_signals(count: int, rounds: int) -> dict[str, dict[str, float]]:
    """Every configuration ``rounds`` times, alternating the order; the best of each."""
    found: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGS}
    for i in range(rounds):
        order = CONFIGS if i % 2 == 0 else tuple(reversed(CONFIGS))
        for config in order:
            found[config].append(_in_child(config, count))
    return {
        c: {**found[c][-1], **{k: _best(found[c], k) for k in ("consume_us", "publish_us")}}
        for c in CONFIGS
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_app_module(directory: Path) -> None:
    """A module the worker imports: the same app as ``_setup``, from this file."""
    (directory / "bench_tasks_app.py").write_text(
        "import importlib.util, os\n"
        f"spec = importlib.util.spec_from_file_location('bench_tasks', {str(Path(__file__))!r})\n"
        "bench = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(bench)\n"
        "app = bench._setup(os.environ['BENCH_CONFIG'], os.environ['BENCH_BROKER'])\n"
    )


def measure_worker(count: int, rounds: int) -> dict[str, float] | None:
    """Microseconds per task through a real prefork worker and redis-server, per config."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed: the worker measurement is skipped")
        return None
    import redis

    work = Path(tempfile.mkdtemp(prefix="pyobs-bench-tasks-"))
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    broker = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(broker)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        _worker_app_module(work)
        found: dict[str, list[float]] = {c: [] for c in CONFIGS}
        for i in range(rounds):
            order = CONFIGS if i % 2 == 0 else tuple(reversed(CONFIGS))
            for config in order:
                found[config].append(_one_worker(config, broker, work, count))
        return {c: min(v) for c, v in found.items()}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


_enqueuers: dict[str, Any] = {}


def _enqueuer(broker: str) -> Any:
    """One bare app in this process to fill the queues."""
    if broker not in _enqueuers:
        _enqueuers[broker] = _setup("bare", broker)
    return _enqueuers[broker]


def _one_worker(config: str, broker: str, work: Path, count: int) -> float:
    """Pre-enqueue ``count`` no-ops between two marks, start a worker, time the drain."""
    queue = f"bench-{config}-{uuid.uuid4().hex[:6]}"
    app = _enqueuer(broker)  # the enqueuing side is not what is measured here
    first = app.tasks["bench.mark"].apply_async(queue=queue)
    noop = app.tasks["bench.noop"]
    for _ in range(count):
        noop.apply_async(queue=queue)
    last = app.tasks["bench.mark"].apply_async(queue=queue)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.update(PYTHONPATH=f"{work}{os.pathsep}{REPO}", BENCH_CONFIG=config, BENCH_BROKER=broker)
    multiproc = work / f"mp-{queue}"
    multiproc.mkdir()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    if config != "pyobs":
        env.pop("PROMETHEUS_MULTIPROC_DIR")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_tasks_app", "worker", "--pool=prefork",
         "--concurrency=1", "-Q", queue, "-l", "WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-n", f"{queue}@%h"],
        env=env, cwd=str(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        started = float(first.get(timeout=120))
        ended = float(last.get(timeout=600))
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return (ended - started) / (count + 1) * 1e6


def main() -> int:
    """Measure, print a table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (small counts)")
    parser.add_argument("--worker", action="store_true", help="also through a real worker")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.count)
        return 0
    count, rounds = (300, 1) if args.quick else (5000, 3)
    signals = measure_signals(count, rounds)
    print(f"## Celery per-task overhead (signals path, {count} tasks, best of {rounds})")
    print(f"{'config':8} {'consume us/task':>16} {'publish us/task':>16}")
    for config in CONFIGS:
        row = signals[config]
        print(f"{config:8} {row['consume_us']:16.1f} {row['publish_us']:16.1f}")
    bare = signals["bare"]
    added = {
        c: {k: signals[c][k] - bare[k] for k in ("consume_us", "publish_us")}
        for c in ("pyobs", "otel")
    }
    for c in ("pyobs", "otel"):
        print(
            f"{c} adds {added[c]['consume_us']:.1f} us per task run "
            f"({signals[c]['consume_us'] / bare['consume_us']:.2f}x bare) and "
            f"{added[c]['publish_us']:.1f} us per publish "
            f"({signals[c]['publish_us'] / bare['publish_us']:.2f}x bare)"
        )
    ratio = signals["pyobs"]["consume_us"] / signals["otel"]["consume_us"]
    print(f"pyobs / otel, per task run: {ratio:.2f}")
    result: dict[str, Any] = {"signals": signals, "count": count, "rounds": rounds}
    if args.worker:
        wcount, wrounds = (200, 1) if args.quick else (1000, 4)
        worker = measure_worker(wcount, wrounds)
        if worker is not None:
            print(
                f"## Through a real prefork worker and redis-server ({wcount} tasks, "
                f"best of {wrounds})"
            )
            for config in CONFIGS:
                print(f"{config:8} {worker[config]:16.1f} us/task")
            print(
                f"pyobs / bare: {worker['pyobs'] / worker['bare']:.2f}; "
                f"otel / bare: {worker['otel'] / worker['bare']:.2f}; "
                f"pyobs / otel: {worker['pyobs'] / worker['otel']:.2f}"
            )
            result["worker"] = worker
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
