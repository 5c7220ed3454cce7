"""Grafana provisioning: the datasources (linked to each other) and the dashboard provider.

Alerting is Prometheus's: its rules evaluate, Alertmanager routes and silences, and Grafana
shows both through the Prometheus datasource (``manageAlerts``) and the Alertmanager
datasource. No Grafana-managed rule is provisioned (docs/dashboards.md, "Alerts in Grafana").
"""

from __future__ import annotations

from typing import Any

from pyobs._dashgen import slo

#: The one folder every provisioned object lives in (dashboards; alert rules would go here too).
FOLDER_UID = "pyobs"
FOLDER_TITLE = "pyobs"
#: Where the compose stack mounts ``dashboards/`` inside the Grafana container.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards"


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
                    # Grafana's alert list shows Prometheus's own rules (read-only there).
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
                # Grafana shows, groups and silences Prometheus's alerts here; it sends none of
                # its own (no Grafana-managed rules are provisioned).
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
