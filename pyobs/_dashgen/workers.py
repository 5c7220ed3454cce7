"""The work behind the queues: the worker dashboard, its recording rules and its alerts.

Celery tasks and Kafka messages share OpenTelemetry's messaging metrics, spelled the
Prometheus way (``messaging_*``, label ``messaging_system``); Celery's task outcomes,
retries, queue wait and active tasks are pyobs's own (``pyobs_celery_*``). The names come
from the families the library registers (pyobs/_messaging.py); a test holds every name
used here to them, so no panel queries a series nobody emits.
"""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard as model

from pyobs import _messaging
from pyobs._dashgen import dashboards as d
from pyobs._dashgen import slo
from pyobs._dashgen.slo import scale_durations, scaled
from pyobs._dashgen.stack import StackAlert

WORKERS_UID = "pyobs-workers"
RULE_FILE = "pyobs-workers.yml"
RECORDING_GROUP = "pyobs-workers-recording"
ALERT_GROUP = "pyobs-workers-alerts"
#: Runbooks of the worker alerts: one section per alert.
RUNBOOK_URL = "https://github.com/pyobs/pyobs/blob/main/docs/workers-dashboard.md"

# --- The series (pyobs/_messaging.py, MessagingMetrics) --------------------------------------

#: Messages a producer sent (Celery: tasks published; Kafka: records produced), by error.
SENT = "messaging_client_sent_messages_total"
#: Messages a consumer received (Celery: tasks started; Kafka: records polled), by error.
CONSUMED = "messaging_client_consumed_messages_total"
#: Time a consumer spent processing one message (Celery: one task run; Kafka: one record).
PROCESS = "messaging_process_duration_seconds"
#: Time of a client operation (``send``: publishing one task, producing one record).
OPERATION = "messaging_client_operation_duration_seconds"
#: Time between publish and the start of processing.
QUEUE_WAIT = "pyobs_messaging_queue_wait_seconds"
#: Size of the message bodies sent (``send``) and received (``receive``).
BODY_SIZE = "pyobs_messaging_message_body_size_bytes"
#: Celery task runs that ended, by task name and outcome (success, failure, retry).
TASKS = "pyobs_celery_tasks_total"
#: Duration of Celery task runs by task name and outcome, with trace_id exemplars.
TASK_DURATION = "pyobs_celery_task_duration_seconds"
#: Celery tasks running now, by task name (every pool process).
ACTIVE = "pyobs_celery_active_tasks"

#: Every series name the dashboard and the rules read (a test checks each one is emitted).
SERIES = (SENT, CONSUMED, PROCESS, OPERATION, QUEUE_WAIT, BODY_SIZE, TASKS, TASK_DURATION, ACTIVE)

#: Labels, as the library writes them.
SYSTEM = _messaging.SYSTEM
DESTINATION = _messaging.DESTINATION
OPERATION_NAME = _messaging.OPERATION
OPERATION_TYPE = _messaging.OPERATION_TYPE
ERROR_TYPE = _messaging.ERROR
TASK = _messaging.TASK
OUTCOME = _messaging.OUTCOME
FAILURE = f'{OUTCOME}="failure"'
RETRY = f'{OUTCOME}="retry"'
CELERY = f'{SYSTEM}="celery"'
KAFKA = f'{SYSTEM}="kafka"'
FAILED = f'{ERROR_TYPE}!=""'

# --- Thresholds ------------------------------------------------------------------------------

#: Share of a task's runs that fail before it pages.
FAILURE_RATIO = 0.1
#: Share of a task's runs that end in a retry before it is a retry storm.
RETRY_RATIO = 0.5
#: Least retries per second worth a ticket (a rare task retrying now and then is no storm).
RETRY_FLOOR = 0.1
#: Least task runs per second for the failure ratio to mean something.
TRAFFIC_FLOOR = 0.01
#: p95 queue wait (seconds) before it is a backlog; a bucket bound of the queue-wait histogram.
QUEUE_WAIT_SECONDS = 60.0

QUANTILES = ((0.5, "A"), (0.95, "B"), (0.99, "C"))


