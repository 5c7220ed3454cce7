"""Compatibility run: the contract suite at each tested range's lowest and newest version.

pyproject.toml gives every framework extra and every core dependency the range pyobs is
tested on (``flask>=2.3,<3.2``). For each range this script makes a fresh virtual
environment with uv and runs the tests that exercise it:

- ``lowest``: the lowest versions the range allows (resolved alone with
  ``--resolution lowest-direct``, then pinned), on the oldest and on the newest supported
  Python found here;
- ``newest``: the newest versions the range allows, on the oldest and the newest Python;
- ``pre``: the newest version on the package index, pre-releases and releases past the
  upper bound included, on the newest Python: reported, allowed to fail.

Everything else in the environment is held at uv.lock's versions (pyobs's other
dependencies and the test tools), so each run changes one thing; the packages a range
moves with (``Target.moving``: the core tests' Flask and FastAPI apps, OpenTelemetry for
the OTel-based extras) take the newest versions that fit. Framework ranges run their part
of tests/frameworks/test_contract.py; core dependency ranges run the core tests
(CORE_TESTS); the optional extras (otlp, elk, grafana, instrumentations) run the test files
that use them (OPTIONAL_EXTRAS). Each result is saved as it comes (``.cache/compat/
results.json``), so ``--resume`` goes on where a stopped run ended and ``--write`` renders
the table from every saved result (after each run, so a long run leaves a table behind).

    python scripts/compat.py --write docs/compatibility.md   # everything (40 min, warm uv cache)
    python scripts/compat.py --resume --write docs/compatibility.md
    python scripts/compat.py --smoke             # oldest and newest Flask (scripts/test.sh)
    python scripts/compat.py --only flask,django --variants lowest --pythons oldest

Exit status 1 when a lowest or newest run fails (pre-release runs never fail it).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "compat"
CORE_TESTS = [
    "tests/test_metrics.py",
    "tests/test_tracing.py",
    "tests/test_logs.py",
    "tests/test_core_http.py",
    "tests/test_core_runtime.py",
    "tests/test_config.py",
]
CONTRACT = "tests/frameworks/test_contract.py"
# pytest -k expressions picking each extra's apps out of the contract suite's parameters.
FRAMEWORK_SELECTION = {
    "flask": "flask and not restful",
    "flask-restful": "restful",
    "django": "django or drf",
    "fastapi": "fastapi",
    "starlette": "starlette",
    "tornado": "tornado",
    "falcon": "falcon",
    "sanic": "sanic",
    "pyramid": "pyramid",
    "aiohttp": "aiohttp",
}
# Optional extras: the test files that use each one, and whether it moves with OpenTelemetry
# (its releases pin an OpenTelemetry API/SDK, so those float within pyobs's range, with the
# propagators the OTel tests ask for). Each also takes the Flask/FastAPI apps that fit.
OPTIONAL_EXTRAS: dict[str, tuple[list[str], bool]] = {
    "otlp": (["tests/test_otel_env.py"], True),
    "elk": (
        ["tests/elk/test_cli.py", "tests/elk/test_assets.py", "tests/elk/test_doctor.py"],
        False,
    ),
    "grafana": (["tests/prometheus/test_grafana_push.py"], False),
    "instrumentations": (["tests/test_interop.py"], True),
}
OTEL_PEERS = ("opentelemetry-propagator-b3", "opentelemetry-propagator-jaeger")
OTEL_CORE = ("opentelemetry-api", "opentelemetry-sdk")
# Core dependencies tested as one range when they are released together.
CORE_GROUPS = {"opentelemetry-sdk": "opentelemetry-api"}
# Test tools, held at the lock's versions. uvicorn serves the ASGI variants of the contract
# suite (Django ASGI, Falcon ASGI).
TOOLS = ["pytest", "pytest-timeout", "websockets", "uvicorn", "httpx"]
# The core tests' apps are Flask and FastAPI: core runs install these extras' ranges, and
# OTel's own Flask and FastAPI instrumentations (the coexistence tests), at whatever versions
# fit the OpenTelemetry under test.
CORE_APP_EXTRAS = ("flask", "fastapi")
CORE_APP_PEERS = (
    "opentelemetry-instrumentation-flask>=0.46b0",
    "opentelemetry-instrumentation-fastapi>=0.46b0",
    # Older OTel contrib imports pkg_resources without declaring setuptools.
    "setuptools<81",
)
VARIANTS = ("lowest", "newest", "pre")
PYTHONS = ("oldest", "newest")
# The table's columns, in order: (variant, which Python). Pre-releases run on the newest only.
COLUMNS = [("lowest", "oldest"), ("lowest", "newest"), ("newest", "oldest"),
           ("newest", "newest"), ("pre", "newest")]  # fmt: skip
# What earlier runs found at the old floors, and why the floors in pyproject.toml are where
# they are (kept under the table so a reader of the table sees it).
FINDINGS = [
    "## Floors raised by this run",
    "",
    "- **Sanic 25.3** (was 23.12): Sanic 23.12 to 24.12 pass everything but WebSockets,",
    "  which fail with a protocol error on websockets 14 and later (Sanic allows any",
    "  `websockets>=10`, so a fresh install gets the newest); 23.12.0 passes with websockets",
    "  13.1.",
    "- **Pyramid 2.1** (was 2.0): Pyramid 2.0.x imports `pkg_resources` without capping",
    "  setuptools, and the newest setuptools no longer has it, so a fresh install cannot",
    "  import Pyramid. With `setuptools<81` installed by hand, 2.0 passes.",
    "- **aiohttp 3.11** (was 3.9): on 3.9, `request.url` raises with current yarl releases",
    "  and pyobs records no metrics for the request (an internal error, counted, the",
    "  request served); before 3.11, `WebSocketResponse` has no `send_frame`, which pyobs's",
    "  WebSocket counting wraps, and the WebSocket handshake fails with a 500.",
    "- **Falcon 4.0 on Python 3.13** (3.1 below it): Falcon before 4.0 has no wheel for",
    "  Python 3.13 and its source does not build there (the lowest run on 3.13 failed to",
    "  install 3.1.0); the `falcon` extra says so with a `python_version` marker.",
    "- **PyYAML 6.0.2 on Python 3.13** (6.0 below it, `grafana` extra): the same (6.0 and",
    "  6.0.1 have no wheel for 3.13 and do not build there).",
    "",
    "## Found at the OpenTelemetry floor (1.25)",
    "",
    "- The SDK calls a span processor's `_on_ending` only from 1.40, and has the `os`",
    "  resource detector only from 1.27; pyobs does what the installed SDK does, and the",
    "  tests now expect exactly that (they assumed the newest SDK before).",
]
INSTALL_TIMEOUT = 600
TEST_TIMEOUT = 900


@dataclass
class Target:
    """One tested range: the requirements it varies and the tests that exercise it."""

    name: str
    kind: str  # "extra", "optional" or "core"
    requirements: list[Requirement]
    tests: list[str]
    selection: str | None = None
    moving: list[Requirement] = field(default_factory=list)  # float, not held at the lock

    @property
    def packages(self) -> set[str]:
        return {canonicalize_name(r.name) for r in self.requirements}


@dataclass
class Result:
    """What one run of one target found."""

    target: str
    variant: str
    python: str
    which: str = "newest"  # the oldest or the newest Python found
    versions: dict[str, str] = field(default_factory=dict)
    outcome: str = "not run"  # "passed", "failed", "install failed", "no newer version"
    summary: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in {"passed", "no newer version"}


def pyproject() -> dict[str, object]:
    """The repository's pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def targets() -> list[Target]:
    """Every framework extra and every core dependency (group) of pyproject.toml."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    extras: dict[str, list[str]] = project["optional-dependencies"]
    found = [
        Target(name, "extra", [Requirement(r) for r in extras[name]], [CONTRACT], selection)
        for name, selection in FRAMEWORK_SELECTION.items()
    ]
    core = [Requirement(r) for r in project["dependencies"]]
    grouped = {canonicalize_name(k): canonicalize_name(v) for k, v in CORE_GROUPS.items()}
    for requirement in core:
        name = canonicalize_name(requirement.name)
        if name in grouped:
            continue
        members = [requirement] + [
            r for r in core if grouped.get(canonicalize_name(r.name)) == name
        ]
        label = "opentelemetry" if name == "opentelemetry-api" else name
        found.append(Target(label, "core", members, CORE_TESTS, moving=app_requirements()))
    otel = [r for r in core if canonicalize_name(r.name) in OTEL_CORE]
    for extra, (tests, with_otel) in OPTIONAL_EXTRAS.items():
        moving = app_requirements()
        if with_otel:
            moving += otel + [Requirement(r) for r in OTEL_PEERS]
        requirements = [Requirement(r) for r in extras[extra]]
        found.append(Target(extra, "optional", requirements, tests, moving=moving))
    return found


def app_requirements() -> list[Requirement]:
    """The ranges of the extras whose apps the core tests run (CORE_APP_EXTRAS)."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    extras: dict[str, list[str]] = project["optional-dependencies"]
    apps = [Requirement(r) for name in CORE_APP_EXTRAS for r in extras[name]]
    return apps + [Requirement(r) for r in CORE_APP_PEERS]


