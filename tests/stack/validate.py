"""Static checks of a compose stack directory; every check returns a list of problems.

They read the files as they are (docker-compose.yml, .env, and the Prometheus,
Grafana and Logstash configs it mounts), so they run on the repository and on a
`pyobs stack init` directory alike. No Docker engine is needed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

COMPOSE_FILE = "docker-compose.yml"
ENV_EXAMPLE = ".env.example"
SECRET_NAMES = re.compile(r"(PASSWORD|KEY|TOKEN|SECRET)$")
WEAK_SECRETS = ("changeme", "changeit")
GRAFANA_UIDS = {"prometheus", "elasticsearch", "alertmanager", "jaeger"}
LOGSTASH_WRITER_USER = "pyobs_logstash_writer"
GRAFANA_READER_USER = "pyobs_grafana_reader"

# Files the stack mounts that other parts of the project own. The tests skip
# the cross-check of a missing one locally and fail in CI.
PROMETHEUS_CONFIG = "prometheus/prometheus.yml"
ALERTMANAGER_CONFIG = "prometheus/alertmanager.yml"
GRAFANA_DATASOURCES = "dashboards/provisioning/datasources"
GRAFANA_DASHBOARD_PROVIDERS = "dashboards/provisioning/dashboards"
LOGSTASH_PIPELINES = "logstash/config/pipelines.yml"
LOGSTASH_PIPELINE_DIR = "logstash/pipeline"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR, $$
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_URL = re.compile(r"\b(?:https?|tcp|grpc)://(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?")
_PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.+-][A-Za-z0-9.+-]*)?$")


class InterpolationError(ValueError):
    """A required variable (${VAR:?...}) is unset or empty."""


# --------------------------------------------------------------------------- env


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse a compose .env file: KEY=VALUE lines, comments and blank lines ignored."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def example_env(directory: Path) -> dict[str, str]:
    """The .env.example of directory with every empty secret filled, as after `stack init`."""
    env = parse_env_file(directory / ENV_EXAMPLE)
    for key, value in env.items():
        if not value and SECRET_NAMES.search(key):
            env[key] = f"test-{key.lower().replace('_', '-')}-0123456789abcdef"
    return env


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables the way docker compose does (no nesting)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        value = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op is None:
            return value or ""
        unset_or_empty = not value if op.startswith(":") else value is None
        if op.endswith("-"):
            return arg if unset_or_empty else str(value)
        if op.endswith("?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing: {arg}")
            return str(value)
        return "" if unset_or_empty else arg  # ":+" / "+"

    return _VARIABLE.sub(replace, text)


def referenced_variables(text: str) -> Iterator[tuple[str, str | None]]:
    """Every (variable, operator) referenced in text; operator None when bare."""
    for match in _VARIABLE.finditer(text):
        if not match["escaped"]:
            yield (match["braced"] or match["plain"]), match["op"]


def _interpolate_tree(node: Any, env: Mapping[str, str], problems: list[str], where: str) -> Any:
    if isinstance(node, str):
        try:
            return interpolate(node, env)
        except InterpolationError as exc:
            problems.append(f"{where}: {exc}")
            return node
    if isinstance(node, list):
        return [_interpolate_tree(item, env, problems, where) for item in node]
    if isinstance(node, dict):
        return {
            key: _interpolate_tree(value, env, problems, f"{where}.{key}")
            for key, value in node.items()
        }
    return node


# ----------------------------------------------------------------------- compose


def load_raw(directory: Path) -> dict[str, Any]:
    """The compose file as YAML (anchors and merge keys resolved, variables not)."""
    data = yaml.safe_load((directory / COMPOSE_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{COMPOSE_FILE} is not a mapping")
    return data


def load_compose(directory: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The compose model with variables substituted, and any interpolation problems."""
    problems: list[str] = []
    model = _interpolate_tree(load_raw(directory), env, problems, "compose")
    return model, problems


