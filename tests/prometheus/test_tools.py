"""promtool and amtool on the committed configuration: the checks the real tools make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.prometheus.conftest import REPO, run_tool

PROMETHEUS = REPO / "prometheus"


def test_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts prometheus.yml and every rule file it loads."""
    output = run_tool(["promtool", "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert f"{len(list((PROMETHEUS / 'rules').glob('*.yml')))} rule files found" in output


def test_rule_files_are_valid() -> None:
    """`promtool check rules` accepts every rule file (names, PromQL, templates)."""
    files = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    assert len(files) >= 3
    run_tool(["promtool", "check", "rules", *files])


@pytest.mark.parametrize("name", ["alerts_test.yml", "recording_test.yml"])
def test_rule_unit_tests(name: str) -> None:
    """`promtool test rules`: each alert fires when it should and stays quiet otherwise."""
    output = run_tool(["promtool", "test", "rules", str(Path(__file__).parent / "rules" / name)])
    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test() -> None:
    """No alert ships without a firing case in the promtool tests."""
    import yaml

    rules = yaml.safe_load((PROMETHEUS / "rules" / "pyobs-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((Path(__file__).parent / "rules" / "alerts_test.yml").read_text())
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    assert alerts == firing
    assert len(quiet) >= 5


def test_alertmanager_config_is_valid() -> None:
    """`amtool check-config` accepts alertmanager.yml and its templates."""
    output = run_tool(["amtool", "check-config", str(PROMETHEUS / "alertmanager.yml")])
    assert "SUCCESS" in output
    assert "1 templates" in output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=PyobsAvailabilityBudgetBurnFast", "severity=critical", "service=x"], "page"),
        (["alertname=PyobsHighErrorRate", "severity=critical", "service=x"], "page"),
        (["alertname=PyobsNoTraffic", "severity=warning", "service=x"], "ticket"),
        (["alertname=PyobsWatchdog", "severity=none"], "watchdog"),
        (["alertname=SomethingElse"], "default"),
    ],
)
def test_alertmanager_routes(labels: list[str], receiver: str) -> None:
    """`amtool config routes test`: pages, tickets and the watchdog reach their receivers."""
    run_tool(
        [
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={PROMETHEUS / 'alertmanager.yml'}",
            f"--verify.receivers={receiver}",
            *labels,
        ]
    )


def test_alert_template_renders(tmp_path: Path) -> None:
    """`amtool template render`: one readable block per alert, with runbook and dashboard."""
    data = {
        "receiver": "page",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "PyobsHighErrorRate",
                    "service": "shop",
                    "severity": "critical",
                },
                "annotations": {
                    "summary": "shop answers more than 5% of requests with a 5xx",
                    "description": "12% of the requests to shop failed with a 5xx.",
                    "runbook_url": "https://example.org/runbook#pyobshigherrorrate",
                    "dashboard_url": "http://localhost:3000/d/pyobs-overview?var-service=shop",
                },
                "startsAt": "2026-11-28T09:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": "1",
            }
        ],
        "groupLabels": {"alertname": "PyobsHighErrorRate", "service": "shop"},
        "commonLabels": {"alertname": "PyobsHighErrorRate", "service": "shop"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    output = run_tool(
        [
            "amtool",
            "template",
            "render",
            f"--template.glob={PROMETHEUS / 'templates' / '*.tmpl'}",
            '--template.text={{ template "pyobs.title" . }}\n{{ template "pyobs.text" . }}',
            f"--template.data={path}",
        ]
    )
    assert "[FIRING:1] PyobsHighErrorRate on shop" in output
    assert "FIRING [critical] shop answers more than 5% of requests with a 5xx" in output
    assert "runbook:   https://example.org/runbook#pyobshigherrorrate" in output
    assert "dashboard: http://localhost:3000/d/pyobs-overview?var-service=shop" in output
