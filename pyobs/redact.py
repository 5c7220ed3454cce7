"""Redaction shared by logs and span attributes (CONTRACT §5).

Header values and query parameter values whose name is sensitive become ``[REDACTED]``.
Names are compared after percent-decoding and case-folding (``?pass%77ord=``,
``?%74oken=``, ``?PASSWORD=`` are all caught). ``PYOBS_REDACT_HEADERS`` and
``PYOBS_REDACT_QUERY_PARAMS`` add names to the built-in ones (``configure``). Exception
messages are scrubbed of URL credentials, bearer/basic tokens and ``secret=value`` pairs
(``scrub``) before pyobs records them.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[REDACTED]"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
# Built-in sensitive query parameter names (a search: "access_token" matches too).
_BUILTIN_PARAM = r"password|passwd|secret|token|api[-_]?key|auth"
# Headers whose names say they carry a credential (X-Auth-Token, X-CSRF-Token,
# X-Amz-Security-Token...), on top of the listed ones.
_CREDENTIAL_HEADER = re.compile(r"token|secret|password|passwd|api[-_]?key|auth|session")

_headers: frozenset[str] = SENSITIVE_HEADERS
_param = re.compile(_BUILTIN_PARAM)
_extra_params: frozenset[str] = frozenset()


def configure(headers: Iterable[str] = (), query_params: Iterable[str] = ()) -> None:
    """Add header names and query parameter names (exact, case-insensitive) to the built-ins."""
    global _headers, _extra_params
    _headers = SENSITIVE_HEADERS | {h.strip().casefold() for h in headers if h.strip()}
    _extra_params = frozenset(p.strip().casefold() for p in query_params if p.strip())


def _sensitive_param(raw_name: str) -> bool:
    name = unquote_plus(raw_name) if ("%" in raw_name or "+" in raw_name) else raw_name
    name = name.casefold().strip()
    return name in _extra_params or _param.search(name) is not None


def redact_header(name: str, value: str) -> str:
    """The value to record for header ``name``: itself, or [REDACTED] for credentials."""
    folded = name.casefold()
    if folded in _headers or _CREDENTIAL_HEADER.search(folded) is not None:
        return REDACTED
    return value


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Redact a sequence of (name, value) header pairs."""
    return [(name, redact_header(name, value)) for name, value in headers]


# A query needs the per-parameter pass when a built-in name appears (any case), when a name
# may be percent-encoded, or when names were added.
_QUICK = re.compile(_BUILTIN_PARAM + r"|%", re.IGNORECASE)


def redact_query(query: str) -> str:
    """Replace the values of sensitive query parameters, keeping the rest byte for byte."""
    if not query or (not _extra_params and _QUICK.search(query) is None):
        return query
    parts = []
    changed = False
    for part in query.split("&"):
        name = part.partition("=")[0]
        if _sensitive_param(name):
            parts.append(f"{name}={REDACTED}")
            changed = True
        else:
            parts.append(part)
    return "&".join(parts) if changed else query


# scheme://user:password@host or scheme://token@host: the whole userinfo goes.
_URL_USERINFO = re.compile(r"(?<![a-zA-Z0-9+.-])([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/?#@]+@")
# Authorization schemes followed by their credentials.
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)(\s+)[A-Za-z0-9._~+/=:-]{4,}", re.IGNORECASE)
# name=value and "name": "value"; the callback keeps only the sensitive names. A name is one
# run of [\w.-] matched once (no nested quantifiers), so the scan stays linear in the text.
_PAIR = re.compile(
    r"""(["']?)(?<![\w.-])([\w.-]+)\1(\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s&,;'"\)\]}]+)"""
)
_SECRET_NAME = re.compile(r"password|passwd|secret|token|api[-_]?key|auth", re.IGNORECASE)
MAX_SCRUBBED = 65536  # a message longer than this is cut before scrubbing


def _pair(match: re.Match[str]) -> str:
    quote, name, sep, value = match.groups()
    if _SECRET_NAME.search(name) is None:
        return match.group(0)
    if sep.strip() == ":" and not quote:
        return match.group(0)  # "Auth: failed" is prose, not a key-value pair
    kept = value[0] if value[:1] in ("'", '"') else ""
    return f"{quote}{name}{quote}{sep}{kept}{REDACTED}{kept}"


def scrub(text: str) -> str:
    """``text`` without URL credentials, bearer/basic tokens and ``secret=value`` pairs."""
    if not text:
        return text
    if len(text) > MAX_SCRUBBED:
        text = text[:MAX_SCRUBBED] + " [truncated]"
    text = _URL_USERINFO.sub(rf"\g<1>{REDACTED}@", text)
    text = _AUTH_SCHEME.sub(rf"\g<1>\g<2>{REDACTED}", text)
    return _PAIR.sub(_pair, text)


def exception_attributes(
    exception: BaseException, attributes: Any = None, escaped: bool = False
) -> dict[str, Any]:
    """The SDK's ``exception`` event attributes, with secrets scrubbed from message and trace."""
    cls = type(exception)
    module = cls.__module__
    fields: dict[str, Any] = {
        "exception.type": (
            f"{module}.{cls.__qualname__}" if module and module != "builtins" else cls.__qualname__
        ),
        "exception.message": scrub(str(exception)),
        "exception.stacktrace": scrub(
            "".join(traceback.format_exception(cls, exception, exception.__traceback__))
        ),
        "exception.escaped": str(escaped),
    }
    if attributes:
        fields.update(attributes)
    return fields
