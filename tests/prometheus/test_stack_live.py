"""The stack watching itself, live: real Prometheus, Alertmanager and Jaeger v2 on loopback.

Prometheus scrapes a real Jaeger's own metrics with the stack's `jaeger` job (its relabelling
included) and evaluates prometheus/rules/pyobs-stack.yml with every window and `for` divided
by 60; Alertmanager runs the stack's alertmanager.yml with one-second group timings. A
stopped Jaeger must page through Alertmanager. A silence created through Alertmanager's v2
API with the body Grafana's Alertmanager datasource sends must suppress its alert (state
"suppressed", no more notifications) while other alerts keep notifying. What this cannot
prove: Grafana's own UI calling that API (Grafana cannot run here).
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import tracing_backends
from tests.conftest import import_or_require, require_service
from tests.prometheus.conftest import (
    REPO,
    Process,
    Webhook,
    alertmanager_config,
    http_json,
    query,
    running_webhook,
    start_alertmanager,
    start_prometheus,
    wait_until,
)

SCALE = 1 / 60


def _prometheus_config(workdir: Path, jaeger: tracing_backends.Jaeger, am_port: int) -> Path:
    """The stack's prometheus.yml with only its `jaeger` job, pointed at the test's Jaeger."""
    from pyobs._dashgen import stack

    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    from pyobs._dashgen import promrules

    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    # Every rule the stack loads: the services' alerts too, so a double page would show.
    for name, body in promrules.rule_files(scale=SCALE).items():
        (rules / name).write_text(yaml.safe_dump(body, sort_keys=False))
    (rules / stack.RULE_FILE).write_text(yaml.safe_dump(stack.rule_file(scale=SCALE)))
    config["rule_files"] = [str(rules / "*.yml")]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [f"127.0.0.1:{am_port}"]}
    ]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "jaeger")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{jaeger.ports['metrics']}"]}]
    config["scrape_configs"] = [job]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def alertmanager(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Process, Webhook]]:
    """The stack's Alertmanager (fast timings) posting to a recording webhook."""
    workdir = tmp_path_factory.mktemp("stack-am")
    with running_webhook() as webhook:
        process = start_alertmanager(
            alertmanager_config(
                workdir, webhook, group_wait="1s", group_interval="1s", repeat_interval="2s"
            ),
            workdir,
        )
        try:
            yield process, webhook
        finally:
            process.stop()


def _notified(webhook: Webhook, name: str, status: str = "firing") -> list[str]:
    return [
        path
        for path, alert in webhook.alerts()
        if alert["labels"].get("alertname") == name and alert["status"] == status
    ]


def _send_span(otlp_port: int) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("stack-live").start_as_current_span("ping"):
        pass
    provider.shutdown()


