"""The stack's helper scripts: image requirements, the setup job, the alert webhook."""

from __future__ import annotations

import base64
import fnmatch
import json
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from tests.conftest import require_service
from tests.helpers import kill_tree, serving, start_server
from tests.stack import validate
from tests.stack.helpers import ROOT, load_script, require_files

requirements = load_script("requirements")
setup = load_script("setup")
alert_webhook = load_script("alert_webhook")

PASSWORDS = {
    "ELASTICSEARCH_USERNAME": "elastic",
    "ELASTICSEARCH_PASSWORD": "elastic-pass-0123456789",
    "KIBANA_SYSTEM_PASSWORD": "kibana-pass-0123456789",
    "LOGSTASH_WRITER_PASSWORD": "writer-pass-0123456789",
    "GRAFANA_READER_PASSWORD": "reader-pass-0123456789",
    "MONITOR_PASSWORD": "monitor-pass-0123456789",
}


# ------------------------------------------------------------------ requirements


def pyproject() -> dict[str, Any]:
    """The repository's pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def test_image_requirements_are_pyproject_core_plus_the_extras() -> None:
    """The example image installs exactly the core dependencies and the chosen extras."""
    data = pyproject()
    core = data["project"]["dependencies"]
    extras = data["project"]["optional-dependencies"]
    assert requirements.requirements(data, []) == core
    flask = requirements.requirements(data, ["flask", "otlp"])
    assert flask == core + extras["flask"] + extras["otlp"]
    assert requirements.requirements(data, ["elk"]) == core + extras["elk"]


def test_image_requirements_expand_self_references() -> None:
    """`pyobs[...]` inside an extra (like `all`) expands to those extras' packages."""
    data = pyproject()
    everything = requirements.requirements(data, ["all"])
    assert not any(req.startswith(("pyobs[", "pyobs-kit[")) for req in everything)
    for extra in ("flask", "fastapi", "otlp", "elk"):
        for req in data["project"]["optional-dependencies"][extra]:
            assert req in everything


def test_an_unknown_extra_fails_the_image_build() -> None:
    """A typo in PYOBS_EXTRAS stops the build with the list of real extras."""
    with pytest.raises(SystemExit, match="unknown extra 'flaks'"):
        requirements.requirements(pyproject(), ["flaks"])


