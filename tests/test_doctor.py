"""`pyobs doctor`: the configuration with secrets masked, every endpoint reached, plain words."""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyobs.cli import doctor, main
from tests.elk.receiver import JsonLinesReceiver
from tests.helpers import PortTaken, start_with_retry

SECRETS = ("s3cret-auth", "s3cret-es-pw", "s3cret-api-key", "s3cret-url-pw", "s3cret-otlp")


class _Otlp(http.server.BaseHTTPRequestHandler):
    """Stands in for an OTLP/HTTP receiver: 200 on POST /v1/traces, 404 elsewhere."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(401 if self.path == "/" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextlib.contextmanager
def _http_server() -> Iterator[int]:
    """A local HTTP server (OTLP stand-in; its GET / answers 401) on a port the kernel chose."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Otlp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _dead_port() -> Iterator[int]:
    """A port that refuses connections for sure: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor", "--timeout", "5"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _lines(output: str, status: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith(status)]


def test_everything_reachable_exits_0_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Reachable Logstash and OTLP, a free metrics port, good directories: exit 0, no secret."""
    receiver = JsonLinesReceiver()
    receiver.start()
    (tmp_path / "multiproc").mkdir()
    try:
        with _http_server() as otlp:
            monkeypatch.setenv("PYOBS_LOGSTASH_HOST", "127.0.0.1")
            monkeypatch.setenv("PYOBS_LOGSTASH_PORT", str(receiver.port))
            monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(tmp_path / "spool"))
            monkeypatch.setenv("PYOBS_LOG_SPOOL_MAX_BYTES", "1024")
            monkeypatch.setenv("PYOBS_METRICS_AUTH", "basic:scraper:s3cret-auth")
            monkeypatch.setenv("PYOBS_METRICS_ADDR", "127.0.0.1")
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "multiproc"))
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp}")
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret-otlp")

            def run(port: int) -> tuple[int, str]:
                monkeypatch.setenv("PYOBS_METRICS_PORT", str(port))
                code, output = _doctor(capsys)
                if f"127.0.0.1:{port} is taken" in output:
                    raise PortTaken(str(port))  # picked free, then taken: another port
                return code, output

            code, output = start_with_retry(run)
    finally:
        receiver.stop()
    assert code == 0, output
    assert not _lines(output, "FAIL"), output
    ok = "\n".join(_lines(output, "ok"))
    for what in ("Logstash", "OTLP", "metrics port", "spool", "multiprocess"):
        assert what in ok, (what, output)
    assert "basic:scraper:***" in output
    assert "x-api-key=***" in output
    assert not any(secret in output for secret in SECRETS)


def test_dead_endpoints_exit_1_naming_each_without_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Nothing listening: exit 1, one FAIL line per endpoint saying what failed, no secret."""
    with _dead_port() as http_in, _dead_port() as tcp_in, _dead_port() as es, _dead_port() as otlp:
        monkeypatch.setenv(
            "PYOBS_LOGSTASH_URL", f"http://shipper:s3cret-url-pw@127.0.0.1:{http_in}"
        )
        monkeypatch.setenv("PYOBS_LOGSTASH_HOST", "127.0.0.1")
        monkeypatch.setenv("PYOBS_LOGSTASH_PORT", str(tcp_in))
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_URL", f"http://127.0.0.1:{es}")
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_USERNAME", "elastic")
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_PASSWORD", "s3cret-es-pw")
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_API_KEY", "s3cret-api-key")
        monkeypatch.setenv("PYOBS_METRICS_AUTH", "bearer:s3cret-auth")
        monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(tmp_path / "spool"))
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{otlp}/v1/traces"
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer s3cret-otlp")
        code, output = _doctor(capsys)
    assert code == 1
    failed = _lines(output, "FAIL")
    expected = {
        "Logstash": f"http://***@127.0.0.1:{http_in} (PYOBS_LOGSTASH_URL)",
        "Logstash ": f"127.0.0.1:{tcp_in} (PYOBS_LOGSTASH_HOST/PYOBS_LOGSTASH_PORT, TCP)",
        "Elasticsearch": f"http://127.0.0.1:{es} (PYOBS_ELASTICSEARCH_URL)",
        "OTLP": f"http://127.0.0.1:{otlp}/v1/traces (http/protobuf)",
    }
    for what, where in expected.items():
        line = [f for f in failed if what.strip() in f and where in f]
        assert len(line) == 1 and "connection refused" in line[0], (what, output)
    assert len(failed) == len(expected), output
    assert "problem(s)" in output
    assert not any(secret in output for secret in SECRETS), output


def test_metrics_port_held_by_another_program_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PYOBS_METRICS_PORT held by something that is not pyobs: FAIL, saying so."""
    with _http_server() as port:
        monkeypatch.setenv("PYOBS_METRICS_PORT", str(port))
        monkeypatch.setenv("PYOBS_METRICS_ADDR", "127.0.0.1")
        code, output = _doctor(capsys)
    assert code == 1
    (line,) = _lines(output, "FAIL")
    assert f"127.0.0.1:{port} is taken by another program" in line


