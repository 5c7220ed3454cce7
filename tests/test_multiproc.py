"""Multiprocess mode without a server: exemplars across processes, dead-worker compaction.

Each "worker" is a real child process that records requests into PROMETHEUS_MULTIPROC_DIR
and exits; the test process renders the page as a scrape would. Crashes are real SIGKILLs
of a compacting process at each step of the compaction.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pyobs
from pyobs import _multiproc, exposition

ROOT = Path(__file__).resolve().parents[1]
DURATION = "http_server_request_duration_seconds"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# argv: requests, trace id prefix, duration (s), route
WORKER = textwrap.dedent(
    """
    import sys
    import pyobs
    from pyobs.metrics import get_metrics

    pyobs.setup(service_name="mp")
    m = get_metrics()
    n, prefix, seconds, route = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    for i in range(n):
        m.request_started("GET")
        m.request_finished("GET", route, 200, seconds, 10, f"{prefix}{i:0{32 - len(prefix)}x}")
    m.log_event("info")
    """
)

# Compacts the directory and dies by SIGKILL at the step named in argv[1].
CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pyobs import _multiproc

    step = sys.argv[1]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "renamed":  # dead files renamed, nothing merged yet
        _multiproc._merge_into_archive = die
    elif step == "written":  # the new archive written to its temporary file, not committed
        os.replace = die
    elif step == "committed":  # the archive renamed into place, the sources not yet deleted
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            if "-dead" in os.path.basename(path):
                die()
            return real_unlink(path, *args, **kwargs)

        os.unlink = unlink
    _multiproc.compact(os.environ["PROMETHEUS_MULTIPROC_DIR"], wait=None)
    """
)


@pytest.fixture
def mpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PROMETHEUS_MULTIPROC_DIR, set for this process's scrapes."""
    path = tmp_path / "metrics"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


def _run(script: str, *args: str, check: bool = True) -> int:
    """Run a child process with the multiprocess directory; its exit status."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.returncode


def _worker(n: int, prefix: str = "a", seconds: float = 0.003, route: str = "/x") -> None:
    _run(WORKER, str(n), prefix, str(seconds), route)


def _page(accept: str | None = OPENMETRICS, compact: bool = True) -> dict[str, Any]:
    """name -> total, plus (le -> exemplar trace id) of the duration buckets, from one scrape.

    ``compact=False`` reads the directory as it is, without compacting dead workers first.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    if compact:
        status, _, body = exposition.render(pyobs.setup(service_name="mp"), accept, None)
        assert status == 200
    else:
        registry = CollectorRegistry()
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        registry.register(_multiproc.MultiprocessCollector(path, compact_dead=False))
        body = generate_latest(registry)  # type: ignore[no-untyped-call]
    totals: dict[str, Any] = {"exemplars": {}}
    if accept is None:
        from prometheus_client.parser import text_string_to_metric_families as parse
    else:
        parse = text_string_to_metric_families
    for family in parse(body.decode()):
        for s in family.samples:
            if s.name in (f"{DURATION}_count", f"{DURATION}_sum", "pyobs_log_events_total"):
                totals[s.name] = totals.get(s.name, 0) + s.value
            if s.name == f"{DURATION}_bucket" and s.exemplar is not None:
                totals["exemplars"][s.labels["le"]] = s.exemplar.labels["trace_id"]
    return totals


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_exemplars_newest_per_bucket_across_processes(mpdir: Path) -> None:
    """Two processes' exemplars: per bucket, the one recorded last wins; buckets stay apart."""
    _worker(3, "a")  # bucket 0.005
    _worker(2, "b")  # bucket 0.005, later
    _worker(1, "c", seconds=0.3)  # bucket 0.5
    exemplars = _page()["exemplars"]
    assert exemplars == {"0.005": "b" + "0" * 30 + "1", "0.5": "c" + "0" * 31}


