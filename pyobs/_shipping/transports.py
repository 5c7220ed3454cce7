"""How a batch of JSON lines leaves the process, and what the receiver said about each one.

- ``LogstashHttp``: POST NDJSON to Logstash's ``http`` input. A 2xx means the events are in
  Logstash's persistent queue: acknowledged. 429/503 is back-pressure, other 5xx and network
  errors are retried later; another 4xx marks a bad batch, which the shipper bisects.
- ``ElasticsearchBulk``: ``_bulk`` ``create`` into the data stream, ``_id`` = ``event.id``, with
  per-item outcomes: created (or 409, already there from an earlier attempt) is acknowledged,
  an item the failure store took is rejected but kept there, 429/5xx items are retried, any
  other refusal is written to the failure data stream ``pyobs-logs-failures`` (kept 30 days,
  shown by Kibana's "rejected log events" search) and counted rejected; only when that write
  fails too is it handed back for the shipper to keep on disk.
- ``TcpLines``: JSON lines over TCP (optionally TLS). TCP has no acknowledgement: written
  events are "unconfirmed" and a receiver crash can lose what its socket buffer held.

Only the standard library is used (``http.client``, ``ssl``, ``socket``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0
CONFIG_STATUSES = frozenset({401, 403, 404, 405, 407})
FAILURE_STREAM = "pyobs-logs-failures"  # where refused events are kept (elk/ templates)


class RetryLater(Exception):
    """The whole batch was not taken; send it again later (back-pressure, outage, config)."""

    def __init__(self, reason: str, *, back_pressure: bool = False, config: bool = False) -> None:
        super().__init__(reason)
        self.back_pressure = back_pressure
        self.config = config


class BadBatch(Exception):
    """The receiver refused the batch as malformed (4xx): some line in it is bad."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status


class TooLarge(Exception):
    """413: the batch is too big for the receiver; send it in halves."""


@dataclass
class Result:
    """What the receiver said about a batch it answered."""

    acknowledged: int = 0  # events the receiver confirmed (stored, or already stored)
    unconfirmed: int = 0  # events written to a connection that never confirms (TCP)
    kept_rejected: int = 0  # refused, but kept by the receiver (Elasticsearch failure store)
    refused: list[tuple[bytes, str]] = field(default_factory=list)  # refused for good
    retry: list[bytes] = field(default_factory=list)  # to send again (item-level 429/5xx)


def _ssl_context(ca_file: str | None, context: ssl.SSLContext | None) -> ssl.SSLContext:
    if context is not None:
        return context
    return ssl.create_default_context(cafile=ca_file or None)


class _HttpBase:
    """A keep-alive HTTP/1.1 connection, rebuilt after any error."""

    name = "http"

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.display = f"{parts.scheme}://{self.host}:{self.port}{parts.path}"
        self.headers = dict(headers or {})
        if parts.username is not None and "Authorization" not in self.headers:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self._ssl = _ssl_context(ca_file, ssl_context) if parts.scheme == "https" else None
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._ssl is not None:
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        conn = self._connection()
        headers = {**self.headers, "Content-Type": content_type}
        try:
            if conn.sock is None:
                conn.connect()
                sock: Any = conn.sock
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise RetryLater(f"{type(exc).__name__}: {exc}") from None
        if response.will_close:
            self.close()
        return response.status, payload

    @staticmethod
    def _raise_for(status: int, payload: bytes) -> None:
        """Map a non-2xx answer about the whole batch to its exception."""
        text = payload[:300].decode("utf-8", "replace")
        if status in (429, 503):
            raise RetryLater(f"{status} (back-pressure)", back_pressure=True)
        if status == 413:
            raise TooLarge(text)
        if status in CONFIG_STATUSES:
            raise RetryLater(f"{status}: {text}", config=True)
        if status == 408 or status >= 500:
            raise RetryLater(f"{status}: {text}")
        raise BadBatch(status, text)

    def abort(self) -> None:
        """Unblock a request stuck on a stalled receiver (called from another thread)."""
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class LogstashHttp(_HttpBase):
    """Logstash's ``http`` input, NDJSON batches (see the module docstring)."""

    name = "logstash-http"

    def send(self, lines: list[bytes]) -> Result:
        status, payload = self._post(self.base_path or "/", b"".join(lines), "application/x-ndjson")
        if 200 <= status < 300:
            return Result(acknowledged=len(lines))
        self._raise_for(status, payload)
        raise AssertionError("unreachable")  # pragma: no cover


_BULK_FILTER = (
    "filter_path=errors,items.*.status,items.*.error.type,items.*.error.reason,"
    "items.*.failure_store"
)


