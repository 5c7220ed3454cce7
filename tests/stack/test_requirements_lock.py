"""The example image's locked requirements: what uv.lock says, for every image the stack builds."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import require_service
from tests.stack.helpers import ROOT

REQUIREMENTS = ROOT / "examples" / "requirements"


def _lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock", REQUIREMENTS / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uv_available() -> bool:
    if shutil.which("uv"):
        return True
    probe = subprocess.run(
        [sys.executable, "-m", "uv", "--version"], capture_output=True, check=False
    )
    return probe.returncode == 0


def test_every_lock_file_is_uv_lock_s_export() -> None:
    """Each examples/requirements/*.txt equals `uv export --frozen` for its extras: a changed
    uv.lock without a rerun of lock.py fails here."""
    require_service(_uv_available(), "uv is not installed")
    lock = _lock()
    wanted = lock.expected()
    present = {path.name: path.read_text(encoding="utf-8") for path in REQUIREMENTS.glob("*.txt")}
    assert set(present) == set(wanted), "rerun: python examples/requirements/lock.py"
    for name, text in wanted.items():
        assert present[name] == text, f"{name} differs from uv.lock: rerun lock.py"


def test_every_image_finds_its_lock_file() -> None:
    """The Dockerfile's file-name rule, run by a real shell, names an existing file for every
    PYOBS_EXTRAS value in docker-compose.yml, and pip is told to require hashes."""
    lock = _lock()
    dockerfile = (ROOT / "examples" / "Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps" in dockerfile
    rule = re.search(r'"requirements/\$\((.+?)\)\.txt"', dockerfile)
    assert rule, "the Dockerfile no longer picks a lock file by PYOBS_EXTRAS"
    sets = lock.extras_sets()
    assert {"", "elk", "flask,otlp", "fastapi,otlp"} <= set(sets)
    for extras in sets:
        name = subprocess.run(
            ["sh", "-c", rule[1]],
            env={"PYOBS_EXTRAS": extras, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert f"{name}.txt" == lock.file_name(extras)
        assert (REQUIREMENTS / f"{name}.txt").is_file(), extras


@pytest.mark.parametrize("path", sorted(REQUIREMENTS.glob("*.txt")), ids=lambda p: p.name)
def test_every_requirement_is_pinned_with_hashes(path: Path) -> None:
    """Exact versions, each with at least one sha256 hash; pyobs itself is not in the file."""
    text = path.read_text(encoding="utf-8")
    entries = re.split(
        r"\n(?=[A-Za-z0-9])",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).strip(),
    )
    assert entries
    for entry in entries:
        head = entry.split("\\")[0].strip()
        assert re.match(r"^[A-Za-z0-9._-]+(\[[^\]]*\])?==[^\s;]+", head), head
        assert "--hash=sha256:" in entry, head
        assert not head.lower().startswith(("pyobs-kit==", "pyobs==")), head
    assert "prometheus-client==" in text  # the core dependency is in every image
