"""`pyobs doctor`: show the effective configuration and reach every configured endpoint.

Prints the configuration (secrets masked), then one line per check: ``ok``, ``warn`` (worth
knowing, not wrong) or ``FAIL`` (pyobs cannot do what it is configured to do). Exit code 1
when any check fails, 0 otherwise. See docs/doctor.md.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import errno
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pyobs._config import ENV_VARS, Config, ConfigError, MetricsAuth, load_config

Status = Literal["ok", "warn", "FAIL"]
Check = tuple[Status, str, str]  # (status, what, plain words)
MASK = "***"
DISTRIBUTIONS = ("pyobs-kit", "pyobs")  # the new name first; "pyobs" for older installs
# Other projects whose distributions install an import package named "pyobs" too.
CLASHING_DISTRIBUTIONS = ("pyobs-core",)
# Extras whose packages are frameworks or optional features (not the dev tools).
SKIPPED_EXTRAS = frozenset({"all", "dev"})
WRITE_PRIVILEGES = ("create_doc", "auto_configure")  # what shipping into the data stream needs
NODE_VERSION = "/_nodes/_local?filter_path=nodes.*.version"
_SECRET_ENV = re.compile(r"(HEADERS|PASSWORD|SECRET|TOKEN|API_KEY|AUTH)$")


def register(subparsers: Any) -> None:
    """Add `pyobs doctor`."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the configuration and reach every configured endpoint",
        description="Prints the effective configuration (secrets masked), checks every "
        "configured endpoint (Logstash or Elasticsearch, the OTLP endpoint, the metrics "
        "port), the spool and multiprocess directories, and the installed framework and "
        "dependency versions against the ranges pyobs is tested with. Exit code 1 when "
        "something is wrong.",
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for each endpoint (3)"
    )
    parser.set_defaults(func=run)