def services(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services mapping ({} when absent)."""
    result = model.get("services") or {}
    return dict(result)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the list or the mapping form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's dependencies as {name: condition}, from the list or the mapping form."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(host_ip, host_port, container_port, protocol) of every published port."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            result.append(
                (
                    str(port.get("host_ip", "")),
                    str(port.get("published", "")),
                    str(port["target"]),
                    str(port.get("protocol", "tcp")),
                )
            )
            continue
        spec, _, protocol = str(port).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            host_ip, host_port, container_port = parts
        elif len(parts) == 2:
            host_ip, (host_port, container_port) = "", parts
        else:
            host_ip, host_port, container_port = "", "", parts[0]
        result.append((host_ip.strip("[]"), host_port, container_port, protocol or "tcp"))
    return result


def listening_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports the service listens on inside the network: `expose` plus published targets."""
    ports = {int(str(port).partition("/")[0]) for port in service.get("expose") or []}
    ports.update(int(target) for _, _, target, _ in published_ports(service) if target.isdigit())
    return ports


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host source, container target) of every bind mount."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                result.append((str(volume["source"]), str(volume["target"])))
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
            result.append((parts[0], parts[1]))
    return result


def named_volumes(service: Mapping[str, Any]) -> list[str]:
    """Names of the named volumes a service mounts."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "volume" and volume.get("source"):
                result.append(str(volume["source"]))
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and not parts[0].startswith((".", "/", "~")):
            result.append(parts[0])
    return result


def one_shot_services(model: Mapping[str, Any]) -> set[str]:
    """Services others wait for with `service_completed_successfully`: jobs, not daemons."""
    return {
        name
        for service in services(model).values()
        for name, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def mount_target_for(service: Mapping[str, Any], container_path: str) -> tuple[str, str] | None:
    """The bind mount (source, target) that holds container_path inside the container."""
    path = PurePosixPath(container_path)
    best: tuple[str, str] | None = None
    for source, target in bind_mounts(service):
        target_path = PurePosixPath(target)
        if (path == target_path or target_path in path.parents) and (
            best is None or len(target) > len(best[1])
        ):
            best = (source, target)
    return best


def host_path_for(directory: Path, service: Mapping[str, Any], container_path: str) -> Path | None:
    """The host path that container_path of service maps to, or None when it is not mounted."""
    mount = mount_target_for(service, container_path)
    if mount is None:
        return None
    source, target = mount
    relative = PurePosixPath(container_path).relative_to(PurePosixPath(target))
    return (directory / source / relative).resolve()


# ---------------------------------------------------------------- compose checks


def check_schema(directory: Path) -> list[str]:
    """Validate the compose file against the compose-spec JSON schema (check-jsonschema)."""
    command = [
        sys.executable,
        "-m",
        "check_jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        str(directory / COMPOSE_FILE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode == 0:
        return []
    return [f"compose-spec schema: {(result.stdout + result.stderr).strip()}"]


def compose_command() -> list[str] | None:
    """How to call Docker Compose v2 here, or None when it is not installed."""
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run(
            [standalone, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0 and "v2." in probe.stdout:
            return [standalone]
    return None


def check_compose_config(directory: Path, env_file: Path) -> list[str]:
    """Run `docker compose config`: the real parser, interpolation and reference checks."""
    command = compose_command()
    if command is None:
        return ["Docker Compose v2 is not installed (scripts/setup.d/30-stack.sh builds it)"]
    result = subprocess.run(
        [
            *command,
            "--project-directory",
            str(directory),
            "-f",
            str(directory / COMPOSE_FILE),
            "--env-file",
            str(env_file),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 0:
        return []
    return [f"docker compose config: {(result.stdout + result.stderr).strip()}"]


def check_top_level(raw: Mapping[str, Any]) -> list[str]:
    """Compose-spec file: no obsolete `version:` key, a project name, services present."""
    problems = []
    if "version" in raw:
        problems.append("the obsolete top-level `version:` key is present")
    if not raw.get("name"):
        problems.append("no top-level `name:`: container names would depend on the folder")
    if not services(raw):
        problems.append("no services")
    return problems


def check_mounts(model: Mapping[str, Any], directory: Path) -> list[str]:
    """Every bind-mounted host path exists; every named volume is declared."""
    problems = []
    declared = set((model.get("volumes") or {}).keys())
    for name, service in services(model).items():
        for source, target in bind_mounts(service):
            if not (directory / source).exists():
                problems.append(f"{name}: bind mount source {source} (-> {target}) does not exist")
        for volume in named_volumes(service):
            if volume not in declared:
                problems.append(f"{name}: named volume {volume} is not declared under volumes:")
    return problems


def check_builds(model: Mapping[str, Any], directory: Path) -> list[str]:
    """Every build context and Dockerfile exists, and every COPY source is in the context."""
    problems = []
    for name, service in services(model).items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = directory / str(build.get("context", "."))
        dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
        if not context.is_dir():
            problems.append(f"{name}: build context {build.get('context')} does not exist")
            continue
        if not dockerfile.is_file():
            problems.append(f"{name}: Dockerfile {build.get('dockerfile')} does not exist")
            continue
        for source in dockerfile_copy_sources(dockerfile.read_text()):
            if not (context / source).exists():
                problems.append(f"{name}: COPY source {source} is missing from the build context")
    return problems


def check_depends_on(model: Mapping[str, Any]) -> list[str]:
    """Every depends_on target exists, waits on a real condition and can satisfy it."""
    problems = []
    all_services = services(model)
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in all_services.items():
        for target, condition in depends_on(service).items():
            if target not in all_services:
                problems.append(f"{name}: depends_on {target}, which is not a service")
                continue
            if condition not in valid:
                problems.append(f"{name}: depends_on {target} with unknown condition {condition}")
            if condition == "service_healthy" and not has_healthcheck(all_services[target]):
                problems.append(
                    f"{name}: waits for {target} to be healthy, but {target} has no health check"
                )
            if condition == "service_completed_successfully" and all_services[target].get(
                "restart", "no"
            ) not in ("no", "on-failure"):
                problems.append(f"{name}: waits for one-shot {target}, which restarts forever")
    return problems


def has_healthcheck(service: Mapping[str, Any]) -> bool:
    """True when the service defines an enabled health check."""
    check = service.get("healthcheck")
    if not isinstance(check, dict) or check.get("disable"):
        return False
    test = check.get("test")
    if isinstance(test, list):
        return bool(test) and test[0] != "NONE" and len(test) > 1
    return bool(test)


def check_healthchecks(model: Mapping[str, Any]) -> list[str]:
    """Every long-running service has a health check (one-shot jobs are waited for instead)."""
    jobs = one_shot_services(model)
    return [
        f"{name}: no health check"
        for name, service in services(model).items()
        if name not in jobs and not has_healthcheck(service)
    ]


def check_resources(model: Mapping[str, Any]) -> list[str]:
    """Every service has a memory limit and rotated logs."""
    problems = []
    for name, service in services(model).items():
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        if not service.get("mem_limit") and not limits.get("memory"):
            problems.append(f"{name}: no memory limit")
        logging = service.get("logging") or {}
        if logging.get("driver") not in ("json-file", "local") or not (
            logging.get("options") or {}
        ).get("max-size"):
            problems.append(f"{name}: logs are not rotated (json-file/local with max-size)")
    return problems


def check_ports(model: Mapping[str, Any]) -> list[str]:
    """No two services publish the same host port; every port binds to 127.0.0.1."""
    problems = []
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for name, service in services(model).items():
        for host_ip, host_port, container_port, protocol in published_ports(service):
            if not host_port:
                problems.append(f"{name}: port {container_port} is published on a random port")
                continue
            if host_ip != "127.0.0.1":
                problems.append(
                    f"{name}: port {host_port} binds to {host_ip or 'every address'}, not 127.0.0.1"
                )
            key = (host_port, protocol)
            if key in seen:
                other, other_ip = seen[key]
                if (
                    other_ip == host_ip
                    or "" in (other_ip, host_ip)
                    or "0.0.0.0"
                    in (
                        other_ip,
                        host_ip,
                    )
                ):
                    problems.append(
                        f"{name}: host port {host_port}/{protocol} is also published by {other}"
                    )
            else:
                seen[key] = (name, host_ip)
    return problems


def is_pinned(image: str) -> bool:
    """True for a digest or an exact version tag (not latest, not a bare major/minor)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return False
    return bool(_PINNED_TAG.match(tag))


