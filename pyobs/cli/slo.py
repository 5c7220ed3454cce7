"""`pyobs slo generate SPEC`: per-service SLO specs to rules, alerts, tests and dashboards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `slo` command and its `generate` sub-command."""
    parser = subparsers.add_parser("slo", help="generate SLO rules, alerts and dashboards")
    actions = parser.add_subparsers(dest="slo_command", metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="turn SLO specs (YAML) into Prometheus rules, promtool tests and dashboards",
        description=(
            "Read one or more SLO specs (one YAML document per service; docs/slo.md) and write "
            "prometheus/rules/pyobs-slo-NAME.yml (recording rules and multi-window burn-rate "
            "alerts), prometheus/slo/tests/NAME_test.yml (a promtool unit test per alert) and "
            "dashboards/slo/pyobs-slo-SERVICE.json under --out (needs grafana-foundation-sdk)."
        ),
    )
    generate.add_argument("spec", nargs="+", type=Path, metavar="SPEC", help="SLO spec file")
    generate.add_argument(
        "--out",
        type=Path,
        default=Path(),
        help="directory to write into, laid out like the stack (default: the current directory)",
    )
    generate.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a generated file there is missing or differs",
    )
    generate.add_argument(
        "--grafana-rules",
        action="store_true",
        help="also write grafana/pyobs-slo-NAME.yml: the alerts as Grafana-managed rules, for "
        "teams that alert from Grafana instead of Alertmanager (not provisioned by default)",
    )
    generate.set_defaults(func=handle_generate)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def handle_generate(args: argparse.Namespace) -> int:
    """Write (or with --check, compare) the files of every spec."""
    try:
        from pyobs._dashgen import slogen, slospec
    except ImportError as exc:
        print(
            f"pyobs slo generate needs grafana-foundation-sdk and PyYAML ({exc}); "
            'install them with: pip install "pyobs-kit[dev]"',
            file=sys.stderr,
        )
        return 2
    generated: dict[str, str] = {}
    owner: dict[str, Path] = {}  # service -> the spec file that has it
    for path in args.spec:
        try:
            services = [spec.service for spec in slospec.load(path)]
            files = slogen.files(path, grafana=args.grafana_rules)
        except slospec.SpecError as exc:
            print(f"pyobs slo generate: {exc}", file=sys.stderr)
            return 1
        for service in services:
            if service in owner:
                print(
                    f"pyobs slo generate: {path}: service {service!r} has a spec in "
                    f"{owner[service]} already (one spec per service)",
                    file=sys.stderr,
                )
                return 1
            owner[service] = path
        generated.update(files)
    out: Path = args.out
    if args.check:
        stale = [
            relative
            for relative, text in generated.items()
            if not (out / relative).is_file()
            or (out / relative).read_text(encoding="utf-8") != text
        ]
        if stale:
            print("Stale SLO files (run `pyobs slo generate`):", file=sys.stderr)
            for relative in stale:
                print(f"  {relative}", file=sys.stderr)
            return 1
        print(f"{len(generated)} SLO files under {out} are up to date.")
        return 0
    for relative, text in generated.items():
        target = out / relative
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote {relative}")
    print(
        f"{len(generated)} files for {len(args.spec)} spec(s). Check the alerts with: "
        f"promtool test rules {out / slogen.TESTS_DIR}/*_test.yml"
    )
    return 0
