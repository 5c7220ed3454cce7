"""SLO specs: one YAML document per service, read and checked field by field.

The field names follow sloth's spec where they fit (``service``, ``labels``, ``slos`` with
``name``, ``objective`` in percent, ``description``, ``sli``, ``alerting`` with ``name``,
``labels``, ``annotations``, ``page_alert``, ``ticket_alert``); ``window`` (the SLO period)
is pyrra's; ``windows`` (the burn-rate alert windows) and ``exclude_routes`` are pyobs's.
Every field has a default: the objectives of :mod:`pyobs._dashgen.slo`. docs/slo.md is the
user's reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pyobs._dashgen import slo
from pyobs.metrics import DURATION_BUCKETS

VERSION = "pyobs/v1"
KINDS = ("availability", "latency")
_NAME = re.compile(r"[a-z][a-z0-9_-]*")
_ALERT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Labels the generator sets itself; a spec may not override them.
RESERVED_LABELS = frozenset({"service", "slo", "sli", "severity", "notify", "alertname"})

T = TypeVar("T")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the service and the field."""


@dataclass(frozen=True)
class BurnWindow:
    """Alert when ``budget_percent`` of the period's budget goes within ``long`` (and ``short``)."""

    long: str
    short: str
    budget_percent: float
    #: The burn rate that spends ``budget_percent`` of the budget within ``long``.
    factor: float


@dataclass(frozen=True)
class AlertOptions:
    """One of the two alerts of an SLO (the page or the ticket)."""

    disable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SLOSpec:
    """One objective of one service."""

    name: str
    kind: str
    objective: float  # a ratio: 0.999
    description: str
    errors: str  # availability: status codes that count as bad (a regex)
    threshold: float  # latency: seconds
    exclude_routes: tuple[str, ...]
    alert_name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    page: AlertOptions
    ticket: AlertOptions

    @property
    def budget(self) -> float:
        """The tolerated share of bad requests (1 - objective)."""
        return round(1.0 - self.objective, 10)

    @property
    def title(self) -> str:
        """The name as a title: ``checkout-latency`` -> ``Checkout latency``."""
        words = re.split(r"[-_]", self.name)
        return " ".join(words).capitalize()


@dataclass(frozen=True)
class ServiceSpec:
    """Every SLO of one service (its ``service`` label), its period and alert windows."""

    service: str
    window: str
    labels: Mapping[str, str]
    exclude_routes: tuple[str, ...]
    slos: tuple[SLOSpec, ...]
    page_windows: tuple[BurnWindow, ...]
    ticket_windows: tuple[BurnWindow, ...]
    source: str = ""

    def windows(self) -> tuple[str, ...]:
        """Every window a rule or panel reads, shortest first."""
        names = {
            w for bw in (*self.page_windows, *self.ticket_windows) for w in (bw.long, bw.short)
        }
        return tuple(sorted(names, key=slo.seconds))


#: The SRE workbook's windows and burn rates (table 5-8). They stay burn rates whatever the SLO
#: window: with 30d they spend 2% and 5% (page), 10% and 10% (ticket) of the budget.
DEFAULT_PAGE = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
DEFAULT_TICKET = (("1d", "2h", 3.0), ("3d", "6h", 1.0))


def default_slos() -> list[dict[str, Any]]:
    """The objectives a spec gets when it lists none: the constants of ``slo.py``."""
    return [
        {
            "name": "availability",
            "objective": slo.AVAILABILITY_OBJECTIVE * 100,
            "sli": {"availability": {}},
        },
        {
            "name": "latency",
            "objective": slo.LATENCY_OBJECTIVE * 100,
            "sli": {"latency": {"threshold": slo.LATENCY_THRESHOLD_SECONDS}},
        },
    ]


# --- Reading ------------------------------------------------------------------------------------


def load(path: Path) -> list[ServiceSpec]:
    """Every service spec in a YAML file (one document per service, separated by ``---``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror or exc})") from exc
    return parse(text, path.name)


def parse(text: str, source: str = "<spec>") -> list[ServiceSpec]:
    """Parse and check the documents of one spec file."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from exc
    if not documents:
        raise SpecError(f"{source}: no service in the spec (expected `service: NAME`)")
    specs: list[ServiceSpec] = []
    for index, document in enumerate(documents, start=1):
        where = source if len(documents) == 1 else f"{source}, document {index}"
        spec = _service(document, where)
        if any(other.service == spec.service for other in specs):
            raise SpecError(f"{where}: service: {spec.service!r} has a spec already in this file")
        specs.append(spec)
    return specs


