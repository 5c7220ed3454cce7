"""The repository's docker-compose.yml, checked without a Docker engine.

What only a running engine can prove (images pull, containers get healthy, data
flows end to end) is listed in docs/stack.md under "Checked only with Docker".
"""

from __future__ import annotations

import importlib.util
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tests.stack import validate
from tests.stack.helpers import ROOT, build_dockerlint, copy_stack, require_files, write_env

# Problems reported to another file's owner and not fixed yet, with who fixes what. Empty:
# every cross-file disagreement found so far has been fixed at its source.
KNOWN_DISAGREEMENTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The .env a user gets from `pyobs stack init`: .env.example plus secrets."""
    return validate.example_env(ROOT)


@pytest.fixture(scope="module")
def model(env: dict[str, str]) -> dict[str, Any]:
    """The compose model with variables substituted from that .env."""
    model, problems = validate.load_compose(ROOT, env)
    assert problems == []
    return model


def assert_no_problems(problems: list[str], complete: bool = False) -> None:
    """Fail on any problem that is not a known, reported disagreement.

    With complete (the problems of every check), also warn about known ones fixed since.
    """
    unexpected = [p for p in problems if p not in KNOWN_DISAGREEMENTS]
    stale = [p for p in KNOWN_DISAGREEMENTS if p not in problems]
    if complete and stale:
        warnings.warn(f"fixed, drop from KNOWN_DISAGREEMENTS: {stale}", stacklevel=2)
    assert unexpected == [], validate.dump(unexpected)


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """`docker compose` accepts the file's structure (compose-spec JSON schema)."""
    require_service(
        importlib.util.find_spec("check_jsonschema") is not None,
        "check-jsonschema is not installed (dev dependency)",
    )
    assert validate.check_schema(ROOT) == []


def test_docker_compose_config_accepts_the_stack(tmp_path: Path, env: dict[str, str]) -> None:
    """`docker compose config` (the real parser) resolves the file with a generated .env.

    It proves the interpolation, merge keys and references; it cannot prove the
    images exist or that the containers start.
    """
    require_service(validate.compose_command() is not None, "Docker Compose v2 not installed")
    assert validate.check_compose_config(ROOT, write_env(tmp_path / ".env", env)) == []


def test_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    """With the unedited .env.example, compose stops and names the missing password."""
    require_service(validate.compose_command() is not None, "Docker Compose v2 not installed")
    problems = validate.check_compose_config(ROOT, ROOT / ".env.example")
    assert problems, "compose started without any password"
    assert "PASSWORD" in problems[0] or "KEY" in problems[0]


def test_top_level_is_compose_spec() -> None:
    """The file has no obsolete `version:` key and a fixed project name."""
    assert validate.check_top_level(validate.load_raw(ROOT)) == []


def test_every_bind_mount_and_build_input_exists(model: dict[str, Any]) -> None:
    """No container starts with a missing config file or an empty directory in its place."""
    for area in validate_areas():
        require_files(ROOT, area)
    assert validate.check_mounts(model, ROOT) + validate.check_builds(model, ROOT) == []


def validate_areas() -> tuple[str, ...]:
    """The other owners whose files the stack mounts."""
    return ("prometheus", "grafana", "logstash")


def test_every_depends_on_target_exists_and_can_be_satisfied(model: dict[str, Any]) -> None:
    """`docker compose up` starts services in dependency order without waiting forever."""
    assert validate.check_depends_on(model) == []


def test_start_order_is_the_documented_one(model: dict[str, Any]) -> None:
    """Elasticsearch, then setup, then Logstash, then the examples, then traffic."""
    services = validate.services(model)
    assert validate.depends_on(services["setup"])["elasticsearch"] == "service_healthy"
    assert validate.depends_on(services["logstash"])["setup"] == "service_completed_successfully"
    assert validate.depends_on(services["grafana"])["setup"] == "service_completed_successfully"
    for name in services:
        if name.startswith("example-"):
            assert validate.depends_on(services[name])["logstash"] == "service_healthy"
            assert validate.depends_on(services["traffic"])[name] == "service_healthy"
    assert validate.one_shot_services(model) == {"setup"}
    assert services["setup"]["restart"] == "no"