def uv_command() -> list[str]:
    """uv from this environment (the dev extra) or from PATH."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    if found is None:
        raise SystemExit("uv is needed: pip install uv (or run scripts/test.sh once)")
    return [found]


def find_python(version: str) -> str | None:
    """A working interpreter of this Python version on PATH (pyenv's shims included)."""
    candidates: list[tuple[str, dict[str, str]]] = [(f"python{version}", {})]
    if shutil.which("pyenv"):
        listed = subprocess.run(
            ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        matching = sorted(
            (v for v in listed if re.fullmatch(re.escape(version) + r"(\.\d+)?", v)),
            key=Version,
            reverse=True,
        )
        candidates += [(f"python{version}", {"PYENV_VERSION": v}) for v in matching]
    for command, extra_env in candidates:
        if shutil.which(command) is None:
            continue
        probe = subprocess.run(
            [command, "-c", "import sys; print(sys.executable)"],
            env={**os.environ, **extra_env},
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip():
            return probe.stdout.strip()
    return None


def supported_pythons() -> list[str]:
    """The Python versions pyproject.toml's classifiers name, oldest first."""
    project = pyproject()["project"]
    assert isinstance(project, dict)
    prefix = "Programming Language :: Python :: "
    versions = [
        c.removeprefix(prefix)
        for c in project["classifiers"]
        if c.startswith(prefix) and re.fullmatch(r"3\.\d+", c.removeprefix(prefix))
    ]
    return sorted(versions, key=Version)


def lock_pins(uv: list[str]) -> dict[str, list[str]]:
    """uv.lock's pinned lines (with their Python markers) by package name."""
    exported = subprocess.run(
        [*uv, "export", "--frozen", "--all-extras", "--no-hashes", "--no-emit-project",
         "--no-header", "--no-annotate", "--format", "requirements-txt"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    pins: dict[str, list[str]] = {}
    for line in exported.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        pins.setdefault(canonicalize_name(Requirement(line).name), []).append(line)
    return pins


def requirement_lines(target: Target, variant: str) -> list[str]:
    """The target's requirements as this variant asks for them."""
    lines = []
    for requirement in target.requirements:
        if variant == "pre":
            lower = [s for s in requirement.specifier if s.operator in {">=", "==", "~="}]
            spec = ",".join(str(s) for s in lower)
            lines.append(f"{requirement.name}{spec}")
        else:
            lines.append(str(requirement))
    return lines


def run_one(
    target: Target,
    variant: str,
    python: tuple[str, str, str],
    uv: list[str],
    pins: dict[str, list[str]],
    core_requirements: list[Requirement],
    newest: dict[str, str] | None = None,
) -> Result:
    """Make the environment for one target and variant, run its tests, return the outcome.

    ``python`` is (which: oldest or newest, its version, its interpreter)."""
    which, python_version, interpreter = python
    result = Result(target.name, variant, python_version, which)
    started = time.monotonic()
    venv = WORK / f"{target.name}-{variant}-{which}"
    shutil.rmtree(venv, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYOBS_", "OTEL_", "UV_"))}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    subprocess.run(
        [*uv, "venv", "--quiet", "--python", interpreter, str(venv)],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    venv_python = venv / "bin" / "python"
    # Everything but the target's own packages stays at the lock's versions, except what the
    # target moves with, which takes the newest versions that fit (newer FastAPI releases
    # need a newer OpenTelemetry API than pyobs's lowest).
    apps = target.moving
    floating = target.packages | {canonicalize_name(r.name) for r in apps}
    held = [r for r in core_requirements if canonicalize_name(r.name) not in floating]
    held_names = {canonicalize_name(r.name) for r in held}
    held_names |= {canonicalize_name(t) for t in TOOLS} - floating
    constraints = WORK / f"{target.name}-{variant}-{which}.constraints.txt"
    constraints.write_text(
        "\n".join(line for name in sorted(held_names) for line in pins.get(name, [])) + "\n"
    )
    direct = [str(r) for r in held] + [t for t in TOOLS if canonicalize_name(t) in held_names]
    direct += [str(r) for r in apps if canonicalize_name(r.name) not in target.packages]
    wanted = requirement_lines(target, variant)
    if variant == "lowest":
        # The lowest versions the range allows, resolved alone, then pinned: the rest of
        # the environment takes the newest versions that fit them.
        try:
            wanted = lowest_pins(uv, target, interpreter, env)
        except subprocess.CalledProcessError as exc:
            result.outcome = "install failed"
            result.summary = " ".join(str(exc.stderr).split())[:300]
            result.seconds = time.monotonic() - started
            return result
    command = [*uv, "pip", "install", "--quiet", "--python", str(venv_python),
               "--constraint", str(constraints), *direct, *wanted]  # fmt: skip
    if variant == "pre":
        command += ["--prerelease", "allow"]
    install = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if install.returncode != 0:
        result.outcome = "install failed"
        lines = [ln for ln in install.stderr.splitlines() if ln.strip()]
        result.summary = " ".join(lines[:3])[:300]
        result.seconds = time.monotonic() - started
        return result
    listed = subprocess.run(
        [*uv, "pip", "list", "--python", str(venv_python), "--format", "json"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(listed)}
    result.versions = {
        r.name: installed.get(canonicalize_name(r.name), "?") for r in target.requirements
    }
    if variant == "pre" and newest and result.versions == newest:
        result.outcome = "no newer version"  # the index has nothing past the newest run
        result.seconds = time.monotonic() - started
        shutil.rmtree(venv, ignore_errors=True)
        return result
    pytest_command = [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      *target.tests]  # fmt: skip
    if target.selection:
        pytest_command += ["-k", target.selection]
    test_env = dict(env, PYTHONPATH=str(ROOT))
    if target.kind == "extra":
        test_env["PYOBS_REQUIRE_SERVICES"] = "1"  # the framework under test must not skip
    try:
        tested = subprocess.run(
            pytest_command, cwd=ROOT, env=test_env, capture_output=True, text=True,
            timeout=TEST_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        result.outcome, result.summary = "failed", f"timed out after {TEST_TIMEOUT} s"
    else:
        result.outcome = "passed" if tested.returncode == 0 else "failed"
        result.summary = summary_line(tested.stdout) or f"pytest exit {tested.returncode}"
        if tested.returncode == 5:
            result.outcome = "failed"  # no test ran: never a pass
        if result.outcome == "failed":
            failures = [
                ln for ln in tested.stdout.splitlines() if re.match(r"(FAILED|ERROR) tests/", ln)
            ]
            if failures:
                result.summary += "; first: " + failures[0][:200]
    result.seconds = time.monotonic() - started
    shutil.rmtree(venv, ignore_errors=True)
    return result


def lowest_pins(uv: list[str], target: Target, interpreter: str, env: dict[str, str]) -> list[str]:
    """`name==version` of the lowest versions the target's ranges allow on this Python."""
    compiled = subprocess.run(
        [*uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--python",
         interpreter, "--resolution", "lowest-direct", "-"],
        input="\n".join(str(r) for r in target.requirements) + "\n",
        env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=True,
    ).stdout  # fmt: skip
    pinned: dict[str, str] = {}
    for line in compiled.splitlines():
        if "==" in line and not line.startswith("#"):
            requirement = Requirement(line.split(";")[0].strip())
            pinned[canonicalize_name(requirement.name)] = str(requirement)
    return [pinned[name] for name in sorted(target.packages)]


def summary_line(output: str) -> str:
    """pytest's closing counts ("12 passed, 1 skipped"), without the timing."""
    for line in reversed(output.splitlines()):
        if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line):
            return re.sub(r"\s+in [\d.]+s.*$", "", line.strip("= ")).strip()
    return ""


def cell(result: Result | None) -> str:
    """One table cell: versions, outcome and counts."""
    if result is None:
        return "not run"
    versions = ", ".join(f"{name} {version}" for name, version in result.versions.items())
    if result.outcome == "no newer version":
        return f"same as newest ({versions})"
    mark = {"passed": "✅ passed", "failed": "❌ failed", "install failed": "❌ install failed"}
    text = mark.get(result.outcome, result.outcome)
    parts = [p for p in (versions, text, result.summary) if p]
    return "<br>".join(parts).replace("|", "\\|")


RESULTS = WORK / "results.json"


def load_results() -> list[Result]:
    """The results saved by earlier runs (``--resume``)."""
    if not RESULTS.exists():
        return []
    return [Result(**item) for item in json.loads(RESULTS.read_text())]


def save_results(results: list[Result]) -> None:
    """Save every result so far (written after each run: a stopped run loses none)."""
    RESULTS.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")


def write_table(
    path: Path,
    results: list[Result],
    all_targets: list[Target],
    header: str,
    pythons: dict[str, str],
) -> None:
    """docs/compatibility.md: one row per range, one column per variant and Python."""
    by_key = {(r.target, r.variant, r.which): r for r in results}
    titles = {"lowest": "lowest", "newest": "newest", "pre": "newest on the index, may fail"}
    lines = [
        "# Compatibility",
        "",
        "Each framework extra, each optional extra and each core dependency of pyobs declares",
        "the range of versions it is tested on (`pyproject.toml`). This table is the output of",
        "the compatibility run, `python scripts/compat.py --write docs/compatibility.md`, which",
        "installs each range's lowest and newest versions on the oldest and the newest",
        "supported Python (and the newest version on the package index, pre-releases and",
        "releases past the range included, on the newest Python) into a fresh virtual",
        "environment, holds every other package at the `uv.lock` version, and runs the tests",
        "that exercise the range: the framework's part of the contract suite",
        "(`tests/frameworks/test_contract.py`), the core tests for a core dependency, the test",
        "files that use an optional extra. A failing lowest or newest run fails the script; the",
        "last column is informational. `bash scripts/test.sh` runs a smoke subset of it (the",
        "oldest and the newest Flask).",
        "",
        header,
        "",
        "| range | kind | "
        + " | ".join(f"{titles[v]} (Python {pythons[w]})" for v, w in COLUMNS)
        + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for target in all_targets:
        if not any(r.target == target.name for r in results):
            continue
        spec = "<br>".join(f"`{r}`" for r in target.requirements)
        row = [f"**{target.name}**<br>{spec}", target.kind]
        row += [cell(by_key.get((target.name, v, w))) for v, w in COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    hard = [r for r in results if r.variant != "pre"]
    failed = sum(not r.ok for r in hard)
    missing = sum((t.name, v, w) not in by_key for t in all_targets for v, w in COLUMNS)
    lines += [
        "",
        f"Lowest and newest runs: {len(hard) - failed} passed, {failed} failed; "
        f"{missing} cells not run.",
        "",
        *FINDINGS,
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the compatibility matrix (or its smoke subset) and report it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="oldest and newest Flask only")
    parser.add_argument("--only", default="", help="comma-separated range names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="lowest,newest,pre")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="oldest,newest")
    parser.add_argument("--resume", action="store_true", help="skip what results.json has")
    parser.add_argument(
        "--retry-failed", action="store_true", help="with --resume: run failed cells again"
    )
    parser.add_argument("--write", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)

    all_targets = targets()
    chosen = all_targets
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    which_pythons = [p.strip() for p in args.pythons.split(",") if p.strip()]
    columns = [(v, w) for v, w in COLUMNS if v in variants and w in which_pythons]
    if args.smoke:
        chosen = [t for t in all_targets if t.name == "flask"]
        columns = [("lowest", "oldest"), ("newest", "newest")]
    elif args.only:
        names = {n.strip() for n in args.only.split(",")}
        unknown = names - {t.name for t in all_targets}
        if unknown:
            raise SystemExit(
                f"unknown range(s) {sorted(unknown)}; known: "
                + ", ".join(t.name for t in all_targets)
            )
        chosen = [t for t in all_targets if t.name in names]

    present = [(v, p) for v in supported_pythons() if (p := find_python(v))]
    if not present:
        raise SystemExit("no supported Python found on PATH")
    found = {"oldest": present[0], "newest": present[-1]}
    pythons = {w: found[w][0] for w in PYTHONS}
    uv = uv_command()
    pins = lock_pins(uv)
    project = pyproject()["project"]
    assert isinstance(project, dict)
    core_requirements = [Requirement(r) for r in project["dependencies"]]
    WORK.mkdir(parents=True, exist_ok=True)
    uv_version = subprocess.run(
        [*uv, "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    header = (
        f"Run on {when} with uv {uv_version}; oldest Python {pythons['oldest']}, "
        f"newest Python {pythons['newest']}."
    )

    saved = load_results() if args.resume else []
    if args.retry_failed:
        saved = [r for r in saved if r.ok or r.variant == "pre"]
    done = {(r.target, r.variant, r.which) for r in saved}
    results: list[Result] = list(saved)
    # Column by column (every range's lowest on the oldest Python first), so a run stopped
    # early has tested every range somewhere.
    for variant, which in columns:
        for target in chosen:
            if (target.name, variant, which) in done:
                continue
            version, interpreter = found[which]
            newest = next(
                (r.versions for r in results
                 if r.target == target.name and r.variant == "newest" and r.which == which),
                None,
            )  # fmt: skip
            result = run_one(
                target, variant, (which, version, interpreter), uv, pins, core_requirements,
                newest,
            )  # fmt: skip
            results.append(result)
            if not args.smoke:
                save_results(results)
            if args.write:
                write_table(args.write, results, all_targets, header, pythons)
            versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
            print(f"{target.name:18} {variant:7} py{version:5} {result.outcome:15} "
                  f"{result.seconds:6.1f}s  {versions}  {result.summary}", flush=True)  # fmt: skip

    if args.write:
        write_table(args.write, results, all_targets, header, pythons)
        print(f"wrote {args.write}")
    hard = [r for r in results if r.variant != "pre"]
    pre = [r for r in results if r.variant == "pre"]
    if pre:
        print(f"newest-on-the-index runs (allowed to fail): {sum(not r.ok for r in pre)} "
              f"of {len(pre)} did not pass")  # fmt: skip
    failed = sum(not r.ok for r in hard)
    print(f"compatibility: {len(hard) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
