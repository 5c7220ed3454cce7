"""`pyobs demo`: run the example services with built-in traffic; needs no other service."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
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


# What runs without --framework: the two services the README promises, when installed.
DEFAULT_FRAMEWORKS = ("flask", "fastapi")
START_ATTEMPTS = 3  # --port 0: a port picked free can be taken before the service binds it


def register(subparsers: Any) -> None:
    """Add `pyobs demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="run instrumented example services with built-in traffic",
        description="Runs example services with a traffic generator: by default the Flask and "
        "FastAPI ones (those installed). A block on stderr lists every service's URL, its "
        "/metrics and what to try. JSON logs go to stdout, spans to stderr (unless OTLP is "
        "configured). Stops on Ctrl-C, SIGTERM or after --duration, with every service.",
    )
    parser.add_argument(
        "--framework",
        default=None,
        help="framework(s) to run, comma-separated, or 'all' (every installed one); "
        "default: " + ",".join(DEFAULT_FRAMEWORKS),
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="first port, the next services get the ports after it (default 8000); "
        "0 picks free ports",
    )
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


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C does."""


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
    """SIGTERM every service, SIGKILL the ones still running after 5 s."""
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


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _choose(requested: str | None, examples: dict[str, Path]) -> list[str] | str:
    """The frameworks to run, or the reason none can run."""
    installed = [n for n in examples if importlib.util.find_spec(REQUIRES.get(n, n)) is not None]
    if requested is None:
        chosen = [n for n in DEFAULT_FRAMEWORKS if n in installed] or installed[:1]
    elif requested == "all":
        chosen = installed
        skipped = sorted(set(examples) - set(installed))
        if skipped:
            log.warning("skipping examples whose framework is not installed: %s", skipped)
    else:
        chosen = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in examples]
        if unknown:
            return f"unknown framework {unknown}; examples: {', '.join(examples)}"
    if not chosen:
        return 'no example can run: install a framework extra, e.g. pip install "pyobs-kit[flask]"'
    return chosen


def _services_block(
    title: str, services: list[tuple[str, str]], footer: list[str], try_lines: bool
) -> str:
    """The block on stderr: every service, its /metrics, and what to try."""
    width = max(len(name) for name, _ in services) + 2
    lines = ["", "=" * 72, title, ""]
    for name, base in services:
        lines.append(f"  {name:<{width}} {base}")
        lines.append(f"  {'':<{width}} {base}/metrics")
    if try_lines:
        base = services[0][1]
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        lines += [
            "",
            "Try:",
            f"  curl {base}/items/1",
            f"  curl {base}/boom        # a 500: error log with stack trace, exception counter",
            f"  curl -s {base}/metrics | grep http_server_request_duration_seconds_count",
            f"  curl -H 'traceparent: 00-{trace}-00f067aa0ba902b7-01' {base}/items/2",
            f"      # then find trace.id {trace} in the JSON logs on stdout",
        ]
    lines += ["", *footer, "=" * 72, ""]
    return "\n".join(lines)


def _say(text: str) -> None:
    """Write a block to stderr in one piece (the services' spans share that stream)."""
    with _LinePump.lock:
        sys.stderr.write(text)
        sys.stderr.flush()


def _error(message: str) -> None:
    """An error in plain words on stderr (where a person looks) and in the JSON log."""
    log.error(message)
    _say(f"pyobs demo: {message}\n")


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    """Start the chosen examples, print where they are, drive traffic, stop every one."""
    import pyobs
    from pyobs import _traffic

    pyobs.setup(service_name="pyobs-demo")
    examples = available_examples()
    chosen = _choose(args.framework, examples)
    if isinstance(chosen, str):
        _error(chosen)
        return 2
    if args.port != 0:
        taken = [args.port + i for i in range(len(chosen)) if not _port_free(args.port + i)]
        if taken:
            _error(
                f"port(s) {', '.join(map(str, taken))} already in use on 127.0.0.1: pass "
                "another --port, or --port 0 to pick free ports"
            )
            return 1

    env_base = dict(os.environ, PYTHONUNBUFFERED="1")
    env_base.setdefault("PYOBS_LOG_LEVEL", "info")  # show the examples' INFO lines too
    if not any(k.startswith("OTEL_EXPORTER_OTLP") for k in env_base):
        env_base.setdefault("OTEL_TRACES_EXPORTER", "console")
    procs: list[subprocess.Popen[bytes]] = []
    services: list[tuple[str, str]] = []
    stop = threading.Event()
    per_target: dict[str, Counter[int]] = {}
    # SIGTERM (and a closed terminal) stop the demo the way Ctrl-C does: every service ends.
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    stopped_by = "--duration"
    try:
        for offset, name in enumerate(chosen):
            base = _start_service(name, examples[name], args.port, offset, env_base, procs)
            if base is None:
                return 1
            services.append((f"example-{name}", base))
            log.info("example-%s is up: metrics at %s/metrics", name, base)
        exporter = env_base.get("OTEL_TRACES_EXPORTER", "otlp")
        spans = "to stderr" if exporter == "console" else f"to OTEL_TRACES_EXPORTER={exporter}"
        footer = [
            f"JSON logs go to stdout, spans {spans}; traffic: {args.rate:g} requests/s "
            "per service.",
            "Stop with Ctrl-C (or SIGTERM)"
            + (f"; stops by itself after {args.duration:g} s." if args.duration else "."),
        ]
        title = f"pyobs demo: {len(services)} instrumented service(s) are up"
        _say(_services_block(title, services, footer, try_lines=True))
        _traffic.run(
            [base for _, base in services],
            rate=args.rate,
            duration=args.duration,
            stop=stop,
            per_target=per_target,
        )
    except KeyboardInterrupt:
        stopped_by = "Ctrl-C"
        stop.set()
    except _Stop as exc:
        stopped_by = str(exc)
        stop.set()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(procs)
    counts: Counter[int] = sum(per_target.values(), Counter())
    if services:
        summary = ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(counts.items()))
        footer = [
            f"Sent {sum(counts.values())} requests ({summary or 'none'}).",
            "Run it again: pyobs demo --duration 60; the full stack: pyobs stack init DIR",
        ]
        title = f"pyobs demo stopped ({stopped_by}): every service has ended. They were:"
        _say(_services_block(title, services, footer, try_lines=False))
    log.info(
        "demo stopped",
        extra={"labels": {"requests": sum(counts.values())}} if counts else None,
    )
    return 0


def _start_service(
    name: str,
    app: Path,
    first_port: int,
    offset: int,
    env_base: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
) -> str | None:
    """Start one example and wait until it answers; its base URL, or None (logged)."""
    attempts = START_ATTEMPTS if first_port == 0 else 1
    env = dict(env_base, PYOBS_SERVICE_NAME=f"example-{name}")
    for _ in range(attempts):
        port = _free_port() if first_port == 0 else first_port + offset
        proc = subprocess.Popen(
            [sys.executable, str(app), "--host", "127.0.0.1", "--port", str(port)],
            cwd=str(app.parent),
            env=env,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the children
        )
        procs.append(proc)
        assert proc.stdout is not None
        _LinePump(proc.stdout, sys.stdout).start()
        base = f"http://127.0.0.1:{port}"
        if _wait_ready(base + "/health", proc):
            return base
        _stop([proc])
    _error(f"example-{name} did not start (last port tried: {port}); its output is above")
    return None
