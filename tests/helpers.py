"""Shared test helpers: free ports, start-with-retry on bind races, child processes that always end.

A port picked by binding port 0 is free only at that moment: another process (another test run,
another service on the box) may take it before our server binds it. Every helper here that
starts a server therefore retries with a fresh port when the bind fails, and every process a
test starts is ended (with its whole tree) when the test fails or times out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
BIND_ATTEMPTS = 5
# What servers print when the port was taken under them (Python, Go, Java/Netty).
BIND_FAILURES = (
    "address already in use",
    "eaddrinuse",
    "errno 98",
    "bindexception",
    "bindtransportexception",
    "bindhttpexception",
    "failed to bind",
    "netty4transport.bind",
)


class PortTaken(Exception):
    """The port picked for a server was bound by someone else before the server could."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (it may be taken later: pair with a retry)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening_socket(host: str = LOOPBACK) -> socket.socket:
    """A socket already bound and listening on a port the kernel chose: no race at all.

    For servers that accept a socket (uvicorn ``sockets=``, aiohttp ``SockSite``, gunicorn
    ``fd://``), this is better than any retry.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def port_taken_in(text: str) -> bool:
    """True when a server's output says its bind failed because the address was in use."""
    low = text.lower()
    return any(marker in low for marker in BIND_FAILURES)


def start_with_retry(
    start: Callable[..., T], ports: int = 1, attempts: int = BIND_ATTEMPTS, host: str = LOOPBACK
) -> T:
    """Call ``start(*fresh_ports)``; when it raises PortTaken, try again with new ports.

    ``ports=0`` for a server that picks its own port but may still lose a bind race.
    """
    last: PortTaken | None = None
    for _ in range(attempts):
        picked: list[int] = []
        while len(picked) < ports:
            port = free_port(host)
            if port not in picked:
                picked.append(port)
        try:
            return start(*picked)
        except PortTaken as exc:
            last = exc
    raise RuntimeError(f"every port tried was taken before the server bound it ({last})")


def asgi_get_scope(path: str, host: str, client_port: int = 50000) -> dict[str, Any]:
    """The scope an ASGI server builds for ``GET path`` over HTTP/1.1 to ``host``:80."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host.encode())],
        "client": ("127.0.0.1", client_port),
        "server": (host, 80),
    }


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout`` s.

    A deadline for waiting, never a bound on how fast something must be.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` on a loopback ThreadingHTTPServer (a port the kernel chose, so no race);
    yields its base URL, shuts the server down on exit."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def http_status(url: str, timeout: float = 2.0) -> int:
    """GET ``url`` and return its status (HTTP errors included); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


# --- child processes ---------------------------------------------------------------------


def default_sigint() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT back to its default.

    A shell runs background jobs with SIGINT ignored and the child would inherit that, so a
    test that sends SIGINT without this tests nothing (and hangs).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first level first)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children(queue.pop(0)):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return state not in {"Z", "X"}


def kill_tree(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End ``proc`` and every process below it: SIGTERM, then SIGKILL after ``grace`` s.

    Children that moved to sessions of their own (the demo's services) are found through
    /proc and ended too.
    """
    tree = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=grace)
    for pid in tree:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(args: Sequence[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """Popen in a session of its own; the whole tree is ended on exit, on failure and timeout."""
    popen.setdefault("start_new_session", True)
    proc: subprocess.Popen[Any] = subprocess.Popen(list(args), **popen)
    try:
        yield proc
    finally:
        kill_tree(proc)


def start_server(
    command: Callable[[int], Sequence[str]],
    ready: Callable[[int], bool],
    log: Path,
    stderr_log: Path | None = None,
    timeout: float = 30.0,
    **popen: Any,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command(port)`` on a free port until ``ready(port)``; output goes to ``log``.

    stderr goes to ``stderr_log`` when given, else to ``log`` too. When the process exits and
    its output says the port was taken, it starts again on another port. The caller ends the
    process (``kill_tree``); a start that fails ends it here.
    """
    popen.setdefault("start_new_session", True)

    def output() -> str:
        logs = [log] if stderr_log is None else [log, stderr_log]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def attempt(port: int) -> tuple[subprocess.Popen[bytes], int]:
        with contextlib.ExitStack() as files:
            out = files.enter_context(log.open("wb"))
            err = files.enter_context(stderr_log.open("wb")) if stderr_log else subprocess.STDOUT
            proc = subprocess.Popen(list(command(port)), stdout=out, stderr=err, **popen)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    if port_taken_in(output()):
                        raise PortTaken(f"port {port}: {output()[-300:]}")
                    raise RuntimeError(f"exited with {proc.returncode}: {output()[-3000:]}")
                try:
                    if ready(port):
                        return proc, port
                except OSError:
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"not ready after {timeout:.0f} s: {output()[-3000:]}")
        except BaseException:
            kill_tree(proc)
            raise

    return start_with_retry(attempt)


def health_ready(port: int) -> bool:
    """``ready`` for the example services: /health answers 200."""
    return http_status(f"http://{LOOPBACK}:{port}/health") == 200
