"""The shipper against loopback stand-ins (no Elasticsearch): order, ids, spool, exit, signals.

tests/elk/test_delivery.py drives the same handler against the real Elasticsearch node.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyobs._config import Config, ConfigError
from pyobs._shipping.spool import Spool
from pyobs._shipping.transports import ElasticsearchBulk, LogstashHttp, TcpLines
from pyobs.shipper import BATCH_MAX_EVENTS, ShippingHandler, handler_for
from tests.elk.esnodes import free_port
from tests.elk.helpers import make_shipper, wait_until
from tests.elk.receiver import HttpNdjsonReceiver, JsonLinesReceiver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver() -> Iterator[HttpNdjsonReceiver]:
    """An acknowledging http-input stand-in that only keeps what it accepted."""
    rec = HttpNdjsonReceiver()
    rec.start()
    yield rec
    rec.stop()


def _shipper(
    handlers: list[Any], transport: Any, spool: Path, **options: Any
) -> tuple[ShippingHandler, logging.Logger]:
    return make_shipper(handlers, transport, spool, "shipper-test", **options)


def _numbers(lines: list[bytes]) -> list[int]:
    return [int(json.loads(line)["message"].split()[-1]) for line in lines]


def test_events_arrive_in_order_as_ecs_with_unique_ids(
    receiver: HttpNdjsonReceiver, tmp_path: Path, handlers: list[Any]
) -> None:
    """Every record is acknowledged once, in order, as ECS JSON with a unique event.id first."""
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path)
    for i in range(2000):
        log.info("event %d", i)
    wait_until(lambda: handler.stats["acknowledged"] == 2000, what="2000 acknowledged")
    assert _numbers(receiver.accepted) == list(range(2000))
    assert len(receiver.unique_ids()) == 2000
    assert all(line.startswith(b'{"event.id":"') for line in receiver.accepted)
    first = json.loads(receiver.accepted[0])
    assert first["service.name"] == "shipper-test"
    assert first["log.level"] == "info"
    assert str(first["@timestamp"]).endswith("Z")
    assert handler.stats["retries"] == handler.stats["spooled"] == handler.stats["dropped"] == 0


def test_trace_context_is_captured_on_the_calling_thread(
    receiver: HttpNdjsonReceiver, tmp_path: Path, handlers: list[Any]
) -> None:
    """A record logged inside a span carries that span's trace.id and span.id."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("shipper-test")
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path)
    with tracer.start_as_current_span("work") as span:
        log.info("inside %d", 1)
        ctx = span.get_span_context()
    log.info("outside %d", 2)
    wait_until(lambda: handler.stats["acknowledged"] == 2)
    inside, outside = (json.loads(line) for line in receiver.accepted)
    assert inside["trace.id"] == format(ctx.trace_id, "032x")
    assert inside["span.id"] == format(ctx.span_id, "016x")
    assert "trace.id" not in outside


def test_records_keep_no_frames_or_arguments(
    receiver: HttpNdjsonReceiver, tmp_path: Path, handlers: list[Any]
) -> None:
    """The record is serialized when emitted: later changes to its arguments do not show."""
    receiver.stalled = True
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path)
    item = {"state": "before"}
    log.info("item %s 1", item)
    item["state"] = "after"
    receiver.stalled = False
    wait_until(lambda: handler.stats["acknowledged"] == 1)
    assert "before" in json.loads(receiver.accepted[0])["message"]


