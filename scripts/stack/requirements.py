"""Print pyobs's requirements for the given extras, one per line, read from pyproject.toml.

The example image installs these and runs pyobs from source, so it needs no build
backend and no wheel. Usage: ``python scripts/stack/requirements.py flask,otlp``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

_SELF_REFERENCE = re.compile(r"^\s*(?P<name>[A-Za-z0-9._-]+)\s*\[(?P<extras>[^\]]*)\]\s*$")


def requirements(pyproject: dict[str, object], extras: list[str]) -> list[str]:
    """Core dependencies plus those of each extra, expanding ``pyobs[...]`` references."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    name = str(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    result: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    pending = [extra.strip() for extra in extras if extra.strip()]
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            known = ", ".join(sorted(optional))
            raise SystemExit(f"unknown extra {extra!r}; pyproject.toml defines: {known}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = _SELF_REFERENCE.match(requirement)
            if match and match["name"].lower() == name.lower():
                pending.extend(part.strip() for part in match["extras"].split(","))
            elif requirement not in result:
                result.append(requirement)
    return result


def main(argv: list[str]) -> int:
    """Print the requirements for the comma-separated extras in argv[1] (may be empty)."""
    extras = argv[1].split(",") if len(argv) > 1 else []
    pyproject_path = Path(argv[2]) if len(argv) > 2 else Path("pyproject.toml")
    with pyproject_path.open("rb") as file:
        data = tomllib.load(file)
    print("\n".join(requirements(data, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
