"""Run a script as if only some distributions were installed (an image's pip install).

``python only_installed.py ALLOWED.json SCRIPT|-m MODULE [ARGS...]``: imports of top-level
modules that belong only to distributions outside ALLOWED fail with ImportError,
as they would in the image; the standard library and the script's own folder
stay importable. The test environment has every extra installed, so without this
an example that needs a package its extra lacks would pass here and fail in Docker.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import runpy
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: Iterable[str]) -> set[str]:
    """Canonical names of the distributions these requirements pull in, transitively."""
    seen: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = _canonical(requirement.name)
        key = name + "[" + ",".join(sorted(requirement.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dependencies = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in dependencies:
            dependency = Requirement(text)
            marker = dependency.marker
            if marker is None:
                pending.append(dependency)
                continue
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if any(marker.evaluate(env) for env in environments):
                dependency.marker = None
                pending.append(dependency)
    return {key.partition("[")[0] for key in seen}


def blocked_modules(allowed: set[str]) -> set[str]:
    """Top-level modules provided only by installed distributions outside allowed.

    When another distribution here provides the same module as an allowed one
    (urllib3-future installs itself as `urllib3`), the code that actually runs is
    that one, so its own dependencies are allowed too.
    """
    providers = importlib.metadata.packages_distributions()
    allowed = set(allowed)
    for distributions in providers.values():
        canonical = {_canonical(dist) for dist in distributions}
        if canonical & allowed and not canonical <= allowed:
            allowed |= closure(sorted(canonical - allowed))
    blocked = set()
    for module, distributions in providers.items():
        if not any(_canonical(dist) in allowed for dist in distributions):
            blocked.add(module)
    return blocked - set(sys.stdlib_module_names) - {"pyobs", "tests"}


def main(argv: list[str]) -> None:
    """Install the import block for the allowed requirements, then run the script."""
    requirements = json.loads(Path(argv[1]).read_text())
    # None in sys.modules is Python's own "this module is absent": imports raise
    # ModuleNotFoundError and importlib.util.find_spec() answers None.
    for module in blocked_modules(closure(requirements)):
        sys.modules.setdefault(module, None)  # type: ignore[arg-type]
    if argv[2] == "-m":
        sys.argv = [argv[3], *argv[4:]]
        sys.path[0] = str(Path.cwd())
        runpy.run_module(argv[3], run_name="__main__", alter_sys=True)
        return
    script = argv[2]
    sys.argv = [script, *argv[3:]]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