class WorkerAlert(StackAlert):
    """One Prometheus alerting rule on the workers of a service (labels and annotations as
    the stack's alerts), its runbook in docs/workers-dashboard.md."""

    def runbook_url(self) -> str:
        """The runbook section in docs/workers-dashboard.md."""
        return f"{RUNBOOK_URL}#{self.name.lower()}"

    def dashboard_url(self) -> str:
        """The workers dashboard, showing the alerting service."""
        return f"{slo.GRAFANA_URL}/d/{WORKERS_UID}?var-service={{{{ $labels.service }}}}"


def _ratio(part: str, whole: str) -> str:
    # None of ``part`` at all is a ratio of 0, not a missing series.
    return f"({part} or {whole} * 0) / {whole}"


def _quantile_rules(level: str, metric: str, by: str, selector: str = "") -> list[dict[str, str]]:
    buckets = f"{level}:{metric}_bucket:rate5m"
    matchers = f"{{{selector}}}" if selector else ""
    rules = [
        {"record": buckets, "expr": f"sum by ({by}, le) (rate({metric}_bucket{matchers}[5m]))"}
    ]
    rules += [
        {
            "record": f"{level}:{metric}:p{round(q * 100)}_rate5m",
            "expr": f"histogram_quantile({q:g}, {buckets})",
        }
        for q, _ref in QUANTILES
    ]
    return rules


def recording_rules() -> list[dict[str, str]]:
    """Task rates, failure and retry ratios, percentiles and message rates per service."""
    by_task = f"service, {TASK}"
    tasks = f"sum by ({by_task}) (rate({TASKS}[5m]))"
    failures = f"sum by ({by_task}) (rate({TASKS}{{{FAILURE}}}[5m]))"
    retries = f"sum by ({by_task}) (rate({TASKS}{{{RETRY}}}[5m]))"
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
            "record": "service_task:pyobs_celery_tasks_retries:ratio_rate5m",
            "expr": _ratio(retries, tasks),
        },
    ]
    rules += _quantile_rules("service_task", TASK_DURATION, by_task)
    by_destination = f"service, {SYSTEM}, {DESTINATION}"
    rules += _quantile_rules("service_destination", QUEUE_WAIT, by_destination)
    rules += _quantile_rules("service_destination", PROCESS, by_destination)
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
                "expr": f"sum by ({by_destination}, {ERROR_TYPE}) (rate({name}{{{FAILED}}}[5m]))",
            }
        )
    return rules


