"""Smoke test of benchmarks/overhead.py: a quick run measures every configuration it promises.

No timing is asserted (a CI machine is too noisy for that); the figures live in
docs/benchmarks.md. What this proves: every framework's bare app, pyobs configurations and
peers build and serve 200s in-process, and pyobs really recorded each request.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import import_or_require, require_service
from tests.helpers import http_status, kill_tree, start_server

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "overhead.py"


@functools.cache
def _benchmark_module(filename: str) -> ModuleType:
    """One of the benchmark scripts' modules, imported from its file (benchmarks/ is no
    package)."""
    name = "pyobs_bench_" + filename.removesuffix(".py").lstrip("_")
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _apps() -> ModuleType:
    """The benchmark's table of frameworks and configurations."""
    return _benchmark_module("_overhead_apps.py")


def _run(*args: str, script: Path = SCRIPT, timeout: float = 120) -> str:
    """Run a benchmark script (overhead.py unless told) from the repository root; its stdout,
    once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _refused(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script with arguments it must refuse; the result, once it exited 2."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Run the benchmark once in --quick mode over every framework; return stdout and JSON."""
    out = tmp_path_factory.mktemp("bench") / "overhead.json"
    stdout = _run("--quick", "--json", str(out), timeout=240)
    return stdout, json.loads(out.read_text())


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
        assert row["thread_switches_per_request"] >= 0, row


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


def test_extra_rows_isolate_each_signal_and_the_span_processor(tmp_path: Path) -> None:
    """--parts, --sdk-bsp and --batch-512 add rows that measure what they say: without the
    access log (spans, no line), without the span (lines, no span), pyobs on the SDK's own
    batch processor, and pyobs's processor with 512-span batches; every row reports the
    garbage collector's share."""
    out = tmp_path / "extra.json"
    stdout = _run(
        "--quick",
        "--frameworks",
        "flask",
        "--parts",
        "--sdk-bsp",
        "--batch-512",
        "--json",
        str(out),
        timeout=240,
    )
    rows = json.loads(out.read_text())["frameworks"]["flask"]
    no_log, no_span = rows["pyobs-full-no-log"]["facts"], rows["pyobs-full-no-span"]["facts"]
    sdk_bsp = rows["pyobs-full+sdk-bsp"]["facts"]
    assert no_log["spans_per_request"] == 1 and no_log["access_log_lines"] == 0, no_log
    assert "spans_per_request" not in no_span, no_span
    assert no_span["access_log_lines"] == no_span["pyobs_requests"] > 0, no_span
    assert sdk_bsp["span_scopes"] == {"pyobs": 1}, sdk_bsp
    assert sdk_bsp["access_log_lines"] == sdk_bsp["pyobs_requests"], sdk_bsp
    batch_512, full = rows["pyobs-full+batch-512"]["facts"], rows["pyobs-full"]["facts"]
    assert batch_512["export_batch_size"] == 512 and full["export_batch_size"] == 2048
    assert batch_512["spans_per_request"] == 1, batch_512
    for name, row in rows.items():
        assert row["error"] == "", (name, row["error"])
        assert row["gc_us_per_request"] is not None and row["gc_us_per_request"] >= 0, name
    assert "gc " in stdout and "us/req" in stdout


def test_quick_run_states_both_rounds_targets(quick_run: tuple[str, dict[str, Any]]) -> None:
    """The verdicts name each target with a figure and meets/MISSES: metrics-only against the
    lightest Prometheus peer (<= 0.5 and <= 0.33), full against that peer (<= 1.0) and full
    against OTel contrib (<= 0.25), for every framework with such a peer."""
    _, data = quick_run
    verdicts = data["targets"]
    for framework in ("flask", "fastapi", "django"):
        mine = [v for v in verdicts if v.startswith(f"{framework}: ")]
        metrics = next(v for v in mine if v.startswith(f"{framework}: pyobs-metrics "))
        full_peer = next(v for v in mine if "pyobs-full" in v and "lightest Prometheus peer" in v)
        full_otel = next(v for v in mine if "pyobs-full" in v and "OTel contrib" in v)
        assert "target <= 0.5: " in metrics and "target <= 0.33: " in metrics, metrics
        assert "target <= 1.0: " in full_peer and "target <= 0.25: " in full_otel
        for line in (metrics, full_peer, full_otel):
            assert line.endswith(("meets", "MISSES", "undecided")) and " x " in line, line


def test_verdicts_are_read_off_the_noise_not_one_median() -> None:
    """A ratio decides a target only when the rounds' bootstrap interval lies wholly on one
    side of it: well clear below is "meets", well clear above "MISSES", and a point ratio
    that meets the target while its rounds spread across it is "undecided" (as on a noisy
    machine, where the next run can land on the other side)."""
    overhead = _benchmark_module("overhead.py")
    spread = [-6.0, -3.0, -1.0, 0.0, 0.0, 1.0, 3.0, 6.0]

    def worker(config: str, center: float, wide: float = 0.2) -> Any:
        w = overhead.Worker("flask", config)
        w.us_per_request = [center + wide * d for d in spread]
        return w

    def verdicts(metrics: float, wide: float) -> list[str]:
        by_config = {
            w.config: w
            for w in (
                worker("bare", 100.0),
                worker("pyobs-metrics", 100.0 + metrics, wide),
                worker("pyobs-full", 160.0),
                worker("prometheus-flask-exporter", 200.0),
                worker("otel-contrib", 500.0),
            )
        }
        lines: list[str] = overhead._verdicts("flask", by_config, 100.0)
        return lines

    clear = verdicts(20.0, 0.2)[0]  # 0.20 x the peer, rounds within +-1.2 us
    assert "= 0.20 x lightest Prometheus peer" in clear, clear
    assert clear.endswith("target <= 0.5: meets, target <= 0.33: meets"), clear
    above = verdicts(45.0, 0.2)[0]  # 0.45 x
    assert above.endswith("target <= 0.5: meets, target <= 0.33: MISSES"), above
    noisy = verdicts(32.0, 4.0)[0]  # 0.32 x, rounds spread +-24 us
    assert "= 0.32 x" in noisy and noisy.endswith("target <= 0.33: undecided"), noisy
    low, high = (float(v) for v in noisy.split("interval ")[1].split(")")[0].split("-"))
    assert low < 0.33 < high, noisy
    # Two rounds (a --quick run) give no interval: the point ratio decides, and says so.
    few = {c: overhead.Worker("flask", c) for c in ("bare", "pyobs-metrics", "django-x")}
    for w, value in zip(few.values(), (100.0, 110.0, 140.0), strict=True):
        w.us_per_request = [value, value]
    (line, *_) = overhead._verdicts("flask", few, 100.0)
    assert "too few rounds for an interval" in line and line.endswith("0.33: meets"), line


