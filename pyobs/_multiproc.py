"""Multiprocess mode (PROMETHEUS_MULTIPROC_DIR): exemplars, dead-worker compaction, the scrape.

prometheus_client's multiprocess mode keeps one file of values per process and type and stores
no exemplars. pyobs adds two things around it (docs/frameworks.md, "Several worker processes"):

- **Exemplars.** Each process keeps its own small file, ``pyobs-exemplars_<pid>.bin``: per
  duration series a fixed row of slots, one per bucket, each holding the newest exemplar that
  process saw in that bucket (time, trace id, value, time). A request writes one 56-byte slot
  with one ``mmap`` slice assignment: no lock shared with other processes, no system call. A
  scrape reads every file and keeps, per bucket, the newest exemplar across processes.
- **Compaction.** A dead worker's counters, histograms and summaries (and gauges in the
  ``sum``, ``min``, ``max``, ``mostrecent`` modes) are merged exactly into one archive file
  per type; its other gauges are dropped (a dead process has no live value); its exemplars go
  to an exemplar archive. Done in gunicorn's ``child_exit`` hook and, for processes that are
  gone, at scrape. Files, disk and scrape time stay flat under worker churn.

Crash safety of compaction: under an exclusive ``flock`` a dead file is first renamed to a
unique name (so a new process that reuses the pid starts a fresh file); the new archive is
written to a temporary file that lists the names it absorbed, then renamed over the old one
(the commit point); the absorbed files are deleted last. A scrape reads under a shared lock
and skips any file an archive lists as absorbed, so a crash at any point neither loses nor
double-counts a value; the next compaction finishes the job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import mmap
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_log = logging.getLogger("pyobs.internal")

EXEMPLAR_PREFIX = "pyobs-exemplars_"
EXEMPLAR_SUFFIX = ".bin"
EXEMPLAR_ARCHIVE = f"{EXEMPLAR_PREFIX}archive{EXEMPLAR_SUFFIX}"
LOCK_NAME = "pyobs-compaction.lock"
TMP_PREFIX = ".pyobs-tmp-"
LOCK_WAIT = 2.0  # seconds child_exit waits for a scrape to finish before leaving it to the next

# --- exemplar file format ------------------------------------------------------------------
# header: magic (8 bytes), bytes used (u32), 4 bytes padding
# entry:  key length (u32), slot count (u32), key (JSON, padded to 8 bytes), slots
# slot:   unix time (f64), trace id (32 bytes ASCII), value (f64), the same unix time again.
#         A slot whose time is 0 is empty. A slot is written by one copy of its 56 bytes; a
#         reader in another process that catches it mid-copy sees two different times and
#         skips that slot for that scrape (a checksum would cost more per request).
_MAGIC = b"PYOBSEX2"
_HEAD = struct.Struct("<8sI4x")
_ENTRY = struct.Struct("<II")
_SLOT = struct.Struct("<d32sdd")
SLOT_SIZE = _SLOT.size  # 56
_INITIAL_SIZE = 1 << 16

# --- prometheus_client's file names --------------------------------------------------------
# <type>_<pid>.db for counter/histogram/summary, gauge_<mode>_<pid>.db for gauges; pyobs adds
# <prefix>_<pid>-pyobs.db (its own request series), <prefix>_<pid>-dead<token>.db (renamed,
# being compacted) and <prefix>_archive.db.
_DB_FILE = re.compile(
    r"^(?P<prefix>counter|histogram|summary|gauge_[a-z]+)_"
    r"(?:(?P<pid>\d+)(?:-pyobs)?|(?P<dead>\d+-dead[0-9a-f]+)|(?P<archive>archive))\.db$"
)
_EXEMPLAR_FILE = re.compile(rf"^{re.escape(EXEMPLAR_PREFIX)}(\d+){re.escape(EXEMPLAR_SUFFIX)}$")
# Merge rule per file prefix for a dead process's values; absent: dropped with the process.
_SUM, _MIN, _MAX, _RECENT = "sum", "min", "max", "mostrecent"
_RULES = {
    "counter": _SUM,
    "histogram": _SUM,
    "summary": _SUM,
    "gauge_sum": _SUM,
    "gauge_min": _MIN,
    "gauge_max": _MAX,
    "gauge_mostrecent": _RECENT,
}
# An archive is a valid prometheus_client file; after its used bytes (which prometheus_client
# never reads) pyobs writes this marker and the JSON list of the file names it absorbed.
_TRAILER = b"PYOBSARC"
_USED = struct.Struct("<i")
_DB_HEAD = struct.Struct("<i4x")
_DB_VALUE = struct.Struct("<dd")


def directory() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def file_backed() -> bool:
    """True when this process's metric values are written to PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import values

    return getattr(values.ValueClass, "__name__", "") == "MmapedValue"


# === exemplars: the request path ===========================================================


