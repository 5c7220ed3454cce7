"""ECS JSON logs: stdlib and structlog produce the same lines; every field is ECS-typed."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytest

import pyobs
from tests.conftest import import_or_require
from tests.core_apps import FACTORIES, Client, json_lines

ECS_CSV = Path(__file__).resolve().parent / "data" / "ecs-8.17.0-fields.csv"
# Fields outside ECS that the contract allows, with the type pyobs maps them to.
NON_ECS = {"http.route": "keyword"}
PY_TYPES = {
    "keyword": str, "wildcard": str, "match_only_text": str, "text": str, "date": str,
    "ip": str, "long": int, "constant_keyword": str,
}  # fmt: skip


def ecs_types() -> dict[str, str]:
    with ECS_CSV.open() as f:
        return {row["Field"]: row["Type"] for row in csv.DictReader(f)}


def test_stdlib_and_structlog_lines_match(capsys: pytest.CaptureFixture[str]) -> None:
    """The same event through stdlib logging and structlog gives the same ECS line shape."""
    import structlog

    pyobs.setup(service_name="shape")
    logging.getLogger("orders").warning("payment declined")
    structlog.get_logger("orders").warning("payment declined")
    a, b = json_lines(capsys.readouterr().out)
    for line in (a, b):
        line.pop("@timestamp")
    assert a == b
    assert a["log.level"] == "warning" and a["log.logger"] == "orders"


def test_structlog_inside_request_carries_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """structlog lines written during a request carry trace.id, span.id and http.request.id."""
    import_or_require("flask")
    import structlog
    from flask import Flask

    import pyobs.flask

    app = Flask("s")

    @app.get("/x")
    def x() -> str:
        structlog.get_logger("view").info("in view", order=7)
        return "ok"

    pyobs.flask.instrument(app)
    app.test_client().get("/x", headers={"X-Request-ID": "req-1"}, buffered=True)
    records = json_lines(capsys.readouterr().out)
    (view,) = [r for r in records if r["log.logger"] == "view"]
    (access,) = [r for r in records if r["log.logger"] == "pyobs.access"]
    assert view["trace.id"] == access["trace.id"]
    assert view["http.request.id"] == "req-1"
    assert view["labels.order"] == "7"  # not an ECS field: a string label (CONTRACT §5)


def test_exception_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """logger.exception gives error.type, error.message and error.stack_trace."""
    pyobs.setup()
    try:
        raise ValueError("bad input 42")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = json_lines(capsys.readouterr().out)
    assert line["error.type"] == "ValueError"
    assert line["error.message"] == "bad input 42"
    assert "Traceback" in line["error.stack_trace"]
    assert line["log.level"] == "error"


def test_console_format_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """PYOBS_LOG_FORMAT=console prints one readable line, not JSON."""
    pyobs.setup(log_format="console")
    logging.getLogger("x").info("hello %s", "world")
    out = capsys.readouterr().out
    assert "INFO" in out and "x: hello world" in out
    assert not out.startswith("{")


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_every_emitted_field_is_ecs_typed(
    framework: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every field of pyobs's own lines (access, error) is an ECS field with the ECS type."""
    import_or_require(framework)
    types = ecs_types()
    client = Client(framework, FACTORIES[framework](service_version="1", environment="e"))
    client.get("/items/1?x=1", headers={"User-Agent": "ua", "traceparent": "garbage"})
    client.get("/boom")
    records = [
        r
        for r in json_lines(capsys.readouterr().out)
        if r["log.logger"] in ("pyobs.access", "pyobs.internal")
    ]
    assert records
    seen: set[str] = set()
    for record in records:
        for field, value in record.items():
            seen.add(field)
            ecs_type = NON_ECS.get(field) or types.get(field)
            assert ecs_type is not None, f"{field} is not an ECS field"
            expected: Any = PY_TYPES[ecs_type]
            assert isinstance(value, expected), (field, value, ecs_type)
    assert {"trace.id", "span.id", "http.request.id", "event.duration"} <= seen
    # Starlette's test client says its peer is "testclient": not an IP, so client.address.
    assert ("client.ip" if framework == "flask" else "client.address") in seen
    assert {"error.type", "error.message", "error.stack_trace"} <= seen


def test_log_events_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    """pyobs_log_events_total counts records by level."""
    from prometheus_client import REGISTRY

    pyobs.setup()
    for _ in range(3):
        logging.getLogger("c").warning("w")
    capsys.readouterr()
    assert REGISTRY.get_sample_value("pyobs_log_events_total", {"level": "warning"}) == 3


@pytest.mark.parametrize("status_path", ["/items/5?q=%22x%22", "/boom", "/nope/\u00e9"])
def test_access_fast_path_matches_logging_path(
    status_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The direct access-log writer and the general logging path give the same fields."""
    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"]())
    client.get(status_path)
    fast = [r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.access"]
    access = logging.getLogger("pyobs.access")
    access.addFilter(lambda record: True)  # any filter sends records down the logging path
    try:
        client.get(status_path)
    finally:
        access.filters.clear()
    slow = [r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.access"]
    varying = {"@timestamp", "trace.id", "span.id", "http.request.id", "event.duration"}
    assert len(fast) == len(slow) == 1
    assert {k: v for k, v in fast[0].items() if k not in varying} == {
        k: v for k, v in slow[0].items() if k not in varying
    }
    assert set(fast[0]) == set(slow[0])
