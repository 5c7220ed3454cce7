"""Extras made safe for Elasticsearch (CONTRACT §5), checked against the in-repo ECS field list."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest

import pyobs
from pyobs import _ecs
from pyobs import _ecs_fields as ecs_fields
from pyobs._config import Config
from pyobs.logs import ECSFormatter
from tests.conftest import import_or_require
from tests.core_apps import FACTORIES, Client, json_lines

REPO = Path(__file__).resolve().parents[1]
ECS_CSV = REPO / "tests" / "data" / "ecs-8.17.0-fields.csv"
PY_TYPES: dict[str, Any] = {
    "keyword": str, "wildcard": str, "constant_keyword": str, "match_only_text": str,
    "text": str, "date": (str, int), "ip": str, "long": int, "float": (int, float),
    "scaled_float": (int, float), "boolean": bool,
}  # fmt: skip


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


# Records the issue saw Elasticsearch refuse, and more of the same kind.
HOSTILE: list[dict[str, Any]] = [
    {"service": {"name": "billing", "tier": 1}},
    {"service": "billing"},
    {"user": "bob"},
    {"user": {"id": 7, "roles": ["a", "b"]}},
    {"order_id": 5},
    {"order_id": "A-17"},
    {"order_id": {"nested": True}},
    {"client.ip": "unknown"},
    {"client.ip": "203.0.113.9:4711"},
    {"source.ip": "[2001:db8::1]:443"},
    {"http.response.status_code": "two hundred"},
    {"event.start": "yesterday"},
    {"event.start": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)},
    {"host.cpu.usage": float("nan")},
    {"ratio": float("inf"), "blob": {"x": float("-inf")}},
    {"tags": ["a", {"b": 1}]},
    {"labels": {"team": "core", "weird.key": 3, "obj": {"a": 1}}},
    {"": "empty name", "a..b": 1, ".lead": 2, "trail.": 3},
    {"url.original.text": "a multi-field, not a field"},
    {"opaque": _Opaque(), "when": dt.date(2026, 1, 1), "raw": b"\xff\xfe"},
    {"process.pid": "not a pid", "log.level": 5},
]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = {f"k{i}": value}
    return value


HOSTILE.append({"deep": _deep(40)})


def _ecs_types() -> dict[str, str]:
    with ECS_CSV.open(newline="", encoding="utf-8") as handle:
        return {row["Field"]: row["Type"] for row in csv.DictReader(handle)}


def _record(extra: dict[str, Any], logger: str = "app") -> logging.LogRecord:
    record = logging.LogRecord(logger, logging.INFO, __file__, 1, "hello", None, None)
    record.__dict__.update(extra)
    return record


def assert_ecs_safe(fields: dict[str, Any], types: dict[str, str]) -> None:
    """Every key is an ECS leaf of the right type, a string label, or pyobs.extra JSON."""
    for key, value in fields.items():
        if key == _ecs.EXTRA_FIELD:
            text = json.dumps(value, allow_nan=False)  # finite numbers only: valid JSON
            assert isinstance(json.loads(text), dict)
            continue
        if key.startswith(_ecs.LABELS_PREFIX):
            name = key[len(_ecs.LABELS_PREFIX) :]
            assert name and "." not in name, key
            assert value is None or isinstance(value, str), (key, value)
            continue
        if key == "http.route":
            assert isinstance(value, str)
            continue
        ecs_type = types.get(key)
        assert ecs_type is not None, f"{key} is not an ECS field"
        assert not key.endswith(".text"), key
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            assert isinstance(item, PY_TYPES[ecs_type]), (key, item, ecs_type)
            if ecs_type == "long" or ecs_type == "boolean":
                assert (type(item) is bool) == (ecs_type == "boolean"), (key, item)
            if ecs_type == "ip":
                assert _ecs.parse_ip(item) == item, (key, item)


def test_generated_table_matches_the_csv() -> None:
    """pyobs/_ecs_fields.py is exactly what `python -m pyobs._ecs` builds from the in-repo CSV."""
    table = _ecs.render_table(_ecs.read_csv(ECS_CSV), "8.17.0")
    assert (REPO / "pyobs" / "_ecs_fields.py").read_text(encoding="utf-8") == table
    types = _ecs_types()
    multi = {n for n in types if n.endswith(".text")}
    assert {**ecs_fields.FIELD_TYPES, **{n: types[n] for n in multi}} == types


@pytest.mark.parametrize("extra", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_extras_become_ecs_safe(extra: dict[str, Any]) -> None:
    """Whatever an app passes as extra, the record's fields are ECS-typed, labels or pyobs.extra."""
    out = ECSFormatter(Config(service_name="t")).to_dict(_record(extra))
    assert_ecs_safe(out, _ecs_types())
    assert out["service.name"] == "t" and out["message"] == "hello"


def test_fitting_ecs_fields_pass_through_and_the_rest_is_kept() -> None:
    """ECS names of the right type pass; other scalars become string labels; objects pyobs.extra."""
    out = _ecs.sanitize(
        {
            "user.name": "ann",
            "user.id": 42,  # a number in a keyword field: the string Elasticsearch stores
            "source.ip": "192.0.2.1",
            "event.start": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "http.response.status_code": 201,
            "service": "billing",
            "order_id": 5,
            "flag": True,
            "client.ip": "203.0.113.9:4711",
            "http.route": "/items/{id}",
            "user": {"id": 7},
            "order.ref": "A-17",
        }
    )
    assert out == {
        "user.name": "ann",
        "user.id": "42",
        "source.ip": "192.0.2.1",
        "event.start": "2026-01-02T03:04:05.000Z",
        "http.response.status_code": 201,
        "labels.service": "billing",
        "labels.order_id": "5",
        "labels.flag": "true",
        "client.ip": "203.0.113.9",  # as in the access log: the port goes...
        "client.address": "203.0.113.9:4711",  # ...and the raw value is kept
        "http.route": "/items/{id}",
        "labels.order_ref": "A-17",
        "pyobs.extra": {"user": {"id": 7}},
    }


