"""Extra fields made safe for Elasticsearch before they leave the process (CONTRACT §5).

A field the application or a library adds to a record (``extra=``, structlog key-values):

- an ECS field name whose value fits the ECS type passes through (numbers and booleans
  given to a string field are written as the string Elasticsearch would store);
- any other scalar goes to ``labels.<name>`` as a string (dots in the name become ``_``,
  so one label never turns into an object another record needs as a string);
- anything else goes under ``pyobs.extra`` (mapped ``flattened``), made JSON-safe;
- known noise is dropped (uvicorn's ``color_message``; Django's ``request`` object and
  ``server_time``); Django's ``status_code`` becomes ``http.response.status_code``.

``python -m pyobs._ecs`` regenerates ``pyobs/_ecs_fields.py`` from the ECS field list kept in
``tests/data``; a test fails when the two differ.
"""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import enum
import ipaddress
import math
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyobs._ecs_fields import ECS_FIELDS_VERSION, FIELD_TYPES

LABELS_PREFIX = "labels."
EXTRA_FIELD = "pyobs.extra"
# Types whose values are strings in Elasticsearch (the ECS types and their families).
STRING_TYPES = frozenset({"keyword", "wildcard", "constant_keyword", "match_only_text", "text"})
FLOAT_TYPES = frozenset({"float", "scaled_float", "half_float", "double"})
# ECS field sets that hold objects; only `labels` takes values from an extra (merged).
OBJECT_TYPES = frozenset({"object", "nested", "flattened"})
# Fields outside ECS that pyobs itself writes (CONTRACT §5), typed like ECS ones.
PYOBS_FIELDS = {"http.route": "keyword"}
# (logger prefix, field): dropped. "" matches every logger.
NOISE = {
    "color_message": "",  # uvicorn: the message again, with ANSI colour codes
    "request": "django",  # django.request / django.server: the request or socket object
    "server_time": "django",  # django.server: the dev server's own clock string
}
# (logger prefix, field) -> the ECS field it means, when its value fits.
RENAMES = {"status_code": ("django", "http.response.status_code")}
# Deeper structures are cut (kept as JSON text) below the flattened type's depth_limit (20).
MAX_DEPTH = 10
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
# What Elasticsearch's default date format takes: strict_date_optional_time.
_DATE = re.compile(
    r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}([.,]\d{1,9})?)?)?"
    r"(Z|[+-]\d{2}(:?\d{2})?)?)?)?)?"
)
_IP_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$|^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$")
_IP_CACHE: dict[str, str | None] = {}
_IP_CACHE_MAX = 4096