def test_every_long_running_service_has_a_health_check(model: dict[str, Any]) -> None:
    """`docker compose ps` shows health for every daemon; only the setup job has none."""
    assert validate.check_healthchecks(model) == []


def test_every_service_has_a_memory_limit_and_rotated_logs(model: dict[str, Any]) -> None:
    """The stack cannot fill the host's memory or disk with logs."""
    assert validate.check_resources(model) == []


def test_published_ports_are_unique_and_local(model: dict[str, Any]) -> None:
    """No two services fight for a host port; nothing listens beyond 127.0.0.1 by default."""
    assert validate.check_ports(model) == []


def test_every_image_is_pinned(model: dict[str, Any]) -> None:
    """Every pulled image and the Python base image name an exact version."""
    assert validate.check_images(model, ROOT) == []


def test_versions_are_pinned_in_env_example_only() -> None:
    """Image tags come from .env.example variables, not from literals in the compose file."""
    raw = validate.load_raw(ROOT)
    for name, service in validate.services(raw).items():
        image = service.get("image")
        if image:
            assert "${" in image and "_VERSION" in image, f"{name}: {image}"
    example = validate.parse_env_file(ROOT / ".env.example")
    assert example["ELASTIC_VERSION"].startswith("8.19.")


def test_secrets_are_generated_or_required() -> None:
    """No password has a default; compose refuses to start without one."""
    assert validate.check_secrets(ROOT) == []


def test_env_example_plus_generated_secrets_is_complete(env: dict[str, str]) -> None:
    """Every variable the compose file requires is in .env.example or generated."""
    assert validate.check_env_complete(ROOT, env) == []


def test_service_urls_name_real_services_and_ports(model: dict[str, Any]) -> None:
    """Every URL in an environment or command reaches a service port of the stack."""
    assert_no_problems(validate.check_service_urls(model))


def test_prometheus_targets_are_services_of_the_stack(model: dict[str, Any]) -> None:
    """Prometheus scrapes and alerts only hosts and ports the compose file runs."""
    require_files(ROOT, "prometheus")
    assert_no_problems(
        validate.check_prometheus(model, ROOT) + validate.check_alertmanager(model, ROOT)
    )


def test_grafana_datasources_point_at_stack_services(model: dict[str, Any]) -> None:
    """Grafana's datasources (fixed uids) reach Prometheus, Elasticsearch, Alertmanager, Jaeger."""
    require_files(ROOT, "grafana")
    assert_no_problems(validate.check_grafana(model, ROOT))


def test_logstash_pipeline_writes_to_the_stack_as_least_privilege_user(
    model: dict[str, Any],
) -> None:
    """Logstash sends to the stack's Elasticsearch as the write-only user, on exposed ports."""
    require_files(ROOT, "logstash")
    assert_no_problems(validate.check_logstash(model, ROOT))


def test_examples_ship_to_logstashs_acknowledged_http_input(model: dict[str, Any]) -> None:
    """Every example's PYOBS_LOGSTASH_URL is Logstash's http input (the pipeline's port, exposed
    and published), and the persisted queue and dead letters live on a named volume."""
    import re
    import urllib.parse

    import yaml

    require_files(ROOT, "logstash")
    conf = (ROOT / "logstash" / "pipeline" / "pyobs-logs.conf").read_text()
    http_block = conf.split("http {", 1)[1].split("}", 1)[0]
    port = int(re.search(r"\bport\s*=>\s*(\d+)", http_block)[1])  # type: ignore[index]
    services = validate.services(model)
    logstash = services["logstash"]
    assert port in validate.listening_ports(logstash)
    assert any(target == str(port) for _, _, target, _ in validate.published_ports(logstash))
    examples = {n: s for n, s in services.items() if n.startswith("example-")}
    assert examples
    for name, service in examples.items():
        url = urllib.parse.urlsplit(validate.environment(service)["PYOBS_LOGSTASH_URL"])
        assert (url.scheme, url.hostname, url.port) == ("http", "logstash", port), name
    settings = yaml.safe_load((ROOT / "logstash" / "config" / "logstash.yml").read_text())
    assert settings["queue.type"] == "persisted"
    data = [
        v
        for v in logstash["volumes"]
        if (v.get("target") if isinstance(v, dict) else str(v).split(":")[1])
        == "/usr/share/logstash/data"
    ]
    assert validate.named_volumes({"volumes": data}), "the queue and dead letters need a volume"


