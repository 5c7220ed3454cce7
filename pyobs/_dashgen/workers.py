"""The work behind the queues: the worker dashboard, its recording rules and its alerts.

Celery tasks and Kafka messages share OpenTelemetry's messaging metrics, spelled the
Prometheus way (``messaging_*``, label ``messaging_system``); Celery's task outcomes,
retries, queue wait and active tasks are pyobs's own (``pyobs_celery_*``). The names come
from the families the library registers (pyobs/_messaging.py); a test holds every name
used here to them, so no panel queries a series nobody emits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from pyobs._dashgen import slo
from pyobs._dashgen.slo import scale_durations, scaled

WORKERS_UID = "pyobs-workers"
RULE_FILE = "pyobs-workers.yml"
RECORDING_GROUP = "pyobs-workers-recording"
ALERT_GROUP = "pyobs-workers-alerts"
#: Runbooks of the worker alerts: one section per alert.
RUNBOOK_URL = "https://github.com/pyobs/pyobs/blob/main/docs/workers-dashboard.md"

# --- The series (pyobs/_messaging.py) -------------------------------------------------------

#: Messages a producer sent (a Celery task enqueued, a Kafka record delivered or failed).
SENT = "messaging_client_sent_messages_total"
#: Messages a consumer received (a Celery task taken by a worker, a Kafka record polled).
CONSUMED = "messaging_client_consumed_messages_total"
#: Time a consumer spent processing one message (a Celery task run, a Kafka record handled).
PROCESS = "messaging_process_duration_seconds"
#: Time of a client operation (publish, produce, poll).
OPERATION = "messaging_client_operation_duration_seconds"
#: Bytes of message payload sent and received (Kafka).
SENT_BYTES = "pyobs_messaging_client_sent_bytes_total"
CONSUMED_BYTES = "pyobs_messaging_client_consumed_bytes_total"
#: Celery task runs by task name and outcome (success, failure, retry, ...).
TASKS = "pyobs_celery_tasks_total"
#: Retries Celery tasks asked for, by task name.
RETRIES = "pyobs_celery_task_retries_total"
#: Time a task waited in its queue, from publish to the start of its run.
QUEUE_WAIT = "pyobs_celery_task_queue_wait_seconds"
#: Tasks running right now.
ACTIVE = "pyobs_celery_active_tasks"

#: Labels, as the library writes them.
SYSTEM = "messaging_system"
DESTINATION = "messaging_destination_name"
ERROR_TYPE = "error_type"
TASK = "task_name"
OUTCOME = "outcome"
FAILURE = 'outcome="failure"'
RETRY = 'outcome="retry"'
CELERY = 'messaging_system="celery"'
KAFKA = 'messaging_system="kafka"'

#: Every series name the dashboard and the rules read (a test checks each one is emitted).
SERIES: tuple[str, ...] = (SENT, CONSUMED, PROCESS, SENT_BYTES, CONSUMED_BYTES, TASKS, RETRIES)
SERIES += (QUEUE_WAIT, ACTIVE)

# --- Thresholds ------------------------------------------------------------------------------

#: Share of a task's runs that fail before it pages.
FAILURE_RATIO = 0.1
#: Retries per task run before it is a retry storm (each run retried once on average: half).
RETRY_RATIO = 0.5
#: Least retries per second worth a ticket (a rare task retrying once is no storm).
RETRY_FLOOR = 0.1
#: Least task runs per second for the failure ratio to mean something.
TRAFFIC_FLOOR = 0.01
#: p95 queue wait (seconds) before it is a backlog.
QUEUE_WAIT_SECONDS = 60.0

QUANTILES = ((0.5, "A"), (0.95, "B"), (0.99, "C"))


@dataclass(frozen=True)
class WorkerAlert:
    """One Prometheus alerting rule on the workers of a service."""

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        """The rule as Prometheus reads it (the labels and annotations of pyobs's alerts)."""
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
                "runbook_url": f"{RUNBOOK_URL}#{self.name.lower()}",
                "dashboard_url": (
                    f"{slo.GRAFANA_URL}/d/{WORKERS_UID}?var-service={{{{ $labels.service }}}}"
                ),
            },
        }


def _ratio(part: str, whole: str) -> str:
    # No failures at all is a ratio of 0, not a missing series.
    return f"({part} or {whole} * 0) / {whole}"


