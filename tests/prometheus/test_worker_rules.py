"""The workers dashboard and prometheus/rules/pyobs-workers.yml: alerts proven by promtool,
routed like the other pages and tickets, and reading only series the library emits."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus.conftest import REPO, run_tool

RULES = REPO / "prometheus" / "rules" / "pyobs-workers.yml"
TESTS = Path(__file__).parent / "rules" / "workers_test.yml"
BOARD = REPO / "dashboards" / "pyobs-workers.json"
DOCS = REPO / "docs" / "workers-dashboard.md"


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _board() -> dict[str, Any]:
    return dict(json.loads(BOARD.read_text()))


def test_worker_rule_unit_tests_pass() -> None:
    """`promtool test rules`: each worker alert fires on pyobs's series, quiet otherwise."""
    output = run_tool(["promtool", "test", "rules", str(TESTS)])
    assert "SUCCESS" in output


def test_every_worker_alert_fires_and_stays_quiet_in_a_test() -> None:
    """Each alert of pyobs-workers.yml has a firing case and cases where it must not fire."""
    cases = [
        case
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    names = {rule["alert"] for rule in _alerts()}
    assert names == {"PyobsTaskFailureRatio", "PyobsTaskRetryStorm", "PyobsQueueWait"}
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = [c["alertname"] for c in cases if not c.get("exp_alerts")]
    assert firing == names
    assert all(quiet.count(name) >= 2 for name in names)  # pending, and a healthy worker


def _anchors(text: str) -> set[str]:
    return {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }


def test_worker_alerts_carry_for_severity_runbook_and_dashboard() -> None:
    """`for:`, severity and notify as the other alerts; a runbook section in
    docs/workers-dashboard.md; the dashboard link keeps the service selected."""
    anchors = _anchors(DOCS.read_text())
    for rule in _alerts():
        name = rule["alert"]
        assert rule["for"] in {"5m", "10m"}, name
        labels = rule["labels"]
        assert labels["notify"] == {"critical": "page", "warning": "ticket"}[labels["severity"]]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
        url, anchor = annotations["runbook_url"].split("#")
        assert url.endswith("/docs/workers-dashboard.md") and anchor in anchors, name
        assert annotations["dashboard_url"].endswith(
            "/d/pyobs-workers?var-service={{ $labels.service }}"
        )
        # Every alert keeps `service`, so Alertmanager groups and inhibits it per service.
        assert "by (service," in rule["expr"], name


@pytest.mark.parametrize(
    ("alert", "severity", "receiver"),
    [
        ("PyobsTaskFailureRatio", "critical", "page"),
        ("PyobsTaskRetryStorm", "warning", "ticket"),
        ("PyobsQueueWait", "warning", "ticket"),
    ],
)
def test_worker_alerts_reach_their_receivers(alert: str, severity: str, receiver: str) -> None:
    """`amtool config routes test`: the failure ratio pages, the other two make tickets."""
    assert {r["alert"]: r["labels"]["severity"] for r in _alerts()}[alert] == severity
    output = run_tool(
        [
            "amtool",
            "config",
            "routes",
            "test",
            f"--config.file={REPO / 'prometheus' / 'alertmanager.yml'}",
            f"--verify.receivers={receiver}",
            f"alertname={alert}",
            f"severity={severity}",
            "service=shop",
            "celery_task_name=shop.charge",
        ]
    )
    assert output.splitlines()[0] == receiver


def test_workers_dashboard_has_the_promised_panels() -> None:
    """Tasks by outcome, failure ratio, retries, percentiles, queue wait, active tasks, Kafka
    rates, bytes, errors and consumer duration; two heatmaps with exemplars."""
    board = _board()
    assert board["uid"] == "pyobs-workers"
    panels = {p["title"]: p for p in board["panels"]}
    for title in (
        "Tasks per second by task and outcome",
        "Failure ratio by task",
        "Retries per second by task",
        "Task duration percentiles",
        "Queue wait percentiles",
        "Active tasks",
        "Messages produced and consumed",
        "Bytes produced and consumed",
        "Errors",
        "Consumer processing duration",
    ):
        assert panels[title]["type"] in {"timeseries", "stat"}, title
    for title in ("Task duration heatmap", "Consumer processing heatmap"):
        target = panels[title]["targets"][0]
        assert panels[title]["type"] == "heatmap"
        assert target["exemplar"] is True and target["format"] == "heatmap"
    percentiles = [t["expr"] for t in panels["Task duration percentiles"]["targets"]]
    assert [e.split(",")[0] for e in percentiles] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"service", "task"} <= set(variables)


