"""Write the example image's locked requirements, one file per set of extras, from uv.lock.

Each file is ``uv export`` of the lock for pyobs's core dependencies plus the extras a compose
service builds with (its ``PYOBS_EXTRAS`` build argument): exact versions with their hashes,
so ``pip install --require-hashes`` in examples/Dockerfile installs exactly what the lock
tested. Run after changing uv.lock: ``python examples/requirements/lock.py``.
``tests/stack/test_requirements_lock.py`` fails while a file differs from the lock.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def extras_sets(compose: Path = ROOT / "docker-compose.yml") -> list[str]:
    """Every PYOBS_EXTRAS value a compose service builds the example image with."""
    text = compose.read_text(encoding="utf-8")
    # The anchor's default is "" (no extras); every service overrides it or keeps it.
    return sorted({""} | set(re.findall(r"PYOBS_EXTRAS:\s*\"?([A-Za-z0-9_,-]*)\"?", text)))


def file_name(extras: str) -> str:
    """``flask,otlp`` -> ``flask+otlp.txt``; no extras -> ``base.txt`` (the Dockerfile's rule)."""
    return (extras.replace(",", "+") or "base") + ".txt"


def export(extras: str) -> str:
    """``uv export`` of the lock for these extras: pinned, hashed, without pyobs itself."""
    uv = shutil.which("uv")
    command = [uv] if uv else [sys.executable, "-m", "uv"]
    command += [
        "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header",
        "--format", "requirements.txt", "--quiet",
    ]  # fmt: skip
    for extra in filter(None, extras.split(",")):
        command += ["--extra", extra]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    header = (
        "# Locked requirements of examples/Dockerfile for PYOBS_EXTRAS="
        f'"{extras}", exported from uv.lock\n'
        "# by examples/requirements/lock.py: do not edit, rerun it.\n"
    )
    return header + result.stdout


def expected() -> dict[str, str]:
    """File name -> content for every extras set the compose file uses."""
    return {file_name(extras): export(extras) for extras in extras_sets()}


def main() -> int:
    """Rewrite every lock file; remove the ones no service uses."""
    wanted = expected()
    for stale in HERE.glob("*.txt"):
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote examples/requirements/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