def test_real_server_verdicts_keep_each_rounds_figures_together() -> None:
    """realserver.py judges a ratio of added CPU on a paired bootstrap interval: a round
    where the whole machine was slow moves bare, pyobs and the peer together and does not
    decide anything, and a ratio whose rounds spread across the target is undecided."""
    realserver = _benchmark_module("realserver.py")
    slow = [0.0, 0.0, 300.0, 0.0, 0.0, 500.0]  # two rounds where the machine was slow

    def rows(metrics: list[float]) -> dict[str, dict[str, Any]]:
        bare = [400.0 + d for d in slow]
        return {
            "bare": {"cpu_us_rounds": bare},
            "pyobs-metrics": {"cpu_us_rounds": [b + m for b, m in zip(bare, metrics, strict=True)]},
            "peer": {"cpu_us_rounds": [b + 100.0 for b in bare]},
        }

    steady = realserver.paired_interval(rows([20.0] * 6), "pyobs-metrics", "peer", "cpu_us_rounds")
    assert steady == (0.2, 0.2), steady  # the slow rounds cancel within each round
    assert realserver.verdict(0.2, 0.33, steady) == "met"
    assert realserver.verdict(0.4, 0.33, (0.38, 0.45)) == "MISSED"
    spread = [10.0, 50.0, 20.0, 45.0, 15.0, 40.0]
    low, high = realserver.paired_interval(rows(spread), "pyobs-metrics", "peer", "cpu_us_rounds")
    assert low < 0.33 < high, (low, high)
    assert realserver.verdict(0.3, 0.33, (low, high)).startswith("undecided: 90% interval")
    # Too few rounds: no interval, the figure decides (and a missing row gives none).
    three = {
        name: {"cpu_us_rounds": row["cpu_us_rounds"][:3]} for name, row in rows(spread).items()
    }
    assert realserver.paired_interval(three, "pyobs-metrics", "peer", "cpu_us_rounds") is None
    assert realserver.paired_interval(rows(spread), "pyobs-full", "peer", "cpu_us_rounds") is None


@pytest.mark.service
def test_jaeger_row_exports_every_span_to_a_real_jaeger(tmp_path: Path) -> None:
    """--jaeger adds pyobs-full exporting OTLP/HTTP to a real Jaeger: every request's span is
    acknowledged by Jaeger (counted only on its success reply), the access log still writes
    one line per request, and the row is measured like the others."""
    from tests.tracing_backends import BINARY

    require_service(BINARY.exists(), "Jaeger is not built (scripts/setup.d/40-jaeger.sh)")
    out = tmp_path / "jaeger.json"
    stdout = _run("--quick", "--frameworks", "flask", "--jaeger", "--json", str(out))
    row = json.loads(out.read_text())["frameworks"]["flask"]["pyobs-full+jaeger"]
    facts = row["facts"]
    assert row["error"] == "" and row["us_per_request"] > 0, row
    assert facts["span_scopes"] == {"pyobs": 1}, facts
    assert facts["spans_exported"] == facts["warmup_requests"] > 0, facts
    assert facts["access_log_lines"] == facts["pyobs_requests"], facts
    assert "LOSES SPANS" not in stdout
    (verdict,) = [v for v in json.loads(out.read_text())["targets"] if "+jaeger" in v]
    assert "x pyobs-full with a dropping exporter" in verdict and "target <= 1.2: " in verdict


def test_floors_prints_each_building_block() -> None:
    """--floors times a histogram observe, a gauge, an SDK span and an access-log line."""
    out = _run("--floors", "--quick")
    for name in ("histogram observe", "gauge inc + dec", "SDK span", "access-log line"):
        row = next((ln for ln in out.splitlines() if name in ln), None)
        assert row is not None, out
        assert float(row.split()[-1]) > 0, row