def parse_ip(value: str) -> str | None:
    """The IP address in ``value``, or None. ``IPv4:port`` and ``[IPv6]:port`` lose the port.

    Proxies put either form in ``X-Forwarded-For``; Elasticsearch's ``ip`` type takes neither,
    nor ``unknown`` or RFC 7239's obfuscated ``_hidden`` identifiers. Zone ids (``%eth0``)
    are refused too: the ip type does not accept them.
    """
    cached = _IP_CACHE.get(value, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    result: str | None = None
    candidate = value.strip()
    match = _IP_PORT.match(candidate)
    if match is not None:
        candidate = match.group(1) or match.group(2)
    if "%" not in candidate:
        try:
            result = str(ipaddress.ip_address(candidate))
        except ValueError:
            result = None
        else:
            if candidate == value:
                result = value  # keep the original spelling when it is already an address
    if len(_IP_CACHE) >= _IP_CACHE_MAX:
        _IP_CACHE.clear()  # header values are attacker-chosen: keep the cache bounded
    _IP_CACHE[value] = result
    return result


def fix_client_ip(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with ``client.ip`` made an IP address; the raw value kept in ``client.address``.

    Returns ``fields`` itself when ``client.ip`` is absent or already an address (the common
    case, one dict lookup when cached), otherwise a copy in the same key order.
    """
    raw = fields.get("client.ip")
    if raw is None or (type(raw) is str and _IP_CACHE.get(raw) == raw):
        return fields
    ip = parse_ip(raw) if isinstance(raw, str) else None
    if ip == raw:
        return fields
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key != "client.ip":
            out[key] = value
            continue
        if ip is not None:
            out["client.ip"] = ip
        out["client.address"] = str(raw)
    return out


def _fits(es_type: str, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``es_type`` and the value to write (lossless conversions only)."""
    kind = type(value)
    if value is None:
        return True, None
    if es_type in STRING_TYPES:
        if kind is str:
            return True, value
        if kind is bool:
            return True, "true" if value else "false"
        if kind is int or (kind is float and math.isfinite(value)):
            return True, str(value)
        if isinstance(value, str):  # str subclasses, e.g. str-based enums
            return True, str(value)
        return False, value
    if es_type == "long":
        if kind is int and _LONG_MIN <= value <= _LONG_MAX:
            return True, value
        if kind is float and value.is_integer() and _LONG_MIN <= value <= _LONG_MAX:
            return True, int(value)
        return False, value
    if es_type in FLOAT_TYPES:
        if (kind is int and _LONG_MIN <= value <= _LONG_MAX) or (
            kind is float and math.isfinite(value)
        ):
            return True, value
        return False, value
    if es_type == "boolean":
        return kind is bool, value
    if es_type == "ip":
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return True, str(value)
        # Only a plain address fits: "ip:port" goes to labels whole rather than lose its port.
        return kind is str and parse_ip(value) == value, value
    if es_type == "date":
        if isinstance(value, _dt.datetime):
            if value.tzinfo is not None:
                value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
            return True, value.isoformat(timespec="milliseconds") + "Z"
        if isinstance(value, _dt.date):
            return True, value.isoformat()
        if kind is str:
            return _valid_date(value), value
        if kind is int and 0 <= value <= _LONG_MAX:
            return True, value  # epoch milliseconds
        return False, value
    if es_type == "geo_point":
        if isinstance(value, Mapping) and set(value) == {"lat", "lon"}:
            lat, lon = value["lat"], value["lon"]
            ok = all(type(v) in (int, float) and math.isfinite(v) for v in (lat, lon))
            if ok and -90 <= lat <= 90 and -180 <= lon <= 180:
                return True, {"lat": lat, "lon": lon}
        return False, value
    return False, value


def _valid_date(text: str) -> bool:
    """Whether the default date format of Elasticsearch reads ``text`` (ranges checked too)."""
    if _DATE.fullmatch(text) is None:
        return False
    numbers = [int(n) for n in re.findall(r"\d+", text.split(".")[0].split(",")[0])[:6]]
    numbers += [1, 1, 0, 0, 0][len(numbers) - 1 :]
    try:
        _dt.datetime(*numbers[:3], *numbers[3:6])  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def fits(es_type: str, value: Any) -> tuple[bool, Any]:
    """Like ``_fits``, for a single value or a list of them (every ECS field may be an array)."""
    if isinstance(value, (list, tuple)) and es_type != "geo_point":
        out = []
        for item in value:
            if isinstance(item, (list, tuple, Mapping)):
                return False, value
            ok, item = _fits(es_type, item)
            if not ok:
                return False, value
            out.append(item)
        return True, out
    return _fits(es_type, value)


def _scalar(value: Any) -> tuple[bool, Any]:
    """Whether ``value`` is a scalar, and its label string (None stays None)."""
    if value is None:
        return True, None
    kind = type(value)
    if kind is str:
        return True, value
    if kind is bool:
        return True, "true" if value else "false"
    if kind in (int, float):
        return True, str(value)
    if isinstance(value, enum.Enum):
        return _scalar(value.value)
    if isinstance(value, (str, int, float, decimal.Decimal, uuid.UUID)):
        return True, str(value)
    if isinstance(value, bytes):
        return True, value.decode("utf-8", "replace")
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return True, value.isoformat()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return True, str(value)
    return False, value


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON value the flattened type accepts: finite numbers, str keys, bounded depth."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return _text(value)
        return {_key(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            return _text(value)
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v, depth + 1) for v in items]
    ok, text = _scalar(value)
    if ok:
        return text
    return _text(value)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a __str__ that raises must not lose the record
        return f"<unprintable {type(value).__qualname__}>"


def _key(key: Any) -> str:
    """A key the flattened type keeps: a non-empty string."""
    text = key if type(key) is str else _text(key)
    return text if text.strip() else "_"


def label_name(name: str) -> str:
    """``labels.<name>``: dots become ``_`` (ECS label keys have none), never empty."""
    name = name.replace(".", "_").strip()
    return LABELS_PREFIX + (name or "_")


def sanitize(fields: Mapping[str, Any], logger: str = "") -> dict[str, Any]:
    """Top-level record fields for ``fields`` (a record's extras), safe for Elasticsearch."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] | None = None
    for name, value in fields.items():
        if name in _SPECIAL and _special(name, value, logger, out):
            continue
        es_type = _TYPES.get(name)
        if es_type is not None and es_type not in OBJECT_TYPES:
            ok, converted = fits(es_type, value)
            if ok:
                out[name] = converted
                continue
        kind = type(value)
        if kind is str:  # the common case first
            out[_label(name)] = value
            continue
        ok, text = (False, None) if kind is dict or kind is list else _scalar(value)
        if ok:
            out[_label(name)] = text
        else:
            extra = extra if extra is not None else {}
            extra[_key(name)] = json_safe(value, 1)
    if extra is not None:
        out.setdefault(EXTRA_FIELD, {}).update(extra)
    return out


def _special(name: str, value: Any, logger: str, out: dict[str, Any]) -> bool:
    """Noise, renames, client.ip and labels; True when ``name`` was dealt with here."""
    prefix = NOISE.get(name)
    if prefix is not None and logger.startswith(prefix):
        return True
    rename = RENAMES.get(name)
    if rename is not None and logger.startswith(rename[0]):
        ok, converted = fits(FIELD_TYPES[rename[1]], value)
        if ok and converted is not None:
            out[rename[1]] = converted
            return True
    if name == "client.ip" and type(value) is str:
        # As in the access log: the address without its port, the raw value kept.
        ip = parse_ip(value)
        if ip is not None:
            out["client.ip"] = ip
        if ip != value:
            out["client.address"] = value
        return True
    if name == "labels" and isinstance(value, Mapping):
        extra: dict[str, Any] = out.setdefault(EXTRA_FIELD, {})
        for key, item in value.items():
            ok, text = _scalar(item)
            if ok:
                out[label_name(_key(key))] = text
            else:
                extra[f"labels.{_key(key)}"] = json_safe(item, 1)
        if not extra:
            del out[EXTRA_FIELD]
        return True
    return False


_TYPES = {**FIELD_TYPES, **PYOBS_FIELDS}
_SPECIAL = frozenset({*NOISE, *RENAMES, "client.ip", "labels"})
_LABELS: dict[str, str] = {}


def _label(name: str) -> str:
    """``label_name`` remembered: the same extras come back on every record."""
    label = _LABELS.get(name)
    if label is None:
        label = label_name(name)
        if len(_LABELS) < 1024:
            _LABELS[name] = label
    return label


# -- the generated table ----------------------------------------------------------------------

_HEADER = '''"""ECS {version} field types, generated by ``python -m pyobs._ecs`` from the ECS list.

Source: the ECS repository, ``generated/csv/fields.csv`` at tag v{version} (a copy is kept in
``tests/data/ecs-{version}-fields.csv``). Multi-fields (``*.text``) are left out: they are not
fields a document can carry. Do not edit by hand.
"""

from __future__ import annotations

ECS_FIELDS_VERSION = "{version}"

# ECS type -> the field names of that type, space-separated.
_BY_TYPE = {{
'''

_FOOTER = """}}

