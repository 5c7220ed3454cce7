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
    return [n for n in _files(path) if re.search(r"_\d+(-dead[0-9a-f]+|-pyobs)?\.(db|bin)$", n)]


@pytest.mark.slow
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
    own = re.compile(r"_(\d+)((?:-pyobs)?\.db)$")
    _worker(4, "a")
    [old_pid] = {m.group(1) for n in _files(mpdir) if (m := own.search(n))}
    _page()
    assert _per_process(mpdir) == []
    _worker(6, "b")
    for name in _files(mpdir):  # the second worker's files under the first one's pid
        if own.search(name):
            (mpdir / name).rename(mpdir / own.sub(rf"_{old_pid}\2", name))
    pids = {m.group(1) for n in _files(mpdir) if (m := own.search(n))}
    assert pids == {old_pid}
    assert _page(compact=False)[f"{DURATION}_count"] == 10
    assert _page()[f"{DURATION}_count"] == 10


# Records a varied mix through pyobs's instruments; argv[1] "public" turns the fast path off,
# an argv[2] "off" the body-size histograms.
MIX = textwrap.dedent(
    """
    import sys
    from pyobs import _multiproc
    if sys.argv[1] == "public":
        _multiproc._fast = False
    import pyobs
    from pyobs.metrics import get_metrics

    bodies = sys.argv[2:] != ["off"]
    pyobs.setup(service_name="mp", metrics_labels={"region": "eu"}, body_size_metrics=bodies)
    m = get_metrics()
    for i, seconds in enumerate([0.0, 0.004, 0.005, 0.3, 7.5, 11.0, 1e9, 0.02]):
        for status in (200, 404, 500):
            m.request_started("POST")
            m.request_body("POST", f"/r/{i % 3}", i * 1000)
            m.request_finished("POST", f"/r/{i % 3}", status, seconds, i * 10**i, f"{i:032x}")
    m.request_started("GET")  # one still in flight
    for level in ("info", "info", "error"):
        m.log_event(level)
    print(_multiproc.fast_path())
    """
)


def _family_samples(path: Path) -> list[Any]:
    """pyobs's request families in a directory: (name, labels, value, exemplar labels/value)."""
    collector = _multiproc.MultiprocessCollector(str(path), compact_dead=False)
    return sorted(
        (
            s.name,
            sorted(s.labels.items()),
            s.value,
            s.exemplar and (s.exemplar.labels, s.exemplar.value),
        )
        for family in collector.collect()
        if family.name.startswith(("http_server_", "pyobs_log_events"))
        for s in family.samples
    )


def _samples_both_ways(tmp_path: Path, script: str, *args: str) -> dict[str, list[Any]]:
    """``script`` run with pyobs's own multiprocess writes ("fast") and with the public API
    ("public"), each in its own directory: the request families' samples of each."""
    results = {}
    for mode in ("fast", "public"):
        directory = tmp_path / mode
        directory.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", script, mode, *args],
            env={**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(directory)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-1] == str(mode == "fast")  # after any access lines
        names = [p.name for p in directory.iterdir()]
        assert any(n.endswith("-pyobs.db") for n in names) == (mode == "fast")
        results[mode] = _family_samples(directory)
    return results


@pytest.mark.parametrize("bodies", ["on", "off"])
def test_fast_path_records_what_the_public_api_records(tmp_path: Path, bodies: str) -> None:
    """pyobs's own multiprocess writes give the very samples (and exemplars) prometheus_client's
    public API gives for the same requests, body-size histograms on and off."""
    results = _samples_both_ways(tmp_path, MIX, bodies)
    assert results["fast"] == results["public"]
    assert len(results["fast"]) > 100
    sizes = any(name.startswith("http_server_response_body") for name, *_ in results["fast"])
    assert sizes == (bodies == "on")


# Requests through pyobs's WSGI middleware (the request paths of a real app, not the metrics
# API); argv[1] "public" turns the fast path off, argv[2] "full" adds the span and access log.
WSGI_REQUESTS = textwrap.dedent(
    """
    import sys
    from pyobs import _multiproc
    if sys.argv[1] == "public":
        _multiproc._fast = False
    import pyobs
    from pyobs.wsgi import ObservabilityMiddleware

    full = sys.argv[2] == "full"
    pyobs.setup(service_name="mp", tracing=full, access_log=full)
    STATUS = {"/a": "200 OK", "/b": "404 Not Found", "/c": "500 Internal Server Error"}

    def app(environ, start_response):
        start_response(STATUS[environ["PATH_INFO"]], [("Content-Type", "text/plain")])
        return [b"x" * (100 * len(environ["QUERY_STRING"])), b"y"]

    wrapped = ObservabilityMiddleware(app, route_resolver=lambda environ: environ["PATH_INFO"])
    for i in range(30):
        environ = {
            "REQUEST_METHOD": "POST" if i % 2 else "GET", "PATH_INFO": ("/a", "/b", "/c")[i % 3],
            "QUERY_STRING": "q" * (i % 7), "CONTENT_LENGTH": str(10 * i) if i % 4 == 0 else "",
            "SERVER_NAME": "x", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
        }
        body = wrapped(environ, lambda status, headers, *rest: None)
        for chunk in body:
            pass
        body.close()
    print(_multiproc.fast_path())
    """
)


