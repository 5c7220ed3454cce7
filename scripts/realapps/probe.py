"""Loaded as ``sitecustomize`` into a real app's test run: counts log records, applies pyobs.

Every record that a handler takes is noted (one JSON line per record in the file named by
``REALAPPS_RECORDS``): its logger, its level, the kind of handler (``output`` for a handler
that writes somewhere, ``capture`` for pytest's capture handlers), and whether that same
record object was already written by another output handler (a line written twice). pyobs's
direct access-log writer is noted too. Nothing here changes what the app logs.

With ``REALAPPS_PYOBS=1`` the app is instrumented the documented way, through a hook that
runs once the module named in ``REALAPPS_HOOK_MODULE`` is imported (``module:function`` of
run.py's table).
"""

from __future__ import annotations

import atexit
import importlib
import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
from typing import Any

_PATH = os.environ.get("REALAPPS_RECORDS")
_lock = threading.Lock()


def _note(kind: str, handler: str, name: str, level: str, twice: bool) -> None:
    if not _PATH:
        return
    line = json.dumps({"kind": kind, "handler": handler, "logger": name, "level": level,
                       "twice": twice})  # fmt: skip
    with _lock, open(_PATH, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _kind(handler: logging.Handler) -> str | None:
    module = type(handler).__module__
    if module.startswith("_pytest."):
        return "capture"
    if isinstance(handler, logging.NullHandler):
        return None
    return "output"


_handle = logging.Handler.handle


def _counting_handle(self: logging.Handler, record: logging.LogRecord) -> Any:
    result = _handle(self, record)
    if result:
        kind = _kind(self)
        if kind is not None:
            twice = False
            if kind == "output":
                # On the record itself (an id() can be reused once a record is gone); the
                # leading underscore keeps it out of every formatter's fields.
                twice = record.__dict__.get("_realapps_written", False)
                record.__dict__["_realapps_written"] = True
            elif record.__dict__.get("_realapps_captured"):
                return result  # pytest hands a record to two or three capture handlers
            else:
                record.__dict__["_realapps_captured"] = True
            _note(kind, type(self).__name__, record.name, record.levelname.lower(), twice)
    return result


logging.Handler.handle = _counting_handle  # type: ignore[method-assign]


def _count_direct_writes() -> None:
    """pyobs's access-log fast path writes without Handler.handle: note those lines too."""
    try:
        from pyobs import logs
    except ImportError:
        return
    write_line = logs.StdoutHandler.write_line

    def counting(self: Any, line: str, level: str) -> None:
        write_line(self, line, level)
        _note("output", "StdoutHandler(direct)", "pyobs.access", level, False)

    logs.StdoutHandler.write_line = counting  # type: ignore[method-assign]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``hook(module)`` right after ``target`` is imported."""

    def __init__(self, target: str, hook: Any) -> None:
        self.target, self.hook = target, hook

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        loader, hook = spec.loader, self.hook

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                hook(module)

        spec.loader = Loader()
        return spec


def _observed_requests() -> None:
    """At exit: how many requests pyobs observed (its duration histogram's count)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "http_server_request_duration_seconds":
            total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    _note("observed", str(int(total)), "pyobs", "", False)


if os.environ.get("REALAPPS_PYOBS") == "1":
    atexit.register(_observed_requests)
    _count_direct_writes()
    target, _, function = os.environ["REALAPPS_HOOK"].partition(":")
    hooks = importlib.import_module("realapps_hooks")
    sys.meta_path.insert(0, _AfterImport(target, getattr(hooks, function)))
