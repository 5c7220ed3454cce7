"""`pyobs stack init DIR`: write the docker compose stack into a directory of your own.

DIR gets the compose file, every file it mounts (Prometheus, Alertmanager, Grafana,
Logstash and Elasticsearch configs), what its Python image is built from (pyobs,
the examples, the setup scripts) and a `.env` with freshly generated passwords, so
`docker compose up` there runs the same stack as in the pyobs repository.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyobs._resources import repo_file

# What the stack needs, as paths relative to the repository root. Directories are
# copied whole (minus caches). "pyobs" is the package itself: the example image
# runs it from source.
STACK_PATHS = (
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
    "pyobs",
)
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SECRET_SUFFIXES = ("PASSWORD", "_KEY")


def _source_of(relative: str) -> Path:
    if relative == "pyobs":
        return _PACKAGE_DIR
    return repo_file(relative)


def _walk(root: Path, relative: str) -> Iterator[tuple[str, Path]]:
    if root.is_file():
        yield relative, root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # The wheel's package data is not part of the package source.
        dirnames[:] = sorted(
            name
            for name in dirnames
            if name not in _SKIP_DIRS and not (here == _PACKAGE_DIR and name == "_data")
        )
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = here / name
            yield f"{relative}/{path.relative_to(root).as_posix()}", path


def stack_files() -> dict[str, Path]:
    """Every file `stack init` writes: {path relative to DIR: source path}."""
    files: dict[str, Path] = {}
    missing = []
    for relative in STACK_PATHS:
        source = _source_of(relative)
        if not source.exists():
            missing.append(relative)
            continue
        files.update(_walk(source, relative))
    if missing:
        raise FileNotFoundError("this pyobs installation lacks stack files: " + ", ".join(missing))
    return files


def generate_env(example: str) -> str:
    """The .env text: .env.example with every empty password or key filled with a new secret."""
    lines = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        name = key.strip()
        if (
            sep
            and not value.strip()
            and not name.startswith("#")
            and name.endswith(_SECRET_SUFFIXES)
        ):
            # 32 URL-safe characters: fine in env files, URLs and basic auth.
            line = f"{name}={secrets.token_urlsafe(24)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def init_stack(directory: Path, force: bool = False) -> dict[str, list[str]]:
    """Write the stack into directory; return the relative paths by outcome.

    Outcomes: "written", "unchanged" (already identical) and, for `.env`, "kept"
    (an existing .env is never replaced: it holds the passwords the data volumes
    were created with). A differing file aborts before anything is written,
    unless force is true.
    """
    files = stack_files()
    conflicts = [
        relative
        for relative, source in files.items()
        if (directory / relative).exists()
        and not filecmp.cmp(source, directory / relative, shallow=False)
    ]
    if conflicts and not force:
        raise FileExistsError(
            f"{len(conflicts)} file(s) in {directory} differ from this pyobs version's "
            f"stack (first: {conflicts[0]}); rerun with --force to overwrite them"
        )
    outcome: dict[str, list[str]] = {"written": [], "unchanged": [], "kept": []}
    for relative, source in files.items():
        target = directory / relative
        if target.exists() and relative not in conflicts:
            outcome["unchanged"].append(relative)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        shutil.copymode(source, target)
        outcome["written"].append(relative)
    env_path = directory / ".env"
    if env_path.exists():
        outcome["kept"].append(".env")
    else:
        env_text = generate_env((directory / ".env.example").read_text())
        fd = os.open(env_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as env_file:
            env_file.write(env_text)
        outcome["written"].append(".env")
    return outcome


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    try:
        outcome = init_stack(directory, force=args.force)
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"pyobs stack init: {exc}", file=sys.stderr)
        return 1
    print(
        f"pyobs stack init: {len(outcome['written'])} file(s) written, "
        f"{len(outcome['unchanged'])} unchanged in {directory}"
    )
    if outcome["kept"]:
        print("  kept the existing .env (its passwords are the ones the volumes use)")
    else:
        print("  .env has new random passwords; keep it out of version control")
    print(f"next:\n  cd {directory}\n  docker compose up -d --build")
    print(
        "then: Kibana http://127.0.0.1:5601 (user elastic), "
        "Grafana http://127.0.0.1:3000 (user admin), "
        "Jaeger http://127.0.0.1:16686; passwords are in .env"
    )
    print(
        'your own service: pip install "pyobs-kit[<framework>,otlp]" and add it to '
        "docker-compose.override.yml (README, Add your own service)"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add `pyobs stack` and its `init` sub-command."""
    parser = subparsers.add_parser(
        "stack", help="the docker compose stack (ELK, Prometheus, Grafana, Jaeger)"
    )
    actions = parser.add_subparsers(dest="stack_command", metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="write the compose stack and every file it mounts into DIR",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("directory", metavar="DIR", help="target directory (created if missing)")
    init.add_argument(
        "--force", action="store_true", help="overwrite files that differ (never .env)"
    )
    init.set_defaults(func=_init)
    parser.set_defaults(func=lambda _args: _help(parser))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
