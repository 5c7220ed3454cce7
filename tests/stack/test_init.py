"""`pyobs stack init DIR`: the same stack, with fresh secrets, outside the repository."""

from __future__ import annotations

import filecmp
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyobs.cli import main
from pyobs.cli.stack import STACK_PATHS, generate_env, init_stack, stack_files
from tests.conftest import require_service
from tests.stack import validate
from tests.stack.helpers import ROOT, require_files
from tests.stack.test_compose import assert_no_problems


def repo_files(relative: str) -> set[str]:
    """Files under a repository path, minus caches, as paths relative to the root."""
    base = ROOT / relative
    if base.is_file():
        return {relative}
    return {
        path.relative_to(ROOT).as_posix()
        for path in base.rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and path.suffix != ".pyc"
        and not (relative == "pyobs" and "_data" in path.relative_to(base).parts[:1])
    }


def test_init_writes_exactly_the_repository_files(tmp_path: Path) -> None:
    """Every file written is byte-identical to the repository's; none is missing or extra."""
    target = tmp_path / "mystack"
    assert main(["stack", "init", str(target)]) == 0
    expected = set().union(*(repo_files(relative) for relative in STACK_PATHS))
    written = {path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file()}
    assert written == expected | {".env"}
    for relative in expected:
        assert filecmp.cmp(ROOT / relative, target / relative, shallow=False), relative


def test_init_writes_a_private_env_with_fresh_secrets(tmp_path: Path) -> None:
    """.env (mode 0600) has a new random value for every password and key, per directory."""
    init_stack(tmp_path / "a")
    init_stack(tmp_path / "b")
    a = validate.parse_env_file(tmp_path / "a" / ".env")
    b = validate.parse_env_file(tmp_path / "b" / ".env")
    example = validate.parse_env_file(ROOT / ".env.example")
    secrets = [key for key in example if validate.SECRET_NAMES.search(key)]
    assert {"ELASTIC_PASSWORD", "KIBANA_SYSTEM_PASSWORD", "LOGSTASH_WRITER_PASSWORD"} <= set(
        secrets
    )
    assert {"GRAFANA_READER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= set(secrets)
    for key in secrets:
        assert len(a[key]) >= 32, key
        assert a[key] != b[key], key
    for key in set(example) - set(secrets):
        assert a[key] == example[key], key
    mode = stat.S_IMODE(os.stat(tmp_path / "a" / ".env").st_mode)
    assert mode == 0o600


def test_generate_env_keeps_comments_and_values() -> None:
    """Only empty secret lines change; comments, order and other values stay."""
    text = "# c\nELASTIC_PASSWORD=\nBIND_ADDRESS=127.0.0.1\nSOME_KEY=kept\nEMPTY_OTHER=\n"
    lines = generate_env(text).splitlines()
    assert lines[0] == "# c"
    assert lines[1].startswith("ELASTIC_PASSWORD=") and len(lines[1]) > 40
    assert lines[2:] == ["BIND_ADDRESS=127.0.0.1", "SOME_KEY=kept", "EMPTY_OTHER="]


def test_the_same_validations_pass_on_an_init_directory(tmp_path: Path) -> None:
    """A fresh DIR passes every static check, with its own generated .env."""
    for area in ("prometheus", "grafana", "logstash"):
        require_files(ROOT, area)
    target = tmp_path / "elsewhere"
    init_stack(target)
    env = validate.parse_env_file(target / ".env")
    assert_no_problems(validate.validate(target, env))


def test_docker_compose_config_accepts_an_init_directory(tmp_path: Path) -> None:
    """`docker compose config` in DIR resolves everything from DIR's own .env."""
    require_service(validate.compose_command() is not None, "Docker Compose v2 not installed")
    target = tmp_path / "elsewhere"
    init_stack(target)
    assert validate.check_compose_config(target, target / ".env") == []


def test_init_is_idempotent_and_keeps_the_env(tmp_path: Path) -> None:
    """Running init again changes nothing, and never replaces the passwords in .env."""
    target = tmp_path / "s"
    first = init_stack(target)
    env_before = (target / ".env").read_text()
    second = init_stack(target)
    assert second["written"] == []
    assert sorted(second["unchanged"]) == sorted(p for p in first["written"] if p != ".env")
    assert second["kept"] == [".env"]
    assert (target / ".env").read_text() == env_before


def test_init_refuses_to_overwrite_a_changed_file_without_force(tmp_path: Path) -> None:
    """A file the user edited is not silently replaced; --force replaces it, .env stays."""
    target = tmp_path / "s"
    init_stack(target)
    edited = target / "prometheus" / "alertmanager.yml"
    edited.write_text("# my own receivers\n")
    env_before = (target / ".env").read_text()
    with pytest.raises(FileExistsError, match=r"prometheus/alertmanager\.yml"):
        init_stack(target)
    assert edited.read_text() == "# my own receivers\n"
    assert main(["stack", "init", str(target)]) == 1
    outcome = init_stack(target, force=True)
    assert outcome["written"] == ["prometheus/alertmanager.yml"]
    assert filecmp.cmp(edited, ROOT / "prometheus" / "alertmanager.yml", shallow=False)
    assert (target / ".env").read_text() == env_before


def test_init_runs_as_a_console_command(tmp_path: Path) -> None:
    """`python -m pyobs stack init DIR` works from any working directory and says what next."""
    target = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "pyobs", "stack", "init", str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "docker compose up -d --build" in result.stdout
    assert (target / "docker-compose.yml").is_file()
    assert (target / ".env").is_file()


def test_stack_files_cover_every_mount_and_build_input() -> None:
    """What init writes includes every file the compose file mounts or builds from."""
    files = stack_files()
    env = validate.example_env(ROOT)
    model, _ = validate.load_compose(ROOT, env)
    for name, service in validate.services(model).items():
        for source, _target in validate.bind_mounts(service):
            relative = os.path.normpath(source)
            assert relative in files or any(f.startswith(relative + "/") for f in files), (
                name,
                source,
            )
    dockerfile = (ROOT / "examples" / "Dockerfile").read_text()
    for source in validate.dockerfile_copy_sources(dockerfile):
        relative = source.rstrip("/")
        assert relative in files or any(f.startswith(relative + "/") for f in files), source


def test_init_in_the_checkout_itself_only_adds_the_env(tmp_path: Path) -> None:
    """The README's `pyobs stack init .` in a checkout leaves every file and writes .env."""
    checkout = tmp_path / "checkout"
    for relative in [*(f for r in STACK_PATHS for f in repo_files(r)), "README.md"]:
        (checkout / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / relative, checkout / relative)
    before = {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file()}
    result = subprocess.run(
        [sys.executable, "-m", "pyobs", "stack", "init", "."],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 file(s) written" in result.stdout
    after = {
        p: p.read_bytes()
        for p in checkout.rglob("*")
        if p.is_file() and p.name != ".env" and "__pycache__" not in p.parts
    }
    assert after == before
    assert (checkout / ".env").is_file()
