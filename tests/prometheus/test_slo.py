"""SLO specs: `pyobs slo generate`, its errors, its promtool tests, and the window it promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import import_or_require
from tests.prometheus.conftest import REPO, run_tool, tool

SHOP = r"""version: pyobs/v1
service: shop
labels: {team: checkout}
exclude_routes: ["/admin/export/{job_id}"]
slos:
  - name: availability
    objective: 99.5
    sli:
      availability: {errors: '5\d\d|429'}
  - name: checkout-latency
    objective: 95
    description: checkouts answered within 250 ms
    exclude_routes: [/slow]
    sli:
      latency: {threshold: 0.25}
    alerting:
      name: ShopCheckoutLatency
      page_alert:
        labels: {escalation: fast}
      ticket_alert:
        annotations: {summary: checkout is slowly getting slower}
---
service: quiet-service
"""


def _generate(tmp_path: Path, spec: str, *extra: str) -> tuple[int, Path]:
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    path = tmp_path / "shop.yaml"
    path.write_text(spec)
    out = tmp_path / "out"
    return main(["slo", "generate", str(path), "--out", str(out), *extra]), out


def test_generate_writes_rules_tests_and_dashboards(tmp_path: Path) -> None:
    """One spec file: a rule file, a promtool test and a dashboard per service; no Grafana rules."""
    code, out = _generate(tmp_path, SHOP)
    assert code == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "dashboards/slo/pyobs-slo-quiet-service.json",
        "dashboards/slo/pyobs-slo-shop.json",
        "prometheus/rules/pyobs-slo-quiet-service.yml",
        "prometheus/rules/pyobs-slo-shop.yml",
        "prometheus/slo/tests/quiet-service_test.yml",
        "prometheus/slo/tests/shop_test.yml",
    ]
    rules = yaml.safe_load((out / "prometheus/rules/pyobs-slo-shop.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == {
        "PyobsAvailabilityBudgetBurnFast",
        "PyobsAvailabilityBudgetBurnSlow",
        "ShopCheckoutLatencyBudgetBurnFast",
        "ShopCheckoutLatencyBudgetBurnSlow",
    }
    page = alerts["ShopCheckoutLatencyBudgetBurnFast"]
    assert page["labels"] == {
        "team": "checkout",
        "escalation": "fast",
        "severity": "critical",
        "notify": "page",
        "slo": "checkout-latency",
        "sli": "latency",
    }
    # 5% budget: 14.4 x 0.05 and 6 x 0.05.
    assert "> 0.72)" in page["expr"] and "> 0.3)" in page["expr"]
    ticket = alerts["ShopCheckoutLatencyBudgetBurnSlow"]
    assert ticket["annotations"]["summary"] == "checkout is slowly getting slower"
    recorded = {
        r["labels"]["slo"]: r["expr"]
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("record") == "service:pyobs_slo_errors:ratio_rate5m"
    }
    assert r'http_response_status_code=~"5\\d\\d|429"' in recorded["availability"]
    assert r'http_route!~"/admin/export/\\{job_id\\}"' in recorded["availability"]
    assert r'http_route!~"/admin/export/\\{job_id\\}|/slow"' in recorded["checkout-latency"]
    board = (out / "dashboards/slo/pyobs-slo-shop.json").read_text()
    assert "error budget left (30d)" in board
    assert "Prometheus history" in board


def test_generated_promtool_tests_pass_and_can_fail(tmp_path: Path) -> None:
    """The generated tests pass on the generated rules and fail once a threshold is broken."""
    tool("promtool")
    code, out = _generate(tmp_path, SHOP)
    assert code == 0
    tests = sorted(str(p) for p in (out / "prometheus/slo/tests").glob("*_test.yml"))
    assert "SUCCESS" in run_tool(["promtool", "test", "rules", *tests], cwd=out)
    shop_test = yaml.safe_load((out / "prometheus/slo/tests/shop_test.yml").read_text())
    fired = {
        alert["exp_labels"]["slo"] + ":" + case["alertname"]
        for test in shop_test["tests"]
        for case in test["alert_rule_test"]
        for alert in case["exp_alerts"]
    }
    assert len(fired) == 4  # every alert has a firing case

    # The page's thresholds raised past every input: its firing cases must now fail.
    rules = out / "prometheus/rules/pyobs-slo-shop.yml"
    rules.write_text(re.sub(r"> 0\.072\)|> 0\.03\)", "> 0.99)", rules.read_text()))
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(out / "prometheus/slo/tests/shop_test.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "PyobsAvailabilityBudgetBurnFast" in result.stdout + result.stderr


def test_check_fails_on_stale_and_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check` writes nothing, and exits 1 naming each stale or missing file."""
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    code, out = _generate(tmp_path, SHOP, "--check")
    assert code == 1
    assert not out.exists()
    assert "prometheus/rules/pyobs-slo-shop.yml" in capsys.readouterr().err
    assert _generate(tmp_path, SHOP)[0] == 0
    assert _generate(tmp_path, SHOP, "--check")[0] == 0
    rules = out / "prometheus/rules/pyobs-slo-shop.yml"
    rules.write_text(rules.read_text().replace("99.5%", "99.9%"))
    capsys.readouterr()
    assert main(["slo", "generate", str(tmp_path / "shop.yaml"), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "prometheus/rules/pyobs-slo-shop.yml" in err
    assert "pyobs-slo-quiet-service.yml" not in err


def test_shipped_spec_is_generated_by_dashboards_build() -> None:
    """The stack's spec is what `pyobs slo generate --check` and `dashboards build` agree on."""
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    spec = REPO / "prometheus" / "slo" / "examples.yaml"
    assert main(["slo", "generate", str(spec), "--out", str(REPO), "--check"]) == 0


def test_grafana_rules_only_on_request(tmp_path: Path) -> None:
    """`--grafana-rules` adds active Grafana rules on the recorded series, not provisioned."""
    code, out = _generate(tmp_path, SHOP, "--grafana-rules")
    assert code == 0
    data = yaml.safe_load((out / "grafana/pyobs-slo-shop.yml").read_text())
    assert not (out / "dashboards/provisioning").exists()
    rules = [r for g in data["groups"] for r in g["rules"]]
    assert len(rules) == 4 + 4  # shop and quiet-service, page and ticket of two SLOs each
    for rule in rules:
        assert "isPaused" not in rule
        queries = [d["model"]["expr"] for d in rule["data"] if d["refId"] != "Z"]
        assert all(q.startswith("service:pyobs_slo_errors:ratio_rate") for q in queries)
        math = next(d for d in rule["data"] if d["refId"] == "Z")["model"]["expression"]
        assert math.count("&&") == 2 and math.count("||") == 1
    assert len({r["uid"] for r in rules}) == len(rules)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("slos: []\n", "service: missing"),
        ("service: ''\n", "service: must not be empty"),
        ("service: 'sh\"op'\n", "service: must not contain quotes"),
        ("service: shop\nwindow: a month\n", "window: not a duration: 'a month'"),
        ("service: shop\nsurvice: x\n", "survice: unknown field; expected one of: "),
        ("service: shop\nslos: [{name: a, objective: 99.9}]\n", "slos[0].sli: missing"),
        (
            "service: shop\nslos: [{name: a, objective: 100, sli: {availability: {}}}]\n",
            "slos[0].objective: a percentage between 0 and 100",
        ),
        (
            "service: shop\nslos: [{name: a, objective: '99.9', sli: {availability: {}}}]\n",
            "slos[0].objective: expected a number, got the string '99.9'",
        ),
        (
            "service: shop\nslos: [{name: a, objective: 90, sli: {availability: {}}}]\n",
            "slos[0].objective: 90% leaves a 10% error budget; the page at 14.4x would need "
            "144% bad requests",
        ),
        (
            "service: shop\nslos: [{name: a, objective: 99, sli: {latency: {threshold: 0.3}}}]\n",
            "slos[0].sli.latency.threshold: 0.3 s is not a bucket bound",
        ),
        (
            "service: shop\nslos: [{name: a, objective: 99, sli: {latency: {treshold: 1}}}]\n",
            "slos[0].sli.latency.treshold: unknown field; expected one of: custom_buckets, "
            "threshold",
        ),
        (
            "service: shop\nslos: [{name: a, objective: 99, sli: {availability: {}, "
            "latency: {threshold: 1}}}]\n",
            "slos[0].sli: expected exactly one of: availability, latency",
        ),
        (
            "service: shop\nslos:\n- {name: a, objective: 99, sli: {availability: {}}}\n"
            "- {name: a, objective: 99, sli: {availability: {}}}\n",
            "slos[1].name: 'a' is listed twice",
        ),
        ("service: shop\nexclude_routes: [admin]\n", "exclude_routes[0]: expected a route"),
        ("service: shop\nlabels: {severity: low}\n", "labels.severity: set by pyobs"),
        (
            "service: shop\nwindow: 7d\nwindows: {ticket: [{long: 1d, short: 2h, "
            "budget_percent: 10}]}\n",
            "windows.ticket[0].budget_percent: a burn rate of 0.7x (10% of a 7d budget within "
            "1d) is below 1x",
        ),
        (
            "service: shop\nwindows: {page: [{long: 1h, short: 5m}]}\n",
            "windows.page[0]: give exactly one of budget_percent and factor",
        ),
        (
            "service: shop\nwindow: 1d\n",
            "windows.ticket[1].long: 3d is longer than the SLO window (1d)",
        ),
        (
            "service: shop\nwindows: {page: [{long: 5m, short: 1h, budget_percent: 2}]}\n",
            "windows.page[0].short: 1h must be shorter than long (5m)",
        ),
        ("service: shop\n---\nservice: shop\n", "document 2: service: 'shop' has a spec already"),
        ("service: [shop\n", "not valid YAML"),
        ("version: sloth/v1\nservice: shop\n", "version: unsupported version 'sloth/v1'"),
    ],
)
def test_bad_specs_name_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, message: str
) -> None:
    """A bad spec exits 1 with one line naming the file, the service and the field; no files."""
    code, out = _generate(tmp_path, spec)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("pyobs slo generate: shop.yaml")
    assert message in err
    assert not out.exists()


