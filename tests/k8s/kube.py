"""Shared Kubernetes tooling for the tests: helm (lint, template) and a validator that checks
every rendered object against the Kubernetes OpenAPI schemas or an operator's CRD schema.

Nothing passes silently: a kind that is neither a Kubernetes kind nor one of the CRDs kept in
deploy/crds (deploy/crds/SOURCES.md says where each comes from) is a failure.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.conftest import require_service

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "deploy" / "crds"
HELM_SCRIPT = REPO / "scripts" / "setup.d" / "50-helm.sh"

# The oldest Kubernetes minor the charts support (Chart.yaml's kubeVersion). Validating at the
# floor with strict schemas rejects any field newer than it; validating again at the newest
# schema kubernetes-validate ships (LATEST_KUBERNETES) catches an API removed since.
MIN_KUBERNETES = "1.31"
LATEST_KUBERNETES = kubernetes_validate.latest_version()
KUBERNETES_VERSIONS = (MIN_KUBERNETES, LATEST_KUBERNETES)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class HelmError(AssertionError):
    """helm exited non-zero; the message holds its command and output."""


@dataclass(frozen=True)
class HelmResult:
    """What one helm run printed and how it exited."""

    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        """True when helm exited 0."""
        return self.returncode == 0


def helm_version() -> str:
    """The helm version scripts/setup.d/50-helm.sh builds (its VERSION= line: one source)."""
    match = re.search(r"^VERSION=(\S+)$", HELM_SCRIPT.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{HELM_SCRIPT.name} has no VERSION= line"
    return match.group(1)


@functools.cache
def _helm_path() -> str | None:
    built = REPO / ".cache" / "helm" / helm_version() / "helm"
    if built.is_file():
        return str(built)
    on_path = shutil.which("helm")
    if on_path is None:
        return None
    out = subprocess.run(
        [on_path, "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return on_path if out.returncode == 0 and out.stdout.startswith("v3.") else None


def helm_binary() -> str:
    """The helm 3 binary: skip when absent (scripts/setup.d/50-helm.sh builds it), fail in CI."""
    path = _helm_path()
    require_service(path is not None, "helm 3 is not built (bash scripts/setup.d/50-helm.sh)")
    assert path is not None
    return path


def helm(*args: str, timeout: float = 120) -> HelmResult:
    """Run helm with these arguments; its stdout and stderr together as the output."""
    result = subprocess.run(
        [helm_binary(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    return HelmResult(result.returncode, result.stdout + result.stderr)


def _values_args(values: Mapping[str, Any] | None, workdir: Path) -> list[str]:
    if not values:
        return []
    path = workdir / "values.json"  # JSON is YAML: no quoting surprises
    path.write_text(json.dumps(values), encoding="utf-8")
    return ["--values", str(path)]


def helm_lint(
    chart_dir: Path | str,
    values: Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
    kubernetes_version: str = MIN_KUBERNETES,
) -> HelmResult:
    """`helm lint` of a chart with these values (schema, templates, Chart.yaml)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["lint", str(chart_dir), "--kube-version", kubernetes_version]
        if strict:
            args.append("--strict")
        return helm(*args, *_values_args(values, Path(tmp)))


def helm_template(
    chart_dir: Path | str,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "demo",
    namespace: str = "default",
    kubernetes_version: str = MIN_KUBERNETES,
    api_versions: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The objects `helm template` renders (empty documents dropped); HelmError when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "template",
            release,
            str(chart_dir),
            "--namespace",
            namespace,
            "--kube-version",
            kubernetes_version,
        ]
        for api in api_versions:
            args += ["--api-versions", api]
        result = helm(*args, *_values_args(values, Path(tmp)))
    if not result.ok:
        raise HelmError(f"helm {' '.join(args)} failed:\n{result.output}")
    return [doc for doc in yaml.load_all(result.output, Loader=_LOADER) if doc]


# --- validation ---------------------------------------------------------------------------


class KubeValidationError(AssertionError):
    """Some objects did not validate; the message lists each problem."""


