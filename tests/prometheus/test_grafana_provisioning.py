"""Grafana provisioning files and dashboards against Grafana's documented provisioning rules.

Grafana cannot run here. These tests check what Grafana's provisioning readers check when they
load the files (apiVersion 1 keys, `access`, one default datasource per organisation, uid
syntax and length, a folder uid used by one provider only, `foldersFromFilesStructure` only
without `folder`/`folderUid`, a title and a short uid on every dashboard) and what makes the
links work (every datasource a link names exists with the right type; every panel takes its
datasource from a dashboard variable). What only a running Grafana proves: that the plugins
accept their `jsonData` (exemplar, trace-to-logs and data links render as links), that the
Alertmanager datasource lists and silences alerts in the alerting UI, and that the dashboards
render; docs/stack.md lists these under "Checked only with Docker".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import import_or_require
from tests.prometheus.conftest import REPO

PROVISIONING = REPO / "dashboards" / "provisioning"
#: Every dashboard the file provider loads (it reads subfolders too, e.g. dashboards/slo/).
DASHBOARDS = sorted((REPO / "dashboards").rglob("*.json"))

#: The keys of a datasource in an apiVersion 1 file (Grafana's provisioning reader).
DATASOURCE_KEYS = {
    "orgId", "orgName", "version", "name", "type", "access", "url", "user", "database",
    "basicAuth", "basicAuthUser", "withCredentials", "isDefault", "correlations", "jsonData",
    "secureJsonData", "editable", "uid",
}  # fmt: skip
#: The keys of a dashboard provider in an apiVersion 1 file.
PROVIDER_KEYS = {
    "name", "type", "orgId", "folder", "folderUid", "editable", "options", "disableDeletion",
    "updateIntervalSeconds", "allowUiUpdates",
}  # fmt: skip
#: Grafana's short-uid rule (letters, digits, - and _; at most 40 characters).
UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
BUILT_IN_TYPES = {"prometheus", "elasticsearch", "alertmanager", "jaeger"}
VARIABLE = re.compile(r"^\$\{(\w+)\}$|^\$(\w+)$")
#: Grafana's ExemplarTraceIdDestination and TraceToLogsOptionsV2 (the keys its UI reads).
EXEMPLAR_KEYS = {"name", "url", "urlDisplayLabel", "datasourceUid"}
TRACES_TO_LOGS_KEYS = {
    "name", "datasourceUid", "tags", "spanStartTimeShift", "spanEndTimeShift",
    "filterByTraceID", "filterBySpanID", "query", "customQuery",
}  # fmt: skip


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _datasources() -> list[dict[str, Any]]:
    files = sorted((PROVISIONING / "datasources").glob("*.y*ml"))
    assert files, "no datasource provisioning file"
    out: list[dict[str, Any]] = []
    for path in files:
        data = _yaml(path)
        assert data["apiVersion"] == 1, path
        out += data["datasources"]
    return out


def _by_uid() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in _datasources()}


def _compose() -> dict[str, Any]:
    return dict(_yaml(REPO / "docker-compose.yml"))


def _grafana_mounts() -> dict[str, str]:
    """Container path -> repository path of every bind mount of the grafana service."""
    mounts = {}
    for volume in _compose()["services"]["grafana"]["volumes"]:
        source, _, rest = volume.partition(":")
        if source.startswith("./"):
            mounts[rest.split(":")[0]] = source[2:]
    return mounts


def test_datasources_follow_the_provisioning_schema() -> None:
    """Known keys only, proxy access, unique names and uids, one default, valid uids."""
    sources = _datasources()
    names = [ds["name"] for ds in sources]
    uids = [ds["uid"] for ds in sources]
    assert len(set(names)) == len(names)
    assert len(set(uids)) == len(uids)
    for ds in sources:
        assert set(ds) <= DATASOURCE_KEYS, (ds["name"], set(ds) - DATASOURCE_KEYS)
        assert UID.match(ds["uid"]), ds["uid"]
        assert ds["type"] in BUILT_IN_TYPES, ds["type"]
        assert ds.get("access", "proxy") in {"proxy", "direct"}
        assert all(isinstance(v, str) for v in ds.get("secureJsonData", {}).values())
    assert sum(bool(ds.get("isDefault")) for ds in sources) == 1


def test_environment_references_are_set_for_grafana() -> None:
    """Every $VAR Grafana expands in the datasource file is in the grafana service's environment."""
    text = "\n".join(p.read_text() for p in (PROVISIONING / "datasources").glob("*.y*ml"))
    # $$ is a literal dollar for Grafana; what is left after removing them gets expanded.
    refs = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", text.replace("$$", "")))
    environment = _compose()["services"]["grafana"]["environment"]
    assert refs, "the Elasticsearch password should come from the environment"
    assert refs <= set(environment), refs - set(environment)


def test_alerts_are_prometheus_s_shown_and_silenced_through_alertmanager() -> None:
    """Alertmanager datasource (Prometheus flavour, no Grafana-managed alerts), linked from
    the Prometheus datasource; no Grafana-managed rule, contact point or policy anywhere."""
    by_uid = _by_uid()
    managers = [ds for ds in by_uid.values() if ds["type"] == "alertmanager"]
    assert len(managers) == 1
    manager = managers[0]
    assert manager["jsonData"]["implementation"] == "prometheus"
    assert manager["jsonData"]["handleGrafanaManagedAlerts"] is False
    alertmanager = _compose()["services"]["alertmanager"]
    assert manager["url"] == f"http://alertmanager:{alertmanager['expose'][0]}"
    prometheus = next(ds for ds in by_uid.values() if ds["type"] == "prometheus")
    assert prometheus["jsonData"]["alertmanagerUid"] == manager["uid"]
    assert prometheus["jsonData"]["manageAlerts"] is True
    # Nothing Grafana would evaluate or notify on its own: no alerting provisioning at all.
    assert not list(PROVISIONING.glob("alerting/*"))
    assert "/etc/grafana/provisioning/alerting" not in _grafana_mounts()


