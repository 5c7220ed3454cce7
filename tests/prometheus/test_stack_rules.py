"""The stack's own alerts (prometheus/rules/pyobs-stack.yml) and the Logstash bridge.

The exporters cannot run here (elasticsearch_exporter's Go module is not served to this
machine; Logstash is on no registry it reaches), so the alerts are proven by promtool on input
series with the names and labels the exporters document, and the Logstash bridge on answers
shaped like Logstash's documented ``_node/stats``, served by a stand-in on loopback.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import serving
from tests.prometheus.conftest import PYTHON, REPO, run_tool, spawn_server

RULES = REPO / "prometheus" / "rules" / "pyobs-stack.yml"
TESTS = Path(__file__).parent / "rules" / "stack_test.yml"

#: What Logstash 8 answers on GET /_node/stats (trimmed to the fields the bridge reads).
NODE_STATS: dict[str, Any] = {
    "version": "8.19.21",
    "status": "green",
    "jvm": {"mem": {"heap_used_percent": 37, "heap_max_in_bytes": 536870912}},
    "pipelines": {
        "pyobs-logs": {
            "events": {
                "in": 1200,
                "filtered": 1190,
                "out": 1180,
                "duration_in_millis": 5100,
                "queue_push_duration_in_millis": 2500,
            },
            "queue": {
                "type": "persisted",
                "events_count": 20,
                "queue_size_in_bytes": 40960,
                "max_queue_size_in_bytes": 1073741824,
                "capacity": {
                    "queue_size_in_bytes": 40960,
                    "max_queue_size_in_bytes": 1073741824,
                },
            },
            "dead_letter_queue": {"queue_size_in_bytes": 1},
        },
        # A memory-queue pipeline reports no queue sizes at all.
        "pyobs-dlq": {
            "events": {"in": 3, "filtered": 3, "out": 3, "queue_push_duration_in_millis": 0},
            "queue": {"type": "memory"},
        },
    },
}


def _alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_stack_rule_unit_tests_pass() -> None:
    """`promtool test rules`: every stack alert fires on its exporter's series, quiet otherwise."""
    output = run_tool(["promtool", "test", "rules", str(TESTS)])
    assert "SUCCESS" in output


def test_every_stack_alert_fires_and_stays_quiet_in_a_test() -> None:
    """Each alert of pyobs-stack.yml has a firing case and a case where it must not fire."""
    cases = [
        case
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    names = {rule["alert"] for rule in _alerts()}
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert names == firing
    # Only the always-true-input ones are exempt: they are checked against the other series.
    assert names - quiet <= {
        "PyobsLogstashQueueFilling",
        "PyobsPrometheusRuleFailures",
        "PyobsAlertmanagerNotificationsFailing",
    }


def test_stack_alerts_carry_runbooks_and_route() -> None:
    """Severity, notify, a runbook section in docs/dashboards.md and the stack dashboard."""
    docs = (REPO / "docs" / "dashboards.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in docs.splitlines()
        if line.startswith("#")
    }
    for rule in _alerts():
        labels = rule["labels"]
        assert labels["severity"] in {"critical", "warning"}
        assert labels["notify"] == {"critical": "page", "warning": "ticket"}[labels["severity"]]
        assert rule["annotations"]["runbook_url"].split("#")[1] in anchors, rule["alert"]
        assert rule["annotations"]["dashboard_url"].endswith("/d/pyobs-stack")


def test_prometheus_scrapes_the_exporters_and_keeps_only_jaeger_s_own_series() -> None:
    """Jobs for elasticsearch-exporter, logstash-exporter and Jaeger; Jaeger's HTTP histograms
    (named like the services') are dropped so Jaeger never counts as a service."""
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job["static_configs"] for t in sc["targets"]]
        for name, job in jobs.items()
    }
    assert targets["elasticsearch"] == ["elasticsearch-exporter:9114"]
    assert targets["logstash"] == ["logstash-exporter:9198"]
    assert targets["jaeger"] == ["jaeger:8888"]
    keep = jobs["jaeger"]["metric_relabel_configs"]
    assert keep == [
        {"source_labels": ["__name__"], "regex": "otelcol_.*|target_info", "action": "keep"}
    ]
    kept = re.compile(keep[0]["regex"])
    assert kept.fullmatch("otelcol_exporter_send_failed_spans_total")
    assert not kept.fullmatch("http_server_request_duration_seconds_bucket")


def test_bridge_maps_documented_node_stats() -> None:
    """Counters, queue gauges and heap from one _node/stats answer; None means Logstash is down."""
    from pyobs._logstash_exporter import metrics_from_stats

    families = {f.name: f for f in metrics_from_stats(NODE_STATS)}

    def value(name: str, pipeline: str | None = None) -> float:
        samples = [
            s
            for s in families[name].samples
            if pipeline is None or s.labels == {"pipeline": pipeline}
        ]
        assert len(samples) == 1, (name, samples)
        return float(samples[0].value)

    assert value("logstash_up") == 1
    assert value("logstash_pipeline_events_in", "pyobs-logs") == 1200
    assert value("logstash_pipeline_events_out", "pyobs-logs") == 1180
    assert value("logstash_pipeline_queue_push_duration_seconds", "pyobs-logs") == 2.5
    assert value("logstash_pipeline_queue_events", "pyobs-logs") == 20
    assert value("logstash_pipeline_queue_max_size_bytes", "pyobs-logs") == 1073741824
    assert value("logstash_jvm_heap_used_ratio") == pytest.approx(0.37)
    sizes = families["logstash_pipeline_queue_size_bytes"].samples
    assert [s.labels["pipeline"] for s in sizes] == ["pyobs-logs"]  # the memory queue has none
    down = metrics_from_stats(None)
    assert [(f.name, f.samples[0].value) for f in down] == [("logstash_up", 0.0)]


@pytest.fixture
def logstash_api() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in for Logstash's monitoring API on loopback; state["down"] makes it answer 503."""
    state: dict[str, Any] = {"down": False, "calls": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["calls"] += 1
            if state["down"] or self.path != "/_node/stats":
                self.send_response(503 if state["down"] else 404)
                self.end_headers()
                return
            body = json.dumps(NODE_STATS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    with serving(Handler) as url:
        yield url, state


def test_bridge_process_serves_metrics_and_reports_logstash_down(
    logstash_api: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """`python -m pyobs._logstash_exporter` as the stack runs it: each scrape reads Logstash;
    when Logstash stops answering, the scrape still succeeds with logstash_up 0."""
    url, state = logstash_api
    bridge = spawn_server(
        "logstash-exporter",
        lambda port: [
            PYTHON, "-m", "pyobs._logstash_exporter", "--logstash", url,
            "--host", "127.0.0.1", "--port", str(port),
        ],
        "/metrics",
        tmp_path,
    )  # fmt: skip
    try:

        def scrape() -> dict[str, float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/metrics") as response:
                text = response.read().decode()
            return {
                f"{s.name}{s.labels.get('pipeline', '')}": s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        up = scrape()
        assert up["logstash_up"] == 1
        assert up["logstash_pipeline_events_in_totalpyobs-logs"] == 1200
        assert up["logstash_pipeline_events_out_totalpyobs-dlq"] == 3
        calls = state["calls"]
        state["down"] = True
        down = scrape()
        assert state["calls"] == calls + 1  # read at scrape time, not cached
        assert down == {"logstash_up": 0}
    finally:
        bridge.stop()