class _ExemplarFile:
    """This process's exemplar file: append-only entries of fixed slots, in a shared mmap."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, _INITIAL_SIZE)
            self.mm = mmap.mmap(fd, _INITIAL_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = _INITIAL_SIZE
        self._used = _HEAD.size
        self._retired: list[mmap.mmap] = []  # old mappings a writer may still hold
        self._lock = threading.Lock()
        self.mm[: _HEAD.size] = _HEAD.pack(_MAGIC, self._used)

    def allocate(self, key: bytes, slots: int) -> int:
        """Append an entry for ``key`` with ``slots`` empty slots; the offset of its first slot."""
        with self._lock:
            padded = len(key) + (-len(key)) % 8
            need = _ENTRY.size + padded + slots * SLOT_SIZE
            if self._used + need > self._size:
                size = self._size
                while self._used + need > size:
                    size *= 2
                os.ftruncate(self._fd, size)
                self._retired.append(self.mm)
                self.mm = mmap.mmap(self._fd, size)
                self._size = size
            at = self._used
            self.mm[at : at + _ENTRY.size + len(key)] = _ENTRY.pack(len(key), slots) + key
            self._used = at + need
            # Readers see the entry only once it is complete.
            self.mm[8:12] = struct.pack("<I", self._used)
            return at + _ENTRY.size + padded


_file: _ExemplarFile | None = None
_file_lock = threading.Lock()


def _exemplar_file() -> _ExemplarFile:
    """This process's exemplar file, created on first use (a forked child makes its own)."""
    global _file
    found = _file
    if found is not None:
        return found
    with _file_lock:
        found = _file
        if found is None:
            path = directory()
            if path is None:
                raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is not set")
            name = f"{EXEMPLAR_PREFIX}{os.getpid()}{EXEMPLAR_SUFFIX}"
            found = _file = _ExemplarFile(os.path.join(path, name))
        return found


