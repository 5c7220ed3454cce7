"""The validators catch each kind of breakage, shown on a broken copy of the stack.

Each test copies the stack into tmp_path, breaks one thing, and asserts the
problem appears that the intact copy does not have.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_service
from tests.stack import validate
from tests.stack.helpers import copy_stack, write_env

Compose = dict[str, Any]


def rewrite_compose(directory: Path, change: Callable[[Compose], None]) -> None:
    """Load the compose file (anchors resolved), apply change, write it back."""
    path = directory / validate.COMPOSE_FILE
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def new_problems(
    tmp_path: Path,
    change: Callable[[Path], None],
    prepare: Callable[[Path], None] | None = None,
) -> list[str]:
    """Problems of the broken copy that the intact (re-serialised, prepared) copy lacks."""
    directory = copy_stack(tmp_path / "stack")
    rewrite_compose(directory, lambda data: None)
    if prepare is not None:
        prepare(directory)
    env = validate.example_env(directory)
    before = set(validate.validate(directory, env))
    change(directory)
    after = validate.validate(directory, validate.example_env(directory))
    return [problem for problem in after if problem not in before]


def service(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A breakage that edits one service of the compose file."""
    return lambda directory: rewrite_compose(directory, lambda d: change(d["services"][name]))


def test_a_broken_mount_path_is_reported(tmp_path: Path) -> None:
    """A typo in a mounted config path fails validation before Docker would mount a dir."""

    def break_mount(svc: dict[str, Any]) -> None:
        svc["volumes"][0] = "./prometheus/prometheus.yaml:/etc/prometheus/prometheus.yml:ro"

    problems = new_problems(tmp_path, service("prometheus", break_mount))
    assert problems == [
        "prometheus: bind mount source ./prometheus/prometheus.yaml "
        "(-> /etc/prometheus/prometheus.yml) does not exist"
    ]


def test_a_deleted_mounted_file_is_reported(tmp_path: Path) -> None:
    """Deleting a file the stack mounts is caught too, not only a typo in the compose file."""

    def delete(directory: Path) -> None:
        (directory / "prometheus" / "alertmanager.yml").unlink()

    problems = new_problems(tmp_path, delete)
    assert any("bind mount source ./prometheus/alertmanager.yml" in p for p in problems)


def test_a_dangling_depends_on_is_reported(tmp_path: Path) -> None:
    """Waiting for a service that does not exist is caught, by name."""

    def dangle(svc: dict[str, Any]) -> None:
        svc["depends_on"]["elasticsaerch"] = {"condition": "service_healthy"}

    problems = new_problems(tmp_path, service("kibana", dangle))
    assert problems == ["kibana: depends_on elasticsaerch, which is not a service"]


def test_docker_compose_also_rejects_the_dangling_depends_on(tmp_path: Path) -> None:
    """The real `docker compose config` agrees: the broken copy does not start."""
    require_service(validate.compose_command() is not None, "Docker Compose v2 not installed")
    directory = copy_stack(tmp_path / "stack")
    env_file = write_env(tmp_path / "test.env", validate.example_env(directory))
    assert validate.check_compose_config(directory, env_file) == []
    service("kibana", lambda s: s["depends_on"].update(ghost={"condition": "service_healthy"}))(
        directory
    )
    problems = validate.check_compose_config(directory, env_file)
    assert problems and "ghost" in problems[0]


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("jaeger", "jaegertracing/jaeger:latest"),
        ("jaeger", "jaegertracing/jaeger"),
        ("grafana", "grafana/grafana:12"),
        ("prometheus", "prom/prometheus:v3.5"),
    ],
)
def test_an_unpinned_image_is_reported(tmp_path: Path, name: str, image: str) -> None:
    """latest, a missing tag, or a bare major/minor tag are all refused."""
    problems = new_problems(tmp_path, service(name, lambda s: s.update(image=image)))
    assert problems == [f"{name}: image {image} is not pinned to an exact version"]