@pytest.mark.service
def test_prometheus_scrapes_jaeger_and_a_stopped_jaeger_pages(
    alertmanager: tuple[Process, Webhook], tmp_path: Path
) -> None:
    """Jaeger's own series arrive (its HTTP histograms do not); stopping Jaeger raises
    PyobsJaegerDown, which reaches the page receiver through Alertmanager, and no other page."""
    import_or_require("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    am, webhook = alertmanager
    reason = tracing_backends.missing_reason()
    require_service(reason is None, reason or "")
    # Jaeger serves its own metrics on the telemetry port, as in the stack.
    jaeger = tracing_backends.start_jaeger(tmp_path, own_metrics=True)
    prometheus: Process | None = None
    try:
        prometheus = start_prometheus(_prometheus_config(tmp_path, jaeger, am.port), tmp_path)
        port = prometheus.port

        def series(promql: str) -> list[dict[str, Any]]:
            answer = query(port, promql)
            assert answer["status"] == "success", answer
            return list(answer["data"]["result"])

        wait_until(lambda: series('up{job="jaeger"} == 1'), 30, what="Jaeger scraped")
        _send_span(jaeger.otlp_http)
        accepted = wait_until(
            lambda: series('otelcol_receiver_accepted_spans_total{job="jaeger"} > 0'),
            30,
            what="Jaeger's accepted-spans counter",
        )
        assert accepted[0]["metric"]["service"] == "127.0.0.1"  # the host-name relabelling
        # Jaeger's own HTTP histograms carry the services' metric name: dropped at scrape.
        assert not series('{job="jaeger", __name__=~"http_server_.*"}')
        # Every query of the stack dashboard is valid PromQL; the Jaeger panels have data.
        from pyobs._dashgen.dashboards import prometheus_queries

        board = json.loads((REPO / "dashboards" / "pyobs-stack.json").read_text())
        queries = prometheus_queries(board)
        assert len(queries) >= 15
        for title, expr in queries:
            promql = expr.replace("$__rate_interval", "1m")
            series(promql)  # fails on anything but success
            if "otelcol_receiver_accepted" in expr or "up{" in expr:
                wait_until(lambda q=promql: series(q), 30, what=f"{title}: data from Jaeger")
        assert not _notified(webhook, "PyobsJaegerDown")

        jaeger.stop()
        paths = wait_until(
            lambda: _notified(webhook, "PyobsJaegerDown"), 60, what="PyobsJaegerDown paged"
        )
        assert paths[0] == "/alerts/page"
        alert = next(
            a for _, a in webhook.alerts() if a["labels"]["alertname"] == "PyobsJaegerDown"
        )
        assert alert["labels"]["job"] == "jaeger"
        assert alert["annotations"]["runbook_url"].endswith("#pyobsjaegerdown")
        # One outage, one page: once PyobsJaegerDown has been firing for five evaluations
        # (PyobsInstanceDown's `for` is one), no other alert is about the Jaeger target, in
        # Prometheus or in Alertmanager.
        wait_until(
            lambda: series(
                'count_over_time(ALERTS{alertname="PyobsJaegerDown",alertstate="firing"}[1m]) >= 5'
            ),
            30,
            what="five firing evaluations",
        )
        in_prometheus = {r["metric"]["alertname"] for r in series('ALERTS{job="jaeger"}')}
        assert in_prometheus == {"PyobsJaegerDown"}
        in_alertmanager = {
            a["labels"]["alertname"]
            for a in http_json(f"http://127.0.0.1:{am.port}/api/v2/alerts")
            if a["labels"].get("job") == "jaeger"
        }
        assert in_alertmanager == {"PyobsJaegerDown"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        jaeger.stop()


def _am(am_port: int, path: str, body: Any = None, method: str = "GET") -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{am_port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read()
    return json.loads(text) if text else None


def _iso(moment: datetime.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.service
def test_a_silence_made_like_grafana_s_suppresses_the_alert(
    alertmanager: tuple[Process, Webhook],
) -> None:
    """POST /api/v2/silences with Grafana's body (matchers with isEqual, createdBy, comment):
    the alert turns "suppressed" and stops notifying while another alert still notifies."""
    am, webhook = alertmanager
    now = datetime.datetime.now(datetime.UTC)

    def fire() -> None:
        # What Prometheus sends for firing alerts, re-sent as Prometheus does.
        ends = _iso(datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5))
        alerts = [
            {"labels": {"alertname": name, "severity": "critical", "service": "silence-test"},
             "annotations": {"summary": name}, "endsAt": ends}
            for name in ("PyobsSilenceMe", "PyobsControl")
        ]  # fmt: skip
        _am(am.port, "/api/v2/alerts", alerts, "POST")

    fire()
    wait_until(lambda: len(_notified(webhook, "PyobsSilenceMe")) >= 2, 30, what="repeats")

    silence = {
        "matchers": [
            {"name": "alertname", "value": "PyobsSilenceMe", "isRegex": False, "isEqual": True},
            {"name": "service", "value": "silence-test", "isRegex": False, "isEqual": True},
        ],
        "startsAt": _iso(now),
        "endsAt": _iso(now + datetime.timedelta(hours=1)),
        "createdBy": "admin",
        "comment": "maintenance, created from Grafana",
    }
    silence_id = _am(am.port, "/api/v2/silences", silence, "POST")["silenceID"]

    def state(name: str) -> dict[str, Any]:
        found = _am(
            am.port, "/api/v2/alerts?" + urllib.parse.urlencode({"filter": f'alertname="{name}"'})
        )
        return dict(found[0]["status"]) if found else {}

    wait_until(lambda: state("PyobsSilenceMe").get("state") == "suppressed", 10, what="silenced")
    assert state("PyobsSilenceMe")["silencedBy"] == [silence_id]
    assert state("PyobsControl")["state"] == "active"
    listed = {s["id"]: s for s in _am(am.port, "/api/v2/silences")}
    assert listed[silence_id]["status"]["state"] == "active"
    assert listed[silence_id]["createdBy"] == "admin"

    # A notification already in flight may still land: count from one repeat later.
    control = len(_notified(webhook, "PyobsControl"))
    wait_until(lambda: len(_notified(webhook, "PyobsControl")) >= control + 1, 15, what="tick")
    silenced = len(_notified(webhook, "PyobsSilenceMe"))
    control = len(_notified(webhook, "PyobsControl"))
    fire()
    wait_until(lambda: len(_notified(webhook, "PyobsControl")) >= control + 3, 30, what="repeats")
    assert len(_notified(webhook, "PyobsSilenceMe")) == silenced

    # Expiring the silence (Grafana's "Unsilence") lets the alert notify again.
    _am(am.port, f"/api/v2/silence/{silence_id}", method="DELETE")
    fire()
    wait_until(
        lambda: len(_notified(webhook, "PyobsSilenceMe")) > silenced, 30, what="notifies again"
    )
