"""`pyobs dashboards build [--check]`: regenerate dashboards, Grafana provisioning and rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `dashboards` command and its `build` sub-command."""
    parser = subparsers.add_parser(
        "dashboards", help="regenerate dashboards, Grafana provisioning and Prometheus rules"
    )
    actions = parser.add_subparsers(dest="dashboards_command", metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="write dashboards/, dashboards/provisioning/, prometheus/rules/ and the Kubernetes "
        "objects of deploy/stack/ from code",
        description=(
            "Regenerate every dashboard, the Grafana provisioning files and the Prometheus "
            "rule files from pyobs's SLO and alert definitions, and the stack's Kubernetes "
            "objects under deploy/stack/ (docs/kubernetes.md) from the same sources "
            "(needs grafana-foundation-sdk)."
        ),
    )
    build.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a committed file differs from what the code generates",
    )
    build.add_argument(
        "--root",
        type=Path,
        default=None,
        help="repository root to write to or check (default: this checkout, else the current "
        "directory)",
    )
    build.set_defaults(func=handle_build)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def default_root() -> Path:
    """The checkout pyobs runs from, or the current directory for an installed pyobs."""
    from pyobs._resources import repo_file

    checkout = repo_file("pyproject.toml")
    return checkout.parent if checkout.is_file() else Path.cwd()


def handle_build(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) every generated file."""
    try:
        from pyobs import _dashgen
    except ImportError as exc:
        print(
            f"pyobs dashboards build needs grafana-foundation-sdk and PyYAML ({exc}); "
            'install them with: pip install "pyobs-kit[dev]"',
            file=sys.stderr,
        )
        return 2
    root: Path = args.root or default_root()
    if args.check:
        stale = _dashgen.stale(root)
        if stale:
            print("Stale generated files (run `pyobs dashboards build`):", file=sys.stderr)
            for path in stale:
                print(f"  {path}", file=sys.stderr)
            return 1
        print(f"Generated files under {root} are up to date.")
        return 0
    changed = _dashgen.write(root)
    for path in changed:
        print(f"{'wrote' if (root / path).exists() else 'removed'} {path}")
    if not changed:
        print("Nothing to do: every generated file is up to date.")
    return 0
