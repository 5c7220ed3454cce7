"""Smoke test of benchmarks/overhead.py: a quick run measures every configuration it promises.

No timing is asserted (a CI machine is too noisy for that); the figures live in
docs/benchmarks.md. What this proves: every framework's bare app, pyobs configurations and
peers build and serve 200s in-process, and pyobs really recorded each request.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import require_service

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "overhead.py"


@functools.cache
def _apps() -> ModuleType:
    """The benchmark's table of frameworks and configurations (benchmarks/ is no package)."""
    name = "pyobs_bench_overhead_apps"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "_overhead_apps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Run the benchmark once in --quick mode over every framework; return stdout and JSON."""
    out = tmp_path_factory.mktemp("bench") / "overhead.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


def _section(stdout: str, framework: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"## {framework} "))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        rows.append(line)
    return rows


def test_quick_run_prints_a_row_for_every_configuration(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    """Every framework gets a table with one row per configuration, bare and peers included."""
    apps = _apps()
    stdout, _ = quick_run
    for framework in apps.FRAMEWORKS:
        rows = _section(stdout, framework)
        assert any("driven as:" not in r for r in rows)
        for config in [*apps.BASE_CONFIGS, *apps.FRAMEWORKS[framework][2]]:
            assert any(r.split() and r.split()[0] == config for r in rows), (framework, config)


@pytest.mark.parametrize("framework", sorted(_apps().FRAMEWORKS))
def test_every_configuration_was_measured(
    quick_run: tuple[str, dict[str, Any]], framework: str
) -> None:
    """Each configuration served 200s and got a figure, unless its adapter or package is absent."""
    apps = _apps()
    _, data = quick_run
    results = data["frameworks"][framework]
    for config in [*apps.BASE_CONFIGS, *apps.FRAMEWORKS[framework][2]]:
        row = results[config]
        missing = apps.missing_module(framework, config)
        if missing is not None and missing.startswith("pyobs"):
            assert row["error"] == "pyobs adapter missing", row
            continue
        if missing is not None:
            assert row["error"] == f"not installed: {missing}", row
            require_service(False, f"{missing} is needed for the {framework} {config} benchmark")
        assert row["error"] == "", (config, row["error"])
        assert row["us_per_request"] is not None and row["us_per_request"] > 0, row
        assert row["requests"] >= 32, row


@pytest.mark.parametrize("framework", sorted(_apps().FRAMEWORKS))
def test_pyobs_configurations_really_observe(
    quick_run: tuple[str, dict[str, Any]], framework: str
) -> None:
    """pyobs rows measure working instrumentation: a real route, one span and an access log."""
    apps = _apps()
    _, data = quick_run
    if apps.missing_module(framework, "pyobs-metrics") is not None:
        pytest.skip(f"pyobs adapter for {framework} is not there yet")
    results = data["frameworks"][framework]
    metrics, full = results["pyobs-metrics"]["facts"], results["pyobs-full"]["facts"]
    for facts in (metrics, full):
        assert facts["pyobs_requests"] > 0, facts
        assert [r for r in facts["pyobs_routes"] if r != "<unmatched>"], facts
        assert "<unmatched>" not in facts["pyobs_routes"], facts
    assert "spans_per_request" not in metrics  # metrics only: no tracer provider at all
    assert metrics["access_log_lines"] == 0, metrics  # and no access log
    assert full["spans_per_request"] == 1, full
    assert full["span_scopes"] == {"pyobs": 1}, full
    assert full["access_log_lines"] == full["pyobs_requests"], full
    if "otel-contrib" in results:
        assert results["otel-contrib"]["facts"]["spans_per_request"] >= 1


def _run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_floors_prints_each_building_block() -> None:
    """--floors times a histogram observe, a gauge, an SDK span and an access-log line."""
    out = _run("--floors", "--quick")
    for name in ("histogram observe", "gauge inc + dec", "SDK span", "access-log line"):
        row = next((ln for ln in out.splitlines() if name in ln), None)
        assert row is not None, out
        assert float(row.split()[-1]) > 0, row


def test_profile_names_pyobs_modules() -> None:
    """--profile shows where a configuration's time goes, pyobs modules by name."""
    if importlib.util.find_spec("flask") is None:
        require_service(False, "flask is not installed")
    out = _run("--profile", "flask:pyobs-metrics", "--profile-seconds", "0.2", "--top", "40")
    assert "# time by owner" in out, out
    owners = out.split("# time by owner", 1)[1]
    assert "pyobs/_observer.py" in owners, owners
    assert "flask" in owners, owners


def test_spans_benchmark_quick_run_counts_every_lost_span() -> None:
    """benchmarks/spans.py --quick: every (mode, exporter, tracing) row is measured with
    requests served, and for pyobs exported + counted losses == served (its exit status)."""
    import shutil

    for module in ("flask", "gunicorn", "opentelemetry.instrumentation.flask"):
        require_service(importlib.util.find_spec(module) is not None, f"{module} missing")
    require_service(shutil.which("wrk") is not None, "wrk is not installed")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "spans.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    measured = {
        (row[0], row[1], row[2]): int(row[4])
        for row in rows
        if len(row) == 9 and row[0] in ("in-process", "paced", "gunicorn")
    }
    assert set(measured) == {
        (mode, exporter, tracing)
        for mode in ("in-process", "paced", "gunicorn")
        for exporter in ("fast", "slow")
        for tracing in ("pyobs", "contrib")
    }
    assert all(served > 0 for served in measured.values()), measured
    assert result.stdout.count("ok   ") == 6 and "FAIL" not in result.stdout