#: A series name in PromQL (recorded names hold a colon and are not series the library writes).
_NAME = re.compile(r"(?<![\w:])((?:messaging|pyobs)_[a-z_]+)(?![\w:])")
#: What is not a series name: label matchers, grouping labels, label_values's label.
_NOT_NAMES = (
    re.compile(r"\{[^}]*\}"),
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
    re.compile(r",\s*\w+\)$"),
)
_SUFFIXES = ("_bucket", "_count", "_sum")


def _names(expr: str) -> set[str]:
    for pattern in _NOT_NAMES:
        expr = pattern.sub(" ", expr)
    out = set()
    for match in _NAME.finditer(expr):
        name = match[1]
        for suffix in _SUFFIXES:
            name = name.removesuffix(suffix)
        out.add(name)
    return out


def _read_by_board_and_rules() -> set[str]:
    from pyobs._dashgen.dashboards import prometheus_queries

    exprs = [expr for _title, expr in prometheus_queries(_board())]
    exprs += [rule["expr"] for rule in _rules()]
    return set().union(*(_names(e) for e in exprs))


def test_the_dashboard_and_rules_read_the_generator_s_series() -> None:
    """Every series name in a panel, variable or rule is one the generator declares."""
    from pyobs._dashgen import workers

    read = _read_by_board_and_rules()
    assert read == set(workers.SERIES)


def _emitted() -> dict[str, set[str]]:
    """Sample name -> label names, as the library's messaging families expose them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pyobs._messaging import MessagingMetrics

    registry = CollectorRegistry()
    metrics = MessagingMetrics(registry)
    metrics.record_sent("kafka", "orders", "", 0.002, "ab" * 16)
    metrics.record_consumed("kafka", "orders")
    metrics.record_processed("kafka", "orders", "", 0.01, None)
    metrics.record_queue_wait("celery", "celery", 0.5)
    metrics.record_body_size("kafka", "orders", "send", 120)
    metrics.task_started("shop.charge")
    metrics.task_ended("shop.charge", "success", 0.02, None)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


#: A selector of a series the library writes: name, then its matchers if any.
_SELECTOR = re.compile(r"(?<![\w:])((?:messaging|pyobs)_\w+)(?![\w:])\s*(?:\{(\d+)\})?")
_BRACES = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
#: Labels Prometheus adds to every series it scrapes (the `service` relabelling included).
_TARGET_LABELS = {"service", "instance", "job"}


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(series name, its matchers) of every selector of a pyobs series in ``expr``."""
    matchers = _BRACES.findall(expr)
    bare = _GROUPING.sub(" ", expr)
    bare = _BRACES.sub(lambda m: f"{{{matchers.index(m[1])}}}", bare)
    return [(m[1], matchers[int(m[2])] if m[2] else "") for m in _SELECTOR.finditer(bare)]


def test_every_series_and_label_the_workers_dashboard_and_rules_read_is_emitted() -> None:
    """Each series name, matcher label and grouping label in the dashboard and the rules is
    one that pyobs's messaging families expose (a panel on a name nobody emits stays empty)."""
    from pyobs._dashgen.dashboards import prometheus_queries

    emitted = _emitted()
    exprs = [(title, expr) for title, expr in prometheus_queries(_board())]
    exprs += [(rule.get("alert") or rule["record"], rule["expr"]) for rule in _rules()]
    checked = 0
    for title, expr in exprs:
        groupings = _GROUPING.findall(expr)
        selectors = _selectors(expr)
        selectors += [
            (name, "")
            for matchers in re.findall(r"\{([^}]*__name__[^}]*)\}", expr)
            for label, value in _MATCHER.findall(matchers)
            if label == "__name__"
            for name in value.split("|")
        ]
        read: set[str] = set()
        for name, matchers in selectors:
            assert name in emitted, f"{title}: {name} is not a series pyobs writes"
            for label, _value in _MATCHER.findall(matchers):
                if label != "__name__":
                    assert label in emitted[name] | _TARGET_LABELS, f"{title}: {name}{{{label}}}"
            read |= emitted[name]
            checked += 1
        for group in groupings:
            for label in (part.strip() for part in group.split(",")):
                assert label in read | _TARGET_LABELS, f"{title}: no series has label {label}"
    assert checked > 50


def test_the_docs_list_the_series_the_dashboard_reads() -> None:
    """docs/workers-dashboard.md's series table names exactly the series the generator reads,
    and every alert has its row in the alerts table."""
    from pyobs._dashgen import workers

    text = DOCS.read_text()
    series = set(re.findall(r"^\| `((?:messaging|pyobs)_\w+)` \|", text, re.MULTILINE))
    assert series == set(workers.SERIES)
    rows = set(re.findall(r"^\| `(Pyobs\w+)` \|", text, re.MULTILINE))
    assert rows == {rule["alert"] for rule in _alerts()}