def test_every_framework_example_runs_in_the_stack(model: dict[str, Any]) -> None:
    """Each examples/<framework>/app.py has its service, shipping logs and traces, with traffic."""
    assert validate.example_frameworks(ROOT), "no example service found"
    assert_no_problems(validate.check_examples(model, ROOT))


def test_everything_at_once(env: dict[str, str]) -> None:
    """The one-call validator reports nothing beyond the known, reported disagreements."""
    for area in validate_areas():
        require_files(ROOT, area)
    assert_no_problems(validate.validate(ROOT, env), complete=True)


def test_the_docs_add_your_own_service_snippet_works(tmp_path: Path) -> None:
    """The README's "Add your own service" override joins the stack as written (compose config)."""
    require_service(validate.compose_command() is not None, "Docker Compose v2 not installed")
    text = (ROOT / "README.md").read_text().split("### Add your own service", 1)[1]
    snippet = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    first_line = snippet.splitlines()[0]
    assert first_line.startswith("# docker-compose.override.yml")
    directory = copy_stack(tmp_path / "stack")
    (directory / "docker-compose.override.yml").write_text(snippet)
    (tmp_path / "my-service").mkdir()
    env_file = write_env(tmp_path / "test.env", validate.example_env(directory))
    assert validate.check_compose_config(directory, env_file) == []
    command = validate.compose_command()
    assert command is not None
    project = ["--project-directory", str(directory), "--env-file", str(env_file)]
    listed = subprocess.run(
        [*command, *project, "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "my-service" in listed.stdout.split()


@pytest.fixture(scope="module")
def dockerlint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BuildKit's Dockerfile checks, built from tests/stack/dockerlint (needs Go)."""
    binary = build_dockerlint(tmp_path_factory.mktemp("dockerlint"))
    require_service(binary is not None, "Go is not installed (needed for the Dockerfile checks)")
    assert binary is not None
    return binary


def test_the_dockerfile_passes_buildkit_checks(model: dict[str, Any], dockerlint: Path) -> None:
    """BuildKit parses examples/Dockerfile with every service's build args, with no warning.

    Its base images are not pulled (a stand-in config is used), so this cannot
    prove the RUN steps succeed.
    """
    assert validate.check_dockerfiles(model, ROOT, dockerlint) == []


def test_the_dockerfile_checks_catch_a_broken_dockerfile(tmp_path: Path, dockerlint: Path) -> None:
    """A lower-case FROM, a shell-form CMD and an unknown instruction are all reported."""
    directory = copy_stack(tmp_path / "stack")
    dockerfile = directory / "examples" / "Dockerfile"
    text = dockerfile.read_text().replace("FROM python", "from python")
    text = text.replace(
        'CMD ["python", "examples/flask/app.py", "--host", "0.0.0.0", "--port", "8000"]',
        "CMD python examples/flask/app.py",
    )
    dockerfile.write_text(text)
    model, _ = validate.load_compose(directory, validate.example_env(directory))
    problems = validate.check_dockerfiles(model, directory, dockerlint)
    rules = {problem.split(": ")[2] for problem in problems}
    assert {"ConsistentInstructionCasing", "JSONArgsRecommended"} <= rules, problems
    dockerfile.write_text(text + "EXPOSES 8000\n")
    problems = validate.check_dockerfiles(model, directory, dockerlint)
    assert any("unknown instruction: EXPOSES" in problem for problem in problems), problems
