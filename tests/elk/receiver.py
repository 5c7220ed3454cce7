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