def _strict_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server applies it under strict field validation.

    Unknown fields are rejected (kubectl's default, --validate=strict) except under
    x-kubernetes-preserve-unknown-fields; OpenAPI's nullable and int-or-string become JSON
    Schema. CEL rules (x-kubernetes-validations) need a live API server: not checked here.
    """
    if isinstance(schema, list):
        return [_strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict_schema(value) for key, value in schema.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@dataclass(frozen=True)
class Crd:
    """One CustomResourceDefinition kept in deploy/crds."""

    group: str
    kind: str
    path: Path

    @functools.cached_property
    def versions(self) -> dict[str, Any]:
        """apiVersion -> a JSON Schema validator of that served version."""
        doc = yaml.load(self.path.read_text(encoding="utf-8"), Loader=_LOADER)
        assert doc["spec"]["names"]["kind"] == self.kind, f"{self.path.name}: kind mismatch"
        out: dict[str, Any] = {}
        for version in doc["spec"]["versions"]:
            if not version.get("served", False):
                continue
            schema = _strict_schema(version["schema"]["openAPIV3Schema"])
            validator = jsonschema.Draft7Validator(schema)
            out[f"{self.group}/{version['name']}"] = validator
        return out


_GROUP = re.compile(r"^  group: (\S+)$", re.MULTILINE)
_KIND = re.compile(r"^  names:\n(?:    .*\n)*?    kind: (\w+)$", re.MULTILINE)


@functools.cache
def crds(directory: Path = CRD_DIR) -> dict[tuple[str, str], Crd]:
    """(group, kind) -> Crd for every YAML under deploy/crds, or under another directory of
    CRD files such as an upstream chart's (parsed only when first used)."""
    found: dict[tuple[str, str], Crd] = {}
    for path in sorted(directory.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        group, kind = _GROUP.search(text), _KIND.search(text)
        assert group and kind, f"{path.relative_to(REPO)} is not a CustomResourceDefinition"
        found[(group.group(1), kind.group(1))] = Crd(group.group(1), kind.group(1), path)
    return found


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _metadata_problems(obj: Mapping[str, Any]) -> list[str]:
    """What the API server checks beyond the schema: names and label values."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    problems = []
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    elif obj.get("kind") == "Service" and (len(name) > 63 or not _DNS_LABEL.match(name)):
        problems.append(f"metadata.name {name!r}: a Service name is a DNS-1035 label")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"metadata.labels.{key}: {value!r} is not a valid label value")
    return problems


def _describe(obj: Mapping[str, Any]) -> str:
    name = (obj.get("metadata") or {}).get("name", "?")
    return f"{obj.get('apiVersion', '?')} {obj.get('kind', '?')} {name!r}"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def problems(
    objects: Iterable[Mapping[str, Any]],
    kubernetes_version: str = MIN_KUBERNETES,
    crd_dir: Path = CRD_DIR,
) -> list[str]:
    """Every reason these objects would be refused: schema errors, bad names, unknown kinds.

    Custom resources are checked against the CRDs under ``crd_dir`` (deploy/crds unless an
    upstream chart brings the CRDs its objects are written for).
    """
    found: list[str] = []
    for obj in objects:
        where = _describe(obj)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            found.append(f"{where}: no apiVersion or kind")
            continue
        found += [f"{where}: {p}" for p in _metadata_problems(obj)]
        group = api_version.rpartition("/")[0]
        crd = crds(crd_dir).get((group, kind))
        if crd is not None:
            validator = crd.versions.get(api_version)
            if validator is None:
                served = ", ".join(sorted(crd.versions))
                found.append(f"{where}: {api_version} is not served by the CRD (serves {served})")
                continue
            for error in sorted(validator.iter_errors(copy.deepcopy(dict(obj))), key=str):
                path = ".".join(str(p) for p in error.absolute_path) or "(root)"
                found.append(f"{where}: {path}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(dict(obj), kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "(root)"
            found.append(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            found.append(
                f"{where}: unknown kind: neither Kubernetes {kubernetes_version} nor a CRD in "
                f"{_shown(crd_dir)} defines it"
            )
    return found


def validate(
    objects: Iterable[Mapping[str, Any]],
    kubernetes_version: str = MIN_KUBERNETES,
    crd_dir: Path = CRD_DIR,
) -> None:
    """Raise KubeValidationError listing every problem of these objects (see problems())."""
    objects = list(objects)
    assert objects, "nothing to validate"
    found = problems(objects, kubernetes_version, crd_dir)
    if found:
        raise KubeValidationError(
            f"{len(found)} problem(s) against Kubernetes {kubernetes_version}:\n  "
            + "\n  ".join(found)
        )


# Pod Security Standards, "restricted" profile (Kubernetes 1.31): what admission refuses in a
# namespace labelled pod-security.kubernetes.io/enforce=restricted.
_RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_POD_TEMPLATE_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def pod_specs(objects: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(description, pod spec) of every object that makes pods."""
    out = []
    for obj in objects:
        path = _POD_TEMPLATE_PATHS.get(str(obj.get("kind")))
        if path is None:
            continue
        node: Any = obj
        for key in path:
            node = node[key]
        out.append((_describe(obj), dict(node)))
    return out


def restricted_problems(pod: Mapping[str, Any]) -> list[str]:
    """What the "restricted" Pod Security Standard refuses in this pod spec."""
    found = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{flag} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)} is not allowed")
    pod_context = pod.get("securityContext") or {}
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    containers = [
        *(pod.get("initContainers") or []),
        *(pod.get("containers") or []),
        *(pod.get("ephemeralContainers") or []),
    ]
    for container in containers:
        where = f"container {container.get('name')}"
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{where}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            found.append(f"{where}: runAsUser is 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile is not RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{where}: capabilities.drop does not hold ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"{where}: capabilities.add {sorted(added)}")
        if context.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount is not Default")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
    return found


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def resolve_env(
    container: Mapping[str, Any],
    fields: Mapping[str, str] | None = None,
    secrets: Mapping[tuple[str, str], str] | None = None,
) -> dict[str, str]:
    """A container's environment as the kubelet gives it to the process.

    ``fields`` are the Downward API's values by fieldPath, ``secrets`` the Secret values by
    (secret name, key). ``$(NAME)`` expands to a variable defined earlier in the list and
    ``$$`` to ``$``; a reference to anything else stays as written, as in Kubernetes.
    A source missing from ``fields``/``secrets`` fails the test: nothing is guessed.
    """
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            raw = str(item["value"])
            env[name] = _REFERENCE.sub(
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), raw
            )
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert fields is not None and path in fields, f"{name}: no value for field {path}"
            env[name] = fields[path]
        elif "secretKeyRef" in source:
            ref = (source["secretKeyRef"]["name"], source["secretKeyRef"]["key"])
            assert secrets is not None and ref in secrets, f"{name}: no value for Secret {ref}"
            env[name] = secrets[ref]
        else:
            raise AssertionError(f"{name}: unsupported valueFrom {sorted(source)}")
    return env


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [dict(obj) for obj in objects if obj.get("kind") == kind]


def one(objects: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of this kind; fails when there are none or several."""
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[_describe(o) for o in found]}"
    return found[0]
