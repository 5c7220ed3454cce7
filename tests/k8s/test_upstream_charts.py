"""The upstream charts rendered with the stack's values: valid, and wired to pyobs's objects.

scripts/setup.d/55-upstream-charts.sh puts kube-prometheus-stack (with its dependencies),
Grafana's chart, prometheus-elasticsearch-exporter and ECK's operator chart, at the versions
it pins, under .cache/charts; each is rendered once here (helm template, as docs/kubernetes.md
installs it) with deploy/stack/values/*.yaml. Every object is validated against Kubernetes'
schemas, the custom resources against the CRDs the installed operator brings
(kube-prometheus-stack's own CRD subchart; ECK's, which equal deploy/crds/eck). Then what
a user would see: Prometheus selects pyobs's rules and monitors and keeps exemplars,
Alertmanager runs alertmanager.yml, Grafana's sidecars load the dashboard and datasource
ConfigMaps, the exporter reads the Elasticsearch ECK starts.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_service
from tests.k8s import kube
from tests.prometheus.conftest import run_tool

pytestmark = pytest.mark.service

REPO = kube.REPO
SETUP = REPO / "scripts" / "setup.d" / "55-upstream-charts.sh"
CHARTS = REPO / ".cache" / "charts"
STACK = REPO / "deploy" / "stack"
VALUES = STACK / "values"
SERVICE_CHART = REPO / "deploy" / "helm" / "pyobs-service"
NAMESPACE = "observability"  # where docs/kubernetes.md installs the stack
SERVICE_NAMESPACE = "shop"  # a service installed with the pyobs-service chart


def _pins() -> dict[str, str]:
    """The chart versions 55-upstream-charts.sh pins (its NAME=VERSION lines: one source)."""
    text = SETUP.read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z_]+)=(\d[\w.]*)$", text, re.MULTILINE))


def chart(name: str, pin: str) -> Path:
    """The chart's directory; skip (fail in CI) when the setup script has not run."""
    path = CHARTS / f"{name}-{_pins()[pin]}"
    require_service(
        (CHARTS / ".complete").is_file() and (path / "Chart.yaml").is_file(),
        f"{path.name} is not downloaded (bash scripts/setup.d/55-upstream-charts.sh)",
    )
    return path


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((VALUES / name).read_text(encoding="utf-8"))
    return data


def _render(path: Path, values_file: str | None, release: str, namespace: str) -> list[Any]:
    values = _values(values_file) if values_file else None
    return kube.helm_template(path, values, release=release, namespace=namespace)


@pytest.fixture(scope="module")
def kps_chart(helm_bin: str) -> Path:
    """kube-prometheus-stack's directory, its dependencies in charts/."""
    return chart("kube-prometheus-stack", "KUBE_PROMETHEUS_STACK")


@pytest.fixture(scope="module")
def kps_crds(kps_chart: Path) -> Path:
    """The Prometheus Operator CRDs kube-prometheus-stack installs (its crds subchart)."""
    return kps_chart / "charts" / "crds" / "crds"


@pytest.fixture(scope="module")
def kps(kps_chart: Path) -> list[dict[str, Any]]:
    """kube-prometheus-stack rendered with values/kube-prometheus-stack.yaml."""
    return _render(kps_chart, "kube-prometheus-stack.yaml", "kube-prometheus-stack", NAMESPACE)


@pytest.fixture(scope="module")
def grafana(helm_bin: str) -> list[dict[str, Any]]:
    """Grafana's chart rendered with values/grafana.yaml."""
    return _render(chart("grafana", "GRAFANA"), "grafana.yaml", "grafana", NAMESPACE)


@pytest.fixture(scope="module")
def exporter(helm_bin: str) -> list[dict[str, Any]]:
    """prometheus-elasticsearch-exporter rendered with values/elasticsearch-exporter.yaml."""
    path = chart("prometheus-elasticsearch-exporter", "PROMETHEUS_ELASTICSEARCH_EXPORTER")
    return _render(path, "elasticsearch-exporter.yaml", "elasticsearch-exporter", NAMESPACE)


@pytest.fixture(scope="module")
def eck(helm_bin: str) -> list[dict[str, Any]]:
    """ECK's operator chart with its defaults, as docs/kubernetes.md installs it."""
    return _render(
        chart("eck-operator", "ECK_OPERATOR"), None, "elastic-operator", "elastic-system"
    )


