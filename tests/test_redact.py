"""Redaction (CONTRACT §5, issue 13.4): names after decoding and case-folding, added names,
and secrets scrubbed from exception messages in the access log and the span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pyobs import redact
from tests.conftest import import_or_require
from tests.core_apps import Client, json_lines


@pytest.fixture(autouse=True)
def _builtin_names_only() -> Iterator[None]:
    """Each test starts and ends with the built-in names only."""
    redact.configure()
    yield
    redact.configure()


@pytest.mark.parametrize(
    "query",
    [
        "password=hunter2",
        "PASSWORD=hunter2",
        "pass%77ord=hunter2",
        "%70%61%73%73%77%6F%72%64=hunter2",
        "%74oken=hunter2",
        "access_token=hunter2",
        "api-key=hunter2",
        "API%5FKEY=hunter2",
        "x-auth=hunter2",
        "client_secret=hunter2",
    ],
)
def test_sensitive_names_are_caught_however_encoded(query: str) -> None:
    """Percent-encoding and case never hide a sensitive name; the name is kept as sent."""
    out = redact.redact_query(f"page=1&{query}&sort=asc")
    assert "hunter2" not in out
    assert out.startswith("page=1&") and out.endswith("&sort=asc")
    assert out.count(redact.REDACTED) == 1
    assert query.split("=")[0] in out


def test_other_parameters_are_kept_byte_for_byte() -> None:
    """A query with nothing sensitive comes back unchanged, encoding included."""
    query = "q=caf%C3%A9&page=2&empty=&flag"
    assert redact.redact_query(query) == query


def test_configured_names_add_to_the_built_ins() -> None:
    """PYOBS_REDACT_QUERY_PARAMS / PYOBS_REDACT_HEADERS names are redacted, case-insensitively,
    and the built-ins still are."""
    redact.configure(headers=["X-Tenant-Key"], query_params=["SessionId"])
    assert redact.redact_query("sessionid=s1&SESSIONID=s2&password=p&page=3") == (
        "sessionid=[REDACTED]&SESSIONID=[REDACTED]&password=[REDACTED]&page=3"
    )
    assert redact.redact_header("x-tenant-key", "t") == redact.REDACTED
    assert redact.redact_header("Authorization", "Bearer x") == redact.REDACTED
    assert redact.redact_header("accept", "text/html") == "text/html"


@pytest.mark.parametrize(
    "name", ["X-Auth-Token", "X-CSRF-Token", "X-Amz-Security-Token", "X-Session-Id", "Cookie"]
)
def test_headers_named_for_credentials_are_redacted(name: str) -> None:
    """Headers whose names say they carry a credential are redacted without configuration."""
    assert redact.redact_header(name, "value") == redact.REDACTED


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("cannot reach postgres://app:s3cret@db:5432/prod", "s3cret"),
        ("GET https://ghp_abcdef123456@github.com/x failed", "ghp_abcdef123456"),
        ("401 for header Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("retry with token=abc123def", "abc123def"),
        ('payload {"password": "hunter2", "user": "bob"}', "hunter2"),
        ("Basic dXNlcjpwYXNz rejected", "dXNlcjpwYXNz"),
    ],
)
def test_scrub_removes_credentials_from_messages(message: str, secret: str) -> None:
    """URL credentials, bearer/basic tokens and secret=value pairs are scrubbed."""
    out = redact.scrub(message)
    assert secret not in out
    assert redact.REDACTED in out


def test_scrub_keeps_ordinary_prose() -> None:
    """Messages without credentials are left alone."""
    for message in ("order 7 is gone", "Auth: failed for user bob", "see https://example.com/a"):
        assert redact.scrub(message) == message


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_exception_secrets_reach_neither_log_nor_span(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception whose message holds a URL password and a bearer token: the access line,
    the app's own error line and the span event carry neither."""
    import_or_require(framework)
    from pyobs.testing import span_exporter

    message = "upstream https://svc:pa55word@api.internal/v1 said no to Bearer tok_9f8e7d6c5b"

    def pay() -> str:
        raise RuntimeError(message)

    async def pay_async() -> str:
        raise RuntimeError(message)

    app: Any
    if framework == "flask":
        from flask import Flask

        from pyobs import flask as pyobs_flask

        app = Flask("redact")
        app.get("/pay")(pay)
        pyobs_flask.instrument(app)
    else:
        from fastapi import FastAPI

        from pyobs import fastapi as pyobs_fastapi

        app = FastAPI()
        app.get("/pay")(pay_async)
        pyobs_fastapi.instrument(app)
    client = Client(framework, app)
    exporter = span_exporter()
    exporter.clear()
    assert client.get("/pay").status == 500
    out = capsys.readouterr().out
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    recorded = out + str(dict(event.attributes))
    assert "pa55word" not in recorded
    assert "tok_9f8e7d6c5b" not in recorded
    (line,) = [r for r in json_lines(out) if r.get("log.logger") == "pyobs.access"]
    assert line["error.message"].startswith("upstream https://[REDACTED]@api.internal/v1")
    assert "Bearer [REDACTED]" in event.attributes["exception.message"]
