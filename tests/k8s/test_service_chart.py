"""The pyobs-service Helm chart: it lints, renders valid objects, and wires pyobs as documented.

Each variant of the values is rendered once per module (helm template) and checked against
the Kubernetes and Prometheus Operator schemas (tests/k8s/kube.py); the environment is fed
through pyobs's own configuration parser, as the app would read it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyobs import _config, _otel_env
from tests.k8s import kube

pytestmark = pytest.mark.service

CHART = kube.REPO / "deploy" / "helm" / "pyobs-service"
RELEASE = "checkout"
NAMESPACE = "shop"
TOKEN = "s3cret-token"
POD = {
    "metadata.name": "checkout-pyobs-service-7d9f-abcde",
    "metadata.namespace": NAMESPACE,
    "spec.nodeName": "node-3",
    "metadata.uid": "0b0e5c1a-55aa-4f7e-9a35-2f1c2a3b4c5d",
}

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "podmonitor-own-port": {"metrics": {"port": 9464, "monitor": {"kind": "PodMonitor"}}},
    "auth-off": {"metrics": {"auth": {"enabled": False}}},
    "auth-existing-secret": {
        "metrics": {"auth": {"existingSecret": "team-metrics", "secretKey": "bearer"}}
    },
    "spool-pvc": {"logs": {"spool": {"volume": "persistentVolumeClaim", "size": "5Gi"}}},
    "spool-ephemeral": {"logs": {"spool": {"volume": "ephemeral", "storageClassName": "fast"}}},
    "hpa-pdb": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "podDisruptionBudget": {"enabled": True},
        "metrics": {"multiprocess": {"medium": "Memory"}},
    },
    "elasticsearch-named": {
        "pyobs": {"serviceName": "checkout-api", "environment": "production"},
        "logs": {
            "shipper": "elasticsearch",
            "elasticsearch": {"existingSecret": "es-writer", "apiKeyKey": "api-key"},
        },
        "tracing": {"resourceAttributes": {"team": "payments"}},
    },
    "custom-probes": {
        "probes": {
            "liveness": {"path": "/internal/alive"},
            "readiness": {"path": "/internal/ready.json"},
            "startup": {"path": "/internal/alive"},
        }
    },
    "quiet": {"tracing": {"enabled": False}, "logs": {"shipper": "none"}},
}


@pytest.fixture(scope="module")
def rendered(helm_bin: str) -> dict[str, list[dict[str, Any]]]:
    """Every variant rendered once by helm template (release checkout, namespace shop)."""
    return {
        name: kube.helm_template(CHART, values, release=RELEASE, namespace=NAMESPACE)
        for name, values in VARIANTS.items()
    }


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The app container of the Deployment."""
    containers = kube.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app"]
    return dict(containers[0])


def secrets_of(objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The value of every Secret key the chart reads: its own Secret's, else TOKEN."""
    import base64

    values: dict[tuple[str, str], str] = {}
    for secret in kube.by_kind(objects, "Secret"):
        for key, data in secret["data"].items():
            values[(secret["metadata"]["name"], key)] = base64.b64decode(data).decode()
    for item in container(objects).get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            values.setdefault((ref["name"], ref["key"]), TOKEN)
    return values


def app_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The app's environment as the kubelet hands it over (Downward API, Secrets expanded)."""
    return kube.resolve_env(container(objects), POD, secrets_of(objects))


def volume_of(objects: list[dict[str, Any]], path: str) -> dict[str, Any]:
    """The pod volume mounted at exactly this path in the app container."""
    mounts = {m["mountPath"]: m["name"] for m in container(objects)["volumeMounts"]}
    assert path in mounts, f"{path} is not a mounted volume: {sorted(mounts)}"
    volumes = kube.one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    return dict(next(v for v in volumes if v["name"] == mounts[path]))


def test_chart_lints_strictly(helm_bin: str) -> None:
    """`helm lint --strict` passes with the defaults (at the oldest and newest Kubernetes)."""
    for version in kube.KUBERNETES_VERSIONS:
        result = kube.helm_lint(CHART, strict=True, kubernetes_version=version)
        assert result.ok, result.output


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "defaults"])
def test_variants_lint_strictly(helm_bin: str, variant: str) -> None:
    """Every documented switch passes `helm lint --strict` (schema included)."""
    result = kube.helm_lint(CHART, VARIANTS[variant], strict=True)
    assert result.ok, result.output