class _Fields:
    """A mapping being read: knows its place in the spec for messages; refuses unknown fields."""

    def __init__(self, data: Any, where: str, path: str, allowed: Iterable[str]) -> None:
        self.where = where
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("", f"expected a mapping, got {_kind(data)}")
        unknown = sorted(str(k) for k in data if k not in set(allowed))
        if unknown:
            raise self.error(
                unknown[0],
                f"unknown field; expected one of: {', '.join(sorted(allowed))}",
            )
        self.data: dict[str, Any] = data

    def name(self, key: str) -> str:
        """The dotted path of ``key`` for messages."""
        if not key:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> SpecError:
        """An error naming the file and the field."""
        return SpecError(f"{self.where}: {self.name(key)}: {message}")

    def get(
        self, key: str, kind: type[T], default: T, check: Callable[[T], str] | None = None
    ) -> T:
        """The value of ``key`` (``default`` when absent), of type ``kind``."""
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(
                key, f"expected {_KIND_NAMES.get(kind, kind.__name__)}, got {_kind(value)}"
            )
        if check is not None:
            problem = check(value)
            if problem:
                raise self.error(key, problem)
        return value

    def sub(self, key: str, allowed: Iterable[str]) -> _Fields:
        """The mapping under ``key``."""
        return _Fields(self.data.get(key), self.where, self.name(key), allowed)

    def labels(self, key: str) -> dict[str, str]:
        """A label or annotation mapping of strings."""
        raw = self.data.get(key)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(key, f"expected a mapping of names to strings, got {_kind(raw)}")
        out: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(name, str) or not _LABEL.fullmatch(name):
                raise self.error(f"{key}.{name}", "not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)")
            if name in RESERVED_LABELS and key == "labels":
                raise self.error(f"{key}.{name}", "set by pyobs; choose another label name")
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.error(f"{key}.{name}", f"expected a string, got {_kind(value)}")
            out[name] = str(value)
        return out

    def routes(self, key: str) -> tuple[str, ...]:
        """A list of route templates."""
        raw = self.data.get(key)
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.error(key, f"expected a list of route templates, got {_kind(raw)}")
        for i, route in enumerate(raw):
            if not isinstance(route, str) or not route.startswith("/") or _unsafe(route):
                raise self.error(
                    f"{key}[{i}]", f"expected a route template like /items/{{id}}, got {route!r}"
                )
        return tuple(raw)


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _duration(value: str) -> str:
    try:
        return "" if slo.seconds(value) > 0 else "must be longer than 0s"
    except ValueError:
        return f"not a duration: {value!r} (write it like 30d, 6h, 5m)"


def _service(document: Any, where: str) -> ServiceSpec:
    top = _Fields(
        document,
        where,
        "",
        ("version", "service", "window", "labels", "exclude_routes", "slos", "windows"),
    )
    version = top.get("version", str, VERSION)
    if version != VERSION:
        raise top.error("version", f"unsupported version {version!r}; this pyobs reads {VERSION!r}")
    if "service" not in top.data:
        raise top.error("service", "missing: the value of the `service` label this spec is for")
    service = top.get("service", str, "", _service_name)
    where = f"{where} (service {service})"
    top.where = where
    window = top.get("window", str, slo.SLO_PERIOD, _duration)
    labels = top.labels("labels")
    exclude = top.routes("exclude_routes")
    page, ticket = _windows(top, window)

    raw_slos = top.data.get("slos")
    if raw_slos is None:
        raw_slos = default_slos()
    if not isinstance(raw_slos, list) or not raw_slos:
        raise top.error(
            "slos", "expected a non-empty list of SLOs (or leave it out for the defaults)"
        )
    slos: list[SLOSpec] = []
    for i, raw in enumerate(raw_slos):
        objective = _slo(_Fields(raw, where, f"slos[{i}]", _SLO_FIELDS), exclude, page)
        if any(other.name == objective.name for other in slos):
            raise SpecError(f"{where}: slos[{i}].name: {objective.name!r} is listed twice")
        slos.append(objective)
    return ServiceSpec(service, window, labels, exclude, tuple(slos), page, ticket, where)


_SLO_FIELDS = ("name", "objective", "description", "sli", "exclude_routes", "alerting")


def _windows(top: _Fields, period: str) -> tuple[tuple[BurnWindow, ...], tuple[BurnWindow, ...]]:
    fields = top.sub("windows", ("page", "ticket"))
    out = []
    for severity, default in (("page", DEFAULT_PAGE), ("ticket", DEFAULT_TICKET)):
        raw = fields.data.get(severity)
        if raw is None:
            raw = [{"long": lo, "short": sh, "factor": factor} for lo, sh, factor in default]
        if not isinstance(raw, list) or not raw:
            raise fields.error(
                severity, "expected a non-empty list of {long, short, budget_percent or factor}"
            )
        windows = [
            _window(_Fields(item, top.where, fields.name(f"{severity}[{i}]"), _WINDOW), period)
            for i, item in enumerate(raw)
        ]
        out.append(tuple(windows))
    return out[0], out[1]


_WINDOW = ("long", "short", "budget_percent", "factor")