@pytest.mark.parametrize("config", ["metrics-only", "full"])
def test_requests_record_through_the_fast_path_what_the_public_api_records(
    tmp_path: Path, config: str
) -> None:
    """Requests through the WSGI middleware, metrics-only (its own shorter path) and full,
    leave the same samples in the files with pyobs's own writes as with prometheus_client's
    public API: counts, response and request sizes, the in-flight gauge back at 0 (durations
    by count only, their values being times; exemplars apart, their trace ids random)."""
    results = {
        mode: [
            (name, labels, value)
            for name, labels, value, _ in samples
            if not name.startswith((f"{DURATION}_bucket", f"{DURATION}_sum"))
        ]
        for mode, samples in _samples_both_ways(tmp_path, WSGI_REQUESTS, config).items()
    }
    assert results["fast"] == results["public"]
    sizes = {
        (dict(labels)["http_route"], dict(labels)["http_request_method"]): value
        for name, labels, value in results["fast"]
        if name == "http_server_response_body_size_bytes_sum"
    }
    assert sizes[("/a", "GET")] == sum(100 * (i % 7) + 1 for i in range(0, 30, 6))
    active = [v for name, _, v in results["fast"] if name == "http_server_active_requests"]
    assert active and set(active) == {0.0}


# Every kind of value prometheus_client keeps in multiprocess mode, from the public API.
KINDS = textwrap.dedent(
    """
    import sys, time
    from prometheus_client import Counter, Gauge, Histogram, Summary

    n = int(sys.argv[1])
    Counter("c", "a counter", ["k"]).labels("x").inc(n)
    Summary("s", "a summary").observe(n / 10)
    Histogram("h", "a histogram", ["k"], buckets=(1, 5)).labels(str(n % 2)).observe(n)
    for mode in ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
                 "mostrecent", "livemostrecent"):
        Gauge(f"g_{mode}", "a gauge", ["k"], multiprocess_mode=mode).labels("y").set(n * 1.5)
        time.sleep(0.001)
    """
)


def test_merge_equals_prometheus_clients(mpdir: Path) -> None:
    """pyobs's merge gives prometheus_client's MultiProcessCollector.merge result, in order."""
    from prometheus_client.multiprocess import MultiProcessCollector

    for n in (3, 8, 5):
        _run(KINDS, str(n))
    _run(MIX, "fast")
    _run(MIX, "public")
    files = [str(p) for p in mpdir.iterdir() if p.suffix == ".db"]
    theirs = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    for _ in range(2):  # the second time from the cache of decoded keys
        ours = _multiproc.merge(files)
        assert [(m.name, m.type, m.documentation, m.samples) for m in ours] == [
            (m.name, m.type, m.documentation, m.samples) for m in theirs
        ]
    assert {m.type for m in ours} == {"counter", "summary", "histogram", "gauge"}
    # Once the (dead) workers are compacted: the archives, read first, merge the same way.
    assert _multiproc.compact(str(mpdir), wait=None)
    files = sorted(
        (str(p) for p in mpdir.iterdir() if p.suffix == ".db"),
        key=lambda f: (not f.endswith("_archive.db"), f),
    )
    assert any(f.endswith("histogram_archive.db") for f in files)
    theirs = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    for _ in range(2):  # the second time from the archives' kept state
        ours = _multiproc.merge(files)
        assert [(m.name, m.type, m.documentation, m.samples) for m in ours] == [
            (m.name, m.type, m.documentation, m.samples) for m in theirs
        ]


