"""The standard ``OTEL_*`` variables, read as the OpenTelemetry SDK reads them.

pyobs leaves most of them to the SDK (sampler, resource detectors, exporter endpoints and
headers, batch processor); this module resolves the ones whose value pyobs needs itself
(the service name, version and environment that logs and ``pyobs_info`` share with the span
resource; the URLs to exclude) and checks the rest at ``setup()``, so that a malformed value
fails with a message naming the variable instead of a silent fallback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

# Propagator names the OpenTelemetry project ships, and the package that brings each.
KNOWN_PROPAGATORS: Mapping[str, str] = {
    "tracecontext": "opentelemetry-api",
    "baggage": "opentelemetry-api",
    "b3": "opentelemetry-propagator-b3",
    "b3multi": "opentelemetry-propagator-b3",
    "jaeger": "opentelemetry-propagator-jaeger",
    "xray": "opentelemetry-propagator-aws-xray",
    "ottrace": "opentelemetry-propagator-ot-trace",
}
# The SDK's own sampler names (opentelemetry.sdk.trace.sampling).
SDK_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
RATIO_SAMPLERS = frozenset({"traceidratio", "parentbased_traceidratio"})
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
# Exporter names pyobs builds itself; others are looked up like the SDK does (entry points).
BUILTIN_EXPORTERS = ("console", "otlp", "otlp_proto_http", "otlp_proto_grpc", "none")
# Every framework name pyobs registers (pyobs_info's `framework` label).
FRAMEWORKS = (
    "flask",
    "flask-restful",
    "django",
    "fastapi",
    "starlette",
    "tornado",
    "falcon",
    "sanic",
    "pyramid",
    "aiohttp",
    "wsgi",
    "asgi",
)
# pyobs's framework name -> the name contrib uses in OTEL_PYTHON_<NAME>_EXCLUDED_URLS.
_CONTRIB_NAMES: Mapping[str, str] = {
    "aiohttp": "AIOHTTP_SERVER",
    "flask-restful": "FLASK",
}


def entry_point_names(group: str) -> frozenset[str]:
    """Names registered under an entry-point group (what the SDK can load by name)."""
    from importlib.metadata import entry_points

    return frozenset(ep.name for ep in entry_points(group=group))


def resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES as the SDK parses it: ``k=v`` pairs, values percent-decoded.

    Pairs without ``=`` are skipped (the SDK warns about them and goes on).
    """
    out: dict[str, str] = {}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def identity(env: Mapping[str, str]) -> dict[str, str]:
    """Service name, version and environment from the OTEL variables (Config field -> value).

    ``OTEL_SERVICE_NAME`` wins over ``service.name`` in OTEL_RESOURCE_ATTRIBUTES, as in the
    SDK; ``deployment.environment.name`` over the older ``deployment.environment``.
    """
    attributes = resource_attributes(env)
    out: dict[str, str] = {}
    name = env.get("OTEL_SERVICE_NAME", "").strip() or attributes.get("service.name", "")
    if name:
        out["service_name"] = name
    if attributes.get("service.version"):
        out["service_version"] = attributes["service.version"]
    environment = attributes.get("deployment.environment.name") or attributes.get(
        "deployment.environment"
    )
    if environment:
        out["environment"] = environment
    return out