def _after_fork_in_child() -> None:
    global _file, _file_lock
    _file = None  # the parent's file is the parent's; a child writes its own
    _file_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def exemplar_key(sample: str, labels: dict[str, str], bounds: Sequence[float]) -> bytes:
    """The entry key of one series: bucket sample name, its labels, the ``le`` of each slot."""
    return json.dumps(
        [sample, labels, [_le(b) for b in bounds]], sort_keys=True, separators=(",", ":")
    ).encode()


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class ExemplarHistogram:
    """A histogram child whose ``observe(amount, exemplar)`` also stores the exemplar in this
    process's exemplar file (prometheus_client's multiprocess values drop exemplars)."""

    __slots__ = ("_base", "_bounds", "_child", "_file", "_key")

    def __init__(
        self,
        child: Any,
        name: str,
        labelnames: Sequence[str],
        labelvalues: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        self._child = child
        bounds = [float(b) for b in buckets]
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        labels = dict(zip(labelnames, labelvalues, strict=True))
        self._key = exemplar_key(name + "_bucket", labels, bounds)
        self._file: _ExemplarFile | None = None
        self._base = 0

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """The value through prometheus_client (no exemplar), the exemplar into its slot."""
        self._child.observe(amount)
        if exemplar:
            trace_id = exemplar.get("trace_id")
            if trace_id:
                try:
                    self.record(amount, trace_id)
                except Exception as exc:  # noqa: BLE001 - the request goes on without it
                    from pyobs import _errors

                    _errors.report("metrics", exc, "multiprocess exemplar")

    def record(self, amount: float, trace_id: str) -> None:
        """Write (now, trace id, amount, now) into the slot of the bucket ``amount`` falls in."""
        file = self._file
        if file is not _file or file is None:  # first use, or a forked child: its own file
            file = _exemplar_file()
            self._base = file.allocate(self._key, len(self._bounds))
            self._file = file
        at = self._base + bisect_left(self._bounds, amount) * SLOT_SIZE
        now = time.time()
        # One slice assignment (under the GIL): a thread of this process never sees half a slot.
        file.mm[at : at + SLOT_SIZE] = _SLOT.pack(now, trace_id.encode(), amount, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._child, name)


# === pyobs's own request series: the multiprocess fast path ================================
# prometheus_client's file-backed values take a lock and ask the kernel for the pid (a system
# call) on every inc(), and Histogram.observe() builds an exemplar only to drop it. pyobs's
# request series (in-flight gauge, duration and body-size histograms, log events) write the
# same file format themselves: one file per type and process, ``<type>_<pid>-pyobs.db``
# (``gauge_livesum_<pid>-pyobs.db``), a value written as 8 bytes into the shared map under
# one process-wide lock; a fork is noticed through a generation object, not a system call.
# prometheus_client's collector (and pyobs's) read these files like its own.

_gen = object()  # replaced in a forked child: every value then starts again in its own file
_values_lock = threading.Lock()
_values_files: dict[str, _ValuesFile] = {}


class _ValuesFile:
    """One process's file of one type (prometheus_client's format), appended to by pyobs.

    A file that exists already (a process that had this pid before, not compacted yet) is
    continued, as prometheus_client continues it: its values count on from where they are.
    """

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < _INITIAL_SIZE or size % 8:  # a file cut short elsewhere: whole doubles
                size = max(_INITIAL_SIZE, size + -size % 8)
                os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        # The map as 8-byte doubles: a value is written with one item assignment, one aligned
        # 8-byte store (no slice or bytes object); little-endian hosts only (fast_path()).
        self.doubles = memoryview(self.mm).cast("d")
        self._fd = fd
        self._size = size
        self._retired: list[mmap.mmap] = []
        self._positions: dict[bytes, int] = {}
        used: int = _USED.unpack_from(self.mm)[0]
        if used == 0:
            used = _DB_HEAD.size
            self.mm[:4] = _USED.pack(used)
        else:
            pos = _DB_HEAD.size
            while pos < used:
                (length,) = _USED.unpack_from(self.mm, pos)
                key = self.mm[pos + 4 : pos + 4 + length]
                pos += 4 + length + 8 - (length + 4) % 8
                self._positions[key] = pos
                pos += _DB_VALUE.size
        self._used = used

    def position(self, key: str) -> int:
        """The offset of ``key``'s 8-byte value, appended (as 0) when new (a multiple of 8:
        ``doubles[offset >> 3]`` is the value). Under _values_lock."""
        raw = key.encode()
        found = self._positions.get(raw)
        if found is not None:
            return found
        entry = _db_entry(raw, 0.0, 0.0)
        if self._used + len(entry) > self._size:
            size = self._size
            while self._used + len(entry) > size:
                size *= 2
            os.ftruncate(self._fd, size)
            self._retired.append(self.mm)  # a value write may still hold the old map
            self.mm = mmap.mmap(self._fd, size)
            self.doubles = memoryview(self.mm).cast("d")
            self._size = size
        at = self._used
        self.mm[at : at + len(entry)] = entry
        self._used = at + len(entry)
        self.mm[:4] = _USED.pack(self._used)  # readers see the entry once it is complete
        self._positions[raw] = found = self._used - _DB_VALUE.size
        return found

    def value(self, pos: int) -> float:
        """The value stored at ``pos``."""
        return float(_DB_VALUE.unpack_from(self.mm, pos)[0])


def _values_file(prefix: str) -> _ValuesFile:
    """This process's file for ``prefix`` (``histogram``, ``counter``, ``gauge_livesum``)."""
    found = _values_files.get(prefix)
    if found is None:
        path = directory()
        if path is None:
            raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is not set")
        name = f"{prefix}_{os.getpid()}-pyobs.db"
        found = _values_files[prefix] = _ValuesFile(os.path.join(path, name))
    return found


def _values_after_fork() -> None:
    global _gen, _values_lock
    _gen = object()
    _values_lock = threading.Lock()
    _values_files.clear()


os.register_at_fork(after_in_child=_values_after_fork)


def _mmap_key(metric: str, sample: str, labels: dict[str, str], help_text: str) -> str:
    """The key prometheus_client gives a value (the collector groups by what it decodes)."""
    return json.dumps([metric, sample, labels, help_text], sort_keys=True)


class FastValue:
    """A counter's or gauge's value of this process: ``inc(amount)`` (``dec`` for gauges)."""

    __slots__ = ("_file", "_gen", "_index", "_key", "_prefix", "_value")

    def __init__(self, prefix: str, key: str) -> None:
        self._prefix = prefix
        self._key = key
        self._gen: object = None
        self._value = 0.0
        self._file: _ValuesFile | None = None
        self._index = 0  # of the value in the file's doubles

    def _start(self) -> None:
        """(Re)start in this process's file (first use, or first use after a fork)."""
        self._file = file = _values_file(self._prefix)
        pos = file.position(self._key)
        self._index = pos >> 3
        self._value = file.value(pos)
        self._gen = _gen

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` and write the new value."""
        lock = _values_lock  # acquire()/release(), not ``with``: one bound method less
        lock.acquire()
        try:
            if self._gen is not _gen:
                self._start()
            self._value = value = self._value + amount
            self._file.doubles[self._index] = value  # type: ignore[union-attr]
        finally:
            lock.release()

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        self.inc(-amount)


class FastHistogram:
    """A histogram child of this process: ``observe(amount, exemplar)``, the exemplar stored in
    this process's exemplar file (prometheus_client's multiprocess values drop exemplars)."""

    __slots__ = (
        "_bounds", "_counts", "_exemplars", "_file", "_gen", "_help", "_indexes", "_labels",
        "_metric", "_sum", "_sum_index",
    )  # fmt: skip

    def __init__(
        self,
        metric: str,
        help_text: str,
        labels: dict[str, str],
        buckets: Sequence[float],
        exemplars: bool,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        # The file keys are built when the series starts in a process, not kept: they would
        # cost about 3 KB of memory per series.
        self._metric, self._help, self._labels = metric, help_text, labels
        self._exemplars = (
            ExemplarHistogram(None, metric, list(labels), list(labels.values()), bounds)
            if exemplars
            else None
        )
        self._gen: object = None
        self._file: _ValuesFile | None = None
        self._sum = 0.0
        self._sum_index = 0  # of the sum in the file's doubles; _indexes: of the buckets
        self._counts = [0.0] * len(bounds)
        self._indexes = [0] * len(bounds)

    def _start(self) -> None:
        self._file = file = _values_file("histogram")
        metric, help_text, labels = self._metric, self._help, self._labels
        sum_pos = file.position(_mmap_key(metric, metric + "_sum", labels, help_text))
        positions = [
            file.position(
                _mmap_key(metric, metric + "_bucket", {**labels, "le": _le(b)}, help_text)
            )
            for b in self._bounds
        ]
        self._sum = file.value(sum_pos)
        self._counts = [file.value(pos) for pos in positions]
        self._sum_index = sum_pos >> 3
        self._indexes = [pos >> 3 for pos in positions]
        self._gen = _gen

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Count ``amount`` in its bucket and the sum; store the exemplar, if any."""
        lock = _values_lock
        lock.acquire()
        try:
            self._write(amount)
        finally:
            lock.release()
        if exemplar and self._exemplars is not None:
            trace_id = exemplar.get("trace_id")
            if trace_id:
                self._exemplars.record(amount, trace_id)

    def _write(self, amount: float) -> None:
        """The sum and ``amount``'s bucket, written to the file. Under _values_lock."""
        i = bisect_left(self._bounds, amount)
        if self._gen is not _gen:
            self._start()
        doubles = self._file.doubles  # type: ignore[union-attr]
        self._sum = doubles[self._sum_index] = self._sum + amount
        counts = self._counts
        counts[i] = doubles[self._indexes[i]] = counts[i] + 1.0


class FastSeries:
    """What the end of a request writes for one (method, route, status) in this process's
    files, under one lock: the in-flight gauge's -1, the duration (its exemplar kept in the
    exemplar file) and the response size: one call, where there were six."""

    __slots__ = ("_active", "_duration", "_response")

    def __init__(
        self, active: FastValue, duration: FastHistogram, response: FastHistogram | None
    ) -> None:
        self._active = active
        self._duration = duration
        self._response = response

    def record(self, duration: float, response_bytes: float, trace_id: str | None) -> None:
        """The request's values; an error after the gauge's -1 leaves the gauge down."""
        active = self._active
        histogram = self._duration
        response = self._response
        lock = _values_lock
        lock.acquire()
        try:
            # FastValue.inc()'s write, written out: a shared method measured 2.5k instructions
            # more per request (two calls more), so the three lines stay here.
            if active._gen is not _gen:
                active._start()
            active._value = active._file.doubles[active._index] = active._value - 1.0  # type: ignore[union-attr]
            histogram._write(duration)
            if response is not None:
                response._write(response_bytes)
        finally:
            lock.release()
        if trace_id and histogram._exemplars is not None:
            histogram._exemplars.record(duration, trace_id)


def gauge_value(metric: str, labels: dict[str, str], help_text: str) -> FastValue:
    """A ``livesum`` gauge's value of this process (the in-flight requests)."""
    return FastValue("gauge_livesum", _mmap_key(metric, metric, labels, help_text))


def counter_value(metric: str, labels: dict[str, str], help_text: str) -> FastValue:
    """A counter's value of this process; ``metric`` without ``_total``."""
    return FastValue("counter", _mmap_key(metric, metric + "_total", labels, help_text))


_fast: bool | None = None


def fast_path() -> bool:
    """True when pyobs writes its own request series in multiprocess mode (checked once)."""
    global _fast
    if _fast is None:
        path = directory()
        # The files hold little-endian doubles, which pyobs writes as native ones.
        _fast = (
            sys.byteorder == "little"
            and path is not None
            and file_backed()
            and _format_checked(path)
        )
    return _fast


# === exemplars: the scrape ================================================================

ExemplarKey = tuple[str, tuple[tuple[str, str], ...], str]  # sample, labels without le, le
Found = tuple[float, str, float]  # timestamp, trace id, value


def read_exemplar_file(path: str | os.PathLike[str]) -> Iterator[tuple[ExemplarKey, Found]]:
    """Every stored exemplar of one file (torn or empty slots skipped)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        magic, used = _HEAD.unpack(head)
        if magic != _MAGIC:
            return
        data = head + handle.read(max(0, used - _HEAD.size))
    pos = _HEAD.size
    end = min(used, len(data))
    while pos + _ENTRY.size <= end:
        length, slots = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        sample, labels, les = json.loads(data[pos : pos + length])
        pos += length + (-length) % 8
        series = tuple(sorted(labels.items()))
        for i in range(min(slots, len(les))):
            at = pos + i * SLOT_SIZE
            if at + SLOT_SIZE > end:
                return
            stamp, trace_id, value, again = _SLOT.unpack_from(data, at)
            if stamp <= 0 or again != stamp:
                continue  # empty, or caught mid-write
            yield (sample, series, les[i]), (stamp, trace_id.rstrip(b"\0").decode(), value)
        pos += slots * SLOT_SIZE


def merge_exemplars(paths: Iterable[str | os.PathLike[str]]) -> dict[ExemplarKey, Found]:
    """Per bucket, the newest exemplar across the files (a file that vanished is skipped)."""
    newest: dict[ExemplarKey, Found] = {}
    for path in paths:
        try:
            entries = (
                _archived_exemplars(path)
                if os.path.basename(path) == EXEMPLAR_ARCHIVE
                else read_exemplar_file(path)
            )
            for key, found in entries:
                known = newest.get(key)
                if known is None or found[0] > known[0]:
                    newest[key] = found
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            _log.warning("pyobs: unreadable exemplar file %s skipped: %s", path, exc)
    return newest


_exemplar_archive: tuple[tuple[Any, ...], list[tuple[ExemplarKey, Found]]] | None = None


def _archived_exemplars(path: str | os.PathLike[str]) -> list[tuple[ExemplarKey, Found]]:
    """The exemplar archive's entries, read again only when compaction replaced the file."""
    global _exemplar_archive
    info = os.stat(path)
    stamp = (os.fspath(path), info.st_ino, info.st_mtime_ns, info.st_size)
    cached = _exemplar_archive
    if cached is None or cached[0] != stamp:
        cached = _exemplar_archive = (stamp, list(read_exemplar_file(path)))
    return cached[1]


def _exemplar_bytes(exemplars: dict[ExemplarKey, Found]) -> bytes:
    """A whole exemplar file (the archive) holding ``exemplars``."""
    series: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Found]] = {}
    for (sample, labels, le), found in exemplars.items():
        series.setdefault((sample, labels), {})[le] = found
    parts = [b""]
    for (sample, labels), by_le in series.items():
        les = sorted(by_le, key=float)
        key = json.dumps([sample, dict(labels), les], sort_keys=True, separators=(",", ":"))
        raw = key.encode()
        parts.append(_ENTRY.pack(len(raw), len(les)) + raw + b"\0" * ((-len(raw)) % 8))
        for le in les:
            stamp, trace_id, value = by_le[le]
            parts.append(_SLOT.pack(stamp, trace_id.encode(), value, stamp))
    body = b"".join(parts)
    return _HEAD.pack(_MAGIC, _HEAD.size + len(body)) + body


def attach_exemplars(metrics: Iterable[Any], exemplars: dict[ExemplarKey, Found]) -> None:
    """Put each stored exemplar on its ``_bucket`` sample of the merged metrics."""
    if not exemplars:
        return
    from prometheus_client.samples import Exemplar

    for metric in metrics:
        if metric.type != "histogram":
            continue
        samples = metric.samples
        for i, sample in enumerate(samples):
            if not sample.name.endswith("_bucket"):
                continue
            labels = sample.labels
            le = labels.get("le")
            series = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            found = exemplars.get((sample.name, series, le))
            if found is not None:
                stamp, trace_id, value = found
                samples[i] = sample._replace(
                    exemplar=Exemplar({"trace_id": trace_id}, value, stamp)
                )


# === the scrape ===========================================================================


@contextlib.contextmanager
def _flock(path: str, exclusive: bool, wait: float | None) -> Iterator[bool]:
    """Hold the directory's compaction lock; yields False when it could not be had in time.

    ``wait=None`` blocks; otherwise the lock is tried until ``wait`` seconds have passed.
    """
    with _fork_guard:  # see _lock_fds: no fork between the open and the bookkeeping
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        _lock_fds.add(fd)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if wait is None:
            fcntl.flock(fd, mode)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.01)
        yield True
    finally:
        with _fork_guard:
            _lock_fds.discard(fd)
            os.close(fd)  # releases the lock


# A flock belongs to the open file, which a fork shares: a child forked while another thread
# holds the lock (a scrape on the metrics port of a Celery worker or gunicorn master that
# forks pool processes) would keep it held for its whole life, and every later scrape would
# wait forever. The child closes its copies at once. A fork is held back while a thread opens
# or closes such a file (_fork_guard): forked between ``os.open`` (which releases the GIL) and
# the bookkeeping, the child would keep a copy nobody knows of, and the lock taken next on
# the shared open file would outlive the parent's close.
_lock_fds: set[int] = set()
_fork_guard = threading.Lock()


def _close_inherited_locks() -> None:
    _fork_guard.release()
    for fd in list(_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _lock_fds.clear()


os.register_at_fork(
    before=_fork_guard.acquire,
    after_in_parent=_fork_guard.release,
    after_in_child=_close_inherited_locks,
)


class MultiprocessCollector:
    """Every process's values (prometheus_client's merge), archives and exemplars, in one scrape.

    At each scrape it first compacts processes that are gone (when no other scrape or
    compaction holds the directory), then reads under a shared lock so that no compaction
    moves a file while it is being read.
    """

    def __init__(self, path: str, compact_dead: bool = True) -> None:
        self.path = path
        self.compact_dead = compact_dead

    def collect(self) -> Iterable[Any]:
        """The merged metric families, exemplars attached to their buckets."""
        if self.compact_dead:
            try:
                compact(self.path, wait=0.0)
            except Exception as exc:  # noqa: BLE001 - the scrape goes on uncompacted
                from pyobs import _errors

                _errors.report("exposition", exc, "multiprocess compaction")
        with _flock(self.path, exclusive=False, wait=None):
            names = os.listdir(self.path)
            absorbed = _absorbed(self.path, names)
            files = [
                os.path.join(self.path, name)
                for name in names
                if name.endswith(".db") and _DB_FILE.match(name) is not None
                and name not in absorbed
            ]  # fmt: skip
            if _format_checked(self.path):
                metrics = merge(files)
            else:  # a file format pyobs does not know: prometheus_client's own merge
                from prometheus_client.multiprocess import MultiProcessCollector

                metrics = list(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
            exemplars = merge_exemplars(
                os.path.join(self.path, n)
                for n in names
                if n.startswith(EXEMPLAR_PREFIX) and n.endswith(EXEMPLAR_SUFFIX)
            )
        attach_exemplars(metrics, exemplars)
        return [_as_counter(m) for m in metrics]


def _as_counter(metric: Any) -> Any:
    """``process_cpu_seconds_total``, kept per worker as a gauge, exposed as the counter it is
    (as in single-process mode; a gauge named ``*_total`` fails ``promtool check metrics``)."""
    if metric.type != "gauge" or not metric.name.endswith("_total"):
        return metric
    from prometheus_client.metrics_core import Metric

    counter = Metric(metric.name[: -len("_total")], metric.documentation, "counter")
    counter.samples = metric.samples
    return counter


# === merging the files ====================================================================
# prometheus_client's MultiProcessCollector.merge, with the same result (tests compare the
# two), made cheaper for a scrape that repeats: a value's key is JSON that the stock merge
# decodes again in every scrape; here each key is decoded once per process and kept with
# what the merge needs from it (labels sorted, without ``le``, the bucket bound).

_GAUGE_NO_PID = frozenset(
    {"min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"}
)
_MAX_KEYS = 200_000  # decoded keys kept; beyond it the cache starts again
_Parsed = tuple[str, str, tuple[tuple[str, str], ...], str, tuple[tuple[str, str], ...], float]
_parsed: dict[bytes, _Parsed] = {}


def _read_values(path: str) -> list[tuple[bytes, float, float]]:
    """(raw key, value, timestamp) of every entry of a prometheus_client values file."""
    with open(path, "rb") as handle:
        head = handle.read(mmap.PAGESIZE)
        if len(head) < _DB_HEAD.size:
            return []
        (used,) = _DB_HEAD.unpack_from(head)
        data = head + handle.read(used - len(head)) if used > len(head) else head
    found = []
    pos = _DB_HEAD.size
    unpack_length, unpack_value = _USED.unpack_from, _DB_VALUE.unpack_from
    while pos < used:
        (length,) = unpack_length(data, pos)
        if pos + length > used:
            raise RuntimeError(f"{path}: read beyond the used size, the file is corrupted")
        key = data[pos + 4 : pos + 4 + length]
        pos += 4 + length + 8 - (length + 4) % 8
        value, stamp = unpack_value(data, pos)
        found.append((key, value, stamp))
        pos += _DB_VALUE.size
    return found


_archives: dict[str, tuple[tuple[int, int, int], list[tuple[bytes, float, float]]]] = {}


def _archive_values(path: str) -> list[tuple[bytes, float, float]]:
    """An archive's entries, read again only when compaction replaced the file."""
    info = os.stat(path)
    stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
    cached = _archives.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    values = _read_values(path)
    _archives[path] = (stamp, values)
    return values


def _parse_key(key: bytes) -> _Parsed:
    """(metric, sample, sorted labels, help, labels without le, bucket bound or nan)."""
    found = _parsed.get(key)
    if found is None:
        metric, sample, labels, help_text = json.loads(key)
        items = tuple(sorted(labels.items()))
        le = labels.get("le")
        without = tuple(item for item in items if item[0] != "le") if le is not None else items
        found = (metric, sample, items, help_text, without, math.nan if le is None else float(le))
        if len(_parsed) >= _MAX_KEYS:
            _parsed.clear()
        _parsed[key] = found
    return found


class _MergeState:
    """What the merge has gathered so far: per metric its type, values by label set, buckets."""

    __slots__ = ("buckets", "gauges", "meta", "modes", "plain")

    def __init__(self) -> None:
        self.meta: dict[str, tuple[str, str]] = {}  # metric -> (help, type)
        self.modes: dict[str, str] = {}
        # metric -> labels -> {(sample, labels): value}, in first-seen order
        self.plain: dict[str, dict[Any, dict[Any, float]]] = {}
        self.buckets: dict[str, dict[Any, dict[float, float]]] = {}
        self.gauges: dict[str, list[tuple[str, Any, float, float]]] = {}

    def copy(self) -> _MergeState:
        """A copy the next files can be added to (the archives' state is kept for reuse)."""
        other = _MergeState()
        other.meta = dict(self.meta)
        other.modes = dict(self.modes)
        other.plain = {
            n: {k: dict(g) for k, g in groups.items()} for n, groups in self.plain.items()
        }
        other.buckets = {n: {k: dict(c) for k, c in per.items()} for n, per in self.buckets.items()}
        other.gauges = {n: list(found) for n, found in self.gauges.items()}
        return other

    def add(self, path: str) -> None:
        """Add one values file (a live gauge's file that vanished meanwhile is skipped)."""
        parts = os.path.basename(path).split("_")
        kind = parts[0]
        try:
            values = _archive_values(path) if parts[-1] == "archive.db" else _read_values(path)
        except FileNotFoundError:
            if kind == "gauge" and parts[1].startswith("live"):
                return
            raise
        pid = parts[2][:-3] if kind == "gauge" else ""
        meta, plain = self.meta, self.plain
        for key, value, stamp in values:
            name, sample, items, help_text, without, bound = _parse_key(key)
            found = meta.get(name)
            if found is None:
                found = meta[name] = (help_text, kind)
                plain[name] = {}
            if kind == "gauge":
                self.modes[name] = parts[1]
            if found[1] == "gauge":
                self.gauges.setdefault(name, []).append(
                    (sample, (*items, ("pid", pid)), value, stamp)
                )
            elif found[1] == "histogram" and bound == bound:  # a bucket (nan != nan)
                per = self.buckets.setdefault(name, {}).setdefault(without, {})
                per[bound] = per.get(bound, 0.0) + value
            else:
                group = plain[name].setdefault(items, {})
                group[(sample, items)] = group.get((sample, items), 0.0) + value

    def metrics(self) -> list[Any]:
        """The metric families: gauges by their mode, buckets made cumulative, with counts."""
        from prometheus_client.metrics_core import Metric
        from prometheus_client.samples import Sample
        from prometheus_client.utils import floatToGoString

        plain = self.plain
        for name, found in self.gauges.items():
            mode = self.modes.get(name, "all")
            groups = plain[name]
            stamps: dict[Any, float] = {}
            for sample, items, value, stamp in found:
                labels = (
                    tuple(i for i in items if i[0] != "pid") if mode in _GAUGE_NO_PID else items
                )
                group = groups.setdefault(labels, {})
                slot = (sample, labels)
                if mode in ("min", "livemin"):
                    group[slot] = min(group.get(slot, value), value)
                elif mode in ("max", "livemax"):
                    group[slot] = max(group.get(slot, value), value)
                elif mode in ("sum", "livesum"):
                    group[slot] = group.get(slot, 0.0) + value
                elif mode in ("mostrecent", "livemostrecent"):
                    if stamps.get(slot, 0.0) < float(stamp or 0):
                        group[slot] = value
                        stamps[slot] = float(stamp or 0)
                else:  # all, liveall: one series per process
                    group[slot] = value
        for name, per_series in self.buckets.items():
            groups = plain[name]
            for labels, counts in per_series.items():
                group = groups.setdefault(labels, {})
                total = 0.0
                for bound in sorted(counts):
                    total += counts[bound]
                    le = (*labels, ("le", floatToGoString(bound)))  # type: ignore[no-untyped-call]
                    group[(name + "_bucket", le)] = total
                group[(name + "_count", labels)] = total
        families = []
        for name, (help_text, kind) in self.meta.items():
            metric = Metric(name, help_text, kind)
            metric.samples = [
                Sample(sample, dict(labels), value)
                for group in plain[name].values()
                for (sample, labels), value in group.items()
            ]
            families.append(metric)
        return families


_archive_state: tuple[tuple[Any, ...], _MergeState] | None = None


def merge(files: Iterable[str]) -> list[Any]:
    """Every process's values summed into metric families, as prometheus_client merges them.

    The archives are added first and what they add up to is kept until compaction replaces
    one, so a scrape after a thousand restarts costs about what one after none costs. A live
    gauge's file that vanished meanwhile is skipped; any other missing file raises, as in
    prometheus_client.
    """
    global _archive_state
    files = list(files)
    archives = sorted(f for f in files if f.endswith("_archive.db"))
    others = [f for f in files if not f.endswith("_archive.db")]
    if archives:
        stamp = tuple((f, *_stat(f)) for f in archives)
        cached = _archive_state
        if cached is None or cached[0] != stamp:
            base = _MergeState()
            for path in archives:
                base.add(path)
            cached = _archive_state = (stamp, base)
        state = cached[1].copy()
    else:
        state = _MergeState()
    for path in others:
        state.add(path)
    return state.metrics()


def _stat(path: str) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns, info.st_size


# === compaction ===========================================================================


def _read_db(path: str) -> tuple[list[tuple[bytes, float, float]], list[str]]:
    """(entries, absorbed names) of a prometheus_client file (an archive may list absorbed)."""
    return _read_values(path), _trailer(path)


def _trailer(path: str) -> list[str]:
    """The absorbed names an archive lists after its used bytes ([] for any other file)."""
    with open(path, "rb") as handle:
        head = handle.read(_DB_HEAD.size)
        if len(head) < _DB_HEAD.size:
            return []
        (used,) = _DB_HEAD.unpack(head)
        handle.seek(used)
        marker = handle.read(len(_TRAILER) + 4)
        if len(marker) < len(_TRAILER) + 4 or not marker.startswith(_TRAILER):
            return []
        (length,) = struct.unpack("<I", marker[len(_TRAILER) :])
        names = json.loads(handle.read(length))
    return [str(n) for n in names]


def _absorbed(path: str, names: Iterable[str]) -> set[str]:
    """File names some archive has absorbed: counted there, not to be read again."""
    found: set[str] = set()
    for name in names:
        match = _DB_FILE.match(name)
        if match is not None and match.group("archive"):
            with contextlib.suppress(FileNotFoundError):
                found.update(_trailer(os.path.join(path, name)))
    return found


def _db_entry(key: str | bytes, value: float, stamp: float) -> bytes:
    """One entry of a prometheus_client values file (its value is the last 16 bytes)."""
    raw = key.encode() if isinstance(key, str) else key
    pad = 8 - (len(raw) + 4) % 8  # the padding prometheus_client writes and reads
    return _USED.pack(len(raw)) + raw + b" " * pad + _DB_VALUE.pack(value, stamp)


def _db_bytes(entries: dict[Any, tuple[float, float]], absorbed: Sequence[str]) -> bytes:
    """A prometheus_client values file holding ``entries``, then pyobs's absorbed-names trailer."""
    body = b"".join(_db_entry(key, value, stamp) for key, (value, stamp) in entries.items())
    used = _DB_HEAD.size + len(body)
    names = json.dumps(list(absorbed)).encode()
    trailer = _TRAILER + struct.pack("<I", len(names)) + names
    return _DB_HEAD.pack(used) + body + trailer


def _merge_rule(
    rule: str, old: tuple[float, float], new: tuple[float, float]
) -> tuple[float, float]:
    if rule == _SUM:
        return old[0] + new[0], 0.0
    if rule == _MIN:
        return new if new[0] < old[0] else old
    if rule == _MAX:
        return new if new[0] > old[0] else old
    return new if new[1] > old[1] else old  # mostrecent: the newer timestamp wins


def _write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same directory, then rename it over ``path``."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        os.fchmod(fd, 0o644)  # as readable as prometheus_client's own files
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists (in this pid namespace)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


_format_ok: bool | None = None


def _format_checked(path: str) -> bool:
    """Once per process: prometheus_client reads a file pyobs writes exactly as meant.

    The probe is written in a temporary folder inside ``path`` (the multiprocess directory,
    which must be writable anyway).
    """
    global _format_ok
    if _format_ok is None:
        from prometheus_client.multiprocess import MultiProcessCollector

        try:
            with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=path) as scratch:
                path = os.path.join(scratch, "counter_archive.db")
                key = json.dumps(["probe", "probe_total", {"a": "b"}, "probe"], sort_keys=True)
                with open(path, "wb") as handle:
                    handle.write(_db_bytes({key: (41.5, 0.0)}, ["counter_1-dead0.db"]))
                merged = list(MultiProcessCollector.merge([path], accumulate=True))  # type: ignore[no-untyped-call]
                samples = [(s.name, s.labels, s.value) for m in merged for s in m.samples]
                # ... and pyobs reads a file prometheus_client writes.
                from prometheus_client.mmap_dict import MmapedDict

                theirs = os.path.join(scratch, "counter_1.db")
                written = MmapedDict(theirs)  # type: ignore[no-untyped-call]
                written.write_value(key, 2.5, 0.0)  # type: ignore[no-untyped-call]
                written.close()  # type: ignore[no-untyped-call]
                _format_ok = (
                    samples == [("probe_total", {"a": "b"}, 41.5)]
                    and _trailer(path) == ["counter_1-dead0.db"]
                    and _read_values(theirs) == [(key.encode(), 2.5, 0.0)]
                )
        except Exception as exc:  # noqa: BLE001 - compaction stays off, nothing is lost
            _log.warning("pyobs: multiprocess compaction is off: %s", exc)
            _format_ok = False
        if not _format_ok:
            _log.warning(
                "pyobs: this prometheus_client reads its multiprocess files differently from "
                "what pyobs expects; dead workers' files are not compacted"
            )
    return _format_ok


def compact(path: str, dead: Iterable[int] | None = None, wait: float | None = LOCK_WAIT) -> bool:
    """Merge dead processes' files into the archives; False when the lock was busy.

    ``dead``: the pids known to be gone (gunicorn's ``child_exit``); by default every pid
    whose files are there and that no longer exists. ``wait``: seconds to wait for the lock
    (``None`` blocks).
    """
    if not _format_checked(path):
        return False
    known_dead = None if dead is None else set(dead)
    with _flock(path, exclusive=True, wait=wait) as locked:
        if not locked:
            return False
        _compact_locked(path, known_dead)
    return True


MASTER_SHARE = 0.1  # at most this share of gunicorn's master's time goes to compaction
_exited: set[int] = set()  # workers that ended and are not compacted yet
_next_compaction = 0.0


def compact_exited(path: str, pid: int) -> bool:
    """gunicorn's ``child_exit``: compact the worker that ended, with any left waiting.

    After a compaction that took ``t`` seconds the next one waits ``t * (1 / MASTER_SHARE -
    1)`` seconds, so that under fast worker churn (``--max-requests``) and many series the
    master spends at most a tenth of its time compacting; the workers that end meanwhile are
    compacted together by the next one (or by a scrape). True when it compacted now.
    """
    global _next_compaction
    _exited.add(pid)
    start = time.monotonic()
    if start < _next_compaction:
        return False
    # A pid that is alive again belongs to a new process now: its files are not the old ones.
    dead = {p for p in _exited if not _alive(p)}
    done = compact(path, dead=dead)
    if done:
        _exited.clear()
    end = time.monotonic()
    _next_compaction = end + (end - start) * (1 / MASTER_SHARE - 1)
    return done


def _compact_locked(path: str, known_dead: set[int] | None) -> None:
    names = os.listdir(path)
    for name in names:  # a temporary file is never committed once its writer is gone
        if name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):  # a probe directory in use is left alone
                os.unlink(os.path.join(path, name))
    absorbed = _absorbed(path, names)
    for name in absorbed & set(names):  # committed earlier; the delete did not happen
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    names = [n for n in names if n not in absorbed and not n.startswith(TMP_PREFIX)]
    pids: dict[int, bool] = {}

    def dead(pid: int) -> bool:
        if known_dead is not None:
            return pid in known_dead
        if pid not in pids:
            pids[pid] = not _alive(pid)
        return pids[pid]

    pending: dict[str, list[str]] = {}  # prefix -> renamed dead files to merge
    exemplar_files: list[str] = []
    for name in names:
        match = _DB_FILE.match(name)
        if match is None:
            found = _EXEMPLAR_FILE.match(name)
            if found is not None and dead(int(found.group(1))):
                exemplar_files.append(name)
            continue
        prefix = match.group("prefix")
        if match.group("dead"):
            pending.setdefault(prefix, []).append(name)  # renamed before a crash
            continue
        pid = match.group("pid")
        if pid is None or not dead(int(pid)):
            continue
        source = os.path.join(path, name)
        if prefix not in _RULES:
            if prefix.startswith("gauge_"):
                # live* and all gauges: a dead process has no current value.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(source)
            continue
        renamed = f"{prefix}_{pid}-dead{uuid.uuid4().hex[:16]}.db"
        os.rename(source, os.path.join(path, renamed))
        pending.setdefault(prefix, []).append(renamed)
    for prefix, sources in pending.items():
        _merge_into_archive(path, prefix, sources)
    if exemplar_files:
        _merge_exemplars(path, exemplar_files)


def _merge_into_archive(path: str, prefix: str, sources: list[str]) -> None:
    """archive + sources -> new archive (committed by rename), then the sources are deleted."""
    rule = _RULES[prefix]
    archive = os.path.join(path, f"{prefix}_archive.db")
    merged: dict[bytes, tuple[float, float]] = {}
    still_listed: list[str] = []
    if os.path.exists(archive):
        entries, listed = _read_db(archive)
        merged = {k: (v, t) for k, v, t in entries}
        # Names absorbed before whose delete failed stay listed, or they would count again.
        still_listed = [n for n in listed if os.path.exists(os.path.join(path, n))]
    for name in sources:
        entries, _ = _read_db(os.path.join(path, name))
        for key, value, stamp in entries:
            old = merged.get(key)
            merged[key] = (value, stamp) if old is None else _merge_rule(rule, old, (value, stamp))
    _write_atomically(archive, _db_bytes(merged, [*still_listed, *sources]))
    for name in sources:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))


def _merge_exemplars(path: str, names: list[str]) -> None:
    """Dead processes' exemplars into the exemplar archive (newest per bucket wins)."""
    archive = os.path.join(path, EXEMPLAR_ARCHIVE)
    merged = merge_exemplars([archive, *(os.path.join(path, n) for n in names)])
    _write_atomically(archive, _exemplar_bytes(merged))
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))


def clear(path: str) -> None:
    """Remove every metrics file of an earlier run (gunicorn ``on_starting``)."""
    folder = Path(path)
    for stale in [
        *folder.glob("*.db"),
        *folder.glob(f"{EXEMPLAR_PREFIX}*{EXEMPLAR_SUFFIX}"),
        *folder.glob(f"{TMP_PREFIX}*"),
    ]:
        try:
            if stale.is_dir():  # a start-up check's folder left by a killed process
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            logging.getLogger("pyobs").warning(
                "pyobs: cannot remove stale metrics file %s: %s", stale, exc
            )