@pytest.fixture(scope="module")
def service_monitors(helm_bin: str) -> dict[str, list[dict[str, Any]]]:
    """The pyobs-service chart's monitors (ServiceMonitor by default, PodMonitor on request)."""
    return {
        kind: [
            obj
            for obj in kube.helm_template(
                SERVICE_CHART, values, release="checkout", namespace=SERVICE_NAMESPACE
            )
            if obj["kind"] in ("ServiceMonitor", "PodMonitor")
        ]
        for kind, values in (
            ("ServiceMonitor", {}),
            ("PodMonitor", {"metrics": {"monitor": {"kind": "PodMonitor"}}}),
        )
    }


def _datasources() -> dict[str, Any]:
    """The datasources ConfigMap of deploy/stack/grafana."""
    return kube.one(_docs(STACK / "grafana" / "datasources.yaml"), "ConfigMap")


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [(o["kind"], o["metadata"]["name"]) for o in objects])
    return found[0]


# --- Kubernetes label selectors, as the Prometheus Operator applies them ---------------------


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector against labels; a nil selector selects nothing (operator semantics)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def selected(
    spec: Mapping[str, Any], kind: str, obj: Mapping[str, Any], namespace: str, own: str
) -> bool:
    """Whether a Prometheus spec picks up this rule or monitor in this namespace.

    ``kind`` is rule, serviceMonitor or podMonitor; a nil namespace selector means the
    Prometheus object's own namespace only, an empty one every namespace.
    """
    if not matches(spec.get(f"{kind}Selector"), obj["metadata"].get("labels") or {}):
        return False
    ns_selector = spec.get(f"{kind}NamespaceSelector")
    if ns_selector is None:
        return namespace == own
    return matches(ns_selector, {"kubernetes.io/metadata.name": namespace})