def test_links_between_datasources_name_existing_uids() -> None:
    """Exemplars -> Jaeger, spans -> Elasticsearch by trace.id, log lines -> Jaeger."""
    by_uid = _by_uid()

    def kind(uid: str) -> str:
        assert uid in by_uid, f"link to a datasource that is not provisioned: {uid}"
        return str(by_uid[uid]["type"])

    prometheus = next(ds for ds in by_uid.values() if ds["type"] == "prometheus")
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert all(set(d) <= EXEMPLAR_KEYS for d in destinations), destinations
    assert [(d["name"], kind(d["datasourceUid"])) for d in destinations] == [("trace_id", "jaeger")]
    jaeger = next(ds for ds in by_uid.values() if ds["type"] == "jaeger")
    to_logs = jaeger["jsonData"]["tracesToLogsV2"]
    assert set(to_logs) <= TRACES_TO_LOGS_KEYS, set(to_logs) - TRACES_TO_LOGS_KEYS
    assert kind(to_logs["datasourceUid"]) == "elasticsearch"
    assert to_logs["customQuery"] is True
    # Grafana sees $$ as one literal $: the query it runs is trace.id:"${__trace.traceId}".
    assert to_logs["query"].replace("$$", "$") == 'trace.id:"${__trace.traceId}"'
    elasticsearch = next(ds for ds in by_uid.values() if ds["type"] == "elasticsearch")
    links = elasticsearch["jsonData"]["dataLinks"]
    assert [(link["field"], kind(link["datasourceUid"])) for link in links] == [
        ("trace.id", "jaeger")
    ]
    assert elasticsearch["jsonData"]["index"] == "logs-pyobs-*"


def test_one_dashboard_provider_owns_its_folder_uid() -> None:
    """Known keys, a unique folder uid, no folder with foldersFromFilesStructure, a mounted path."""
    providers = []
    for path in sorted((PROVISIONING / "dashboards").glob("*.y*ml")):
        data = _yaml(path)
        assert data["apiVersion"] == 1
        providers += data["providers"]
    assert len({p["name"] for p in providers}) == len(providers)
    folder_uids = [p["folderUid"] for p in providers if p.get("folderUid")]
    assert len(set(folder_uids)) == len(folder_uids), "one folder uid, one provider"
    mounts = _grafana_mounts()
    for provider in providers:
        assert set(provider) <= PROVIDER_KEYS, set(provider) - PROVIDER_KEYS
        assert provider.get("type", "file") == "file"
        options = provider["options"]
        if options.get("foldersFromFilesStructure"):
            # Grafana refuses a provider with both.
            assert not provider.get("folder") and not provider.get("folderUid")
        else:
            assert UID.match(provider["folderUid"])
        assert mounts.get(options["path"]) == "dashboards", options["path"]
    from pyobs._dashgen import provisioning
    from pyobs.cli import grafana

    assert folder_uids == [provisioning.FOLDER_UID] == [grafana.FOLDER_UID]


def test_dashboards_load_under_the_provider() -> None:
    """Every dashboard file has a title and a unique uid Grafana accepts."""
    uids = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board.get("title"), path.name
        assert UID.match(board["uid"]), board["uid"]
        uids.append(board["uid"])
    assert len(set(uids)) == len(uids)


def _refs(board: dict[str, Any]) -> list[tuple[str, Any]]:
    refs: list[tuple[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        title = panel.get("title", "")
        assert panel.get("targets"), f"panel {title} has no query"
        refs.append((title, panel.get("datasource")))
        refs += [(title, t["datasource"]) for t in panel["targets"] if "datasource" in t]
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            refs.append((f"${variable['name']}", variable.get("datasource")))
    return refs


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_takes_its_datasource_from_a_variable(path: Path) -> None:
    """No hard-coded uid: each panel, query and query variable names a datasource variable of
    its type, so the dashboards work in a Grafana whose datasources have other uids."""
    board = json.loads(path.read_text())
    variables = {
        v["name"]: v["query"]
        for v in board.get("templating", {}).get("list", [])
        if v["type"] == "datasource"
    }
    assert variables, "no datasource variable"
    refs = _refs(board)
    assert refs
    for title, ref in refs:
        assert isinstance(ref, dict), f"{title}: datasource by name: {ref!r}"
        match = VARIABLE.match(str(ref.get("uid", "")))
        assert match, f"{title}: hard-coded datasource uid {ref.get('uid')!r}"
        name = match[1] or match[2]
        assert name in variables, f"{title}: ${name} is not a datasource variable"
        assert variables[name] == ref["type"], f"{title}: ${name} picks a {variables[name]}"
    # Each variable's type has a provisioned datasource to default to in the stack.
    provisioned = {ds["type"] for ds in _datasources()}
    assert set(variables.values()) <= provisioned


def test_an_obsolete_alerting_file_is_stale_and_build_removes_it(tmp_path: Path) -> None:
    """An old checkout's paused Grafana rules make `--check` fail; `build` deletes them."""
    import_or_require("grafana_foundation_sdk")
    from pyobs._dashgen import OBSOLETE
    from pyobs.cli import main

    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    leftover = tmp_path / OBSOLETE[0]
    leftover.parent.mkdir(parents=True)
    leftover.write_text("groups: []\n")
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 1
    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    assert not leftover.exists()
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0
