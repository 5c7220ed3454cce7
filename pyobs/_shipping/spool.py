"""The disk spool: one directory per process of numbered segment files holding JSON lines.

Each process writes only to its own directory, which it holds a ``flock`` on for its whole
life, so a directory whose lock can be taken belongs to a dead process (a pid that was
reused later does not fool this). A live process claims such a directory with one atomic
rename (only one claimer can win it), moves its segments to the head of its own spool and
replays them in order. A segment that cannot be read, or a line that is not JSON, is moved
to ``quarantine/`` and counted; the rest is replayed. Over ``max_bytes`` whole segments are
deleted, oldest first, and their events reported as dropped.

Only the shipper's background threads touch a spool, under the shipper's move lock.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: liveness falls back to the pid
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".jsonl"
FIRST_SEQ = 1_000_000_000  # room below for segments put back at the head
QUARANTINE = "quarantine"
REJECTED = "rejected"
_LOCK = "lock"


def default_spool_dir() -> str:
    """Where spools live when PYOBS_LOG_SPOOL_DIR is unset: a per-user directory in the temp dir."""
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return os.path.join(tempfile.gettempdir(), f"pyobs-spool-{user}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _owner_pid(name: str) -> int | None:
    """The pid in ``pid-<pid>[-<tag>]`` or ``claimed-<pid>-...`` (the legacy liveness check)."""
    try:
        return int(name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return None


class Segment:
    """One segment file: its sequence number, size and number of events."""

    __slots__ = ("events", "path", "seq", "size", "trusted")

    def __init__(self, seq: int, path: Path, size: int, events: int, trusted: bool = True) -> None:
        self.seq = seq
        self.path = path
        self.size = size
        self.events = events
        self.trusted = trusted  # written by this process: its lines need no JSON check


def _try_lock(directory: Path) -> IO[bytes] | None:
    """An open, exclusively flocked lock file of ``directory``; None if a live process holds it."""
    try:
        handle = (directory / _LOCK).open("ab")
    except OSError:
        return None
    if fcntl is None:  # pragma: no cover
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class Spool:
    """This process's spool directory under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.segment_bytes = max(16 * 1024, min(1024 * 1024, max_bytes // 16))
        self.segments: collections.deque[Segment] = collections.deque()
        self.bytes = 0
        self.events = 0
        self.inflight: Segment | None = None  # the head segment the sender is reading
        self._tail: IO[bytes] | None = None
        self._quarantine_file: IO[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        # Locked under a name claimers ignore, then renamed: never claimed while being born.
        tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        fresh = root / f"new-{tag}"
        fresh.mkdir()
        lock = _try_lock(fresh)
        if lock is None:
            raise OSError(f"cannot lock the spool directory {fresh}")
        self._lock_file: IO[bytes] | None = lock
        self.dir = root / f"pid-{tag}"
        os.rename(fresh, self.dir)

    # --- writing --------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> int:
        """Add newline-terminated lines at the tail; return how many old events were dropped."""
        dropped = 0
        start = 0
        while start < len(lines):
            last = self.segments[-1] if self.segments else None
            if last is None or self._tail is None or last.size >= self.segment_bytes:
                self._close_tail()
                seq = last.seq + 1 if last else FIRST_SEQ
                last = Segment(seq, self.dir / f"{seq:012d}{SUFFIX}", 0, 0)
                self.segments.append(last)
                self._tail = last.path.open("ab")
            room = self.segment_bytes - last.size
            end = start
            size = 0
            while end < len(lines) and (size < room or end == start):
                size += len(lines[end])
                end += 1
            blob = b"".join(lines[start:end])
            self._tail.write(blob)
            self._tail.flush()
            last.size += len(blob)
            last.events += end - start
            self.bytes += len(blob)
            self.events += end - start
            start = end
            dropped += self._enforce_cap()
        return dropped

    def prepend(self, lines: list[bytes]) -> int:
        """Put lines back at the head (older than everything spooled); return events dropped."""
        if not lines:
            return 0
        seq = self.segments[0].seq - 1 if self.segments else FIRST_SEQ
        path = self.dir / f"{seq:012d}{SUFFIX}"
        blob = b"".join(lines)
        path.write_bytes(blob)
        self.segments.appendleft(Segment(seq, path, len(blob), len(lines)))
        self.bytes += len(blob)
        self.events += len(lines)
        return self._enforce_cap()

    def _enforce_cap(self) -> int:
        """Delete the oldest segments (never the one being sent) until under the cap."""
        dropped = 0
        while self.bytes > self.max_bytes:
            victim = next((s for s in self.segments if s is not self.inflight), None)
            if victim is None:
                break
            if victim is self.segments[-1]:
                self._close_tail()
            self.segments.remove(victim)
            with contextlib.suppress(OSError):
                victim.path.unlink()
            self.bytes -= victim.size
            self.events -= victim.events
            dropped += victim.events
        return dropped

    def _close_tail(self) -> None:
        if self._tail is not None:
            with contextlib.suppress(OSError):
                self._tail.close()
            self._tail = None

    # --- reading --------------------------------------------------------------------------

    def head(self) -> Segment | None:
        """The oldest segment, sealed (later appends start a new one) and marked in flight."""
        if not self.segments:
            return None
        head = self.segments[0]
        if head is self.segments[-1]:
            self._close_tail()
        self.inflight = head
        return head

    def read(self, segment: Segment) -> tuple[list[bytes], int]:
        """The segment's JSON lines, and how many entries were quarantined while reading it."""
        try:
            data = segment.path.read_bytes()
        except OSError:
            self._quarantine_path(segment.path)
            self.forget(segment)
            return [], 1
        lines = data.splitlines(keepends=True)
        if segment.trusted and (not lines or lines[-1].endswith(b"\n")):
            return lines, 0
        good: list[bytes] = []
        bad = 0
        for line in lines:
            if line.endswith(b"\n") and _is_json(line):
                good.append(line)
            elif line.strip():
                self.quarantine_line(line)
                bad += 1
        return good, bad

    def forget(self, segment: Segment) -> None:
        """Delete a segment that has been delivered (or set aside)."""
        if self.inflight is segment:
            self.inflight = None
        if segment in self.segments:
            self.segments.remove(segment)
            self.bytes -= segment.size
            self.events -= segment.events
        with contextlib.suppress(OSError):
            segment.path.unlink()

    def keep_rest(self, segment: Segment, rest: list[bytes]) -> None:
        """Rewrite a partly delivered segment with only what is left (atomic replace)."""
        if self.inflight is segment:
            self.inflight = None
        if not rest:
            self.forget(segment)
            return
        blob = b"".join(rest)
        tmp = segment.path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, segment.path)
        self.bytes += len(blob) - segment.size
        self.events += len(rest) - segment.events
        segment.size, segment.events = len(blob), len(rest)

    # --- quarantine -----------------------------------------------------------------------

    def _quarantine_dir(self) -> Path:
        path = self.root / QUARANTINE
        path.mkdir(exist_ok=True)
        return path

    def _quarantine_path(self, path: Path) -> None:
        target = self._quarantine_dir() / f"{int(time.time())}-{os.getpid()}-{path.name}"
        try:
            os.rename(path, target)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()

    def quarantine_line(self, line: bytes) -> None:
        """Keep an unreadable line aside (one file per process), never replayed again."""
        with contextlib.suppress(OSError):
            if self._quarantine_file is None:
                name = f"lines-{os.getpid()}-{os.urandom(3).hex()}{SUFFIX}"
                self._quarantine_file = (self._quarantine_dir() / name).open("ab")
            self._quarantine_file.write(line if line.endswith(b"\n") else line + b"\n")
            self._quarantine_file.flush()

    # --- dead processes -------------------------------------------------------------------

    def claim_dead(self) -> tuple[int, int]:
        """Adopt the spools of dead processes at the head; return (events adopted, quarantined)."""
        adopted = quarantined = 0
        try:
            entries = sorted(self.root.iterdir())
        except OSError:
            return 0, 0
        for other in entries:
            if other == self.dir or not other.name.startswith(("pid-", "claimed-")):
                continue
            if not other.is_dir():
                continue
            legacy = not (other / _LOCK).exists()
            lock = _try_lock(other)
            if lock is None:
                continue
            try:
                owner = _owner_pid(other.name)
                if legacy and owner is not None and owner != os.getpid() and _pid_alive(owner):
                    continue  # an older pyobs without a lock file, still running
                claimed = self.root / f"claimed-{os.getpid()}-{os.urandom(4).hex()}"
                try:
                    os.rename(other, claimed)  # atomic: exactly one process adopts it
                except OSError:
                    continue
                got, bad = self._adopt(claimed)
                adopted += got
                quarantined += bad
            finally:
                lock.close()
        return adopted, quarantined

    def _adopt(self, claimed: Path) -> tuple[int, int]:
        """Move a claimed directory's segments in front of ours, oldest first."""
        adopted = quarantined = 0
        files = sorted(p for p in claimed.iterdir() if p.name.endswith(SUFFIX))
        for path in reversed(files):
            try:
                data = path.read_bytes()
            except OSError:
                self._quarantine_path(path)
                quarantined += 1
                continue
            events = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
            if events == 0:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            seq = self.segments[0].seq - 1 if self.segments else FIRST_SEQ
            target = self.dir / f"{seq:012d}{SUFFIX}"
            os.rename(path, target)
            self.segments.appendleft(Segment(seq, target, len(data), events, trusted=False))
            self.bytes += len(data)
            self.events += events
            adopted += events
        for leftover in claimed.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            claimed.rmdir()
        return adopted, quarantined

    # --- end ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close files; remove the directory if empty (else a later process claims it)."""
        self._close_tail()
        if self._quarantine_file is not None:
            with contextlib.suppress(OSError):
                self._quarantine_file.close()
            self._quarantine_file = None
        if not self.segments:
            with contextlib.suppress(OSError):
                (self.dir / _LOCK).unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited files (the parent keeps its lock and data)."""
        for handle in (self._tail, self._quarantine_file, self._lock_file):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._tail = self._quarantine_file = self._lock_file = None


def _is_json(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def append_rejected(root: Path, entries: list[dict[str, Any]], max_bytes: int) -> int:
    """Keep records the receiver refused for good; return how many did not fit under the cap."""
    directory = root / REJECTED
    try:
        directory.mkdir(parents=True, exist_ok=True)
        used = sum(p.stat().st_size for p in directory.glob(f"*{SUFFIX}"))
        path = directory / f"rejected-{os.getpid()}{SUFFIX}"
        lost = 0
        with path.open("ab") as out:
            for entry in entries:
                blob = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
                if used + len(blob) > max_bytes:
                    lost += 1
                    continue
                out.write(blob)
                used += len(blob)
        return lost
    except OSError:
        return len(entries)
