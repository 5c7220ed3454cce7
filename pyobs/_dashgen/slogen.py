"""What an SLO spec becomes: Prometheus rules, promtool tests, a dashboard per service, and
(on request) Grafana-managed alert rules.

``files(spec_path)`` returns every file by path relative to the output directory;
``pyobs slo generate`` writes or checks them, ``pyobs dashboards build`` adds those of the
specs shipped in ``prometheus/slo/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pyobs._dashgen import slo, slospec
from pyobs._dashgen.slo import REQUESTS, Alert, Condition
from pyobs._dashgen.slospec import ServiceSpec, SLOSpec

RULES_DIR = "prometheus/rules"
TESTS_DIR = "prometheus/slo/tests"
DASHBOARDS_DIR = "dashboards/slo"
GRAFANA_DIR = "grafana"
#: Where the stack's specs live; `pyobs dashboards build` generates from each of them.
SHIPPED_DIR = "prometheus/slo"

RATIO = "service:pyobs_slo_errors:ratio_rate"
OBJECTIVE = "service:pyobs_slo_objective:ratio"
#: How long an alert's condition must hold, by severity (as before the specs).
FOR = {"page": "2m", "ticket": "15m"}
SEVERITY = {"page": "critical", "ticket": "warning"}


# --- PromQL -----------------------------------------------------------------------------------


def _route_regex(routes: tuple[str, ...]) -> str:
    # Route templates are matched literally: escape RE2's metacharacters, and the
    # backslash once more for PromQL's double-quoted string.
    return "|".join(re.sub(r"([.+*?()|\[\]{}^$\\])", r"\\\\\1", route) for route in routes)


def selector(spec: ServiceSpec, objective: SLOSpec, extra: str = "") -> str:
    """The label matchers of the SLI's series: the service, minus its left-out routes."""
    parts = [f'service="{spec.service}"']
    if objective.exclude_routes:
        parts.append(f'http_route!~"{_route_regex(objective.exclude_routes)}"')
    if extra:
        parts.append(extra)
    return "{" + ", ".join(parts) + "}"


def error_ratio(spec: ServiceSpec, objective: SLOSpec, window: str) -> str:
    """PromQL for the share of bad requests of ``objective`` over ``window``."""
    total = f"sum by (service) (rate({REQUESTS}_count{selector(spec, objective)}[{window}]))"
    if objective.kind == "availability":
        errors = objective.errors.replace("\\", "\\\\")  # a PromQL string holds the regex
        bad_sel = selector(spec, objective, f'http_response_status_code=~"{errors}"')
        bad = f"sum by (service) (rate({REQUESTS}_count{bad_sel}[{window}]))"
        # No bad request at all is a ratio of 0, not a missing series.
        return f"({bad} or {total} * 0) / {total}"
    good_sel = selector(spec, objective, f'le="{slo._le(objective.threshold)}"')
    good = f"sum by (service) (rate({REQUESTS}_bucket{good_sel}[{window}]))"
    return f"({total} - {good}) / {total}"


def ratio_series(spec: ServiceSpec, objective: SLOSpec, window: str) -> str:
    """The recorded bad-request ratio of ``objective`` over ``window``."""
    return f'{RATIO}{window}{{service="{spec.service}", slo="{objective.name}"}}'


