"""Log shipper benchmark: pyobs.shipper vs python-logstash-async, same loopback receiver, same run.

    python benchmarks/shipper.py              # full run (about 2 minutes)
    python benchmarks/shipper.py --quick      # pyobs only, small numbers (the smoke test)
    python benchmarks/shipper.py --json out.json

Scenarios, each in a fresh producer process:
- throughput: as many events as the shipper takes (the producer backs off when pyobs's
  queue is 80% full, as pyobs drops rather than blocks); delivered events per second.
- restart: steady load; the receiver is killed (connections reset) for a while and comes
  back. Events sent, received, unique (what Elasticsearch keeps: it uses event.id as _id),
  duplicates removed, whether the first arrivals are in order, how long after the restart
  the backlog was delivered, emit cost on the logging thread (p50/p99), peak RSS.
- exit: the receiver is down; how long the process takes to exit, and what it kept.

The receiver runs in its own process and only counts lines; it stands in for Logstash's tcp
input with the json_lines codec. No Elasticsearch is involved (tests/elk prove that part).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPERS = ("pyobs", "logstash-async-sqlite", "logstash-async-memory")


# --- receiver process ---------------------------------------------------------------------


class Receiver:
    """json_lines over TCP; tracks unique events, duplicates and the delivered prefix."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.server: socket.socket | None = None
        self.buffers: dict[socket.socket, bytes] = {}
        self.lines = 0
        self.seen: set[str] = set()
        self.numbers: set[int] = set()
        self.prefix = 0  # every event numbered below this has arrived
        self.in_order = True
        self.last_first_seen = -1
        self.lock = threading.Lock()

    def up(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.setblocking(False)
        self.sel.register(server, selectors.EVENT_READ)
        self.server = server

    def down(self) -> None:
        if self.server is not None:
            self.sel.unregister(self.server)
            self.server.close()
            self.server = None
        for client in list(self.buffers):
            self._drop(client, reset=True)

    def _drop(self, client: socket.socket, reset: bool = False) -> None:
        self.sel.unregister(client)
        self.buffers.pop(client, None)
        if reset:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    def poll(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self.server:
                client, _ = sock.accept()
                client.setblocking(False)
                self.sel.register(client, selectors.EVENT_READ)
                self.buffers[client] = b""
                continue
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(sock)
                continue
            data = self.buffers[sock] + chunk
            *lines, self.buffers[sock] = data.split(b"\n")
            with self.lock:
                for line in lines:
                    if line.strip():
                        self._line(line)

    def _line(self, line: bytes) -> None:
        self.lines += 1
        try:
            event = json.loads(line)
        except ValueError:
            return
        message = str(event.get("message", ""))
        key = str(event.get("event.id") or message)
        if key in self.seen:
            return
        self.seen.add(key)
        if not message.startswith("bench "):
            return
        number = int(message.split()[1])
        if number < self.last_first_seen:
            self.in_order = False
        self.last_first_seen = number
        self.numbers.add(number)
        while self.prefix in self.numbers:
            self.prefix += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "lines": self.lines,
                "unique": len(self.numbers),
                "prefix": self.prefix,
                "in_order": self.in_order,
                "t": time.monotonic(),
            }


def run_receiver(port: int) -> None:
    """Serve until stdin closes; commands on stdin: up, down, stats."""
    receiver = Receiver(port)
    receiver.up()
    commands: list[str] = []

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.append(line.strip())
        commands.append("quit")

    threading.Thread(target=read_stdin, daemon=True).start()
    print("ready", flush=True)
    while True:
        receiver.poll(0.01)
        while commands:
            command = commands.pop(0)
            if command == "quit":
                return
            if command == "down":
                receiver.down()
            elif command == "up":
                receiver.up()
            elif command == "stats":
                print(json.dumps(receiver.stats()), flush=True)


# --- producer process ---------------------------------------------------------------------


def make_handler(shipper: str, port: int, spool: str) -> Any:
    if shipper == "pyobs":
        from pyobs._config import Config
        from pyobs.logs import ECSFormatter
        from pyobs.shipper import LogstashHandler

        config = Config(
            service_name="bench", logstash_host="127.0.0.1", logstash_port=port, log_spool_dir=spool
        )
        handler = LogstashHandler(config)
        handler.setFormatter(ECSFormatter(config))
        return handler
    from logstash_async.handler import AsynchronousLogstashHandler

    database = os.path.join(spool, "logstash.db") if shipper.endswith("sqlite") else None
    return AsynchronousLogstashHandler("127.0.0.1", port, database_path=database)


def run_producer(args: argparse.Namespace) -> None:
    """Emit events as the scenario says; report costs and RSS as JSON on stdout."""
    handler = make_handler(args.shipper, args.port, args.spool)
    log = logging.getLogger("bench")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    pending = getattr(handler, "pending", None)
    limit = int(getattr(handler, "queue_size", 0) * 0.8)
    costs: list[int] = []
    start = time.monotonic()
    interval = 1.0 / args.rate if args.rate else 0.0
    for i in range(args.count):
        if interval:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elif pending is not None and pending() > limit:
            time.sleep(0.0005)
        # The handler's cost on the logging thread, as a request would pay it (the record is
        # built by the logger, the same for every shipper).
        record = log.makeRecord("bench", logging.INFO, __file__, 0, "bench %d", (i,), None)
        t0 = time.perf_counter_ns()
        handler.handle(record)
        costs.append(time.perf_counter_ns() - t0)
        if i % 200 == 0:
            print(f"progress {i + 1} {time.monotonic()}", flush=True)
    costs.sort()
    result = {
        "emitted": args.count,
        "first_emit": start,
        "emit_p50_us": costs[len(costs) // 2] / 1000,
        "emit_p99_us": costs[int(len(costs) * 0.99)] / 1000,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "dropped": getattr(handler, "dropped", None),
    }
    print("result " + json.dumps(result), flush=True)
    sys.stdin.readline()  # stay alive (like a server) until told to exit
    print(f"exiting {time.monotonic()}", flush=True)


# --- orchestration ------------------------------------------------------------------------


class Proc:
    """A child process with line-oriented stdout read in a thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        self.lines.remove(line)
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(prefix)
                self.cond.wait(left)

    def last(self, prefix: str) -> str | None:
        with self.cond:
            found = [line for line in self.lines if line.startswith(prefix)]
            return found[-1] if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_receiver(port: int) -> Proc:
    receiver = Proc([sys.executable, __file__, "--role", "receiver", "--port", str(port)])
    receiver.wait_line("ready", 10)
    return receiver


def stats(receiver: Proc) -> dict[str, Any]:
    receiver.send("stats")
    result: dict[str, Any] = json.loads(receiver.wait_line("{", 10))
    return result


def start_producer(shipper: str, port: int, spool: str, count: int, rate: float) -> Proc:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, __file__, "--role", "producer", "--shipper", shipper, "--port",
            str(port), "--spool", spool, "--count", str(count), "--rate", str(rate)]  # fmt: skip
    return Proc(argv, env)


def wait_delivered(receiver: Proc, target: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    current = stats(receiver)
    while current["prefix"] < target and time.monotonic() < deadline:
        time.sleep(0.05)
        current = stats(receiver)
    return current


def scenario_throughput(shipper: str, count: int, cap_s: float) -> dict[str, Any]:
    port = free_port()
    receiver = start_receiver(port)
    with tempfile.TemporaryDirectory() as spool:
        producer = start_producer(shipper, port, spool, count, 0)
        try:
            result = json.loads(producer.wait_line("result ", cap_s + 60)[7:])
            final = wait_delivered(receiver, count, cap_s)
            elapsed = final["t"] - result["first_emit"]
            producer.send("exit")
            producer.proc.wait(timeout=60)
        finally:
            producer.stop()
            receiver.stop()
    return {
        "events": count,
        "delivered": final["unique"],
        "seconds": round(elapsed, 2),
        "delivered_per_s": round(final["unique"] / elapsed),
        "emit_p50_us": round(result["emit_p50_us"], 1),
        "emit_p99_us": round(result["emit_p99_us"], 1),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
    }


def scenario_restart(shipper: str, rate: float, seconds: float) -> dict[str, Any]:
    """Steady load; the receiver is down from 30% to 60% of the run."""
    port = free_port()
    count = int(rate * seconds)
    receiver = start_receiver(port)
    with tempfile.TemporaryDirectory() as spool:
        producer = start_producer(shipper, port, spool, count, rate)
        try:
            producer.wait_line("progress", 30)
            time.sleep(seconds * 0.3)
            receiver.send("down")
            time.sleep(seconds * 0.3)
            receiver.send("up")
            back = time.monotonic()
            line = producer.last("progress") or "progress 0 0"
            emitted_before_back = int(line.split()[1])
            caught_up = wait_delivered(receiver, emitted_before_back, 30)
            catch_up_s = (
                caught_up["t"] - back if caught_up["prefix"] >= emitted_before_back else None
            )
            result = json.loads(producer.wait_line("result ", seconds + 60)[7:])
            final = wait_delivered(receiver, count, 30)
            producer.send("exit")
            producer.proc.wait(timeout=60)
            final = stats(receiver)
        finally:
            producer.stop()
            receiver.stop()
    return {
        "sent": count,
        "received_lines": final["lines"],
        "unique_delivered": final["unique"],
        "duplicates_removed": final["lines"] - final["unique"],
        "lost": count - final["unique"],
        "in_order": final["in_order"],
        "backlog_delivered_after_restart_s": None if catch_up_s is None else round(catch_up_s, 2),
        "emit_p50_us": round(result["emit_p50_us"], 1),
        "emit_p99_us": round(result["emit_p99_us"], 1),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
    }


def scenario_exit(shipper: str, count: int) -> dict[str, Any]:
    """The receiver is down: how long does the process take to exit, what did it keep?"""
    port = free_port()  # nothing listens
    with tempfile.TemporaryDirectory() as spool:
        producer = start_producer(shipper, port, spool, count, 0)
        try:
            producer.wait_line("result ", 60)
            producer.send("exit")
            said = float(producer.wait_line("exiting", 10).split()[1])
            producer.proc.wait(timeout=60)
            exited = time.monotonic()
        finally:
            producer.stop()
        kept = sum(len(p.read_bytes().splitlines()) for p in Path(spool).glob("pid-*/*.jsonl"))
        if shipper.endswith("sqlite"):
            import sqlite3

            with sqlite3.connect(os.path.join(spool, "logstash.db")) as db:
                kept = db.execute("select count(*) from event").fetchone()[0]
    return {"events": count, "exit_s": round(exited - said, 2), "kept_for_next_start": kept}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["main", "receiver", "producer"], default="main")
    parser.add_argument("--shipper", choices=SHIPPERS, default="pyobs")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--spool", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--quick", action="store_true", help="pyobs only, small numbers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.role == "receiver":
        run_receiver(args.port)
        return 0
    if args.role == "producer":
        run_producer(args)
        return 0
    shippers = ("pyobs",) if args.quick else SHIPPERS
    results: dict[str, Any] = {}
    for shipper in shippers:
        pyobs = shipper == "pyobs"
        count = (20_000 if args.quick else 200_000) if pyobs else 3_000
        results[shipper] = {
            "throughput": scenario_throughput(shipper, count, cap_s=30 if pyobs else 20),
            "restart": scenario_restart(
                shipper,
                rate=2000 if args.quick else (5000 if pyobs else 300),
                seconds=3 if args.quick else 10,
            ),
            "exit": scenario_exit(shipper, 1000),
        }
        print(json.dumps({shipper: results[shipper]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
