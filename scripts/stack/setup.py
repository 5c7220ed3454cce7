"""One-shot, idempotent setup of the compose stack's Elasticsearch and Kibana.

1. waits for Elasticsearch, sets the ``kibana_system`` password;
2. creates (or updates) the least-privilege roles and users for Logstash
   (write to ``logs-pyobs-*`` only) and Grafana (read ``logs-pyobs-*`` only);
3. waits for Kibana, then runs ``pyobs elk setup`` (index template, ingest
   pipeline, lifecycle policy, Kibana objects).

Credentials come from the environment (never from arguments, never printed):
ELASTICSEARCH_USERNAME (default ``elastic``), ELASTICSEARCH_PASSWORD,
KIBANA_SYSTEM_PASSWORD, LOGSTASH_WRITER_PASSWORD, GRAFANA_READER_PASSWORD, MONITOR_PASSWORD.
Every call is a PUT/POST of the full desired state, so running it again is harmless.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LOGSTASH_WRITER_USER = "pyobs_logstash_writer"
GRAFANA_READER_USER = "pyobs_grafana_reader"
MONITOR_USER = "pyobs_monitor"
LOG_INDICES = ["logs-pyobs-*"]
# Where the ingest pipeline sends a document it cannot process (elk/ingest-pipeline.json).
FAILURE_INDICES = ["pyobs-logs-failures*"]

# Least privilege (issue 6): Logstash may only append documents to the pyobs data
# streams and to the failure index (auto_configure lets the first document create
# them from the templates `pyobs elk setup` installed); Grafana may only search and
# read mappings.
# `monitor` answers the version and license checks both clients make at start.
ROLES: dict[str, dict[str, Any]] = {
    LOGSTASH_WRITER_USER: {
        "cluster": ["monitor"],
        "indices": [
            {
                "names": LOG_INDICES + FAILURE_INDICES,
                "privileges": ["create_doc", "auto_configure"],
            }
        ],
        "metadata": {"managed_by": "pyobs"},
    },
    GRAFANA_READER_USER: {
        "cluster": ["monitor"],
        "indices": [{"names": LOG_INDICES, "privileges": ["read", "view_index_metadata"]}],
        "metadata": {"managed_by": "pyobs"},
    },
    # elasticsearch_exporter: cluster health and node stats, no document access.
    MONITOR_USER: {"cluster": ["monitor"], "metadata": {"managed_by": "pyobs"}},
}

# user -> (environment variable holding its password, its role, description)
USERS: dict[str, tuple[str, str, str]] = {
    LOGSTASH_WRITER_USER: (
        "LOGSTASH_WRITER_PASSWORD",
        LOGSTASH_WRITER_USER,
        "Logstash: writes pyobs logs",
    ),
    GRAFANA_READER_USER: (
        "GRAFANA_READER_PASSWORD",
        GRAFANA_READER_USER,
        "Grafana: reads pyobs logs",
    ),
    MONITOR_USER: ("MONITOR_PASSWORD", MONITOR_USER, "elasticsearch-exporter: cluster health"),
}

REQUIRED_ENV = (
    "ELASTICSEARCH_PASSWORD",
    "KIBANA_SYSTEM_PASSWORD",
    "LOGSTASH_WRITER_PASSWORD",
    "GRAFANA_READER_PASSWORD",
    "MONITOR_PASSWORD",
)
_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{12,}$")


class SetupError(Exception):
    """A step failed; the message says which and what to do."""


def check_environment(env: Mapping[str, str]) -> list[str]:
    """Problems with the credentials in env (missing, too short, unsafe characters)."""
    problems = []
    for name in REQUIRED_ENV:
        value = env.get(name, "")
        if not value:
            problems.append(f"{name} is not set (see .env.example)")
        elif not _PASSWORD.match(value):
            problems.append(
                f"{name} must be at least 12 characters of letters, digits, '-' and '_'"
            )
    return problems


class Client:
    """A tiny JSON-over-HTTP client with basic auth and a per-request timeout."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: object | None = None, kibana: bool = False
    ) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON or None). Network errors raise OSError."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": self._auth, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if kibana:
            headers["kbn-xsrf"] = "pyobs"
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None


def _reason(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("reason") or error.get("type") or error)
        if error:
            return str(error)
        if payload.get("message"):
            return str(payload["message"])
    return "no details"


