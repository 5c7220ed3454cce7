"""The `pyobs` command: one module per sub-command, each exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pyobs._version import __version__

# Sub-command modules, in the order `pyobs --help` lists them. A module that is
# missing (or whose optional dependency is absent) is skipped so the rest work.
COMMANDS = ("demo", "stack", "elk", "logs", "dashboards", "slo", "grafana", "doctor", "logconfig")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="pyobs", description="Observability kit for Python web services."
    )
    parser.add_argument("--version", action="version", version=f"pyobs {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pyobs.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pyobs.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pyobs` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
