"""promtool and amtool on the committed configuration: the checks the real tools make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.prometheus.conftest import REPO, run_tool

PROMETHEUS = REPO / "prometheus"
RULE_TESTS = sorted((Path(__file__).parent / "rules").glob("*_test.yml")) + sorted(
    (PROMETHEUS / "slo" / "tests").glob("*_test.yml")
)


def test_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts prometheus.yml and every rule file it loads."""
    output = run_tool(["promtool", "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert "14 rule files found" in output  # four, and one per SLO spec'd example service


def test_rule_files_are_valid() -> None:
    """`promtool check rules` accepts every rule file (names, PromQL, templates)."""
    files = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    assert len(files) == 14
    run_tool(["promtool", "check", "rules", *files])


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_rule_unit_tests(path: Path) -> None:
    """`promtool test rules` (hand-written and SLO-generated): alerts fire when they should."""
    assert len(RULE_TESTS) == 14  # recording, alerts, stack, workers, one per SLO spec
    output = run_tool(["promtool", "test", "rules", str(path)])
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
    assert alerts <= firing
    assert firing - alerts == {"PyobsAvailabilityBudgetBurnFast"}  # it meets PyobsHighErrorRate
    assert len(quiet) >= 5


def test_every_slo_alert_has_a_generated_unit_test() -> None:
    """Each SLO alert of each service fires in its generated promtool test, and is quiet too."""
    import yaml

    alerts = set()
    tests = []
    for path in sorted((PROMETHEUS / "rules").glob("pyobs-slo-*.yml")):
        rules = yaml.safe_load(path.read_text())
        alerts |= {
            (r["alert"], r["labels"]["slo"], path.stem.removeprefix("pyobs-slo-"))
            for g in rules["groups"]
            for r in g["rules"]
            if "alert" in r
        }
        test_file = (
            PROMETHEUS / "slo" / "tests" / f"{path.stem.removeprefix('pyobs-slo-')}_test.yml"
        )
        tests += yaml.safe_load(test_file.read_text())["tests"]
    assert len(alerts) == 39  # 10 services x 2 SLOs x page + ticket, less one disabled ticket
    firing = set()
    quiet = set()
    for test in tests:
        service = next(
            s["series"].split('service="')[1].split('"')[0] for s in test["input_series"]
        )
        for case in test["alert_rule_test"]:
            for alert in case["exp_alerts"]:
                labels = alert["exp_labels"]
                assert labels["service"] == service
                firing.add((case["alertname"], labels["slo"], service))
            if not case["exp_alerts"]:
                quiet.add((case["alertname"], service))
    assert firing == alerts
    assert {(name, service) for name, _slo, service in alerts} <= quiet


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
        (["alertname=PyobsLatencyBudgetBurnFast", "severity=critical", "sli=latency"], "page"),
        (["alertname=PyobsLatencyBudgetBurnSlow", "severity=warning", "sli=latency"], "ticket"),
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


def test_pages_are_grouped_per_service() -> None:
    """Every critical alert of one service lands in one page group (one page per incident)."""
    import yaml

    config = yaml.safe_load((PROMETHEUS / "alertmanager.yml").read_text())
    page = next(r for r in config["route"]["routes"] if r["receiver"] == "page")
    assert page["group_by"] == ["service"]
    inhibit = config["inhibit_rules"]
    assert {
        "source_matchers": ['sli = "availability"', 'severity = "critical"'],
        "target_matchers": ['alertname = "PyobsHighErrorRate"'],
        "equal": ["service"],
    } in inhibit
    # Both pages of an outage reach the same receiver, hence the same per-service group.
    for name in ("PyobsHighErrorRate", "PyobsAvailabilityBudgetBurnFast", "PyobsInstanceDown"):
        output = run_tool(
            [
                "amtool",
                "config",
                "routes",
                "test",
                f"--config.file={PROMETHEUS / 'alertmanager.yml'}",
                "--verify.receivers=page",
                f"alertname={name}",
                "severity=critical",
                "sli=availability",
                "service=shop",
            ]
        )
        assert output.splitlines()[0] == "page"


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
