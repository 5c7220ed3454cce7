"""Shared helpers for the log-path tests: real records from the example app, ES bulk indexing."""

from __future__ import annotations

import importlib.util
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from tests.elk.esnodes import http_json

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "pyobs-logs"


class Capture(logging.Handler):
    """Keeps the ECS dict of every record (what the shipper would send, minus event.id)."""

    def __init__(self) -> None:
        super().__init__()
        from pyobs._config import Config
        from pyobs.logs import ECSFormatter

        self.ecs = ECSFormatter(Config(service_name="capture"))
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.ecs.to_dict(record))


def example_flask_records() -> list[dict[str, Any]]:
    """ECS dicts pyobs writes while the Flask example serves every kind of request."""
    spec = importlib.util.spec_from_file_location(
        f"example_flask_{uuid.uuid4().hex}", REPO / "examples" / "flask" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        client = module.app.test_client()
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0"}
        client.get("/items/1", headers=headers, buffered=True)
        client.get("/items/999", headers=headers, buffered=True)
        client.post("/items", json={"name": "x"}, headers=headers, buffered=True)
        client.get("/boom", headers=headers, buffered=True)
        client.get("/stream", headers=headers, buffered=True)
    finally:
        root.removeHandler(capture)
    return capture.records


def with_event_ids(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the event.id the shipper adds."""
    return [{**r, "event.id": uuid.uuid4().hex} for r in records]


def run_pipeline(ingest_url: str, docs: list[dict[str, Any]], index: str) -> list[dict[str, Any]]:
    """Run the real ingest pipeline on the ingest node; return (index, id, source) per doc."""
    answer = http_json(
        "POST",
        f"{ingest_url}/_ingest/pipeline/{PIPELINE}/_simulate",
        {"docs": [{"_index": index, "_source": doc} for doc in docs]},
    )
    out = []
    for item in answer["docs"]:
        doc = item["doc"]
        out.append({"_index": doc["_index"], "_id": doc.get("_id"), "_source": doc["_source"]})
    return out


def bulk_create(es_url: str, docs: list[dict[str, Any]], refresh: bool = True) -> dict[str, int]:
    """Bulk `create` into Elasticsearch 8 as Logstash's data-stream output does.

    Returns counts: created, duplicates (409 on an existing _id), errors.
    """
    lines = []
    for doc in docs:
        action: dict[str, Any] = {"_index": doc["_index"]}
        if doc.get("_id") and doc["_id"] != "_id":
            action["_id"] = doc["_id"]
        lines.append(json.dumps({"create": action}))
        lines.append(json.dumps(doc["_source"]))
    query = "?refresh=wait_for" if refresh else ""
    answer = http_json("POST", f"{es_url}/_bulk{query}", "\n".join(lines) + "\n")
    counts = {"created": 0, "duplicates": 0, "errors": 0}
    for item in answer["items"]:
        status = item["create"]["status"]
        if status == 201:
            counts["created"] += 1
        elif status == 409:
            counts["duplicates"] += 1
        else:
            counts["errors"] += 1
    return counts


def install_pipeline(ingest_url: str) -> None:
    """Put the committed pyobs-logs pipeline on the ingest node."""
    body = json.loads((REPO / "elk" / "ingest-pipeline.json").read_text())
    http_json("PUT", f"{ingest_url}/_ingest/pipeline/{PIPELINE}", body)


def install_templates(es_url: str) -> None:
    """Put the committed index templates on the Elasticsearch 8 node."""
    for name, path in (
        ("logs-pyobs", "elk/index-template.json"),
        ("pyobs-logs-failures", "elk/failure-index-template.json"),
    ):
        http_json("PUT", f"{es_url}/_index_template/{name}", json.loads((REPO / path).read_text()))


class IndexingSink:
    """What Logstash's tcp/json_lines input + elasticsearch output do, for the tests.

    Each received batch runs through the real ingest pipeline (on the 7.10 ingest node) and is
    bulk-created into the data stream on the real Elasticsearch 8.19 node, the document id
    being the pipeline's (event.id). Counts what was created and what was a duplicate.
    """

    def __init__(self, es_url: str, ingest_url: str, index: str) -> None:
        self.es_url = es_url
        self.ingest_url = ingest_url
        self.index = index
        self.counts = {"created": 0, "duplicates": 0, "errors": 0}

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        counts = bulk_create(self.es_url, run_pipeline(self.ingest_url, batch, self.index), False)
        for key, value in counts.items():
            self.counts[key] += value

    def refresh(self) -> None:
        """Make everything indexed so far searchable."""
        http_json("POST", f"{self.es_url}/{self.index}/_refresh")


def wait_until(check: Any, timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll ``check()`` until true; fail after a generous ``timeout`` (never a speed bound)."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class EsStream:
    """One data stream ``logs-pyobs-<namespace>`` on the real node, of one test."""

    def __init__(self, es_url: str, namespace: str) -> None:
        self.es_url = es_url
        self.namespace = namespace
        self.name = f"logs-pyobs-{namespace}"

    def write(self, lines: list[bytes]) -> int:
        """Bulk-create lines with ``_id`` = ``event.id`` (what Logstash's output does); 200."""
        parts = []
        for line in lines:
            event_id = json.loads(line)["event.id"]
            parts.append(json.dumps({"create": {"_id": event_id}}))
            parts.append(line.decode().rstrip("\n"))
        answer = http_json(
            "POST",
            f"{self.es_url}/{self.name}/_bulk?filter_path=errors,items.*.status,items.*.error",
            "\n".join(parts) + "\n",
        )
        if answer.get("errors"):
            items = [next(iter(i.values())) for i in answer["items"]]
            bad = [i for i in items if i["status"] not in (200, 201, 409)]
            if bad:
                raise RuntimeError(f"bulk item errors: {bad[:3]}")
        return 200

    def _read(self, method: str, endpoint: str, body: Any = None) -> Any:
        """One request on the stream after a refresh; None before the stream exists."""
        try:
            http_json("POST", f"{self.es_url}/{self.name}/_refresh")
            return http_json(method, f"{self.es_url}/{self.name}/{endpoint}", body)
        except RuntimeError as exc:
            if "index_not_found" in str(exc):
                return None
            raise

    def count(self) -> int:
        """Documents in the stream (refreshed first); 0 before it exists."""
        answer = self._read("GET", "_count")
        return 0 if answer is None else int(answer["count"])

    def messages(self) -> list[str]:
        """Every document's message, oldest @timestamp first (up to 10,000); none before the
        stream exists."""
        answer = self._read(
            "POST",
            "_search",
            {"size": 10000, "sort": [{"@timestamp": "asc"}], "_source": ["message"]},
        )
        if answer is None:
            return []
        return [hit["_source"]["message"] for hit in answer["hits"]["hits"]]


class TcpProxy:
    """A loopback TCP proxy in front of Elasticsearch that can be killed, restarted, and told
    to lose answers (the request reaches Elasticsearch, the client sees a reset instead)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.lose_answers = 0
        self._server: Any = None
        self._socks: list[Any] = []
        self._running = False
        import threading

        self._lock = threading.Lock()

    def start(self) -> int:
        """Listen (again, same port after a stop)."""
        import socket
        import threading
        import time

        for _ in range(50):
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                server.bind(("127.0.0.1", self.port))
                break
            except OSError:
                server.close()
                time.sleep(0.1)
        else:
            raise RuntimeError("proxy port stayed busy")
        server.listen(32)
        server.settimeout(0.1)
        self.port = server.getsockname()[1]
        self._server = server
        self._running = True
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self.port

    def stop(self) -> None:
        """Die: stop listening, reset every connection."""
        self._running = False
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            _hard_close(sock)

    def _accept(self, server: Any) -> None:
        import socket
        import threading

        while self._running:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _hard_close(client)
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: Any, dst: Any, answers: bool) -> None:
        src.settimeout(None)
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if answers:
                    with self._lock:
                        lose = self.lose_answers > 0
                        if lose:
                            self.lose_answers -= 1
                    if lose:
                        break
                dst.sendall(data)
        except OSError:
            pass
        _hard_close(src)
        _hard_close(dst)


def _hard_close(sock: Any) -> None:
    import socket
    import struct

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # shutdown wakes a thread blocked in recv on this socket; close alone would not.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for localhost/127.0.0.1 (openssl), and its key."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def make_shipper(
    handlers: list[Any], transport: Any, spool: Path, service: str, **options: Any
) -> tuple[Any, logging.Logger]:
    """A ShippingHandler on ``transport`` with its own logger; kept in ``handlers`` to close."""
    from pyobs._config import Config
    from pyobs.logs import ECSFormatter
    from pyobs.shipper import ShippingHandler

    config = Config(service_name=service, log_spool_dir=str(spool))
    handler = ShippingHandler(config, transport=transport, install_sigterm=False, **options)
    handler.setFormatter(ECSFormatter(config))
    handlers.append(handler)
    log = logging.getLogger(f"{service}.{len(handlers)}.{uuid.uuid4().hex[:6]}")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return handler, log
