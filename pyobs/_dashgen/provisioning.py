"""Grafana provisioning: datasources, the dashboard provider, and alerting from the same SLOs."""

from __future__ import annotations

import json
import re
from typing import Any

from grafana_foundation_sdk.builders import alerting
from grafana_foundation_sdk.builders import expr as expr_b
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as alerting_model

from pyobs._dashgen import slo

FOLDER_UID = "pyobs"
FOLDER_TITLE = "pyobs"
#: Where the compose stack mounts ``dashboards/`` inside the Grafana container.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards"
CONTACT_POINT = "pyobs-alertmanager"
#: The math expression that decides; the data queries are A, B, C, ...
CONDITION_REF = "Z"
#: How often Grafana evaluates each rule group.
EVALUATION_SECONDS = 60


def datasources() -> dict[str, Any]:
    """Prometheus, Elasticsearch, Alertmanager and Jaeger, each under its fixed uid."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": slo.PROMETHEUS_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    "timeInterval": "15s",
                    "prometheusType": "Prometheus",
                    "manageAlerts": True,
                    "alertmanagerUid": slo.ALERTMANAGER_UID,
                    # An exemplar's trace_id opens the trace in Jaeger.
                    "exemplarTraceIdDestinations": [
                        {"name": "trace_id", "datasourceUid": slo.JAEGER_UID}
                    ],
                },
            },
            {
                "name": "Elasticsearch",
                "uid": slo.ELASTICSEARCH_UID,
                "type": "elasticsearch",
                "access": "proxy",
                "url": "http://elasticsearch:9200",
                "editable": False,
                "basicAuth": True,
                # The stack's read-only user for logs-pyobs-*; Grafana reads the password
                # from its environment.
                "basicAuthUser": "pyobs_grafana_reader",
                "secureJsonData": {"basicAuthPassword": "$GRAFANA_READER_PASSWORD"},
                "jsonData": {
                    "index": "logs-pyobs-*",
                    "timeField": "@timestamp",
                    "logMessageField": "message",
                    "logLevelField": "log.level",
                    "maxConcurrentShardRequests": 5,
                    # A log line's trace.id opens the trace in Jaeger.
                    "dataLinks": [
                        {
                            "field": "trace.id",
                            "url": "${__value.raw}",
                            "datasourceUid": slo.JAEGER_UID,
                        }
                    ],
                },
            },
            {
                "name": "Alertmanager",
                "uid": slo.ALERTMANAGER_UID,
                "type": "alertmanager",
                "access": "proxy",
                "url": "http://alertmanager:9093",
                "editable": False,
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
            {
                "name": "Jaeger",
                "uid": slo.JAEGER_UID,
                "type": "jaeger",
                "access": "proxy",
                "url": "http://jaeger:16686",
                "editable": False,
                "jsonData": {
                    # A span opens the log lines that carry its trace.id.
                    "tracesToLogsV2": {
                        "datasourceUid": slo.ELASTICSEARCH_UID,
                        "spanStartTimeShift": "-5m",
                        "spanEndTimeShift": "5m",
                        "filterByTraceID": False,
                        "filterBySpanID": False,
                        "customQuery": True,
                        "query": 'trace.id:"${__trace.traceId}"',
                    }
                },
            },
        ],
    }


def dashboard_provider() -> dict[str, Any]:
    """The file provider that loads ``dashboards/*.json`` into the pyobs folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "pyobs",
                "orgId": 1,
                "folder": FOLDER_TITLE,
                "folderUid": FOLDER_UID,
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }


def _grafana_template(text: str) -> str:
    # Grafana exposes each query's value as $values.<refId>; A is the measured value.
    return text.replace("$value", "$values.A.Value")


def _rule(alert: slo.Alert, group: str) -> alerting.Rule:
    conditions = alert.conditions()
    refs = [chr(ord("A") + i) for i in range(len(conditions))]
    rule = (
        alerting.Rule(alert.name)
        .uid(alert.name.lower()[:40])
        .folder_uid(FOLDER_UID)
        .rule_group(group)
        .condition(CONDITION_REF)
        .for_val(alert.for_)
        .no_data_state("OK")
        .exec_err_state("Error")
        .is_paused(True)
        .labels({"severity": alert.severity, **alert.labels})
        .annotations({key: _grafana_template(value) for key, value in alert.annotations().items()})
    )
    longest = max((slo.seconds(w) for c in conditions for w in _windows(c.query)), default=300)
    for ref, condition in zip(refs, conditions, strict=True):
        rule = rule.with_query(
            alerting.Query(ref)
            .datasource_uid(slo.PROMETHEUS_UID)
            .relative_time_range(alerting_model.RelativeTimeRange(from_val=max(600, longest), to=0))
            .model(prom.Dataquery().expr(condition.query).instant().ref_id(ref))
        )
    clauses = []
    index = 0
    for group_conditions in alert.any_of:
        parts = []
        for condition in group_conditions:
            parts.append(f"${refs[index]} {condition.op} {condition.threshold:.10g}")
            index += 1
        clauses.append("(" + " && ".join(parts) + ")")
    return rule.with_query(
        alerting.Query(CONDITION_REF)
        .datasource_uid("__expr__")
        .model(expr_b.TypeMath().expression(" || ".join(clauses)).ref_id(CONDITION_REF))
    )


def _windows(query: str) -> list[str]:
    return re.findall(r"\[(\w+)\]", query) + re.findall(r"ratio_rate(\w+)\{", query)


def alert_rule_groups() -> list[alerting.RuleGroup]:
    """The Grafana-managed copies of the alerts, built with grafana-foundation-sdk."""
    groups: list[alerting.RuleGroup] = []
    for name, wanted in (("pyobs-slo", True), ("pyobs-service", False)):
        group = alerting.RuleGroup(name).folder_uid(FOLDER_UID).interval(EVALUATION_SECONDS)
        for alert in slo.ALERTS:
            if alert.grafana and ("slo" in alert.labels) == wanted:
                group = group.with_rule(_rule(alert, name))
        groups.append(group)
    return groups


def _plain(obj: object) -> Any:
    return json.loads(json.dumps(obj, cls=JSONEncoder))


def alert_rules_file() -> dict[str, Any]:
    """Grafana's file-provisioning shape of :func:`alert_rule_groups`."""
    groups = []
    for builder in alert_rule_groups():
        group = _plain(builder.build())
        rules = []
        for rule in group.get("rules", []):
            rules.append(
                {
                    "uid": rule["uid"],
                    "title": rule["title"],
                    "condition": rule["condition"],
                    "data": rule["data"],
                    "noDataState": rule["noDataState"],
                    "execErrState": rule["execErrState"],
                    "for": rule["for"],
                    "isPaused": rule.get("isPaused", False),
                    "labels": rule.get("labels", {}),
                    "annotations": rule.get("annotations", {}),
                }
            )
        groups.append(
            {
                "orgId": 1,
                "name": group["title"],
                "folder": FOLDER_TITLE,
                "interval": slo.duration(int(group["interval"])),
                "rules": rules,
            }
        )
    return {"apiVersion": 1, "groups": groups}


def contact_points_file() -> dict[str, Any]:
    """One contact point: the stack's Alertmanager, so both engines share routes and templates."""
    point = _plain(
        alerting.ContactPoint()
        .uid(CONTACT_POINT)
        .name(CONTACT_POINT)
        .type("prometheus-alertmanager")  # type: ignore[arg-type]
        .settings({"url": "http://alertmanager:9093"})
        .disable_resolve_message(False)
        .build()
    )
    receiver = {k: point[k] for k in ("uid", "type", "settings", "disableResolveMessage")}
    return {
        "apiVersion": 1,
        "contactPoints": [{"orgId": 1, "name": point["name"], "receivers": [receiver]}],
    }


def policies_file() -> dict[str, Any]:
    """The notification policy tree: pages sooner and more often than tickets."""

    def route(severity: str, wait: str, repeat: str) -> alerting.NotificationPolicy:
        return (
            alerting.NotificationPolicy()
            .receiver(CONTACT_POINT)
            .object_matchers([["severity", "=", severity]])
            .group_wait(wait)
            .repeat_interval(repeat)
        )

    policy = _plain(
        alerting.NotificationPolicy()
        .receiver(CONTACT_POINT)
        .group_by(["grafana_folder", "alertname", "service"])
        .group_wait("30s")
        .group_interval("5m")
        .repeat_interval("12h")
        .routes([route("critical", "10s", "1h"), route("warning", "1m", "12h")])
        .build()
    )
    return {"apiVersion": 1, "policies": [{"orgId": 1, **policy}]}
