"""Log shipper benchmark: pyobs.shipper vs python-logstash-async vs pyobs as of e4d17de, one run.

    python benchmarks/shipper.py                 # full run (a few minutes; starts ES if fetched)
    python benchmarks/shipper.py --es URL        # use a running Elasticsearch for direct mode
    python benchmarks/shipper.py --quick         # small numbers, no python-logstash-async
    python benchmarks/shipper.py --json out.json

What it verifies, each shipper in a fresh producer process, side by side:

- throughput: events emitted as fast as the producer can, until every one has reached the
  receiver; delivered events per second. The receiver (its own process) is an acknowledging
  stand-in for Logstash's http input (NDJSON or JSON arrays, answers 200) and also takes TCP
  JSON lines for the e4d17de shipper, which only speaks TCP. pyobs also runs in direct mode
  against a real Elasticsearch node (``_bulk``; delivered = documents counted in the stream).
- emit cost on the logging thread (``handler.handle(record)``), p50 and p99.
- RSS growth with 10,000 exception records waiting (receiver down; each failing frame holds a
  200 kB local, so a shipper that keeps frames grows by gigabytes).
- exit with the receiver down: seconds from "exit" to process end, and events kept on disk.

Ratios in the summary are pyobs / other. The e4d17de column loads that commit's
pyobs/shipper.py with ``git show`` (skipped with a note when git or the commit is missing).
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "e4d17de"
SHIPPERS = ("pyobs", "pyobs-e4d17de", "logstash-async")
EXIT_WAIT_S = 60.0  # a producer still running this long after "exit" is killed
_BENCH = re.compile(rb'"message": ?"bench (\d+)"')  # how every shipper writes the message


# --- receiver process ---------------------------------------------------------------------


class Tally:
    """Unique "bench N" events seen, by any route."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.numbers: set[int] = set()
        self.lines = 0
        self.down = False

    def add(self, body: bytes) -> None:
        """Count the events of a body (NDJSON, a JSON array or JSON lines) by their number."""
        found = _BENCH.findall(body)
        with self.lock:
            self.lines += len(found)
            self.numbers.update(int(n) for n in found)


