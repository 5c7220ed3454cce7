"""Alert definitions for both engines, and the defaults of the per-service SLO specs.

The SLOs themselves are specs, one per service (``prometheus/slo/*.yaml``, read by
:mod:`pyobs._dashgen.slospec`); the constants below are what a spec gets for a field it
leaves out. Change an alert below, run ``pyobs dashboards build``, commit the regenerated files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# --- The defaults of an SLO spec (docs/slo.md) ----------------------------------------------

#: Share of requests that must not fail with a 5xx, over ``SLO_PERIOD``.
AVAILABILITY_OBJECTIVE = 0.999
#: Share of requests that must finish within ``LATENCY_THRESHOLD_SECONDS``, over ``SLO_PERIOD``.
LATENCY_OBJECTIVE = 0.99
#: Must be a bucket boundary of ``http_server_request_duration_seconds`` (it is: 0.5 s).
LATENCY_THRESHOLD_SECONDS = 0.5
#: The SLO window (error-budget period). Prometheus must keep at least this much history:
#: the stack's retention (PROMETHEUS_RETENTION) is set to match, and a test holds them together.
SLO_PERIOD = "30d"

# --- Where alerts point people ------------------------------------------------------------------

#: Grafana as a browser reaches it (the compose stack publishes it on this port).
GRAFANA_URL = "http://localhost:3000"
#: Runbooks: one section per alert in the "Dashboards and alerts" documentation.
RUNBOOK_URL = "https://github.com/pyobs/pyobs/blob/main/docs/dashboards.md"

# --- Shared names (docs/architecture.md) --------------------------------------------------------

PROMETHEUS_UID = "prometheus"
ELASTICSEARCH_UID = "elasticsearch"
ALERTMANAGER_UID = "alertmanager"
JAEGER_UID = "jaeger"

OVERVIEW_UID = "pyobs-overview"
RUNTIME_UID = "pyobs-runtime"

REQUESTS = "http_server_request_duration_seconds"
SERVER_ERROR = 'http_response_status_code=~"5.."'


@dataclass(frozen=True)
class Condition:
    """``query op threshold``: the query alone is what Grafana graphs and evaluates."""

    query: str
    op: str
    threshold: float

    def promql(self) -> str:
        """The condition as a PromQL filter."""
        return f"{self.query} {self.op} {_num(self.threshold)}"


@dataclass(frozen=True)
class Alert:
    """One alert for both engines: ``any_of`` groups are OR-ed, conditions in a group AND-ed."""

    name: str
    any_of: tuple[tuple[Condition, ...], ...]
    for_: str
    severity: str
    summary: str
    description: str
    dashboard: str
    labels: dict[str, str] = field(default_factory=dict)
    grafana: bool = True

    def promql(self) -> str:
        """The whole alert condition as one PromQL expression."""
        groups = ["\nand\n".join(f"({c.promql()})" for c in group) for group in self.any_of]
        if len(groups) == 1:
            return groups[0]
        return "\nor\n".join(f"(\n{g}\n)" for g in groups)

    def conditions(self) -> list[Condition]:
        """Every condition, in order (Grafana gives each one a query refId)."""
        return [c for group in self.any_of for c in group]

    def annotations(self) -> dict[str, str]:
        """summary, description, runbook_url and dashboard_url (Prometheus template syntax)."""
        service = "{{ $labels.service }}"
        return {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{RUNBOOK_URL}#{self.name.lower()}",
            "dashboard_url": f"{GRAFANA_URL}/d/{self.dashboard}?var-service={service}",
        }


def _alerts() -> tuple[Alert, ...]:
    req = f"{REQUESTS}_count"
    total_5m = f"sum by (service) (rate({req}[5m]))"
    # A service with a paging availability SLO pages through its burn-rate alert; this one is
    # the fallback for the others, so that one outage never pages twice.
    with_slo = 'service:pyobs_slo_objective:ratio{sli="availability", pages="true"}'
    return (
        Alert(
            name="PyobsHighErrorRate",
            any_of=(
                (
                    Condition(
                        f"((sum by (service) (rate({req}{{{SERVER_ERROR}}}[5m])) or {total_5m} * 0)"
                        f" / {total_5m} unless on (service) {with_slo})",
                        ">",
                        0.05,
                    ),
                ),
            ),
            for_="2m",
            severity="critical",
            summary="{{ $labels.service }} answers more than 5% of requests with a 5xx",
            description=(
                "{{ $value | humanizePercentage }} of the requests to {{ $labels.service }} "
                "failed with a 5xx over the last 5 minutes (the service has no availability "
                "SLO; with one, its burn-rate alert pages instead)."
            ),
            dashboard=OVERVIEW_UID,
            labels={"notify": "page"},
        ),
        Alert(
            name="PyobsInstanceDown",
            # The services only: each stack component has its own alert (pyobs-stack.yml),
            # so a stopped Jaeger or exporter pages once.
            any_of=((Condition('up{job="pyobs-services"}', "<", 1),),),
            for_="1m",
            severity="critical",
            summary="{{ $labels.instance }} ({{ $labels.service }}) cannot be scraped",
            description=(
                "Prometheus failed to scrape {{ $labels.instance }} of job {{ $labels.job }} "
                "for more than a minute: the process is down or /metrics is unreachable."
            ),
            dashboard=OVERVIEW_UID,
            labels={"notify": "page"},
        ),
        Alert(
            name="PyobsNoTraffic",
            any_of=((Condition(f"sum by (service) (rate({req}[10m]))", "<", 0.001),),),
            for_="10m",
            severity="warning",
            summary="{{ $labels.service }} receives no requests",
            description=(
                "{{ $labels.service }} served fewer than one request per 1000 s over the last "
                "10 minutes: check the load balancer, DNS and upstream callers."
            ),
            dashboard=OVERVIEW_UID,
            labels={"notify": "ticket"},
        ),
        Alert(
            name="PyobsHighExceptionRate",
            any_of=(
                (
                    Condition(
                        "sum by (service) (rate(pyobs_http_server_exceptions_total[5m]))"
                        f" / {total_5m}",
                        ">",
                        0.01,
                    ),
                ),
            ),
            for_="5m",
            severity="warning",
            summary="{{ $labels.service }} raises unhandled exceptions in over 1% of requests",
            description=(
                "{{ $value | humanizePercentage }} of the requests to {{ $labels.service }} "
                "ended in an exception that escaped the application; the logs carry "
                "error.type and error.stack_trace."
            ),
            dashboard=OVERVIEW_UID,
            labels={"notify": "ticket"},
        ),
        Alert(
            name="PyobsEventLoopLag",
            any_of=(
                (
                    Condition(
                        "histogram_quantile(0.99, sum by (service, le) "
                        "(rate(pyobs_event_loop_lag_seconds_bucket[5m])))",
                        ">",
                        0.1,
                    ),
                ),
            ),
            for_="10m",
            severity="warning",
            summary="{{ $labels.service }} blocks its event loop",
            description=(
                "The 99th percentile event-loop lag of {{ $labels.service }} is "
                "{{ $value | humanizeDuration }}: blocking calls run on the loop thread."
            ),
            dashboard=RUNTIME_UID,
            labels={"notify": "ticket"},
        ),
        Alert(
            name="PyobsLogShipperDropping",
            any_of=(
                (
                    Condition(
                        "sum by (service) "
                        '(rate(pyobs_log_shipper_events_total{outcome="dropped"}[5m]))',
                        ">",
                        0,
                    ),
                ),
            ),
            for_="5m",
            severity="warning",
            summary="{{ $labels.service }} drops log events",
            description=(
                "{{ $labels.service }} drops {{ $value | humanize }} log events per second: "
                "Logstash is unreachable and the disk spool is full."
            ),
            dashboard=RUNTIME_UID,
            labels={"notify": "ticket"},
        ),
        Alert(
            name="PyobsLogsRejected",
            any_of=(
                (
                    Condition(
                        "sum by (service) "
                        '(increase(pyobs_log_shipper_events_total{outcome="rejected"}[15m]))',
                        ">",
                        0,
                    ),
                ),
            ),
            for_="1m",
            severity="warning",
            summary="Elasticsearch rejects log events of {{ $labels.service }}",
            description=(
                "{{ $value | humanize }} log events of {{ $labels.service }} were refused by "
                "Elasticsearch in the last 15 minutes and kept in the failure store: "
                'Kibana\'s "pyobs: rejected log events" shows them and why.'
            ),
            dashboard=RUNTIME_UID,
            labels={"notify": "ticket"},
        ),
        Alert(
            name="PyobsWatchdog",
            any_of=((Condition("vector(1)", ">", 0),),),
            for_="0s",
            severity="none",
            summary="The alerting pipeline works",
            description=(
                "Always firing. If this alert stops arriving, Prometheus or Alertmanager "
                "is broken: wire it to a dead man's switch."
            ),
            dashboard=OVERVIEW_UID,
            labels={"notify": "watchdog"},
            grafana=False,
        ),
    )


# --- Helpers -------------------------------------------------------------------------------------

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"(\d+)([dhms])")


def seconds(duration: str) -> int:
    """Seconds in a Prometheus duration such as ``"1h30m"``."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a duration: {duration!r}")
    units = dict(_UNITS)
    return sum(int(n) * units[u] for n, u in parts)


def duration(total: int) -> str:
    """The shortest Prometheus duration string for ``total`` seconds (``"0s"`` for 0)."""
    if total <= 0:
        return "0s"
    out = ""
    for unit, size in _UNITS:
        if total >= size:
            out += f"{total // size}{unit}"
            total %= size
    return out


def scale_durations(text: str, scale: float) -> str:
    """Every ``[window]`` and rate-name suffix in ``text`` multiplied by ``scale`` (tests only)."""
    if scale == 1.0:
        return text
    return re.sub(r"\[(\w+)\]", lambda m: f"[{scaled(m.group(1), scale)}]", text)


def scaled(value: str, scale: float) -> str:
    """``value`` (a duration) multiplied by ``scale``, at least one second unless it was zero."""
    total = seconds(value)
    return duration(0 if total == 0 else max(1, round(total * scale)))


def _le(value: float) -> str:
    # prometheus_client writes bucket bounds like Go's strconv: 0.5 -> "0.5", 1 -> "1.0".
    return repr(float(value))


def _num(value: float) -> str:
    return f"{value:.10g}"


def _pct(value: float) -> str:
    return f"{value * 100:.10g}%"


ALERTS = _alerts()
