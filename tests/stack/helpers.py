"""Shared helpers of the stack tests: the repository root, env files, stack copies."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from pyobs.cli.stack import stack_files
from tests.conftest import require_service
from tests.stack import validate

ROOT = Path(__file__).resolve().parents[2]

# Files other parts of the project own. A cross-check that reads one is skipped
# locally while it does not exist yet, and fails in CI.
OTHER_OWNERS = {
    "prometheus": (validate.PROMETHEUS_CONFIG, validate.ALERTMANAGER_CONFIG),
    "grafana": (validate.GRAFANA_DATASOURCES, validate.GRAFANA_DASHBOARD_PROVIDERS),
    "logstash": (validate.LOGSTASH_PIPELINES, validate.LOGSTASH_PIPELINE_DIR),
}


def require_files(directory: Path, area: str) -> None:
    """Skip (locally) or fail (CI) when the files of another owner are not there yet."""
    missing = [path for path in OTHER_OWNERS[area] if not (directory / path).exists()]
    require_service(not missing, f"{area} files not written yet: {', '.join(missing)}")


def write_env(path: Path, env: dict[str, str]) -> Path:
    """Write env as a compose .env file at path."""
    path.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return path


def copy_stack(target: Path) -> Path:
    """Copy every file `pyobs stack init` would write into target (a broken-copy base)."""
    for relative, source in stack_files().items():
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return target


def load_script(name: str) -> ModuleType:
    """Import scripts/stack/<name>.py as a module."""
    path = ROOT / "scripts" / "stack" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"stack_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_dockerlint(target: Path) -> Path | None:
    """Build the BuildKit-based Dockerfile linter (tests/stack/dockerlint) into target."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = target / "dockerlint"
    subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=Path(__file__).with_name("dockerlint"),
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        check=True,
        timeout=600,
    )
    return binary
