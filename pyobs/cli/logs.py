"""`pyobs logs search`: search the pyobs logs in Elasticsearch from the terminal."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pyobs._elk.client import DEFAULT_ES_URL, ElkError


def register(subparsers: Any) -> None:
    """Add `pyobs logs search`."""
    parser = subparsers.add_parser("logs", help="search the logs in Elasticsearch")
    actions = parser.add_subparsers(dest="logs_command", metavar="ACTION")
    search = actions.add_parser(
        "search",
        help="search logs-pyobs-* from the terminal",
        description=(
            "QUERY uses the Lucene syntax Kibana also accepts, e.g. 'message:timeout', "
            "'http.response.status_code:>=500' or '*'. Prints the newest --limit matches, "
            "oldest first. With --trace-id and no --since, the whole retention is searched. "
            "Exit status: 0 with matches, 1 without, 2 on errors."
        ),
    )
    search.add_argument("query", nargs="?", default="", metavar="QUERY")
    search.add_argument("--service", help="only this service.name")
    search.add_argument("--level", help="only this log.level (debug, info, warning, error, ...)")
    search.add_argument("--trace-id", help="every line of one trace (trace.id)")
    search.add_argument("--since", default=None, help="how far back: 30s, 15m, 2h, 7d, all (15m)")
    search.add_argument("--limit", type=int, default=100, help="at most this many lines (100)")
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    search.add_argument(
        "--es", default=DEFAULT_ES_URL, help=f"Elasticsearch URL ({DEFAULT_ES_URL})"
    )
    search.add_argument("--index", default="logs-pyobs-*", help="index pattern (logs-pyobs-*)")
    search.set_defaults(func=handle_search)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def handle_search(args: argparse.Namespace) -> int:
    """Query, print, and exit 0 (found), 1 (nothing) or 2 (error)."""
    from pyobs._elk import search as s
    from pyobs._elk.client import connect, describe

    since = args.since or ("all" if args.trace_id else "15m")
    try:
        s.check_since(since)
        if args.limit < 1 or args.limit > 10_000:
            raise ElkError("--limit takes a number from 1 to 10000")
        es = connect(args.es)
    except ElkError as exc:
        print(f"pyobs logs search: {exc}", file=sys.stderr)
        return 2
    query = s.build_query(args.query, args.service, args.level, args.trace_id, since)
    try:
        events = s.search(es, args.index, query, args.limit)
    except Exception as exc:  # noqa: BLE001 - report any client error in one line
        print(f"pyobs logs search: {describe(exc, args.es)}", file=sys.stderr)
        return 2
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    for event in events:
        if args.json:
            print(s.render_json(event))
        else:
            print(s.render_line(event, color=color, show_trace=not args.trace_id))
    if not events and not args.json:
        print("no matching log lines", file=sys.stderr)
    return 0 if events else 1