def dockerfile_base_images(text: str, build_args: Mapping[str, str]) -> list[str]:
    """FROM images of a Dockerfile with ARG defaults and build args substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []
    for line in _dockerfile_instructions(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            key, _, default = rest.strip().partition("=")
            args[key] = build_args.get(key, default.strip().strip('"'))
        elif keyword == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            image = interpolate(words[0], args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages and image != "scratch":
                images.append(image)
    return images


def dockerfile_copy_sources(text: str) -> list[str]:
    """Sources of COPY/ADD instructions that read from the build context."""
    sources = []
    for line in _dockerfile_instructions(text):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        words = rest.split()
        if any(word.startswith("--from") for word in words):
            continue
        words = [word for word in words if not word.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _dockerfile_instructions(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield (current + line).strip()
        current = ""


def check_images(model: Mapping[str, Any], directory: Path) -> list[str]:
    """Every pulled image and every Dockerfile base image is pinned to an exact version."""
    problems = []
    for name, service in services(model).items():
        build = service.get("build")
        if build is None:
            image = service.get("image")
            if not image:
                problems.append(f"{name}: neither image nor build")
            elif not is_pinned(str(image)):
                problems.append(f"{name}: image {image} is not pinned to an exact version")
            continue
        if isinstance(build, str):
            build = {"context": build}
        dockerfile = (
            directory / str(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")
        )
        if not dockerfile.is_file():
            continue  # reported by check_builds
        args = {str(k): str(v) for k, v in (build.get("args") or {}).items()}
        for image in dockerfile_base_images(dockerfile.read_text(), args):
            if not is_pinned(image):
                problems.append(f"{name}: base image {image} is not pinned to an exact version")
    return problems


def check_dockerfiles(model: Mapping[str, Any], directory: Path, linter: Path) -> list[str]:
    """BuildKit's parser and build checks (`docker build --check`) on every built Dockerfile."""
    problems = []
    seen: set[tuple[str, ...]] = set()
    for name, service in services(model).items():
        build = service.get("build")
        if not isinstance(build, dict):
            continue
        dockerfile = (
            directory / str(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")
        )
        args = [f"{key}={value}" for key, value in sorted((build.get("args") or {}).items())]
        key = (str(dockerfile), *args)
        if key in seen or not dockerfile.is_file():
            continue
        seen.add(key)
        result = subprocess.run(
            [str(linter), str(dockerfile), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            problems.append(f"{name}: the Dockerfile linter failed: {result.stderr.strip()}")
            continue
        report = json.loads(result.stdout)
        if report.get("error"):
            problems.append(f"{name}: {build.get('dockerfile')}: {report['error']}")
        for warning in report["warnings"]:
            problems.append(
                f"{name}: {build.get('dockerfile')}:{warning['line']}: "
                f"{warning['rule']}: {warning['message']}"
            )
    return problems


def check_secrets(directory: Path) -> list[str]:
    """Secrets are empty in .env.example, required (`:?`) in compose, never a weak default."""
    problems = []
    example = parse_env_file(directory / ENV_EXAMPLE)
    for key, value in example.items():
        if SECRET_NAMES.search(key) and value:
            problems.append(f"{ENV_EXAMPLE}: {key} has a value; secrets must be generated")
    raw = load_raw(directory)
    for text in _strings(raw):
        for variable, op in referenced_variables(text):
            if SECRET_NAMES.search(variable) and op != ":?":
                problems.append(
                    f"{COMPOSE_FILE}: ${{{variable}}} must be required as ${{{variable}:?...}}"
                )
            if variable not in example:
                problems.append(f"{COMPOSE_FILE}: ${{{variable}}} is not listed in {ENV_EXAMPLE}")
        if any(weak in text.lower() for weak in WEAK_SECRETS):
            problems.append(f"{COMPOSE_FILE}: {text!r} contains a well-known default password")
    for name, service in services(raw).items():
        for key, value in environment(service).items():
            if SECRET_NAMES.search(key) and not re.fullmatch(r"\$\{[A-Za-z0-9_]+:\?[^}]*\}", value):
                problems.append(f"{name}: {key} must come from .env as ${{VAR:?...}}")
    return problems


def check_env_complete(directory: Path, env: Mapping[str, str]) -> list[str]:
    """env (a .env) sets every variable the compose file requires, secrets long enough."""
    problems = []
    references = {
        ref for text in _strings(load_raw(directory)) for ref in referenced_variables(text)
    }
    for variable, op in sorted(references, key=str):
        if op in (":?", "?", None) and not env.get(variable):
            problems.append(f".env: {variable} is required but empty")
    for key, value in env.items():
        if SECRET_NAMES.search(key) and value and len(value) < 12:
            problems.append(f".env: {key} is shorter than 12 characters")
    return problems


# ------------------------------------------------------------ cross-file checks


def resolve_target(
    model: Mapping[str, Any], host: str, port: int | None, own: str | None
) -> str | None:
    """Why host:port names no service port of the compose network (None when it does)."""
    all_services = services(model)
    if host in ("localhost", "127.0.0.1") and own is not None:
        if port is None or port in listening_ports(all_services[own]):
            return None
        return f"{host}:{port} is not a port of {own} itself"
    names = {name: name for name in all_services}
    for name, service in all_services.items():
        if service.get("hostname"):
            names[str(service["hostname"])] = name
        for network in (
            (service.get("networks") or {}).values()
            if isinstance(service.get("networks"), dict)
            else []
        ):
            for alias in (network or {}).get("aliases") or []:
                names[str(alias)] = name
    if host not in names:
        return f"{host} is not a service of the compose file"
    service = all_services[names[host]]
    if port is not None and port not in listening_ports(service):
        known = sorted(listening_ports(service))
        return f"{host}:{port}: {names[host]} listens on {known or 'no declared port'}"
    return None


def check_service_urls(model: Mapping[str, Any]) -> list[str]:
    """URLs in every service's environment and command name real services and ports."""
    problems = []
    for name, service in services(model).items():
        texts = list(environment(service).values())
        command = service.get("command") or []
        texts.extend(command if isinstance(command, list) else [command])
        for text in texts:
            for match in _URL.finditer(str(text)):
                port = int(match["port"]) if match["port"] else None
                why = resolve_target(model, match["host"], port, name)
                if why:
                    problems.append(f"{name}: {match[0]}: {why}")
        env = environment(service)
        if env.get("PYOBS_LOGSTASH_HOST"):
            port = int(env.get("PYOBS_LOGSTASH_PORT") or 5000)
            why = resolve_target(model, env["PYOBS_LOGSTASH_HOST"], port, name)
            if why:
                problems.append(f"{name}: PYOBS_LOGSTASH_HOST: {why}")
    return problems


def _yaml_files(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


def check_prometheus(model: Mapping[str, Any], directory: Path) -> list[str]:
    """prometheus.yml's scrape and Alertmanager targets and rule files exist in the stack."""
    config_path = directory / PROMETHEUS_CONFIG
    if not config_path.is_file():
        return [f"{PROMETHEUS_CONFIG} is missing"]
    config = yaml.safe_load(config_path.read_text()) or {}
    problems = []
    prometheus = services(model).get("prometheus")
    if prometheus is None:
        return ["no prometheus service"]
    targets: list[tuple[str, str]] = []
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            targets.extend((f"job {job.get('job_name')}", t) for t in static.get("targets") or [])
    alerting = (config.get("alerting") or {}).get("alertmanagers") or []
    for manager in alerting:
        for static in manager.get("static_configs") or []:
            targets.extend(("alerting", t) for t in static.get("targets") or [])
    if not alerting:
        problems.append(f"{PROMETHEUS_CONFIG}: no alerting.alertmanagers: alerts go nowhere")
    for where, target in targets:
        host, _, port = str(target).rpartition(":")
        if not port.isdigit():
            problems.append(f"{PROMETHEUS_CONFIG}: {where}: target {target} has no port")
            continue
        why = resolve_target(model, host, int(port), "prometheus")
        if why:
            problems.append(f"{PROMETHEUS_CONFIG}: {where}: {why}")
    scraped = {str(t) for _, t in targets}
    for name in services(model):
        if name.startswith("example-") and f"{name}:8000" not in scraped:
            problems.append(f"{PROMETHEUS_CONFIG}: example service {name}:8000 is not scraped")
    for pattern in config.get("rule_files") or []:
        container_path = str(PurePosixPath("/etc/prometheus") / pattern)
        rules = host_path_for(directory, prometheus, container_path)
        if rules is None:
            problems.append(f"{PROMETHEUS_CONFIG}: rule_files {pattern} is not mounted")
        elif not list(rules.parent.glob(rules.name)):
            problems.append(f"{PROMETHEUS_CONFIG}: rule_files {pattern} matches no file")
    if "--enable-feature=exemplar-storage" not in (prometheus.get("command") or []):
        problems.append("prometheus: exemplar storage is not enabled")
    return problems


_GRAFANA_EXPANDER = re.compile(r"\$(|__\w+)\{([^}]+)\}")
_GO_EXPAND_ENV = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z0-9_]+))")


def grafana_env_refs(value: str) -> set[str]:
    """Environment variables Grafana substitutes into a provisioned string value.

    Grafana splits on `$$` (a literal `$`), expands `${NAME}` / `$__env{NAME}`, then
    runs Go's os.ExpandEnv: so `${__value.raw}` or `$labels` become empty unless
    written `$${__value.raw}` / `$$labels`.
    """
    names: set[str] = set()
    for part in value.split("$$"):
        for match in _GRAFANA_EXPANDER.finditer(part):
            if match[1] in ("", "__env"):
                names.add(match[2])
        rest = _GRAFANA_EXPANDER.sub("", part)
        names.update(m[1] if m[1] is not None else m[2] for m in _GO_EXPAND_ENV.finditer(rest))
    return names


def check_alertmanager(model: Mapping[str, Any], directory: Path) -> list[str]:
    """alertmanager.yml's receiver URLs name stack services; its templates are mounted."""
    config_path = directory / ALERTMANAGER_CONFIG
    if not config_path.is_file():
        return [f"{ALERTMANAGER_CONFIG} is missing"]
    alertmanager = services(model).get("alertmanager")
    if alertmanager is None:
        return ["no alertmanager service"]
    config = yaml.safe_load(config_path.read_text()) or {}
    problems = []
    for receiver in config.get("receivers") or []:
        for hook in receiver.get("webhook_configs") or []:
            match = _URL.match(str(hook.get("url", "")))
            if match is None:
                continue
            port = int(match["port"]) if match["port"] else None
            why = resolve_target(model, match["host"], port, "alertmanager")
            if why:
                problems.append(f"{ALERTMANAGER_CONFIG}: receiver {receiver.get('name')}: {why}")
    for pattern in config.get("templates") or []:
        container_path = str(PurePosixPath("/etc/alertmanager") / pattern)
        host = host_path_for(directory, alertmanager, container_path)
        if host is None:
            problems.append(f"{ALERTMANAGER_CONFIG}: templates {pattern} is not mounted")
        elif not list(host.parent.glob(host.name)):
            problems.append(f"{ALERTMANAGER_CONFIG}: templates {pattern} matches no file")
    return problems


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _strings(item)


def check_grafana(model: Mapping[str, Any], directory: Path) -> list[str]:
    """Grafana datasources point at stack services by fixed uid; dashboards are mounted."""
    grafana = services(model).get("grafana")
    if grafana is None:
        return ["no grafana service"]
    source_dir = directory / GRAFANA_DATASOURCES
    files = _yaml_files(source_dir) if source_dir.is_dir() else []
    if not files:
        return [f"{GRAFANA_DATASOURCES}: no datasource file"]
    problems = []
    env = environment(grafana)
    uids: set[str] = set()
    for path in files:
        where = f"{GRAFANA_DATASOURCES}/{path.name}"
        document = yaml.safe_load(path.read_text()) or {}
        for value in _strings(document):
            for variable in sorted(grafana_env_refs(value)):
                if variable not in env:
                    problems.append(
                        f"{where}: Grafana replaces ${{{variable}}} in {value!r} with an unset "
                        "environment variable (write $$ for a literal $)"
                    )
        for source in document.get("datasources") or []:
            uid = str(source.get("uid", ""))
            uids.add(uid)
            if uid not in GRAFANA_UIDS:
                problems.append(
                    f"{where}: datasource uid {uid!r} is not one of {sorted(GRAFANA_UIDS)}"
                )
            url = str(source.get("url", ""))
            match = _URL.match(url)
            if match is None:
                problems.append(f"{where}: datasource {uid} has no http URL ({url!r})")
                continue
            port = int(match["port"]) if match["port"] else None
            why = resolve_target(model, match["host"], port, "grafana")
            if why:
                problems.append(f"{where}: datasource {uid}: {why}")
            if source.get("type") == "elasticsearch" and source.get("basicAuthUser") not in (
                GRAFANA_READER_USER,
                None,
            ):
                problems.append(
                    f"{where}: the Elasticsearch datasource must log in as {GRAFANA_READER_USER}"
                )
    for missing in sorted(GRAFANA_UIDS - uids):
        problems.append(f"{GRAFANA_DATASOURCES}: no datasource with uid {missing}")
    provider_dir = directory / GRAFANA_DASHBOARD_PROVIDERS
    for path in _yaml_files(provider_dir) if provider_dir.is_dir() else []:
        for provider in (yaml.safe_load(path.read_text()) or {}).get("providers") or []:
            container_path = str((provider.get("options") or {}).get("path", ""))
            host = host_path_for(directory, grafana, container_path)
            if host is None:
                problems.append(
                    f"{GRAFANA_DASHBOARD_PROVIDERS}/{path.name}: dashboard path "
                    f"{container_path} is not mounted into grafana"
                )
            elif not list(host.rglob("*.json")):
                problems.append(
                    f"{GRAFANA_DASHBOARD_PROVIDERS}/{path.name}: no dashboard JSON under "
                    f"{container_path}"
                )
    return problems


def check_logstash(model: Mapping[str, Any], directory: Path) -> list[str]:
    """The Logstash pipeline writes to a stack service as the least-privilege user."""
    logstash = services(model).get("logstash")
    if logstash is None:
        return ["no logstash service"]
    pipeline_dir = directory / LOGSTASH_PIPELINE_DIR
    confs = sorted(pipeline_dir.glob("*.conf")) if pipeline_dir.is_dir() else []
    if not confs:
        return [f"{LOGSTASH_PIPELINE_DIR}: no pipeline .conf file"]
    problems = []
    env = environment(logstash)
    text = "\n".join(path.read_text() for path in confs)
    urls = list(_URL.finditer(text))
    if not urls:
        problems.append(f"{LOGSTASH_PIPELINE_DIR}: no Elasticsearch output host")
    for match in urls:
        port = int(match["port"]) if match["port"] else None
        why = resolve_target(model, match["host"], port, "logstash")
        if why:
            problems.append(f"{LOGSTASH_PIPELINE_DIR}: {match[0]}: {why}")
    # Logstash's own ${VAR} / ${VAR:default} references must be in its environment.
    for match in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[^}]*)?\}", text):
        if match[1] not in env and match[2] is None:
            problems.append(
                f"{LOGSTASH_PIPELINE_DIR}: ${{{match[1]}}} is not in logstash's environment"
            )
        if match[2] and any(weak in match[2].lower() for weak in WEAK_SECRETS):
            problems.append(f"{LOGSTASH_PIPELINE_DIR}: {match[0]} has a well-known default")
    users = [_logstash_value(m[1], env) for m in re.finditer(r"\buser\s*=>\s*\"([^\"]*)\"", text)]
    passwords = re.findall(r"\bpassword\s*=>\s*\"([^\"]*)\"", text)
    if not users or any(user != LOGSTASH_WRITER_USER for user in users):
        problems.append(
            f"{LOGSTASH_PIPELINE_DIR}: the output must log in as {LOGSTASH_WRITER_USER} "
            f"(resolves to {users or 'no user'})"
        )
    if not passwords or any(p != "${LOGSTASH_WRITER_PASSWORD}" for p in passwords):
        problems.append(
            f"{LOGSTASH_PIPELINE_DIR}: the output password must be ${{LOGSTASH_WRITER_PASSWORD}} "
            f"with no default (found {passwords or 'none'})"
        )
    listening = listening_ports(logstash)
    for match in re.finditer(r"\bport\s*=>\s*(\d+)", text):
        if int(match[1]) not in listening:
            problems.append(f"{LOGSTASH_PIPELINE_DIR}: input port {match[1]} is not exposed")
    pipelines_path = directory / LOGSTASH_PIPELINES
    if not pipelines_path.is_file():
        problems.append(f"{LOGSTASH_PIPELINES} is missing")
        return problems
    for pipeline in yaml.safe_load(pipelines_path.read_text()) or []:
        config = str(pipeline.get("path.config", ""))
        host = host_path_for(directory, logstash, config)
        if host is None:
            problems.append(f"{LOGSTASH_PIPELINES}: path.config {config} is not mounted")
        elif not [p for p in host.parent.glob("*") if fnmatch.fnmatch(p.name, host.name)]:
            problems.append(f"{LOGSTASH_PIPELINES}: path.config {config} matches no file")
    return problems


