"""The generated dashboards, Grafana provisioning and rules: fresh, consistent, one SLO source."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import import_or_require
from tests.prometheus.conftest import REPO

DASHBOARDS = sorted((REPO / "dashboards").glob("*.json")) + sorted(
    (REPO / "dashboards" / "slo").glob("*.json")
)
PROVISIONING = REPO / "dashboards" / "provisioning"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _datasources() -> dict[str, dict[str, Any]]:
    return {
        ds["uid"]: ds for ds in _yaml(PROVISIONING / "datasources" / "pyobs.yml")["datasources"]
    }


def _prom_alerts() -> dict[str, dict[str, Any]]:
    rules = _yaml(REPO / "prometheus" / "rules" / "pyobs-alerts.yml")
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"]}


def _slo_alerts() -> list[dict[str, Any]]:
    out = []
    for path in sorted((REPO / "prometheus" / "rules").glob("pyobs-slo-*.yml")):
        out += [r for g in _yaml(path)["groups"] for r in g["rules"] if "alert" in r]
    return out


def test_committed_files_are_what_the_generator_writes() -> None:
    """`pyobs dashboards build --check` passes on the repository: nothing is stale."""
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    assert main(["dashboards", "build", "--check", "--root", str(REPO)]) == 0


def test_check_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited dashboard makes `--check` exit 1 and name the file; `build` repairs it."""
    import_or_require("grafana_foundation_sdk")
    from pyobs.cli import main

    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0
    board = tmp_path / "dashboards" / "pyobs-overview.json"
    board.write_text(board.read_text().replace("Requests per second", "Reqs"))
    (tmp_path / "prometheus" / "rules" / "pyobs-alerts.yml").unlink()
    capsys.readouterr()
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "dashboards/pyobs-overview.json" in err
    assert "prometheus/rules/pyobs-alerts.yml" in err
    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0


def test_generated_files_match_committed_tree(tmp_path: Path) -> None:
    """A fresh build in an empty directory yields byte-identical copies of the committed files."""
    import_or_require("grafana_foundation_sdk")
    from pyobs import _dashgen

    _dashgen.write(tmp_path)
    for relative in _dashgen.generate():
        assert (tmp_path / relative).read_bytes() == (REPO / relative).read_bytes(), relative


def test_dashboards_with_fixed_uids() -> None:
    """Overview, runtime, stack, workers and one SLO dashboard per service (the alerts' uids)."""
    from pyobs._dashgen import slospec

    specs = slospec.load(REPO / "prometheus" / "slo" / "examples.yaml")
    uids = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    slo_uids = {f"pyobs-slo-{spec.service}" for spec in specs}
    assert len(slo_uids) == 10
    assert uids == {"pyobs-overview", "pyobs-runtime", "pyobs-stack", "pyobs-workers", *slo_uids}


def test_overview_has_the_promised_panels() -> None:
    """RED per route, latency heatmap with exemplars, status codes, in-flight, exceptions, logs."""
    board = json.loads((REPO / "dashboards" / "pyobs-overview.json").read_text())
    panels = {p["title"]: p for p in board["panels"]}
    heatmap = panels["Latency heatmap"]
    assert heatmap["type"] == "heatmap"
    assert heatmap["targets"][0]["exemplar"] is True
    assert heatmap["targets"][0]["format"] == "heatmap"
    for title in (
        "Requests per second by route",
        "5xx ratio by route",
        "Latency percentiles by route",
        "Responses by status code",
        "In-flight requests",
        "Unhandled exceptions",
    ):
        assert title in panels
    logs = panels["Warnings and errors"]
    assert logs["type"] == "logs"
    assert logs["datasource"] == {"type": "elasticsearch", "uid": "${logs_datasource}"}


