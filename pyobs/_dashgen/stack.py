"""The stack watching itself: alert rules on Elasticsearch, Logstash, Jaeger, Prometheus,
Alertmanager and the pyobs pipelines (log shipper, span export), and the stack dashboard.

The series come from elasticsearch_exporter (``elasticsearch_*``), pyobs's Logstash bridge
(``logstash_*``, pyobs/_logstash_exporter.py), Jaeger's own telemetry (``otelcol_*``),
Prometheus and Alertmanager themselves, and the instrumented services (``pyobs_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash

from pyobs._dashgen import slo
from pyobs._dashgen.slo import scale_durations, scaled

STACK_UID = "pyobs-stack"
RULE_FILE = "pyobs-stack.yml"
GROUP = "pyobs-stack"


@dataclass(frozen=True)
class StackAlert:
    """One Prometheus alerting rule about the stack or a pyobs pipeline."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        """The rule as Prometheus reads it."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {
                "severity": self.severity,
                "notify": "page" if self.severity == "critical" else "ticket",
                **self.labels,
            },
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": self.runbook_url(),
                "dashboard_url": self.dashboard_url(),
            },
        }

    def runbook_url(self) -> str:
        """Where the alert's runbook section is."""
        return f"{slo.RUNBOOK_URL}#{self.name.lower()}"

    def dashboard_url(self) -> str:
        """The dashboard to open when the alert fires."""
        return f"{slo.GRAFANA_URL}/d/{STACK_UID}"