def test_an_unpinned_base_image_is_reported(tmp_path: Path) -> None:
    """The Python base image of the built services must be pinned as well."""

    def unpin(directory: Path) -> None:
        text = (directory / ".env.example").read_text()
        lines = [
            "PYTHON_VERSION=3.12" if line.startswith("PYTHON_VERSION=") else line
            for line in text.splitlines()
        ]
        (directory / ".env.example").write_text("\n".join(lines) + "\n")

    problems = new_problems(tmp_path, unpin)
    assert (
        "example-flask: base image python:3.12-slim-bookworm is not pinned to an exact version"
        in (problems)
    )


def test_a_missing_health_check_is_reported(tmp_path: Path) -> None:
    """A daemon without a health check is caught, and so is anyone waiting for its health."""
    problems = new_problems(tmp_path, service("jaeger", lambda s: s.pop("healthcheck")))
    assert "jaeger: no health check" in problems
    assert "grafana: waits for jaeger to be healthy, but jaeger has no health check" in problems


def test_a_disabled_health_check_is_reported(tmp_path: Path) -> None:
    """`disable: true` counts as no health check."""
    problems = new_problems(
        tmp_path, service("grafana", lambda s: s.update(healthcheck={"disable": True}))
    )
    assert problems == ["grafana: no health check"]


def test_a_port_published_twice_is_reported(tmp_path: Path) -> None:
    """Two services on one host port would make `docker compose up` fail half-way."""
    problems = new_problems(
        tmp_path, service("grafana", lambda s: s.update(ports=["127.0.0.1:9090:3000"]))
    )
    assert problems == ["grafana: host port 9090/tcp is also published by prometheus"]


def test_a_port_open_to_the_network_is_reported(tmp_path: Path) -> None:
    """A port published on every address is refused (secure by default)."""
    problems = new_problems(tmp_path, service("kibana", lambda s: s.update(ports=["5601:5601"])))
    assert problems == ["kibana: port 5601 binds to every address, not 127.0.0.1"]


def test_a_default_password_is_reported(tmp_path: Path) -> None:
    """`${ELASTIC_PASSWORD:-changeme}` is exactly what the stack must never ship."""

    def weaken(svc: dict[str, Any]) -> None:
        svc["environment"]["ELASTIC_PASSWORD"] = "${ELASTIC_PASSWORD:-changeme}"

    problems = new_problems(tmp_path, service("elasticsearch", weaken))
    assert (
        "docker-compose.yml: ${ELASTIC_PASSWORD} must be required as ${ELASTIC_PASSWORD:?...}"
        in (problems)
    )
    assert any("well-known default password" in p for p in problems)


def test_a_missing_memory_limit_is_reported(tmp_path: Path) -> None:
    """A service without a memory limit is caught."""
    problems = new_problems(tmp_path, service("kibana", lambda s: s.pop("mem_limit")))
    assert problems == ["kibana: no memory limit"]


def test_a_scrape_target_outside_the_stack_is_reported(tmp_path: Path) -> None:
    """A Prometheus target with a wrong host or port is caught."""

    def retarget(directory: Path) -> None:
        path = directory / validate.PROMETHEUS_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "rule_files": [],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]
            },
            "scrape_configs": [
                {"job_name": "ok", "static_configs": [{"targets": ["example-flask:8000"]}]},
                {"job_name": "port", "static_configs": [{"targets": ["grafana:9999"]}]},
                {"job_name": "host", "static_configs": [{"targets": ["node-exporter:9100"]}]},
            ],
        }
        path.write_text(yaml.safe_dump(config))

    problems = [p for p in new_problems(tmp_path, retarget) if "job" in p]
    assert problems == [
        "prometheus/prometheus.yml: job port: grafana:9999: grafana listens on [3000]",
        "prometheus/prometheus.yml: job host: node-exporter is not a service of the compose file",
    ]


