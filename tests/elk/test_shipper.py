"""The Logstash shipper against a loopback json_lines receiver: order, outages, spool, exit."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyobs._config import Config
from pyobs.logs import ECSFormatter
from pyobs.shipper import LogstashHandler
from tests.elk.receiver import JsonLinesReceiver

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[JsonLinesReceiver]:
    rec = JsonLinesReceiver()
    rec.start()
    yield rec
    rec.stop()


def _logger(handler: LogstashHandler, name: str) -> logging.Logger:
    handler.setFormatter(ECSFormatter(Config(service_name="shipper-test")))
    log = logging.getLogger(f"shiptest.{name}")
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def _handler(port: int, spool: Path, **kwargs: object) -> LogstashHandler:
    config = Config(logstash_host="127.0.0.1", logstash_port=port, log_spool_dir=str(spool))
    return LogstashHandler(config, install_sigterm=False, **kwargs)  # type: ignore[arg-type]


def _numbers(events: list[dict[str, object]]) -> list[int]:
    return [int(str(e["message"]).split()[-1]) for e in events]


def _first_seen(events: list[dict[str, object]]) -> list[int]:
    seen: dict[str, int] = {}
    for event in events:
        seen.setdefault(str(event["event.id"]), int(str(event["message"]).split()[-1]))
    return list(seen.values())


def test_events_arrive_in_order_as_ecs_with_unique_ids(
    receiver: JsonLinesReceiver, tmp_path: Path
) -> None:
    """Every record reaches Logstash once, in order, as ECS JSON with a unique event.id."""
    handler = _handler(receiver.port, tmp_path)
    log = _logger(handler, "order")
    for i in range(2000):
        log.info("event %d", i)
    assert receiver.wait_for(2000, timeout=10)
    events = receiver.snapshot()
    assert _numbers(events) == list(range(2000))
    assert len({e["event.id"] for e in events}) == 2000
    first = events[0]
    assert first["service.name"] == "shipper-test"
    assert first["log.level"] == "info"
    assert first["log.logger"] == "shiptest.order"
    assert str(first["@timestamp"]).endswith("Z")
    handler.close()


def test_trace_context_is_captured_on_the_calling_thread(
    receiver: JsonLinesReceiver, tmp_path: Path
) -> None:
    """A record logged inside a span carries that span's trace.id and span.id."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("shipper-test")
    handler = _handler(receiver.port, tmp_path)
    log = _logger(handler, "trace")
    with tracer.start_as_current_span("work") as span:
        log.info("inside %d", 1)
        ctx = span.get_span_context()
    log.info("outside %d", 2)
    assert receiver.wait_for(2, timeout=5)
    inside, outside = receiver.snapshot()
    assert inside["trace.id"] == format(ctx.trace_id, "032x")
    assert inside["span.id"] == format(ctx.span_id, "016x")
    assert "trace.id" not in outside
    handler.close()


def test_receiver_restart_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    """Logstash down for a while under steady logging: every event arrives, in order, within 5 s."""
    receiver = JsonLinesReceiver()
    receiver.start()
    handler = _handler(receiver.port, tmp_path)
    log = _logger(handler, "restart")
    total = 0
    for i in range(3000):
        log.info("event %d", i)
    total = 3000
    assert receiver.wait_for(3000, timeout=10)
    receiver.stop()
    for i in range(total, total + 4000):  # steady load while the receiver is down
        log.info("event %d", i)
        if i % 200 == 0:
            time.sleep(0.01)
    total += 4000
    time.sleep(0.5)
    assert handler.spooled_events() > 0
    back = time.monotonic()
    receiver.start()
    deadline = back + 5.0
    while time.monotonic() < deadline and len(set(_first_seen(receiver.snapshot()))) < total:
        time.sleep(0.05)
    elapsed = time.monotonic() - back
    events = receiver.snapshot()
    receiver.stop()
    handler.close()
    assert _first_seen(events) == list(range(total)), "lost or reordered events"
    assert elapsed < 5.0
    assert handler.dropped == 0


