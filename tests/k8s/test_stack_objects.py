"""The pyobs stack's Kubernetes objects (deploy/stack/): fresh, valid, and the compose files.

Checked here: every object against the Kubernetes OpenAPI schemas and the operators' CRDs
(tests/k8s/kube.py); the PrometheusRules' groups equal prometheus/rules/ and pass promtool;
the dashboards are byte-identical to dashboards/; Alertmanager's config passes amtool; the
setup Job's script makes the compose setup's calls (against a recording HTTP server); the
agent-mode config runs in a real Prometheus agent and remote-writes.

Only a live cluster proves the rest: that kube-prometheus-stack and ECK reconcile these
objects, that Grafana's sidecars load the ConfigMaps, that the Job succeeds against the
Elasticsearch ECK starts. The upstream charts render the values files in
tests/k8s/test_upstream_charts.py.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.conftest import import_or_require, require_service
from tests.helpers import serving, wait_until
from tests.prometheus.conftest import REPO, run_tool, spawn_server, tool

STACK = REPO / "deploy" / "stack"
VALUES = STACK / "values"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@functools.cache
def _loaded() -> list[dict[str, Any]]:
    out = []
    for path in sorted(STACK.rglob("*.yaml")):
        if VALUES in path.parents:
            continue
        out += _docs(path)
    return out


def _objects() -> list[dict[str, Any]]:
    """Every Kubernetes object under deploy/stack (not the values, not the agent's config)."""
    return copy.deepcopy(_loaded())


def _kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in _objects() if obj["kind"] == kind]