def test_requirements_script_prints_one_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The Dockerfile's `python scripts/stack/requirements.py EXTRAS` prints pip's input."""
    assert requirements.main(["x", "fastapi,otlp", str(ROOT / "pyproject.toml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == requirements.requirements(pyproject(), ["fastapi", "otlp"])


# ------------------------------------------------------------------ setup job


class FakeElastic(BaseHTTPRequestHandler):
    """Records requests like Elasticsearch/Kibana would receive them; answers 200/401."""

    calls: list[tuple[str, str, Any, str]]
    password = PASSWORDS["ELASTICSEARCH_PASSWORD"]
    kibana_level = "available"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization", "")
        self.calls.append((self.command, self.path, body, auth))
        expected = "Basic " + base64.b64encode(f"elastic:{self.password}".encode()).decode()
        if auth != expected:
            self._json(401, {"error": {"type": "security_exception", "reason": "bad creds"}})
        elif self.path.startswith("/_cluster/health"):
            self._json(200, {"status": "yellow", "timed_out": False})
        elif self.path == "/api/status":
            self._json(200, {"status": {"overall": {"level": self.kibana_level}}})
        elif self.path.startswith("/_security/"):
            self._json(200, {"created": True})
        else:
            self._json(404, {"error": "no handler"})

    do_GET = do_POST = do_PUT = _handle

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def fake_es() -> Iterator[tuple[str, list[tuple[str, str, Any, str]]]]:
    """A fake Elasticsearch + Kibana on a free 127.0.0.1 port: (url, recorded calls)."""
    calls: list[tuple[str, str, Any, str]] = []
    handler = type("Handler", (FakeElastic,), {"calls": calls})
    with serving(handler) as url:
        yield url, calls


def test_setup_sets_passwords_roles_and_users(
    fake_es: tuple[str, list[tuple[str, str, Any, str]]],
) -> None:
    """The setup job sets kibana_system's password and creates both least-privilege users.

    Against a recording fake: it proves the calls, bodies and order, not that a real
    Elasticsearch accepts these role definitions (checked only with Docker).
    """
    url, calls = fake_es
    args = ["--es", url, "--kibana", url, "--skip-elk-setup", "--timeout", "5"]
    assert setup.main(args, env=PASSWORDS) == 0
    writes = [(method, path, body) for method, path, body, _ in calls if method != "GET"]
    assert writes[0] == (
        "POST",
        "/_security/user/kibana_system/_password",
        {"password": PASSWORDS["KIBANA_SYSTEM_PASSWORD"]},
    )
    by_path = {path: body for _, path, body in writes}
    writer_role = by_path["/_security/role/pyobs_logstash_writer"]
    assert writer_role["indices"] == [
        {
            "names": ["logs-pyobs-*", "pyobs-logs-failures*"],
            "privileges": ["create_doc", "auto_configure"],
        }
    ]
    reader_role = by_path["/_security/role/pyobs_grafana_reader"]
    assert reader_role["indices"] == [
        {"names": ["logs-pyobs-*"], "privileges": ["read", "view_index_metadata"]}
    ]
    for role in (writer_role, reader_role):
        assert role["cluster"] == ["monitor"]
    writer = by_path["/_security/user/pyobs_logstash_writer"]
    assert writer["password"] == PASSWORDS["LOGSTASH_WRITER_PASSWORD"]
    assert writer["roles"] == ["pyobs_logstash_writer"]
    reader = by_path["/_security/user/pyobs_grafana_reader"]
    assert reader["password"] == PASSWORDS["GRAFANA_READER_PASSWORD"]
    assert reader["roles"] == ["pyobs_grafana_reader"]
    # elasticsearch-exporter's user sees cluster health and stats, no document.
    monitor_role = by_path["/_security/role/pyobs_monitor"]
    assert monitor_role["cluster"] == ["monitor"]
    assert "indices" not in monitor_role
    monitor = by_path["/_security/user/pyobs_monitor"]
    assert monitor["password"] == PASSWORDS["MONITOR_PASSWORD"]
    assert monitor["roles"] == ["pyobs_monitor"]


def test_writer_role_covers_every_index_the_ingest_pipeline_writes() -> None:
    """The failure index the ingest pipeline reroutes to is writable by Logstash's user."""
    pipeline = json.loads((ROOT / "elk" / "ingest-pipeline.json").read_text())
    targets = [
        step["set"]["value"]
        for step in pipeline.get("on_failure", []) + pipeline.get("processors", [])
        if "set" in step and step["set"].get("field") == "_index"
    ]
    patterns = setup.ROLES[setup.LOGSTASH_WRITER_USER]["indices"][0]["names"]
    for target in [*targets, "logs-pyobs-default"]:
        assert any(fnmatch.fnmatchcase(target, pattern) for pattern in patterns), target


def test_setup_twice_sends_the_same_requests(
    fake_es: tuple[str, list[tuple[str, str, Any, str]]],
) -> None:
    """Rerunning the job (`docker compose run --rm setup`) only re-applies the same state."""
    url, calls = fake_es
    args = ["--es", url, "--skip-elk-setup", "--timeout", "5"]
    assert setup.main(args, env=PASSWORDS) == 0
    first = list(calls)
    calls.clear()
    assert setup.main(args, env=PASSWORDS) == 0
    assert calls == first
    assert all(method in ("GET", "PUT", "POST") for method, *_ in calls)


