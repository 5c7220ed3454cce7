"""Prometheus recording and alerting rules, rendered from the SLO and alert definitions."""

from __future__ import annotations

from typing import Any

from pyobs._dashgen import slo
from pyobs._dashgen.slo import REQUESTS, SERVER_ERROR, scale_durations, scaled

QUANTILES = (0.5, 0.9, 0.99)
#: Aggregation levels of the RED recording rules: name prefix -> labels kept.
LEVELS = (("service", "service"), ("service_route", "service, http_route"))


def red_rules() -> list[dict[str, str]]:
    """Request rate, error ratio and latency quantiles per service and per service + route."""
    rules: list[dict[str, str]] = []
    for level, by in LEVELS:
        total = f"sum by ({by}) (rate({REQUESTS}_count[5m]))"
        errors = f"sum by ({by}) (rate({REQUESTS}_count{{{SERVER_ERROR}}}[5m]))"
        buckets = f"{level}:{REQUESTS}_bucket:rate5m"
        rules += [
            {"record": f"{level}:http_server_requests:rate5m", "expr": total},
            {
                "record": f"{level}:http_server_requests_errors:ratio_rate5m",
                # No 5xx at all is a ratio of 0, not a missing series.
                "expr": f"({errors} or {total} * 0) / {total}",
            },
            {
                "record": buckets,
                "expr": f"sum by ({by}, le) (rate({REQUESTS}_bucket[5m]))",
            },
        ]
        rules += [
            {
                "record": f"{level}:{REQUESTS}:p{round(q * 100)}_rate5m",
                "expr": f"histogram_quantile({q:g}, {buckets})",
            }
            for q in QUANTILES
        ]
    return rules


def alert_rules() -> list[dict[str, Any]]:
    """Every alert of :data:`pyobs._dashgen.slo.ALERTS` as a Prometheus alerting rule."""
    out: list[dict[str, Any]] = []
    for alert in slo.ALERTS:
        rule: dict[str, Any] = {"alert": alert.name, "expr": alert.promql()}
        if alert.for_ != "0s":
            rule["for"] = alert.for_
        rule["labels"] = {"severity": alert.severity, **alert.labels}
        rule["annotations"] = alert.annotations()
        out.append(rule)
    return out


def rule_files(scale: float = 1.0, interval: str | None = None) -> dict[str, dict[str, Any]]:
    """The rule files by name. ``scale`` shrinks every window and ``for`` (live tests only)."""

    def group(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if interval:
            body["interval"] = interval
        body["rules"] = [_scale_rule(rule, scale) for rule in rules]
        return body

    return {
        # The SLO rules come from the per-service specs (slogen.py, prometheus/slo/).
        "pyobs-recording.yml": {"groups": [group("pyobs-red", red_rules())]},
        "pyobs-alerts.yml": {"groups": [group("pyobs-alerts", alert_rules())]},
    }


def _scale_rule(rule: dict[str, Any], scale: float) -> dict[str, Any]:
    if scale == 1.0:
        return rule
    out = dict(rule, expr=scale_durations(rule["expr"], scale))
    if "for" in out:
        out["for"] = scaled(out["for"], scale)
    return out
