"""The validator of tests/k8s/kube.py: it rejects what a cluster would refuse."""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import pytest

from tests.k8s import kube

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app.kubernetes.io/name": "web"}},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "example/web:1"}]},
        },
    },
}
SERVICE_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "endpoints": [
            {
                "port": "http",
                "path": "/metrics",
                "authorization": {"credentials": {"name": "web-metrics", "key": "token"}},
            }
        ],
    },
}


def changed(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of obj with the dotted path set to value (list indexes as numbers)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return out


@pytest.mark.parametrize("version", kube.KUBERNETES_VERSIONS)
def test_valid_objects_pass(version: str) -> None:
    """A correct Deployment and ServiceMonitor validate at both Kubernetes versions."""
    kube.validate([DEPLOYMENT, SERVICE_MONITOR], version)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.replicas", "two", "spec.replicas: 'two' is not of type 'integer'"),
        ("spec.template.spec.containers.0.imagePullPolicy", 3, "imagePullPolicy: 3 is not of"),
        ("spec.template.spec.containers.0.ports", [{"containerPort": "http"}], "containerPort"),
        ("spec.strategy", {"type": "Recreate", "maxSurge": 1}, "'maxSurge' was unexpected"),
        ("metadata.name", "Web_1", "metadata.name 'Web_1' is not a DNS-1123 subdomain"),
        ("metadata.labels", {"team": "a b"}, "metadata.labels.team: 'a b' is not a valid label"),
    ],
)
def test_bad_deployment_is_rejected(path: str, value: Any, expected: str) -> None:
    """A wrong type, an unknown field or a bad name in a Deployment is reported, with where."""
    found = kube.problems([changed(DEPLOYMENT, path, value)])
    assert any(expected in problem for problem in found), found
    with pytest.raises(kube.KubeValidationError, match="apps/v1 Deployment"):
        kube.validate([changed(DEPLOYMENT, path, value)])


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.endpoints.0.interval", 30, "spec.endpoints.0.interval: 30 is not of type 'string'"),
        ("spec.endpoints.0.interval", "30 seconds", "does not match"),
        ("spec.endpoints.0.timeoutSeconds", 5, "'timeoutSeconds' was unexpected"),
        ("spec.endpoints.0.authorization.credentials.secret", "s", "'secret' was unexpected"),
        ("spec.selectr", {}, "'selectr' was unexpected"),
        ("spec.endpoints", "http", "spec.endpoints: 'http' is not of type 'array'"),
    ],
)
def test_bad_service_monitor_is_rejected(path: str, value: Any, expected: str) -> None:
    """A wrong type or an unknown field in a ServiceMonitor fails against its CRD schema."""
    found = kube.problems([changed(SERVICE_MONITOR, path, value)])
    assert any(expected in problem for problem in found), found


def test_unknown_kind_and_unserved_version_fail() -> None:
    """A kind nobody defines, or a CRD version the operator does not serve, is a failure."""
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    old = changed(SERVICE_MONITOR, "apiVersion", "monitoring.coreos.com/v1alpha1")
    found = kube.problems([unknown, old])
    assert any("Widget 'w': unknown kind" in problem for problem in found), found
    assert any("v1alpha1 is not served by the CRD" in problem for problem in found), found


def test_api_removed_since_the_floor_fails_at_latest() -> None:
    """An API version Kubernetes removed (autoscaling/v2beta2 in 1.26) does not validate."""
    hpa = {
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "maxReplicas": 3,
        },
    }
    assert kube.problems([hpa], kube.LATEST_KUBERNETES)
    assert not kube.problems([changed(hpa, "apiVersion", "autoscaling/v2")])


def test_preserve_unknown_fields_is_honoured() -> None:
    """ECK's podTemplate keeps unknown fields (its schema says so); its spec does not."""
    kibana = {
        "apiVersion": "kibana.k8s.elastic.co/v1",
        "kind": "Kibana",
        "metadata": {"name": "kibana"},
        "spec": {"version": "8.17.0", "count": 1, "podTemplate": {"spec": {"anything": 1}}},
    }
    assert kube.problems([kibana]) == []
    typo = kube.problems([changed(kibana, "spec.cuont", 1)])
    assert any("'cuont' was unexpected" in problem for problem in typo), typo


def test_crd_files_match_their_recorded_source() -> None:
    """Every CRD file is listed in deploy/crds/SOURCES.md with its hash: no hand edits."""
    sources = (kube.CRD_DIR / "SOURCES.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| (\S+\.yaml) \| ([0-9a-f]{64}) \|$", sources, re.MULTILINE))
    files = {
        str(path.relative_to(kube.CRD_DIR)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in kube.CRD_DIR.rglob("*.yaml")
    }
    assert files == recorded
    kinds = {kind for _, kind in kube.crds()}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Elasticsearch", "Kibana"} <= kinds


def test_restricted_pod_security_is_checked() -> None:
    """A pod that meets "restricted" passes; each usual slip is named."""
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "app",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    assert kube.restricted_problems(good) == []
    slips = {
        "volumes.0": ({"name": "logs", "hostPath": {"path": "/var/log"}}, "['hostPath'] is not"),
        "securityContext.runAsNonRoot": (False, "runAsNonRoot is not true"),
        "securityContext.seccompProfile": ({"type": "Unconfined"}, "seccompProfile is not"),
        "containers.0.securityContext.capabilities": ({"drop": ["NET_RAW"]}, "drop does not"),
        "containers.0.securityContext.allowPrivilegeEscalation": (True, "allowPrivilegeEscal"),
        "hostNetwork": (True, "hostNetwork is set"),
    }
    for path, (value, expected) in slips.items():
        found = kube.restricted_problems(changed(good, path, value))
        assert any(expected in problem for problem in found), (path, found)
    specs = kube.pod_specs([DEPLOYMENT, SERVICE_MONITOR])
    assert [where for where, _ in specs] == ["apps/v1 Deployment 'web'"]
    assert "container web: runAsNonRoot is not true" in kube.restricted_problems(specs[0][1])