def alerts() -> tuple[WorkerAlert, ...]:
    """Failure ratio, retry storms and queue wait: the three ways work behind a queue goes bad."""
    by_task = f"service, {TASK}"
    tasks = f"sum by ({by_task}) (rate({TASKS}[5m]))"
    failures = f"sum by ({by_task}) (rate({TASKS}{{{FAILURE}}}[5m]))"
    retries = f"sum by ({by_task}) (rate({TASKS}{{{RETRY}}}[5m]))"
    wait = (
        f"histogram_quantile(0.95, sum by (service, {SYSTEM}, {DESTINATION}, le) "
        f"(rate({QUEUE_WAIT}_bucket[5m])))"
    )
    task = "{{ $labels.celery_task_name }}"
    destination = "{{ $labels.messaging_destination_name }}"
    return (
        WorkerAlert(
            "PyobsTaskFailureRatio",
            f"{_ratio(failures, tasks)} > {FAILURE_RATIO:g} and {tasks} > {TRAFFIC_FLOOR:g}",
            "5m",
            "critical",
            f"{{{{ $labels.service }}}}: task {task} fails in over {FAILURE_RATIO:.0%} of its runs",
            f"{{{{ $value | humanizePercentage }}}} of the runs of {task} ended in an exception "
            "over the last 5 minutes: their work is lost unless something enqueues it again.",
        ),
        WorkerAlert(
            "PyobsTaskRetryStorm",
            f"{retries} / {tasks} > {RETRY_RATIO:g} and {retries} > {RETRY_FLOOR:g}",
            "10m",
            "warning",
            f"{{{{ $labels.service }}}}: task {task} retries over and over",
            f"{{{{ $value | humanizePercentage }}}} of the runs of {task} end in a retry: what "
            "it retries on keeps failing, and every retry adds load to it and to the queue.",
        ),
        WorkerAlert(
            "PyobsQueueWait",
            f"{wait} > {QUEUE_WAIT_SECONDS:g}",
            "10m",
            "warning",
            f"{{{{ $labels.service }}}}: messages wait over a minute in {destination}",
            f"The 95th percentile time from publish to the start of processing in {destination} "
            "({{ $labels.messaging_system }}) is {{ $value | humanizeDuration }}: the consumers "
            "do not keep up with the producers.",
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
SVC_TASK = f'service=~"$service", {TASK}=~"$task"'
RATE = "$__rate_interval"


def _variable(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(d.PROMETHEUS)
        .query(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def _percentiles(metric: str, selector: str, by: str, legend: str) -> list[Any]:
    return [
        d._q(
            f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}",
            ref,
        )
        for q, ref in QUANTILES
    ]


def _errors(metric: str, selector: str) -> str:
    # A flat 0 per destination while nothing fails, rather than "No data".
    by = f"sum by ({DESTINATION}, {ERROR_TYPE})"
    return (
        f"{by} (rate({metric}{{{selector}, {FAILED}}}[{RATE}]))"
        f" or sum by ({DESTINATION}) (rate({metric}{{{selector}}}[{RATE}])) * 0"
    )


def dashboard() -> dash.Dashboard:
    """pyobs / Workers: Celery tasks and Kafka messages of the selected services."""
    tasks = f"rate({TASKS}{{{SVC_TASK}}}[{RATE}])"
    failures = f"rate({TASKS}{{{FAILURE}, {SVC_TASK}}}[{RATE}])"
    kafka = f"{KAFKA}, {SVC}"
    destination = "{{messaging_destination_name}}"
    either = f"{{{{{SYSTEM}}}}} {destination}"
    clients = f'{{__name__=~"{SENT}|{CONSUMED}"}}'
    return (
        d._with_datasources(
            d._base(
                WORKERS_UID,
                "pyobs / Workers",
                "The work behind the queues: Celery tasks and Kafka messages.",
            )
        )
        .with_variable(_variable("service", "Service", f"label_values({clients}, service)"))
        .with_variable(_variable("task", "Task", f"label_values({TASKS}{{{SVC}}}, {TASK})"))
        .with_row(dash.Row("Celery tasks"))
        .with_panel(
            d._stat(
                "Tasks per second", "Task runs that ended, all outcomes.", "ops", f"sum({tasks})"
            )
        )
        .with_panel(
            d._stat(
                "Failure ratio",
                "Share of task runs that ended in an exception.",
                "percentunit",
                _ratio(f"sum({failures})", f"sum({tasks})"),
            )
        )
        .with_panel(
            d._stat(
                "p95 task duration",
                "95th percentile run time of the selected tasks, in the worker.",
                "s",
                f"histogram_quantile(0.95, sum by (le) "
                f"(rate({TASK_DURATION}_bucket{{{SVC_TASK}}}[{RATE}])))",
            )
        )
        .with_panel(
            d._stat(
                "Active tasks",
                "Tasks running right now, in every pool process of every worker.",
                "short",
                f"sum({ACTIVE}{{{SVC_TASK}}})",
            )
        )
        .with_panel(
            d._ts(
                "Tasks per second by task and outcome",
                "Task runs that ended per second, by task name and outcome "
                "(success, failure, retry).",
                "ops",
                d._q(
                    f"sum by (service, {TASK}, {OUTCOME}) ({tasks})",
                    "{{service}} {{celery_task_name}} {{outcome}}",
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
                    "{{service}} {{celery_task_name}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Retries per second by task",
                "Runs that ended asking for a retry; more retries than runs is a retry storm.",
                "ops",
                d._q(
                    f"sum by (service, {TASK}) (rate({TASKS}{{{RETRY}, {SVC_TASK}}}[{RATE}]))",
                    "{{service}} {{celery_task_name}}",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Task duration percentiles",
                "p50, p95 and p99 run time of each task, in the worker.",
                "s",
                *_percentiles(
                    TASK_DURATION, SVC_TASK, f"service, {TASK}", "{{service}} {{celery_task_name}}"
                ),
            )
        )
        .with_panel(
            d.exemplar_heatmap(
                "Task duration heatmap",
                "Task run times; the dots are exemplars linking to the task's trace (the "
                "request that enqueued it, the publish and the run).",
                f"sum by (le) (increase({TASK_DURATION}_bucket{{{SVC_TASK}}}[{RATE}]))",
            )
        )
        .with_panel(
            d._ts(
                "Active tasks by task",
                "Tasks running right now, per task name.",
                "short",
                d._q(
                    f"sum by (service, {TASK}) ({ACTIVE}{{{SVC_TASK}}})",
                    "{{service}} {{celery_task_name}}",
                ),
            )
        )
        .with_row(dash.Row("Queues"))
        .with_panel(
            d._ts(
                "Queue wait percentiles",
                "p50, p95 and p99 time from publish to the start of processing, per queue "
                "or topic.",
                "s",
                *_percentiles(QUEUE_WAIT, SVC, f"{SYSTEM}, {DESTINATION}", either),
            )
        )
        .with_panel(
            d._ts(
                "Sent and consumed",
                "Messages (Celery: tasks) sent by the producers and taken by the consumers, "
                "per queue or topic: consumers behind producers fill the queue.",
                "ops",
                d._q(
                    f"sum by ({SYSTEM}, {DESTINATION}) (rate({SENT}{{{SVC}}}[{RATE}]))",
                    f"{either} sent",
                ),
                d._q(
                    f"sum by ({SYSTEM}, {DESTINATION}) (rate({CONSUMED}{{{SVC}}}[{RATE}]))",
                    f"{either} consumed",
                    "B",
                ),
            )
        )
        .with_panel(
            d._ts(
                "Send duration percentiles",
                "p50, p95 and p99 time to publish a task or produce a record (Kafka: until "
                "the broker acknowledged it).",
                "s",
                *_percentiles(OPERATION, SVC, f"{SYSTEM}, {DESTINATION}", either),
            )
        )
        .with_panel(
            d._ts(
                "Celery publish errors",
                "Tasks that could not be published, per queue and error type.",
                "ops",
                d._q(_errors(SENT, f"{CELERY}, {SVC}"), f"{destination} {{{{error_type}}}}"),
            )
        )
        .with_row(dash.Row("Kafka"))
        .with_panel(
            d._ts(
                "Messages produced and consumed",
                "Records per second, per topic.",
                "ops",
                d._q(
                    f"sum by ({DESTINATION}) (rate({SENT}{{{kafka}}}[{RATE}]))",
                    f"{destination} produced",
                ),
                d._q(
                    f"sum by ({DESTINATION}) (rate({CONSUMED}{{{kafka}}}[{RATE}]))",
                    f"{destination} consumed",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Bytes produced and consumed",
                "Record body bytes per second, per topic.",
                "Bps",
                d._q(
                    f"sum by ({DESTINATION}) "
                    f'(rate({BODY_SIZE}_sum{{{kafka}, {OPERATION_TYPE}="send"}}[{RATE}]))',
                    f"{destination} produced",
                ),
                d._q(
                    f"sum by ({DESTINATION}) "
                    f'(rate({BODY_SIZE}_sum{{{kafka}, {OPERATION_TYPE}="receive"}}[{RATE}]))',
                    f"{destination} consumed",
                    "B",
                ),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Errors",
                "Records that failed to be produced or consumed, per topic and error type.",
                "ops",
                d._q(_errors(SENT, kafka), f"{destination} produce {{{{error_type}}}}"),
                d._q(_errors(CONSUMED, kafka), f"{destination} consume {{{{error_type}}}}", "B"),
                width=8,
            )
        )
        .with_panel(
            d._ts(
                "Consumer processing duration",
                "p50, p95 and p99 time the consumers spent on one record, per topic.",
                "s",
                *_percentiles(PROCESS, kafka, DESTINATION, destination),
            )
        )
        .with_panel(
            d.exemplar_heatmap(
                "Consumer processing heatmap",
                "Processing times of consumed records; the dots are exemplars linking to the "
                "record's trace.",
                f"sum by (le) (increase({PROCESS}_bucket{{{kafka}}}[{RATE}]))",
            )
        )
    )
