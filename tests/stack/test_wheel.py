"""The wheel is what users get: build it, check it, install it alone and use it.

The sdist and the wheel are built with uv (the wheel from the sdist, so a file missing
from either shows up), checked with `twine check --strict`, and the wheel is installed
with the flask extra into a fresh virtual environment, pinned to uv.lock's versions.
From that environment `pyobs demo` and `pyobs stack init` must work: they read the
examples and the stack files from the wheel's package data, not from this checkout.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from tests.conftest import require_service
from tests.frameworks.servers import free_port
from tests.stack.helpers import ROOT

pytestmark = pytest.mark.service

DISTRIBUTION = "pyobs-kit"
# What `pyobs stack init` and `pyobs demo` need inside the wheel besides the pyobs package.
NEEDED = (
    "docker-compose.yml",
    ".env.example",
    "pyproject.toml",
    "prometheus",
    "dashboards",
    "logstash",
    "elk",
    "jaeger",
    "examples",
    "scripts/stack",
)
BUILD_TIMEOUT = 300
INSTALL_TIMEOUT = 300
DEMO_SECONDS = 5
DEMO_TIMEOUT = 120  # the demo stops itself after DEMO_SECONDS; this only bounds a hang


@dataclass(frozen=True)
class Installed:
    """A fresh virtual environment holding only the built wheel (with the flask extra)."""

    dist: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def pyobs(self) -> Path:
        return self.venv / "bin" / "pyobs"


def _uv() -> list[str]:
    """The uv command of this environment (the dev extra installs it), or fail/skip."""
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    found = shutil.which("uv")
    require_service(found is not None, "uv is not installed (it is in the dev extra)")
    assert found is not None
    return [found]


def _clean_env() -> dict[str, str]:
    """This process's environment without what would make the venv import this checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYOBS_", "OTEL_", "UV_PROJECT", "VIRTUAL_ENV"))
        and key not in {"PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _run(command: list[str | Path], timeout: float, cwd: Path) -> str:
    """Run a command to completion (bounded); fail with its output when it fails."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def _install(uv: list[str], python: Path, args: list[str | Path], cwd: Path) -> None:
    """uv pip install into python's environment: from uv's cache if it can, else the index."""
    install: list[str | Path] = [*uv, "pip", "install", "--quiet", "--python", python, *args]
    try:
        _run([*install, "--offline"], INSTALL_TIMEOUT, cwd)  # what the lock sync cached
    except AssertionError:
        _run(install, INSTALL_TIMEOUT, cwd)  # a cache without them: ask the package index


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build sdist and wheel, twine-check them, install the wheel into a fresh venv."""
    uv = _uv()
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    _run([*uv, "build", "--quiet", "--out-dir", dist, ROOT], BUILD_TIMEOUT, base)
    # twine at the lock's version, in an environment of its own (uv.lock's wheel-check group).
    tools, pins = base / "tools", base / "wheel-check.txt"
    _run(
        [*uv, "export", "--frozen", "--only-group", "wheel-check", "--no-hashes",
         "--no-emit-project", "--format", "requirements-txt", "--output-file", pins, "--quiet"],
        120,
        ROOT,
    )  # fmt: skip
    _run([*uv, "venv", "--quiet", "--python", sys.executable, tools], 120, base)
    _install(uv, tools / "bin" / "python", ["-r", pins], base)
    _run(
        [tools / "bin" / "twine", "check", "--strict", *sorted(dist.glob("pyobs_kit-*"))], 120, base
    )
    # The lock's versions, so the install is quick (uv's cache) and the same every day.
    constraints = base / "constraints.txt"
    _run(
        [*uv, "export", "--frozen", "--all-extras", "--no-hashes", "--no-emit-project",
         "--format", "requirements-txt", "--output-file", constraints, "--quiet"],
        120,
        ROOT,
    )  # fmt: skip
    venv = base / "venv"
    _run([*uv, "venv", "--quiet", "--python", sys.executable, venv], 120, base)
    (wheel,) = dist.glob("*.whl")
    _install(uv, venv / "bin" / "python", ["--constraint", constraints, f"{wheel}[flask]"], base)
    return Installed(dist=dist, venv=venv)


def test_the_built_wheel_ships_the_package_data_and_py_typed(installed: Installed) -> None:
    """The wheel holds py.typed, the examples and every stack file, under the new name."""
    (wheel,) = installed.dist.glob("*.whl")
    assert wheel.name.startswith("pyobs_kit-")
    (sdist,) = installed.dist.glob("*.tar.gz")
    assert sdist.name.startswith("pyobs_kit-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pyobs/py.typed" in names
    assert "pyobs/_data/examples/flask/app.py" in names
    with (ROOT / "pyproject.toml").open("rb") as file:
        wheel_target = tomllib.load(file)["tool"]["hatch"]["build"]["targets"]["wheel"]
    included = set(wheel_target.get("force-include", {}))
    assert [path for path in NEEDED if path not in included] == []
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"Name: {DISTRIBUTION}" in text
    assert "Requires-Python: >=3.10" in text


def test_the_installed_wheel_is_imported_not_the_checkout(installed: Installed) -> None:
    """In the fresh venv `import pyobs` is the wheel's copy, typed, under pyobs-kit."""
    code = (
        "import importlib.metadata as m, pathlib, pyobs; "
        "p = pathlib.Path(pyobs.__file__).parent; "
        f"print(p); print((p / 'py.typed').is_file()); print(m.version({DISTRIBUTION!r}))"
    )
    location, typed, version = _run([installed.python, "-c", code], 60, installed.venv).split()
    assert Path(location).is_relative_to(installed.venv)
    assert typed == "True"
    from pyobs import __version__

    assert version == __version__


def _children(pid: int) -> list[int]:
    """The process ids whose parent is pid (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _end_group(pid: int) -> None:
    """SIGTERM pid's process group, SIGKILL it if still there after a grace period."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _demo(installed: Installed, cwd: Path, port: int) -> tuple[int, str, str]:
    """Run the wheel's `pyobs demo`; end its whole process group if it outlives its bound."""
    proc = subprocess.Popen(
        [str(installed.pyobs), "demo", "--duration", str(DEMO_SECONDS), "--port", str(port)],
        cwd=cwd,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the demo and its example services: one group to end
    )
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if proc.poll() is None:
            # The example services may run in sessions of their own: end each child's
            # group (found through its parent's pid), then the demo's.
            for child in _children(proc.pid):
                _end_group(child)
            _end_group(proc.pid)
            proc.wait()
    return proc.returncode, out, err


def test_pyobs_demo_runs_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """`pyobs demo --duration 5` starts the wheel's Flask example and serves real traffic."""
    for _attempt in range(3):  # a free port can be taken before the example binds it
        rc, out, err = _demo(installed, tmp_path, free_port())
        if rc == 0 or "did not start" not in out + err:
            break
    assert rc == 0, f"demo exited {rc}:\n{out[-3000:]}\n{err[-3000:]}"
    access = []
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("log.logger") == "pyobs.access":
            access.append(record)
    served = [r for r in access if r.get("service.name") == "example-flask"]
    assert served, f"no access log line from example-flask:\n{out[-3000:]}"
    assert any(r.get("http.response.status_code") == 200 for r in served)
    assert any(r.get("http.route") == "/items/<int:item_id>" for r in served)


def test_stack_init_from_the_wheel_writes_the_repository_files(
    installed: Installed, tmp_path: Path
) -> None:
    """`pyobs stack init DIR` from the wheel writes byte-identical stack files."""
    target = tmp_path / "from-wheel"
    _run([installed.pyobs, "stack", "init", target], 120, tmp_path)
    reference = tmp_path / "from-checkout"
    from pyobs.cli.stack import init_stack

    init_stack(reference)
    written = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert written == expected
    assert Path("docker-compose.yml") in written
    for relative in written:
        if relative.name != ".env":
            assert filecmp.cmp(target / relative, reference / relative, shallow=False), relative
    env = (target / ".env").read_text()
    assert env != (reference / ".env").read_text()  # fresh secrets each time