def test_unknown_file_format_falls_back_to_prometheus_client(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the start-up check finds a file format pyobs does not know, pyobs writes nothing
    itself, compacts nothing and lets prometheus_client merge: the counts stay exact."""
    monkeypatch.setattr(_multiproc, "_format_ok", False)
    _run(MIX.replace("_multiproc._fast = False", "_multiproc._format_ok = False"), "public")
    _worker(3, "a")  # with the fast path
    page = _page()
    assert page[f"{DURATION}_count"] == 3 * 8 + 3
    assert not [n for n in _files(mpdir) if "archive" in n]
    assert _multiproc.compact(str(mpdir)) is False


def test_process_reusing_a_dead_ones_pid_continues_its_files(mpdir: Path) -> None:
    """A new process that gets a dead worker's pid before its files were compacted counts on
    from that worker's values (as prometheus_client does), losing none of them."""
    _worker(4, "a")
    [old_pid] = {m.group(1) for n in _files(mpdir) if (m := re.search(r"_(\d+)-pyobs\.db$", n))}
    # The next process writes its own series under the dead worker's pid.
    reuse = f"import os\nos.getpid = lambda: {old_pid}\n" + WORKER
    _run(reuse, "6", "b", "0.003", "/x")
    assert _page(compact=False)[f"{DURATION}_count"] == 10
    assert _page()[f"{DURATION}_count"] == 10


def test_continued_file_of_an_odd_size_still_counts(mpdir: Path) -> None:
    """A dead worker's file whose size is not whole 8-byte values (cut or padded by something
    else) is continued by the process that reuses its pid, without losing a request."""
    _worker(4, "a")
    [old_pid] = {m.group(1) for n in _files(mpdir) if (m := re.search(r"_(\d+)-pyobs\.db$", n))}
    for name in _files(mpdir):
        if name.endswith(f"_{old_pid}-pyobs.db"):
            with open(mpdir / name, "ab") as handle:
                handle.write(b"\0\0\0")
    reuse = f"import os\nos.getpid = lambda: {old_pid}\n" + WORKER
    _run(reuse, "6", "b", "0.003", "/x")
    assert _page()[f"{DURATION}_count"] == 10


def test_child_exit_batches_compaction_under_fast_churn(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a compaction, the next worker exit waits (the master's time is bounded);
    the following exit, or a scrape, compacts every worker that ended meanwhile, exactly."""
    pids: list[int] = []
    for n in (2, 3, 4):
        _worker(n, "a")
        found = {int(m.group(1)) for f in _files(mpdir) if (m := re.search(r"_(\d+)-pyobs", f))}
        pids += sorted(found - set(pids))
    assert len(pids) == 3
    monkeypatch.setattr(_multiproc, "_next_compaction", 0.0)
    assert _multiproc.compact_exited(str(mpdir), pids[0]) is True
    monkeypatch.setattr(_multiproc, "_next_compaction", float("inf"))  # as if it took long
    assert _multiproc.compact_exited(str(mpdir), pids[1]) is False
    assert len(_per_process(mpdir)) > 0  # the second and third workers wait
    assert _page(compact=False)[f"{DURATION}_count"] == 9
    monkeypatch.setattr(_multiproc, "_next_compaction", 0.0)
    assert _multiproc.compact_exited(str(mpdir), pids[2]) is True
    assert _per_process(mpdir) == []
    assert _page()[f"{DURATION}_count"] == 9


def test_child_exit_survives_a_scrape_removing_a_dead_workers_gauge_first(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's scrape compacts workers that ended and drops their live gauges; when it
    does so between prometheus_client's listing and removal in ``mark_process_dead``, the
    removal fails. gunicorn's master re-raises an OSError from ``child_exit`` and stops
    serving (CI saw the port refuse connections under ``--max-requests 5``). The hook must
    return, with the dead worker's gauges gone and its counts compacted."""
    import glob as globmodule
    from types import SimpleNamespace

    from pyobs import gunicorn

    _worker(3, "a")
    [pid] = {int(m.group(1)) for f in _files(mpdir) if (m := re.search(r"_(\d+)-pyobs", f))}
    live = [mpdir / f"gauge_livesum_{pid}.db", mpdir / f"gauge_liveall_{pid}.db"]
    for path in live:
        path.write_bytes(b"")
    real_glob = globmodule.glob

    def glob_then_scrape_removes(pattern: str, **kwargs: Any) -> list[str]:
        found = real_glob(pattern, **kwargs)
        for name in found:  # the scrape in another worker wins the race
            os.unlink(name)
        return found

    monkeypatch.setattr(globmodule, "glob", glob_then_scrape_removes)  # the module it calls
    monkeypatch.setattr(_multiproc, "_next_compaction", 0.0)
    gunicorn.child_exit(None, SimpleNamespace(pid=pid))
    assert not any(path.exists() for path in live)
    assert _per_process(mpdir) == []  # compacted in the same call
    assert _page()[f"{DURATION}_count"] == 3