def dashboard_uid(service: str) -> str:
    """The uid of a service's SLO dashboard (Grafana allows 40 characters)."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", service)
    uid = f"pyobs-slo-{clean}"
    if len(uid) <= 40 and clean == service:
        return uid
    digest = hashlib.sha1(service.encode()).hexdigest()[:8]
    return f"{uid[:31]}-{digest}"


# --- Alerts -----------------------------------------------------------------------------------


def alerts(spec: ServiceSpec) -> list[tuple[SLOSpec, str, Alert, dict[str, str]]]:
    """(SLO, "page" or "ticket", alert, annotations) for every alert the spec asks for."""
    out = []
    for objective in spec.slos:
        for kind, windows, options in (
            ("page", spec.page_windows, objective.page),
            ("ticket", spec.ticket_windows, objective.ticket),
        ):
            if options.disable:
                continue
            speed = "Fast" if kind == "page" else "Slow"
            groups = tuple(
                (
                    Condition(
                        ratio_series(spec, objective, w.long), ">", w.factor * objective.budget
                    ),
                    Condition(
                        ratio_series(spec, objective, w.short), ">", w.factor * objective.budget
                    ),
                )
                for w in windows
            )
            pairs = " or ".join(f"{w.factor:g}x over {w.long}/{w.short}" for w in windows)
            alert = Alert(
                name=f"{objective.alert_name}BudgetBurn{speed}",
                any_of=groups,
                for_=FOR[kind],
                severity=SEVERITY[kind],
                summary=f"{spec.service} burns its {objective.name} error budget {speed.lower()}",
                description=(
                    f"{spec.service} spends its {objective.name} error budget "
                    f"({slo._pct(objective.objective)} of {objective.description} over "
                    f"{spec.window}) at {pairs}; bad ratio in the long window: "
                    "{{ $value | humanizePercentage }}."
                ),
                dashboard=dashboard_uid(spec.service),
                labels={
                    **spec.labels,
                    **objective.labels,
                    **options.labels,
                    "severity": SEVERITY[kind],
                    "notify": kind,
                    "slo": objective.name,
                    "sli": objective.kind,
                },
            )
            anchor = f"pyobs{objective.kind}budgetburn{speed.lower()}"
            notes = {
                "summary": alert.summary,
                "description": alert.description,
                "runbook_url": f"{slo.RUNBOOK_URL}#{anchor}",
                "dashboard_url": f"{slo.GRAFANA_URL}/d/{alert.dashboard}",
                **objective.annotations,
                **options.annotations,
            }
            out.append((objective, kind, alert, notes))
    return out


# --- Prometheus rules ---------------------------------------------------------------------------


def group_names(spec: ServiceSpec) -> tuple[str, str]:
    """The recording group and the alerting group of one service."""
    return f"pyobs-slo-{spec.service}", f"pyobs-slo-{spec.service}-alerts"


def rule_file(
    specs: list[ServiceSpec], scale: float = 1.0, interval: str | None = None
) -> dict[str, Any]:
    """Two rule groups per service. ``scale`` shrinks every window and ``for`` (live tests)."""
    groups = []
    for spec in specs:
        recording: list[dict[str, Any]] = []
        for objective in spec.slos:
            recording.append(
                {
                    "record": OBJECTIVE,
                    "expr": f"vector({slo._num(objective.objective)})",
                    "labels": {
                        "service": spec.service,
                        "slo": objective.name,
                        "sli": objective.kind,
                        # Whether a burn-rate page watches it (PyobsHighErrorRate steps back).
                        "pages": "false" if objective.page.disable else "true",
                    },
                }
            )
            recording += [
                {
                    "record": f"{RATIO}{window}",
                    "expr": slo.scale_durations(error_ratio(spec, objective, window), scale),
                    "labels": {"slo": objective.name},
                }
                for window in spec.windows()
            ]
        rules = []
        for _objective, _kind, alert, notes in alerts(spec):
            rule: dict[str, Any] = {"alert": alert.name, "expr": alert.promql()}
            rule["for"] = slo.scaled(alert.for_, scale)
            rule["labels"] = dict(alert.labels)
            rule["annotations"] = notes
            rules.append(rule)
        record_name, alert_name = group_names(spec)
        for name, body in ((record_name, recording), (alert_name, rules)):
            group: dict[str, Any] = {"name": name}
            if interval:
                group["interval"] = interval
            group["rules"] = body
            if body:
                groups.append(group)
    return {"groups": groups}


# --- promtool unit tests ----------------------------------------------------------------------

TEST_HEADER = (
    "# promtool unit tests, one input per SLO and case, 10000 requests a minute:\n"
    "#   burning fast  bad ratio above every threshold -> the page and the ticket fire\n"
    "#   burning slow  between the ticket's and the page's thresholds -> only the ticket\n"
    "#   within budget half the lowest threshold, and every left-out route failing -> quiet\n"
)
#: Requests per minute in the generated tests: bad counts are whole numbers of these.
_PER_MINUTE = 10_000
_SAMPLES = 20
#: After the ticket's `for: 15m`, counted from the first minute with a rate.
_EVAL = "20m"


def _series(name: str, labels: dict[str, str], per_minute: int) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": f"0+{per_minute}x{_SAMPLES}"}


def _inputs(spec: ServiceSpec, objective: SLOSpec, bad: int) -> list[dict[str, str]]:
    base = {"job": "pyobs-services", "service": spec.service, "http_request_method": "GET"}
    route = "/generated/{id}"
    out = []
    if objective.kind == "availability":
        bad_code = "503" if re.fullmatch(objective.errors, "503") else "500"
        ok = {**base, "http_route": route, "http_response_status_code": "200"}
        ko = {**base, "http_route": route, "http_response_status_code": bad_code}
        out += [_series(f"{REQUESTS}_count", ok, _PER_MINUTE - bad)]
        if bad:
            out += [_series(f"{REQUESTS}_count", ko, bad)]
        for excluded in objective.exclude_routes:
            # A left-out route that fails every request must not count.
            labels = {**base, "http_route": excluded, "http_response_status_code": bad_code}
            out.append(_series(f"{REQUESTS}_count", labels, _PER_MINUTE))
        return out
    labels = {**base, "http_route": route, "http_response_status_code": "200"}
    le = slo._le(objective.threshold)
    out += [
        _series(f"{REQUESTS}_count", labels, _PER_MINUTE),
        _series(f"{REQUESTS}_bucket", {**labels, "le": le}, _PER_MINUTE - bad),
    ]
    for excluded in objective.exclude_routes:
        slow = {**base, "http_route": excluded, "http_response_status_code": "200"}
        out += [
            _series(f"{REQUESTS}_count", slow, _PER_MINUTE),
            _series(f"{REQUESTS}_bucket", {**slow, "le": le}, 0),
        ]
    return out


def _humanize_percentage(ratio: float) -> str:
    # Prometheus's humanizePercentage: Go's %.4g of the percentage.
    return f"{ratio * 100:.4g}%"


def _expected(
    spec: ServiceSpec, alert: Alert, notes: dict[str, str], ratio: float
) -> dict[str, Any]:
    text = {
        key: value.replace("{{ $value | humanizePercentage }}", _humanize_percentage(ratio))
        for key, value in notes.items()
    }
    return {"exp_labels": {**alert.labels, "service": spec.service}, "exp_annotations": text}


def _scenarios(spec: ServiceSpec, objective: SLOSpec) -> list[tuple[str, int]]:
    """(what, bad requests per minute) for: burning fast, burning slowly, within budget."""
    budget = objective.budget
    page = [w.factor * budget for w in spec.page_windows]
    ticket = [w.factor * budget for w in spec.ticket_windows]
    top = max(page)
    fast = min(2 * top, (top + 1) / 2)
    out = [("fast", fast)]
    if max(ticket) < min(page):
        out.append(("slow", (max(ticket) + min(page)) / 2))
    out.append(("within", min(ticket) / 2))
    return [(what, round(ratio * _PER_MINUTE)) for what, ratio in out]


def test_file(specs: list[ServiceSpec], rules_path: str) -> dict[str, Any]:
    """A promtool unit test per alert: it fires when its budget burns, stays quiet within it."""
    order = [name for spec in specs for name in group_names(spec)]
    tests = []
    for spec in specs:
        by_slo: dict[str, list[tuple[str, Alert, dict[str, str]]]] = {}
        for objective, kind, alert, notes in alerts(spec):
            by_slo.setdefault(objective.name, []).append((kind, alert, notes))
        for objective in spec.slos:
            mine = by_slo.get(objective.name, [])
            for _what, bad in _scenarios(spec, objective):
                ratio = bad / _PER_MINUTE
                cases = []
                for _kind, alert, notes in mine:
                    # The ratio is the same in every window: the alert fires when it is
                    # above the lowest threshold of its window pairs.
                    fires = ratio > min(c.threshold for group in alert.any_of for c in group)
                    case: dict[str, Any] = {"eval_time": _EVAL, "alertname": alert.name}
                    if fires:
                        case["exp_alerts"] = [_expected(spec, alert, notes, ratio)]
                    else:
                        case["exp_alerts"] = []
                    cases.append(case)
                if not cases:
                    continue
                tests.append(
                    {
                        "interval": "1m",
                        "input_series": _inputs(spec, objective, bad),
                        "alert_rule_test": cases,
                    }
                )
    return {
        "rule_files": [rules_path],
        "evaluation_interval": "1m",
        # Recording rules before the alerts that read them (promtool's order is not fixed).
        "group_eval_order": order,
        "tests": tests,
    }


# --- Dashboards -----------------------------------------------------------------------------


def dashboard(spec: ServiceSpec) -> Any:
    """The SLO dashboard of one service: budget left, SLI and burn rates of each SLO."""
    from grafana_foundation_sdk.builders import dashboard as dash

    from pyobs._dashgen import dashboards as d

    board = d._with_datasources(
        d._base(
            dashboard_uid(spec.service),
            f"pyobs / SLO / {spec.service}",
            f"Error budgets of {spec.service} over a {spec.window} window (from its SLO spec), "
            "and the burn rates its alerts watch.",
        )
    )
    # A day of burn rates; the budget and SLI panels are instant queries over the window.
    board = board.tags(["pyobs", "slo"]).time("now-24h", "now")
    board = board.with_row(dash.Row(f"{spec.service}: SLO window {spec.window}")).with_panel(
        d._stat(
            "Prometheus history",
            f"How far back Prometheus holds data. Every budget panel covers the last "
            f"{spec.window}, or this much while it is shorter (keep Prometheus's retention at "
            f"least {spec.window}: docs/slo.md). Needs Prometheus to scrape itself, as the "
            "stack's does.",
            "dtdurations",
            "min(time() - prometheus_tsdb_lowest_timestamp_seconds)",
            width=24,
        )
    )
    for objective in spec.slos:
        period = error_ratio(spec, objective, spec.window)
        budget = slo._num(objective.budget)
        first = spec.page_windows[0]
        board = (
            board.with_row(
                dash.Row(
                    f"{objective.title}: {slo._pct(objective.objective)} of "
                    f"{objective.description} over {spec.window}"
                )
            )
            .with_panel(
                d._stat(
                    f"{objective.title}: error budget left ({spec.window})",
                    f"Share of the {spec.window} error budget ({slo._pct(objective.budget)} of "
                    "requests) not yet spent; negative when overspent.",
                    "percentunit",
                    f"1 - ({period}) / {budget}",
                    width=8,
                )
            )
            .with_panel(
                d._stat(
                    f"{objective.title}: SLI ({spec.window})",
                    f"Share of {objective.description} over the last {spec.window} "
                    f"(objective {slo._pct(objective.objective)}).",
                    "percentunit",
                    f"1 - ({period})",
                    width=8,
                )
            )
            .with_panel(
                d._stat(
                    f"{objective.title}: burn rate ({first.long})",
                    f"1 spends the budget in exactly {spec.window}; the page fires above "
                    f"{first.factor:g} (with the {first.short} window).",
                    "x",
                    f"{ratio_series(spec, objective, first.long)} / {budget}",
                    width=8,
                )
            )
            .with_panel(
                d._ts(
                    f"{objective.title}: burn rate by window",
                    "Bad ratio / budget over each window the alerts read.",
                    "x",
                    *(
                        d._q(
                            f"{ratio_series(spec, objective, window)} / {budget}",
                            window,
                            chr(ord("A") + i),
                        )
                        for i, window in enumerate(spec.windows())
                    ),
                    width=24,
                )
            )
        )
    return board


# --- Grafana-managed rules (optional) ---------------------------------------------------------


def grafana_rules(specs: list[ServiceSpec]) -> dict[str, Any]:
    """The same alerts as active Grafana-managed rules on the recorded series (optional)."""
    from pyobs._dashgen import provisioning

    groups = []
    for spec in specs:
        rules: list[dict[str, Any]] = []
        for _objective, _kind, alert, notes in alerts(spec):
            data: list[dict[str, Any]] = []
            clauses = []
            index = 0
            for group in alert.any_of:
                parts = []
                for condition in group:
                    ref = chr(ord("A") + index)
                    index += 1
                    data.append(
                        {
                            "refId": ref,
                            "datasourceUid": slo.PROMETHEUS_UID,
                            "relativeTimeRange": {"from": 600, "to": 0},
                            "model": {"expr": condition.query, "instant": True, "refId": ref},
                        }
                    )
                    parts.append(f"${ref} {condition.op} {slo._num(condition.threshold)}")
                clauses.append("(" + " && ".join(parts) + ")")
            data.append(
                {
                    "refId": "Z",
                    "datasourceUid": "__expr__",
                    "model": {"type": "math", "expression": " || ".join(clauses), "refId": "Z"},
                }
            )
            uid = hashlib.sha1(f"{spec.service}/{alert.name}".encode()).hexdigest()[:12]
            rules.append(
                {
                    "uid": f"pyobs-slo-{uid}",
                    "title": f"{alert.name} {spec.service}",
                    "condition": "Z",
                    "data": data,
                    "noDataState": "OK",
                    "execErrState": "Error",
                    "for": alert.for_,
                    "labels": {**alert.labels, "service": spec.service},
                    "annotations": {
                        key: text.replace("$value", "$values.A.Value")
                        for key, text in notes.items()
                    },
                }
            )
        if rules:
            groups.append(
                {
                    "orgId": 1,
                    "name": f"pyobs-slo-{spec.service}",
                    "folder": provisioning.FOLDER_TITLE,
                    "interval": "1m",
                    "rules": rules,
                }
            )
    return {"apiVersion": 1, "groups": groups}


# --- Files ------------------------------------------------------------------------------------


def files(spec_path: Path, grafana: bool = False) -> dict[str, str]:
    """Every file the spec at ``spec_path`` generates, by path relative to the output root."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    from pyobs import _dashgen

    specs = slospec.load(spec_path)
    header = (
        f"# Generated by `pyobs slo generate` from {spec_path.name}: edit the spec, not this "
        "file.\n"
    )

    def text(data: Any) -> str:
        return header + _dashgen.to_yaml(data).split("\n", 1)[1]

    out = {}
    # One rule file and one test file per service: promtool evaluates every group of the
    # files a test loads, so per-service files keep the tests fast.
    for spec in specs:
        name = file_name(spec.service)
        rules = f"pyobs-slo-{name}.yml"
        out[f"{RULES_DIR}/{rules}"] = text(rule_file([spec]))
        tests = text(test_file([spec], f"../../rules/{rules}"))
        out[f"{TESTS_DIR}/{name}_test.yml"] = header + TEST_HEADER + tests.split("\n", 1)[1]
        board = json.loads(json.dumps(dashboard(spec).build(), cls=JSONEncoder))
        out[f"{DASHBOARDS_DIR}/{dashboard_uid(spec.service)}.json"] = _dashgen.to_json(board)
    if grafana:
        stem = file_name(spec_path.stem)
        body = _dashgen.to_provisioning_yaml(grafana_rules(specs)).split("\n", 1)[1]
        out[f"{GRAFANA_DIR}/pyobs-slo-{stem}.yml"] = header + body
    return out


def file_name(service: str) -> str:
    """``service`` as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", service)


def shipped(root: Path) -> dict[str, str]:
    """The generated files of every spec in ``root/prometheus/slo/`` (the stack's own)."""
    out: dict[str, str] = {}
    for path in sorted((root / SHIPPED_DIR).glob("*.yaml")):
        out.update(files(path))
    return out
