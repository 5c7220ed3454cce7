"""Run a real app's own test suite without and with pyobs, and compare (docs/realapps.md).

    python scripts/realapps/run.py flower --source SRC --python VENV/bin/python [-- ARGS]

SRC is the app's source tree (brought in by hand, see docs/realapps.md); VENV has the app's
requirements and pyobs's dependencies installed. The suite runs twice, unchanged: once as
it is, once with pyobs applied the documented way (realapps_hooks.py, default settings).
Both runs load probe.py as ``sitecustomize``, which counts the log records every handler
writes. The check holds when both runs pass and fail the same tests, the app's own records
(every logger but ``pyobs.*``) are written the same number of times at each level, and no
record is written twice because of pyobs. Exit status 0 when it holds, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# A server's own access log: pyobs's access log (pyobs.access) takes its place, so these are
# counted apart and not among the app's own records.
SERVER_ACCESS_LOGGERS = frozenset(
    {"tornado.access", "aiohttp.access", "uvicorn.access", "gunicorn.access", "sanic.access"}
)
REPO = HERE.parents[1]


@dataclass(frozen=True)
class App:
    """How to run one app's suite and where pyobs goes in."""

    hook: str  # module:function of realapps_hooks, run once that module is imported
    command: tuple[str, ...]  # after the interpreter
    runner: str  # "unittest" or "pytest": how to read the result line


APPS = {
    "flower": App("flower.app:flower", ("-m", "tests.unit"), "unittest"),
    "healthchecks": App("hc.settings:healthchecks", ("manage.py", "test"), "unittest"),
    "aiohttp-chat": App(
        "aiohttpdemo_chat.main:aiohttp_chat",
        (
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
        ),
        "pytest",
    ),
    "fastapi-nano": App(
        "svc.main:fastapi_nano",
        ("-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "svc/tests"),
        "pytest",
    ),
}


@dataclass
class Run:
    """What one run of the suite did."""

    tests: dict[str, int]
    stdout_lines: int
    stderr_lines: int
    json_stdout_lines: int
    written: Counter[str] = field(default_factory=Counter)  # the app's records, by level
    captured: Counter[str] = field(default_factory=Counter)  # seen by pytest's capture
    pyobs_written: Counter[str] = field(default_factory=Counter)
    pyobs_captured: Counter[str] = field(default_factory=Counter)
    twice: int = 0
    server_access: Counter[str] = field(default_factory=Counter)  # replaced by pyobs's
    by_logger: Counter[str] = field(default_factory=Counter)  # written, "logger:level"
    observed: int = 0  # requests pyobs observed (its metrics), in processes that exited


def _tests(runner: str, output: str) -> dict[str, int]:
    if runner == "pytest":
        summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
        counts = dict.fromkeys(("passed", "failed", "error", "skipped"), 0)
        for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary[-1]):
            counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
        return counts
    ran = re.findall(r"^Ran (\d+) tests?", output, re.MULTILINE)
    verdict = re.findall(r"^(OK|FAILED)(?: \((.*)\))?$", output, re.MULTILINE)
    if not ran or not verdict:
        raise SystemExit("could not read the unittest result from the output")
    details = dict.fromkeys(("failures", "errors", "skipped", "expected failures"), 0)
    for part in (verdict[-1][1] or "").split(", "):
        if "=" in part:
            key, value = part.split("=")
            details[key] = int(value)
    total = int(ran[-1])
    failed, errors, skipped = details["failures"], details["errors"], details["skipped"]
    return {
        "passed": total - failed - errors - skipped - details["expected failures"],
        "failed": failed,
        "error": errors,
        "skipped": skipped,
    }