def test_selector_semantics() -> None:
    """The selector helper is not a rubber stamp: labels, expressions and nil all count."""
    labels = {"release": "x", "tier": "web"}
    assert matches({}, labels) and not matches(None, labels)
    assert matches({"matchLabels": {"release": "x"}}, labels)
    assert not matches({"matchLabels": {"release": "y"}}, labels)
    assert not matches({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, labels)
    spec: dict[str, Any] = {"ruleSelector": {}, "ruleNamespaceSelector": None}
    rule = {"metadata": {"labels": labels}}
    assert selected(spec, "rule", rule, "a", "a") and not selected(spec, "rule", rule, "b", "a")


# --- valid ----------------------------------------------------------------------------------


def test_kube_prometheus_stack_renders_valid_objects(
    kps: list[dict[str, Any]], kps_crds: Path
) -> None:
    """Every object kube-prometheus-stack renders with our values validates (its own CRDs)."""
    kinds = {obj["kind"] for obj in kps}
    assert {"Prometheus", "Alertmanager", "Secret", "PrometheusRule", "ServiceMonitor"} <= kinds
    for version in kube.KUBERNETES_VERSIONS:
        kube.validate(kps, version, crd_dir=kps_crds)


def test_kube_prometheus_stack_renders_no_grafana(kps: list[dict[str, Any]]) -> None:
    """Grafana comes from its own chart: the subchart (a stand-in version) renders nothing."""
    assert _values("kube-prometheus-stack.yaml")["grafana"]["enabled"] is False
    from_subchart = [
        (obj["kind"], obj["metadata"]["name"])
        for obj in kps
        if (obj["metadata"].get("labels") or {}).get("helm.sh/chart", "").startswith("grafana-")
        or (obj["kind"] == "Deployment" and "grafana" in obj["metadata"]["name"])
    ]
    assert from_subchart == []


@pytest.mark.parametrize("name", ["grafana", "exporter", "eck"])
def test_chart_renders_valid_objects(
    name: str, request: pytest.FixtureRequest, kps_crds: Path
) -> None:
    """Grafana's, the exporter's and ECK's charts render valid objects."""
    # ServiceMonitors against the CRDs kube-prometheus-stack installs (the operator that
    # reads them); ECK's chart renders no custom resource, only its CRDs and the operator.
    objects: list[dict[str, Any]] = request.getfixturevalue(name)
    assert {"Deployment", "StatefulSet"} & {obj["kind"] for obj in objects}
    for version in kube.KUBERNETES_VERSIONS:
        kube.validate(objects, version, crd_dir=kps_crds)


def test_our_monitoring_objects_fit_the_installed_operator(
    kps_crds: Path, service_monitors: dict[str, list[dict[str, Any]]]
) -> None:
    """pyobs's rules and monitors also fit the newer CRDs kube-prometheus-stack installs."""
    # deploy/crds pins an older Prometheus Operator; the cluster gets the chart's.
    ours = (
        _docs(STACK / "prometheus" / "rules.yaml")
        + _docs(STACK / "prometheus" / "servicemonitors.yaml")
        + _docs(STACK / "agent" / "prometheus-agent.yaml")
    )
    monitors = service_monitors["ServiceMonitor"] + service_monitors["PodMonitor"]
    assert len(monitors) == 2
    kube.validate(ours + monitors, crd_dir=kps_crds)


def test_eck_operator_installs_the_crds_we_validate_against(eck: list[dict[str, Any]]) -> None:
    """The operator chart's CRDs are deploy/crds/eck's, and it watches every namespace."""
    rendered = {
        obj["metadata"]["name"]: obj for obj in eck if obj["kind"] == "CustomResourceDefinition"
    }
    kept = sorted((kube.CRD_DIR / "eck").glob("*.yaml"))
    assert len(kept) >= 5
    for path in kept:
        ours = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert rendered[ours["metadata"]["name"]]["spec"] == ours["spec"], path.name
    (configmap,) = [obj for obj in eck if obj["kind"] == "ConfigMap"]
    config = yaml.safe_load(configmap["data"]["eck.yaml"])
    assert not config.get("namespaces"), config.get("namespaces")  # empty: all namespaces


# --- Prometheus -----------------------------------------------------------------------------


def test_prometheus_selects_our_rules_and_monitors(
    kps: list[dict[str, Any]],
    grafana: list[dict[str, Any]],
    exporter: list[dict[str, Any]],
    service_monitors: dict[str, list[dict[str, Any]]],
) -> None:
    """The rendered Prometheus picks up pyobs's PrometheusRules and every monitor feeding it."""
    # The rules and Jaeger's monitor go into the stack's namespace, a service's monitor into
    # the service's own, Grafana's and the exporter's come from their charts.
    prometheus = kube.one(kps, "Prometheus")
    spec, own = prometheus["spec"], prometheus["metadata"]["namespace"]
    rules = _docs(STACK / "prometheus" / "rules.yaml")
    assert {r["metadata"]["name"] for r in rules} >= {"pyobs-recording", "pyobs-alerts"}
    for rule in rules:
        assert selected(spec, "rule", rule, NAMESPACE, own), rule["metadata"]
    monitors = [
        (m, NAMESPACE)
        for m in _docs(STACK / "prometheus" / "servicemonitors.yaml")
        + kube.by_kind(grafana, "ServiceMonitor")
        + kube.by_kind(exporter, "ServiceMonitor")
    ] + [(m, SERVICE_NAMESPACE) for m in service_monitors["ServiceMonitor"]]
    assert len(monitors) == 4
    for monitor, namespace in monitors:
        assert selected(spec, "serviceMonitor", monitor, namespace, own), monitor["metadata"]
    (pod_monitor,) = service_monitors["PodMonitor"]
    assert selected(spec, "podMonitor", pod_monitor, SERVICE_NAMESPACE, own)


def test_prometheus_can_read_targets_in_every_namespace(kps: list[dict[str, Any]]) -> None:
    """Its ServiceAccount is bound to a ClusterRole that lists Services, Endpoints and Pods."""
    spec = kube.one(kps, "Prometheus")["spec"]
    bindings = [
        b
        for b in kube.by_kind(kps, "ClusterRoleBinding")
        if {"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": NAMESPACE}
        in b["subjects"]
    ]
    assert bindings, "no ClusterRoleBinding for Prometheus's ServiceAccount"
    role = _named(kps, "ClusterRole", bindings[0]["roleRef"]["name"])
    readable = {
        resource
        for rule in role["rules"]
        if {"list", "watch"} <= set(rule.get("verbs") or [])
        for resource in rule.get("resources") or []
    }
    assert {"services", "pods"} <= readable
    assert {"endpoints", "endpointslices"} & readable


def test_prometheus_keeps_exemplars_and_compose_retention(kps: list[dict[str, Any]]) -> None:
    """Exemplar storage on with prometheus.yml's size, compose's retention and intervals."""
    spec = kube.one(kps, "Prometheus")["spec"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    command = compose["services"]["prometheus"]["command"]
    features = {
        feature
        for arg in command
        if arg.startswith("--enable-feature=")
        for feature in arg.split("=", 1)[1].split(",")
    }
    assert "exemplar-storage" in features
    assert features <= set(spec.get("enableFeatures") or [])
    (retention,) = [a for a in command if a.startswith("--storage.tsdb.retention.time=")]
    default = re.fullmatch(r".*=\$\{PROMETHEUS_RETENTION:-(\w+)\}", retention)
    assert default, retention
    assert spec["retention"] == default.group(1)
    prometheus_yml = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    assert spec["exemplars"]["maxSize"] == prometheus_yml["storage"]["exemplars"]["max_exemplars"]
    assert spec["scrapeInterval"] == prometheus_yml["global"]["scrape_interval"]
    assert spec["evaluationInterval"] == prometheus_yml["global"]["evaluation_interval"]
    assert spec["storage"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]


def test_grafana_datasources_reach_the_services_the_charts_create(
    kps: list[dict[str, Any]],
) -> None:
    """The Prometheus and Alertmanager URLs of the datasources are Services kps renders."""
    (content,) = _datasources()["data"].values()
    urls = {d["uid"]: d["url"] for d in yaml.safe_load(content)["datasources"]}
    for uid in ("prometheus", "alertmanager"):
        match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)/?", urls[uid])
        assert match, urls[uid]
        service = _named(kps, "Service", match.group(1))
        assert int(match.group(2)) in [p["port"] for p in service["spec"]["ports"]], uid


# --- Alertmanager ---------------------------------------------------------------------------


def test_alertmanager_runs_our_config_and_it_passes_amtool(
    kps: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The config Secret the operator reads holds alertmanager.yml's routing and the template."""
    alertmanager = kube.one(kps, "Alertmanager")
    assert "configSecret" not in alertmanager["spec"]  # the operator's default name below
    secret = _named(kps, "Secret", f"alertmanager-{alertmanager['metadata']['name']}")
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    config = yaml.safe_load(data["alertmanager.yaml"])
    compose = yaml.safe_load((REPO / "prometheus/alertmanager.yml").read_text(encoding="utf-8"))
    assert set(config) == set(compose)
    for key in ("global", "route", "receivers", "inhibit_rules"):
        assert config[key] == compose[key], key
    template = (REPO / "prometheus/templates/pyobs.tmpl").read_text(encoding="utf-8")
    assert data["pyobs.tmpl"] == template
    # The operator mounts the Secret's files in /etc/alertmanager/config: the glob finds it.
    assert config["templates"] == ["/etc/alertmanager/config/*.tmpl"]
    (tmp_path / "pyobs.tmpl").write_text(template)
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump({**config, "templates": [str(tmp_path / "*.tmpl")]}))
    output = run_tool(["amtool", "check-config", str(path)], cwd=tmp_path)
    assert "SUCCESS" in output and "1 templates" in output, output


# --- Grafana --------------------------------------------------------------------------------


def _env(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = kube.one(objects, "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def test_grafana_sidecars_load_our_configmaps(
    grafana: list[dict[str, Any]], kps: list[dict[str, Any]]
) -> None:
    """Grafana's sidecars watch our ConfigMaps' labels and folder annotation, in every namespace."""
    containers = _containers(grafana)
    dashboards = _env(containers["grafana-sc-dashboard"])
    datasources = _env(containers["grafana-sc-datasources"])
    ours = _docs(STACK / "grafana" / "dashboards.yaml")
    assert len(ours) >= 3
    label = {dashboards["LABEL"]: dashboards["LABEL_VALUE"]}
    # kube-prometheus-stack's own dashboards (forceDeployDashboards) are picked up too.
    for configmap in ours + kube.by_kind(kps, "ConfigMap"):
        name = configmap["metadata"]["name"]
        assert matches({"matchLabels": label}, configmap["metadata"]["labels"]), name
    assert dashboards["NAMESPACE"] == "ALL"
    for configmap in ours:
        assert configmap["metadata"]["annotations"][dashboards["FOLDER_ANNOTATION"]] == "pyobs"
    provider = _named(grafana, "ConfigMap", "grafana-config-dashboards")
    (providers,) = [yaml.safe_load(text)["providers"] for text in provider["data"].values()]
    assert providers[0]["options"]["foldersFromFilesStructure"] is True
    assert providers[0]["options"]["path"] == dashboards["FOLDER"]
    source = _datasources()
    assert matches(
        {"matchLabels": {datasources["LABEL"]: datasources["LABEL_VALUE"]}},
        source["metadata"]["labels"],
    )
    assert datasources["FOLDER"] == "/etc/grafana/provisioning/datasources"
    # Watching every namespace needs cluster-wide read access to ConfigMaps.
    role = kube.one(grafana, "ClusterRole")
    assert any(
        "configmaps" in rule.get("resources", []) and {"list", "watch"} <= set(rule["verbs"])
        for rule in role["rules"]
    )


def test_grafana_gets_the_reader_password_the_datasource_uses(
    grafana: list[dict[str, Any]],
) -> None:
    """The datasources' $GRAFANA_READER_PASSWORD reaches Grafana from the stack's Secret."""
    source = _datasources()
    (content,) = source["data"].values()
    # $NAME and ${NAME} are expanded from the environment; $$ is a literal $.
    referenced = set(re.findall(r"(?<!\$)\$(?!\$)\{?([A-Za-z_][A-Za-z0-9_]*)", content))
    assert referenced == {"GRAFANA_READER_PASSWORD"}
    env = _env(_containers(grafana)["grafana"])
    credentials = "pyobs-stack-credentials"
    assert env["GRAFANA_READER_PASSWORD"] == {
        "secretKeyRef": {"name": credentials, "key": "GRAFANA_READER_PASSWORD"}
    }
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["secretKeyRef"]["name"] == credentials


# --- the chart's ServiceMonitors and the exporter -------------------------------------------


@pytest.mark.parametrize(("name", "job"), [("grafana", "grafana"), ("exporter", "elasticsearch")])
def test_chart_monitor_scrapes_its_service_as_the_compose_job(
    name: str, job: str, request: pytest.FixtureRequest
) -> None:
    """Each chart's ServiceMonitor selects its Service, on a port it has, with compose's job."""
    objects: list[dict[str, Any]] = request.getfixturevalue(name)
    monitor = kube.one(objects, "ServiceMonitor")
    service = kube.one(objects, "Service")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p.get("name") for p in service["spec"]["ports"]]
    relabeled = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert relabeled == {"job": job, "service": job}


def test_exporter_reads_the_elasticsearch_eck_starts(exporter: list[dict[str, Any]]) -> None:
    """The exporter reads ECK's Elasticsearch as pyobs_monitor, with compose's collectors only."""
    # Only those the monitor role (cluster `monitor`) may read: the others would get a 403.
    es = kube.one(_docs(STACK / "elastic" / "elasticsearch.yaml"), "Elasticsearch")
    plain = es["spec"]["http"]["tls"]["selfSignedCertificate"]["disabled"] is True
    scheme = "http" if plain else "https"
    (container,) = kube.one(exporter, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = container.get("command", []) + container.get("args", [])
    assert f"--es.uri={scheme}://{es['metadata']['name']}-es-http:9200" in args
    env = _env(container)
    assert env["ES_USERNAME"] == "pyobs_monitor"
    job = kube.one(_docs(STACK / "elastic" / "setup.yaml"), "Job")
    (setup,) = job["spec"]["template"]["spec"]["containers"]
    assert env["ES_PASSWORD"] == _env(setup)["MONITOR_PASSWORD"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    compose_flags = compose["services"]["elasticsearch-exporter"]["command"]
    collectors = {
        a
        for a in args
        if re.match(r"--(es\.(indices|shards|snapshots|slm|ilm|data_stream)|collector\.)", a)
    }
    assert collectors <= set(compose_flags), collectors


def test_docs_install_the_charts_rendered_here() -> None:
    """docs/kubernetes.md installs each chart at its pinned version, under the tested release."""
    # The names of a chart's objects follow from the release name.
    docs = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    pins = _pins()
    for release, ref, pin in (
        ("elastic-operator", "elastic/eck-operator", "ECK_OPERATOR"),
        (
            "kube-prometheus-stack",
            "prometheus-community/kube-prometheus-stack",
            "KUBE_PROMETHEUS_STACK",
        ),
        ("grafana", "grafana-community/grafana", "GRAFANA"),
        (
            "elasticsearch-exporter",
            "prometheus-community/prometheus-elasticsearch-exporter",
            "PROMETHEUS_ELASTICSEARCH_EXPORTER",
        ),
    ):
        command = re.search(
            rf"helm install (\S+) {re.escape(ref)}\s(?:(?!helm install).)*?--version (\S+)",
            docs,
            re.DOTALL,
        )
        assert command, f"docs/kubernetes.md does not install {ref} with --version"
        assert command.groups() == (release, pins[pin]), ref


# --- no value is silently ignored -----------------------------------------------------------


def _unread(ours: Mapping[str, Any], defaults: Any, templates: str, path: str = "") -> list[str]:
    """Keys of our values that neither the chart's values.yaml nor its templates know.

    Below a key whose default is empty or not a map (free-form: a config, labels, env) any
    key goes. The charts have no values.schema.json, so helm ignores a misspelt key quietly.
    """
    unread = []
    for key, value in ours.items():
        where = f"{path}.{key}" if path else key
        if not isinstance(defaults, dict) or not defaults:
            break
        if key in defaults:
            if isinstance(value, dict):
                unread += _unread(value, defaults[key], templates, where)
            continue
        if not re.search(rf"(?<![\w.])\.Values\.{re.escape(where)}\b", templates):
            unread.append(where)
    return unread


def test_unread_detects_a_misspelt_key() -> None:
    """The check is not a rubber stamp: a typo is found, a key read by a template is not."""
    defaults = {"prometheus": {"prometheusSpec": {"retention": "10d", "externalLabels": {}}}}
    templates = "{{ .Values.prometheus.prometheusSpec.retentionSize }}"
    ours = {
        "prometheus": {
            "prometheusSpec": {
                "retension": "30d",
                "retentionSize": "45GB",
                "externalLabels": {"stack": "pyobs"},
            }
        }
    }
    assert _unread(ours, defaults, templates) == ["prometheus.prometheusSpec.retension"]


@pytest.mark.parametrize(
    ("chart_name", "pin", "values_file"),
    [
        ("kube-prometheus-stack", "KUBE_PROMETHEUS_STACK", "kube-prometheus-stack.yaml"),
        ("grafana", "GRAFANA", "grafana.yaml"),
        (
            "prometheus-elasticsearch-exporter",
            "PROMETHEUS_ELASTICSEARCH_EXPORTER",
            "elasticsearch-exporter.yaml",
        ),
    ],
    ids=["kube-prometheus-stack", "grafana", "elasticsearch-exporter"],
)
def test_every_value_we_set_is_one_the_chart_reads(
    chart_name: str, pin: str, values_file: str, helm_bin: str
) -> None:
    """No key of our values file is unknown to its chart (a typo would be ignored silently)."""
    path = chart(chart_name, pin)
    defaults = yaml.safe_load((path / "values.yaml").read_text(encoding="utf-8"))
    templates = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted(path.glob("templates/**/*")) if p.is_file()
    )
    ours = _values(values_file)
    ours.pop("grafana.ini", None)  # free-form ini sections: checked rendered, below
    assert _unread(ours, defaults, templates) == []


def test_grafana_ini_sections_reach_grafana(grafana: list[dict[str, Any]]) -> None:
    """Every grafana.ini setting of our values is in the rendered grafana.ini."""
    rendered = _named(grafana, "ConfigMap", "grafana")["data"]["grafana.ini"]
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in rendered.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif " = " in line:
            key, value = line.split(" = ", 1)
            sections.setdefault(current, {})[key] = value
    ours = _values("grafana.yaml")["grafana.ini"]
    assert ours
    for section, settings in ours.items():
        for key, value in settings.items():
            assert sections[section][key] == str(value).lower(), (section, key)