def run_receiver(http_port: int, tcp_port: int) -> None:
    """Serve until stdin closes; commands on stdin: stats, down, up."""
    tally = Tally()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            tally.add(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            # One write: a status line and a body in two small writes meet delayed ACKs.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Lines(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                tally.add(line)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    web = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), Handler)
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", tcp_port), Lines)
    for server in (web, tcp):
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    for command in sys.stdin:
        if command.strip() == "stats":
            with tally.lock:
                print(json.dumps({"unique": len(tally.numbers), "lines": tally.lines,
                                  "t": time.monotonic()}), flush=True)  # fmt: skip


# --- producer process ---------------------------------------------------------------------


def _old_module() -> types.ModuleType | None:
    """pyobs/shipper.py as of e4d17de, loaded from git under another name."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:pyobs/shipper.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("pyobs_shipper_e4d17de")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{OLD_COMMIT}:pyobs/shipper.py", "exec"), module.__dict__)
    return module


def make_handler(args: argparse.Namespace) -> Any:
    from pyobs._config import Config
    from pyobs.logs import ECSFormatter

    spool = args.spool
    if args.shipper == "pyobs":
        from pyobs.shipper import ShippingHandler

        if args.es:
            os.environ["PYOBS_LOG_NAMESPACE"] = args.namespace
            config = Config(service_name="bench", elasticsearch_url=args.es, log_spool_dir=spool)
        else:
            url = f"http://127.0.0.1:{args.http_port}/"
            config = Config(service_name="bench", logstash_url=url, log_spool_dir=spool)
        handler: Any = ShippingHandler(config)
        handler.setFormatter(ECSFormatter(config))
        return handler
    if args.shipper == "pyobs-e4d17de":
        old = _old_module()
        assert old is not None
        config = Config(service_name="bench", logstash_host="127.0.0.1",
                        logstash_port=args.tcp_port, log_spool_dir=spool)  # fmt: skip
        handler = old.LogstashHandler(config)
        handler.setFormatter(ECSFormatter(config))
        return handler
    from logstash_async.handler import AsynchronousLogstashHandler

    return AsynchronousLogstashHandler(
        "127.0.0.1",
        args.http_port,
        database_path=os.path.join(spool, "logstash.db"),
        transport="logstash_async.transport.HttpTransport",
        ssl_enable=False,
    )


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fail(i: int) -> None:
    payload = bytearray(200_000)  # a large local in the failing frame
    raise ValueError(f"failure {i} {len(payload)}")


def run_producer(args: argparse.Namespace) -> None:
    """Emit events as the scenario says; report costs and RSS as JSON on stdout."""
    handler = make_handler(args)
    log = logging.getLogger("bench")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    pending = getattr(handler, "pending", None)
    limit = int(getattr(handler, "queue_size", 0) * 0.8)
    backs_off = args.shipper == "pyobs-e4d17de"  # it drops when its queue is full
    costs: list[int] = []
    for i in range(200):  # warm-up, not measured
        try:
            _fail(i)
        except ValueError:
            pass
    rss_before = _rss()
    start = time.monotonic()
    for i in range(args.count):
        if backs_off and pending is not None and pending() > limit:
            time.sleep(0.0005)
        if args.exceptions:
            try:
                _fail(i)
            except ValueError:
                record = log.makeRecord("bench", logging.ERROR, __file__, 0, "bench %d", (i,),
                                        sys.exc_info())  # fmt: skip
        else:
            record = log.makeRecord("bench", logging.INFO, __file__, 0, "bench %d", (i,), None)
        t0 = time.perf_counter_ns()
        handler.handle(record)
        costs.append(time.perf_counter_ns() - t0)
        del record
    rss_after = _rss()
    costs.sort()
    result = {
        "emitted": args.count,
        "first_emit": start,
        "emit_p50_us": costs[len(costs) // 2] / 1000,
        "emit_p99_us": costs[int(len(costs) * 0.99)] / 1000,
        "rss_growth_mb": (rss_after - rss_before) / 2**20,
        "dropped": (getattr(handler, "stats", None) or {}).get("dropped"),
    }
    print("result " + json.dumps(result), flush=True)
    sys.stdin.readline()  # stay alive (like a server) until told to exit
    print(f"exiting {time.monotonic()}", flush=True)


# --- orchestration ------------------------------------------------------------------------


class Proc:
    """A child process with line-oriented stdout read in a thread."""

    def __init__(self, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )  # fmt: skip
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def producer(shipper: str, ports: tuple[int, int], spool: str, count: int, **kw: Any) -> Proc:
    argv = [sys.executable, __file__, "--role", "producer", "--shipper", shipper,
            "--http-port", str(ports[0]), "--tcp-port", str(ports[1]), "--spool", spool,
            "--count", str(count)]  # fmt: skip
    if kw.get("exceptions"):
        argv.append("--exceptions")
    if kw.get("es"):
        argv += ["--es", kw["es"], "--namespace", kw["namespace"]]
    return Proc(argv)


def es_count(es: str, namespace: str) -> int:
    name = f"logs-pyobs-{namespace}"
    try:
        urllib.request.urlopen(urllib.request.Request(f"{es}/{name}/_refresh", method="POST"))
        with urllib.request.urlopen(f"{es}/{name}/_count") as answer:
            return int(json.loads(answer.read())["count"])
    except OSError:
        return 0


def scenario_throughput(shipper: str, count: int, es: str | None = None) -> dict[str, Any]:
    ports = (free_port(), free_port())
    receiver = Proc([sys.executable, __file__, "--role", "receiver", "--http-port",
                     str(ports[0]), "--tcp-port", str(ports[1])])  # fmt: skip
    namespace = f"bench{os.urandom(4).hex()}"
    try:
        receiver.wait_line("ready", 20)
        with tempfile.TemporaryDirectory() as spool:
            prod = producer(shipper, ports, spool, count, es=es, namespace=namespace)
            try:
                result = json.loads(prod.wait_line("result ", 600)[7:])
                deadline = time.monotonic() + 120
                while True:
                    if es:
                        delivered, now = es_count(es, namespace), time.monotonic()
                    else:
                        receiver.send("stats")
                        stats = json.loads(receiver.wait_line("{", 10))
                        delivered, now = stats["unique"], stats["t"]
                    if delivered >= count or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                prod.send("exit")
                prod.proc.wait(timeout=60)
            finally:
                prod.stop()
    finally:
        receiver.stop()
    elapsed = now - result["first_emit"]
    return {
        "events": count,
        "delivered": delivered,
        "seconds": round(elapsed, 2),
        "delivered_per_s": round(delivered / elapsed),
        "emit_p50_us": round(result["emit_p50_us"], 1),
        "emit_p99_us": round(result["emit_p99_us"], 1),
    }


def _kept(spool: str) -> int:
    kept = sum(len(p.read_bytes().splitlines()) for p in Path(spool).glob("pid-*/*.jsonl"))
    database = Path(spool) / "logstash.db"
    if database.exists():
        import sqlite3

        with sqlite3.connect(database) as db:
            kept += db.execute("select count(*) from event").fetchone()[0]
    return kept


def scenario_down(shipper: str, count: int, exceptions: bool) -> dict[str, Any]:
    """Receiver down: RSS growth while ``count`` records wait, exit time, what was kept."""
    ports = (free_port(), free_port())  # nothing listens
    with tempfile.TemporaryDirectory() as spool:
        prod = producer(shipper, ports, spool, count, exceptions=exceptions)
        try:
            result = json.loads(prod.wait_line("result ", 600)[7:])
            prod.send("exit")
            said = float(prod.wait_line("exiting", 30).split()[1])
            try:
                prod.proc.wait(timeout=EXIT_WAIT_S)
                exit_s: float | str = round(time.monotonic() - said, 2)
            except subprocess.TimeoutExpired:
                exit_s = f"> {EXIT_WAIT_S:.0f} (killed)"
        finally:
            prod.stop()
        kept = _kept(spool)
    return {
        "events": count,
        "rss_growth_mb": round(result["rss_growth_mb"], 1),
        "exit_s": exit_s,
        "kept_for_next_start": kept,
    }


def start_es() -> tuple[str | None, Any]:
    """A throw-away Elasticsearch node from the test fixtures, if it has been fetched."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.elk.esnodes import Es8Node
        from tests.elk.helpers import install_templates
    except ImportError:
        return None, None
    if Es8Node.missing_reason():
        return None, None
    node = Es8Node()
    url = node.start()
    install_templates(url)
    return url, node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["main", "receiver", "producer"], default="main")
    parser.add_argument("--shipper", choices=SHIPPERS, default="pyobs")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--tcp-port", type=int, default=0)
    parser.add_argument("--spool", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--exceptions", action="store_true")
    parser.add_argument("--es", default="", help="Elasticsearch URL for direct mode")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--quick", action="store_true", help="small numbers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.role == "receiver":
        run_receiver(args.http_port, args.tcp_port)
        return 0
    if args.role == "producer":
        run_producer(args)
        return 0
    shippers = list(SHIPPERS)
    notes: list[str] = []
    if _old_module() is None:
        shippers.remove("pyobs-e4d17de")
        notes.append(f"pyobs-e4d17de skipped: no git checkout with commit {OLD_COMMIT}")
    try:
        import logstash_async  # noqa: F401
    except ImportError:
        shippers.remove("logstash-async")
        notes.append("logstash-async skipped: python-logstash-async is not installed")
    else:
        if args.quick:  # it needs about 30 s per exit while the receiver is down
            shippers.remove("logstash-async")
            notes.append("logstash-async skipped in --quick mode (its exits take ~30 s)")
    es, node = (args.es or None), None
    if es is None and not args.quick:
        es, node = start_es()
    results: dict[str, Any] = {"notes": notes}
    try:
        for shipper in shippers:
            slow = shipper == "logstash-async"
            count = (2_000 if slow else 20_000) if args.quick else (3_000 if slow else 200_000)
            down = 1_000 if args.quick else 10_000
            row: dict[str, Any] = {"throughput": scenario_throughput(shipper, count)}
            if shipper == "pyobs" and es:
                row["throughput_es"] = scenario_throughput(shipper, count, es=es)
            row["exceptions_down"] = scenario_down(shipper, down, exceptions=True)
            row["exit_down"] = scenario_down(shipper, 1_000, exceptions=False)
            results[shipper] = row
            print(json.dumps({shipper: row}), flush=True)
    finally:
        if node is not None:
            node.stop()
    print_summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_summary(results: dict[str, Any]) -> None:
    """The side-by-side table, with pyobs / other ratios."""
    rows = [
        ("delivered events/s (acknowledging receiver)", "throughput", "delivered_per_s"),
        ("emit p50 (µs)", "throughput", "emit_p50_us"),
        ("emit p99 (µs)", "throughput", "emit_p99_us"),
        ("RSS growth, 10,000 exceptions waiting (MB)", "exceptions_down", "rss_growth_mb"),
        ("exit with the receiver down (s)", "exit_down", "exit_s"),
        ("events kept at exit (of 1,000)", "exit_down", "kept_for_next_start"),
        ("exit with the 10,000 exceptions waiting (s)", "exceptions_down", "exit_s"),
        ("exceptions kept at exit (of 10,000)", "exceptions_down", "kept_for_next_start"),
    ]
    names = [n for n in SHIPPERS if n in results]
    print("\n(in brackets: the pyobs figure divided by that column's)")
    print("\n| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, section, key in rows:
        cells = []
        mine = results["pyobs"][section][key]
        for name in names:
            value = results[name][section][key]
            ratio = ""
            numeric = isinstance(value, (int, float)) and isinstance(mine, (int, float))
            if name != "pyobs" and numeric and value and not key.startswith("kept"):
                ratio = f" ({mine / value:.2g})"
            cells.append(f"{value}{ratio}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    es = results["pyobs"].get("throughput_es")
    if es:
        print(f"| delivered events/s, direct to Elasticsearch (pyobs) | {es['delivered_per_s']} |")
    for note in results["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    sys.exit(main())