def recording_rules() -> list[dict[str, str]]:
    """Task rates, failure ratio, retries, percentiles and message rates per service."""
    by_task = f"service, {TASK}"
    tasks = f"sum by ({by_task}) (rate({TASKS}[5m]))"
    failures = f"sum by ({by_task}) (rate({TASKS}{{{FAILURE}}}[5m]))"
    rules: list[dict[str, str]] = [
        {
            "record": "service_task:pyobs_celery_tasks:rate5m",
            "expr": f"sum by ({by_task}, {OUTCOME}) (rate({TASKS}[5m]))",
        },
        {
            "record": "service_task:pyobs_celery_tasks_failures:ratio_rate5m",
            "expr": _ratio(failures, tasks),
        },
        {
            "record": "service_task:pyobs_celery_task_retries:rate5m",
            "expr": f"sum by ({by_task}) (rate({RETRIES}[5m]))",
        },
        {
            "record": f"service_task:{PROCESS}_bucket:rate5m",
            "expr": f"sum by ({by_task}, le) (rate({PROCESS}_bucket{{{CELERY}}}[5m]))",
        },
    ]
    rules += [
        {
            "record": f"service_task:{PROCESS}:p{round(q * 100)}_rate5m",
            "expr": f"histogram_quantile({q:g}, service_task:{PROCESS}_bucket:rate5m)",
        }
        for q, _ref in QUANTILES
    ]
    by_queue = f"service, {DESTINATION}"
    rules.append(
        {
            "record": f"service_queue:{QUEUE_WAIT}_bucket:rate5m",
            "expr": f"sum by ({by_queue}, le) (rate({QUEUE_WAIT}_bucket[5m]))",
        }
    )
    rules += [
        {
            "record": f"service_queue:{QUEUE_WAIT}:p{round(q * 100)}_rate5m",
            "expr": f"histogram_quantile({q:g}, service_queue:{QUEUE_WAIT}_bucket:rate5m)",
        }
        for q, _ref in QUANTILES
    ]
    by_destination = f"service, {SYSTEM}, {DESTINATION}"
    for name in (SENT, CONSUMED):
        short = name.removesuffix("_total")
        rules.append(
            {
                "record": f"service_destination:{short}:rate5m",
                "expr": f"sum by ({by_destination}) (rate({name}[5m]))",
            }
        )
        rules.append(
            {
                "record": f"service_destination:{short}_errors:rate5m",
                "expr": f"sum by ({by_destination}, {ERROR_TYPE}) "
                f'(rate({name}{{{ERROR_TYPE}!=""}}[5m]))',
            }
        )
    return rules


def alerts() -> tuple[WorkerAlert, ...]:
    """Failure ratio, retry storms and queue wait: the three ways work behind a queue goes bad."""
    by_task = f"service, {TASK}"
    tasks = f"sum by ({by_task}) (rate({TASKS}[5m]))"
    failures = f"sum by ({by_task}) (rate({TASKS}{{{FAILURE}}}[5m]))"
    retries = f"sum by ({by_task}) (rate({RETRIES}[5m]))"
    wait = (
        f"histogram_quantile(0.95, sum by (service, {DESTINATION}, le) "
        f"(rate({QUEUE_WAIT}_bucket[5m])))"
    )
    return (
        WorkerAlert(
            "PyobsTaskFailureRatio",
            f"{_ratio(failures, tasks)} > {FAILURE_RATIO:g} and {tasks} > {TRAFFIC_FLOOR:g}",
            "5m",
            "critical",
            "{{ $labels.service }}: task {{ $labels.task_name }} fails in over "
            f"{FAILURE_RATIO:.0%} of its runs",
            "{{ $value | humanizePercentage }} of the runs of {{ $labels.task_name }} ended "
            "in an exception over the last 5 minutes (retries not counted): its work is lost "
            "unless it is enqueued again.",
        ),
        WorkerAlert(
            "PyobsTaskRetryStorm",
            f"{retries} / {tasks} > {RETRY_RATIO:g} and {retries} > {RETRY_FLOOR:g}",
            "10m",
            "warning",
            "{{ $labels.service }}: task {{ $labels.task_name }} retries over and over",
            "{{ $labels.task_name }} asks for {{ $value | humanize }} retries per run: a "
            "dependency it retries on is failing, and every retry adds load to it and to the "
            "queue.",
        ),
        WorkerAlert(
            "PyobsTaskQueueWait",
            f"{wait} > {QUEUE_WAIT_SECONDS:g}",
            "10m",
            "warning",
            "{{ $labels.service }}: tasks wait over a minute in queue "
            "{{ $labels.messaging_destination_name }}",
            "The 95th percentile time from enqueue to start in "
            "{{ $labels.messaging_destination_name }} is {{ $value | humanizeDuration }}: "
            "the workers do not keep up with the producers.",
        ),
    )