def _named(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in _kind(kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def _values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((VALUES / name).read_text(encoding="utf-8"))
    return data


# --- fresh ----------------------------------------------------------------------------------


def test_committed_objects_are_what_the_generator_writes() -> None:
    """`pyobs dashboards build --check` covers deploy/stack and finds nothing stale there."""
    import_or_require("grafana_foundation_sdk")
    from pyobs import _dashgen

    generated = [p for p in _dashgen.generate() if p.startswith("deploy/stack/")]
    assert len(generated) >= 14
    assert not [p for p in _dashgen.stale(REPO) if p.startswith("deploy/")]


def test_a_stale_object_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited PrometheusRule or Logstash object makes `--check` exit 1 and name it."""
    import_or_require("grafana_foundation_sdk")
    from pyobs import _dashgen
    from pyobs.cli import main

    _dashgen.write(tmp_path)
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0
    rules = tmp_path / "deploy/stack/prometheus/rules.yaml"
    rules.write_text(rules.read_text().replace("for: 1m", "for: 10m", 1))
    (tmp_path / "deploy/stack/elastic/logstash.yaml").unlink()
    capsys.readouterr()
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "deploy/stack/prometheus/rules.yaml" in err
    assert "deploy/stack/elastic/logstash.yaml" in err
    assert main(["dashboards", "build", "--root", str(tmp_path)]) == 0
    assert main(["dashboards", "build", "--check", "--root", str(tmp_path)]) == 0


def test_a_changed_source_file_makes_the_objects_stale(tmp_path: Path) -> None:
    """The objects follow the hand-written sources: a new Logstash pipeline line changes them."""
    import_or_require("grafana_foundation_sdk")
    from pyobs import _dashgen
    from pyobs._dashgen import kube

    generated = _dashgen.generate()
    for relative in ("logstash", "jaeger", "elk", "prometheus", "scripts/stack"):
        shutil.copytree(REPO / relative, tmp_path / relative)
    shutil.copy(REPO / ".env.example", tmp_path / ".env.example")
    before = kube.files(generated, tmp_path)
    conf = tmp_path / "logstash" / "pipeline" / "pyobs-logs.conf"
    conf.write_text(conf.read_text() + "# changed\n")
    after = kube.files(generated, tmp_path)
    assert [p for p in before if before[p] != after[p]] == ["deploy/stack/elastic/logstash.yaml"]


# --- valid ----------------------------------------------------------------------------------


def test_every_object_validates_against_kubernetes_and_the_crds() -> None:
    """Each object passes the Kubernetes OpenAPI schema or its operator's CRD schema."""
    from tests.k8s.kube import validate

    objects = _objects()
    kinds = {obj["kind"] for obj in objects}
    assert {
        "PrometheusRule",
        "ServiceMonitor",
        "PrometheusAgent",
        "ConfigMap",
        "Elasticsearch",
        "Kibana",
        "Logstash",
        "Job",
        "StatefulSet",
        "Service",
    } <= kinds
    validate(objects)


def test_validation_catches_a_broken_object() -> None:
    """The validator is not a rubber stamp: a misspelt Logstash field and a bad port fail."""
    from tests.k8s.kube import KubeValidationError, validate

    logstash = _named("Logstash", "pyobs")
    logstash["spec"]["volumeClaimTemplate"] = logstash["spec"].pop("volumeClaimTemplates")
    with pytest.raises(KubeValidationError, match="volumeClaimTemplate"):
        validate([logstash])
    jaeger = _named("StatefulSet", "jaeger")
    jaeger["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "otlp"
    with pytest.raises(KubeValidationError, match="containerPort"):
        validate([jaeger])


def test_references_resolve_to_generated_or_documented_objects() -> None:
    """Every ConfigMap a pod mounts is generated; every Secret key is in the docs' command."""
    objects = _objects()
    configmaps = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ConfigMap"}
    mounted: set[str] = set()
    secret_keys: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "configMap" in node and isinstance(node["configMap"], dict):
                mounted.add(node["configMap"]["name"])
            if "secretKeyRef" in node:
                secret_keys.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    walk([_values("grafana.yaml"), _values("kube-prometheus-stack.yaml")])
    assert mounted and mounted <= configmaps
    from pyobs._dashgen import kube

    docs = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    command = re.search(rf"kubectl create secret generic {kube.CREDENTIALS}.*?```", docs, re.S)
    assert command, "docs/kubernetes.md shows how to create the credentials Secret"
    ours = {key for name, key in secret_keys if name == kube.CREDENTIALS}
    assert ours >= {"LOGSTASH_WRITER_PASSWORD", "GRAFANA_READER_PASSWORD", "MONITOR_PASSWORD"}
    for key in ours | {"GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD"}:
        assert f"--from-literal={key}=" in command.group(0), key
    # The only other Secret is the one ECK makes for the elastic user.
    assert {name for name, _ in secret_keys} == {
        kube.CREDENTIALS,
        f"{kube.ECK_NAME}-es-elastic-user",
    }


# --- the same as the compose files ------------------------------------------------------------


def test_prometheus_rules_equal_the_rule_files_and_pass_promtool(tmp_path: Path) -> None:
    """Each PrometheusRule holds its rule file's groups exactly; promtool accepts them."""
    from pyobs._dashgen import kube

    rules = _kind("PrometheusRule")
    assert {r["metadata"]["name"] for r in rules} == {
        "pyobs-recording",
        "pyobs-alerts",
        "pyobs-stack",
        "pyobs-workers",
    }
    files = []
    for rule in rules:
        name = rule["metadata"]["name"]
        source = yaml.safe_load((REPO / "prometheus" / "rules" / f"{name}.yml").read_text())
        assert rule["spec"]["groups"] == source["groups"], name
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        files.append(str(path))
    output = run_tool(["promtool", "check", "rules", *files], cwd=tmp_path)
    assert output.count("SUCCESS") == len(kube.RULE_FILES), output


def test_dashboard_configmaps_hold_the_dashboards_byte_for_byte() -> None:
    """The sidecar's ConfigMaps carry dashboards/*.json unchanged, labelled and foldered."""
    from pyobs._dashgen import kube

    maps = [m for m in _kind("ConfigMap") if m["metadata"]["labels"].get("grafana_dashboard")]
    assert sorted(
        m["metadata"]["name"].removeprefix("grafana-dashboard-") + ".json" for m in maps
    ) == sorted(kube.DASHBOARDS)
    for configmap in maps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["annotations"]["grafana_folder"] == "pyobs"
        ((name, text),) = configmap["data"].items()
        assert text == (REPO / "dashboards" / name).read_text(encoding="utf-8"), name


def test_datasources_mirror_provisioning_with_in_cluster_services() -> None:
    """Same datasources and uids as compose; URLs point at the Services the objects create."""
    from pyobs._dashgen import kube

    (configmap,) = [
        m for m in _kind("ConfigMap") if m["metadata"]["labels"].get("grafana_datasource") == "1"
    ]
    ours = yaml.safe_load(configmap["data"]["pyobs.yml"])["datasources"]
    compose = yaml.safe_load((REPO / "dashboards/provisioning/datasources/pyobs.yml").read_text())[
        "datasources"
    ]
    assert [d["uid"] for d in ours] == [d["uid"] for d in compose]
    for mine, theirs in zip(ours, compose, strict=True):
        assert {k: v for k, v in mine.items() if k != "url"} == {
            k: v for k, v in theirs.items() if k != "url"
        }
    urls = {d["uid"]: d["url"] for d in ours}
    # ECK names Elasticsearch's Service <name>-es-http; kube-prometheus-stack <fullname>-*.
    assert _named("Elasticsearch", kube.ECK_NAME)
    assert urls["elasticsearch"] == f"http://{kube.ECK_NAME}-es-http:9200"
    kps = _values("kube-prometheus-stack.yaml")["fullnameOverride"]
    assert urls["prometheus"] == f"http://{kps}-prometheus:9090"
    assert urls["alertmanager"] == f"http://{kps}-alertmanager:9093"
    jaeger = _named("Service", "jaeger")
    assert urls["jaeger"] == "http://jaeger:16686"
    assert 16686 in [p["port"] for p in jaeger["spec"]["ports"]]


def test_alertmanager_values_are_the_compose_config_and_pass_amtool(tmp_path: Path) -> None:
    """kube-prometheus-stack gets alertmanager.yml's routes, inhibitions, receivers, template."""
    values = _values("kube-prometheus-stack.yaml")["alertmanager"]
    compose = yaml.safe_load((REPO / "prometheus/alertmanager.yml").read_text())
    config = values["config"]
    for key in ("route", "inhibit_rules", "receivers", "global"):
        assert config[key] == compose[key], key
    template = (REPO / "prometheus/templates/pyobs.tmpl").read_text()
    assert values["templateFiles"] == {"pyobs.tmpl": template}
    # amtool with the template where the chart mounts it, relative to a temp directory.
    (tmp_path / "pyobs.tmpl").write_text(template)
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump({**config, "templates": [str(tmp_path / "*.tmpl")]}))
    output = run_tool(["amtool", "check-config", str(path)], cwd=tmp_path)
    assert "SUCCESS" in output and "1 templates" in output, output


def test_prometheus_values_select_every_rule_and_monitor() -> None:
    """Prometheus picks up PrometheusRules and ServiceMonitors from any release, keeps exemplars."""
    spec = _values("kube-prometheus-stack.yaml")["prometheus"]["prometheusSpec"]
    for kind in ("rule", "serviceMonitor", "podMonitor"):
        assert spec[f"{kind}SelectorNilUsesHelmValues"] is False
        assert spec[f"{kind}Selector"] == {} and spec[f"{kind}NamespaceSelector"] == {}
    assert "exemplar-storage" in spec["enableFeatures"]
    compose = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())["global"]
    assert spec["scrapeInterval"] == compose["scrape_interval"]
    assert spec["evaluationInterval"] == compose["evaluation_interval"]


def test_logstash_runs_the_compose_pipelines_with_a_persistent_queue() -> None:
    """ECK's Logstash: logstash/'s settings and pipelines, queue on a claim, http input on 8080."""
    configmap = _named("ConfigMap", "pyobs-logstash-pipeline")
    pipeline_dir = REPO / "logstash" / "pipeline"
    assert configmap["data"] == {p.name: p.read_text() for p in sorted(pipeline_dir.glob("*.conf"))}
    spec = _named("Logstash", "pyobs")["spec"]
    assert spec["config"] == yaml.safe_load((REPO / "logstash/config/logstash.yml").read_text())
    assert spec["config"]["queue.type"] == "persisted"
    pipelines = yaml.safe_load((REPO / "logstash/config/pipelines.yml").read_text())
    assert spec["pipelines"] == pipelines
    mount = spec["podTemplate"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    for pipeline in pipelines:
        assert (pipeline_dir / Path(pipeline["path.config"]).name).is_file()
        assert pipeline["path.config"].startswith(mount + "/")
    # ECK mounts the claim named logstash-data on /usr/share/logstash/data (queue and DLQ).
    assert [c["metadata"]["name"] for c in spec["volumeClaimTemplates"]] == ["logstash-data"]
    ports = {p["port"] for s in spec["services"] for p in s["service"]["spec"]["ports"]}
    assert 8080 in ports and "port => 8080" in configmap["data"]["pyobs-logs.conf"]


def test_jaeger_runs_the_compose_config_with_badger_on_its_claim() -> None:
    """Jaeger's ConfigMap is jaeger/config.yaml; Badger's directories lie on the claim."""
    config_text = (REPO / "jaeger" / "config.yaml").read_text()
    assert _named("ConfigMap", "jaeger")["data"] == {"config.yaml": config_text}
    statefulset = _named("StatefulSet", "jaeger")["spec"]
    assert statefulset["replicas"] == 1  # Badger: one writer
    (container,) = statefulset["template"]["spec"]["containers"]
    claims = {c["metadata"]["name"] for c in statefulset["volumeClaimTemplates"]}
    data_mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    badger = yaml.safe_load(config_text)["extensions"]["jaeger_storage"]["backends"]["traces"]
    for directory in badger["badger"]["directories"].values():
        assert any(directory.startswith(m + "/") for m in data_mounts), directory
    assert badger["badger"]["ephemeral"] is False


# --- the setup Job --------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Elasticsearch and Kibana stand-in: records each call, answers as told."""

    calls: ClassVar[list[tuple[str, str, bytes]]] = []
    answers: ClassVar[dict[tuple[str, str], int]] = {}
    lock = threading.Lock()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?")[0]
        with self.lock:
            self.calls.append((self.command, path, body))
        status = self.answers.get((self.command, path), 200)
        payload = b'{"success":true,"acknowledged":true}' if status == 200 else b'{"error":"x"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def recorder() -> Iterator[str]:
    """A fresh recording server; its calls and planned answers reset per test."""
    _Recorder.calls = []
    _Recorder.answers = {}
    with serving(_Recorder) as url:
        yield url


PASSWORDS = {
    "LOGSTASH_WRITER_PASSWORD": "writer-password-123",
    "GRAFANA_READER_PASSWORD": "reader-password-123",
    "MONITOR_PASSWORD": "monitor-password-123",
}


def _run_setup(tmp_path: Path, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    require_service(shutil.which("curl") is not None, "curl is not installed")
    (configmap,) = [m for m in _kind("ConfigMap") if m["metadata"]["name"] == "pyobs-elk-setup"]
    assets = tmp_path / "assets"
    assets.mkdir(exist_ok=True)
    for name, text in configmap["data"].items():
        (assets / name).write_text(text)
    job = _kind("Job")[0]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["sh", "/assets/setup.sh"]
    return subprocess.run(
        ["sh", str(assets / "setup.sh")],
        env={
            "PATH": "/usr/bin:/bin",
            "ES_URL": url,
            "KIBANA_URL": url,
            "ELASTIC_PASSWORD": "elastic-password",
            "ASSETS_DIR": str(assets),
            "TMPDIR": str(tmp_path),
            **PASSWORDS,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _compose_security_calls(url: str) -> list[tuple[str, str, Any]]:
    """The role and user calls of the compose setup job (scripts/stack/setup.py)."""
    from pyobs._dashgen import kube

    setup = kube._setup_module(REPO)
    start = len(_Recorder.calls)
    setup.configure_security(
        setup.Client(url, "elastic", "elastic-password"),
        {**PASSWORDS, "KIBANA_SYSTEM_PASSWORD": "kibana-password-123"},
    )
    return [
        (method, path, json.loads(body))
        for method, path, body in _Recorder.calls[start:]
        if "kibana_system" not in path  # ECK sets up Kibana's own credentials
    ]


def test_setup_job_makes_the_compose_setup_calls(tmp_path: Path, recorder: str) -> None:
    """The Job's script puts compose's roles and users, elk/'s assets, then Kibana's objects."""
    result = _run_setup(tmp_path, recorder)
    assert result.returncode == 0, result.stderr
    assert "setup: done" in result.stdout
    calls = list(_Recorder.calls)
    compose = _compose_security_calls(recorder)
    job = [(m, p, json.loads(b)) for m, p, b in calls if p.startswith("/_security/")]
    assert job == compose
    sent = {(m, p): b for m, p, b in calls}
    for name, path in (
        ("ingest-pipeline.json", "/_ingest/pipeline/pyobs-logs"),
        ("index-template.json", "/_index_template/logs-pyobs"),
        ("failure-index-template.json", "/_index_template/pyobs-logs-failures"),
    ):
        assert json.loads(sent[("PUT", path)]) == json.loads((REPO / "elk" / name).read_text())
    assert json.loads(sent[("PUT", "/_data_stream/logs-pyobs-*/_lifecycle")]) == {
        "data_retention": "30d"
    }
    ndjson = (REPO / "elk/kibana/pyobs-logs.ndjson").read_bytes()
    assert ndjson in sent[("POST", "/api/saved_objects/_import")]
    from pyobs._elk.setup import REJECTED_RULE_ID, rejected_rule

    assert json.loads(sent[("POST", f"/api/alerting/rule/{REJECTED_RULE_ID}")]) == rejected_rule()


def test_setup_job_updates_an_existing_kibana_rule(tmp_path: Path, recorder: str) -> None:
    """A second run finds the rule (409) and updates it instead of failing."""
    from pyobs._elk.setup import REJECTED_RULE_ID

    _Recorder.answers[("POST", f"/api/alerting/rule/{REJECTED_RULE_ID}")] = 409
    result = _run_setup(tmp_path, recorder)
    assert result.returncode == 0, result.stderr
    assert ("PUT", f"/api/alerting/rule/{REJECTED_RULE_ID}") in {
        (m, p) for m, p, _ in _Recorder.calls
    }


def test_setup_job_fails_loudly_on_a_refused_call(tmp_path: Path, recorder: str) -> None:
    """Elasticsearch refusing the index template fails the Job, naming the step."""
    _Recorder.answers[("PUT", "/_index_template/logs-pyobs")] = 400
    result = _run_setup(tmp_path, recorder)
    assert result.returncode == 1
    assert "FAIL: index template logs-pyobs: HTTP 400" in result.stderr
    assert not [c for c in _Recorder.calls if c[1].startswith("/api/")]  # stopped there


def test_setup_job_refuses_an_unsafe_password(tmp_path: Path, recorder: str) -> None:
    """A password compose's setup would refuse is refused before any user is written."""
    result = _run_setup(tmp_path, recorder, GRAFANA_READER_PASSWORD='short"pw')
    assert result.returncode == 2
    assert "GRAFANA_READER_PASSWORD must be at least 12 characters" in result.stderr
    assert not [c for c in _Recorder.calls if "pyobs_grafana_reader" in c[1] and "user" in c[1]]


# --- Prometheus in agent mode ---------------------------------------------------------------


class _RemoteWrite(BaseHTTPRequestHandler):
    """A long-term store's remote-write endpoint: counts the pushes it gets."""

    pushes: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        """Accept one push."""
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.pushes.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_agent_config_runs_in_a_real_prometheus_agent(tmp_path: Path) -> None:
    """The agent config has no rules, passes promtool and remote-writes from a real agent."""
    config = yaml.safe_load((STACK / "agent" / "prometheus.yml").read_text())
    assert "rule_files" not in config and "alerting" not in config  # an agent refuses them
    output = run_tool(["promtool", "check", "config", str(STACK / "agent" / "prometheus.yml")])
    assert "SUCCESS" in output, output
    password = tmp_path / "remote-write-password"
    password.write_text("secret")
    _RemoteWrite.pushes = []
    with serving(_RemoteWrite) as store:

        def at(port: int) -> Path:
            # The generated config, pointed at 127.0.0.1: the store above, the agent itself.
            local = dict(config)
            local["remote_write"] = [{**config["remote_write"][0], "url": f"{store}/api/v1/push"}]
            local["remote_write"][0]["basic_auth"]["password_file"] = str(password)
            local["scrape_configs"] = [
                {
                    "job_name": "agent",
                    "scrape_interval": "1s",  # a first push within seconds, not 15 s
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
            ]
            local["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
            path = tmp_path / f"agent-{port}.yml"
            path.write_text(yaml.safe_dump(local))
            return path

        # Prometheus 3 has --agent; 2.x (Debian's) the agent feature flag.
        binary = tool("prometheus")
        run = subprocess.run([binary, "--help"], capture_output=True, text=True, check=False)
        help_text = run.stdout + run.stderr
        mode = (
            "--agent" if re.search(r"^\s+--agent\b", help_text, re.M) else "--enable-feature=agent"
        )
        agent = spawn_server(
            "prometheus-agent",
            lambda port: [
                binary,
                f"--config.file={at(port)}",
                mode,
                f"--storage.agent.path={tmp_path / 'agent-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            "/-/ready",
            tmp_path,
        )
        try:
            wait_until(lambda: _RemoteWrite.pushes, 60, "a remote-write push from the agent")
        finally:
            agent.stop()
    push = _RemoteWrite.pushes[0]
    assert push.get("Content-Encoding") == "snappy"
    assert push.get("Authorization", "").startswith("Basic ")


def test_pyobs_own_pods_meet_the_restricted_pod_security_standard() -> None:
    """Jaeger's and the setup Job's pods run in a namespace enforcing "restricted"."""
    from tests.k8s.kube import restricted_problems

    assert restricted_problems(_named("StatefulSet", "jaeger")["spec"]["template"]["spec"]) == []
    (job,) = _kind("Job")
    assert restricted_problems(job["spec"]["template"]["spec"]) == []
    broken = _named("StatefulSet", "jaeger")["spec"]["template"]["spec"]
    broken["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert restricted_problems(broken)  # the check is not a rubber stamp


def test_the_service_chart_points_at_this_stack(helm_bin: str) -> None:
    """The service chart's defaults reach the Logstash and Jaeger Services these objects make,
    and its monitor's job is the one the PyobsInstanceDown rule selects."""
    from pyobs._dashgen import kube
    from tests.k8s.kube import by_kind, helm_template, one

    chart = helm_template(REPO / "deploy" / "helm" / "pyobs-service", namespace="shop")
    env = {
        e["name"]: e.get("value")
        for e in one(chart, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    namespace = yaml.safe_load((REPO / "deploy/helm/pyobs-service/values.yaml").read_text())[
        "stackNamespace"
    ]

    def service_ports(name: str) -> set[int]:
        """Ports of a Service this stack creates (ECK's Logstash: <name>-ls-<service>)."""
        for logstash in _kind("Logstash"):
            for service in logstash["spec"]["services"]:
                if f"{logstash['metadata']['name']}-ls-{service['name']}" == name:
                    return {p["port"] for p in service["service"]["spec"]["ports"]}
        found = [s for s in _kind("Service") if s["metadata"]["name"] == name]
        return {p["port"] for s in found for p in s["spec"]["ports"]}

    for variable in ("PYOBS_LOGSTASH_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        match = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", env[variable])
        assert match, env[variable]
        assert match.group(2) == namespace
        assert int(match.group(3)) in service_ports(match.group(1)), env[variable]
    assert env["PYOBS_LOGSTASH_URL"] == f"http://{kube.ECK_NAME}-ls-http.{namespace}.svc:8080"
    (monitor,) = by_kind(chart, "ServiceMonitor")
    jobs = [
        r["replacement"]
        for r in monitor["spec"]["endpoints"][0]["relabelings"]
        if r.get("targetLabel") == "job"
    ]
    alerts = _named("PrometheusRule", "pyobs-alerts")["spec"]["groups"]
    exprs = [r["expr"] for g in alerts for r in g["rules"] if r.get("alert") == "PyobsInstanceDown"]
    assert jobs and f'job="{jobs[0]}"' in exprs[0]