def test_exemplar_caught_mid_write_is_skipped(mpdir: Path) -> None:
    """A slot whose two timestamps differ (a copy in progress) is left out, the others stay."""
    _worker(1, "a", seconds=0.003)
    _worker(1, "b", seconds=0.3)
    assert _multiproc.compact(str(mpdir), wait=None)
    path = mpdir / _multiproc.EXEMPLAR_ARCHIVE
    assert sorted(key[2] for key, _ in _multiproc.read_exemplar_file(path)) == ["0.005", "0.5"]
    data = bytearray(path.read_bytes())
    at = data.index(b"b" + b"0" * 31) + 32 + 8  # the 0.5 slot's second timestamp
    data[at : at + 8] = struct.pack("<d", 1.0)
    path.write_bytes(bytes(data))
    assert [key[2] for key, _ in _multiproc.read_exemplar_file(path)] == ["0.005"]
    assert _page()["exemplars"] == {"0.005": "a" + "0" * 31}


def test_text_format_pages_carry_no_exemplars(mpdir: Path) -> None:
    """Exemplars need OpenMetrics: the classic text page has none, the OpenMetrics one has."""
    _worker(2, "a")
    assert _page(accept=None)["exemplars"] == {}
    assert _page()["exemplars"] == {"0.005": "a" + "0" * 30 + "1"}


def _per_process(path: Path) -> list[str]:
    """Files that belong to one process (named by its pid) or to a compaction in progress."""
    return [n for n in _files(path) if re.search(r"_\d+(-dead[0-9a-f]+)?\.(db|bin)$", n)]


def test_dead_workers_are_compacted_exactly(mpdir: Path) -> None:
    """20 short-lived workers: the totals stay exact and the directory does not grow."""
    sizes = []
    for i in range(20):
        _worker(i + 1, f"{i:02x}")
        page = _page()
        assert page[f"{DURATION}_count"] == (i + 1) * (i + 2) // 2
        assert page["pyobs_log_events_total"] == i + 1
        sizes.append(len(_files(mpdir)))
        assert _per_process(mpdir) == []  # archives only: nothing per dead worker
    assert sizes == [sizes[0]] * 20
    assert _page()["exemplars"] == {"0.005": "13" + "0" * 28 + "13"}


@pytest.mark.parametrize("step", ["renamed", "written", "committed"])
def test_compaction_killed_midway_loses_and_doubles_nothing(mpdir: Path, step: str) -> None:
    """SIGKILL at each compaction step: the leftovers read exactly, and the next compaction
    finishes the job without counting anything twice."""
    _worker(5, "a")
    _page()  # compacts the first worker: an archive exists
    _worker(7, "b")
    _worker(11, "c")
    assert _run(CRASHER, step, check=False) == -9
    names = _files(mpdir)
    dead = [n for n in names if "-dead" in n]
    assert len(dead) >= 2  # the crash left renamed files behind
    assert any(n.startswith(_multiproc.TMP_PREFIX) for n in names) == (step == "written")
    archived = _multiproc._absorbed(str(mpdir), names)
    assert bool(set(dead) & archived) == (step == "committed")
    assert _page(compact=False)[f"{DURATION}_count"] == 23  # the leftovers read right
    assert _page()[f"{DURATION}_count"] == 23  # compacted now
    assert _per_process(mpdir) == []
    assert not [n for n in _files(mpdir) if n.startswith(_multiproc.TMP_PREFIX)]
    assert _page(compact=False)[f"{DURATION}_count"] == 23


def test_new_process_with_a_dead_ones_pid_starts_fresh(mpdir: Path) -> None:
    """A compacted worker's pid used again (pid reuse): the new process's files count once
    beside the archive, never mistaken for the absorbed ones."""
    _worker(4, "a")
    before = {n for n in _files(mpdir) if n.endswith(".db")}
    _page()
    _worker(6, "b")
    new = {n for n in _files(mpdir) if n.endswith(".db") and re.search(r"_\d+\.db$", n)}
    old_pid = next(re.search(r"_(\d+)\.db$", n) for n in before if n.startswith("histogram"))
    assert old_pid is not None
    for name in new:  # the second worker's files under the first one's pid
        renamed = re.sub(r"_\d+\.db$", f"_{old_pid.group(1)}.db", name)
        (mpdir / name).rename(mpdir / renamed)
    assert _page(compact=False)[f"{DURATION}_count"] == 10
    assert _page()[f"{DURATION}_count"] == 10