def wait_until(
    what: str,
    probe: Callable[[], bool],
    timeout: float,
    interval: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call probe until it returns True; raise SetupError after timeout seconds."""
    deadline = clock() + timeout
    while True:
        if probe():
            return
        if clock() >= deadline:
            raise SetupError(f"gave up waiting for {what} after {timeout:.0f}s")
        sleep(interval)


def wait_for_elasticsearch(es: Client, timeout: float) -> None:
    """Wait for cluster health yellow; a 401 fails at once (a wrong password never heals)."""

    def probe() -> bool:
        try:
            status, payload = es.request(
                "GET", "/_cluster/health?wait_for_status=yellow&timeout=5s"
            )
        except OSError:
            return False
        if status == 401:
            raise SetupError(
                "Elasticsearch rejected ELASTIC_PASSWORD. It is read only when the data "
                "volume is first created: use the original password, or remove the "
                "volume (docker compose down -v) to start over."
            )
        return status == 200 and isinstance(payload, dict) and not payload.get("timed_out")

    wait_until(f"Elasticsearch at {es.base_url}", probe, timeout)


def wait_for_kibana(kibana: Client, timeout: float) -> None:
    """Wait until Kibana reports its overall status as available."""

    def probe() -> bool:
        try:
            status, payload = kibana.request("GET", "/api/status")
        except OSError:
            return False
        if status != 200 or not isinstance(payload, dict):
            return False
        overall = payload.get("status", {}).get("overall", {})
        return bool(overall.get("level") == "available" or overall.get("state") == "green")

    wait_until(f"Kibana at {kibana.base_url}", probe, timeout)


def _expect_ok(step: str, status: int, payload: Any) -> None:
    if status not in (200, 201):
        raise SetupError(f"{step} failed: HTTP {status}: {_reason(payload)}")


def configure_security(es: Client, env: Mapping[str, str]) -> list[str]:
    """Set the kibana_system password, then the roles and users; return what was done."""
    done = []
    status, payload = es.request(
        "POST",
        "/_security/user/kibana_system/_password",
        {"password": env["KIBANA_SYSTEM_PASSWORD"]},
    )
    _expect_ok("setting the kibana_system password", status, payload)
    done.append("password of built-in user kibana_system")
    for role, body in ROLES.items():
        status, payload = es.request("PUT", f"/_security/role/{role}", body)
        _expect_ok(f"creating role {role}", status, payload)
        done.append(f"role {role}")
    for user, (password_env, role, description) in USERS.items():
        body = {
            "password": env[password_env],
            "roles": [role],
            "full_name": description,
            "metadata": {"managed_by": "pyobs"},
        }
        status, payload = es.request("PUT", f"/_security/user/{user}", body)
        _expect_ok(f"creating user {user}", status, payload)
        done.append(f"user {user}")
    return done


def elk_setup_command(es_url: str, kibana_url: str) -> list[str]:
    """The `pyobs elk setup` call: templates, ingest pipeline, lifecycle and Kibana objects.

    `pyobs elk setup` reads the credentials from ELASTICSEARCH_USERNAME/PASSWORD (the
    caller's environment), so they never appear on a command line.
    """
    return [sys.executable, "-m", "pyobs", "elk", "setup", "--es", es_url, "--kibana", kibana_url]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of this script."""
    parser = argparse.ArgumentParser(description="Set up the stack's Elasticsearch and Kibana.")
    parser.add_argument("--es", default="http://elasticsearch:9200", help="Elasticsearch URL")
    parser.add_argument("--kibana", default="http://kibana:5601", help="Kibana URL")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for each service"
    )
    parser.add_argument(
        "--skip-elk-setup",
        action="store_true",
        help="only the security part: do not wait for Kibana nor run `pyobs elk setup`",
    )
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run every step; print one line per step; return a process exit code."""
    args = build_parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    problems = check_environment(env)
    if problems:
        for problem in problems:
            print(f"setup: {problem}", file=sys.stderr)
        return 2
    username = env.get("ELASTICSEARCH_USERNAME") or "elastic"
    password = env["ELASTICSEARCH_PASSWORD"]
    es = Client(args.es, username, password)
    try:
        wait_for_elasticsearch(es, args.timeout)
        print(f"setup: Elasticsearch is up at {args.es}")
        for item in configure_security(es, env):
            print(f"setup: ok: {item}")
        if args.skip_elk_setup:
            return 0
        wait_for_kibana(Client(args.kibana, username, password), args.timeout)
        print(f"setup: Kibana is up at {args.kibana}")
    except SetupError as exc:
        print(f"setup: {exc}", file=sys.stderr)
        return 1
    command = elk_setup_command(args.es, args.kibana)
    print("setup: running pyobs elk setup", flush=True)
    child_env = {**env, "ELASTICSEARCH_USERNAME": username, "ELASTICSEARCH_PASSWORD": password}
    return subprocess.run(command, env=child_env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
