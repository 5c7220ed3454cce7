"""gunicorn hooks for multiprocess metrics. In ``gunicorn.conf.py``::

    from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa: F401

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker's counts then add up in one scrape, each
worker's ``process_*`` values are kept fresh, a dead worker's live gauges (in-flight
requests, open WebSockets, its process metrics) are removed instead of lingering, and its
counters, histograms and exemplars are compacted into archive files. With
``--preload`` and ``PYOBS_METRICS_PORT`` but no multiprocess directory, ``on_starting`` stops
gunicorn with the fix: the master would serve a page without any worker's requests.
``worker_exit`` (optional: add it to the import) exports a worker's queued spans, within
``OTEL_BSP_EXPORT_TIMEOUT``, when it ends however it ends (what is left is counted).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

_log = logging.getLogger("pyobs")


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def on_starting(server: Any) -> None:
    """Master start: refuse a metrics port nobody's requests reach; clear stale metric files.

    Stale files are those a previous run left in PROMETHEUS_MULTIPROC_DIR.
    """
    _check_preloaded_metrics_port()
    directory = _multiproc_dir()
    if directory is None:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    from pyobs import _multiproc

    _multiproc.clear(directory)


def _check_preloaded_metrics_port() -> None:
    """With ``--preload`` the master runs ``setup()`` and so holds PYOBS_METRICS_PORT.

    The master handles no request; without multiprocess files its page would show none of the
    workers' requests. Fail the start with the fix instead of serving empty metrics.
    """
    from pyobs import exposition

    server = exposition.serving_in_this_process()
    if server is None or exposition.file_backed():
        return
    hint = (
        "PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported before it was: "
        "set it in the environment gunicorn starts with"
        if _multiproc_dir()
        else "set PROMETHEUS_MULTIPROC_DIR to an empty directory every worker can write, in "
        "the environment gunicorn starts with, so that every worker's counts add up on "
        "that page"
    )
    raise RuntimeError(
        f"pyobs: the metrics port {server.server_address[1]} is served by the gunicorn master "
        f"(the app is preloaded), which handles no requests: its page would show none of "
        f"the workers' requests. Fix: {hint}; or drop --preload."
    )


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker: start its process-metrics sampler.

    State created in the master by ``--preload`` (the Logstash shipper, the span processor
    threads, the metric files) re-initialises itself in the child through ``os.register_at_fork``.
    """
    try:
        from pyobs import exposition

        exposition.start_process_sampler()
    except Exception as exc:  # noqa: BLE001 - the worker serves without fresh process_* values
        _log.warning("pyobs: process metrics of worker %s not sampled: %s", os.getpid(), exc)


def worker_exit(server: Any, worker: Any) -> None:
    """In a worker that ends: export its queued spans within the export timeout, count the rest."""
    from pyobs import _spans

    try:
        _spans.flush_all()
    except Exception as exc:  # noqa: BLE001 - the worker goes on ending
        _log.warning("pyobs: flushing the spans of worker %s failed: %s", os.getpid(), exc)


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended (exit, crash or kill): drop its live gauges, compact the rest.

    Its counters and histograms are merged exactly into the directory's archive files and
    its exemplars into the exemplar archive, so the directory does not grow with restarts
    (``--max-requests``). When a scrape holds the directory for longer than
    ``_multiproc.LOCK_WAIT`` seconds, or compaction would take more than a tenth of the
    master's time, a later exit or the next scrape compacts instead.
    """
    # gunicorn's master re-raises an OSError from this hook and stops: nothing may escape.
    try:
        directory = _multiproc_dir()
        if directory is None:
            return
        from pyobs import _multiproc

        _mark_process_dead(directory, worker.pid)
        _multiproc.compact_exited(directory, worker.pid)
    except Exception as exc:  # noqa: BLE001 - the master goes on; the next scrape retries
        _log.warning("pyobs: compacting the metrics files of worker %s failed: %s", worker.pid, exc)


def _mark_process_dead(directory: str, pid: int) -> None:
    """prometheus_client's ``mark_process_dead``, when a scrape removed a file first.

    A worker's scrape compacts the files of workers that ended, dropping their live gauges;
    when it does so between the listing and the removal in ``mark_process_dead``, the
    removal fails with FileNotFoundError (the file is gone, as wanted). Listing again sees
    only the files still there.
    """
    from prometheus_client import multiprocess

    for _ in range(3):
        try:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            return
        except FileNotFoundError:
            continue