def _logstash_value(value: str, env: Mapping[str, str]) -> str:
    """A Logstash setting value with ${VAR} / ${VAR:default} resolved against env."""

    def replace(match: re.Match[str]) -> str:
        default = match[2][1:] if match[2] else ""
        return env.get(match[1], default)

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[^}]*)?\}", replace, value)


def example_frameworks(directory: Path) -> list[str]:
    """Frameworks with an example service: examples/<framework>/app.py."""
    return sorted(path.parent.name for path in (directory / "examples").glob("*/app.py"))


def example_service(framework: str) -> str:
    """The compose service of examples/<framework>/: example-flask-restful for flask_restful."""
    return "example-" + framework.replace("_", "-")


def check_examples(model: Mapping[str, Any], directory: Path) -> list[str]:
    """One example-<framework> service per examples/<framework>/app.py, all driven by traffic."""
    problems = []
    all_services = services(model)
    frameworks = example_frameworks(directory)
    for framework in frameworks:
        name = example_service(framework)
        service = all_services.get(name)
        if service is None:
            problems.append(f"examples/{framework}/app.py has no {name} service")
            continue
        command = [str(part) for part in service.get("command") or []]
        expected = ["python", f"examples/{framework}/app.py", "--host", "0.0.0.0", "--port", "8000"]
        if command != expected:
            problems.append(f"{name}: command is {command}, expected {expected}")
        env = environment(service)
        if env.get("PYOBS_SERVICE_NAME") != name:
            problems.append(f"{name}: PYOBS_SERVICE_NAME is not {name}")
        shipping = env.get("PYOBS_LOGSTASH_URL") or env.get("PYOBS_LOGSTASH_HOST")
        if not shipping or not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            problems.append(f"{name}: does not ship logs to Logstash and traces over OTLP")
    known = {example_service(framework) for framework in frameworks}
    for name in all_services:
        if name.startswith("example-") and name not in known:
            problems.append(f"{name}: no examples/<framework>/app.py for it")
    traffic = all_services.get("traffic")
    if traffic is None:
        problems.append("no traffic service")
    else:
        traffic_command = " ".join(str(part) for part in traffic.get("command") or [])
        for framework in frameworks:
            if f"http://{example_service(framework)}:8000" not in traffic_command:
                problems.append(f"traffic: does not send traffic to {example_service(framework)}")
    return problems


# ---------------------------------------------------------------------- all


def validate(directory: Path, env: Mapping[str, str]) -> list[str]:
    """Every static check above on directory, with env standing in for its .env."""
    raw = load_raw(directory)
    model, problems = load_compose(directory, env)
    problems += check_top_level(raw)
    problems += check_mounts(model, directory)
    problems += check_builds(model, directory)
    problems += check_depends_on(model)
    problems += check_healthchecks(model)
    problems += check_resources(model)
    problems += check_ports(model)
    problems += check_images(model, directory)
    problems += check_secrets(directory)
    problems += check_env_complete(directory, env)
    problems += check_service_urls(model)
    problems += check_prometheus(model, directory)
    problems += check_alertmanager(model, directory)
    problems += check_grafana(model, directory)
    problems += check_logstash(model, directory)
    problems += check_examples(model, directory)
    return problems


def dump(problems: list[str]) -> str:
    """Problems as one readable block for assertion messages."""
    return json.dumps(problems, indent=1)