def event_id(line: bytes) -> str | None:
    """The ``event.id`` of a line the shipper serialized (it writes that key first)."""
    if line.startswith(b'{"event.id":"'):
        end = line.find(b'"', 13)
        if end > 13:
            return line[13:end].decode()
    try:
        value = json.loads(line).get("event.id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class ElasticsearchBulk(_HttpBase):
    """``_bulk`` ``create`` into one data stream with ``_id`` = ``event.id``."""

    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        data_stream: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        failure_stream: str | None = FAILURE_STREAM,
    ) -> None:
        headers: dict[str, str] = {}
        if api_key:
            headers["Authorization"] = f"ApiKey {api_key}"
        elif username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        super().__init__(
            url, headers=headers, ca_file=ca_file, ssl_context=ssl_context, timeout=timeout
        )
        self.data_stream = data_stream
        self.path = f"{self.base_path}/{urllib.parse.quote(data_stream)}/_bulk?{_BULK_FILTER}"
        self.failure_path = (
            f"{self.base_path}/{urllib.parse.quote(failure_stream)}/_bulk?{_BULK_FILTER}"
            if failure_stream
            else None
        )

    def send(self, lines: list[bytes]) -> Result:
        parts: list[bytes] = []
        for line in lines:
            eid = event_id(line)
            action = {"create": {"_id": eid}} if eid else {"create": {}}
            parts.append(json.dumps(action, separators=(",", ":")).encode() + b"\n")
            parts.append(line)
        status, payload = self._post(self.path, b"".join(parts), "application/x-ndjson")
        if not 200 <= status < 300:
            self._raise_for(status, payload)
        try:
            answer = json.loads(payload)
        except ValueError:
            raise RetryLater(f"{status}: unreadable _bulk answer") from None
        items = answer.get("items")
        if not answer.get("errors") and (items is None or not _any_failure_store(items)):
            return Result(acknowledged=len(lines))
        if not isinstance(items, list) or len(items) != len(lines):
            raise RetryLater("_bulk answer does not match the request")
        result = Result()
        refused_types: list[str] = []
        for line, item in zip(lines, items, strict=True):
            outcome: dict[str, Any] = (
                next(iter(item.values()), {}) if isinstance(item, dict) else {}
            )
            code = int(outcome.get("status", 500))
            store = outcome.get("failure_store")
            if code == 409 or (200 <= code < 300 and store != "used"):
                result.acknowledged += 1
            elif 200 <= code < 300:
                result.kept_rejected += 1
            elif code == 429 or code >= 500:
                result.retry.append(line)
            else:
                error = outcome.get("error") or {}
                reason = f"{code} {error.get('type', '')}: {error.get('reason', '')}"
                if store:
                    reason += f" (failure store: {store})"
                result.refused.append((line, reason))
                refused_types.append(str(error.get("type") or code))
        if result.refused and self.failure_path is not None:
            self._keep(result, refused_types)
        return result

    def _keep(self, result: Result, types: list[str]) -> None:
        """Write refused events to the failure data stream; what it takes counts as kept."""
        import time

        from pyobs._elk.assets import failure_document

        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        parts: list[bytes] = []
        for (line, reason), error_type in zip(result.refused, types, strict=True):
            eid = event_id(line)
            action = {"create": {"_id": eid}} if eid else {"create": {}}
            doc = failure_document(line.decode("utf-8", "replace"), error_type, reason, now)
            parts.append(json.dumps(action, separators=(",", ":")).encode() + b"\n")
            parts.append(json.dumps(doc, separators=(",", ":")).encode() + b"\n")
        try:
            assert self.failure_path is not None
            status, payload = self._post(self.failure_path, b"".join(parts), "application/x-ndjson")
            items = json.loads(payload).get("items") if 200 <= status < 300 else None
        except (RetryLater, BadBatch, TooLarge, OSError, ValueError):
            return  # the shipper keeps them on disk instead
        if not isinstance(items, list) or len(items) != len(result.refused):
            return
        still: list[tuple[bytes, str]] = []
        for refused, item in zip(result.refused, items, strict=True):
            outcome: dict[str, Any] = (
                next(iter(item.values()), {}) if isinstance(item, dict) else {}
            )
            if int(outcome.get("status", 500)) in (200, 201, 409):
                result.kept_rejected += 1
            else:
                still.append(refused)
        result.refused = still


def _any_failure_store(items: list[dict[str, dict[str, object]]]) -> bool:
    return any(
        isinstance(item, dict) and any("failure_store" in v for v in item.values())
        for item in items
    )


class TcpLines:
    """JSON lines over TCP, optionally TLS: written is not delivered (see the module docstring)."""

    name = "tcp"

    def __init__(self, host: str, port: int, tls: bool | ssl.SSLContext = False) -> None:
        self.host = host
        self.port = port
        self.display = f"tcp://{host}:{port}"
        self._ssl: ssl.SSLContext | None
        if isinstance(tls, ssl.SSLContext):
            self._ssl = tls
        else:
            self._ssl = ssl.create_default_context() if tls else None
        self._sock: socket.socket | None = None

    def send(self, lines: list[bytes]) -> Result:
        try:
            if self._sock is None:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
                if self._ssl is not None:
                    sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
                sock.settimeout(REQUEST_TIMEOUT_S)
                self._sock = sock
            self._sock.sendall(b"".join(lines))
        except OSError as exc:
            self.close()
            raise RetryLater(f"{type(exc).__name__}: {exc}") from None
        return Result(unconfirmed=len(lines))

    def abort(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
