"""`pyobs demo`: run the example services with built-in traffic; needs no other service."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO, Any

from pyobs._resources import repo_file

log = logging.getLogger("pyobs.demo")

# framework -> the module its example needs (checked before starting it)
REQUIRES = {
    "flask": "flask",
    "flask-restful": "flask_restful",
    "django": "django",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "tornado": "tornado",
    "falcon": "falcon",
    "sanic": "sanic",
    "pyramid": "pyramid",
    "aiohttp": "aiohttp",
}


def available_examples() -> dict[str, Path]:
    """Example services shipped with pyobs: framework name -> its app.py."""
    root = repo_file("examples")
    found = {}
    for app in sorted(root.glob("*/app.py")):
        name = app.parent.name.replace("_", "-")
        found[name] = app
    return found


def register(subparsers: Any) -> None:
    """Add `pyobs demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="run instrumented example services with built-in traffic",
        description="Runs the example services with a traffic generator. JSON logs go to "
        "stdout, spans to stderr (unless OTLP is configured). Stops on Ctrl-C or after "
        "--duration.",
    )
    parser.add_argument(
        "--framework",
        default="all",
        help="framework(s) to run, comma-separated, or 'all' (every installed one)",
    )
    parser.add_argument("--port", type=int, default=8000, help="first port (default 8000)")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s per service")
    parser.set_defaults(func=run)


class _LinePump(threading.Thread):
    """Copies a child's output to ours line by line, so lines of several services never mix."""

    lock = threading.Lock()

    def __init__(self, source: IO[bytes], sink: IO[str]) -> None:
        super().__init__(daemon=True)
        self.source = source
        self.sink = sink

    def run(self) -> None:
        for raw in iter(self.source.readline, b""):
            line = raw.decode("utf-8", "replace")
            with self.lock:
                self.sink.write(line)
                self.sink.flush()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    """Start the chosen examples, drive traffic, stop cleanly."""
    import pyobs
    from pyobs import _traffic

    pyobs.setup(service_name="pyobs-demo")
    examples = available_examples()
    if args.framework == "all":
        chosen = [n for n in examples if importlib.util.find_spec(REQUIRES.get(n, n)) is not None]
        skipped = sorted(set(examples) - set(chosen))
        if skipped:
            log.warning("skipping examples whose framework is not installed: %s", skipped)
    else:
        chosen = [n.strip() for n in args.framework.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in examples]
        if unknown:
            log.error("unknown framework %s; examples: %s", unknown, ", ".join(examples))
            return 2
    if not chosen:
        log.error('no example can run: install a framework extra, e.g. pip install "pyobs[flask]"')
        return 2

    env_base = dict(os.environ, PYTHONUNBUFFERED="1")
    env_base.setdefault("PYOBS_LOG_LEVEL", "info")  # show the examples' INFO lines too
    if not any(k.startswith("OTEL_EXPORTER_OTLP") for k in env_base):
        env_base.setdefault("OTEL_TRACES_EXPORTER", "console")
    procs: list[subprocess.Popen[bytes]] = []
    targets: list[str] = []
    stop = threading.Event()
    counts: Counter[int] = Counter()
    try:
        for offset, name in enumerate(chosen):
            port = args.port + offset
            env = dict(env_base, PYOBS_SERVICE_NAME=f"example-{name}")
            proc = subprocess.Popen(
                [sys.executable, str(examples[name]), "--host", "127.0.0.1", "--port", str(port)],
                cwd=str(examples[name].parent),
                env=env,
                stdout=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the children
            )
            procs.append(proc)
            assert proc.stdout is not None
            _LinePump(proc.stdout, sys.stdout).start()
            base = f"http://127.0.0.1:{port}"
            if not _wait_ready(base + "/health", proc):
                log.error("example-%s did not start on port %s", name, port)
                return 1
            targets.append(base)
            log.info("example-%s is up: metrics at %s/metrics", name, base)
        counts = _traffic.run(targets, rate=args.rate, duration=args.duration, stop=stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        _stop(procs)
    log.info(
        "demo stopped",
        extra={"labels": {"requests": sum(counts.values())}} if counts else None,
    )
    return 0