def test_json_safe_keeps_everything_within_flattened_limits() -> None:
    """NaN becomes text, deep nesting is cut into JSON text, keys become strings."""
    value = _ecs.json_safe({1: [float("nan"), {2}], "d": _deep(40)})
    assert value["1"] == ["nan", [2]]
    depth, node = 0, value["d"]
    while isinstance(node, dict):
        depth, node = depth + 1, next(iter(node.values()))
    assert depth < 20 and isinstance(node, str) and "bottom" in node


def test_uvicorn_and_django_noise() -> None:
    """color_message is dropped; Django's request object too; its status_code is the ECS one."""
    fmt = ECSFormatter(Config(service_name="t"))
    uvicorn = fmt.to_dict(_record({"color_message": "\x1b[32mGET\x1b[0m"}, "uvicorn.error"))
    assert not any("color" in key for key in uvicorn)
    django = fmt.to_dict(
        _record({"status_code": 404, "request": _Opaque()}, "django.request"),
    )
    assert django["http.response.status_code"] == 404
    assert not any("request" in key and key != "http.response.status_code" for key in django)
    other = fmt.to_dict(_record({"status_code": 404, "request": "r-1"}, "myapp"))
    assert other["labels.status_code"] == "404" and other["labels.request"] == "r-1"


def test_structlog_key_values_follow_the_same_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """structlog key-values go through the same mapping as stdlib extras."""
    import structlog

    pyobs.setup(service_name="s")
    structlog.get_logger("orders").info("paid", order_id=5, user={"id": 1}, **{"user.name": "a"})
    (line,) = json_lines(capsys.readouterr().out)
    assert line["labels.order_id"] == "5"
    assert line["pyobs.extra"] == {"user": {"id": 1}}
    assert line["user.name"] == "a"


@pytest.mark.parametrize(
    ("forwarded", "ip", "address"),
    [
        ("unknown", None, "unknown"),
        ("203.0.113.9:4711", "203.0.113.9", "203.0.113.9:4711"),
        ("[2001:db8::7]:443", "2001:db8::7", "[2001:db8::7]:443"),
        ("_hidden", None, "_hidden"),
        ("198.51.100.4", "198.51.100.4", None),
    ],
)
def test_forwarded_client_ip_is_an_ip_on_both_access_paths(
    forwarded: str, ip: str | None, address: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """X-Forwarded-For from a trusted proxy gives client.ip only when it is an address."""
    import_or_require("flask")
    client = Client("flask", FACTORIES["flask"](trusted_proxies="127.0.0.1/32"))
    lines = []
    # The fast path twice: the second line's client fields come from its per-peer cache.
    for slow in (False, False, True):
        access = logging.getLogger("pyobs.access")
        if slow:  # any filter sends the record down the logging path (to_dict)
            access.addFilter(lambda record: True)
        try:
            client.get("/items/1", headers={"X-Forwarded-For": forwarded})
        finally:
            access.filters.clear()
        (line,) = [
            r for r in json_lines(capsys.readouterr().out) if r["log.logger"] == "pyobs.access"
        ]
        lines.append(line)
    for line in lines:
        assert line.get("client.ip") == ip
        assert line.get("client.address") == address


def test_labels_dict_merges_with_other_extras() -> None:
    """A `labels` dict joins labels.*; its objects share pyobs.extra with the other objects."""
    out = _ecs.sanitize({"labels": {"team": "core", "obj": [1]}, "cart": {"n": 2}, "x.y": 3})
    assert out == {
        "labels.team": "core",
        "labels.x_y": "3",
        "pyobs.extra": {"labels.obj": [1], "cart": {"n": 2}},
    }


def test_real_uvicorn_and_django_records(capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn's start-up line and Django's "Not Found" warning, as those libraries log them,
    come out ECS-safe: no color_message, no request object, the status as the ECS field."""
    import_or_require("uvicorn")
    import_or_require("django")
    import uvicorn

    from tests.frameworks.apps import django_app

    pyobs.setup(service_name="third-party")
    django_app()
    from django.test import Client as DjangoClient

    capsys.readouterr()
    # log_config=None: uvicorn leaves logging alone, its records reach the root handler.
    config = uvicorn.Config("tests.core_apps:make_fastapi", host="127.0.0.1", port=0,
                            log_config=None)  # fmt: skip
    socket = config.bind_socket()
    socket.close()
    assert DjangoClient().get("/no-such-page").status_code == 404
    records = json_lines(capsys.readouterr().out)
    (running,) = [r for r in records if r["log.logger"] == "uvicorn.error"]
    assert running["message"].startswith("Uvicorn running on")
    (not_found,) = [r for r in records if r["log.logger"] == "django.request"]
    assert not_found["http.response.status_code"] == 404
    types = _ecs_types()
    for record in (running, not_found):
        assert_ecs_safe(record, types)
        assert not any("color" in key or key.endswith("request") for key in record), record
        assert "pyobs.extra" not in record, record  # the request object is not kept either
