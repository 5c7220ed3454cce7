"""The stack's stand-in pager: an Alertmanager webhook receiver that logs every alert.

Each alert of each notification becomes one JSON line on stdout, so
`docker compose logs -f alert-webhook` shows what would have paged someone,
with the receiver taken from the URL path (/alerts/<receiver>).
Usage: ``python scripts/stack/alert_webhook.py --host 0.0.0.0 --port 8080``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20  # Alertmanager batches; 1 MiB is far above a real notification.


def alert_lines(receiver: str, payload: Any) -> list[str]:
    """One JSON line per alert of an Alertmanager webhook payload (version 4)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook payload (no alerts list)")
    lines = []
    for alert in payload["alerts"]:
        labels = alert.get("labels") or {}
        lines.append(
            json.dumps(
                {
                    "receiver": receiver,
                    "status": alert.get("status", payload.get("status")),
                    "alertname": labels.get("alertname"),
                    "severity": labels.get("severity"),
                    "labels": labels,
                    "annotations": alert.get("annotations") or {},
                    "startsAt": alert.get("startsAt"),
                    "endsAt": alert.get("endsAt"),
                },
                sort_keys=True,
            )
        )
    return lines


class Handler(BaseHTTPRequestHandler):
    """POST /alerts/<receiver> logs the alerts; GET /health answers ok."""

    server_version = "pyobs-alert-webhook"

    def do_GET(self) -> None:
        """Health check."""
        status = 200 if self.path in ("/health", "/") else 404
        self._reply(status, b"ok\n" if status == 200 else b"not found\n")

    def do_POST(self) -> None:
        """Log each alert of the notification as a JSON line."""
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._reply(413 if length > MAX_BODY else 400, b"bad body length\n")
            return
        receiver = self.path.rstrip("/").rsplit("/", 1)[-1] or "default"
        try:
            lines = alert_lines(receiver, json.loads(self.rfile.read(length)))
        except ValueError as exc:
            self._reply(400, f"{exc}\n".encode())
            return
        for line in lines:
            print(line, flush=True)
        self._reply(200, b"ok\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log: the alert lines are the output."""


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description="Log Alertmanager notifications.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"alert-webhook listening on {args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