ALERTS = (
    StackAlert(
        "PyobsElasticsearchClusterRed",
        'max by (cluster) (elasticsearch_cluster_health_status{color="red"}) == 1',
        "2m",
        "critical",
        "Elasticsearch cluster {{ $labels.cluster }} is red",
        "A primary shard is unassigned: some log data streams refuse writes and searches "
        "miss data. Logstash holds events in its persisted queue meanwhile.",
    ),
    StackAlert(
        "PyobsElasticsearchClusterYellow",
        # A single node cannot hold replicas: yellow is its normal state, not an incident.
        '(max by (cluster) (elasticsearch_cluster_health_status{color="yellow"}) == 1)'
        " and on (cluster)"
        " (max by (cluster) (elasticsearch_cluster_health_number_of_data_nodes) > 1)",
        "30m",
        "warning",
        "Elasticsearch cluster {{ $labels.cluster }} has been yellow for 30 minutes",
        "Replica shards are unassigned although the cluster has several data nodes: one "
        "more node loss loses data. Check _cluster/allocation/explain.",
    ),
    StackAlert(
        "PyobsElasticsearchUnreachable",
        'up{job="elasticsearch"} == 0 or elasticsearch_clusterinfo_up == 0',
        "2m",
        "critical",
        "Elasticsearch cannot be read by its exporter",
        "elasticsearch_exporter cannot be scraped or cannot reach Elasticsearch "
        "({{ $labels.instance }}): cluster health is unknown.",
    ),
    StackAlert(
        "PyobsLogstashDown",
        'up{job="logstash"} == 0 or logstash_up == 0',
        "2m",
        "critical",
        "Logstash's monitoring API does not answer",
        "Logstash is down or starting: services spool their log events to disk until it "
        "is back (PyobsLogShipperBacklog follows).",
    ),
    StackAlert(
        "PyobsLogstashBackpressure",
        "sum by (pipeline) (rate(logstash_pipeline_queue_push_duration_seconds_total[5m]))"
        " / clamp_min(sum by (pipeline) (rate(logstash_pipeline_events_in_total[5m])), 1)"
        " > 0.1",
        "10m",
        "warning",
        "Logstash pipeline {{ $labels.pipeline }} pushes back on its inputs",
        "Inputs wait {{ $value | humanizeDuration }} per event to put it in the queue: the "
        "queue is full because the outputs (Elasticsearch) are slower than the traffic.",
    ),
    StackAlert(
        "PyobsLogstashQueueFilling",
        "max by (pipeline) (logstash_pipeline_queue_size_bytes"
        " / logstash_pipeline_queue_max_size_bytes) > 0.8",
        "5m",
        "warning",
        "Logstash's persisted queue of {{ $labels.pipeline }} is over 80% full",
        "{{ $value | humanizePercentage }} of the persisted queue is used: once full, "
        "Logstash stops accepting batches and the services spool to disk.",
    ),
    StackAlert(
        "PyobsLogstashPipelineStalled",
        "(sum by (pipeline) (increase(logstash_pipeline_events_in_total[10m])) > 0)"
        " and (sum by (pipeline) (increase(logstash_pipeline_events_out_total[10m])) == 0)",
        "5m",
        "critical",
        "Logstash pipeline {{ $labels.pipeline }} takes events in but sends none out",
        "Events arrive but none reached the outputs in 10 minutes: the output is blocked "
        "(Elasticsearch down or refusing the writer) or a filter hangs.",
    ),
    StackAlert(
        "PyobsLogShipperBacklog",
        'sum by (service) (rate(pyobs_log_shipper_events_total{outcome="spooled"}[5m])) > 0',
        "10m",
        "warning",
        "{{ $labels.service }} has spooled log events to disk for 10 minutes",
        "The log shipper cannot deliver as fast as the service logs, so it writes to its "
        "disk spool ({{ $value | humanize }} events/s). Once the spool is full, events are "
        "dropped (PyobsLogShipperDropping): check Logstash now.",
    ),
    StackAlert(
        "PyobsSpansDropped",
        "sum by (service, reason) (rate(pyobs_spans_dropped_total[5m])) > 0",
        "5m",
        "warning",
        "{{ $labels.service }} drops spans ({{ $labels.reason }})",
        "{{ $value | humanize }} spans/s never reach the trace backend: the export queue "
        "overflows or the exporter fails. Traces behind exemplars and log links go missing.",
    ),
    StackAlert(
        "PyobsJaegerDown",
        'up{job="jaeger"} == 0',
        "1m",
        "critical",
        "Jaeger cannot be scraped",
        "Jaeger ({{ $labels.instance }}) is down: services cannot export spans and every "
        "trace link from Grafana and Kibana fails.",
    ),
    StackAlert(
        "PyobsJaegerSpansFailing",
        "sum by (instance) (rate(otelcol_exporter_send_failed_spans_total[5m]))"
        " + sum by (instance) (rate(otelcol_receiver_refused_spans_total[5m])) > 0",
        "5m",
        "warning",
        "Jaeger refuses or fails to store spans",
        "Jaeger loses {{ $value | humanize }} spans/s between its OTLP receiver and its "
        "storage: check its log and its storage backend.",
    ),
    StackAlert(
        "PyobsPrometheusRuleFailures",
        "sum by (rule_group) (rate(prometheus_rule_evaluation_failures_total[5m])) > 0",
        "5m",
        "critical",
        "Prometheus fails to evaluate rule group {{ $labels.rule_group }}",
        "Alerts and recording rules of this group are not evaluated: alerts cannot fire.",
    ),
    StackAlert(
        "PyobsPrometheusNotificationsFailing",
        "sum(rate(prometheus_notifications_errors_total[5m]))"
        " + sum(rate(prometheus_notifications_dropped_total[5m])) > 0",
        "5m",
        "critical",
        "Prometheus cannot hand alerts to Alertmanager",
        "Alerts fire in Prometheus but do not reach Alertmanager: nobody gets paged.",
    ),
    StackAlert(
        "PyobsAlertmanagerNotificationsFailing",
        "sum by (integration) (rate(alertmanager_notifications_failed_total[5m])) > 0",
        "5m",
        "critical",
        "Alertmanager fails to deliver {{ $labels.integration }} notifications",
        "Receivers of this integration get nothing: check their URL and credentials in "
        "alertmanager.yml and Alertmanager's log.",
    ),
)


def rule_file(scale: float = 1.0, interval: str | None = None) -> dict[str, Any]:
    """prometheus/rules/pyobs-stack.yml. ``scale`` shrinks windows and ``for`` (live tests)."""
    rules = []
    for alert in ALERTS:
        rule = alert.rule()
        if scale != 1.0:
            rule["expr"] = scale_durations(rule["expr"], scale)
            rule["for"] = scaled(rule["for"], scale)
        rules.append(rule)
    group: dict[str, Any] = {"name": GROUP}
    if interval:
        group["interval"] = interval
    group["rules"] = rules
    return {"groups": [group]}