def rule_file(scale: float = 1.0, interval: str | None = None) -> dict[str, Any]:
    """prometheus/rules/pyobs-workers.yml. ``scale`` shrinks windows and ``for`` (live tests)."""

    def group(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if interval:
            body["interval"] = interval
        out = []
        for rule in rules:
            if scale != 1.0:
                rule = dict(rule, expr=scale_durations(rule["expr"], scale))
                if "for" in rule:
                    rule["for"] = scaled(rule["for"], scale)
            out.append(rule)
        body["rules"] = out
        return body

    return {
        "groups": [
            group(RECORDING_GROUP, recording_rules()),
            group(ALERT_GROUP, [alert.rule() for alert in alerts()]),
        ]
    }


# --- The dashboard ---------------------------------------------------------------------------

SVC = 'service=~"$service"'
SVC_TASK = 'service=~"$service", task_name=~"$task"'
RATE = "$__rate_interval"


def _variable(name: str, label: str, query: str) -> dash.QueryVariable:
    from pyobs._dashgen.dashboards import PROMETHEUS

    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(PROMETHEUS)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def _heatmap(title: str, description: str, expr: str) -> heatmap.Panel:
    from pyobs._dashgen import dashboards as d

    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(d.PROMETHEUS)
        .span(12)
        .height(8)
        .with_target(d._q(expr, "{{le}}").format(PromQueryFormat.HEATMAP).exemplar(True))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .exemplars_color("rgba(255,0,255,0.7)")
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
        )
    )


def _percentiles(metric: str, selector: str, by: str, legend: str) -> list[Any]:
    from pyobs._dashgen import dashboards as d

    return [
        d._q(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}",
            ref,
        )
        for q, ref in QUANTILES
    ]


