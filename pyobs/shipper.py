"""Ship ECS log records to Logstash over TCP as JSON lines, without ever blocking the request.

The request thread only appends the record (with a copy of its context) to a bounded memory
queue. One background thread formats, sends and, while Logstash is unreachable, writes the
events to a per-process disk spool capped at ``PYOBS_LOG_SPOOL_MAX_BYTES`` (oldest segments
dropped first). The spool is replayed in order once the connection is back.

Plain TCP has no acknowledgement, so delivery is at-least-once: bytes written to the socket
stay "unconfirmed" until the connection has stayed up for a while after the write; if it
breaks first they are sent again. Every event carries a unique ``event.id`` that the
Elasticsearch side uses as the document ``_id``, so a repeat is stored once.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import contextvars
import json
import logging
import os
import random
import select
import signal
import socket
import ssl
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType
from typing import Any

from pyobs._config import Config

_log = logging.getLogger("pyobs.shipper")

DEFAULT_QUEUE_SIZE = 10_000
BATCH_MAX_EVENTS = 1_000
WAKE_AT = 256  # queued records that wake the shipper thread at once
POLL_S = 0.05  # otherwise it looks every this often: no lock taken per record
CONFIRM_AFTER_S = 0.5  # a write counts as delivered once the connection outlived it this long
UNCONFIRMED_MAX_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0  # keeps "delivered within 5 s of Logstash coming back"
EXIT_DEADLINE_S = 0.8  # process exit never waits longer than this for the shipper
_SEGMENT_SUFFIX = ".jsonl"
_FIRST_SEQ = 1_000_000_000  # room below for segments put back at the head


def default_spool_dir() -> str:
    """Where spools live when PYOBS_LOG_SPOOL_DIR is unset: a per-user directory in the temp dir."""
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"pyobs-spool-{user}")


def _spool_owner(name: str) -> int | None:
    """The pid that owns a spool directory: ``pid-<pid>[.<n>]`` or ``claimed-<pid>-...``."""
    try:
        if name.startswith("pid-"):
            return int(name[4:].split(".")[0])
        if name.startswith("claimed-"):
            return int(name.split("-")[1])
    except ValueError:
        return None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Segment:
    __slots__ = ("events", "path", "seq", "size")

    def __init__(self, seq: int, path: Path, size: int, events: int) -> None:
        self.seq = seq
        self.path = path
        self.size = size
        self.events = events


class Spool:
    """Ordered, size-capped event storage on disk: numbered segment files of JSON lines.

    Only the shipper thread touches it. ``append`` adds at the tail, ``prepend`` puts events
    back at the head, ``pop_head`` hands out the oldest segment. Over the cap, whole oldest
    segments are deleted and their events reported as dropped.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(16 * 1024, min(8 * 1024 * 1024, max_bytes // 8))
        self.segments: collections.deque[_Segment] = collections.deque()
        self._tail: Any = None  # open file of the last segment
        self.bytes = 0
        self.events = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.dir.glob(f"*{_SEGMENT_SUFFIX}")):
            self._adopt(path)

    def _adopt(self, path: Path) -> None:
        """Take an existing segment file (left by an earlier process) as the newest segment."""
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1  # a line cut short by a crash is unusable
        if cut != len(data):
            path.write_bytes(data[:cut])
        if cut == 0:
            path.unlink()
            return
        seq = self.segments[-1].seq + 1 if self.segments else _FIRST_SEQ
        target = self.dir / f"{seq:012d}{_SEGMENT_SUFFIX}"
        if target != path:
            os.replace(path, target)
        self.segments.append(_Segment(seq, target, cut, data.count(b"\n", 0, cut)))
        self.bytes += cut
        self.events += self.segments[-1].events

    def adopt_from(self, other: Path) -> None:
        """Move the segments of a dead process's spool into this one (they are older: head)."""
        files = sorted(other.glob(f"*{_SEGMENT_SUFFIX}"))
        for path in reversed(files):
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            path.unlink()
            if cut:
                self.prepend(data[:cut], data.count(b"\n", 0, cut))
        with contextlib.suppress(OSError):
            other.rmdir()

    def _close_tail(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    def append(self, blob: bytes, events: int) -> int:
        """Add newline-terminated events at the tail; return how many old events were dropped."""
        if not blob:
            return 0
        if len(blob) > self.segment_bytes:
            # Keep segments small so the cap drops a small slice of the oldest events.
            dropped = 0
            start = 0
            while start < len(blob):
                end = blob.rfind(b"\n", start, start + self.segment_bytes) + 1
                if end <= start:  # one line longer than a segment
                    end = blob.index(b"\n", start) + 1
                piece = blob[start:end]
                dropped += self._append(piece, piece.count(b"\n"))
                start = end
            return dropped
        return self._append(blob, events)

    def _append(self, blob: bytes, events: int) -> int:
        last = self.segments[-1] if self.segments else None
        if last is None or self._tail is None or last.size + len(blob) > self.segment_bytes:
            self._close_tail()
            seq = last.seq + 1 if last else _FIRST_SEQ
            last = _Segment(seq, self.dir / f"{seq:012d}{_SEGMENT_SUFFIX}", 0, 0)
            self.segments.append(last)
            self._tail = last.path.open("ab")
        self._tail.write(blob)
        self._tail.flush()
        last.size += len(blob)
        last.events += events
        self.bytes += len(blob)
        self.events += events
        return self._enforce_cap()

    def prepend(self, blob: bytes, events: int) -> int:
        """Put events back at the head (they are older than everything spooled)."""
        if not blob:
            return 0
        seq = self.segments[0].seq - 1 if self.segments else _FIRST_SEQ
        path = self.dir / f"{seq:012d}{_SEGMENT_SUFFIX}"
        path.write_bytes(blob)
        self.segments.appendleft(_Segment(seq, path, len(blob), events))
        self.bytes += len(blob)
        self.events += events
        return self._enforce_cap()

    def _enforce_cap(self) -> int:
        dropped = 0
        while self.bytes > self.max_bytes and len(self.segments) > 1:
            dropped += self._remove_head().events
        if self.bytes > self.max_bytes and self.segments:  # one segment larger than the cap
            dropped += self._remove_head().events
        return dropped

    def _remove_head(self) -> _Segment:
        head = self.segments.popleft()
        if not self.segments:
            self._close_tail()
        with contextlib.suppress(FileNotFoundError):
            head.path.unlink()
        self.bytes -= head.size
        self.events -= head.events
        return head

    def pop_head(self) -> tuple[bytes, int] | None:
        """Remove and return the oldest segment's bytes and event count."""
        if not self.segments:
            return None
        if len(self.segments) == 1:
            self._close_tail()
        head = self.segments[0]
        data = head.path.read_bytes()
        self._remove_head()
        return data, head.events

    def close(self, remove_if_empty: bool = True) -> None:
        """Close the tail file; delete the directory when nothing is left in it."""
        self._close_tail()
        if remove_if_empty and not self.segments:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


class LogstashHandler(logging.Handler):
    """A logging handler that ships ECS JSON lines to Logstash (CONTRACT section 5).

    ``emit`` never blocks and never raises: it copies the record and its context into a
    bounded queue (dropping, counted, when the queue is full). Safe across ``fork``: the child
    starts its own thread and spool on its first record.
    """

    pyobs_handler = True  # configure_logging() replaces handlers carrying this mark

    def __init__(
        self,
        config: Config | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        tls: bool | ssl.SSLContext | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        install_sigterm: bool = True,
    ) -> None:
        super().__init__()
        config = config or Config()
        self.host = host or config.logstash_host or "127.0.0.1"
        self.port = port if port is not None else config.logstash_port
        use_tls = config.logstash_tls if tls is None else tls
        self._ssl: ssl.SSLContext | None
        if isinstance(use_tls, ssl.SSLContext):
            self._ssl = use_tls
        else:
            self._ssl = ssl.create_default_context() if use_tls else None
        self.spool_root = Path(spool_dir or config.log_spool_dir or default_spool_dir())
        self.spool_max_bytes = (
            config.log_spool_max_bytes if spool_max_bytes is None else spool_max_bytes
        )
        self.queue_size = queue_size
        self._config = config
        self._queue: collections.deque[tuple[logging.LogRecord, str, contextvars.Context]] = (
            collections.deque()
        )
        self._wake = threading.Event()
        self._busy = False  # the shipper thread holds records taken off the queue
        self._stopping = False
        self._closed = False
        self._started = False
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # Shipper-thread state.
        self._sock: socket.socket | None = None
        self._spool: Spool | None = None
        self._spool_dir: Path | None = None
        self._unconfirmed: collections.deque[tuple[float, bytes, int]] = collections.deque()
        self._unconfirmed_bytes = 0
        self._next_attempt = 0.0
        self._backoff = BACKOFF_MIN_S
        self._id_prefix = ""
        self._id_counter = 0
        self._last_error = ""
        self._metrics: Any = None
        self.sent = 0
        self.spooled = 0
        self.dropped = 0
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        if install_sigterm:
            _install_sigterm()
        _handlers.add(self)

    # --- request thread -------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record; costs a few microseconds and never blocks or raises."""
        try:
            if self._closed:
                return
            if not self._started:
                self._start()
            queue = self._queue
            if len(queue) >= self.queue_size:
                self.dropped += 1
                self._count("dropped", 1)
                return
            # The message is rendered now, as logging.handlers.QueueHandler does (the arguments
            # may change once the call returns); the context copy carries the trace and request
            # ids. Everything else is formatted on the shipper thread.
            queue.append((record, record.getMessage(), contextvars.copy_context()))
            if len(queue) >= WAKE_AT:
                self._wake.set()  # otherwise the thread comes by within POLL_S
        except Exception:  # noqa: BLE001 - logging must never break the request
            self.handleError(record)

    def pending(self) -> int:
        """Events not yet handed to the socket or the spool (memory queue only)."""
        return len(self._queue)

    def spooled_events(self) -> int:
        """Events waiting in this process's disk spool."""
        spool = self._spool
        return spool.events if spool is not None else 0

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the memory queue has been sent or spooled."""
        thread = self._thread
        if not self._started or thread is None or not thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        self._wake.set()
        while (self._queue or self._busy) and time.monotonic() < deadline:
            if self._sock is None and self._spool is None:
                return  # nowhere to put them until Logstash is back
            self._wake.set()
            time.sleep(0.005)

    def close(self) -> None:
        """Stop the thread: send what is queued if Logstash is up, spool the rest. Bounded time."""
        with self._start_lock:
            if self._closed:
                super().close()
                return
            self._closed = True
        _handlers.discard(self)
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            self._stopping = True
            self._wake.set()
            thread.join(EXIT_DEADLINE_S + 0.15)
        super().close()

    # --- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._pid = os.getpid()
            self._id_prefix = os.urandom(8).hex()
            self._id_counter = 0
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="pyobs-logstash-shipper", daemon=True
            )
            self._started = True
            self._thread.start()

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's thread, socket and queue; start lazily."""
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._busy = False
        self._queue = collections.deque()
        self._unconfirmed = collections.deque()
        self._unconfirmed_bytes = 0
        self._sock = None  # the parent's socket object; the child never writes to it
        self._spool = None
        self._thread = None
        self._started = False
        self._stopping = False
        self._metrics = None
        self.sent = self.spooled = self.dropped = 0
        self._pid = os.getpid()

    # --- shipper thread --------------------------------------------------------------------

    def _count(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        try:
            if self._metrics is None:
                from pyobs.metrics import get_metrics

                metrics = get_metrics()
                self._metrics = (
                    metrics,
                    {o: metrics.child(metrics.log_shipper_events, o) for o in _OUTCOMES},
                )
            self._metrics[1][outcome].inc(n)
        except Exception:  # noqa: BLE001 - metrics never stop the shipper
            pass

    def _gauge(self) -> None:
        try:
            if self._metrics is not None:
                self._metrics[0].log_shipper_queue.set(len(self._queue))
        except Exception:  # noqa: BLE001
            pass

    def _run(self) -> None:
        try:
            self._open_spool()
        except Exception as exc:  # noqa: BLE001 - no spool: memory only, say so once
            _log.warning("pyobs: log spool unavailable (%s); shipping from memory only", exc)
            self._spool = None
        while True:
            try:
                if self._stopping:
                    self._shutdown()
                    return
                self._step()
            except Exception as exc:  # noqa: BLE001 - the shipper thread must survive
                self._disconnect(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)

    def _open_spool(self) -> None:
        if self.spool_max_bytes <= 0:
            return
        root = self.spool_root
        root.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        with _spools_lock:  # two handlers of one process never share a directory
            own = root / f"pid-{pid}"
            n = 1
            while own in _spools_in_use:
                own = root / f"pid-{pid}.{n}"
                n += 1
            _spools_in_use.add(own)
        self._spool_dir = own
        spool = Spool(own, self.spool_max_bytes)
        # Replay what dead processes left behind (a crash, a SIGKILL, an exit while down),
        # including spools another process had claimed but not finished taking over.
        for other in sorted(root.iterdir()):
            owner = _spool_owner(other.name)
            if other == own or owner is None or not other.is_dir():
                continue
            if other in _spools_in_use or (owner != pid and _pid_alive(owner)):
                continue
            claimed = root / f"claimed-{pid}-{other.name}"
            try:
                os.rename(other, claimed)  # atomic: one process adopts it
            except OSError:
                continue
            spool.adopt_from(claimed)
        self._spool = spool

    def _step(self) -> None:
        now = time.monotonic()
        self._confirm(now)
        if self._sock is None and now >= self._next_attempt:
            self._connect()
        spool = self._spool
        if self._sock is not None and spool is not None and spool.segments:
            # Replay in order: the spool is older than anything in memory.
            self._spool_from_memory()
            head = spool.pop_head()
            if head is not None:
                self._send(head[0], head[1])
            return
        # Without a disk spool, records wait in the bounded memory queue while disconnected.
        if self._queue and (self._sock is not None or spool is not None):
            blob, count = self._format_batch()
            if self._sock is not None:
                self._send(blob, count)
            else:
                self._to_spool(blob, count)
            return
        self._busy = False
        self._gauge()
        self._wake.clear()
        if self._stopping or (self._queue and (self._sock is not None or spool is not None)):
            return
        timeout = POLL_S
        if self._sock is None:
            timeout = min(POLL_S, max(0.01, self._next_attempt - time.monotonic()))
        self._wake.wait(timeout)

    def _format_batch(self, limit: int = BATCH_MAX_EVENTS) -> tuple[bytes, int]:
        formatter = self.formatter
        to_dict = getattr(formatter, "to_dict", None)
        if to_dict is None:
            from pyobs.logs import ECSFormatter

            formatter = ECSFormatter(self._config)
            self.setFormatter(formatter)
            to_dict = formatter.to_dict
        lines: list[str] = []
        queue = self._queue
        dumps = json.dumps
        prefix = self._id_prefix
        self._busy = True
        while queue and len(lines) < limit:
            record, message, ctx = queue.popleft()
            try:
                fields = ctx.run(to_dict, record)
                fields["message"] = message
                self._id_counter += 1
                fields["event.id"] = f"{prefix}{self._id_counter:010x}"
                lines.append(dumps(fields, default=str, ensure_ascii=False))
            except Exception:  # noqa: BLE001 - one bad record must not stop the others
                self.handleError(record)
        if not lines:
            return b"", 0
        return ("\n".join(lines) + "\n").encode("utf-8", "replace"), len(lines)

    def _spool_from_memory(self) -> None:
        """Move everything queued in memory to the spool tail (keeps the order while replaying)."""
        while self._queue:
            blob, count = self._format_batch()
            self._to_spool(blob, count)

    def _to_spool(self, blob: bytes, count: int) -> None:
        if not count:
            return
        spool = self._spool
        if spool is None:
            # No disk spool: keep the newest in memory up to the queue size, drop the rest.
            self._drop(count)
            return
        dropped = spool.append(blob, count)
        self.spooled += count
        self._count("spooled", count)
        self._drop(dropped)

    def _drop(self, count: int) -> None:
        if count:
            self.dropped += count
            self._count("dropped", count)

    def _connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self._disconnect(f"connect to {self.host}:{self.port}: {exc}")
            return
        self._sock = sock
        self._backoff = BACKOFF_MIN_S
        if self._last_error:
            _log.info("pyobs: connected to Logstash at %s:%s again", self.host, self.port)
            self._last_error = ""

    def _disconnect(self, reason: str) -> None:
        """Close the socket; what was written but not confirmed goes back to the spool head."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._requeue_unconfirmed()
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._next_attempt = time.monotonic() + delay
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        if reason and reason != self._last_error:
            if not self._last_error:
                _log.warning("pyobs: Logstash unreachable, spooling logs (%s)", reason)
            self._last_error = reason

    def _put_back(self, blob: bytes, count: int) -> None:
        if self._spool is None:
            self._drop(count)
            return
        self.spooled += count
        self._count("spooled", count)
        self._drop(self._spool.prepend(blob, count))

    def _requeue_unconfirmed(self) -> None:
        if not self._unconfirmed:
            return
        blob = b"".join(item[1] for item in self._unconfirmed)
        count = sum(item[2] for item in self._unconfirmed)
        self._unconfirmed.clear()
        self._unconfirmed_bytes = 0
        self.sent -= count
        self._put_back(blob, count)

    def _send(self, blob: bytes, count: int) -> None:
        sock = self._sock
        if sock is None or not count:
            self._to_spool(blob, count)
            return
        try:
            sock.sendall(blob)
        except OSError as exc:
            # Back at the head: this blob, and before it the unconfirmed writes (older still).
            self._put_back(blob, count)
            self._disconnect(f"send: {exc}")
            return
        now = time.monotonic()
        self._unconfirmed.append((now, blob, count))
        self._unconfirmed_bytes += len(blob)
        self.sent += count
        self._count("sent", count)

    def _confirm(self, now: float) -> None:
        """Forget writes the connection has outlived; detect a peer that closed meanwhile."""
        if not self._unconfirmed or self._sock is None:
            return
        if not self._peer_alive():
            self._disconnect("connection closed by Logstash")
            return
        while self._unconfirmed and (
            now - self._unconfirmed[0][0] >= CONFIRM_AFTER_S
            or self._unconfirmed_bytes > UNCONFIRMED_MAX_BYTES
        ):
            _, blob, _ = self._unconfirmed.popleft()
            self._unconfirmed_bytes -= len(blob)

    def _peer_alive(self) -> bool:
        sock = self._sock
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket):
            return True  # TLS records may arrive; a broken peer shows up on the next send
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True  # Logstash never writes: nothing to read means still open
            # Readable on a connection the peer never writes to: EOF or an error.
            return sock.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _shutdown(self) -> None:
        """At exit: deliver what memory holds if connected, keep everything else on disk."""
        deadline = time.monotonic() + EXIT_DEADLINE_S
        spool = self._spool
        if self._sock is None and (self._queue or (spool is not None and spool.segments)):
            self._connect(timeout=EXIT_DEADLINE_S / 3)  # one quick try; a failure costs little
        # Connected: send the spool (oldest first), then memory, until the deadline.
        while self._sock is not None and time.monotonic() < deadline:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            head = spool.pop_head() if spool is not None else None
            if head is not None:
                self._send(head[0], head[1])
            elif self._queue:
                blob, count = self._format_batch()
                self._send(blob, count)
            else:
                break
        self._spool_from_memory()
        sock = self._sock
        if sock is not None and self._unconfirmed:
            # Half-close and wait for Logstash to close its side: then it has read everything.
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                while sock.recv(4096):
                    if time.monotonic() >= deadline:
                        raise TimeoutError
                self._unconfirmed.clear()
                self._unconfirmed_bytes = 0
            except (OSError, TimeoutError):
                pass
        self._disconnect("")
        self._gauge()
        if self._spool is not None:
            self._spool.close()
            with _spools_lock:
                _spools_in_use.discard(self._spool.dir)


_OUTCOMES = ("sent", "spooled", "dropped")
_handlers: weakref.WeakSet[LogstashHandler] = weakref.WeakSet()
_spools_in_use: set[Path] = set()
_spools_lock = threading.Lock()
_sigterm_installed = False


def _close_at_exit(ref: weakref.ref[LogstashHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler.close()


def _after_fork(ref: weakref.ref[LogstashHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler._reset_after_fork()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Flush every shipper, then die of SIGTERM as the process would have without us."""
    for handler in list(_handlers):
        with contextlib.suppress(Exception):
            handler.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    """Flush on SIGTERM, but only where nobody else (gunicorn, uvicorn, the app) handles it."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