def test_wsgi_driver_builds_the_environ_gunicorn_builds(tmp_path: Path) -> None:
    """The in-process WSGI driver hands the app the keys real gunicorn puts in the environ
    of the same request (same headers), no fewer: the environ's size decides whether a key
    the framework or pyobs adds makes the dict grow, so a smaller one would charge that to
    whichever adds it. Cannot show: the values' types beyond the key names (placeholders for
    the socket and the file wrapper, which no benchmarked route uses)."""
    import_or_require("gunicorn")
    overhead = _benchmark_module("overhead.py")
    seen: list[set[str]] = []

    def recorder(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(set(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    assert overhead._Drivers.wsgi(recorder)() == 200
    (driver_keys,) = seen
    (tmp_path / "keysapp.py").write_text(
        "import json\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
        "    return [json.dumps(sorted(environ)).encode()]\n"
    )
    log = tmp_path / "gunicorn.log"
    proc, port = start_server(
        lambda port: [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "1",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(tmp_path),
            "keysapp:app",
        ],
        lambda port: http_status(f"http://127.0.0.1:{port}/") == 200,
        log,
    )
    try:
        headers = {k: v for k, v in overhead.HEADERS.items() if k != "host"}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{overhead.REQUEST_PATH}", headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            gunicorn_keys = set(json.loads(reply.read()))
    finally:
        kill_tree(proc)
    # urllib adds Connection: close; the benchmark's client sends no such header.
    gunicorn_keys.discard("HTTP_CONNECTION")
    assert gunicorn_keys - driver_keys == set(), sorted(gunicorn_keys - driver_keys)
    assert driver_keys - gunicorn_keys == set(), sorted(driver_keys - gunicorn_keys)


def test_instruction_ratios_read_against_the_lightest_peer() -> None:
    """benchmarks/instructions.py subtracts bare's count, picks the lightest Prometheus peer
    (not OTel contrib), and says meets or MISSES for each of issue 18's ratios."""
    bench = _benchmark_module("instructions.py")
    figures = {
        "bare": 100_000.0,
        "pyobs-metrics": 130_000.0,  # +30k
        "pyobs-full": 280_000.0,  # +180k
        "heavy-exporter": 300_000.0,  # +200k
        "light-exporter": 250_000.0,  # +150k: the lightest peer
        "otel-contrib": 1_100_000.0,  # +1,000k
    }
    lines = bench.verdicts("flask", figures)
    assert any(
        "pyobs-metrics +30.0k = 0.20 x lightest Prometheus peer (light-exporter +150.0k);"
        " target <= 0.33: meets" in line
        for line in lines
    ), lines
    assert any("pyobs-full +180.0k = 1.20 x" in ln and ln.endswith("MISSES") for ln in lines)
    assert any("0.18 x OTel contrib" in ln and ln.endswith("meets") for ln in lines), lines
    assert bench.verdicts("flask", {"pyobs-metrics": 1.0}) == []  # no bare: no ratio


def test_instruction_configs_take_the_part_rows_when_named() -> None:
    """--configs pyobs-full-no-span counts that row (overhead.py's --parts rows), and the
    default list stays the base rows and the framework's peers."""
    bench = _benchmark_module("instructions.py")
    assert bench.configs_of("flask", ["bare", "pyobs-full-no-span", "pyobs-full-no-log"]) == [
        "bare",
        "pyobs-full-no-log",
        "pyobs-full-no-span",
    ]
    every = bench.configs_of("flask", None)
    assert every[:3] == ["bare", "pyobs-metrics", "pyobs-full"], every
    assert "prometheus-flask-exporter" in every and "pyobs-full-no-span" not in every, every
    assert bench.configs_of("flask", ["no-such-row"]) == []


def test_instruction_cache_events_are_read_from_cachegrind_and_set_against_the_peer() -> None:
    """--cache reads cachegrind's totals (its events: and summary: lines) and prints each
    event a configuration adds over bare, with pyobs's rows as a share of the lightest
    Prometheus peer's (the peer with the fewest added instructions)."""
    bench = _benchmark_module("instructions.py")
    text = (
        "desc: I1 cache: 32768 B, 64 B, 8-way associative\n"
        "cmd: python x\n"
        "events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim\n"
        "fl=x.c\nfn=f\n1 5 0 0 0 0 0 0 0 0 0 0 0 0\n"
        "summary: 1000 40 0 500 30 0 200 10 0 300 20 50 15\n"
    )
    events = bench.summary(text)
    assert events is not None
    assert (events["Ir"], events["I1mr"], events["D1mr"], events["Bim"]) == (1000, 40, 30, 15)
    assert bench.summary("events: Ir I1mr\n") is None  # no totals: the run failed
    assert bench.summary("events: Ir I1mr\nsummary: 1\n") is None  # not one count per event

    def run(ir: float, misses: float) -> dict[str, float]:
        return {"Ir": ir, "I1mr": misses, "D1mr": misses, "D1mw": 1.0, "Bim": 1.0, "Bcm": 1.0}

    lines = bench.cache_table(
        "flask",
        {
            "bare": run(100_000, 1_000),
            "pyobs-metrics": run(130_000, 1_300),  # +30k instructions, +300 misses
            "light-exporter": run(250_000, 1_600),  # +150k, +600: the lightest peer
            "heavy-exporter": run(300_000, 1_100),  # fewer misses, more instructions
        },
    )
    row = next(ln for ln in lines if ln.startswith("pyobs-metrics"))
    assert row.split()[1:4] == ["+30000", "+300", "+300"], row
    share = lines[lines.index(row) + 1]
    assert share.split()[:2] == ["/", "light-exporter"], share
    assert share.split()[2:5] == ["0.20", "0.50", "0.50"], share
    assert share.split()[5] == "-", share  # the peer added nothing here: no share
    assert bench.cache_table("flask", {"pyobs-metrics": run(1, 1)}) == []  # no bare


def test_instruction_seeds_give_medians_and_each_seeds_added_count() -> None:
    """--seeds N: each event's median over the seeds' runs is what the tables use, and
    pyobs's rows also list what they add over bare under each seed (bare's run of the same
    seed subtracted), so a layout-dependent swing is visible next to the median."""
    bench = _benchmark_module("instructions.py")
    runs = [{"Ir": 500.0, "D1mr": 9.0}, {"Ir": 400.0, "D1mr": 1.0}, {"Ir": 700.0, "D1mr": 5.0}]
    assert bench.median_events(runs) == {"Ir": 500.0, "D1mr": 5.0}
    bare = [{"Ir": 100_000.0}, {"Ir": 101_000.0}, {"Ir": 99_000.0}]
    full = [{"Ir": 215_000.0}, {"Ir": 212_000.0}, {"Ir": 218_000.0}]
    lines = bench.seed_spread("flask", {"bare": bare, "pyobs-full": full, "peer": full})
    assert lines == ["flask: pyobs-full added per seed: +115.0k, +111.0k, +119.0k"]
    assert bench.seed_spread("flask", {"bare": bare[:1], "pyobs-full": full[:1]}) == []


def test_instruction_child_serves_every_request_it_is_asked_for() -> None:
    """The process instructions.py runs under valgrind builds the configuration, serves the
    requests (each a 200, else it exits non-zero) and flushes its spans."""
    if importlib.util.find_spec("flask") is None:
        require_service(False, "flask is not installed")
    script = REPO / "benchmarks" / "instructions.py"
    for config in ("bare", "pyobs-full"):
        done = subprocess.run(
            [sys.executable, str(script), "--child", "flask", config, "20"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr[-2000:]


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
    stdout = _run("--quick", script=REPO / "benchmarks" / "spans.py", timeout=300)
    rows = [line.split() for line in stdout.splitlines()]
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
    assert stdout.count("ok   ") == 6 and "FAIL" not in stdout


# --- benchmarks/realserver.py: real servers driven by wrk ---------------------------------

REALSERVER = REPO / "benchmarks" / "realserver.py"


def _realserver(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[str, dict[str, Any]]:
    """Run realserver.py; on a timeout SIGTERM it (it stops its servers), then kill it."""
    import shutil
    import signal

    require_service(shutil.which("wrk") is not None, "wrk is not installed (Debian package wrk)")
    for module in ("gunicorn", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            require_service(False, f"{module} is not installed")
    out = tmp_path / "realserver.json"
    proc = subprocess.Popen(
        [sys.executable, str(REALSERVER), "--quick", "--json", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"realserver.py did not finish in {timeout} s\n{stdout[-3000:]}")
    assert proc.returncode == 0, stdout[-4000:] + stderr[-3000:]
    return stdout, json.loads(out.read_text())


@pytest.fixture(scope="module")
def realserver_quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """One --quick run of every real-server setup and configuration."""
    return _realserver(tmp_path_factory.mktemp("realserver"))


def _realserver_module() -> ModuleType:
    name = "pyobs_bench_realserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REALSERVER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_realserver_quick_run_measures_every_setup_and_configuration(
    realserver_quick: tuple[str, dict[str, Any]],
) -> None:
    """Each setup's table has a measured row per configuration, every response a 200."""
    stdout, data = realserver_quick
    bench = _realserver_module()
    assert set(data["setups"]) == set(bench.SETUPS), stdout[-3000:]
    for name, setup in bench.SETUPS.items():
        result = data["setups"][name]
        assert "error" not in result, result
        rows = result["rows"]
        assert set(rows) == {"bare", "pyobs-metrics", "pyobs-full", setup.peer, "otel-contrib"}
        for config, row in rows.items():
            assert row["error"] == "", (name, config, row["error"])
            assert row["requests"] > 0 and row["cpu_us"] > 0 and row["rps"] > 0, row
            assert row["p99_ms"] >= row["p50_ms"] > 0, row
            assert row["non_200"] == 0 and row["problems"] == [], (name, config, row)
        assert f"## {name}:" in stdout


def test_realserver_pyobs_rows_really_observe(
    realserver_quick: tuple[str, dict[str, Any]],
) -> None:
    """pyobs counted every request; full exported one span and wrote one access line each."""
    _, data = realserver_quick
    for name, result in data["setups"].items():
        rows = result["rows"]
        metrics, full = rows["pyobs-metrics"], rows["pyobs-full"]
        for row in (metrics, full):
            assert row["pyobs_counted"] >= row["requests_total"], (name, row)
        assert metrics["spans"] == 0 and metrics["access_lines"] == 0, (name, metrics)
        assert full["spans"] == full["pyobs_counted"] == full["access_lines"], (name, full)
        assert full["span_scopes"] == {"pyobs": full["spans"]}, (name, full)
        assert rows["otel-contrib"]["spans"] > 0, name  # what it lost is reported, not failed


def test_realserver_reports_what_otel_contrib_lost_without_failing_the_run() -> None:
    """Spans OTel contrib's batch processor drops under load are a measured finding (issue 18
    compares pyobs's losses with contrib's), shown after 'ok'; contrib exporting no span at
    all means its instrumentation did not run, a failed check. pyobs full's rows still fail
    on any span missing."""
    bench = _realserver_module()
    setup = bench.SETUPS["flask-gunicorn-1"]
    row = {
        "error": "", "non_200": 0, "config": "otel-contrib", "pyobs_counted": None,
        "requests_total": 2259, "socket_errors": 0, "spans_failed": 0, "spans": 2258,
        "queue_full_warnings": 1, "access_lines": 0, "span_scopes": {"contrib": 2258},
    }  # fmt: skip
    assert bench.verify(setup, row, 1) == []
    assert bench.findings(row) == ["OTel contrib lost 1 of 2259 spans (1 'Queue full' warnings)"]
    assert bench.verify(setup, {**row, "spans": 0}, 1) == ["no span exported"]
    assert bench.findings({**row, "spans": 2259}) == []
    full = {**row, "config": "pyobs-full", "pyobs_counted": 2259.0, "access_lines": 2259,
            "span_scopes": {"pyobs": 2258}, "queue_full_warnings": 0}  # fmt: skip
    assert bench.verify(setup, full, 1) == ["2258 spans exported for 2259 requests"]
    assert bench.findings(full) == []


def test_realserver_parts_turn_one_signal_off_each(tmp_path: Path) -> None:
    """--parts adds pyobs full without the access log and without the span, on the same real
    server: the first exports one span per request and writes no access line, the second the
    reverse, pyobs counts every request in both, and the report prices each signal as full's
    CPU minus the part's."""
    stdout, data = _realserver(
        tmp_path, "--setups", "flask-gunicorn-1", "--configs", "bare,pyobs-full", "--parts"
    )
    rows = data["setups"]["flask-gunicorn-1"]["rows"]
    assert set(rows) == {"bare", "pyobs-full", "pyobs-full-no-log", "pyobs-full-no-span"}
    no_log, no_span = rows["pyobs-full-no-log"], rows["pyobs-full-no-span"]
    for row in (no_log, no_span):
        assert row["problems"] == [] and row["pyobs_counted"] >= row["requests_total"] > 0, row
    assert no_log["spans"] == no_log["pyobs_counted"] and no_log["access_lines"] == 0, no_log
    assert no_span["access_lines"] == no_span["pyobs_counted"] and no_span["spans"] == 0, no_span
    parts = data["setups"]["flask-gunicorn-1"]["ratios"]["parts"]
    assert set(parts) == {"access log", "span"}, parts
    assert "the access log (pyobs-full - pyobs-full-no-log): " in stdout, stdout[-3000:]
    assert "the span (pyobs-full - pyobs-full-no-span): " in stdout


def test_realserver_part_rows_are_checked_for_the_signal_they_keep() -> None:
    """A part row fails its checks when the signal it keeps is missing, or the one it turns
    off shows up: a run whose rows do not isolate one signal prices nothing."""
    bench = _realserver_module()
    setup = bench.SETUPS["flask-gunicorn-1"]
    base = {
        "error": "", "non_200": 0, "pyobs_counted": 500.0, "requests_total": 500,
        "socket_errors": 0, "spans_failed": 0, "queue_full_warnings": 0,
    }  # fmt: skip
    no_log = {**base, "config": "pyobs-full-no-log", "spans": 500, "access_lines": 0,
              "span_scopes": {"pyobs": 500}}  # fmt: skip
    no_span = {**base, "config": "pyobs-full-no-span", "spans": 0, "access_lines": 500,
               "span_scopes": {}}  # fmt: skip
    assert bench.verify(setup, no_log, 1) == []
    assert bench.verify(setup, no_span, 1) == []
    assert bench.verify(setup, {**no_log, "access_lines": 500}, 1) == [
        "500 access lines for 500 requests (the access log is off in this row)"
    ]
    assert bench.verify(setup, {**no_span, "spans": 500}, 1) == [
        "500 spans exported for 500 requests (the span is off in this row)"
    ]
    assert bench.verify(setup, {**no_log, "spans": 499}, 1) == [
        "499 spans exported for 500 requests"
    ]


def test_realserver_floor_rows_count_every_request_in_every_worker(tmp_path: Path) -> None:
    """--configs ...,minimal,plain-contract,plain-contract-full on Flask under two gunicorn
    workers: each floor middleware answers every request, each worker's count (written at
    its exit) adds up to the requests wrk completed; the metrics-only floors write no span and
    no access line, the full one exactly one of each per request; the report sets the targets
    against them and prices what pyobs adds above each."""
    configs = "bare,minimal,plain-contract,plain-contract-full,pyobs-metrics,pyobs-full,peer"
    stdout, data = _realserver(tmp_path, "--setups", "flask-gunicorn-2", "--configs", configs)
    result = data["setups"]["flask-gunicorn-2"]
    rows = result["rows"]
    for name in ("minimal", "plain-contract", "plain-contract-full"):
        row = rows[name]
        assert row["problems"] == [], row
        assert row["minimal_counted"] >= row["requests_total"] > 0, row
        assert row["pyobs_counted"] is None, row
        signals = row["minimal_counted"] if name == "plain-contract-full" else 0
        assert row["spans"] == row["access_lines"] == signals, row
    ratios = result["ratios"]
    assert {"minimal_vs_peer", "plain_contract_vs_peer", "plain_contract_full_vs_peer"} <= set(
        ratios
    ), ratios
    assert "the minimal metrics middleware / prometheus-flask-exporter: " in stdout, stdout
    assert "pyobs metrics-only - the minimal middleware: " in stdout
    assert "plain-contract (the contract, written plainly) / prometheus-flask-exporter: " in stdout
    assert "pyobs-metrics - plain-contract: " in stdout
    assert "pyobs-full - plain-contract-full: " in stdout


def test_realserver_plain_full_row_is_checked_for_its_span_and_line() -> None:
    """The plain-contract-full row fails its checks without one span and one access line
    per request, and a metrics-only floor fails them if it wrote either: a floor that skips
    work the contract asks for would set the targets too low."""
    bench = _realserver_module()
    setup = bench.SETUPS["flask-gunicorn-1"]
    row = {
        "error": "", "non_200": 0, "pyobs_counted": None, "minimal_counted": 500,
        "requests_total": 500, "socket_errors": 0, "spans": 500, "spans_failed": 0,
        "access_lines": 500, "queue_full_warnings": 0, "span_scopes": {"plain-contract": 500},
    }  # fmt: skip
    full = {**row, "config": "plain-contract-full"}
    assert bench.verify(setup, full, 1) == []
    assert bench.verify(setup, {**full, "spans": 499}, 1) == [
        "499 spans and 500 access lines for 500 requests"
    ]
    assert bench.verify(setup, {**full, "minimal_counted": None}, 1)[0] == (
        "the plain-contract-full middleware left no count"
    )
    metrics = {**row, "config": "plain-contract"}
    assert bench.verify(setup, {**metrics, "spans": 0, "access_lines": 0}, 1) == []
    assert bench.verify(setup, metrics, 1) == [
        "the plain-contract middleware wrote spans or access lines"
    ]


def test_realserver_stdout_through_a_pipe_keeps_every_access_line(tmp_path: Path) -> None:
    """--stdout pipe: each server's stdout is a pipe that cat drains into its stdout file, as
    a container runtime reads a container's stdout. pyobs full still writes one access line
    per request and every one of them reaches the file (the reader drains the pipe after the
    server stops, before the lines are counted); the report says where stdout went."""
    stdout, data = _realserver(
        tmp_path, "--setups", "flask-gunicorn-1", "--configs", "bare,pyobs-full", "--stdout", "pipe"
    )
    assert data["stdout"] == "pipe"
    assert "stdout: a pipe drained into a file by cat" in stdout.splitlines()[0], stdout[:400]
    full = data["setups"]["flask-gunicorn-1"]["rows"]["pyobs-full"]
    assert full["problems"] == [], full
    assert full["access_lines"] == full["pyobs_counted"] >= full["requests_total"] > 0, full


def test_realserver_minimal_row_fails_without_its_count() -> None:
    """A minimal row whose workers left no count, or a count short of wrk's, fails its checks:
    a floor measured on a middleware that did not run would price nothing."""
    bench = _realserver_module()
    setup = bench.SETUPS["flask-gunicorn-1"]
    row = {
        "error": "", "non_200": 0, "config": "minimal", "pyobs_counted": None,
        "minimal_counted": 500, "requests_total": 500, "socket_errors": 0, "spans_failed": 0,
        "spans": 0, "access_lines": 0, "span_scopes": {}, "queue_full_warnings": 0,
    }  # fmt: skip
    assert bench.verify(setup, row, 1) == []
    assert bench.verify(setup, {**row, "minimal_counted": None}, 1) == [
        "the minimal middleware left no count"
    ]
    assert bench.verify(setup, {**row, "minimal_counted": 499}, 1) == [
        "the minimal middleware counted 499 requests, wrk completed 500"
    ]


def test_realserver_prints_ratios_against_the_targets(
    realserver_quick: tuple[str, dict[str, Any]],
) -> None:
    """The report states each target with a met/missed verdict, and what it verified."""
    stdout, _ = realserver_quick
    assert "(target <= 0.33: " in stdout and "(target <= 1.0: " in stdout, stdout[-3000:]
    assert "Verified per row" in stdout


@pytest.mark.service
def test_realserver_exports_every_span_to_jaeger(tmp_path: Path) -> None:
    """The export variants deliver one span per request to a real Jaeger, none failed; the
    ``@ack`` variant delivers them to the receiver that acknowledges without parsing."""
    bench = _realserver_module()
    require_service(bench.JAEGER.exists(), "Jaeger is not built (scripts/setup.d/40-jaeger.sh)")
    variants = ["otlp-http", "otlp-grpc", "pyobs-http-gzip", "pyobs-http@ack"]
    stdout, data = _realserver(
        tmp_path,
        "--setups",
        "fastapi-uvicorn-1",
        "--configs",
        "bare,pyobs-full",
        "--export",
        ",".join(variants),
    )
    rows = data["setups"]["fastapi-uvicorn-1"]["rows"]
    for variant in variants:
        row = rows[f"pyobs-full {variant}"]
        assert row["problems"] == [], (variant, row)
        assert row["spans_failed"] == 0 and row["spans"] == row["pyobs_counted"] > 0, row
    assert "/ pyobs-full (dropping exporter)" in stdout
    assert "pyobs-full pyobs-http@ack / pyobs-full (dropping exporter)" in stdout


def test_realserver_ack_receiver_refuses_grpc() -> None:
    """The acknowledging receiver speaks OTLP over HTTP: a gRPC variant sent there is refused
    with a message, not measured against a port that cannot answer it."""
    bench = _realserver_module()
    assert (
        bench.export_env("pyobs-http@ack", {"ack_http": 4318})["OTEL_EXPORTER_OTLP_ENDPOINT"]
        == "http://127.0.0.1:4318"
    )
    with pytest.raises(SystemExit, match="OTLP over HTTP only"):
        bench.export_env("otlp-grpc@ack", {"ack_http": 4318})


def test_realserver_encode_cost_prints_each_serializer() -> None:
    """--encode-cost prices the SDK's OTLP encoder, pyobs's (on SDK spans and on pyobs's own
    request spans, made by Flask requests) and compression per span, and sending a batch to a
    loopback receiver for each batch size (every send acknowledged)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.common.trace_encoder")
    result = subprocess.run(
        [sys.executable, str(REALSERVER), "--encode-cost"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = [
        "SDK OTLP encoder",
        "pyobs encoder",
        "pyobs encoder, pyobs's request spans",
        "pyobs exporter, joining those",
    ]
    for name in (*names, "gzip level 9", "gzip level 1"):
        row = next((ln for ln in result.stdout.splitlines() if ln.startswith(name)), None)
        assert row is not None, result.stdout
        assert float(row.split()[-1]) > 0, row
    sends = {
        ln.split()[0]: ln.split()[1:]
        for ln in result.stdout.splitlines()
        if ln[:6].strip().isdigit()
    }
    assert set(sends) == {"128", "512", "2048"}, result.stdout
    # per batch and per span over http.client, then per batch through requests (twice)
    assert all(len(row) == 4 for row in sends.values()), sends
    assert all(float(value) > 0 for row in sends.values() for value in row), sends


def test_shortcuts_benchmark_times_every_removed_shortcut() -> None:
    """benchmarks/shortcuts.py --quick: each removed shortcut and its public path agree and
    are both timed (the per-call cost of each is what the issue-15 note reports)."""
    out = _run("--quick", script=REPO / "benchmarks" / "shortcuts.py")
    rows = [line for line in out.splitlines() if " -> " in line]
    assert len(rows) == 5, out
    for row in rows:
        direct, public, cost = (float(v) for v in row.split()[-3:])
        assert direct > 0 and public > 0 and abs(public - direct - cost) < 0.002, row
    assert "all removed shortcuts" in out


def test_tasks_benchmark_quick_run_measures_every_configuration(tmp_path: Path) -> None:
    """benchmarks/tasks.py --quick: bare, pyobs and OTel's Celery instrumentation are each
    measured, and the instrumented ones really recorded every task run."""
    require_service(importlib.util.find_spec("celery") is not None, "celery is not installed")
    out = tmp_path / "tasks.json"
    stdout = _run("--quick", "--json", str(out), script=REPO / "benchmarks" / "tasks.py")
    assert "pyobs / otel, per task run:" in stdout
    figures = json.loads(out.read_text())
    count = figures["count"]
    signals = figures["signals"]
    assert set(signals) == {"bare", "pyobs", "otel"}
    for config in ("bare", "pyobs", "otel"):
        assert signals[config]["consume_us"] > 0
        assert signals[config]["publish_us"] > 0
    # Every run (warm-up included) was counted by pyobs, and both exported their spans.
    assert signals["pyobs"]["tasks_counted"] == count + count // 10
    for config in ("pyobs", "otel"):
        assert signals[config]["spans"] >= count


def test_replicas_pool_the_rounds_of_several_processes(tmp_path: Path) -> None:
    """--replicas 2 runs each configuration in two worker processes and pools their rounds:
    twice the rounds and requests of one process, one row per configuration."""
    import_or_require("flask")
    out = tmp_path / "replicas.json"
    stdout = _run("--quick", "--frameworks", "flask", "--replicas", "2", "--json", str(out))
    assert "in each of 2 processes, rounds pooled" in stdout
    rows = _section(stdout, "flask")
    for config, row in json.loads(out.read_text())["frameworks"]["flask"].items():
        if row["error"]:
            continue
        assert len(row["rounds"]) == 4, (config, row["rounds"])  # 2 rounds x 2 processes
        assert sum(1 for r in rows if r.split() and r.split()[0] == config) == 1, config


def test_baseline_rows_import_pyobs_from_the_other_checkout(tmp_path: Path) -> None:
    """--baseline DIR adds pyobs-metrics@baseline and pyobs-full@baseline, whose workers take
    pyobs from DIR (here a copy of this checkout's package that says where it is), measured
    and checked like pyobs's own rows; a DIR without pyobs is refused."""
    import shutil

    import_or_require("flask")
    baseline = tmp_path / "baseline"
    shutil.copytree(REPO / "pyobs", baseline / "pyobs")
    init = baseline / "pyobs" / "__init__.py"
    # The copy leaves a file per process that imports it (its facts look like the original's).
    init.write_text(
        init.read_text()
        + "\nimport os as _os\n"
        + f"open({str(tmp_path / 'imported')!r} + str(_os.getpid()), 'w').close()\n"
    )
    out = tmp_path / "baseline.json"
    _run("--quick", "--frameworks", "flask", "--baseline", str(baseline), "--json", str(out))
    results = json.loads(out.read_text())["frameworks"]["flask"]
    for config in ("pyobs-metrics@baseline", "pyobs-full@baseline"):
        row = results[config]
        assert row["error"] == "", row
        assert row["facts"]["pyobs_routes"], row["facts"]
    assert len(list(tmp_path.glob("imported*"))) == 2  # the two baseline workers, no other
    result = _refused(SCRIPT, "--quick", "--baseline", str(tmp_path / "nothing"))
    assert "no pyobs package there" in result.stderr


def test_compiled_benchmark_runs_a_compiled_build_next_to_the_pure_one(tmp_path: Path) -> None:
    """benchmarks/compiled.py --quick: the request path's modules are compiled with mypyc in
    a scratch copy; the pyobs rows run that build and the @baseline rows pyobs as shipped,
    each really observing its requests; the closing lines give compiled / pure for both
    configurations. Each worker reports which pyobs modules it ran compiled. What this
    cannot prove: that compiling is faster (no timing is asserted; see
    docs/benchmarks.md for measured runs)."""
    import_or_require("flask")
    compiled = _benchmark_module("compiled.py")
    missing = compiled.missing_tools()
    require_service(missing is None, f"cannot compile here: {missing}")
    out = tmp_path / "compiled.json"
    stdout = _run(
        "--quick",
        "--replicas",
        "1",
        "--json",
        str(out),
        script=REPO / "benchmarks" / "compiled.py",
        timeout=600,
    )
    rows = json.loads(out.read_text())["frameworks"]["flask"]
    default = sorted(f"pyobs.{name}" for name in compiled.DEFAULT_MODULES)
    for config in ("pyobs-metrics", "pyobs-full"):
        # Each worker says which pyobs modules it ran compiled (mypyc adds a "__mypyc" library
        # module per compiled one): all of them here, none in the @baseline worker.
        loaded = rows[config]["facts"]["pyobs_compiled"]
        assert [m for m in loaded if not m.endswith("__mypyc")] == default, loaded
        assert rows[config + "@baseline"]["facts"]["pyobs_compiled"] == [], rows[config]
        for row in (rows[config], rows[config + "@baseline"]):
            assert row["error"] == "", row
            assert row["facts"]["pyobs_requests"] > 0, row["facts"]
            assert "/items/<int:item_id>" in row["facts"]["pyobs_routes"], row["facts"]
            assert "<unmatched>" not in row["facts"]["pyobs_routes"], row["facts"]
        # Both added times are printed even when noise hides the cost (then without a ratio).
        assert re.search(
            rf"flask {config}: compiled [+-][0-9.]+ us, pure [+-][0-9.]+ us ", stdout
        ), stdout[-2000:]
    for row in (rows["pyobs-full"], rows["pyobs-full@baseline"]):
        facts = row["facts"]
        assert facts["spans_per_request"] == 1, facts
        assert facts["access_log_lines"] == facts["pyobs_requests"], facts
    # A module that is not in pyobs/ is refused before anything is built.
    result = _refused(REPO / "benchmarks" / "compiled.py", "--modules", "nothing")
    assert "no such module in pyobs/: nothing" in result.stderr


PAIRED = REPO / "benchmarks" / "paired.py"


@pytest.mark.parametrize("framework", ["django", "fastapi", "flask"])
def test_paired_quick_run_alternates_checkouts_and_checks_each_process(framework: str) -> None:
    """benchmarks/paired.py: the bare app, pyobs metrics-only and the peer in one process,
    a process of this checkout alternated with one of another (here the same checkout); each
    process is checked to answer 200, to have pyobs and the peer each count every request sent
    to their own app (on Django, whose three apps share one settings module, that is what
    shows each handler has its own middleware), and to have imported pyobs from the checkout
    it names. No timing is asserted."""
    import_or_require(framework)
    out = _run("--framework", framework, "--quick", "--baseline", str(REPO), script=PAIRED)
    rows = [
        line.split() for line in out.splitlines() if re.match(r"\s+1\s+(this|baseline)\s", line)
    ]
    assert [row[1] for row in rows] == ["this", "baseline"]
    for row in rows:
        float(row[-1])  # a ratio was computed for each process
    # Twenty requests a burst leave the sign to noise: a ratio may be negative, or nan when the
    # peer's added time came out at zero or below; only its presence is checked.
    median = re.search(r"median ratio to \S+: this (\S+), baseline (\S+) \(target <= 0.33\)", out)
    assert median is not None, out
    for value in median.groups():
        float(value)
    assert "pyobs and the peer each counted every request sent to their app" in out
    assert "in 2 processes" in out


@pytest.mark.parametrize("framework", ["django", "fastapi", "flask"])
def test_paired_full_run_checks_one_span_and_one_access_line_per_request(framework: str) -> None:
    """benchmarks/paired.py --full: pyobs full next to the bare app and the peer in one
    process, judged against 1.0; each process must export exactly one span and write exactly
    one access line per request sent to the pyobs app (so the process-wide setup made the
    bare app and the peer emit none). No timing is asserted."""
    import_or_require(framework)
    out = _run("--framework", framework, "--full", "--quick", script=PAIRED)
    assert out.startswith(f"# paired: {framework}, pyobs-full, bare and "), out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+1\s+this\s", line)]
    assert len(rows) == 1, out
    float(rows[0][-1])
    assert re.search(r"median ratio to \S+: this \S+ \(target <= 1.0\)", out), out
    assert "one span exported and one access line written per request, in 1 processes" in out


@pytest.mark.parametrize("full", [False, True], ids=["metrics-only", "full"])
def test_paired_floors_run_the_floors_in_the_same_processes(full: bool) -> None:
    """benchmarks/paired.py --floors: the minimal middleware and the contract written plainly
    take their turns next to pyobs, each with its ratio to the peer; each process is refused
    unless every floor counted every request sent to it (and with --full, the plain one
    exported one span and wrote one access line per request, pyobs's own counts unchanged).
    Elsewhere than Flask the option is refused. No timing is asserted."""
    import_or_require("flask")
    out = _run("--framework", "flask", "--quick", "--floors", *(["--full"] * full), script=PAIRED)
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+1\s+this\s", line)]
    assert len(rows) == 1 and len(rows[0]) == 10, out
    assert "+minimal" in out and "+plain" in out and "each floor counted every request" in out
    for what in ("the minimal middleware (minimal)", "the contract written plainly (plain)"):
        assert re.search(rf"{re.escape(what)} / prometheus-flask-exporter: \S+", out), out
    paired = _benchmark_module("paired.py")
    assert (
        paired.floor_problem("plain", {"sent": 20, "counted": 20, "spans": 20, "lines": 20}) == ""
    )
    assert paired.floor_problem("plain", {"sent": 20, "counted": 19}) == (
        "the plain floor counted 19 of 20 requests"
    )
    assert paired.floor_problem("plain", {"sent": 20, "counted": 20, "spans": 20, "lines": 0}) == (
        "the plain floor: 0 lines for 20 requests"
    )
    assert (
        "--floors is measured on Flask only"
        in _refused(PAIRED, "--framework", "fastapi", "--floors").stderr
    )


def test_paired_ratio_is_read_off_each_rounds_differences() -> None:
    """The ratio: the median over rounds of pyobs minus bare, over the same for the peer."""
    paired = _benchmark_module("paired.py")
    times = {
        "bare": [100.0, 150.0, 100.0],
        "pyobs": [130.0, 180.0, 160.0],  # +30, +30, +60 (a drifting round moves all three)
        "peer": [200.0, 250.0, 180.0],  # +100, +100, +80
    }
    assert paired.ratios(times) == (30.0, 100.0, 0.3)
    refused = _refused(PAIRED, "--baseline", str(REPO / "docs"))
    assert "no pyobs package there" in refused.stderr


CONTEXT = REPO / "benchmarks" / "context.py"


@pytest.mark.parametrize("full", [False, True])
def test_context_run_times_each_middleware_alone_and_inside_flask(full: bool) -> None:
    """benchmarks/context.py: pyobs and a minimal metrics middleware around a trivial WSGI
    app and inside Flask, in one process; the run is refused unless pyobs and the minimal
    middleware each counted every request sent to their apps (and, with --full, pyobs
    exported one span and wrote one access line per request). No timing is asserted."""
    import_or_require("flask")
    out = _run("--quick", *(["--full"] if full else []), script=CONTEXT)
    measured = "pyobs full" if full else "pyobs metrics-only"
    assert out.startswith(f"# context: {measured} and a minimal metrics middleware"), out
    for context in ("trivial", "flask"):
        row = re.search(rf"^{context}\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.MULTILINE)
        assert row is not None, out
        for value in row.groups():
            float(value)
    for kind in ("pyobs", "minimal"):
        assert re.search(rf"^{kind}: inside Flask / alone = (\S+ x|n/a)$", out, re.MULTILINE), out
    assert "each counted every request sent to their apps" in out
    assert ("one span exported and one access line written per pyobs request" in out) is full


def test_context_checks_refuse_a_request_left_uncounted() -> None:
    """The counts the context benchmark checks: one request pyobs did not count, a span or an
    access line missing, each refuses the run with what was wrong."""
    context = _benchmark_module("context.py")
    exact = {"sent": {"pyobs": 40, "minimal": 40}, "counted": 40, "minimal_counted": 40}
    assert context.check(exact, False) == []
    assert context.check({**exact, "counted": 39}, False) == ["pyobs counted 39 of 40 requests"]
    assert context.check({**exact, "minimal_counted": 41}, False) == [
        "the minimal middleware counted 41 of 40"
    ]
    full = {**exact, "spans": 40, "lines": 39}
    assert context.check(full, True) == ["39 access lines for 40 pyobs requests"]


@pytest.mark.parametrize("full", [False, True], ids=["metrics-only", "full"])
def test_plain_contract_floor_does_what_the_contract_asks_of_each_request(
    full: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    """realserver.py's plain-contract rows are a floor only if they do the contract's
    per-request work: the route template (read while Flask's context is active), the exact
    status, 499 for a body never sent, sizes, X-Request-ID kept when safe and echoed,
    health paths left alone, an empty in-flight count afterwards; with every signal, one
    SERVER span per request named after the route (a child of an incoming traceparent) and
    one ECS access line carrying its ids. Checked through Flask's test client."""
    import_or_require("flask")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    apps = _apps()
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    app = apps._flask_app()
    plain = app.wsgi_app = apps.PlainContract(app.wsgi_app, full, provider.get_tracer("t"))
    client = app.test_client()
    parent = "0af7651916cd43dd8448eb211c80319c"

    def get(path: str, headers: dict[str, str] | None = None, read: bool = True) -> Any:
        response = client.get(path, headers=headers or {})
        body = response.data if read else None
        response.close()
        return response, body

    ok, body = get(
        "/items/7", {"X-Request-ID": "abc.1", "traceparent": f"00-{parent}-b7ad6b7169203331-01"}
    )
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "abc.1"
    missing, _ = get("/nope", {"X-Request-ID": "not safe!"})
    assert missing.status_code == 404 and re.fullmatch(
        "[0-9a-f]{32}", missing.headers["X-Request-ID"]
    )
    get("/items/8", read=False)  # the client went away before the body
    posted = client.post("/items", data=b"x" * 10)
    assert posted.status_code == 201 and posted.data
    posted.close()
    get("/health")
    route = "/items/<int:item_id>"
    assert plain.series.keys() == {
        ("GET", route, 200),
        ("GET", "<unmatched>", 404),
        ("GET", route, 499),
        ("POST", "/items", 201),
    }
    assert plain.count() == 4 and plain.sizes[("GET", route, 200)][0] == len(body)
    assert plain.request_sizes == {("POST", "/items"): [10, [1, 0, 0, 0, 0, 0, 0]]}
    assert all(not flight for flight in plain.inflight_by_method.values())
    lines = [
        json.loads(line) for line in capfd.readouterr().out.splitlines() if "pyobs.access" in line
    ]
    spans = exported.get_finished_spans()
    if not full:
        assert lines == [] and spans == ()
        return
    assert [s.name for s in spans] == [f"GET {route}", "GET", f"GET {route}", "POST /items"]
    assert spans[0].parent is not None and f"{spans[0].context.trace_id:032x}" == parent
    assert [line["http.response.status_code"] for line in lines] == [200, 404, 499, 201]
    assert lines[0]["trace.id"] == parent and lines[0]["http.request.id"] == "abc.1"
    assert lines[1]["log.level"] == "warning" and lines[0]["http.route"] == route
    assert plain.lines == {"info": 2, "warning": 2}
