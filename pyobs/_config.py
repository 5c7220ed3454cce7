"""The frozen configuration: environment variables, overridden by keyword options."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HEALTH_PATHS = frozenset({"/health", "/healthz", "/ready", "/readyz", "/livez"})
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable and what it accepts."""


@dataclass(frozen=True)
class MetricsAuth:
    """Credentials that guard the metrics endpoint."""

    scheme: Literal["basic", "bearer"]
    user: str = ""
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class Config:
    """Effective pyobs settings; see docs/configuration.md for every field."""

    service_name: str = "unknown_service"
    service_version: str = ""
    environment: str = ""
    log_level: str | None = None  # None: leave the root's level as it is
    log_format: Literal["json", "console"] = "json"
    access_log: bool = True
    metrics_path: str = "/metrics"
    metrics_port: int | None = None
    metrics_auth: MetricsAuth | None = None
    excluded_paths: tuple[re.Pattern[str], ...] = ()
    max_routes: int = 500
    trusted_proxies: tuple[IPNetwork, ...] = ()
    logstash_host: str | None = None
    logstash_port: int = 5000
    logstash_tls: bool = False
    log_spool_dir: str | None = None
    log_spool_max_bytes: int = 100 * 1024 * 1024
    disabled: bool = False
    tracing: bool = True
    multiproc_dir: str | None = None
    # Added this round (contract §5, §6); see docs/configuration.md.
    log_handler: Literal["auto", "always", "never"] = "auto"
    logstash_url: str | None = None
    elasticsearch_url: str | None = None
    elasticsearch_api_key: str | None = field(default=None, repr=False)
    elasticsearch_username: str | None = None
    elasticsearch_password: str | None = field(default=None, repr=False)
    redact_headers: tuple[str, ...] = ()
    redact_query_params: tuple[str, ...] = ()
    metrics_addr: str = "0.0.0.0"
    # Metric customisation (docs/configuration.md, "Customising metrics").
    duration_buckets: tuple[float, ...] | None = None  # None: OTel's advised buckets
    request_size_buckets: tuple[float, ...] | None = None
    response_size_buckets: tuple[float, ...] | None = None
    metrics_labels: tuple[tuple[str, str], ...] = ()
    metrics_prefix: str = ""
    body_size_metrics: bool = True
    # Keyword options only (no environment variable): objects, not strings.
    metrics_registry: Any = None
    request_label_names: tuple[str, ...] = ()
    request_label_hook: Callable[[Any], Mapping[str, Any]] | None = None

    def is_excluded(self, path: str) -> bool:
        """True for the metrics path, health paths and PYOBS_EXCLUDED_PATHS: no telemetry at all."""
        quiet, excluded = self.exclusions
        return path in quiet or (excluded is not None and excluded.fullmatch(path) is not None)

    @functools.cached_property
    def exclusions(self) -> tuple[frozenset[str], re.Pattern[str] | None]:
        """(exact paths, one regex of PYOBS_EXCLUDED_PATHS or None): what is_excluded checks."""
        # Computed once per config (it is on every request's path): one set, one regex.
        patterns = [p.pattern for p in self.excluded_paths]
        combined = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        return HEALTH_PATHS | {self.metrics_path}, combined


# --- parsers: each turns a raw string into a value or raises ValueError(what it accepts) ---


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("true/false (also 1/0, yes/no, on/off)")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        low = raw.strip().lower()
        if low == "warn":
            low = "warning"
        if low not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return low

    return parse


def _path(raw: str) -> str:
    raw = raw.strip()
    if not raw.startswith("/") or " " in raw:
        raise ValueError("a URL path starting with '/', e.g. /metrics")
    return raw


def _auth(raw: str) -> MetricsAuth | None:
    raw = raw.strip()
    if not raw:
        return None
    scheme, _, rest = raw.partition(":")
    if scheme == "basic":
        user, sep, password = rest.partition(":")
        if sep and user and password:
            return MetricsAuth("basic", user, password)
    elif scheme == "bearer" and rest:
        return MetricsAuth("bearer", "", rest)
    raise ValueError("'basic:USER:PASS' or 'bearer:TOKEN'")


def _regexes(raw: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(re.compile(part))
        except re.error as exc:
            raise ValueError(f"comma-separated regular expressions ({part!r}: {exc})") from None
    return tuple(out)


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                f"comma-separated IP addresses or CIDR networks ({part!r} is neither)"
            ) from None
    return tuple(out)


def _nonempty(raw: str) -> str:
    return raw.strip()


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _optional_port(raw: str) -> int | None:
    return _int_range(1, 65535)(raw) if raw.strip() else None


def _buckets(raw: str) -> tuple[float, ...] | None:
    if not raw.strip():
        return None
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError("comma-separated increasing numbers, e.g. 0.01,0.1,1,10") from None
    if not values or list(values) != sorted(set(values)):
        raise ValueError("comma-separated increasing numbers, e.g. 0.01,0.1,1,10")
    return values


