"""`pyobs doctor` against the real Elasticsearch nodes the suite runs."""

from __future__ import annotations

import pytest

from pyobs.cli import main
from tests.elk.esnodes import ES_VERSION


def _doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["doctor", "--timeout", "10"])
    out = capsys.readouterr().out
    return code, [line.strip() for line in out.splitlines() if "Elasticsearch" in line]


def test_reachable_elasticsearch_is_ok_and_credentials_stay_hidden(
    es_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: str
) -> None:
    """A real 8.19 node: the check names its version; the password is never printed."""
    monkeypatch.setenv("PYOBS_ELASTICSEARCH_URL", es_url)
    monkeypatch.setenv("PYOBS_ELASTICSEARCH_USERNAME", "elastic")
    monkeypatch.setenv("PYOBS_ELASTICSEARCH_PASSWORD", "s3cret-es-pw")
    monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(tmp_path))
    code, lines = _doctor(capsys)
    assert f"ok    Elasticsearch {es_url} is Elasticsearch {ES_VERSION}" in lines, lines
    assert code == 0, lines
    assert not any("s3cret" in line for line in lines)


def test_elasticsearch_7_is_named_as_unsupported(
    ingest_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: str,
) -> None:
    """A real 7.10 node answers, but pyobs ships to 8.x/9.x: FAIL with the version found."""
    monkeypatch.setenv("PYOBS_ELASTICSEARCH_URL", ingest_url)
    monkeypatch.setenv("PYOBS_LOG_SPOOL_DIR", str(tmp_path))
    code, lines = _doctor(capsys)
    assert code == 1
    (line,) = [line for line in lines if line.startswith("FAIL")]
    assert f"{ingest_url} is Elasticsearch 7.10.2" in line and "needs 8.x or 9.x" in line
