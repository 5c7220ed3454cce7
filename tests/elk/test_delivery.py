"""Fault injection: every record emitted ends up in the real Elasticsearch node, or is counted.

Each test drives one way receivers misbehave (issue 12's table) against a stand-in for
Logstash's ``http`` input that stores every batch in the real Elasticsearch 8.19 node before
answering 2xx (tests/elk/receiver.py says what it does not prove), or against the node
directly in direct mode, and asserts exactly ``emitted == indexed + dropped``, with no drop
unless the spool was full. ``_id`` is ``event.id``, so a record stored twice counts once.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyobs._config import Config
from pyobs._shipping.transports import FAILURE_STREAM, ElasticsearchBulk, LogstashHttp
from pyobs.logs import ECSFormatter
from pyobs.shipper import ShippingHandler
from tests.elk.esnodes import free_port, http_json
from tests.elk.helpers import (
    EsStream,
    TcpProxy,
    install_templates,
    make_shipper,
    self_signed_cert,
    wait_until,
)
from tests.elk.receiver import HttpNdjsonReceiver

REPO = Path(__file__).resolve().parents[2]
_templates_installed: set[str] = set()


@pytest.fixture
def stream(es_url: str) -> EsStream:
    """A data stream of its own on the real node, with the repository's templates installed."""
    if es_url not in _templates_installed:
        install_templates(es_url)
        _templates_installed.add(es_url)
    return EsStream(es_url, f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def receiver(stream: EsStream) -> Iterator[HttpNdjsonReceiver]:
    """The acknowledging Logstash stand-in, writing to the test's data stream."""
    rec = HttpNdjsonReceiver(on_batch=stream.write)
    rec.start()
    yield rec
    rec.stop()


def _shipper(
    handlers: list[Any], transport: Any, spool: Path, name: str, **options: Any
) -> tuple[ShippingHandler, logging.Logger]:
    return make_shipper(handlers, transport, spool, "delivery-test", **options)


def _emit_from_threads(log: logging.Logger, threads: int, each: int) -> None:
    """``threads`` threads log ``each`` numbered events at once; returns when all are done."""
    running = [
        threading.Thread(target=_emit, args=(log, t * each, (t + 1) * each)) for t in range(threads)
    ]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()


def _accounted(stream: EsStream, handler: ShippingHandler, emitted: int) -> None:
    """emitted == indexed + dropped, exactly, and nothing dropped (the spool had room)."""
    wait_until(
        lambda: (
            stream.count() + handler.stats["dropped"] >= emitted
            and handler.stats["acknowledged"] + handler.stats["dropped"] >= emitted
        ),
        timeout=90,
        what=f"{emitted} events in {stream.name}",
    )
    assert stream.count() + handler.stats["dropped"] == emitted
    assert handler.stats["dropped"] == 0
    assert handler.stats["acknowledged"] == emitted  # unique events, resends not counted
    assert handler.waiting() == 0


def _emit(log: logging.Logger, start: int, stop: int, text: str = "event") -> None:
    for i in range(start, stop):
        log.info("%s %d", text, i)


def test_backpressure_spills_to_disk_and_emit_never_waits(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """A receiver that stops reading: emit keeps going (to disk), nothing is lost afterwards."""
    receiver.stalled = True
    transport = LogstashHttp(receiver.url)
    handler, log = _shipper(handlers, transport, tmp_path, "stall", queue_max_events=1000)
    done = threading.Event()

    def request_thread() -> None:
        _emit(log, 0, 20_000, "stalled " + "x" * 200)
        done.set()

    thread = threading.Thread(target=request_thread)
    thread.start()
    # Every emit call returns while the receiver has not read a single line: emit never
    # waits on the receiver, even with the memory queue full (it spills to disk).
    wait_until(done.is_set, timeout=120, what="20,000 emit calls to return")
    assert receiver.lines_read == 0
    assert handler.stats["spooled"] > 0
    thread.join()
    receiver.stalled = False
    _accounted(stream, handler, 20_000)


def test_stall_then_connection_reset(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """Stalled, then every connection reset: what was in flight is sent again, stored once."""
    receiver.stalled = True
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "reset")
    _emit(log, 0, 5_000)
    wait_until(lambda: handler.stats["spooled"] > 0, what="the stalled receiver to spill")
    receiver.reset_all()
    receiver.stalled = False
    _accounted(stream, handler, 5_000)
    assert handler.stats["retries"] > 0


def test_receiver_closing_every_connection_after_500_lines(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """A receiver that cuts each connection after 500 lines still gets everything."""
    receiver.close_after_lines = 500
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "cut")
    _emit(log, 0, 10_000)
    _accounted(stream, handler, 10_000)


def test_lost_acknowledgements_are_resent_and_stored_once(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """Batches stored but never answered are resent: counted once, stored once, retries apart."""
    receiver.lose_ack_every = 3
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "ack")
    _emit(log, 0, 5_000)
    _accounted(stream, handler, 5_000)
    assert len(receiver.accepted) > 5_000  # the stand-in stored some batches twice
    assert handler.stats["retries"] > 0


def test_back_pressure_429_keeps_records_queued(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """429 and 503 answers are back-pressure: the same records are sent again later."""
    receiver.statuses = [429] * 3 + [503] * 2
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "429")
    _emit(log, 0, 3_000)
    _accounted(stream, handler, 3_000)
    assert handler.stats["retries"] > 0
    assert receiver.statuses == []


def test_tls_low_rate_with_two_receiver_restarts(
    stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """TLS, a few records a second, the receiver restarted twice: all 28 arrive."""
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    receiver = HttpNdjsonReceiver(on_batch=stream.write, ssl_context=server_ctx)
    receiver.start()
    try:
        transport = LogstashHttp(receiver.url, ca_file=str(cert))
        handler, log = _shipper(handlers, transport, tmp_path / "spool", "tls")
        emitted = 0
        for _restart in range(2):
            for _ in range(7):
                log.info("tls %d", emitted)
                emitted += 1
            wait_until(lambda n=emitted: stream.count() >= n, what="the first records")
            receiver.stop()
            retries = handler.stats["retries"]
            for _ in range(7):
                log.info("tls %d", emitted)
                emitted += 1
            wait_until(lambda r=retries: handler.stats["retries"] > r, what="a failed send")
            receiver.start()
        _accounted(stream, handler, emitted)
        assert emitted == 28
    finally:
        receiver.stop()


def test_logstash_killed_and_restarted_repeatedly(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """Under steady logging the receiver dies and comes back four times: nothing is lost."""
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "kill")
    emitted = 0
    for _ in range(4):
        _emit(log, emitted, emitted + 1_000)
        emitted += 1_000
        receiver.stop()
        retries = handler.stats["retries"]
        _emit(log, emitted, emitted + 1_000)
        emitted += 1_000
        wait_until(lambda r=retries: handler.stats["retries"] > r, what="the receiver gone")
        receiver.start()
    _accounted(stream, handler, emitted)
    messages = stream.messages()
    assert sorted(int(m.split()[1]) for m in messages) == list(range(emitted))


def test_sixteen_threads_healthy(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """16 threads logging at once against a healthy receiver: every event stored, none dropped."""
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "threads")
    _emit_from_threads(log, 16, 1_000)
    _accounted(stream, handler, 16_000)


def test_counters_on_metrics_match_what_happened(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """/metrics says the same as the data stream: acknowledged unique events, resends apart."""
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ack = value("pyobs_log_shipper_events_total", outcome="acknowledged")
    before_retry = value("pyobs_log_shipper_retries_total")
    receiver.lose_ack_every = 2
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), tmp_path, "metrics")
    _emit(log, 0, 2_000)
    _accounted(stream, handler, 2_000)
    assert value("pyobs_log_shipper_events_total", outcome="acknowledged") - before_ack == 2_000
    retries = value("pyobs_log_shipper_retries_total") - before_retry
    assert retries == handler.stats["retries"] > 0


# --- direct to Elasticsearch ------------------------------------------------------------------


def test_direct_mode_sixteen_threads(stream: EsStream, tmp_path: Path, handlers: list[Any]) -> None:
    """Direct _bulk into the data stream from 16 threads: every event stored once."""
    transport = ElasticsearchBulk(stream.es_url, stream.name)
    handler, log = _shipper(handlers, transport, tmp_path, "direct")
    _emit_from_threads(log, 16, 500)
    _accounted(stream, handler, 8_000)


def test_direct_mode_outage_and_lost_answers(
    stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """Elasticsearch unreachable, then answers lost after indexing: 409s count as delivered."""
    port = int(stream.es_url.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    proxy.start()
    try:
        transport = ElasticsearchBulk(f"http://127.0.0.1:{proxy.port}", stream.name)
        handler, log = _shipper(handlers, transport, tmp_path, "outage")
        _emit(log, 0, 1_000)
        wait_until(lambda: stream.count() >= 1_000, what="the first events")
        proxy.stop()
        _emit(log, 1_000, 3_000)
        wait_until(lambda: handler.stats["spooled"] > 0, what="the outage to spill")
        proxy.lose_answers = 3
        proxy.start()
        _emit(log, 3_000, 4_000)
        _accounted(stream, handler, 4_000)
        assert handler.stats["retries"] > 0
    finally:
        proxy.stop()


def test_direct_mode_refused_record_is_kept_and_counted(
    stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """A record Elasticsearch refuses is counted rejected and kept in the failure data stream."""

    class BadTimestamp(ECSFormatter):
        def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
            fields = super().to_dict(record)
            if record.getMessage() == "bad":
                fields["@timestamp"] = "not a date"
            return fields

    transport = ElasticsearchBulk(stream.es_url, stream.name)
    handler, log = _shipper(handlers, transport, tmp_path, "refused")
    handler.setFormatter(BadTimestamp(Config(service_name="delivery-test")))
    log.info("good")
    log.info("bad")
    log.info("good")
    wait_until(lambda: handler.stats["acknowledged"] + handler.stats["rejected"] >= 3)
    assert handler.stats["rejected"] == 1
    assert stream.count() == 2
    assert not list((tmp_path / "rejected").glob("*.jsonl"))  # kept in Elasticsearch instead
    http_json("POST", f"{stream.es_url}/{FAILURE_STREAM}/_refresh")
    query = {"query": {"term": {"service.name": "delivery-test"}}, "size": 100}
    found = http_json("POST", f"{stream.es_url}/{FAILURE_STREAM}/_search", query)
    kept = [
        hit["_source"]
        for hit in found["hits"]["hits"]
        if json.loads(hit["_source"]["event"]["original"]).get("message") == "bad"
    ]
    assert len(kept) == 1
    assert kept[0]["error"]["message"].startswith("400")


def test_direct_mode_keeps_refused_records_on_disk_when_elasticsearch_will_not_take_them(
    stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """Without a failure stream to write to, a refused record is kept on disk and counted."""

    class BadTimestamp(ECSFormatter):
        def to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
            fields = super().to_dict(record)
            if record.getMessage() == "bad":
                fields["@timestamp"] = "not a date"
            return fields

    transport = ElasticsearchBulk(stream.es_url, stream.name, failure_stream=None)
    handler, log = _shipper(handlers, transport, tmp_path, "refused-disk")
    handler.setFormatter(BadTimestamp(Config(service_name="delivery-test")))
    log.info("good")
    log.info("bad")
    wait_until(lambda: handler.stats["acknowledged"] + handler.stats["rejected"] >= 2)
    assert handler.stats["rejected"] == 1
    assert stream.count() == 1
    kept_on_disk = list((tmp_path / "rejected").glob("*.jsonl"))
    (entry,) = [json.loads(line) for p in kept_on_disk for line in p.read_text().splitlines()]
    assert json.loads(entry["record"])["message"] == "bad"
    assert entry["reason"].startswith("400")


# --- processes: children, dead spools, memory --------------------------------------------------


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    full.update(env)
    full["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_CHILDREN = """
import logging, multiprocessing, os, sys, time
import pyobs

pyobs.setup(service_name="children", log_level="warning")
log = logging.getLogger("child")


def work(n):
    for i in range(100):
        log.warning("child %d record %d", n, i)


if __name__ == "__main__":
    print(os.getpid(), flush=True)
    context = multiprocessing.get_context(sys.argv[1])
    procs = [context.Process(target=work, args=(n,)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if len(sys.argv) > 2:  # a gate: the test changes the receiver before the parent logs
        gate = sys.argv[2]
        open(os.path.join(gate, "joined"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
    log.warning("parent done")
"""


def _left_in_spool(spool: Path, parent: int) -> list[str]:
    """The messages still on disk after the parent ended; every one must sit in its spool.

    The parent's exit sends for at most 0.8 s; on a loaded host what did not go out stays in
    its spool for the next process. A child's directory left behind means the parent's exit
    never claimed it (the documented promise: children's spools go out with the parent's).
    """
    left: list[str] = []
    for directory in spool.iterdir():
        if directory.name == "quarantine" or not directory.is_dir():
            continue
        mine = (f"pid-{parent}-", f"claimed-{parent}-")  # claimed: adopted when exit cut it short
        assert directory.name.startswith(mine), sorted(p.name for p in spool.iterdir())
        for path in directory.glob("*.jsonl"):
            left += [json.loads(line)["message"] for line in path.read_bytes().splitlines()]
    return left


_EMITTED = {f"child {n} record {i}" for n in range(4) for i in range(100)} | {"parent done"}


def _indexed_or_kept(stream: EsStream, left: list[str]) -> None:
    """Every record the script emitted is in Elasticsearch or in the parent's spool, once each.

    A record can be in both: when the parent's bounded exit cuts a request short after the
    receiver stored the batch but before its answer arrived, the batch stays on disk (delivery
    counts only on an answer). Replaying it is harmless because ``event.id`` is the document
    id, which the next process's replay proves (Elasticsearch ends with exactly 402).
    """
    assert len(left) == len(set(left)), "a record is twice in the spool"
    assert set(left) <= _EMITTED
    wait_until(lambda: set(stream.messages()) | set(left) >= _EMITTED, timeout=90,
               what="every record indexed or kept")  # fmt: skip
    indexed = stream.messages()
    assert len(indexed) == len(set(indexed)), "a record indexed twice"
    assert set(indexed) | set(left) == _EMITTED


def _next_process_sends_the_rest(
    handlers: list[Any], receiver: HttpNdjsonReceiver, stream: EsStream, spool: Path, total: int
) -> None:
    """A later process on the same spool replays what is left: ``total`` + its own record."""
    handler, log = _shipper(handlers, LogstashHttp(receiver.url), spool, "next")
    _emit(log, 0, 1, "next")
    wait_until(lambda: stream.count() >= total + 1, timeout=90, what="the spool replayed")
    assert stream.count() == total + 1
    assert handler.stats["dropped"] == 0


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_children_logging_just_before_they_end(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, method: str,
    handlers: list[Any],
) -> None:  # fmt: skip
    """Children that log and end at once (they leave through os._exit) lose nothing: what
    neither they nor the parent could send before exiting is in the parent's spool, and the
    next process sends it (indexed or left on disk, each record exactly once, at every step)."""
    spool = tmp_path / "spool"
    script = tmp_path / "children.py"
    script.write_text(_CHILDREN)
    env = {"PYOBS_LOGSTASH_URL": receiver.url, "PYOBS_LOG_SPOOL_DIR": str(spool)}
    result = _run(script, env, method)
    assert result.returncode == 0, result.stderr[-3000:]
    parent = int(result.stdout.split()[0])
    _indexed_or_kept(stream, _left_in_spool(spool, parent))
    _next_process_sends_the_rest(handlers, receiver, stream, spool, 401)


@pytest.mark.parametrize("answer", [200, 503])
def test_children_spooled_while_the_receiver_was_down_go_out_with_the_parent(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any],
    answer: int,
) -> None:  # fmt: skip
    """multiprocessing children that end while the receiver is down spool all their records
    (none sent, none lost); the parent, logging one record after the receiver is back, claims
    their spools and sends them with its own. Whether all of it goes out within the parent's
    0.8 s exit bound depends on the host's load, so the test cannot prove that part: what the
    parent could not send must be in its own spool, and the next process sends it. With the
    receiver answering 503 while the parent exits, all 401 records must be in its spool."""
    spool = tmp_path / "spool"
    gate = tmp_path / "gate"
    gate.mkdir()
    script = tmp_path / "children.py"
    script.write_text(_CHILDREN)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    full.update(PYOBS_LOGSTASH_URL=receiver.url, PYOBS_LOG_SPOOL_DIR=str(spool),
                PYTHONPATH=str(REPO))  # fmt: skip
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    receiver.stop()
    with out.open("w") as stdout, err.open("w") as stderr, subprocess.Popen(
        [sys.executable, str(script), "fork", str(gate)], env=full, stdout=stdout, stderr=stderr
    ) as proc:  # fmt: skip
        try:
            wait_until(lambda: (gate / "joined").exists() or proc.poll() is not None,
                       timeout=90, what="the children to end")  # fmt: skip
            on_disk = sum(len(p.read_bytes().splitlines()) for p in spool.glob("pid-*/*.jsonl"))
            assert on_disk == 400  # every child record spooled, none sent, none lost
            if answer != 200:
                receiver.statuses = [answer] * 10_000
            receiver.start()
            (gate / "go").touch()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err.read_text()[-3000:]
    left = _left_in_spool(spool, int(out.read_text().split()[0]))
    if answer != 200:
        assert sorted(left) == sorted(_EMITTED)
        receiver.statuses = []
    _indexed_or_kept(stream, left)
    _next_process_sends_the_rest(handlers, receiver, stream, spool, 401)


_SPOOLER = """
import logging, os, sys
import pyobs

pyobs.setup(service_name="spooler", log_level="warning")
log = logging.getLogger("old")
for i in range(int(os.environ["N"])):
    log.warning("old %d", i)
"""


def test_unreadable_entry_in_a_dead_spool_is_set_aside_and_the_rest_replayed(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """A dead process's spool with an unreadable segment and a corrupt line: both quarantined,
    counted, the rest replayed; a later outage is still spooled (the spool stays on)."""
    spool = tmp_path / "spool"
    script = tmp_path / "spooler.py"
    script.write_text(_SPOOLER)
    closed = f"http://127.0.0.1:{free_port()}/"
    result = _run(script, {"PYOBS_LOGSTASH_URL": closed, "PYOBS_LOG_SPOOL_DIR": str(spool),
                           "N": "300"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (dead,) = [d for d in spool.iterdir() if d.name.startswith("pid-")]
    segments = sorted(dead.glob("*.jsonl"))
    kept = sum(len(p.read_bytes().splitlines()) for p in segments)
    assert kept == 300
    with segments[-1].open("ab") as out:
        out.write(b"\x00\xffnot json at all\n")  # a corrupt entry among good ones
    (dead / "000000000001.jsonl").mkdir()  # an entry that cannot be read as a file

    handler, log = _shipper(handlers, LogstashHttp(receiver.url), spool, "new")
    _emit(log, 0, 10, "new")
    wait_until(lambda: stream.count() >= 310, what="the dead spool replayed")
    assert stream.count() == 310
    assert handler.stats["quarantined"] == 2
    assert len(list((spool / "quarantine").iterdir())) == 2
    # A later outage: the spool is still in use.
    receiver.stop()
    _emit(log, 10, 510, "new")
    wait_until(lambda: handler.stats["spooled"] > 0, what="the outage to be spooled")
    receiver.start()
    wait_until(lambda: stream.count() >= 810, what="the outage's records")
    assert stream.count() == 810
    assert handler.stats["dropped"] == 0


_EXCEPTIONS = """
import json, logging, os, sys
import pyobs

pyobs.setup(service_name="exceptions", log_level="warning")
log = logging.getLogger("boom")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fail(i):
    payload = bytearray(200_000)  # a large local in the failing frame
    raise ValueError(f"failure {i} {len(payload)}")


for i in range(100):  # warm up allocators and caches before the baseline
    try:
        fail(i)
    except ValueError:
        pass
before = rss()
for i in range(3000):
    try:
        fail(i)
    except ValueError:
        log.exception("request %d failed", i)
after = rss()
shipper = [h for h in logging.getLogger().handlers if type(h).__name__ == "ShippingHandler"][0]
print("report", json.dumps({"growth": after - before, "stats": shipper.stats}), flush=True)
sys.stdin.readline()  # the test brings the receiver back, then says go
shipper.flush(timeout=60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_exceptions_logged_while_the_receiver_is_down_keep_memory_bounded(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path
) -> None:
    """3,000 exceptions with 200 kB frames while the receiver is down: RSS grows < 64 MB
    (no frame is kept), and every record arrives once the receiver is back."""
    receiver.stop()
    script = tmp_path / "exceptions.py"
    script.write_text(_EXCEPTIONS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    env.update(
        PYOBS_LOGSTASH_URL=receiver.url,
        PYOBS_LOG_SPOOL_DIR=str(tmp_path / "spool"),
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = next(x for x in proc.stdout if x.startswith("report "))
        report = json.loads(line[7:])
        assert report["growth"] < 64 * 1024 * 1024, report
        assert report["stats"]["dropped"] == 0
        receiver.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(
        lambda: stream.count() >= 3000, timeout=90, what=f"3,000 records {receiver.errors[-1:]}"
    )
    assert stream.count() == 3000


def test_spool_off_drops_only_what_memory_cannot_hold_and_counts_it(
    receiver: HttpNdjsonReceiver, stream: EsStream, tmp_path: Path, handlers: list[Any]
) -> None:
    """With no spool (cap 0) an outage longer than memory drops the oldest, counted exactly."""
    receiver.stop()
    handler, log = _shipper(
        handlers, LogstashHttp(receiver.url), tmp_path, "nospool", spool_max_bytes=0,
        queue_max_events=1_000,
    )  # fmt: skip
    _emit(log, 0, 5_000)
    wait_until(lambda: handler.stats["retries"] > 0, what="a failed send")
    receiver.start()
    wait_until(
        lambda: stream.count() + handler.stats["dropped"] >= 5_000, what="the rest delivered"
    )
    assert handler.stats["dropped"] > 0
    assert stream.count() + handler.stats["dropped"] == 5_000
    assert handler.stats["acknowledged"] == stream.count()