FIELD_TYPES: dict[str, str] = {
    name: es_type for es_type, names in _BY_TYPE.items() for name in names.split()
}
"""


def read_csv(path: Path) -> dict[str, str]:
    """Field name -> ECS type from the official CSV, multi-fields left out."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = {row["Field"]: row["Type"] for row in csv.DictReader(handle)}
    return {
        name: es_type
        for name, es_type in rows.items()
        if not ("." in name and rows.get(name.rsplit(".", 1)[0], "object") not in OBJECT_TYPES)
    }


def render_table(types: dict[str, str], version: str) -> str:
    """The text of ``pyobs/_ecs_fields.py`` for ``types``."""
    by_type: dict[str, list[str]] = {}
    for name, es_type in sorted(types.items()):
        by_type.setdefault(es_type, []).append(name)
    lines = [_HEADER.format(version=version)]
    for es_type in sorted(by_type):
        one = f'    "{es_type}": "{" ".join(by_type[es_type])}",\n'
        if len(one) <= 101:
            lines.append(one)
            continue
        lines.append(f'    "{es_type}": (\n')
        line = ""
        for name in by_type[es_type]:
            if len(line) + len(name) + 1 > 88:
                lines.append(f'        "{line}"\n')
                line = ""
            line += name + " "
        lines.append(f'        "{line.rstrip()}"\n')
        lines.append("    ),\n")
    lines.append(_FOOTER.replace("}}", "}"))
    return "".join(lines)


CSV_PATH = f"tests/data/ecs-{ECS_FIELDS_VERSION}-fields.csv"

if __name__ == "__main__":  # pragma: no cover
    repo = Path(__file__).resolve().parents[1]
    source = repo / CSV_PATH
    target = repo / "pyobs" / "_ecs_fields.py"
    target.write_text(render_table(read_csv(source), ECS_FIELDS_VERSION), encoding="utf-8")
    print(f"wrote {target.relative_to(repo)}")
    sys.exit(0)
