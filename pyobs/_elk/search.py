"""`pyobs logs search`: the query, and rendering hits for a terminal or as JSON lines."""

from __future__ import annotations

import json
import re
from typing import Any

from pyobs._elk.client import ElkError

_SINCE = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w)$")
_LEVEL_COLORS = {
    "debug": "\033[2m",
    "info": "",
    "warning": "\033[33m",
    "warn": "\033[33m",
    "error": "\033[31m",
    "critical": "\033[1;31m",
}


def check_since(value: str) -> str:
    """``15m``, ``2h``, ``7d``... or ``all``."""
    if value == "all" or _SINCE.match(value):
        return value
    raise ElkError(f"--since takes a duration such as 30s, 15m, 2h, 7d or 'all', not {value!r}")


def build_query(
    query: str = "",
    service: str | None = None,
    level: str | None = None,
    trace_id: str | None = None,
    since: str | None = "15m",
) -> dict[str, Any]:
    """The Elasticsearch query: Lucene syntax for QUERY, exact filters for the options."""
    filters: list[dict[str, Any]] = []
    if service:
        filters.append({"term": {"service.name": service}})
    if level:
        low = level.lower()
        levels = ["warning", "warn"] if low in {"warn", "warning"} else [low]
        filters.append({"terms": {"log.level": levels}})
    if trace_id:
        filters.append({"term": {"trace.id": trace_id.lower().replace("-", "")}})
    if since and since != "all":
        filters.append({"range": {"@timestamp": {"gte": f"now-{since}"}}})
    must: list[dict[str, Any]] = []
    if query.strip() and query.strip() != "*":
        must.append({"query_string": {"query": query, "default_operator": "AND", "lenient": True}})
    return {"bool": {"filter": filters, "must": must or [{"match_all": {}}]}}


def search(
    es: Any,
    index: str,
    query: dict[str, Any],
    limit: int,
) -> list[dict[str, Any]]:
    """The newest ``limit`` matching events, oldest first (as a terminal reads them)."""
    response = es.search(
        index=index,
        query=query,
        size=limit,
        sort=[{"@timestamp": {"order": "desc"}}, {"_doc": {"order": "desc"}}],
        ignore_unavailable=True,
        allow_no_indices=True,
    )
    hits = response["hits"]["hits"]
    return [flatten(hit["_source"]) for hit in reversed(hits)]


def flatten(source: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """ECS objects to the flat dotted keys pyobs writes (the pipeline may have nested them)."""
    flat: dict[str, Any] = {}
    for key, value in source.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def render_line(event: dict[str, Any], color: bool = False, show_trace: bool = True) -> str:
    """One readable line: time, level, service, logger, message, and what helps next."""
    level = str(event.get("log.level", "-")).lower()
    timestamp = str(event.get("@timestamp", "-"))
    parts = [
        timestamp,
        f"{level.upper():<8}",
        str(event.get("service.name", "-")),
        f"{event.get('log.logger', '-')}:",
        str(event.get("message", "")),
    ]
    extras = []
    if "http.response.status_code" in event and "event.duration" in event:
        try:
            extras.append(f"{int(event['event.duration']) / 1e6:.1f}ms")
        except (TypeError, ValueError):
            pass
    if event.get("error.type"):
        extras.append(f"error={event['error.type']}")
    if show_trace and event.get("trace.id"):
        extras.append(f"trace={event['trace.id']}")
    line = " ".join(parts)
    if extras:
        line += "  " + " ".join(extras)
    if color:
        code = _LEVEL_COLORS.get(level, "")
        if code:
            line = f"{code}{line}\033[0m"
    return line


def render_json(event: dict[str, Any]) -> str:
    """One JSON line per event, flat dotted keys like the service wrote them."""
    return json.dumps(event, ensure_ascii=False, sort_keys=True)
