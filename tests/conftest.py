"""Shared test helpers: real-service gating and pyobs state isolation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.kafka_broker import Broker
    from tests.tracing_backends import Jaeger

REQUIRE_SERVICES = os.environ.get("PYOBS_REQUIRE_SERVICES", "").lower() in {"1", "true", "yes"}


# Under pytest-xdist (`-n 2 --dist loadfile`, as scripts/test.sh runs the suite) each file's
# tests go to one worker, so a module fixture (a benchmark's quick run, a Prometheus) runs
# once. Files that share a costly session service go together too: the three Elasticsearch
# nodes of tests/elk and the Kafka broker start in one worker only.
_SHARED_SERVICE_GROUPS = {
    "tests/elk/": "elasticsearch",
    "tests/test_kafka.py": "kafka",
    "tests/test_kafka_broker.py": "kafka",
    "tests/test_messaging_e2e.py": "kafka",
}


def scheduling_group(nodeid: str) -> str:
    """The unit --dist loadfile hands to one worker: the test's file, or its service group."""
    path = nodeid.split("::", 1)[0]
    return next(
        (name for prefix, name in _SHARED_SERVICE_GROUPS.items() if path.startswith(prefix)),
        path,
    )


@pytest.hookimpl(optionalhook=True)  # without pytest-xdist (scripts/compat.py's runs) unused
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """--dist loadfile, by scheduling_group (xdist's loadgroup marks do not reach the
    scheduler under pytest 9.2, whose node ids xdist 3.8 cannot rename)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFileAndService(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_group(nodeid)

    return ByFileAndService(config, log)


def require_service(available: bool, reason: str) -> None:
    """Skip when a real service or extra is missing; fail instead under PYOBS_REQUIRE_SERVICES=1."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing (PYOBS_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def run_python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter from the repository root, with no PYOBS_/OTEL_
    variables but ``env``; fails the test unless it exits 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env={**clean, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def import_or_require(module: str) -> object:
    """Import an optional framework, skipping locally and failing in CI when it is absent."""
    try:
        return __import__(module)
    except ImportError as exc:
        require_service(False, f"{module} is not installed ({exc})")
        raise  # unreachable: require_service skipped or failed


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Safety net: a process a test started and did not end is ended when the session ends.

    Each test ends its own processes (tests/helpers.py); what is still alive here is a leak,
    named on stderr so that it gets fixed.
    """
    yield
    from tests.helpers import alive, descendants

    left = [pid for pid in descendants(os.getpid()) if alive(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        sys.stderr.write(f"\npyobs tests: killed process {pid}, left running by a test\n")


@pytest.fixture(autouse=True)
def _fresh_pyobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give every test a clean pyobs: no leftover config, metrics, handlers or env."""
    for name in list(os.environ):
        if name.startswith(("PYOBS_", "OTEL_")) or name == "PROMETHEUS_MULTIPROC_DIR":
            monkeypatch.delenv(name, raising=False)
    # Tests read pyobs's JSON lines (app lines at INFO) from the captured stdout. Under pytest
    # the default (auto) adds no handler, pytest's capture handlers being on the root; the
    # defaults are tested in fresh interpreters (tests/test_logging_coexistence.py).
    monkeypatch.setenv("PYOBS_LOG_HANDLER", "always")
    monkeypatch.setenv("PYOBS_LOG_LEVEL", "info")
    try:
        from pyobs import testing
    except ImportError:
        yield
        return
    testing.reset()
    yield
    testing.reset()


@pytest.fixture(scope="session")
def jaeger() -> Iterator[Jaeger]:
    """A real Jaeger v2 (tests/tracing_backends.py) for the session; skips when not built."""
    from tests import tracing_backends

    reason = tracing_backends.missing_reason()
    require_service(reason is None, reason or "")
    backend = tracing_backends.start_jaeger()
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Kafka broker in KRaft mode (tests/kafka_broker.py) for the session."""
    from tests import kafka_broker

    reason = kafka_broker.missing_reason()
    require_service(reason is None, reason or "")
    broker = kafka_broker.start_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()
