"""`pyobs grafana push`: send the dashboards (and, on request, Grafana-managed alert rules) to a
running Grafana over its HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FOLDER_UID = "pyobs"
FOLDER_TITLE = "pyobs"


def register(subparsers: Any) -> None:
    """Add the `grafana` command and its `push` sub-command."""
    parser = subparsers.add_parser("grafana", help="talk to a running Grafana")
    actions = parser.add_subparsers(dest="grafana_command", metavar="ACTION")
    push = actions.add_parser(
        "push",
        help="push the dashboards into the pyobs folder through Grafana's API",
        description=(
            "Create or update the pyobs folder and every dashboard. The dashboards pick their "
            "Prometheus and Elasticsearch datasources from variables, so any datasource of "
            "those types works. Alerts stay in Prometheus and Alertmanager: add an Alertmanager "
            "datasource to see and silence them in Grafana (docs/dashboards.md). For a Grafana "
            "that evaluates alerts itself, --alert-rules pushes the Grafana-managed rule files "
            "written by `pyobs slo generate --grafana-rules`. Needs the grafana extra: "
            "pip install 'pyobs-kit[grafana]'."
        ),
    )
    push.add_argument("--url", required=True, help="Grafana base URL, e.g. http://localhost:3000")
    push.add_argument("--token", required=True, help="service-account token (Editor or Admin)")
    push.add_argument(
        "--root",
        type=Path,
        default=None,
        help="directory holding dashboards/ (default: the files shipped with pyobs)",
    )
    push.add_argument(
        "--alert-rules",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also push the rule groups of this Grafana alerting file (from `pyobs slo generate "
        "--grafana-rules`); repeatable",
    )
    push.set_defaults(func=handle_push)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


def rule_groups(path: Path) -> list[dict[str, Any]]:
    """The alert-rule-group API bodies of one Grafana alerting provisioning file."""
    import yaml

    from pyobs._dashgen import unescape_dollars

    # The files are written for Grafana's provisioning ($$ for a literal $); the HTTP API
    # takes the values as Grafana would see them after provisioning.
    document = unescape_dollars(yaml.safe_load(path.read_text(encoding="utf-8")))
    return [
        {
            "title": group["name"],
            "folderUid": FOLDER_UID,
            "interval": _seconds(group["interval"]),
            "rules": [
                {**rule, "folderUID": FOLDER_UID, "ruleGroup": group["name"], "orgID": 1}
                for rule in group["rules"]
            ],
        }
        for group in document.get("groups", [])
    ]


def payloads(root: Path) -> dict[str, Any]:
    """The API bodies, read from the committed files under ``root`` (no Grafana needed)."""
    dashboards = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((root / "dashboards").glob("*.json"))
        + sorted((root / "dashboards" / "slo").glob("*.json"))  # one per SLO spec'd service
    ]
    return {"dashboards": dashboards}


def handle_push(args: argparse.Namespace) -> int:
    """Push everything; report each object and stop at the first refusal."""
    try:
        from grafana_client.api import GrafanaApi
        from grafana_client.client import GrafanaClientError
    except ImportError:
        print("pyobs grafana push needs: pip install 'pyobs-kit[grafana]'", file=sys.stderr)
        return 2
    from pyobs._resources import repo_file

    root: Path = args.root or repo_file("dashboards").parent
    body = payloads(root)
    try:
        groups = [group for path in args.alert_rules for group in rule_groups(path)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read the alert rules: {exc}", file=sys.stderr)
        return 2
    api = GrafanaApi.from_url(args.url, credential=args.token)
    try:
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError:
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        print(f"folder {FOLDER_TITLE}")
        for board in body["dashboards"]:
            board = {k: v for k, v in board.items() if k != "id"}
            api.dashboard.update_dashboard(
                {"dashboard": board, "folderUid": FOLDER_UID, "overwrite": True}
            )
            print(f"dashboard {board['uid']}")
        for group in groups:
            api.alertingprovisioning.update_rule_group(FOLDER_UID, group["title"], group)
            print(f"alert rule group {group['title']} ({len(group['rules'])} rules)")
    except GrafanaClientError as exc:
        print(f"Grafana refused the request: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach Grafana at {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0