def test_a_grafana_datasource_with_a_wrong_url_or_literal_dollar_is_reported(
    tmp_path: Path,
) -> None:
    """A datasource URL to a wrong port, or `${__value.raw}` Grafana would blank, is caught."""

    def rewrite(directory: Path) -> None:
        folder = directory / validate.GRAFANA_DATASOURCES
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.y*ml"):
            old.unlink()
        sources = [
            {
                "name": "P",
                "uid": "prometheus",
                "type": "prometheus",
                "url": "http://prometheus:9091",
            },
            {
                "name": "A",
                "uid": "alertmanager",
                "type": "alertmanager",
                "url": "http://alertmanager:9093",
            },
            {"name": "J", "uid": "jaeger", "type": "jaeger", "url": "http://jaeger:16686"},
            {
                "name": "E",
                "uid": "elasticsearch",
                "type": "elasticsearch",
                "url": "http://elasticsearch:9200",
                "basicAuthUser": "pyobs_grafana_reader",
                "secureJsonData": {"basicAuthPassword": "$GRAFANA_READER_PASSWORD"},
                "jsonData": {"dataLinks": [{"url": "${__value.raw}"}, {"url": "$${__value.raw}"}]},
            },
        ]
        (folder / "test.yml").write_text(yaml.safe_dump({"apiVersion": 1, "datasources": sources}))

    problems = [p for p in new_problems(tmp_path, rewrite) if "test.yml" in p]
    assert problems == [
        "dashboards/provisioning/datasources/test.yml: Grafana replaces ${__value.raw} in "
        "'${__value.raw}' with an unset environment variable (write $$ for a literal $)",
        "dashboards/provisioning/datasources/test.yml: datasource prometheus: "
        "prometheus:9091: prometheus listens on [9090]",
    ]


def write_pipeline(user: str, password: str) -> Callable[[Path], None]:
    """A breakage (or a fix) that replaces the Logstash pipeline with one output."""

    def rewrite(directory: Path) -> None:
        folder = directory / validate.LOGSTASH_PIPELINE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.conf"):
            old.unlink()
        (folder / "test.conf").write_text(
            "input { tcp { port => 5000 codec => json_lines } }\n"
            "output { elasticsearch {\n"
            '  hosts => ["http://elasticsearch:9200"]\n'
            f'  user => "{user}"\n'
            f'  password => "{password}"\n'
            "} }\n"
        )

    return rewrite


def test_a_logstash_output_as_superuser_is_reported(tmp_path: Path) -> None:
    """A pipeline that writes as `elastic` with a default password is caught."""
    problems = new_problems(
        tmp_path,
        write_pipeline("elastic", "${ELASTIC_PASSWORD:changeme}"),
        prepare=write_pipeline("${LOGSTASH_WRITER_USER}", "${LOGSTASH_WRITER_PASSWORD}"),
    )
    assert [p for p in problems if p.startswith("logstash/")] == [
        "logstash/pipeline: ${ELASTIC_PASSWORD:changeme} has a well-known default",
        "logstash/pipeline: the output must log in as pyobs_logstash_writer "
        "(resolves to ['elastic'])",
        "logstash/pipeline: the output password must be ${LOGSTASH_WRITER_PASSWORD} with no "
        "default (found ['${ELASTIC_PASSWORD:changeme}'])",
    ]


def test_an_example_without_a_service_is_reported(tmp_path: Path) -> None:
    """A new examples/<framework>/app.py without its compose service is caught."""

    def add_example(directory: Path) -> None:
        (directory / "examples" / "bottle").mkdir()
        (directory / "examples" / "bottle" / "app.py").write_text("")

    problems = new_problems(tmp_path, add_example)
    assert "examples/bottle/app.py has no example-bottle service" in problems
    assert "traffic: does not send traffic to example-bottle" in problems


def test_the_schema_check_rejects_a_malformed_file(tmp_path: Path) -> None:
    """check-jsonschema fails a compose file with a wrongly typed field."""
    require_service(
        importlib.util.find_spec("check_jsonschema") is not None,
        "check-jsonschema is not installed (dev dependency)",
    )
    directory = copy_stack(tmp_path / "stack")
    assert validate.check_schema(directory) == []
    service("grafana", lambda s: s.update(ports="3000:3000", restart=["always"]))(directory)
    problems = validate.check_schema(directory)
    assert problems and "compose-spec schema" in problems[0]