# --- masking -----------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """The URL without the credentials it may carry (user:pass@, secret query values)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        from pyobs.redact import redact_query

        query = redact_query(query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _shown(name: str, value: Any) -> str:
    """A config value as doctor prints it: secrets masked, tuples joined."""
    if value is None:
        return "(unset)"
    if value == "":
        return '""'
    if isinstance(value, MetricsAuth):
        return f"basic:{value.user}:{MASK}" if value.scheme == "basic" else f"bearer:{MASK}"
    if name in ("elasticsearch_api_key", "elasticsearch_password"):
        return MASK
    if name.endswith("_url"):
        return mask_url(str(value))
    if isinstance(value, tuple):
        return ",".join(getattr(v, "pattern", str(v)) for v in value) or "(none)"
    return str(value)


def _shown_env(name: str, value: str) -> str:
    """An OTEL_* variable as doctor prints it: header values and URL credentials masked."""
    if name.endswith("_HEADERS"):
        keys = [pair.split("=", 1)[0].strip() for pair in value.split(",") if pair.strip()]
        return ",".join(f"{key}={MASK}" for key in keys)
    if _SECRET_ENV.search(name):
        return MASK
    if "://" in value:
        return mask_url(value)
    return value


def configuration_lines(config: Config, env: Mapping[str, str]) -> Iterator[str]:
    """The effective configuration, one ``VARIABLE  value`` line per setting."""
    width = max(len(v) for v in ENV_VARS.values())
    for field in dataclasses.fields(Config):
        var = ENV_VARS.get(field.name)
        if var is None:
            continue
        origin = "" if var in env else "  (default)"
        yield f"  {var:<{width}}  {_shown(field.name, getattr(config, field.name))}{origin}"
    for name in sorted(k for k in env if k.startswith("OTEL_")):
        yield f"  {name:<{width}}  {_shown_env(name, env[name])}"


# --- endpoint checks -----------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """Plain words for a network error (never the URL: it may hold credentials)."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer in time (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__


def _connect(host: str, port: int, timeout: float, tls: bool = False) -> None:
    """Open (and close) a TCP connection, with a TLS handshake when ``tls``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if tls:
            context = ssl.create_default_context()
            with context.wrap_socket(sock, server_hostname=host):
                pass


def _split(url: str) -> tuple[urllib.parse.SplitResult, str, int]:
    parts = urllib.parse.urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts, parts.hostname or "localhost", parts.port or default


def _http(
    method: str, url: str, timeout: float, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP request; credentials in the URL become a Basic header. (status, body)."""
    parts, host, port = _split(url)
    headers = dict(headers or {})
    if parts.username is not None and "Authorization" not in headers:
        pair = (
            f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        )
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(64 * 1024)
    finally:
        conn.close()


def check_logstash(config: Config, timeout: float) -> Iterator[Check]:
    """Logstash's http input (PYOBS_LOGSTASH_URL) or TCP input (PYOBS_LOGSTASH_HOST/_PORT)."""
    if config.logstash_url:
        shown = mask_url(config.logstash_url)
        _, host, port = _split(config.logstash_url)
        tls = config.logstash_url.startswith("https://")
        try:
            _connect(host, port, timeout, tls=tls)
        except (OSError, ssl.SSLError) as exc:
            yield "FAIL", "Logstash", f"{shown} (PYOBS_LOGSTASH_URL): {_reason(exc)}"
        else:
            yield "ok", "Logstash", f"{shown} accepts connections (http input)"
    if config.logstash_host:
        where = f"{config.logstash_host}:{config.logstash_port}"
        try:
            _connect(config.logstash_host, config.logstash_port, timeout, config.logstash_tls)
        except (OSError, ssl.SSLError) as exc:
            yield (
                "FAIL",
                "Logstash",
                f"{where} (PYOBS_LOGSTASH_HOST/PYOBS_LOGSTASH_PORT, TCP): {_reason(exc)}",
            )
        else:
            yield "ok", "Logstash", f"{where} accepts connections (TCP input, at-most-once)"


def check_elasticsearch(config: Config, timeout: float) -> Iterator[Check]:
    """PYOBS_ELASTICSEARCH_URL answers, accepts the credentials and is a supported version."""
    if not config.elasticsearch_url:
        return
    shown = mask_url(config.elasticsearch_url)
    headers = {"Accept": "application/json"}
    if config.elasticsearch_api_key:
        headers["Authorization"] = f"ApiKey {config.elasticsearch_api_key}"
    elif config.elasticsearch_username:
        pair = f"{config.elasticsearch_username}:{config.elasticsearch_password or ''}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    try:
        status, body = _http("GET", config.elasticsearch_url + "/", timeout, headers)
        if status in (404, 405):  # a node without the root endpoint: ask the node itself
            status, body = _http("GET", config.elasticsearch_url + NODE_VERSION, timeout, headers)
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        yield "FAIL", "Elasticsearch", f"{shown} (PYOBS_ELASTICSEARCH_URL): {_reason(exc)}"
        return
    if status == 401:
        yield (
            "FAIL",
            "Elasticsearch",
            f"{shown} refused the credentials (401): check PYOBS_ELASTICSEARCH_API_KEY "
            "or PYOBS_ELASTICSEARCH_USERNAME/_PASSWORD",
        )
        return
    if status == 403:  # authenticated, without the monitor privilege: no version to read
        version: str | None = "(version not readable without the monitor privilege)"
    else:
        version = _es_version(body)
    if version is None:
        yield "FAIL", "Elasticsearch", f"{shown} answered {status} but is not Elasticsearch"
        return
    major = version.split(".", 1)[0]
    if status != 403 and (status != 200 or major not in ("8", "9")):
        yield (
            "FAIL",
            "Elasticsearch",
            f"{shown} is Elasticsearch {version} (status {status}); pyobs needs 8.x or 9.x",
        )
        return
    if "Authorization" in headers:
        denied = _write_denied(config.elasticsearch_url, timeout, headers)
        if denied:
            yield "FAIL", "Elasticsearch", f"{shown}: {denied}"
            return
    yield "ok", "Elasticsearch", f"{shown} is Elasticsearch {version}"


def _write_denied(url: str, timeout: float, headers: dict[str, str]) -> str | None:
    """Plain words when the credentials may not write pyobs's data streams, else None.

    The has-privileges API answers any user about their own privileges; without security
    (or on error) there is nothing to say.
    """
    from pyobs._elk.assets import DATA_STREAM_PATTERN

    wanted = {"names": [DATA_STREAM_PATTERN], "privileges": list(WRITE_PRIVILEGES)}
    body = json.dumps({"index": [wanted]}).encode()
    try:
        status, answer = _http(
            "POST",
            url + "/_security/user/_has_privileges",
            timeout,
            {**headers, "Content-Type": "application/json"},
            body=body,
        )
        result = json.loads(answer) if status == 200 else None
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
        return None
    if not isinstance(result, dict) or result.get("has_all_requested", True):
        return None
    return (
        f"the credentials may not write to {DATA_STREAM_PATTERN} (they need the index "
        f"privileges {', '.join(WRITE_PRIVILEGES)})"
    )


def _es_version(body: bytes) -> str | None:
    """The version in a root (``GET /``) or node info answer."""
    try:
        info = json.loads(body)
        if "nodes" in info:
            info = next(iter(info["nodes"].values()))
            return str(info["version"])
        return str(info["version"]["number"])
    except (ValueError, KeyError, TypeError, StopIteration):
        return None


def otlp_endpoint(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(protocol, traces endpoint URL) when spans go to OTLP, as the SDK resolves them."""
    from pyobs.tracing import _exporter_names

    if "otlp" not in _exporter_names():
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return protocol, traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        return protocol, base or "http://localhost:4317"
    return protocol, (base or "http://localhost:4318").rstrip("/") + "/v1/traces"


def check_otlp(env: Mapping[str, str], timeout: float) -> Iterator[Check]:
    """The OTLP traces endpoint: an empty export for http/protobuf, a connection for gRPC."""
    resolved = otlp_endpoint(env)
    if resolved is None:
        return
    protocol, url = resolved
    shown = mask_url(url)
    if protocol == "grpc":
        _, host, port = _split(url if "://" in url else f"http://{url}")
        try:
            _connect(host, port, timeout)
        except OSError as exc:
            yield "FAIL", "OTLP", f"{shown} (gRPC): {_reason(exc)}"
        else:
            yield "ok", "OTLP", f"{shown} accepts connections (gRPC)"
        return
    try:
        # An empty ExportTraceServiceRequest: a receiver answers 200 and stores nothing.
        status, _ = _http(
            "POST", url, timeout, {"Content-Type": "application/x-protobuf"}, body=b""
        )
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        yield "FAIL", "OTLP", f"{shown} (http/protobuf): {_reason(exc)}"
        return
    if 200 <= status < 300:
        yield "ok", "OTLP", f"{shown} accepts OTLP/HTTP exports"
    elif status == 404:
        yield "FAIL", "OTLP", f"{shown}: 404, no OTLP receiver at this path (/v1/traces?)"
    else:
        yield "FAIL", "OTLP", f"{shown} answered an empty export with HTTP {status}"


def check_metrics_port(config: Config, timeout: float) -> Iterator[Check]:
    """Can pyobs bind PYOBS_METRICS_PORT on PYOBS_METRICS_ADDR, or who holds it."""
    if config.metrics_port is None:
        yield "ok", "metrics", f"served by the app itself at {config.metrics_path}"
        return
    from pyobs import exposition

    where = f"{config.metrics_addr}:{config.metrics_port}"
    family = socket.AF_INET6 if ":" in config.metrics_addr else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((config.metrics_addr, config.metrics_port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            yield "FAIL", "metrics port", f"{where} cannot be bound: {_reason(exc)}"
            return
        holder = exposition._probe_holder(config, config.metrics_addr)
        if holder == "sibling":
            yield "ok", "metrics port", f"{where} is served by pyobs ({config.service_name!r})"
        elif holder.startswith("other-pyobs:"):
            yield (
                "FAIL",
                "metrics port",
                f"{where} is served by another pyobs service ({holder.split(':', 1)[1]!r}): "
                "give each service its own PYOBS_METRICS_PORT",
            )
        else:
            yield (
                "FAIL",
                "metrics port",
                f"{where} is taken by another program (not pyobs): choose a free "
                "PYOBS_METRICS_PORT",
            )
        return
    yield "ok", "metrics port", f"{where} is free: pyobs can serve metrics there"


def _writable(directory: Path) -> str | None:
    """None when a file can be created in ``directory``, else plain words why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".pyobs-doctor-"):
            pass
    except OSError as exc:
        return _reason(exc)
    return None


def check_spool(config: Config) -> Iterator[Check]:
    """The disk spool of the log shipper: writable, and room for PYOBS_LOG_SPOOL_MAX_BYTES."""
    if not (config.logstash_url or config.logstash_host or config.elasticsearch_url):
        return
    from pyobs.shipper import default_spool_dir

    directory = Path(config.log_spool_dir or default_spool_dir())
    problem = _writable(directory)
    if problem:
        yield "FAIL", "spool", f"{directory} (PYOBS_LOG_SPOOL_DIR) is not writable: {problem}"
        return
    free = shutil.disk_usage(directory).free
    cap = config.log_spool_max_bytes
    if free < cap:
        yield (
            "warn",
            "spool",
            f"{directory}: {free // 2**20} MiB free, less than PYOBS_LOG_SPOOL_MAX_BYTES "
            f"({cap // 2**20} MiB): an outage could fill the disk before the cap",
        )
    else:
        yield "ok", "spool", f"{directory} is writable, {free // 2**20} MiB free"


def check_multiproc_dir(env: Mapping[str, str]) -> Iterator[Check]:
    """PROMETHEUS_MULTIPROC_DIR exists, is writable, and what it holds."""
    raw = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not raw:
        return
    directory = Path(raw)
    if not directory.is_dir():
        yield (
            "FAIL",
            "multiprocess",
            f"PROMETHEUS_MULTIPROC_DIR={directory} does not exist: create it (empty) before "
            "the app starts (the on_starting hook of pyobs.gunicorn does)",
        )
        return
    problem = _writable(directory)
    if problem:
        yield "FAIL", "multiprocess", f"PROMETHEUS_MULTIPROC_DIR={directory}: {problem}"
        return
    files = list(directory.glob("*.db"))
    if files:
        yield (
            "warn",
            "multiprocess",
            f"PROMETHEUS_MULTIPROC_DIR={directory} holds {len(files)} metric file(s): right "
            "while the app runs; after a restart they are stale and add old counts. Empty it "
            "at start (the on_starting hook of pyobs.gunicorn does)",
        )
    else:
        yield "ok", "multiprocess", f"PROMETHEUS_MULTIPROC_DIR={directory} is empty and writable"


# --- versions ------------------------------------------------------------------------------


def _distribution() -> importlib.metadata.Distribution | None:
    """pyobs's own distribution metadata (pyobs-kit, or pyobs before the rename), or None."""
    from pyobs._version import __version__

    for name in DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        # The name "pyobs" on the package index belongs to another project: check it is ours.
        if name == "pyobs-kit" or dist.version == __version__:
            return dist
    return None


def check_versions(
    dist_finder: Callable[[], importlib.metadata.Distribution | None] = _distribution,
) -> Iterator[Check]:
    """Installed dependencies and frameworks against the ranges pyobs declares (tested ranges)."""
    import pyobs

    where = Path(pyobs.__file__).parent
    dist = dist_finder()
    if dist is None:
        yield (
            "warn",
            "versions",
            f"no installed metadata for pyobs-kit (pyobs imported from {where}; a source "
            "tree?): dependency versions not checked",
        )
        return
    yield "ok", "versions", f"{dist.metadata['Name']} {dist.version}, imported from {where}"
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        yield "warn", "versions", "the packaging library is missing: versions not checked"
        return
    seen: set[str] = set()
    for raw in dist.requires or []:
        try:
            req = Requirement(raw)
        except InvalidRequirement:
            continue
        marker = str(req.marker) if req.marker else ""
        extra = re.search(r"extra == ['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) in SKIPPED_EXTRAS:
            continue
        key = req.name.lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            if not extra:
                yield "FAIL", "versions", f"{req.name} is missing (pyobs needs {req})"
            continue
        wanted = str(req.specifier) or "any"
        if req.specifier.contains(installed, prereleases=True):
            yield "ok", "versions", f"{req.name} {installed} (tested: {wanted})"
        elif extra:
            yield (
                "warn",
                "versions",
                f"{req.name} {installed} is outside the tested range {wanted} "
                f'(extra "{extra.group(1)}")',
            )
        else:
            yield (
                "FAIL",
                "versions",
                f"{req.name} {installed} is outside the range pyobs needs ({wanted})",
            )


# --- the command ---------------------------------------------------------------------------


def check_import_clash() -> Iterator[Check]:
    """Another installed distribution that also provides an import package named ``pyobs``."""
    for other in CLASHING_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(other)
        except importlib.metadata.PackageNotFoundError:
            continue
        yield (
            "FAIL",
            "install",
            f"{other} {version} is also installed and also provides the import package "
            "'pyobs': whichever was installed last overwrote the other's files. Use one of "
            "them per environment (a virtualenv each)",
        )


def checks(config: Config, env: Mapping[str, str], timeout: float) -> Iterator[Check]:
    """Every check doctor runs, in the order it prints them."""
    yield from check_logstash(config, timeout)
    yield from check_elasticsearch(config, timeout)
    yield from check_otlp(env, timeout)
    yield from check_metrics_port(config, timeout)
    yield from check_spool(config)
    yield from check_multiproc_dir(env)
    yield from check_import_clash()
    yield from check_versions()


def run(args: argparse.Namespace) -> int:
    """Print the configuration and every check; 1 when something is wrong."""
    from pyobs._version import __version__

    out = sys.stdout
    env = os.environ
    out.write(f"pyobs doctor (pyobs {__version__}, Python {sys.version.split()[0]})\n\n")
    try:
        config = load_config(env)
    except ConfigError as exc:  # its message masks secrets already
        out.write(f"FAIL  configuration: {exc}\n\n1 problem: fix the variable above.\n")
        return 1
    out.write("Configuration (environment; secrets masked):\n")
    for line in configuration_lines(config, env):
        out.write(line + "\n")
    out.write("\nChecks:\n")
    failed = warned = 0
    for status, what, words in checks(config, env, args.timeout):
        failed += status == "FAIL"
        warned += status == "warn"
        out.write(f"  {status:<4}  {what:<13} {words}\n")
        out.flush()
    if failed:
        out.write(f"\n{failed} problem(s): see the FAIL lines above.\n")
        return 1
    out.write(f"\nNothing wrong{f' ({warned} warning(s))' if warned else ''}.\n")
    return 0