def _labels(raw: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError("comma-separated name=value pairs, e.g. team=payments,region=eu")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _http_url(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) == 0:
        raise ValueError("an http:// or https:// URL, e.g. http://logstash:8080")
    return raw.rstrip("/")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


def _address(raw: str) -> str:
    raw = raw.strip()
    if not raw:
        raise ValueError("an IP address or host name to bind, e.g. 0.0.0.0 or 127.0.0.1")
    return raw


# field -> (environment variable, parser)
_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "service_name": ("PYOBS_SERVICE_NAME", _nonempty),
    "service_version": ("PYOBS_SERVICE_VERSION", _nonempty),
    "environment": ("PYOBS_ENVIRONMENT", _nonempty),
    "log_level": ("PYOBS_LOG_LEVEL", _choice(*LOG_LEVELS)),
    "log_format": ("PYOBS_LOG_FORMAT", _choice("json", "console")),
    "access_log": ("PYOBS_ACCESS_LOG", _bool),
    "metrics_path": ("PYOBS_METRICS_PATH", _path),
    "metrics_port": ("PYOBS_METRICS_PORT", _optional_port),
    "metrics_auth": ("PYOBS_METRICS_AUTH", _auth),
    "excluded_paths": ("PYOBS_EXCLUDED_PATHS", _regexes),
    "max_routes": ("PYOBS_MAX_ROUTES", _int_range(1, 1_000_000)),
    "trusted_proxies": ("PYOBS_TRUSTED_PROXIES", _networks),
    "logstash_host": ("PYOBS_LOGSTASH_HOST", _optional_str),
    "logstash_port": ("PYOBS_LOGSTASH_PORT", _int_range(1, 65535)),
    "logstash_tls": ("PYOBS_LOGSTASH_TLS", _bool),
    "log_spool_dir": ("PYOBS_LOG_SPOOL_DIR", _optional_str),
    "log_spool_max_bytes": ("PYOBS_LOG_SPOOL_MAX_BYTES", _int_range(0, 2**50)),
    "disabled": ("PYOBS_DISABLED", _bool),
    "tracing": ("PYOBS_TRACING", _bool),
    "multiproc_dir": ("PROMETHEUS_MULTIPROC_DIR", _optional_str),
    "log_handler": ("PYOBS_LOG_HANDLER", _choice("auto", "always", "never")),
    "logstash_url": ("PYOBS_LOGSTASH_URL", _http_url),
    "elasticsearch_url": ("PYOBS_ELASTICSEARCH_URL", _http_url),
    "elasticsearch_api_key": ("PYOBS_ELASTICSEARCH_API_KEY", _optional_str),
    "elasticsearch_username": ("PYOBS_ELASTICSEARCH_USERNAME", _optional_str),
    "elasticsearch_password": ("PYOBS_ELASTICSEARCH_PASSWORD", _optional_str),
    "redact_headers": ("PYOBS_REDACT_HEADERS", _names),
    "redact_query_params": ("PYOBS_REDACT_QUERY_PARAMS", _names),
    "metrics_addr": ("PYOBS_METRICS_ADDR", _address),
    "duration_buckets": ("PYOBS_DURATION_BUCKETS", _buckets),
    "request_size_buckets": ("PYOBS_REQUEST_SIZE_BUCKETS", _buckets),
    "response_size_buckets": ("PYOBS_RESPONSE_SIZE_BUCKETS", _buckets),
    "metrics_labels": ("PYOBS_METRICS_LABELS", _labels),
    "metrics_prefix": ("PYOBS_METRICS_PREFIX", _nonempty),
    "body_size_metrics": ("PYOBS_BODY_SIZE_METRICS", _bool),
}
# Options that only code can pass (objects), checked by metrics_options().
_CODE_ONLY = frozenset({"metrics_registry", "request_label_names", "request_label_hook"})

ENV_VARS: Mapping[str, str] = {name: var for name, (var, _) in _ENV.items()}
# Values never echoed in an error message (they may hold credentials).
SECRET_FIELDS = frozenset(
    {
        "metrics_auth",
        "elasticsearch_api_key",
        "elasticsearch_password",
        "logstash_url",
        "elasticsearch_url",
    }
)


def _shown(name: str, raw: object) -> str:
    """The value as an error message may show it: secrets masked."""
    return "'***'" if name in SECRET_FIELDS else repr(raw)


def _coerce(name: str, value: Any) -> Any:
    """Accept keyword options either as typed values or as the same strings the env takes."""
    if name in _CODE_ONLY:
        if name == "request_label_names" and not isinstance(value, tuple):
            return tuple(value)
        return value
    var, parser = _ENV[name]
    if isinstance(value, str):
        try:
            return parser(value)
        except ValueError as exc:
            raise ConfigError(
                f"option {name}={_shown(name, value)} (like {var}) accepts {exc}"
            ) from None
    if name == "excluded_paths" and not isinstance(value, tuple):
        return tuple(re.compile(p) if isinstance(p, str) else p for p in value)
    if name == "trusted_proxies" and not isinstance(value, tuple):
        return _networks(",".join(str(v) for v in value))
    if name in ("redact_headers", "redact_query_params") and not isinstance(value, tuple):
        return tuple(str(v).strip().lower() for v in value)
    if name == "metrics_labels" and isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    if name.endswith("_buckets") and not isinstance(value, tuple):
        return tuple(float(v) for v in value)
    return value


def load_config(env: Mapping[str, str] | None = None, **options: Any) -> Config:
    """Build the frozen Config from ``env`` (default os.environ) and options (options win)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (var, parser) in _ENV.items():
        raw = env.get(var)
        if raw is None:
            continue
        try:
            values[name] = parser(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}={_shown(name, raw)} is invalid: it accepts {exc}") from None
    # Standard OTEL_* variables (docs/configuration.md, "OpenTelemetry variables"): the PYOBS_
    # names win; then OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, as in the SDK.
    from pyobs import _otel_env

    try:
        _otel_env.check(env)
        for name, value in _otel_env.identity(env).items():
            if not values.get(name):
                values[name] = value
        if _otel_env.sdk_disabled(env):
            values["tracing"] = False
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = {f.name for f in dataclasses.fields(Config)}
    for name, value in options.items():
        if name not in known:
            raise ConfigError(f"unknown option {name!r}; known options: {', '.join(sorted(known))}")
        if value is not None:
            values[name] = _coerce(name, value)
    if not values.get("service_name"):
        values.pop("service_name", None)
    return Config(**values)
