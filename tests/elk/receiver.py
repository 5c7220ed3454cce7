"""A loopback stand-in for Logstash's ``tcp`` input with the ``json_lines`` codec.

It accepts connections, splits lines, parses JSON and hands each batch to a callback (by
default it just keeps the events). ``stop()`` kills it abruptly (every connection reset, as
a crashed Logstash would); ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

Batch = list[dict[str, Any]]


class JsonLinesReceiver:
    """Receive JSON lines on 127.0.0.1; thread-safe list of events in arrival order."""

    def __init__(self, port: int = 0, on_batch: Callable[[Batch], None] | None = None) -> None:
        self.port = port
        self.on_batch = on_batch
        self.events: Batch = []
        self.bad_lines = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._running = False

    def start(self) -> int:
        """Listen (again) and return the port."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        server.settimeout(0.2)
        self.port = server.getsockname()[1]
        self._server = server
        self._running = True
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self.port

    def stop(self) -> None:
        """Die like a killed process: stop listening and reset every open connection."""
        self._running = False
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                # Linger 0 turns close() into a RST, as when the receiving process dies.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until at least ``count`` events arrived (bounded by ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= count:
                    return True
            time.sleep(0.02)
        with self._lock:
            return len(self.events) >= count

    def snapshot(self) -> Batch:
        """A copy of the events received so far."""
        with self._lock:
            return list(self.events)

    def _accept(self, server: socket.socket) -> None:
        while self._running:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(0.2)
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            thread = threading.Thread(target=self._read, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, client: socket.socket) -> None:
        buffer = b""
        while self._running:
            try:
                chunk = client.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            batch: Batch = []
            for line in lines:
                if not line.strip():
                    continue
                try:
                    batch.append(json.loads(line))
                except ValueError:
                    self.bad_lines += 1
            if batch:
                if self.on_batch is not None:
                    self.on_batch(batch)
                with self._lock:
                    self.events.extend(batch)
        # The client half-closed (clean exit): close our side so it knows all was read.
        try:
            client.close()
        except OSError:
            pass


class HttpNdjsonReceiver:
    """A loopback stand-in for Logstash's ``http`` input taking NDJSON batches.

    Logstash itself (a JVM with its persistent queue) cannot run in the test environment.
    This stand-in answers a batch with 200 only after ``on_batch`` returned, which in the
    delivery tests bulk-writes the batch into the real Elasticsearch node (``_id`` =
    ``event.id``): a 2xx here means "stored", as a 2xx from Logstash means "in the persistent
    queue". What it does not prove: Logstash's own queue, its codecs and its 429 behaviour,
    and the pipeline's ingest processing (tests/elk/test_e2e.py covers the pipeline).

    Faults it can play, as real receivers do: ``stop()`` (killed: listener gone, connections
    reset) and ``start()`` again on the same port; ``stalled`` (reads nothing); ``reset_all()``
    (reset the open connections); ``close_after_lines`` (cut each connection after that many
    lines, without answering); ``lose_ack_every`` (store every n-th batch, then close the
    connection instead of answering); ``statuses`` (answer the next requests with these codes);
    ``refuse_marker`` (answer 400 to a batch holding a line that contains it).
    """

    def __init__(
        self,
        on_batch: Callable[[list[bytes]], int] | None = None,
        ssl_context: Any = None,
    ) -> None:
        self.port = 0
        self.on_batch = on_batch
        self.ssl_context = ssl_context
        self.stalled = False
        self.close_after_lines = 0
        self.lose_ack_every = 0
        self.statuses: list[int] = []
        self.last_request: tuple[str, dict[str, str]] = ("", {})  # request line, headers
        self.refuse_marker = b""  # answer 400 to any batch with a line containing this
        self.requests = 0
        self.lines_read = 0
        self.accepted: list[bytes] = []  # every line of every batch answered 2xx
        self.batches = 0
        self.errors: list[str] = []  # on_batch failures (answered 503)
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._running = False

    def start(self) -> int:
        """Listen (again, on the same port after a stop) and return the port."""
        for _ in range(50):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                server.bind(("127.0.0.1", self.port))
                break
            except OSError:
                server.close()
                time.sleep(0.1)
        else:
            raise RuntimeError(f"port {self.port} stayed busy")
        server.listen(64)
        server.settimeout(0.1)
        self.port = server.getsockname()[1]
        self._server = server
        self._running = True
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self.port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = "localhost" if self.ssl_context is not None else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}/"

    def stop(self) -> None:
        """Die like a killed Logstash: stop listening and reset every open connection."""
        self._running = False
        if self._server is not None:
            self._server.close()
            self._server = None
        self.reset_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def reset_all(self) -> None:
        """Reset (RST) every open connection; the listener stays."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            _reset(client)

    def unique_ids(self) -> set[str]:
        """event.id of every line answered 2xx."""
        with self._lock:
            return {json.loads(line)["event.id"] for line in self.accepted}

    def _accept(self, server: socket.socket) -> None:
        while self._running:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, client: socket.socket) -> None:
        conn: Any = client
        try:
            if self.ssl_context is not None:
                client.settimeout(5)
                conn = self.ssl_context.wrap_socket(client, server_side=True)
            conn.settimeout(0.1)
            self._requests(conn)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                conn.close()
            except OSError:
                pass

    def _read(self, conn: Any, buffer: bytearray, need: int) -> bool:
        """Read until ``buffer`` holds ``need`` bytes; False when the peer or the test ended."""
        while len(buffer) < need:
            if not self._running:
                return False
            if self.stalled:
                time.sleep(0.01)
                continue
            try:
                chunk = conn.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return False
            buffer += chunk
        return True

    def _requests(self, conn: Any) -> None:
        buffer = bytearray()
        lines_here = 0
        while self._running:
            while b"\r\n\r\n" not in buffer:
                if not self._read(conn, buffer, len(buffer) + 1):
                    return
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            length = 0
            request_line, *headers = head.split(b"\r\n")
            seen = {}
            for header in headers:
                name, _, value = header.partition(b":")
                seen[name.strip().decode().lower()] = value.strip().decode()
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            with self._lock:
                self.last_request = (request_line.decode(), seen)
            buffer = bytearray(rest)
            if not self._read(conn, buffer, length):
                return
            body, buffer = bytes(buffer[:length]), buffer[length:]
            lines = [line + b"\n" for line in body.split(b"\n") if line.strip()]
            with self._lock:
                self.requests += 1
                self.lines_read += len(lines)
                status = self.statuses.pop(0) if self.statuses else 200
            if self.refuse_marker and any(self.refuse_marker in line for line in lines):
                status = 400
            lines_here += len(lines)
            if self.close_after_lines and lines_here > self.close_after_lines:
                _reset(conn)
                return
            if status == 200 and self.on_batch is not None:
                try:
                    status = self.on_batch(lines)
                except Exception as exc:  # Elasticsearch away: Logstash would push back too
                    self.errors.append(str(exc)[:500])
                    status = 503
            if status == 200:
                with self._lock:
                    self.accepted.extend(lines)
                    self.batches += 1
                    lose = self.lose_ack_every and self.batches % self.lose_ack_every == 0
                if lose:
                    _reset(conn)
                    return
            reason = {200: b"OK", 400: b"Bad Request", 429: b"Busy", 503: b"Unavailable"}
            conn.sendall(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                % (status, reason.get(status, b"Error"))
            )


def _reset(sock: Any) -> None:
    """Close with SO_LINGER 0: the peer sees a connection reset, as when a process dies."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
