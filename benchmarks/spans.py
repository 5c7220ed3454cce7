"""Spans exported per request served: pyobs against OpenTelemetry's contrib instrumentation.

A Flask app (benchmarks/_spans_app.py) exports one SERVER span per request over OTLP/HTTP to
a loopback sink in this process, which answers at once ("fast") or after 0.1 s per export
("slow", a collector under load). Three tracings:

- ``pyobs``: ``pyobs.flask.instrument``, the span pipeline pyobs sets up (its defaults);
- ``pyobs-sdk-sizes``: the same with the SDK's default sizes (OTEL_BSP_MAX_QUEUE_SIZE=2048,
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512, OTEL_BSP_SCHEDULE_DELAY=5000), to compare like for like;
- ``contrib``: ``FlaskInstrumentor`` with the SDK's default ``BatchSpanProcessor``.

Three ways to serve: in-process (Flask's test client from 4 threads, a fixed number of
requests, as fast as it goes: each tracing at its own rate), ``paced`` (the same at 800
requests/s for every tracing: losses at equal load) and under a real server (gunicorn, one
gthread worker with 8 threads, driven by ``wrk`` for a fixed time).

For each run it prints requests/s, requests served, spans the sink received, their ratio,
the losses pyobs counted (``pyobs_spans_dropped_total``) and the losses nobody counted. It
verifies that for pyobs every span is either exported or counted (exported + counted ==
served, exactly) and reports whether pyobs kept at least the share of spans contrib kept.

Run: ``python benchmarks/spans.py`` (about 5 minutes) or ``--quick`` (a smoke run: small
loads, without ``pyobs-sdk-sizes``).
Exit status 1 when a pyobs run lost a span it did not count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.tracing_backends import OtlpReceiver as Sink  # noqa: E402 - the suite's receiver

APP = HERE / "_spans_app.py"
SDK_SIZES = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "2048",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512",
    "OTEL_BSP_SCHEDULE_DELAY": "5000",
}
VARIANTS = ("pyobs", "pyobs-sdk-sizes", "contrib")
EXPORTERS = {"fast": 0.0, "slow": 0.1}
MODES = ("in-process", "paced", "gunicorn")
# The paced in-process mode: every tracing at the same request rate (below what contrib
# reaches unpaced on a small machine), so losses compare at equal load.
PACED_RATE = 800.0


@dataclass
class Run:
    """One measured run."""

    mode: str
    exporter: str
    variant: str
    served: int = 0
    exported: int = 0
    seconds: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Spans exported per request served."""
        return self.exported / self.served if self.served else 0.0

    @property
    def counted(self) -> int:
        """Losses pyobs counted."""
        return int(sum(self.dropped.values()))

    @property
    def uncounted(self) -> int:
        """Losses nobody counted."""
        return self.served - self.exported - self.counted


def _env(variant: str, sink: Sink) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
            "SPANS_VARIANT": "contrib" if variant == "contrib" else "pyobs",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
            "OTEL_SERVICE_NAME": "spans",
            "PYOBS_LOG_LEVEL": "error",
        }
    )
    if variant == "pyobs-sdk-sizes":
        env.update(SDK_SIZES)
    return env


def run_in_process(run: Run, sink: Sink, requests: int, rate: float = 0.0) -> None:
    """Drive the app with Flask's test client in a fresh interpreter (paced when ``rate``)."""
    result = subprocess.run(
        [sys.executable, str(APP), str(requests), "4", str(rate)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(run.variant, sink),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{run.variant} in-process failed: {result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    run.served, run.seconds, run.dropped = data["served"], data["seconds"], data["dropped"]


def _listening_socket() -> Any:
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def run_gunicorn(run: Run, sink: Sink, seconds: float, workdir: Path) -> None:
    """Serve the app with gunicorn and load it with wrk for ``seconds``; end gunicorn cleanly."""
    conf = workdir / "gunicorn_conf.py"
    conf.write_text("from _spans_app import worker_exit  # noqa: F401\n")
    result_file = workdir / f"result-{run.variant}-{run.exporter}.json"
    env = _env(run.variant, sink)
    env["SPANS_RESULT"] = str(result_file)
    listener = _listening_socket()
    port = listener.getsockname()[1]
    log = (workdir / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(conf), "-w", "1", "-k", "gthread",
         "--threads", "8", "-b", f"fd://{listener.fileno()}", "--graceful-timeout", "60",
         "--pythonpath", str(HERE), "_spans_app:build()"],
        env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),),
        start_new_session=True,
    )  # fmt: skip
    listener.close()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # up when a request is answered (that one is served and counted too)
            try:
                with urllib.request.urlopen(f"{base}/items/0", timeout=2) as response:
                    response.read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {run}") from None
                time.sleep(0.1)
        started = time.perf_counter()
        subprocess.run(
            ["wrk", "-t", "2", "-c", "16", "-d", f"{seconds:g}s", f"{base}/items/1"],
            capture_output=True,
            timeout=seconds + 60,
            check=True,
        )
        run.seconds = time.perf_counter() - started
        proc.send_signal(signal.SIGTERM)  # graceful: the worker_exit hook flushes and reports
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    data = json.loads(result_file.read_text())
    run.served, run.dropped = data["served"], data["dropped"]