def dashboard() -> dash.Dashboard:
    """pyobs / Stack: every component's health and throughput on one page."""
    from pyobs._dashgen import dashboards as d

    return (
        d._with_datasources(
            d._base(
                STACK_UID, "pyobs / Stack", "The stack itself: is every signal getting through?"
            )
        )
        .with_row(dash.Row("Components"))
        .with_panel(
            d._ts(
                "Scrape targets up",
                "1 per stack component Prometheus reaches (exporters included).",
                "short",
                d._q(
                    'sum by (job) (up{job!="pyobs-services"})',
                    "{{job}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Firing alerts",
                "Alerts Prometheus holds firing, by severity.",
                "short",
                d._q('sum by (severity) (ALERTS{alertstate="firing"})', "{{severity}}"),
            )
        )
        .with_row(dash.Row("Elasticsearch"))
        .with_panel(
            d._stat(
                "Cluster health",
                "0 green, 1 yellow, 2 red (elasticsearch_exporter).",
                "short",
                'max(elasticsearch_cluster_health_status{color="yellow"})'
                ' + 2 * max(elasticsearch_cluster_health_status{color="red"})',
            )
        )
        .with_panel(
            d._ts(
                "Documents indexed per second",
                "Indexing rate of the node.",
                "ops",
                d._q(
                    "sum(rate(elasticsearch_indices_indexing_index_total[$__rate_interval]))",
                    "indexed",
                ),
                width=9,
            )
        )
        .with_panel(
            d._ts(
                "JVM heap used",
                "Share of the heap in use.",
                "percentunit",
                d._q(
                    'sum(elasticsearch_jvm_memory_used_bytes{area="heap"})'
                    " / sum(elasticsearch_jvm_memory_max_bytes)",
                    "heap",
                ),
                width=9,
            )
        )
        .with_row(dash.Row("Logstash"))
        .with_panel(
            d._ts(
                "Events in and out",
                "Events per second entering and leaving each pipeline.",
                "ops",
                d._q(
                    "sum by (pipeline) (rate(logstash_pipeline_events_in_total[$__rate_interval]))",
                    "{{pipeline}} in",
                ),
                d._q(
                    "sum by (pipeline) "
                    "(rate(logstash_pipeline_events_out_total[$__rate_interval]))",
                    "{{pipeline}} out",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Back-pressure",
                "Seconds inputs wait per event to enqueue it (0 is healthy).",
                "s",
                d._q(
                    "sum by (pipeline) "
                    "(rate(logstash_pipeline_queue_push_duration_seconds_total[$__rate_interval]))"
                    " / clamp_min(sum by (pipeline) "
                    "(rate(logstash_pipeline_events_in_total[$__rate_interval])), 1)",
                    "{{pipeline}}",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Persisted queue used",
                "Share of each pipeline's persisted queue in use.",
                "percentunit",
                d._q(
                    "max by (pipeline) (logstash_pipeline_queue_size_bytes"
                    " / logstash_pipeline_queue_max_size_bytes)",
                    "{{pipeline}}",
                ),
                width=8,
            )
        )
        .with_row(dash.Row("Pipelines in the services"))
        .with_panel(
            d._ts(
                "Log shipper",
                "Events delivered, spooled to disk and dropped, per second.",
                "ops",
                d._q(
                    "sum by (outcome) (rate(pyobs_log_shipper_events_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Spans dropped",
                "Spans the services could not export, by reason.",
                "ops",
                d._q(
                    "sum by (reason) (rate(pyobs_spans_dropped_total[$__rate_interval]))",
                    "{{reason}}",
                ),
            )
        )
        .with_row(dash.Row("Jaeger"))
        .with_panel(
            d._ts(
                "Spans received and stored",
                "Spans Jaeger's OTLP receiver accepted and its storage exporter wrote.",
                "ops",
                d._q(
                    "sum(rate(otelcol_receiver_accepted_spans_total[$__rate_interval]))",
                    "accepted",
                ),
                d._q(
                    "sum(rate(otelcol_exporter_sent_spans_total[$__rate_interval]))",
                    "stored",
                    "B",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Spans lost in Jaeger",
                "Refused by the receiver or failed in the storage exporter.",
                "ops",
                d._q(
                    "sum(rate(otelcol_receiver_refused_spans_total[$__rate_interval]))",
                    "refused",
                ),
                d._q(
                    "sum(rate(otelcol_exporter_send_failed_spans_total[$__rate_interval]))",
                    "failed",
                    "B",
                ),
            )
        )
        .with_row(dash.Row("Prometheus and Alertmanager"))
        .with_panel(
            d._ts(
                "Rule evaluation failures",
                "Failed evaluations per second, by rule group.",
                "ops",
                d._q(
                    "sum by (rule_group) "
                    "(rate(prometheus_rule_evaluation_failures_total[$__rate_interval]))",
                    "{{rule_group}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Notifications",
                "Alertmanager notifications sent and failed, by integration.",
                "ops",
                d._q(
                    "sum by (integration) "
                    "(rate(alertmanager_notifications_total[$__rate_interval]))",
                    "{{integration}} sent",
                ),
                d._q(
                    "sum by (integration) "
                    "(rate(alertmanager_notifications_failed_total[$__rate_interval]))",
                    "{{integration}} failed",
                    "B",
                ),
            )
        )
    )
