"""A real Kafka broker for the tests: KRaft mode, one combined broker+controller on loopback.

scripts/setup.d/45-kafka.sh resolves the broker's classpath from Maven Central into
``.cache/kafka/<version>/libs``. ``start_kafka`` formats a fresh log directory (KRaft needs a
cluster id written before the first start), starts ``kafka.Kafka`` on free loopback ports (again
on others when a bind loses a race) and waits until an AdminClient sees the broker. One broker
serves the whole session (the ``kafka`` fixture in tests/conftest.py); tests keep apart by
topic (``Broker.new_topic``).
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import PortTaken, kill_tree, port_taken_in, start_with_retry

ROOT = Path(__file__).resolve().parents[1]
VERSION = "4.4.0"  # scripts/setup.d/45-kafka.sh
LIBS = ROOT / ".cache" / "kafka" / VERSION / "libs"
#: The machine running CI has two cores: a small heap, one GC thread, the C1 compiler only
#: (the broker starts faster and serves a test's few hundred messages just as well).
JVM_OPTIONS = (
    "-Xmx256m",
    "-Xms64m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
START_TIMEOUT = 90.0

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.enable=false
"""

LOG4J = """\
rootLogger.level=INFO
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
"""

_topics = itertools.count(1)


def missing_reason() -> str | None:
    """Why a broker cannot run here, or None."""
    if not (LIBS / f"kafka_2.13-{VERSION}.jar").is_file():
        return "Kafka is not fetched (scripts/setup.d/45-kafka.sh)"
    if shutil.which("java") is None:
        return "java is not installed (scripts/setup.d/45-kafka.sh)"
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        return f"confluent-kafka is not installed ({exc})"
    return None


def _java(*args: str, log: Path) -> list[str]:
    return [
        "java",
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={log}",
        "-cp",
        f"{LIBS}{os.sep}*",
        *args,
    ]


@dataclass
class Broker:
    """A running broker: where clients connect, its process and its log."""

    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: Seconds from starting the JVM until an AdminClient saw the broker.
    start_seconds: float

    def config(self, **extra: Any) -> dict[str, Any]:
        """A client configuration for this broker (librdkafka's own log lines kept quiet)."""
        return {"bootstrap.servers": self.bootstrap, "log_level": 2, **extra}

    def admin(self) -> Any:
        """An AdminClient on this broker."""
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.config())

    def new_topic(self, prefix: str = "t", partitions: int = 1) -> str:
        """Create a topic no other test uses and wait until it is ready; its name."""
        from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

        name = f"{prefix}-{os.getpid()}-{next(_topics)}-{uuid.uuid4().hex[:6]}"
        admin = self.admin()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        futures[name].result(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
            parts = topic.partitions if topic is not None and topic.error is None else {}
            if len(parts) == partitions and all(p.leader >= 0 for p in parts.values()):
                return name
            time.sleep(0.05)
        raise AssertionError(f"topic {name} has no leader after 30 s")

    def stop(self) -> None:
        """End the broker (its whole process tree)."""
        kill_tree(self.proc, grace=10)


def _cluster_id() -> str:
    """A KRaft cluster id: a random UUID in Kafka's URL-safe base64 form."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_kafka(tmp_path: Path | None = None) -> Broker:
    """Format a log directory and start a broker+controller on free loopback ports.

    Ports are picked for each attempt; when the broker reports its bind was lost to someone
    else, it is ended and started again on others. The broker is ended when it exits, fails
    or is not ready within START_TIMEOUT.
    """
    directory = tmp_path or Path(tempfile.mkdtemp(prefix="pyobs-kafka-"))
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    log4j = directory / "log4j2.properties"
    log4j.write_text(LOG4J)
    properties = directory / "server.properties"
    formatted = False

    def attempt(broker_port: int, controller_port: int) -> Broker:
        nonlocal formatted
        properties.write_text(
            SERVER_PROPERTIES.format(broker=broker_port, controller=controller_port, data=data)
        )
        if not formatted:
            # With a static voter list the ports are not part of the formatted directory,
            # so a retry on other ports reuses it.
            fmt = subprocess.run(
                _java(
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument: a cluster id may start with "-" (base64url).
                    f"--cluster-id={_cluster_id()}",
                    "-c",
                    str(properties),
                    log=log4j,
                ),
                capture_output=True,
                timeout=120,
                check=False,
            )
            if fmt.returncode != 0:
                output = (fmt.stdout + fmt.stderr).decode(errors="replace")
                raise RuntimeError(f"kafka storage format failed: {output[-3000:]}")
            formatted = True
        log = directory / f"broker-{broker_port}.log"
        started = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                _java("kafka.Kafka", str(properties), log=log4j),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        broker = Broker(f"127.0.0.1:{broker_port}", proc, log, 0.0)
        try:
            _wait_ready(broker, broker_port, started)
        except BaseException:
            broker.stop()
            raise
        broker.start_seconds = time.monotonic() - started
        return broker

    return start_with_retry(attempt, ports=2)


def _wait_ready(broker: Broker, port: int, started: float) -> None:
    """Return when an AdminClient lists the broker; PortTaken or RuntimeError otherwise."""
    deadline = started + START_TIMEOUT
    admin = None
    while time.monotonic() < deadline:
        if broker.proc.poll() is not None or port_taken_in(_tail(broker.log, 20000)):
            text = _tail(broker.log, 20000)
            if port_taken_in(text):
                raise PortTaken(text[-300:])
            raise RuntimeError(f"Kafka exited {broker.proc.returncode}: {text[-3000:]}")
        # Until the port accepts, an AdminClient would only log refused connections.
        if _accepts(port):
            if admin is None:
                admin = broker.admin()
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # not ready yet (KafkaException and kin)
                pass
        time.sleep(0.1)
    raise RuntimeError(f"Kafka not ready after {START_TIMEOUT:.0f} s: {_tail(broker.log, 3000)}")


def _tail(path: Path, size: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