def test_answering_http_server_that_is_not_elasticsearch_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An endpoint that refuses the credentials is named, and the fix says which variables."""
    with _http_server() as port:
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_API_KEY", "s3cret-api-key")
        code, output = _doctor(capsys)
    assert code == 1
    (line,) = _lines(output, "FAIL")
    assert "refused the credentials (401)" in line and "PYOBS_ELASTICSEARCH_API_KEY" in line
    assert "s3cret-api-key" not in output


class _Es(http.server.BaseHTTPRequestHandler):
    """Stands in for an Elasticsearch 8 whose user may not write pyobs's data streams."""

    asked: list[dict[str, Any]] = []

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"version": {"number": "8.19.0"}})

    def do_POST(self) -> None:
        self.asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._json({"has_all_requested": False})

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def test_credentials_that_may_not_write_the_data_streams_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid credentials without create_doc on logs-pyobs-*: FAIL naming the privileges."""
    _Es.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Es)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_URL", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("PYOBS_ELASTICSEARCH_API_KEY", "s3cret-api-key")
        code, output = _doctor(capsys)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    (line,) = _lines(output, "FAIL")
    assert "may not write to logs-pyobs-*" in line and "create_doc, auto_configure" in line
    assert _Es.asked == [
        {"index": [{"names": ["logs-pyobs-*"], "privileges": ["create_doc", "auto_configure"]}]}
    ]


def test_spool_and_multiprocess_directories(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An unwritable spool and a missing multiprocess directory fail; stale files warn."""
    receiver = JsonLinesReceiver()
    receiver.start()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    try:
        monkeypatch.setenv("PYOBS_LOGSTASH_HOST", "127.0.0.1")
        monkeypatch.setenv("PYOBS_LOGSTASH_PORT", str(receiver.port))
        monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(blocker / "spool"))
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
        code, output = _doctor(capsys)
        assert code == 1
        failed = "\n".join(_lines(output, "FAIL"))
        assert f"{blocker / 'spool'} (PYOBS_LOG_SPOOL_DIR) is not writable" in failed
        assert f"PROMETHEUS_MULTIPROC_DIR={tmp_path / 'missing'} does not exist" in failed

        (tmp_path / "missing").mkdir()
        (tmp_path / "missing" / "counter_123.db").write_bytes(b"\0" * 8)
        monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(tmp_path / "spool"))
        code, output = _doctor(capsys)
    finally:
        receiver.stop()
    assert code == 0, output
    (warning,) = [line for line in _lines(output, "warn") if "multiprocess" in line]
    assert "holds 1 metric file(s)" in warning and "stale" in warning


def test_malformed_setting_exits_1_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed variable is named with what it accepts; a secret value is not printed."""
    monkeypatch.setenv("PYOBS_METRICS_AUTH", "s3cret-auth-without-scheme")
    code, output = _doctor(capsys)
    assert code == 1
    assert "PYOBS_METRICS_AUTH" in output and "'basic:USER:PASS' or 'bearer:TOKEN'" in output
    assert "s3cret" not in output


def _dist(tmp_path: Path, name: str, version: str, *requires: str) -> Any:
    """Real distribution metadata in a directory (what an installed wheel leaves behind)."""
    info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return importlib.metadata.PathDistribution(info)


def test_versions_against_the_declared_ranges(tmp_path: Path) -> None:
    """A core dependency out of range fails; a framework out of range warns; dev tools skip."""
    installed = importlib.metadata.version("prometheus-client")
    dist = _dist(
        tmp_path,
        "pyobs-kit",
        "9.9.9",
        f"prometheus-client=={installed}",
        "structlog>=999",
        "flask<1; extra == 'flask'",
        "mypy>=999; extra == 'dev'",
        "not-installed-framework>=1; extra == 'nothing'",
    )
    results = list(doctor.check_versions(lambda: dist))
    by_word = {words.split()[0]: status for status, _, words in results}
    assert by_word == {
        "pyobs-kit": "ok",  # which distribution, and where pyobs was imported from
        "prometheus-client": "ok",
        "structlog": "FAIL",
        "flask": "warn",
    }


def test_missing_metadata_warns_and_the_unrelated_pyobs_is_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pyobs-kit metadata: a warning. A distribution named pyobs of another version is not us."""
    ((status, _, words),) = doctor.check_versions(lambda: None)
    assert status == "warn" and "no installed metadata for pyobs-kit" in words
    other = _dist(tmp_path, "pyobs", "1.0.0", "websockets")  # the obs-websocket project

    def distribution(name: str) -> Any:
        if name == "pyobs":
            return other
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    assert doctor._distribution() is None


def test_pyobs_core_installed_beside_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyobs-core (telescope software) also installs an import package named pyobs: FAIL."""
    _dist(tmp_path, "pyobs-core", "1.20.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, output = _doctor(capsys)
    assert code == 1
    (line,) = _lines(output, "FAIL")
    assert "pyobs-core 1.20.0 is also installed" in line and "'pyobs'" in line
