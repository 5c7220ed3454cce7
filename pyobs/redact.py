"""Header and query-string redaction shared by logs and span attributes (CONTRACT §5)."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
_SENSITIVE_PARAM = re.compile(r"password|passwd|secret|token|api[-_]?key|auth", re.IGNORECASE)


def redact_header(name: str, value: str) -> str:
    """The value to record for header ``name``: itself, or [REDACTED] for credentials."""
    return REDACTED if name.lower() in SENSITIVE_HEADERS else value


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Redact a sequence of (name, value) header pairs."""
    return [(name, redact_header(name, value)) for name, value in headers]


def redact_query(query: str) -> str:
    """Replace the values of sensitive query parameters, keeping the rest byte for byte."""
    if not query or not _SENSITIVE_PARAM.search(query):
        return query
    parts = []
    for part in query.split("&"):
        name, _, _ = part.partition("=")
        if _SENSITIVE_PARAM.search(name):
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(part)
    return "&".join(parts)