def run_suite(
    app: App,
    source: Path,
    python: str,
    with_pyobs: bool,
    settings: dict[str, str],
    extra: list[str],
) -> Run:
    """Run the suite once; read the result and the probe's records."""
    with tempfile.TemporaryDirectory(prefix="pyobs-realapps-") as tmp:
        shutil.copy(HERE / "probe.py", Path(tmp) / "sitecustomize.py")
        shutil.copy(HERE / "realapps_hooks.py", Path(tmp) / "realapps_hooks.py")
        records = Path(tmp) / "records.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_"))}
        env["PYTHONPATH"] = os.pathsep.join([tmp, str(REPO), str(source)])
        env["REALAPPS_RECORDS"] = str(records)
        if with_pyobs:
            env["REALAPPS_PYOBS"] = "1"
            env["REALAPPS_HOOK"] = app.hook
            env.update(settings)
        done = subprocess.run(
            [python, *app.command, *extra],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        output = done.stdout + "\n" + done.stderr
        run = Run(
            tests=_tests(app.runner, output),
            stdout_lines=len(done.stdout.splitlines()),
            stderr_lines=len(done.stderr.splitlines()),
            json_stdout_lines=sum(1 for line in done.stdout.splitlines() if _is_json(line)),
        )
        lines = records.read_text().splitlines() if records.exists() else []
        for line in lines:
            note = json.loads(line)
            if note["kind"] == "observed":
                run.observed += int(note["handler"])
                continue
            ours = note["logger"] == "pyobs" or note["logger"].startswith("pyobs.")
            if note["logger"] in SERVER_ACCESS_LOGGERS:
                if note["kind"] == "output":
                    run.server_access[note["level"]] += 1
                continue
            if note["kind"] == "output":
                run.by_logger[f"{note['logger']}:{note['level']}"] += 1
            if note["kind"] == "capture":
                (run.pyobs_captured if ours else run.captured)[note["level"]] += 1
            elif ours:
                run.pyobs_written[note["level"]] += 1
            else:
                run.written[note["level"]] += 1
            run.twice += note["twice"]
        return run


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _show(run: Run) -> dict[str, Any]:
    return {
        "tests": run.tests,
        "stdout lines": run.stdout_lines,
        "of which JSON": run.json_stdout_lines,
        "stderr lines": run.stderr_lines,
        "app records written, by level": dict(sorted(run.written.items())),
        "app records captured by pytest, by level": dict(sorted(run.captured.items())),
        "pyobs records written, by level": dict(sorted(run.pyobs_written.items())),
        "pyobs records captured by pytest, by level": dict(sorted(run.pyobs_captured.items())),
        "server access-log records written, by level": dict(sorted(run.server_access.items())),
        "records written twice": run.twice,
        "app records written, by logger and level": dict(sorted(run.by_logger.items())),
        "requests pyobs observed": run.observed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", choices=sorted(APPS))
    parser.add_argument("--source", type=Path, required=True, help="the app's source tree")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the app's venv")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PYOBS_ setting for the run with pyobs (default: none, pyobs's defaults)",
    )
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # for the suite, both runs
    args = parser.parse_args(argv[: len(argv) - len(extra) - (1 if extra else 0)])
    args.suite_args = extra
    app = APPS[args.app]
    source = args.source.resolve()
    settings = dict(item.split("=", 1) for item in args.env)
    without = run_suite(app, source, args.python, False, {}, args.suite_args)
    with_pyobs = run_suite(app, source, args.python, True, settings, args.suite_args)
    checks = {
        "same test results": without.tests == with_pyobs.tests,
        "same app records written, by level": without.written == with_pyobs.written,
        "same app records captured, by level": without.captured == with_pyobs.captured,
        # A record two of the app's own handlers write (a file and the console) is the
        # app's choice: pyobs must add no such record.
        "no record written twice by pyobs": with_pyobs.twice == without.twice,
        "pyobs observed the suite's requests": with_pyobs.observed > 0,
    }
    report = {
        "app": args.app,
        "settings": settings,
        "suite arguments": args.suite_args,
        "without pyobs": _show(without),
        "with pyobs": _show(with_pyobs),
        "checks": checks,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
