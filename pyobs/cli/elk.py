"""`pyobs elk setup`: install the Elasticsearch and Kibana side of the log path (idempotent)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyobs._elk.assets import DEFAULT_RETENTION
from pyobs._elk.client import DEFAULT_ES_URL, ElkError


def register(subparsers: Any) -> None:
    """Add `pyobs elk setup`."""
    parser = subparsers.add_parser("elk", help="set up Elasticsearch and Kibana for pyobs logs")
    actions = parser.add_subparsers(dest="elk_command", metavar="ACTION")
    setup = actions.add_parser(
        "setup",
        help="install the ingest pipeline, index templates, lifecycle and Kibana objects",
        description=(
            "Installs the pyobs-logs ingest pipeline, the logs-pyobs index template (data "
            "streams logs-pyobs-<namespace>, ECS mappings, retention), the template of the "
            "failure data stream, and with --kibana the data views, saved searches, dashboard "
            "and the rule that alerts on rejected log events. "
            "Safe to run again. Credentials go in the URLs: http://elastic:PASS@host:9200. "
            "Needs the elk extra: pip install 'pyobs[elk]'."
        ),
    )
    setup.add_argument("--es", default=DEFAULT_ES_URL, help=f"Elasticsearch URL ({DEFAULT_ES_URL})")
    setup.add_argument("--kibana", default=None, help="Kibana URL, e.g. http://localhost:5601")
    setup.add_argument(
        "--retention",
        default=DEFAULT_RETENTION,
        help=f"how long log data streams keep data ({DEFAULT_RETENTION})",
    )
    setup.add_argument(
        "--without-pipeline",
        action="store_true",
        help="skip the ingest pipeline (for an Elasticsearch without the ingest-common module)",
    )
    setup.set_defaults(func=handle_setup)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def handle_setup(args: argparse.Namespace) -> int:
    """Run every step, print one line per step, exit 1 if any failed."""
    from pyobs._elk.client import connect, split_credentials
    from pyobs._elk.setup import (
        check_retention,
        install_elasticsearch,
        kibana_import,
        kibana_rule,
    )

    try:
        retention = check_retention(args.retention)
        es = connect(args.es)
        shown = split_credentials(args.es)[0]
    except ElkError as exc:
        print(f"pyobs elk setup: {exc}", file=sys.stderr)
        return 2
    print(f"Elasticsearch {shown}")
    steps = install_elasticsearch(es, retention, pipeline=not args.without_pipeline, url=shown)
    if args.kibana:
        steps.append(kibana_import(args.kibana))
        steps.append(kibana_rule(args.kibana))
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        detail = f" ({step.detail})" if step.detail else ""
        print(f"  {mark} {step.name}{detail}")
        if not step.ok and "No processor type exists" in step.detail:
            print(
                "       this Elasticsearch lacks ingest processors (the ingest-common module);"
                " use a full distribution, or --without-pipeline",
            )
        if not step.ok and "cannot reach" in step.detail:
            break
    failed = [s for s in steps if not s.ok]
    if failed:
        print(f"{len(failed)} of {len(steps)} steps failed", file=sys.stderr)
        return 1
    print("done: ship logs to the data stream logs-pyobs-default (see docs/logs.md)")
    return 0
