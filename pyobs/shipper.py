"""Ship ECS log records to Logstash or Elasticsearch without blocking the request or losing them.

The request thread serializes the record to its JSON line (with a unique ``event.id`` that
becomes the document ``_id``) and appends it to a bounded memory queue: no lock, no I/O, no
frame or exception kept. Two background threads do the rest:

- the sender takes the oldest lines (disk spool first, then memory), sends them through the
  transport and counts what the receiver acknowledged, kept as rejected or refused;
- the spiller moves the memory queue to the disk spool whenever the receiver is slow or down
  (a request in flight for long, a back-off, a queue filling up). A full memory queue spills
  on the request thread itself. Only a full spool loses records: oldest first, counted
  ``dropped`` and warned about on stderr at a limited rate.

At exit, on SIGTERM, in fork children and in ``multiprocessing`` children the shipper sends
what it can within a short deadline and keeps the rest in its spool, which a later process
claims and replays. Transports: :mod:`pyobs._shipping.transports`; spool:
:mod:`pyobs._shipping.spool`.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import random
import signal
import ssl
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from pyobs._config import Config, ConfigError
from pyobs._shipping import spool as _spool
from pyobs._shipping.counters import Counters as _Counters
from pyobs._shipping.counters import RateLimited as _RateLimited
from pyobs._shipping.lines import encode as _encode
from pyobs._shipping.lines import minimal_fields as _minimal_fields
from pyobs._shipping.transports import (
    BadBatch,
    ElasticsearchBulk,
    LogstashHttp,
    Result,
    RetryLater,
    TcpLines,
    TooLarge,
)

default_spool_dir = _spool.default_spool_dir

DEFAULT_QUEUE_MAX_EVENTS = 10_000
DEFAULT_QUEUE_MAX_BYTES = 16 * 1024 * 1024
BATCH_MAX_EVENTS = 1_000
WAKE_AT = 256  # queued lines that wake the sender at once (otherwise it polls)
POLL_S = 0.05
STUCK_S = 0.2  # a request in flight this long: the receiver is slow, spill memory to disk
HIGH_WATER = 0.5  # memory queue fill ratio that spills to disk
CLAIM_EVERY_S = 2.0  # look for spools of dead processes (fork children) this often
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
EXIT_DEADLINE_S = 0.8  # exit never waits longer than this for delivery
EXIT_STALL_S = 0.5  # at exit, a request unanswered this long is cut short

_log = logging.getLogger("pyobs.shipper")


class Transport(Protocol):
    """What the shipper needs from a transport (see pyobs._shipping.transports)."""

    name: str
    display: str

    def send(self, lines: list[bytes]) -> Result: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


# --- configuration --------------------------------------------------------------------------


def _env_int(name: str, default: int, lo: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = lo - 1
    if value < lo:
        raise ConfigError(f"{name}={raw!r}: expected a whole number >= {lo}")
    return value


def data_stream_name() -> str:
    """``logs-pyobs-<PYOBS_LOG_NAMESPACE>`` (``default``), the data stream Logstash writes too."""
    namespace = os.environ.get("PYOBS_LOG_NAMESPACE", "").strip() or "default"
    if not namespace.replace("_", "").replace(".", "").isalnum() or namespace != namespace.lower():
        raise ConfigError(
            f"PYOBS_LOG_NAMESPACE={namespace!r}: expected lowercase letters, digits, '_' or '.'"
        )
    return f"logs-pyobs-{namespace}"


def transport_for(config: Config) -> Transport | None:
    """The transport the config asks for: Logstash http, Elasticsearch, TCP lines, or None."""
    ca_file = os.environ.get("PYOBS_LOG_TLS_CA_FILE") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"PYOBS_LOG_TLS_CA_FILE={ca_file!r}: expected a readable CA file")
    if config.logstash_url:
        return LogstashHttp(config.logstash_url, ca_file=ca_file)
    if config.elasticsearch_url:
        return ElasticsearchBulk(
            config.elasticsearch_url,
            data_stream_name(),
            api_key=config.elasticsearch_api_key,
            username=config.elasticsearch_username,
            password=config.elasticsearch_password,
            ca_file=ca_file,
        )
    if config.logstash_host:
        tls: bool | ssl.SSLContext = config.logstash_tls
        if tls and ca_file:
            tls = ssl.create_default_context(cafile=ca_file)
        return TcpLines(config.logstash_host, config.logstash_port, tls)
    return None


def handler_for(config: Config) -> ShippingHandler | None:
    """The shipping handler ``configure_logging`` attaches, or None when nothing is configured."""
    transport = transport_for(config)
    if transport is None:
        return None
    return ShippingHandler(config, transport=transport)


# --- the handler ----------------------------------------------------------------------------


class ShippingHandler(logging.Handler):
    """A logging handler that ships ECS JSON lines with acknowledged delivery (CONTRACT §5).

    ``emit`` serializes the record and appends it to a memory queue; it never blocks on the
    network and never raises. ``stats`` holds this process's totals per outcome.
    """

    pyobs_handler = True  # configure_logging() replaces handlers carrying this mark

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: Transport | None = None,
        host: str | None = None,
        port: int | None = None,
        tls: bool | ssl.SSLContext | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        queue_max_events: int | None = None,
        queue_max_bytes: int | None = None,
        queue_size: int | None = None,
        install_sigterm: bool = True,
    ) -> None:
        super().__init__()
        config = config or Config()
        if transport is None and (host is not None or port is not None or tls is not None):
            transport = TcpLines(
                host or config.logstash_host or "127.0.0.1",
                config.logstash_port if port is None else port,
                config.logstash_tls if tls is None else tls,
            )
        if transport is None:
            transport = transport_for(config)
        if transport is None:
            raise ConfigError(
                "no log receiver configured: set PYOBS_LOGSTASH_URL, PYOBS_ELASTICSEARCH_URL "
                "or PYOBS_LOGSTASH_HOST"
            )
        self.transport: Transport = transport
        self.spool_root = Path(spool_dir or config.log_spool_dir or default_spool_dir())
        self.spool_max_bytes = (
            config.log_spool_max_bytes if spool_max_bytes is None else spool_max_bytes
        )
        self.queue_max_events = (
            queue_max_events
            or queue_size
            or _env_int("PYOBS_LOG_QUEUE_MAX_EVENTS", DEFAULT_QUEUE_MAX_EVENTS, 1)
        )
        self.queue_max_bytes = queue_max_bytes or _env_int(
            "PYOBS_LOG_QUEUE_MAX_BYTES", DEFAULT_QUEUE_MAX_BYTES, 1024
        )
        self.queue_size = self.queue_max_events  # the name the old handler used
        self._to_dict: Any = None
        self.counters = _Counters()
        self.stats = self.counters.stats
        self.counters.register()
        self._warn = _RateLimited()
        self._closed = False
        self._start_lock = threading.Lock()
        self._mp_registered = False
        self._reset_state()
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=lambda: _call(ref, "_before_fork"),
                after_in_parent=lambda: _call(ref, "_after_fork_parent"),
                after_in_child=lambda: _call(ref, "_after_fork_child"),
            )
        if install_sigterm:
            _install_sigterm()
        _handlers.add(self)

    def _reset_state(self) -> None:
        """Fresh per-process state (at creation and in a fork child)."""
        self._pid = os.getpid()
        self._queue: deque[str] = deque()  # JSON lines, newline included
        self._in_bytes = 0  # added by emit without a lock: approximate by a few records
        self._out_bytes = 0
        self._ids = itertools.count(1)
        self._id_head = '{"event.id":"' + os.urandom(6).hex()
        self._move_lock = threading.Lock()
        self._wake = threading.Event()
        self._woken = False
        self._stop = threading.Event()
        self._started = False
        self._sender: threading.Thread | None = None
        self._spiller: threading.Thread | None = None
        self._spool: _spool.Spool | None = None
        self._spool_retry_at = 0.0
        self._inflight_since = 0.0
        self._backoff_until = 0.0
        self._backoff = BACKOFF_MIN_S
        self._batch = BATCH_MAX_EVENTS
        self._held: list[bytes] = []  # lines the sender took from memory and has not settled
        self._held_segment: _spool.Segment | None = None
        self._held_done = 0  # lines of the held list already settled
        self._bisect_end = 0  # held lines up to here are sent in halves (a bad line among them)
        self._deadline = 0.0
        self._last_error = ""
        self._fork_locked = False
        self._gave_up = False
        self._retry_pending = False

    # --- request thread -------------------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> logging.LogRecord | bool:  # type: ignore[override]
        """Filter and emit without the handler lock: emit is safe from any thread."""
        if not self.filters:  # the common case: no filter call at all
            self.emit(record)
            return True
        rv = self.filter(record)
        if rv:
            self.emit(record if not isinstance(rv, logging.LogRecord) else rv)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Serialize the record and queue its line; never blocks on the network, never raises."""
        try:
            if not self._started:
                if self._closed:
                    return
                self._start()
            to_dict = self._to_dict
            try:
                fields = to_dict(record) if to_dict is not None else _minimal_fields(record)
            except Exception:  # noqa: BLE001 - a formatter bug still ships the message
                fields = _minimal_fields(record)
            body = _encode(fields)
            if "event.id" in fields:
                line = body + "\n"
            elif len(body) > 2:  # event.id first: the direct transport reads it from there
                line = f'{self._id_head}{next(self._ids):010x}",{body[1:]}\n'
            else:
                line = f'{self._id_head}{next(self._ids):010x}"}}\n'
            queue = self._queue
            queue.append(line)
            size = self._in_bytes + len(line)
            self._in_bytes = size
            n = len(queue)
            if n >= WAKE_AT or size - self._out_bytes >= self.queue_max_bytes:
                if n >= self.queue_max_events or size - self._out_bytes >= self.queue_max_bytes:
                    self._spill(blocking=True)  # rare: the queue is full; to disk now
                elif not self._woken:
                    self._woken = True
                    self._wake.set()
        except Exception:  # noqa: BLE001 - logging must never break the request
            self._warn.warn("emit", "a record could not be shipped", 1)
            self.counters.add("dropped", 1)

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """Also remember the formatter's ``to_dict`` (the ECS fields), looked up once."""
        super().setFormatter(fmt)
        self._to_dict = getattr(fmt, "to_dict", None)

    def pending(self) -> int:
        """Events in the memory queue."""
        return len(self._queue)

    def spooled_events(self) -> int:
        """Events waiting in this process's disk spool."""
        spool = self._spool
        return spool.events if spool is not None else 0

    def waiting(self) -> int:
        """Every event not settled yet: memory, in flight and spool."""
        return len(self._queue) + len(self._held) - self._held_done + self.spooled_events()

    def flush(self, timeout: float = 0.0) -> None:
        """Wait up to ``timeout`` seconds until every record is delivered (settled).

        Without a timeout (as ``logging.shutdown`` calls it) it returns at once: ``close``
        does the bounded flush at exit.
        """
        if not self._started or self._pid != os.getpid() or self._closed:
            return
        deadline = time.monotonic() + timeout
        while self.waiting() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)

    def close(self) -> None:
        """Send what can be sent within EXIT_DEADLINE_S, keep everything else in the spool."""
        with self._start_lock:
            if self._closed:
                super().close()
                return
            self._closed = True
        _handlers.discard(self)
        try:
            if self._started and self._pid == os.getpid():
                self._shutdown()
        finally:
            with contextlib.suppress(Exception):
                self.transport.close()
            super().close()

    # --- lifecycle ------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._started = True
            self._sender = threading.Thread(target=self._send_loop, name="pyobs-log-sender")
            self._spiller = threading.Thread(target=self._spill_loop, name="pyobs-log-spiller")
            self._sender.daemon = self._spiller.daemon = True
            self._sender.start()
            self._spiller.start()
            self._register_multiprocessing()

    def _register_multiprocessing(self) -> None:
        """multiprocessing children leave through os._exit: flush through its finalizers."""
        util = sys.modules.get("multiprocessing.util")
        if util is None:
            return
        if not self._mp_registered:
            self._mp_registered = True
            util.register_after_fork(self, ShippingHandler._mp_child)
        process = sys.modules.get("multiprocessing.process")
        if process is not None and process.parent_process() is not None:
            util.Finalize(self, self.close, exitpriority=100)

    def _mp_child(self) -> None:
        """Run by multiprocessing in each child it starts (fork or forkserver)."""
        util = sys.modules.get("multiprocessing.util")
        if util is not None:
            util.Finalize(self, self.close, exitpriority=100)

    def _before_fork(self) -> None:
        # No spool file write may be half done when the child's copy of memory is taken.
        self._fork_locked = self._move_lock.acquire(timeout=2.0)
        self._register_multiprocessing()

    def _after_fork_parent(self) -> None:
        if self._fork_locked:
            self._fork_locked = False
            self._move_lock.release()

    def _after_fork_child(self) -> None:
        """The child forgets the parent's queue, threads, spool and connection; starts lazily."""
        spool = self._spool
        locked = self._fork_locked
        if spool is not None:
            if locked:
                spool.forget_after_fork()
            else:  # pragma: no cover - a file may be mid-write: never touch it in the child
                _leaked.append(spool)
        with contextlib.suppress(Exception):
            self.transport.close()
        closed = self._closed
        self._reset_state()
        self._closed = closed
        self._start_lock = threading.Lock()
        self.counters = _Counters()
        self.stats = self.counters.stats
        if self.lock is not None:
            self.createLock()

    # --- spool access (under the move lock) ------------------------------------------------

    def _open_spool(self) -> _spool.Spool | None:
        """The spool, opened on first need; retried later if the disk refuses (never given up)."""
        if self._spool is not None or self.spool_max_bytes <= 0:
            return self._spool
        now = time.monotonic()
        if now < self._spool_retry_at:
            return None
        try:
            self._spool = _spool.Spool(self.spool_root, self.spool_max_bytes)
        except OSError as exc:
            self._spool_retry_at = now + 5.0
            self._warn.warn("spool", f"log spool unavailable ({exc}); retrying", 1)
            return None
        self._claim()
        return self._spool

    def _claim(self) -> None:
        spool = self._spool
        if spool is None:
            return
        _adopted, bad = spool.claim_dead()
        self.counters.add("quarantined", bad)

    def _spill(self, blocking: bool = False) -> None:
        """Move the whole memory queue to the spool tail (drop oldest if there is no spool)."""
        if not self._move_lock.acquire(timeout=10.0 if blocking else 0.5):
            return
        try:
            self._spill_locked()
        finally:
            self._move_lock.release()

    def _spill_locked(self) -> None:
        queue = self._queue
        if not queue:
            return
        spool = self._open_spool()
        if spool is None:
            # Nowhere on disk: keep the newest in memory within its bounds, drop the oldest.
            dropped = 0
            while queue and (
                len(queue) > self.queue_max_events
                or self._in_bytes - self._out_bytes > self.queue_max_bytes
            ):
                self._out_bytes += len(queue.popleft())
                dropped += 1
            self._dropped(dropped)
            return
        lines: list[bytes] = []
        size = 0
        while queue:
            line = queue.popleft()
            lines.append(line.encode("utf-8", "replace"))
            size += len(line)
        self._out_bytes += size
        dropped = spool.append(lines)
        self.counters.add("spooled", len(lines))
        self._dropped(dropped)

    def _to_memory(self, lines: list[bytes]) -> None:
        """Put lines back at the head of the memory queue (only when there is no spool)."""
        texts = [line.decode("utf-8", "replace") for line in lines]
        self._out_bytes -= sum(len(t) for t in texts)
        self._queue.extendleft(reversed(texts))

    def _dropped(self, n: int) -> None:
        if n:
            self.counters.add("dropped", n)
            self._warn.warn("dropped", f"log spool full: {n} oldest events dropped", n)

    # --- the spiller thread ---------------------------------------------------------------

    def _spill_loop(self) -> None:
        next_claim = time.monotonic() + CLAIM_EVERY_S
        while not self._stop.is_set():
            self._stop.wait(POLL_S)
            try:
                now = time.monotonic()
                since = self._inflight_since
                slow = (since and now - since > STUCK_S) or now < self._backoff_until
                full = len(self._queue) >= self.queue_max_events * HIGH_WATER or (
                    self._in_bytes - self._out_bytes >= self.queue_max_bytes * HIGH_WATER
                )
                if self._queue and (slow or full):
                    self._spill()
                if now >= next_claim:
                    next_claim = now + CLAIM_EVERY_S
                    with self._move_lock:
                        if self._open_spool() is not None:
                            self._claim()
                self.counters.gauge(self.waiting())
            except Exception as exc:  # noqa: BLE001 - the spiller must survive
                self._warn.warn("spiller", f"spill failed: {type(exc).__name__}: {exc}")

    # --- the sender thread ----------------------------------------------------------------

    def _send_loop(self) -> None:
        with self._move_lock:
            self._open_spool()  # claim what dead processes left before sending anything new
        while True:
            try:
                if self._stop.is_set() and (
                    self._gave_up or time.monotonic() >= self._deadline or not self._take_for_exit()
                ):
                    return
                if not self._held and not self._take():
                    self._woken = False
                    self._wake.clear()
                    if self._stop.is_set():
                        return
                    self._wake.wait(POLL_S)
                    continue
                self._deliver()
            except Exception as exc:  # noqa: BLE001 - the sender thread must survive
                self._warn.warn("sender", f"sender error: {type(exc).__name__}: {exc}")
                time.sleep(0.05)

    def _take_for_exit(self) -> bool:
        """While closing: is there anything left worth trying before the deadline?"""
        return bool(self._held) or self._take()

    def _take(self) -> bool:
        """Hold the oldest lines: the spool's head segment, else a batch from memory."""
        with self._move_lock:
            spool = self._spool
            while spool is not None and spool.segments:
                segment = spool.head()
                if segment is None:
                    break
                lines, bad = spool.read(segment)
                self.counters.add("quarantined", bad)
                if lines:
                    self._held, self._held_segment, self._held_done = lines, segment, 0
                    self._bisect_end = 0
                    return True
                spool.forget(segment)
            queue = self._queue
            if not queue:
                return False
            lines = []
            size = 0
            for _ in range(min(len(queue), self._batch)):
                line = queue.popleft()
                lines.append(line.encode("utf-8", "replace"))
                size += len(line)
            self._out_bytes += size
            self._held, self._held_segment, self._held_done = lines, None, 0
            self._bisect_end = 0
            return True

    def _deliver(self) -> None:
        """Send the held lines in batches until all are settled, or put them back at stop."""
        held = self._held
        while self._held_done < len(held):
            chunk = held[self._held_done : self._held_done + self._batch]
            if not self._send_chunk(chunk):
                if self._stop.is_set():
                    self._put_back()
                    self._gave_up = True  # closing and the receiver fails: keep the rest
                    return
                if self._retry_pending:
                    self._retry_pending = False
                    if self._held_segment is None and self._spool is not None:
                        # The receiver is away: what memory held waits on disk from now on
                        # (a crash meanwhile loses nothing); it is taken again from there.
                        self._put_back()
                        self._sleep_backoff()
                        return
                    self._sleep_backoff()
                continue
            self._held_done += len(chunk)
        with self._move_lock:
            if self._held_segment is not None and self._spool is not None:
                self._spool.forget(self._held_segment)
            self._held, self._held_segment, self._held_done = [], None, 0
            self._bisect_end = 0

    def _put_back(self) -> None:
        """Unsettled held lines go back to the spool head (or stay in their segment)."""
        with self._move_lock:
            rest = self._held[self._held_done :]
            spool = self._spool if self._spool is not None else self._open_spool()
            if self._held_segment is not None and spool is not None:
                spool.keep_rest(self._held_segment, rest)
            elif rest and spool is not None:
                self.counters.add("spooled", len(rest))
                self._dropped(spool.prepend(rest))
            elif rest:
                self._to_memory(rest)  # no disk: back to memory
            self._held, self._held_segment, self._held_done = [], None, 0
            self._bisect_end = 0

    def _send_chunk(self, chunk: list[bytes]) -> bool:
        """One request; True when every line of ``chunk`` is settled (acked, kept or refused)."""
        self._inflight_since = time.monotonic()
        try:
            result = self.transport.send(chunk)
        except RetryLater as exc:
            self._failed(chunk, str(exc), exc.back_pressure, exc.config)
            return False
        except TooLarge:
            if len(chunk) == 1:
                self._refused([(chunk[0], "413: larger than the receiver accepts")])
                return True
            self._batch = max(1, len(chunk) // 2)
            return False
        except BadBatch as exc:
            if len(chunk) == 1:
                self._refused([(chunk[0], str(exc))])
                return True
            # Some line is bad: send this stretch again in halves, down to single lines (the
            # delivery loop keeps the progress, so an outage meanwhile loses or repeats nothing).
            self.counters.add("retries", len(chunk))
            self._batch = max(1, len(chunk) // 2)
            self._bisect_end = max(self._bisect_end, self._held_done + len(chunk))
            return False
        finally:
            self._inflight_since = 0.0
        self._settle(result)
        while result.retry:  # item-level back-pressure: resend those lines only
            lines = result.retry
            self.counters.add("retries", len(lines))
            self._back_off(True)
            if self._stop.is_set() and time.monotonic() >= self._deadline:
                with self._move_lock:
                    spool = self._open_spool()
                    if spool is not None:
                        self.counters.add("spooled", len(lines))
                        self._dropped(spool.prepend(lines))
                    else:
                        self._to_memory(lines)
                return True
            self._sleep_backoff()
            try:
                result = self.transport.send(lines)
            except (RetryLater, TooLarge, BadBatch):
                result = Result(retry=lines)
                continue
            self._settle(result)
        self._recovered()
        return True

    def _settle(self, result: Result) -> None:
        self.counters.add("acknowledged", result.acknowledged)
        self.counters.add("unconfirmed", result.unconfirmed)
        self.counters.add("rejected", result.kept_rejected)
        if result.refused:
            self._refused(result.refused)

    def _refused(self, refused: list[tuple[bytes, str]]) -> None:
        """Refused for good and not kept by the receiver: keep them in ``rejected/`` ourselves."""
        entries = [
            {
                "rejected_at": time.time(),
                "receiver": self.transport.display,
                "reason": reason,
                "record": line.decode("utf-8", "replace").rstrip("\n"),
            }
            for line, reason in refused
        ]
        lost = _spool.append_rejected(
            self.spool_root, entries, max(1024 * 1024, self.spool_max_bytes // 4)
        )
        self.counters.add("rejected", len(refused) - lost)
        self._dropped(lost)
        self._warn.warn(
            "rejected", f"receiver refused records: {refused[0][1][:200]}", len(refused)
        )

    def _failed(self, chunk: list[bytes], reason: str, back_pressure: bool, config: bool) -> None:
        self.counters.add("retries", len(chunk))
        if not back_pressure and not config:
            self._batch = max(1, len(chunk) // 2)  # a receiver that cuts long requests short
        self._back_off(back_pressure)
        if reason != self._last_error:
            self._last_error = reason
            self._warn.warn(
                "unreachable",
                f"{self.transport.display} did not take the logs ({reason}); they wait on disk",
            )
        self._retry_pending = True  # the delivery loop waits out the backoff

    def _back_off(self, back_pressure: bool) -> None:
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff_until = time.monotonic() + delay
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
        if back_pressure:
            self._wake.set()

    def _sleep_backoff(self) -> None:
        delay = self._backoff_until - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)

    def _recovered(self) -> None:
        self._backoff = BACKOFF_MIN_S
        self._backoff_until = 0.0
        if self._held_done >= self._bisect_end:  # not while halving around a bad line
            self._batch = min(BATCH_MAX_EVENTS, self._batch * 2)
        if self._last_error:
            self._last_error = ""
            _log.info("pyobs: %s takes logs again", self.transport.display)

    # --- exit -----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Deliver within the deadline if the receiver takes it; everything else to the spool."""
        self._deadline = time.monotonic() + EXIT_DEADLINE_S
        if self._move_lock.acquire(timeout=0.1):
            try:  # what fork children left since the last look goes out with ours
                self._claim()
            finally:
                self._move_lock.release()
        self._stop.set()
        self._wake.set()
        sender = self._sender
        if sender is not None and sender.is_alive() and sender is not threading.current_thread():
            while sender.is_alive() and time.monotonic() < self._deadline:
                sender.join(0.02)
                since = self._inflight_since
                if since and time.monotonic() - since > EXIT_STALL_S:
                    break  # a stalled receiver: waiting longer would not help
            if sender.is_alive():  # cut the request short; the sender keeps what it held
                self.transport.abort()
                sender.join(0.1)
        spiller = self._spiller
        if spiller is not None and spiller.is_alive():
            spiller.join(0.1)
        if not self._move_lock.acquire(timeout=0.2):
            return  # a signal interrupted a spill on this very thread: memory stays as is
        try:
            if self._held and (sender is None or not sender.is_alive()):
                self._move_lock.release()
                try:
                    self._put_back()
                finally:
                    self._move_lock.acquire()
            elif self._held:  # the sender is still stuck: keep a copy (resent later, same _id)
                rest = self._held[self._held_done :]
                spool = self._open_spool()
                if spool is not None and self._held_segment is None and rest:
                    self._dropped(spool.prepend(rest))
            self._spill_locked()
            self.counters.gauge(self.waiting())
            if self._spool is not None:
                self._spool.close()
                self._spool = None
        finally:
            self._move_lock.release()

    def spill_now(self) -> None:
        """Move what memory holds to the spool now (SIGTERM with an application handler)."""
        if self._started and self._pid == os.getpid() and not self._closed:
            self._spill()


LogstashHandler = ShippingHandler  # the name earlier versions used

_handlers: weakref.WeakSet[ShippingHandler] = weakref.WeakSet()
_leaked: list[Any] = []  # spools a fork child must never touch (see _after_fork_child)
_previous_sigterm: Any = None
_sigterm_installed = False


def _call(ref: weakref.ref[ShippingHandler], method: str) -> None:
    handler = ref()
    if handler is not None:
        with contextlib.suppress(Exception):
            getattr(handler, method)()


def _close_at_exit(ref: weakref.ref[ShippingHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Keep every record, then let the previous SIGTERM disposition run as it would have."""
    previous = _previous_sigterm
    if previous in (None, signal.SIG_DFL):
        for handler in list(_handlers):
            with contextlib.suppress(Exception):
                handler.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    for handler in list(_handlers):
        with contextlib.suppress(Exception):
            handler.spill_now()
    if callable(previous):
        previous(signum, frame)


def _install_sigterm() -> None:
    """Chain in front of the current SIGTERM handler (main thread only; once per process)."""
    global _sigterm_installed, _previous_sigterm
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm:
            return
        _previous_sigterm = current
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True
