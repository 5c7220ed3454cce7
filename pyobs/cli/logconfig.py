"""`pyobs logconfig SERVER`: a server's logging config (ECS JSON lines, its access log off)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pyobs._config import LOG_LEVELS
from pyobs.logconfigs import SERVERS, path, server_config


def register(subparsers: Any) -> None:
    """Add the `logconfig` command."""
    parser = subparsers.add_parser(
        "logconfig",
        help="print a logging config that makes a server's own lines ECS JSON",
        description=(
            "Print a logging.config.dictConfig as JSON for uvicorn (--log-config), gunicorn "
            "(--log-config-json), Tornado, aiohttp or Sanic: every line the server writes goes "
            "to stdout as ECS JSON, and the server's own access log is off (pyobs writes one)."
        ),
    )
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument(
        "--level",
        default="warning",
        choices=LOG_LEVELS,
        help="the root (application) level; the server's own loggers stay at INFO",
    )
    parser.add_argument(
        "--path",
        action="store_true",
        help="print the path of the config file shipped with pyobs (root level WARNING) instead",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    """Write the config (or its path) to stdout."""
    if args.path:
        print(path(args.server))
        return 0
    json.dump(server_config(args.server, args.level), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