def test_datasource_links() -> None:
    """Exemplars open Jaeger, log lines link trace.id to Jaeger, spans open their logs."""
    known = _datasources()
    assert set(known) == {"prometheus", "elasticsearch", "alertmanager", "jaeger"}
    prom = known["prometheus"]["jsonData"]
    assert prom["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "jaeger"}]
    es = known["elasticsearch"]["jsonData"]
    assert es["logMessageField"] == "message"
    assert es["logLevelField"] == "log.level"
    assert es["dataLinks"][0]["field"] == "trace.id"
    assert es["dataLinks"][0]["datasourceUid"] == "jaeger"
    jaeger = known["jaeger"]
    assert jaeger["url"] == "http://jaeger:16686"
    assert jaeger["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "elasticsearch"
    assert "trace.id" in jaeger["jsonData"]["tracesToLogsV2"]["query"]


def test_dashboard_provider_points_at_the_pyobs_folder() -> None:
    """Grafana loads dashboards/*.json into the `pyobs` folder."""
    provider = _yaml(PROVISIONING / "dashboards" / "pyobs.yml")["providers"][0]
    assert provider["folder"] == "pyobs"
    assert provider["type"] == "file"


def test_every_alert_carries_the_required_fields() -> None:
    """severity, summary, description, runbook_url and dashboard_url on every alert."""
    boards = {json.loads(p.read_text())["uid"] for p in DASHBOARDS}
    runbook = (REPO / "docs" / "dashboards.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("#")
    }
    for rule in [*_prom_alerts().values(), *_slo_alerts()]:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "none"}, name
        ann = rule["annotations"]
        assert set(ann) >= {"summary", "description", "runbook_url", "dashboard_url"}, name
        assert ann["runbook_url"].split("#")[1] in anchors, f"no runbook section for {name}"
        assert re.search(r"/d/([\w-]+)", ann["dashboard_url"])[1] in boards, name  # type: ignore[index]


def test_spec_objectives_set_the_thresholds() -> None:
    """Each burn threshold in the generated rules is factor x (1 - objective) of its spec."""
    from pyobs._dashgen import slospec

    specs = slospec.load(REPO / "prometheus" / "slo" / "examples.yaml")
    rules = {
        (path.stem, r["alert"]): r
        for path in sorted((REPO / "prometheus" / "rules").glob("pyobs-slo-*.yml"))
        for g in _yaml(path)["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    checked = 0
    for spec in specs:
        for objective in spec.slos:
            for windows, speed in ((spec.page_windows, "Fast"), (spec.ticket_windows, "Slow")):
                key = (f"pyobs-slo-{spec.service}", f"{objective.alert_name}BudgetBurn{speed}")
                if key not in rules:
                    assert spec.service == "example-fastapi" and speed == "Slow"  # disabled
                    continue
                for window in windows:
                    threshold = f"{window.factor * (1 - objective.objective):.10g}"
                    labels = f'service="{spec.service}", slo="{objective.name}"'
                    series = f"ratio_rate{window.long}{{{labels}}}"
                    assert f"{series} > {threshold}" in rules[key]["expr"]
                    checked += 1
    assert checked == 39 * 2
    fastapi = next(s for s in specs if s.service == "example-fastapi")
    assert fastapi.slos[0].objective == 0.9995  # its own objective, not the default


def test_slo_windows_follow_the_sre_workbook() -> None:
    """Page at 14.4x over 1h/5m and 6x over 6h/30m; ticket at 3x over 1d/2h and 1x over 3d/6h."""
    from pyobs._dashgen import slospec

    (spec,) = slospec.parse("service: shop\n")
    assert spec.window == "30d"
    assert [(w.factor, w.long, w.short) for w in spec.page_windows] == [
        (14.4, "1h", "5m"),
        (6.0, "6h", "30m"),
    ]
    assert [(w.factor, w.long, w.short) for w in spec.ticket_windows] == [
        (3.0, "1d", "2h"),
        (1.0, "3d", "6h"),
    ]


def test_scaled_rules_shrink_windows_and_for() -> None:
    """The live test's rules: the same rules with every window and `for` divided by 60."""
    from pyobs._dashgen import promrules, slo, slogen, slospec

    assert slo.scaled("1h", 1 / 60) == "1m"
    assert slo.scaled("3d", 1 / 60) == "1h12m"
    assert slo.scaled("0s", 1 / 60) == "0s"
    assert slo.seconds("1h30m") == 5400
    files = promrules.rule_files(scale=1 / 60)
    alerts = {r["alert"]: r for r in files["pyobs-alerts.yml"]["groups"][0]["rules"]}
    assert alerts["PyobsHighErrorRate"]["for"] == "2s"
    assert "[5s]" in alerts["PyobsHighErrorRate"]["expr"]
    rules = slogen.rule_file(slospec.parse("service: shop\n"), scale=1 / 60)
    recording, alerting = rules["groups"]
    rate1h = next(r for r in recording["rules"] if r["record"] == f"{slogen.RATIO}1h")
    assert "[1m]" in rate1h["expr"]
    assert {r["for"] for r in alerting["rules"]} == {"2s", "15s"}
    with pytest.raises(ValueError, match="not a duration"):
        slo.seconds("5 minutes")


def test_prometheus_config_scrapes_the_stack() -> None:
    """Every example service and stack component is scraped; Logstash through its bridge."""
    config = _yaml(REPO / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    assert config["storage"]["exemplars"]["max_exemplars"] > 0
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    frameworks = [
        "flask", "flask-restful", "django", "fastapi", "starlette",
        "tornado", "falcon", "sanic", "pyramid", "aiohttp",
    ]  # fmt: skip
    assert {f"example-{f}:8000" for f in frameworks} <= targets
    assert {"prometheus:9090", "alertmanager:9093", "grafana:3000", "jaeger:8888"} <= targets
    # Logstash's API (9600) is not in Prometheus format: its bridge is scraped instead.
    assert "logstash-exporter:9198" in targets
    assert not any(t.startswith("logstash:") for t in targets)