@pytest.mark.parametrize("version", kube.KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_validates(
    rendered: dict[str, list[dict[str, Any]]], variant: str, version: str
) -> None:
    """Each rendered object validates against Kubernetes' schema or its operator's CRD."""
    kube.validate(rendered[variant], version)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"metrics": {"monitor": {"kind": "Probe"}}}, "at '/metrics/monitor/kind'"),
        ({"logs": {"spool": {"volume": "hostPath"}}}, "at '/logs/spool/volume'"),
        ({"probes": {"liveness": {"path": "health"}}}, "at '/probes/liveness/path'"),
        ({"metrics": {"monitor": {"interval": "30 seconds"}}}, "at '/metrics/monitor/interval'"),
        ({"tracing": {"resourceAttributes": {"team": "a,b"}}}, "resourceAttributes/team"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ],
)
def test_bad_values_fail_lint_with_the_schema_message(
    helm_bin: str, values: dict[str, Any], message: str
) -> None:
    """A wrong value fails `helm lint` naming where it is (values.schema.json)."""
    result = kube.helm_lint(CHART, values)
    assert not result.ok
    assert message in result.output, result.output


def test_shared_claim_refuses_read_write_once_with_several_pods(helm_bin: str) -> None:
    """A ReadWriteOnce spool claim shared by 2 replicas fails to render, saying why."""
    values = {
        "logs": {"spool": {"volume": "persistentVolumeClaim", "accessModes": ["ReadWriteOnce"]}}
    }
    with pytest.raises(kube.HelmError, match="with more than one replica use accessModes"):
        kube.helm_template(CHART, values)
    single = kube.helm_template(CHART, {**values, "replicaCount": 1})
    kube.validate(single)