def test_spool_cap_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    """Logstash never returns: the spool stays under its cap, oldest dropped and counted."""
    from pyobs.metrics import get_metrics

    cap = 256 * 1024
    handler = _handler(_closed_port(), tmp_path, spool_max_bytes=cap, queue_size=5000)
    log = _logger(handler, "cap")
    costs = []
    for i in range(20000):
        start = time.perf_counter_ns()
        log.info("event %d with some padding to fill the spool quickly", i)
        costs.append(time.perf_counter_ns() - start)
        if handler.pending() > 4000:
            time.sleep(0.005)
    handler.flush(timeout=10)
    spool_dir = tmp_path / f"pid-{os.getpid()}"
    size = sum(p.stat().st_size for p in spool_dir.glob("*.jsonl"))
    assert 0 < size <= cap
    assert handler.dropped > 0
    sample = get_metrics().log_shipper_events.labels(outcome="dropped")._value.get()
    assert sample == handler.dropped
    lines = [line for p in sorted(spool_dir.glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert "event 19999 " in lines[-1]  # newest kept
    assert "event 0 " not in lines[0]  # oldest dropped
    assert len(lines) + handler.dropped == 20000
    assert statistics.median(costs) < 50_000  # ns; the request never waits for the disk
    handler.close()


def test_emit_never_blocks_when_logstash_stalls(tmp_path: Path) -> None:
    """A Logstash that accepts but never reads cannot slow the request thread."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    handler = _handler(server.getsockname()[1], tmp_path, queue_size=2000)
    log = _logger(handler, "stall")
    worst = 0.0
    payload = "x" * 2000
    for i in range(30000):
        start = time.perf_counter()
        log.info("stalled %s %d", payload, i)
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.05
    assert handler.dropped > 0  # the queue was full: Logstash really stalled the thread
    server.close()
    handler.close()


def _spooled(root: Path, logger: str) -> list[str]:
    """Spooled lines of one logger (the shipper's own warnings are spooled too)."""
    lines = [
        line for p in sorted(root.glob("pid-*/*.jsonl")) for line in p.read_text().splitlines()
    ]
    return [line for line in lines if f'"log.logger": "{logger}"' in line]


def _run(code: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_EMITTER = """
    import logging, os, sys, time
    import pyobs
    pyobs.setup(service_name="exit-test")
    log = logging.getLogger("exit")
    for i in range(int(os.environ["N"])):
        log.info("event %d", i)
    print("emitted", time.monotonic(), flush=True)
"""


def test_exit_is_fast_while_down_and_the_next_start_replays(tmp_path: Path) -> None:
    """With Logstash down the process exits within 1 s; the next process delivers what was left."""
    port = _closed_port()
    env = {
        "PYOBS_LOGSTASH_HOST": "127.0.0.1",
        "PYOBS_LOGSTASH_PORT": str(port),
        "PYOBS_LOG_SPOOL_DIR": str(tmp_path),
        "N": "500",
    }
    result = _run(_EMITTER, env)
    ended = time.monotonic()
    assert result.returncode == 0, result.stderr
    # The shipper's own warnings are JSON lines on the same stdout, in any order.
    (marker,) = [line for line in result.stdout.splitlines() if line.startswith("emitted ")]
    emitted = float(marker.split()[1])
    assert ended - emitted < 1.0
    left = _spooled(tmp_path, "exit")
    assert len(left) == 500

    receiver = JsonLinesReceiver(port=port)
    receiver.start()
    try:
        result = _run(_EMITTER, {**env, "N": "10"})
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(510, timeout=10)
        numbers = _first_seen([e for e in receiver.snapshot() if e["log.logger"] == "exit"])
        assert numbers[:500] == list(range(500))  # the dead process's spool first, in order
        assert sorted(numbers[500:]) == list(range(10))
    finally:
        receiver.stop()
    assert not list(tmp_path.glob("pid-*/*.jsonl"))


def test_sigterm_flushes_what_the_process_holds(
    receiver: JsonLinesReceiver, tmp_path: Path
) -> None:
    """A service killed with SIGTERM while records are still queued delivers every one of them."""
    code = """
        import logging, os, signal, sys, time
        import pyobs
        pyobs.setup(service_name="sigterm-test", log_level="warning")
        shipper = [h for h in logging.getLogger().handlers if type(h).__name__ == "LogstashHandler"]
        log = logging.getLogger("term")
        for i in range(20000):
            log.warning("event %d", i)
        print("pending", shipper[0].pending(), file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    """
    env = {
        "PYOBS_LOGSTASH_HOST": "127.0.0.1",
        "PYOBS_LOGSTASH_PORT": str(receiver.port),
        "PYOBS_LOG_SPOOL_DIR": str(tmp_path),
    }
    result = _run(code, env)
    assert result.returncode == -signal.SIGTERM
    pending = int(result.stderr.split("pending")[1].split()[0])
    assert pending > 0, "nothing was queued at SIGTERM: the test proves nothing"
    spooled = _spooled(tmp_path, "term")
    receiver.wait_for(20000 - len(spooled), timeout=5)
    events = [e for e in receiver.snapshot() if e["log.logger"] == "term"]
    got = {int(str(e["message"]).split()[-1]) for e in events}
    got |= {int(line.split('"event ')[1].split('"')[0]) for line in spooled}
    assert got == set(range(20000))


def test_forked_worker_ships_its_own_records(receiver: JsonLinesReceiver, tmp_path: Path) -> None:
    """After fork (gunicorn --preload) the child starts its own shipper and its records arrive."""
    code = """
        import logging, os, sys
        import pyobs
        pyobs.setup(service_name="fork-test")
        log = logging.getLogger("fork")
        log.info("parent before fork %d", 0)
        pid = os.fork()
        if pid == 0:
            for i in range(100):
                log.info("child %d", i)
            logging.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        log.info("parent after fork %d", 1)
        print(pid)
    """
    env = {
        "PYOBS_LOGSTASH_HOST": "127.0.0.1",
        "PYOBS_LOGSTASH_PORT": str(receiver.port),
        "PYOBS_LOG_SPOOL_DIR": str(tmp_path),
    }
    result = _run(code, env)
    assert result.returncode == 0, result.stderr
    # stdout also carries the JSON log lines, in any order; the pid is the bare number.
    (child_pid,) = [int(line) for line in result.stdout.splitlines() if line.strip().isdigit()]
    assert receiver.wait_for(102, timeout=10)
    events = receiver.snapshot()
    child = [e for e in events if str(e["message"]).startswith("child")]
    assert len(child) == 100
    assert {e["process.pid"] for e in child} == {child_pid}
    assert _numbers(child) == list(range(100))
    assert len([e for e in events if str(e["message"]).startswith("parent")]) == 2


def test_tls_connection(tmp_path: Path) -> None:
    """With TLS on, records travel over an encrypted connection the shipper verifies."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    handler = _handler(listener.getsockname()[1], tmp_path / "spool", tls=client_ctx)
    log = _logger(handler, "tls")
    log.info("secret %d", 1)
    conn, _ = listener.accept()
    with server_ctx.wrap_socket(conn, server_side=True) as tls:
        tls.settimeout(10)
        data = b""
        while not data.endswith(b"\n"):
            data += tls.recv(65536)
    assert b'"message": "secret 1"' in data
    handler.close()
    listener.close()


def test_leftover_spools_of_dead_processes_are_replayed(
    receiver: JsonLinesReceiver, tmp_path: Path
) -> None:
    """Spools of crashed processes (even half-adopted ones) go first; a cut-off line is dropped."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)  # that process has exited: its pid is free
    crashed = tmp_path / f"pid-{pid}"
    crashed.mkdir()
    lines = [
        f'{{"message": "old {i}", "event.id": "old-{i}", "log.logger": "old"}}\n' for i in range(3)
    ]
    (crashed / "001000000000.jsonl").write_text("".join(lines) + '{"message": "cut sh')
    orphan = tmp_path / f"claimed-{pid}-pid-{pid + 1}"  # a claim its claimer never finished
    orphan.mkdir()
    (orphan / "001000000000.jsonl").write_text(
        '{"message": "orphan 0", "event.id": "orphan-0", "log.logger": "old"}\n'
    )
    handler = _handler(receiver.port, tmp_path)
    log = _logger(handler, "new")
    log.info("new %d", 0)
    assert receiver.wait_for(5, timeout=10)
    messages = [e["message"] for e in receiver.snapshot()]
    assert messages == ["old 0", "old 1", "old 2", "orphan 0", "new 0"]
    assert not crashed.exists() and not orphan.exists()
    handler.close()