def _window(entry: _Fields, period: str) -> BurnWindow:
    for key in ("long", "short"):
        if key not in entry.data:
            raise entry.error(key, "missing")
    if ("budget_percent" in entry.data) == ("factor" in entry.data):
        raise entry.error("", "give exactly one of budget_percent and factor")
    long = entry.get("long", str, "", _duration)
    short = entry.get("short", str, "", _duration)
    if slo.seconds(short) >= slo.seconds(long):
        raise entry.error("short", f"{short} must be shorter than long ({long})")
    if slo.seconds(long) > slo.seconds(period):
        raise entry.error("long", f"{long} is longer than the SLO window ({period})")
    share = slo.seconds(long) / slo.seconds(period)
    if "factor" in entry.data:
        key = "factor"
        factor = entry.get(key, float, 0.0)
        percent = round(factor * share * 100, 6)
    else:
        key = "budget_percent"
        percent = entry.get(
            key, float, 0.0, lambda p: "" if 0 < p <= 100 else "must be in (0, 100]"
        )
        factor = round(percent / 100 / share, 6)
    if factor < 1:
        raise entry.error(
            key,
            f"a burn rate of {factor:.3g}x ({percent:.3g}% of a {period} budget within {long}) "
            "is below 1x: the alert would fire while the budget lasts the whole window. Raise "
            "it or shorten long.",
        )
    return BurnWindow(long, short, percent, factor)


def _slo(fields: _Fields, exclude: tuple[str, ...], page: tuple[BurnWindow, ...]) -> SLOSpec:
    for key in ("name", "objective", "sli"):
        if key not in fields.data:
            raise fields.error(key, "missing")
    name = fields.get(
        "name",
        str,
        "",
        lambda n: "" if _NAME.fullmatch(n) else "use lower-case letters, digits, - and _",
    )
    percent = fields.get(
        "objective",
        float,
        0.0,
        lambda p: "" if 0 < p < 100 else "a percentage between 0 and 100 (exclusive), e.g. 99.9",
    )
    objective = round(percent / 100, 10)
    budget = round(1 - objective, 10)
    worst = max(w.factor for w in page)
    if worst * budget >= 1:
        raise fields.error(
            "objective",
            f"{percent:g}% leaves a {budget * 100:g}% error budget; the page at {worst:g}x would "
            f"need {worst * budget * 100:g}% bad requests and could never fire. Raise the "
            "objective or lower windows.page's budget_percent.",
        )
    sli = fields.sub("sli", KINDS)
    kinds = [k for k in KINDS if k in sli.data]
    if len(kinds) != 1:
        raise sli.error("", "expected exactly one of: " + ", ".join(KINDS))
    kind = kinds[0]
    errors = "5.."
    threshold = 0.0
    what = ""
    if kind == "availability":
        options = sli.sub("availability", ("errors",))
        errors = options.get("errors", str, errors, _regex)
        what = (
            "requests answered without a 5xx"
            if errors == "5.."
            else f"requests not answered with {errors}"
        )
    else:
        options = sli.sub("latency", ("threshold", "custom_buckets"))
        if "threshold" not in options.data:
            raise options.error("threshold", "missing: seconds a good request finishes within")
        custom = options.get("custom_buckets", bool, False)
        threshold = options.get(
            "threshold", float, 0.0, lambda t: "" if t > 0 else "must be above 0"
        )
        if not custom and threshold not in DURATION_BUCKETS:
            bounds = ", ".join(f"{b:g}" for b in DURATION_BUCKETS)
            raise options.error(
                "threshold",
                f"{threshold:g} s is not a bucket bound of http_server_request_duration_seconds "
                f"({bounds}); pick one of them, or set custom_buckets: true when the service "
                "sets PYOBS_DURATION_BUCKETS with this bound",
            )
        what = f"requests answered within {threshold:g} s"
    description = fields.get("description", str, what)
    routes = (*exclude, *fields.routes("exclude_routes"))

    alerting = fields.sub(
        "alerting", ("name", "labels", "annotations", "page_alert", "ticket_alert")
    )
    default_name = "Pyobs" + "".join(part.capitalize() for part in re.split(r"[-_]", name))
    alert_name = alerting.get(
        "name",
        str,
        default_name,
        lambda n: (
            "" if _ALERT_NAME.fullmatch(n) else "not a valid alert name ([A-Za-z_][A-Za-z0-9_]*)"
        ),
    )
    return SLOSpec(
        name=name,
        kind=kind,
        objective=objective,
        description=description,
        errors=errors,
        threshold=threshold,
        exclude_routes=tuple(dict.fromkeys(routes)),
        alert_name=alert_name,
        labels=alerting.labels("labels"),
        annotations=alerting.labels("annotations"),
        page=_alert_options(alerting.sub("page_alert", ("disable", "labels", "annotations"))),
        ticket=_alert_options(alerting.sub("ticket_alert", ("disable", "labels", "annotations"))),
    )


def _alert_options(fields: _Fields) -> AlertOptions:
    return AlertOptions(
        disable=fields.get("disable", bool, False),
        labels=fields.labels("labels"),
        annotations=fields.labels("annotations"),
    )


def _unsafe(value: str) -> bool:
    # Label values and regexes go into double-quoted PromQL strings.
    return any(char in value for char in '"\\\n')


def _service_name(value: str) -> str:
    if not value.strip():
        return "must not be empty"
    return "must not contain quotes, backslashes or line breaks" if _unsafe(value) else ""


def _regex(value: str) -> str:
    if '"' in value or "\n" in value:
        return "must not contain double quotes or line breaks"
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a regular expression ({exc})"
    return "" if value else "must not be empty"