def test_service_name_comes_from_the_release(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """pyobs sees the release name as its service name, unless pyobs.serviceName is set."""
    config = _config.load_config(app_env(rendered["defaults"]))
    assert config.service_name == RELEASE
    assert config.service_version == "0.1.0"  # the image tag (the chart's appVersion)
    named = _config.load_config(app_env(rendered["elasticsearch-named"]))
    assert (named.service_name, named.environment) == ("checkout-api", "production")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pyobs_accepts_the_environment(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """Every PYOBS_/OTEL_ value the chart sets parses in pyobs's own configuration."""
    env = app_env(rendered[variant])
    _config.load_config(env)
    assert not [value for value in env.values() if "$(" in value], env  # all expanded


def test_resource_attributes_come_from_the_downward_api(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Spans carry the pod, namespace and node the kubelet fills in."""
    attributes = _otel_env.resource_attributes(app_env(rendered["elasticsearch-named"]))
    assert attributes["k8s.pod.name"] == POD["metadata.name"]
    assert attributes["k8s.namespace.name"] == NAMESPACE
    assert attributes["k8s.node.name"] == "node-3"
    assert attributes["k8s.pod.uid"] == POD["metadata.uid"]
    assert attributes["service.instance.id"] == POD["metadata.name"]
    assert attributes["deployment.environment.name"] == "production"
    assert attributes["team"] == "payments"


def test_traces_and_logs_go_to_the_in_cluster_stack(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """By default traces go to the stack's Jaeger and logs to its Logstash http input."""
    env = app_env(rendered["defaults"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger.observability.svc:4318"
    assert _otel_env.exporter_names(env) == ["otlp"]
    config = _config.load_config(env)
    assert config.logstash_url == "http://pyobs-ls-http.observability.svc:8080"
    assert config.tracing
    es = _config.load_config(app_env(rendered["elasticsearch-named"]))
    assert es.elasticsearch_url == "http://pyobs-es-http.observability.svc:9200"
    assert es.elasticsearch_api_key == TOKEN  # from the Secret key named in the values
    assert es.logstash_url is None
    quiet = _config.load_config(app_env(rendered["quiet"]))
    assert not quiet.tracing and quiet.logstash_url is None and quiet.log_spool_dir is None


@pytest.mark.parametrize("variant", ["defaults", "custom-probes"])
def test_probes_hit_paths_pyobs_does_not_observe(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """Liveness, readiness and startup probes produce no metrics, spans or access logs."""
    objects = rendered[variant]
    app = container(objects)
    config = _config.load_config(app_env(objects))
    ports = {p["name"] for p in app["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = app[probe]["httpGet"]
        assert get["port"] in ports
        assert config.is_excluded(get["path"]), f"{probe} {get['path']} would be observed"
    assert not config.is_excluded("/internal/alivex")  # full match: nothing more


def test_probe_paths_can_be_left_observed(helm_bin: str) -> None:
    """With excludeFromTelemetry off a custom probe path is observed: the switch is real."""
    values = {"probes": {"excludeFromTelemetry": False, "liveness": {"path": "/internal/alive"}}}
    objects = kube.helm_template(CHART, values)
    assert not _config.load_config(app_env(objects)).is_excluded("/internal/alive")


def monitor_endpoint(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ServiceMonitor or PodMonitor, its single endpoint)."""
    monitors = kube.by_kind(objects, "ServiceMonitor") + kube.by_kind(objects, "PodMonitor")
    assert len(monitors) == 1, [m["kind"] for m in monitors]
    spec = monitors[0]["spec"]
    endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints")
    assert endpoints and len(endpoints) == 1
    return monitors[0], endpoints[0]


def assert_selected(selector: dict[str, Any], labels: dict[str, str]) -> None:
    """The label selector matches these labels."""
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= labels.items(), (selector, labels)


@pytest.mark.parametrize("variant", ["defaults", "auth-existing-secret", "elasticsearch-named"])
def test_service_monitor_scrapes_the_service_with_the_apps_secret(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """The ServiceMonitor selects the Service, its port, the path and the token pyobs checks."""
    objects = rendered[variant]
    monitor, endpoint = monitor_endpoint(objects)
    assert monitor["kind"] == "ServiceMonitor"
    service = kube.one(objects, "Service")
    assert_selected(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    target = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert target["targetPort"] in {p["name"] for p in container(objects)["ports"]}
    env = app_env(objects)
    config = _config.load_config(env)
    assert endpoint["path"] == config.metrics_path
    credentials = endpoint["authorization"]["credentials"]
    sent = secrets_of(objects)[(credentials["name"], credentials["key"])]
    assert config.metrics_auth == _config.MetricsAuth("bearer", "", sent)
    relabeled = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
    assert relabeled == {"job": "pyobs-services", "service": config.service_name}


def test_existing_secret_is_read_not_created(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """With metrics.auth.existingSecret the chart makes no Secret and reads the named key."""
    objects = rendered["auth-existing-secret"]
    assert kube.by_kind(objects, "Secret") == []
    _, endpoint = monitor_endpoint(objects)
    assert endpoint["authorization"]["credentials"] == {"name": "team-metrics", "key": "bearer"}
    assert _config.load_config(app_env(objects)).metrics_auth.secret == TOKEN  # type: ignore[union-attr]


def test_pod_monitor_on_its_own_metrics_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The PodMonitor selects the pods and scrapes the port pyobs serves metrics on."""
    objects = rendered["podmonitor-own-port"]
    monitor, endpoint = monitor_endpoint(objects)
    assert monitor["kind"] == "PodMonitor"
    template = kube.one(objects, "Deployment")["spec"]["template"]
    assert_selected(monitor["spec"]["selector"], template["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    config = _config.load_config(app_env(objects))
    assert ports[endpoint["port"]] == config.metrics_port == 9464
    credentials = endpoint["authorization"]["credentials"]
    assert config.metrics_auth is not None
    assert (
        config.metrics_auth.secret == secrets_of(objects)[(credentials["name"], credentials["key"])]
    )


def test_auth_off_leaves_metrics_open(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """metrics.auth.enabled=false: no Secret, no PYOBS_METRICS_AUTH, no credentials sent."""
    objects = rendered["auth-off"]
    assert kube.by_kind(objects, "Secret") == []
    assert _config.load_config(app_env(objects)).metrics_auth is None
    _, endpoint = monitor_endpoint(objects)
    assert "authorization" not in endpoint


def test_generated_token_is_long_and_random(helm_bin: str) -> None:
    """Without a token value the chart's Secret holds 40 random characters, new per install."""
    first, second = (
        secrets_of(kube.helm_template(CHART))[("demo-pyobs-service-metrics", "token")]
        for _ in range(2)
    )
    assert len(first) == len(second) == 40 and first != second


def test_writable_places_are_volumes_on_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Non-root, read-only root filesystem; the multiprocess dir, spool and /tmp are volumes."""
    objects = rendered["defaults"]
    app = container(objects)
    pod = kube.one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["allowPrivilegeEscalation"] is False
    config = _config.load_config(app_env(objects))
    assert config.multiproc_dir and config.log_spool_dir
    assert "emptyDir" in volume_of(objects, config.multiproc_dir)
    assert volume_of(objects, config.log_spool_dir)["emptyDir"] == {"sizeLimit": "1Gi"}
    assert "emptyDir" in volume_of(objects, "/tmp")
    memory = _config.load_config(app_env(rendered["hpa-pdb"])).multiproc_dir
    assert memory is not None
    assert volume_of(rendered["hpa-pdb"], memory)["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pods_meet_the_restricted_pod_security_standard(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """The pods are admitted in a namespace that enforces the "restricted" standard."""
    specs = kube.pod_specs(rendered[variant])
    assert len(specs) == 1
    assert kube.restricted_problems(specs[0][1]) == []


def test_spool_on_a_shared_claim(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """logs.spool.volume=persistentVolumeClaim: one ReadWriteMany claim, kept on uninstall."""
    objects = rendered["spool-pvc"]
    claim = kube.one(objects, "PersistentVolumeClaim")
    spool = volume_of(objects, _config.load_config(app_env(objects)).log_spool_dir or "")
    assert spool["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_spool_on_an_ephemeral_claim(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """logs.spool.volume=ephemeral: a per-pod claim of the chosen StorageClass."""
    objects = rendered["spool-ephemeral"]
    assert kube.by_kind(objects, "PersistentVolumeClaim") == []
    spool = volume_of(objects, _config.load_config(app_env(objects)).log_spool_dir or "")
    claim = spool["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "fast" and claim["accessModes"] == ["ReadWriteOnce"]


def test_autoscaler_and_disruption_budget(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The HPA scales the Deployment (which leaves replicas to it); the PDB covers its pods."""
    objects = rendered["hpa-pdb"]
    deployment = kube.one(objects, "Deployment")
    assert "replicas" not in deployment["spec"]
    hpa = kube.one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    pdb = kube.one(objects, "PodDisruptionBudget")
    assert_selected(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1
    assert kube.by_kind(rendered["defaults"], "HorizontalPodAutoscaler") == []


# Values passed through as Kubernetes objects: documented as a whole.
KUBERNETES_OBJECTS = {"resources", "podSecurityContext", "securityContext"}


def leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of a values tree (maps and lists left empty are leaves)."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in KUBERNETES_OBJECTS:
            out += leaf_paths(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_every_value_is_documented() -> None:
    """docs/helm-chart.md names every value of values.yaml (its section and its own name)."""
    import yaml

    docs = (kube.REPO / "docs" / "helm-chart.md").read_text(encoding="utf-8")
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    missing = [
        path
        for path in leaf_paths(values)
        if f"`{path.split('.')[0]}" not in docs or path.split(".")[-1] not in docs
    ]
    assert missing == []