def dashboard() -> dash.Dashboard:
    """pyobs / Workers: Celery tasks and Kafka messages of the selected services."""
    from pyobs._dashgen import dashboards as d

    celery_task = f"{CELERY}, {SVC}, {TASK}=~\"$task\""
    kafka = f"{KAFKA}, {SVC}"
    tasks = f"rate({TASKS}{{{SVC_TASK}}}[{RATE}])"
    failures = f"rate({TASKS}{{{FAILURE}, {SVC_TASK}}}[{RATE}])"
    return (
        d._with_datasources(
            d._base(
                WORKERS_UID,
                "pyobs / Workers",
                "The work behind the queues: Celery tasks and Kafka messages.",
            )
        )
        .with_variable(_variable("service", "Service", f"label_values({TASKS}, service)"))
        .with_variable(_variable("task", "Task", f"label_values({TASKS}{{{SVC}}}, {TASK})"))
        .with_row(dash.Row("Celery tasks"))
        .with_panel(
            d._stat("Tasks per second", "Task runs of the selected tasks.", "ops", f"sum({tasks})")
        )
        .with_panel(
            d._stat(
                "Failure ratio",
                "Share of task runs that ended in an exception (retries not counted).",
                "percentunit",
                _ratio(f"sum({failures})", f"sum({tasks})"),
            )
        )
        .with_panel(
            d._stat(
                "p95 queue wait",
                "95th percentile time from enqueue to the start of the run.",
                "s",
                f"histogram_quantile(0.95, sum by (le) "
                f"(rate({QUEUE_WAIT}_bucket{{{SVC}}}[{RATE}])))",
            )
        )
        .with_panel(
            d._stat(
                "Active tasks",
                "Tasks running right now, in every worker process.",
                "short",
                f"sum({ACTIVE}{{{SVC}}})",
            )
        )
        .with_panel(
            d._ts(
                "Tasks per second by task and outcome",
                "Task runs per second, by task name and outcome.",
                "ops",
                d._q(
                    f"sum by (service, {TASK}, {OUTCOME}) ({tasks})",
                    "{{service}} {{task_name}} {{outcome}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Failure ratio by task",
                "Share of each task's runs that ended in an exception.",
                "percentunit",
                d._q(
                    _ratio(
                        f"sum by (service, {TASK}) ({failures})",
                        f"sum by (service, {TASK}) ({tasks})",
                    ),
                    "{{service}} {{task_name}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Retries per second by task",
                "Retries the tasks asked for; many per run is a retry storm.",
                "ops",
                d._q(
                    f"sum by (service, {TASK}) (rate({RETRIES}{{{SVC_TASK}}}[{RATE}]))",
                    "{{service}} {{task_name}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Task duration percentiles",
                "p50, p95 and p99 run time of each task, in the worker.",
                "s",
                *_percentiles(
                    PROCESS, celery_task, f"service, {TASK}", "{{service}} {{task_name}}"
                ),
            )
        )
        .with_panel(
            _heatmap(
                "Task duration heatmap",
                "Task run times; the dots are exemplars linking to the task's trace.",
                f"sum by (le) (increase({PROCESS}_bucket{{{celery_task}}}[{RATE}]))",
            )
        )
        .with_panel(
            d._ts(
                "Queue wait percentiles",
                "p50, p95 and p99 time from enqueue to the start of the run, per queue.",
                "s",
                *_percentiles(
                    QUEUE_WAIT,
                    SVC,
                    f"service, {DESTINATION}",
                    "{{service}} {{messaging_destination_name}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Active tasks",
                "Tasks running right now, per service and worker instance.",
                "short",
                d._q(
                    f"sum by (service, instance) ({ACTIVE}{{{SVC}}})",
                    "{{service}} {{instance}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Tasks enqueued and received",
                "Tasks published by the producers and received by the workers, per queue.",
                "ops",
                d._q(
                    f"sum by ({DESTINATION}) (rate({SENT}{{{CELERY}, {SVC}}}[{RATE}]))",
                    "{{messaging_destination_name}} sent",
                ),
                d._q(
                    f"sum by ({DESTINATION}) (rate({CONSUMED}{{{CELERY}, {SVC}}}[{RATE}]))",
                    "{{messaging_destination_name}} received",
                    "B",
                ),
            )
        )
        .with_row(dash.Row("Kafka"))
        .with_panel(
            d._ts(
                "Messages produced and consumed",
                "Messages per second, per topic.",
                "ops",
                d._q(
                    f"sum by ({DESTINATION}) (rate({SENT}{{{kafka}}}[{RATE}]))",
                    "{{messaging_destination_name}} produced",
                ),
                d._q(
                    f"sum by ({DESTINATION}) (rate({CONSUMED}{{{kafka}}}[{RATE}]))",
                    "{{messaging_destination_name}} consumed",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Bytes produced and consumed",
                "Payload bytes per second, per topic.",
                "Bps",
                d._q(
                    f"sum by ({DESTINATION}) (rate({SENT_BYTES}{{{kafka}}}[{RATE}]))",
                    "{{messaging_destination_name}} produced",
                ),
                d._q(
                    f"sum by ({DESTINATION}) (rate({CONSUMED_BYTES}{{{kafka}}}[{RATE}]))",
                    "{{messaging_destination_name}} consumed",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Errors",
                "Messages that failed to be produced or consumed, per topic and error type.",
                "ops",
                d._q(
                    f"sum by ({DESTINATION}, {ERROR_TYPE}) "
                    f'(rate({SENT}{{{kafka}, {ERROR_TYPE}!=""}}[{RATE}]))',
                    "{{messaging_destination_name}} produce {{error_type}}",
                ),
                d._q(
                    f"sum by ({DESTINATION}, {ERROR_TYPE}) "
                    f'(rate({CONSUMED}{{{kafka}, {ERROR_TYPE}!=""}}[{RATE}]))',
                    "{{messaging_destination_name}} consume {{error_type}}",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Consumer processing duration",
                "p50, p95 and p99 time the consumers spent on one message, per topic.",
                "s",
                *_percentiles(PROCESS, kafka, DESTINATION, "{{messaging_destination_name}}"),
            )
        )
        .with_panel(
            _heatmap(
                "Consumer processing heatmap",
                "Processing times of consumed messages; the dots are exemplars linking to "
                "the message's trace.",
                f"sum by (le) (increase({PROCESS}_bucket{{{kafka}}}[{RATE}]))",
            )
        )
    )