def test_a_short_window_with_its_own_windows(tmp_path: Path) -> None:
    """A 7d window with windows given as budget shares; the alerts and dashboard name it."""
    spec = """\
service: shop
window: 7d
windows:
  page: [{long: 1h, short: 5m, budget_percent: 5}]
  ticket: [{long: 1d, short: 2h, budget_percent: 20}]
"""
    code, out = _generate(tmp_path, spec)
    assert code == 0
    rules = yaml.safe_load((out / "prometheus/rules/pyobs-slo-shop.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    # 5% of 168h within 1h is 8.4x; 20% of 7d within 1d is 1.4x (budget 0.1%).
    assert "> 0.0084)" in alerts["PyobsAvailabilityBudgetBurnFast"]["expr"]
    assert "> 0.0014)" in alerts["PyobsAvailabilityBudgetBurnSlow"]["expr"]
    assert "over 7d" in alerts["PyobsAvailabilityBudgetBurnFast"]["annotations"]["description"]
    board = (out / "dashboards/slo/pyobs-slo-shop.json").read_text()
    assert "error budget left (7d)" in board and "(30d)" not in board


def test_default_windows_keep_the_workbook_burn_rates() -> None:
    """Any SLO window gets the workbook's burn rates; the share of budget they spend follows."""
    from pyobs._dashgen import slospec

    (week,) = slospec.parse("service: shop\nwindow: 7d\n")
    assert [w.factor for w in (*week.page_windows, *week.ticket_windows)] == [14.4, 6, 3, 1]
    assert round(week.page_windows[0].budget_percent, 2) == 8.57  # 14.4 x 1h / 168h


def _retention(text: str) -> str:
    match = re.search(r"PROMETHEUS_RETENTION(?::-|=)(\w+)", text)
    assert match, "no PROMETHEUS_RETENTION"
    return match[1]


def test_prometheus_keeps_every_slo_window() -> None:
    """Prometheus's retention (compose default, .env.example) covers the specs' longest window."""
    from pyobs._dashgen import slo, slospec

    longest = max(
        slo.seconds(spec.window)
        for path in (REPO / "prometheus" / "slo").glob("*.yaml")
        for spec in slospec.load(path)
    )
    assert longest == slo.seconds("30d")
    compose = (REPO / "docker-compose.yml").read_text()
    assert "--storage.tsdb.retention.time=${PROMETHEUS_RETENTION:-" in compose
    for text in (compose, (REPO / ".env.example").read_text()):
        assert slo.seconds(_retention(text)) >= longest


def test_no_orphaned_slo_files() -> None:
    """Every committed SLO rule, test and dashboard comes from a spec in prometheus/slo/."""
    import_or_require("grafana_foundation_sdk")
    from pyobs._dashgen import slogen

    generated = set(slogen.shipped(REPO))
    committed = {
        str(path.relative_to(REPO))
        for pattern in (
            "prometheus/rules/pyobs-slo-*.yml",
            "prometheus/slo/tests/*_test.yml",
            "dashboards/slo/*.json",
        )
        for path in REPO.glob(pattern)
    }
    assert committed == generated


def test_two_specs_for_one_service_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two spec files for the same service would overwrite each other: exit 1, write nothing."""
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    (tmp_path / "a.yaml").write_text("service: shop\n")
    (tmp_path / "b.yaml").write_text("service: shop\nwindow: 28d\n")  # valid on its own
    out = tmp_path / "out"
    args = ["slo", "generate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert main([*args, "--out", str(out)]) == 1
    assert "b.yaml: service 'shop' has a spec in " in capsys.readouterr().err
    assert not out.exists()


def test_dashboard_uids_fit_grafana() -> None:
    """A dashboard uid is at most 40 characters and distinct even for long or odd names."""
    from pyobs._dashgen import slogen

    assert slogen.dashboard_uid("shop") == "pyobs-slo-shop"
    long_a = slogen.dashboard_uid("payments-gateway-europe-west-primary-a")
    long_b = slogen.dashboard_uid("payments-gateway-europe-west-primary-b")
    odd = slogen.dashboard_uid("shop/eu")
    assert max(len(long_a), len(long_b), len(odd)) <= 40
    assert len({long_a, long_b, odd, slogen.dashboard_uid("shop-eu")}) == 4
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", uid) for uid in (long_a, odd))


def test_error_rate_pages_only_where_no_slo_page_does(tmp_path: Path) -> None:
    """PyobsHighErrorRate stays quiet for a service whose availability SLO pages, not otherwise."""
    tool("promtool")
    spec = """\
service: paged
---
service: unpaged
slos:
  - {name: availability, objective: 99.9, sli: {availability: {}},
     alerting: {page_alert: {disable: true}}}
"""
    code, out = _generate(tmp_path, spec)
    assert code == 0
    series = []
    for service in ("paged", "unpaged", "no-spec"):
        for status, per_minute in (("200", 54), ("500", 6)):  # 10% 5xx
            labels = f'service="{service}",http_route="/x",http_response_status_code="{status}"'
            series.append(
                {
                    "series": f"http_server_request_duration_seconds_count{{{labels}}}",
                    "values": f"0+{per_minute}x20",
                }
            )
    test = {
        "rule_files": [
            str(out / "prometheus/rules/pyobs-slo-paged.yml"),
            str(out / "prometheus/rules/pyobs-slo-unpaged.yml"),
            str(REPO / "prometheus/rules/pyobs-alerts.yml"),
        ],
        "evaluation_interval": "1m",
        "group_eval_order": [
            "pyobs-slo-paged",
            "pyobs-slo-unpaged",
            "pyobs-slo-paged-alerts",
            "pyobs-slo-unpaged-alerts",
            "pyobs-alerts",
        ],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": "count by (service) (ALERTS"
                        '{alertstate="firing",severity="critical"})',
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": '{service="paged"}', "value": 1},  # its fast burn
                            {"labels": '{service="unpaged"}', "value": 1},  # the error rate
                            {"labels": '{service="no-spec"}', "value": 1},  # the error rate
                        ],
                    },
                    {
                        "expr": 'ALERTS{alertname="PyobsHighErrorRate",alertstate="firing"}',
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": 'ALERTS{alertname="PyobsHighErrorRate",'
                                'alertstate="firing",notify="page",service="'
                                + service
                                + '",severity="critical"}',
                                "value": 1,
                            }
                            for service in ("unpaged", "no-spec")
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "fallback_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    assert "SUCCESS" in run_tool(["promtool", "test", "rules", str(path)], cwd=tmp_path)