def test_setup_stops_at_once_on_a_wrong_elastic_password(
    fake_es: tuple[str, list[tuple[str, str, Any, str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A changed ELASTIC_PASSWORD fails fast with the reason, instead of waiting 5 minutes."""
    url, calls = fake_es
    env = {**PASSWORDS, "ELASTICSEARCH_PASSWORD": "not-the-right-one-123"}
    assert setup.main(["--es", url, "--timeout", "60"], env=env) == 1
    assert len(calls) == 1
    assert "ELASTIC_PASSWORD" in capsys.readouterr().err


def test_setup_refuses_missing_or_weak_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    """Empty or short passwords are named before anything is sent."""
    env = {**PASSWORDS, "GRAFANA_READER_PASSWORD": "", "KIBANA_SYSTEM_PASSWORD": "short"}
    assert setup.main(["--es", "http://127.0.0.1:9"], env=env) == 2
    err = capsys.readouterr().err
    assert "GRAFANA_READER_PASSWORD is not set" in err
    assert "KIBANA_SYSTEM_PASSWORD must be at least 12 characters" in err
    assert "reader-pass" not in err and "elastic-pass" not in err


def test_setup_gives_up_on_an_unreachable_elasticsearch() -> None:
    """The wait is bounded: a stack that never comes up fails the job instead of hanging."""
    ticks = iter(range(100))
    with pytest.raises(setup.SetupError, match="gave up waiting for nothing after 3s"):
        setup.wait_until(
            "nothing", lambda: False, 3, clock=lambda: float(next(ticks)), sleep=lambda _: None
        )


def test_setup_waits_for_kibana_then_runs_elk_setup(
    fake_es: tuple[str, list[tuple[str, str, Any, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After security, the job waits for Kibana and runs `pyobs elk setup` with the credentials."""
    url, calls = fake_es
    ran: list[tuple[list[str], dict[str, str]]] = []

    class Done:
        returncode = 0

    def fake_run(command: list[str], env: dict[str, str], check: bool) -> Done:
        ran.append((command, env))
        return Done()

    monkeypatch.setattr(setup.subprocess, "run", fake_run)
    assert setup.main(["--es", url, "--kibana", url, "--timeout", "5"], env=PASSWORDS) == 0
    assert ("GET", "/api/status") in [(m, p) for m, p, _, _ in calls]
    ((command, env),) = ran
    # Credentials travel in the environment only, never on the command line.
    assert command[1:] == ["-m", "pyobs", "elk", "setup", "--es", url, "--kibana", url]
    assert env["ELASTICSEARCH_USERNAME"] == "elastic"
    assert env["ELASTICSEARCH_PASSWORD"] == PASSWORDS["ELASTICSEARCH_PASSWORD"]


def test_elk_client_takes_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pyobs elk setup` authenticates with ELASTICSEARCH_USERNAME/PASSWORD; URL ones win."""
    from pyobs._elk.client import split_credentials

    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "elastic")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", "p@ss:w/rd")
    assert split_credentials("http://kibana:5601/base") == (
        "http://kibana:5601/base",
        ("elastic", "p@ss:w/rd"),
    )
    assert split_credentials("http://other:x%40y@kibana:5601") == (
        "http://kibana:5601",
        ("other", "x@y"),
    )
    monkeypatch.delenv("ELASTICSEARCH_PASSWORD")
    assert split_credentials("http://kibana:5601") == ("http://kibana:5601", None)


def test_compose_runs_the_setup_job_against_the_stack_services() -> None:
    """The compose file's setup command targets the stack's Elasticsearch and Kibana."""
    model, _ = validate.load_compose(ROOT, validate.example_env(ROOT))
    job = validate.services(model)["setup"]
    assert job["command"] == [
        "python",
        "scripts/stack/setup.py",
        "--es",
        "http://elasticsearch:9200",
        "--kibana",
        "http://kibana:5601",
    ]
    env = validate.environment(job)
    for name in setup.REQUIRED_ENV:
        assert env[name], name


# ------------------------------------------------------------------ alert webhook


@pytest.fixture
def webhook(capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    """The alert webhook on a free 127.0.0.1 port."""
    with serving(alert_webhook.Handler) as url:
        yield url


def test_alert_webhook_logs_each_alert_as_a_json_line(
    webhook: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Alertmanager notification with two alerts prints two JSON lines naming the receiver."""
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "page",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "PyobsHighErrorRate", "severity": "critical"},
                "annotations": {"summary": "example-flask answers 5xx"},
                "startsAt": "2026-11-28T09:00:00Z",
            },
            {"status": "resolved", "labels": {"alertname": "PyobsWatchdog"}},
        ],
    }
    request = urllib.request.Request(
        webhook + "/alerts/page",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["alertname"] for line in lines] == ["PyobsHighErrorRate", "PyobsWatchdog"]
    assert lines[0]["receiver"] == "page"
    assert lines[0]["severity"] == "critical"
    assert lines[1]["status"] == "resolved"


def test_alert_webhook_health_and_bad_bodies(webhook: str) -> None:
    """GET /health answers ok (the compose health check); a non-alert body is a 400."""
    with urllib.request.urlopen(webhook + "/health", timeout=5) as response:
        assert response.status == 200
    request = urllib.request.Request(webhook + "/alerts/x", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(request, timeout=5)
    assert excinfo.value.code == 400


def test_real_alertmanager_notifies_the_alert_webhook(tmp_path: Path) -> None:
    """Alertmanager, with the stack's alertmanager.yml, delivers to the webhook service.

    Both run as their containers do, on 127.0.0.1 (the receiver URLs' host and port
    are mapped): this proves the payload format and routing reach the log line.
    """
    require_files(ROOT, "prometheus")
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    require_service(binary is not None, "Alertmanager is not installed (setup.d/10-prometheus.sh)")
    assert binary is not None
    model, _ = validate.load_compose(ROOT, validate.example_env(ROOT))
    hook_log = tmp_path / "hook.log"

    def hook_command(port: int) -> list[str]:
        command = [
            str(port) if part == "8080" else "127.0.0.1" if part == "0.0.0.0" else part
            for part in validate.services(model)["alert-webhook"]["command"]
        ]
        command[0] = sys.executable
        return command

    def listening(port: int) -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    hook, hook_port = start_server(hook_command, listening, hook_log, cwd=ROOT)
    config = yaml.safe_load((ROOT / validate.ALERTMANAGER_CONFIG).read_text())
    for receiver in config.get("receivers") or []:
        for webhook in receiver.get("webhook_configs") or []:
            webhook["url"] = webhook["url"].replace("alert-webhook:8080", f"127.0.0.1:{hook_port}")
    workdir = tmp_path / "am"
    shutil.copytree(ROOT / "prometheus", workdir)
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    processes = [hook]

    def lines() -> list[str]:
        return hook_log.read_text(errors="replace").splitlines()

    try:
        manager, am_port = start_server(
            lambda port: [
                binary,
                f"--config.file={workdir / 'alertmanager.yml'}",
                f"--storage.path={workdir / f'data-{port}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            lambda port: http_ok(f"http://127.0.0.1:{port}/-/ready"),
            tmp_path / "alertmanager.log",
            cwd=workdir,
        )
        processes.append(manager)
        base = f"http://127.0.0.1:{am_port}"
        alert = [{"labels": {"alertname": "PyobsWatchdog", "severity": "none", "service": "t"}}]
        request = urllib.request.Request(
            base + "/api/v2/alerts",
            data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        poll(lambda: any("PyobsWatchdog" in line for line in lines()), 30)
        logged = [json.loads(line) for line in lines() if "PyobsWatchdog" in line]
        assert logged[0]["status"] == "firing"
        assert logged[0]["labels"]["service"] == "t"
    finally:
        for process in reversed(processes):
            kill_tree(process, grace=10)


def http_ok(url: str) -> bool:
    """True when url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def poll(check: Callable[[], object], timeout: float) -> None:
    """Wait until check() is truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s")