def test_a_refused_record_is_found_by_halves_kept_and_counted(
    receiver: HttpNdjsonReceiver, tmp_path: Path, handlers: list[Any]
) -> None:
    """A 400 for a batch: the shipper bisects, delivers the others, keeps the bad one on disk."""
    receiver.refuse_marker = b"poison"
    receiver.stalled = True  # let a batch build up around the bad record
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path)
    for i in range(300):
        log.info("event %d", i)
    log.info("poison %d", 300)
    for i in range(301, 600):
        log.info("event %d", i)
    receiver.stalled = False
    wait_until(lambda: handler.stats["acknowledged"] + handler.stats["rejected"] == 600)
    assert handler.stats["rejected"] == 1
    assert handler.stats["acknowledged"] == 599
    (kept,) = [
        json.loads(line)
        for path in (tmp_path / "rejected").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert json.loads(kept["record"])["message"] == "poison 300"
    assert kept["reason"].startswith("400")


def test_tcp_mode_is_counted_unconfirmed_not_acknowledged(
    tmp_path: Path, handlers: list[Any]
) -> None:
    """TCP JSON lines (at-most-once) deliver, but never count as acknowledged."""
    tcp = JsonLinesReceiver()
    tcp.start()
    try:
        handler, log = _shipper(handlers, TcpLines("127.0.0.1", tcp.port), tmp_path)
        for i in range(500):
            log.info("tcp %d", i)
        assert tcp.wait_for(500, timeout=30)
        wait_until(lambda: handler.stats["unconfirmed"] == 500)
        assert handler.stats["acknowledged"] == 0
        assert [int(e["message"].split()[-1]) for e in tcp.snapshot()] == list(range(500))
    finally:
        tcp.stop()


def test_full_spool_drops_oldest_counts_and_warns(
    tmp_path: Path, handlers: list[Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """The receiver never returns: the spool stays under its cap, oldest dropped and counted."""
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("pyobs_log_shipper_events_total", {"outcome": "dropped"})
    cap = 256 * 1024
    closed = LogstashHttp(f"http://127.0.0.1:{free_port()}/")
    handler, log = _shipper(handlers, closed, tmp_path, spool_max_bytes=cap)
    for i in range(20000):
        log.info("event %d with some padding to fill the spool quickly", i)
    wait_until(lambda: handler.pending() == 0, what="memory to move to disk")
    handler.close()
    lines = [
        line
        for directory in tmp_path.glob("pid-*")
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]
    size = sum(len(line) + 1 for line in lines)
    assert 0 < size <= cap
    assert handler.stats["dropped"] > 0
    after = REGISTRY.get_sample_value("pyobs_log_shipper_events_total", {"outcome": "dropped"})
    assert (after or 0) - (before or 0) == handler.stats["dropped"]
    assert len(lines) + handler.stats["dropped"] == 20000
    numbers = [int(json.loads(line)["message"].split()[1]) for line in lines]
    assert numbers[-1] == 19999  # newest kept
    assert numbers == sorted(numbers)  # order kept
    # Oldest dropped: every kept record is among the newest, but for at most one batch that
    # was in flight when the spool filled (it goes back to the head of the spool).
    newest = range(20000 - len(numbers), 20000)
    assert len([n for n in numbers if n not in newest]) <= BATCH_MAX_EVENTS
    warnings = [ln for ln in capfd.readouterr().err.splitlines() if "spool full" in ln]
    assert 1 <= len(warnings) <= 3  # warned, at a limited rate


def test_emit_never_waits_for_a_stalled_receiver(
    receiver: HttpNdjsonReceiver, tmp_path: Path, handlers: list[Any]
) -> None:
    """With the receiver reading nothing and the memory queue full, emit still returns."""
    receiver.stalled = True
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, queue_max_events=500)
    done = threading.Event()

    def request_thread() -> None:
        for i in range(10_000):
            log.info("stalled %s %d", "x" * 500, i)
        done.set()

    thread = threading.Thread(target=request_thread)
    thread.start()
    wait_until(done.is_set, timeout=120, what="10,000 emit calls")
    assert receiver.lines_read == 0  # nothing was read: no emit waited for the receiver
    assert handler.stats["dropped"] == 0
    thread.join()
    receiver.stalled = False
    wait_until(lambda: handler.stats["acknowledged"] == 10_000, timeout=90)


def test_two_live_processes_never_both_claim_a_dead_spool(tmp_path: Path) -> None:
    """A dead process's spool goes to exactly one of two claimers racing for it."""
    script = "import pyobs._shipping.spool as s, pathlib, sys\n" + textwrap.dedent(
        """
        spool = s.Spool(pathlib.Path(sys.argv[1]), 10_000_000)
        spool.append([b'{"message": "dead %d"}\\n' % i for i in range(1000)])
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    first, second = Spool(tmp_path, 10_000_000), Spool(tmp_path, 10_000_000)
    results: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.claim_dead())) for s in
               (first, second)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(adopted for adopted, _ in results) == [0, 1000]
    assert first.events + second.events == 1000
    # A live spool is never claimed: its owner (this process) holds its lock.
    third = Spool(tmp_path, 10_000_000)
    assert third.claim_dead() == (0, 0)
    for spool in (first, second, third):
        spool.close()


def test_direct_mode_speaks_bulk_over_tls_with_an_api_key(
    tmp_path: Path, handlers: list[Any]
) -> None:
    """Direct mode: _bulk create into the data stream, over verified TLS, with the API key."""
    from tests.elk.helpers import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake_es = HttpNdjsonReceiver(ssl_context=server_ctx)
    fake_es.start()
    try:
        transport = ElasticsearchBulk(
            fake_es.url, "logs-pyobs-tls", api_key="secret-key", ca_file=str(cert)
        )
        handler, log = _shipper(handlers, transport, tmp_path / "spool")
        log.info("direct %d", 1)
        wait_until(lambda: handler.stats["acknowledged"] == 1)
        request_line, headers = fake_es.last_request
        assert request_line.startswith("POST /logs-pyobs-tls/_bulk?")
        assert headers["authorization"] == "ApiKey secret-key"
        action, source = (json.loads(line) for line in fake_es.accepted)
        assert action == {"create": {"_id": source["event.id"]}}
        assert source["message"] == "direct 1"
    finally:
        fake_es.stop()


def test_transport_follows_the_configuration() -> None:
    """PYOBS_LOGSTASH_URL wins, then PYOBS_ELASTICSEARCH_URL, then the TCP host."""
    assert handler_for(Config()) is None
    both = Config(logstash_url="http://ls:8080", elasticsearch_url="http://es:9200")
    direct = Config(elasticsearch_url="https://es:9200", elasticsearch_api_key="k")
    tcp = Config(logstash_host="ls")
    for config, kind in ((both, LogstashHttp), (direct, ElasticsearchBulk), (tcp, TcpLines)):
        handler = handler_for(config)
        assert handler is not None
        assert type(handler.transport) is kind
        handler.close()
    handler = handler_for(direct)
    assert handler is not None
    assert isinstance(handler.transport, ElasticsearchBulk)
    assert handler.transport.headers["Authorization"] == "ApiKey k"
    assert handler.transport.data_stream == "logs-pyobs-default"
    handler.close()


def test_bad_queue_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed PYOBS_LOG_QUEUE_MAX_EVENTS fails with a message naming it."""
    monkeypatch.setenv("PYOBS_LOG_QUEUE_MAX_EVENTS", "lots")
    with pytest.raises(ConfigError, match="PYOBS_LOG_QUEUE_MAX_EVENTS"):
        handler_for(Config(logstash_url="http://ls:8080"))


def test_shipper_never_imports_logs() -> None:
    """No import circle: the shipper modules do not import pyobs.logs (logs imports them)."""
    for path in [REPO / "pyobs" / "shipper.py", *(REPO / "pyobs" / "_shipping").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "pyobs.logs", path
                assert not (node.module == "pyobs" and any(a.name == "logs" for a in node.names))
            elif isinstance(node, ast.Import):
                assert all(a.name != "pyobs.logs" for a in node.names), path


# --- processes ----------------------------------------------------------------------------------


def _run(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    full.update(env)
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _spooled(root: Path, logger: str) -> list[dict[str, Any]]:
    lines = [
        json.loads(line)
        for path in sorted(root.glob("pid-*/*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return [e for e in lines if e.get("log.logger") == logger]


_EMITTER = """
    import logging, os
    import pyobs
    pyobs.setup(service_name="exit-test", log_level="warning")
    log = logging.getLogger("exit")
    for i in range(int(os.environ["N"])):
        log.warning("event %d", i)
"""


def test_exit_while_down_keeps_everything_and_the_next_start_replays(
    receiver: HttpNdjsonReceiver, tmp_path: Path
) -> None:
    """Exit with the receiver down keeps every record on disk; the next process sends them first."""
    port = receiver.port
    receiver.stop()
    env = {
        "PYOBS_LOGSTASH_URL": f"http://127.0.0.1:{port}/",
        "PYOBS_LOG_SPOOL_DIR": str(tmp_path),
        "N": "500",
    }
    result = _run(_EMITTER, env)
    assert result.returncode == 0, result.stderr
    assert [int(e["message"].split()[1]) for e in _spooled(tmp_path, "exit")] == list(range(500))
    receiver.start()
    result = _run(_EMITTER, {**env, "N": "10"})
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(receiver.accepted) >= 510)
    events = [json.loads(line) for line in receiver.accepted]
    numbers = [int(e["message"].split()[1]) for e in events if e["log.logger"] == "exit"]
    assert numbers == list(range(500)) + list(range(10))  # the dead spool first, in order
    assert not list(tmp_path.glob("pid-*/*.jsonl"))


def test_sigterm_keeps_what_the_process_holds(receiver: HttpNdjsonReceiver, tmp_path: Path) -> None:
    """Killed by SIGTERM with records queued: every one is delivered or kept in the spool."""
    receiver.stalled = True  # nothing is delivered before the signal
    code = """
        import logging, os, signal, sys, time
        import pyobs
        pyobs.setup(service_name="sigterm-test", log_level="warning")
        log = logging.getLogger("term")
        for i in range(5000):
            log.warning("event %d", i)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    """
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(tmp_path)}
    result = _run(code, env)
    assert result.returncode == -signal.SIGTERM
    receiver.stalled = False
    # What the receiver got before the process died plus what the spool kept: all 5000.
    kept = {int(e["message"].split()[1]) for e in _spooled(tmp_path, "term")}
    got = {int(json.loads(line)["message"].split()[1]) for line in receiver.accepted}
    assert kept | got == set(range(5000))


def test_sigterm_chains_the_application_handler(
    receiver: HttpNdjsonReceiver, tmp_path: Path
) -> None:
    """An application's own SIGTERM handler still runs; pyobs keeps the records first."""
    receiver.stalled = True
    code = """
        import logging, os, signal, sys
        def graceful(signum, frame):
            print("app handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, graceful)
        import pyobs
        pyobs.setup(service_name="chain-test", log_level="warning")
        log = logging.getLogger("chain")
        for i in range(1000):
            log.warning("event %d", i)
        os.kill(os.getpid(), signal.SIGTERM)
    """
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(tmp_path)}
    result = _run(code, env)
    assert result.returncode == 3, result.stderr
    assert "app handler ran" in result.stdout
    kept = {int(e["message"].split()[1]) for e in _spooled(tmp_path, "chain")}
    got = {int(json.loads(line)["message"].split()[1]) for line in receiver.accepted}
    assert kept | got == set(range(1000))


def test_forked_worker_ships_its_own_records(receiver: HttpNdjsonReceiver, tmp_path: Path) -> None:
    """After fork (gunicorn --preload) the child ships its own records with its own pid."""
    code = """
        import logging, os
        import pyobs
        pyobs.setup(service_name="fork-test", log_level="warning")
        log = logging.getLogger("fork")
        log.warning("parent before fork %d", 0)
        pid = os.fork()
        if pid == 0:
            for i in range(100):
                log.warning("child %d", i)
            logging.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        log.warning("parent after fork %d", 1)
        print(pid)
    """
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(tmp_path)}
    result = _run(code, env)
    assert result.returncode == 0, result.stderr
    (child_pid,) = [int(line) for line in result.stdout.splitlines() if line.strip().isdigit()]
    wait_until(lambda: len(receiver.accepted) >= 102)
    events = [json.loads(line) for line in receiver.accepted]
    child = [e for e in events if str(e["message"]).startswith("child")]
    assert [int(e["message"].split()[1]) for e in child] == list(range(100))
    assert {e["process.pid"] for e in child} == {child_pid}
    assert len([e for e in events if str(e["message"]).startswith("parent")]) == 2


def test_fork_while_threads_log_never_deadlocks(
    receiver: HttpNdjsonReceiver, tmp_path: Path
) -> None:
    """Forking 30 times while 4 threads log and the shipper spills: every child finishes."""
    receiver.stalled = True  # the spiller writes to disk while we fork
    code = """
        import logging, os, threading
        import pyobs
        pyobs.setup(service_name="fork-lock", log_level="warning")
        log = logging.getLogger("forklock")
        stop = threading.Event()
        def chatter():
            while not stop.is_set():
                log.warning("busy %d", 1)
        threads = [threading.Thread(target=chatter) for _ in range(4)]
        for t in threads:
            t.start()
        for n in range(30):
            pid = os.fork()
            if pid == 0:
                log.warning("child %d", n)
                logging.shutdown()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0
        stop.set()
        for t in threads:
            t.join()
        print("all children done", flush=True)
    """
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(tmp_path)}
    result = _run(code, env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "all children done" in result.stdout


def test_exit_with_a_stalled_receiver_keeps_every_record(
    receiver: HttpNdjsonReceiver, tmp_path: Path
) -> None:
    """A receiver that reads nothing at exit time: the process ends, every record is on disk."""
    receiver.stalled = True
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(tmp_path), "N": "2000"}
    result = _run(_EMITTER, env)
    assert result.returncode == 0, result.stderr
    assert receiver.lines_read == 0
    numbers = sorted(int(e["message"].split()[1]) for e in _spooled(tmp_path, "exit"))
    assert numbers == list(range(2000))  # each kept once, none lost