def sdk_disabled(env: Mapping[str, str]) -> bool:
    """OTEL_SDK_DISABLED: ``true`` (any case) turns tracing off, as the SDK does."""
    raw = env.get("OTEL_SDK_DISABLED", "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ValueError(f"OTEL_SDK_DISABLED={raw!r} is invalid: it accepts true or false")
    return raw == "true"


def propagator_names(env: Mapping[str, str]) -> list[str]:
    """OTEL_PROPAGATORS as a list (default tracecontext,baggage; ``none`` gives [])."""
    raw = env.get("OTEL_PROPAGATORS", "")
    if not raw.strip():
        return ["tracecontext", "baggage"]
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if any(n.lower() == "none" for n in names):
        return []
    return names


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER as a list; unset means otlp when an OTLP endpoint is set, else none."""
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if raw:
        return [n.strip() for n in raw.split(",") if n.strip() and n.strip() != "none"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def otlp_setting(env: Mapping[str, str], name: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>, else '' (stripped)."""
    return (
        env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}", "").strip()
        or env.get(f"OTEL_EXPORTER_OTLP_{name}", "").strip()
    )


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP protocol for traces (TRACES_PROTOCOL over PROTOCOL; default http/protobuf)."""
    return (otlp_setting(env, "PROTOCOL") or "http/protobuf").lower()


@dataclass(frozen=True)
class BatchSettings:
    """The batch span processor's settings (the SDK's constructor arguments).

    pyobs's defaults, for a service doing thousands of requests per second, are argued in
    docs/configuration.md (span export); the OTEL_BSP_* variables win when set.
    """

    max_queue_size: int = 8192
    max_export_batch_size: int = 2048
    schedule_delay_millis: int = 1000
    export_timeout_millis: int = 10000


DEFAULTS = BatchSettings()
_VARIABLES = {
    "max_queue_size": "OTEL_BSP_MAX_QUEUE_SIZE",
    "max_export_batch_size": "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "schedule_delay_millis": "OTEL_BSP_SCHEDULE_DELAY",
    "export_timeout_millis": "OTEL_BSP_EXPORT_TIMEOUT",
}


def batch_settings(env: Mapping[str, str]) -> BatchSettings:
    """pyobs's defaults with the OTEL_BSP_* variables that are set; ValueError names a bad one.

    A batch size set alone raises the queue to hold at least one batch, a queue size set
    alone lowers the batch to fit in it; both set with the batch larger is an error.
    """
    given: dict[str, int] = {}
    for field, var in _VARIABLES.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"{var}={raw!r} is invalid: it accepts a positive integer")
        given[field] = value
    queue = given.get("max_queue_size")
    batch = given.get("max_export_batch_size")
    if queue is not None and batch is not None and batch > queue:
        raise ValueError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is invalid: it must not exceed "
            f"OTEL_BSP_MAX_QUEUE_SIZE={queue}"
        )
    if queue is None:
        given["max_queue_size"] = max(DEFAULTS.max_queue_size, batch or 0)
    if batch is None:
        given["max_export_batch_size"] = min(
            DEFAULTS.max_export_batch_size, given["max_queue_size"]
        )
    return BatchSettings(**{**DEFAULTS.__dict__, **given})


def _regex_list(var: str, raw: str) -> list[str]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    for part in parts:
        try:
            re.compile(part)
        except re.error as exc:
            raise ValueError(
                f"{var}={raw!r} is invalid: it accepts comma-separated regular expressions "
                f"({part!r}: {exc})"
            ) from None
    return parts


def excluded_urls(frameworks: Iterable[str], env: Mapping[str, str]) -> re.Pattern[str] | None:
    """One regex for OTEL_PYTHON_EXCLUDED_URLS and OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS.

    As in OpenTelemetry's contrib (``util.http.get_excluded_urls``): a framework's own
    variable, when set, replaces the generic one for that framework; the regexes are
    *searched* in the request's full URL. Empty items are ignored (contrib would turn them
    into a pattern that matches every URL). With several frameworks in one process the
    lists are combined.
    """
    generic = env.get("OTEL_PYTHON_EXCLUDED_URLS", "")
    patterns: list[str] = []
    names = [_CONTRIB_NAMES.get(f, f.upper().replace("-", "_")) for f in frameworks]
    if not names:
        names = [""]
    for name in names:
        var = f"OTEL_PYTHON_{name}_EXCLUDED_URLS"
        raw = env.get(var) if name else None
        if raw is None:
            var, raw = "OTEL_PYTHON_EXCLUDED_URLS", generic
        for part in _regex_list(var, raw):
            if part not in patterns:
                patterns.append(part)
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def full_url(facts: Any) -> str:
    """scheme://host/path of a request, as contrib's ASGI and Django exclusion checks see it.

    The host is the Host header, else the server address (with its port unless 80/443).
    The query string is left out.
    """
    host = facts.headers.get("host")
    if not host:
        host = facts.server_addr or "localhost"
        port = facts.server_port
        if port and port not in (80, 443):
            host = f"{host}:{port}"
    return f"{facts.scheme}://{host}{facts.path}"


def check(env: Mapping[str, str]) -> None:
    """Raise ValueError (message naming the variable and what it accepts) for a malformed value.

    Unknown sampler, propagator and exporter names are errors here, where the SDK would
    log a warning and fall back: pyobs fails ``setup()`` instead, as for its own variables.
    A propagator that OpenTelemetry ships but whose package is missing is not an error: it
    is warned about when tracing is configured.
    """
    sdk_disabled(env)
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if (
        sampler
        and sampler not in SDK_SAMPLERS
        and sampler not in entry_point_names("opentelemetry_traces_sampler")
    ):
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={sampler!r} is invalid: it accepts "
            + ", ".join(SDK_SAMPLERS)
            + " (or a sampler installed under the opentelemetry_traces_sampler entry point)"
        )
    if sampler in RATIO_SAMPLERS:
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        try:
            ratio = float(raw) if raw else 1.0
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG={raw!r} is invalid: with {sampler} it accepts a "
                "probability from 0.0 to 1.0"
            )
    names = propagator_names(env)
    unknown = [n for n in names if n not in KNOWN_PROPAGATORS]
    if unknown:
        installed = entry_point_names("opentelemetry_propagator")
        missing = [n for n in unknown if n not in installed]
        if missing:
            raise ValueError(
                f"OTEL_PROPAGATORS={env.get('OTEL_PROPAGATORS')!r} is invalid: "
                f"{', '.join(repr(m) for m in missing)} is not a known propagator; it accepts "
                + ", ".join(KNOWN_PROPAGATORS)
                + ", none, or a propagator installed under the opentelemetry_propagator "
                "entry point"
            )
    exporters = exporter_names(env)
    others = [n for n in exporters if n not in BUILTIN_EXPORTERS]
    if others:
        installed = entry_point_names("opentelemetry_traces_exporter")
        missing = [n for n in others if n not in installed]
        if missing:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={env.get('OTEL_TRACES_EXPORTER')!r} is invalid: "
                f"{', '.join(repr(m) for m in missing)} is not an installed exporter; it "
                "accepts otlp, console, none, or an exporter installed under the "
                "opentelemetry_traces_exporter entry point"
            )
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = env.get(var, "").strip()
        if raw and raw.lower() not in OTLP_PROTOCOLS:
            raise ValueError(
                f"{var}={raw!r} is invalid: pyobs's OTLP exporters accept "
                + " or ".join(OTLP_PROTOCOLS)
            )
    excluded_urls(FRAMEWORKS, env)
    batch_settings(env)
