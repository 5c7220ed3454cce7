"""gunicorn hooks for multiprocess metrics. In ``gunicorn.conf.py``::

    from pyobs.gunicorn import child_exit, on_starting, post_fork  # noqa: F401

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker's counts then add up in one scrape, each
worker's ``process_*`` values are kept fresh, and a dead worker's live gauges (in-flight
requests, open WebSockets, its process metrics) are removed instead of lingering.
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
    """Master start: clear metric files a previous run left in PROMETHEUS_MULTIPROC_DIR."""
    directory = _multiproc_dir()
    if directory is None:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        try:
            stale.unlink()
        except OSError as exc:
            _log.warning("pyobs: cannot remove stale metrics file %s: %s", stale, exc)


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker: start its process-metrics sampler.

    State created in the master by ``--preload`` (the Logstash shipper, the span processor
    threads, the metric files) re-initialises itself in the child through ``os.register_at_fork``.
    """
    from pyobs import exposition

    exposition.start_process_sampler()


def child_exit(server: Any, worker: Any) -> None:
    """A worker ended (exit, crash or kill): drop its live gauges from the aggregate."""
    if _multiproc_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