def measure(quick: bool, modes: list[str]) -> list[Run]:
    """Every (mode, exporter, variant) once."""
    requests = 800 if quick else 20000
    seconds = 1.0 if quick else 8.0
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pyobs-spans-") as tmp:
        for mode in modes:
            for exporter, delay in EXPORTERS.items():
                for variant in VARIANTS if not quick else ("pyobs", "contrib"):
                    run = Run(mode, exporter, variant)
                    sink = Sink(delay=delay, decode=False)
                    try:
                        if mode == "in-process":
                            run_in_process(run, sink, requests)
                        elif mode == "paced":
                            run_in_process(run, sink, requests, PACED_RATE)
                        else:
                            run_gunicorn(run, sink, seconds, Path(tmp))
                        run.exported = sink.span_count
                    finally:
                        sink.close()
                    runs.append(run)
                    _print_row(run)
    return runs


def _print_header() -> None:
    print(
        f"{'mode':<11} {'exporter':<8} {'tracing':<16} {'req/s':>7} {'served':>7} "
        f"{'exported':>8} {'ratio':>6} {'counted':>8} {'uncounted':>9}"
    )


def _print_row(run: Run) -> None:
    rate = run.served / run.seconds if run.seconds else 0.0
    counted = "-" if run.variant == "contrib" else str(run.counted)
    print(
        f"{run.mode:<11} {run.exporter:<8} {run.variant:<16} {rate:>7.0f} {run.served:>7} "
        f"{run.exported:>8} {run.ratio:>6.3f} {counted:>8} {run.uncounted:>9}",
        flush=True,
    )


def verify(runs: list[Run]) -> bool:
    """Print what was verified; False when pyobs lost a span it did not count."""
    ok = True
    print("\nverified:")
    for run in runs:
        if run.variant == "contrib":
            continue
        exact = run.uncounted == 0
        ok &= exact
        print(
            f"  {'ok  ' if exact else 'FAIL'} {run.mode} {run.exporter} {run.variant}: exported "
            f"{run.exported} + counted {run.counted} == served {run.served}"
        )
    for run in runs:
        if run.variant == "contrib":
            continue
        (peer,) = [
            r for r in runs
            if (r.mode, r.exporter, r.variant) == (run.mode, run.exporter, "contrib")
        ]  # fmt: skip
        verdict = "no more lost" if run.ratio >= peer.ratio else "MORE LOST"
        print(
            f"  {run.mode} {run.exporter} {run.variant}: {run.ratio:.3f} exported per request "
            f"vs contrib {peer.ratio:.3f} ({verdict}; contrib's {peer.uncounted} lost spans "
            "were counted nowhere)"
        )
    return ok


def main() -> int:
    """Measure, print the table and what was verified."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (small loads)")
    parser.add_argument(
        "--mode", choices=MODES, action="append", help="only this mode (repeatable)"
    )
    args = parser.parse_args()
    modes = args.mode or list(MODES)
    if "gunicorn" in modes and shutil.which("wrk") is None:
        print("wrk is not installed: the gunicorn mode needs it", file=sys.stderr)
        return 2
    print(
        "spans exported per request served; exporter: OTLP/HTTP to a loopback sink, "
        "fast = answers at once, slow = 0.1 s per export\n"
    )
    _print_header()
    runs = measure(args.quick, modes)
    return 0 if verify(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
