"""`pyobs grafana push`: the API calls it makes, against a recording HTTP server on loopback.

Grafana cannot run here, so this proves which endpoints are called with which bodies (read
from the committed files), not that a real Grafana accepts them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import import_or_require
from tests.helpers import serving
from tests.prometheus.conftest import REPO, free_port


@pytest.fixture
def grafana_api() -> Iterator[tuple[str, list[tuple[str, str, Any, str]]]]:
    """A loopback server answering like Grafana's HTTP API; records (method, path, body, auth)."""
    calls: list[tuple[str, str, Any, str]] = []
    state = {"folder": False, "contact_point": False}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length)) if length else None
            calls.append((self.command, self.path, body, self.headers.get("Authorization", "")))
            if self.path == "/api/folders/pyobs" and self.command == "GET":
                if state["folder"]:
                    self._reply(200, {"uid": "pyobs"})
                else:
                    self._reply(404, {"message": "folder not found"})
            elif self.path == "/api/folders" and self.command == "POST":
                state["folder"] = True
                self._reply(200, {"uid": "pyobs"})
            elif self.path.startswith("/api/v1/provisioning/contact-points/"):
                if state["contact_point"]:
                    self._reply(202, {})
                else:
                    self._reply(404, {"message": "not found"})
            elif self.path == "/api/v1/provisioning/contact-points":
                state["contact_point"] = True
                self._reply(202, body)
            else:
                self._reply(200, {"status": "success"})

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            return

    with serving(Handler) as url:
        yield url, calls


def test_push_sends_the_folder_and_dashboards_and_no_alerting(
    grafana_api: tuple[str, list[tuple[str, str, Any, str]]],
) -> None:
    """Push creates the folder, then uploads every dashboard (the SLO ones too); no Grafana
    alerting object."""
    import_or_require("grafana_client")
    from pyobs._dashgen import provisioning
    from pyobs.cli import grafana, main

    url, calls = grafana_api
    assert main(["grafana", "push", "--url", url, "--token", "s3cret", "--root", str(REPO)]) == 0
    assert all(auth == "Bearer s3cret" for *_, auth in calls)
    paths = [(method, path) for method, path, *_ in calls]
    assert ("POST", "/api/folders") in paths
    boards = [body for method, path, body, _ in calls if path == "/api/dashboards/db"]
    committed = {
        json.loads(p.read_text())["uid"]
        for p in [*(REPO / "dashboards").glob("*.json"), *(REPO / "dashboards/slo").glob("*.json")]
    }
    assert {b["dashboard"]["uid"] for b in boards} == committed
    slo_boards = {f"pyobs-slo-{spec.service}" for spec in _shipped_specs()}
    assert len(slo_boards) == 10
    assert {"pyobs-overview", "pyobs-runtime", "pyobs-stack", *slo_boards} <= committed
    # The same folder as the file provider's, so a pushed and a provisioned copy coincide.
    assert grafana.FOLDER_UID == provisioning.FOLDER_UID
    assert all(b["folderUid"] == provisioning.FOLDER_UID and b["overwrite"] for b in boards)
    assert not [p for _, p in paths if "/provisioning/" in p or "alert" in p]


def _shipped_specs() -> list[Any]:
    from pyobs._dashgen import slospec

    return slospec.load(REPO / "prometheus" / "slo" / "examples.yaml")


def test_push_reports_an_unreachable_grafana(capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing listening, push exits 1 with a plain message instead of a traceback."""
    import_or_require("grafana_client")
    from pyobs.cli import main

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["grafana", "push", "--url", url, "--token", "t", "--root", str(REPO)]) == 1
    assert "Grafana" in capsys.readouterr().err


def test_push_sends_grafana_managed_slo_rules_on_request(
    grafana_api: tuple[str, list[tuple[str, str, Any, str]]], tmp_path: Path
) -> None:
    """`--alert-rules` pushes each rule group `pyobs slo generate --grafana-rules` wrote, into
    the pyobs folder, with every rule of the file and its Prometheus query intact."""
    import_or_require("grafana_client")
    import yaml

    from pyobs.cli import main

    spec = REPO / "prometheus" / "slo" / "examples.yaml"
    assert main(["slo", "generate", str(spec), "--out", str(tmp_path), "--grafana-rules"]) == 0
    (rules_file,) = (tmp_path / "grafana").glob("*.yml")
    written = yaml.safe_load(rules_file.read_text())["groups"]
    url, calls = grafana_api
    argv = ["grafana", "push", "--url", url, "--token", "t", "--root", str(REPO)]
    assert main([*argv, "--alert-rules", str(rules_file)]) == 0
    pushed = {
        path.rsplit("/", 1)[1]: body
        for method, path, body, _ in calls
        if method == "PUT" and path.startswith("/api/v1/provisioning/folder/pyobs/rule-groups/")
    }
    assert set(pushed) == {group["name"] for group in written}
    for group in written:
        body = pushed[group["name"]]
        assert body["folderUid"] == "pyobs" and body["interval"] == 60
        assert [r["uid"] for r in body["rules"]] == [r["uid"] for r in group["rules"]]
        assert all(r["ruleGroup"] == group["name"] for r in body["rules"])


def test_push_names_an_unreadable_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing --alert-rules file is reported before anything is sent (exit 2)."""
    import_or_require("grafana_client")
    from pyobs.cli import main

    missing = tmp_path / "nope.yml"
    argv = ["grafana", "push", "--url", "http://127.0.0.1:9", "--token", "t"]
    assert main([*argv, "--alert-rules", str(missing)]) == 2
    assert "nope.yml" in capsys.readouterr().err
