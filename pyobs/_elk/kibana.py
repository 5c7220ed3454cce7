"""Kibana saved objects for the pyobs logs: data view, saved searches, logs dashboard.

Written to ``elk/kibana/pyobs-logs.ndjson`` (``python -m pyobs._elk.kibana``) for Kibana's
saved objects import API. Searches use the Lucene query language so the very same query
string runs as an Elasticsearch ``query_string`` query (the tests do exactly that).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyobs._elk.assets import DATA_STREAM_PATTERN, FAILURE_INDEX

DATA_VIEW_ID = "pyobs-logs"
# Refused events: the failure data stream (ingest pipeline failures, Logstash's dead-letter
# drain, the direct shipper) and the data streams' own failure stores (Elasticsearch 8.19+).
FAILURES_VIEW_ID = "pyobs-logs-failures"
FAILURES_PATTERN = f"{FAILURE_INDEX}*,{DATA_STREAM_PATTERN}::failures"
DASHBOARD_ID = "pyobs-logs-dashboard"
NDJSON_PATH = "elk/kibana/pyobs-logs.ndjson"
# Versions of the object formats below; Kibana migrates them forward on import.
_CORE_MIGRATION = "8.8.0"
_TYPE_MIGRATION = {"index-pattern": "8.0.0", "search": "8.0.0", "dashboard": "8.7.0"}
# 500 ms in nanoseconds: event.duration is ECS nanoseconds.
SLOW_NS = 500_000_000
# Where a trace id links to: the stack's Jaeger UI as a browser on the stack's host reaches it
# (docker-compose.yml publishes it on 127.0.0.1:${JAEGER_UI_PORT:-16686}). Another address:
# change the trace.id field's format in the data view (docs/stack.md).
JAEGER_TRACE_URL = "http://localhost:16686/trace/{{value}}"


@dataclass(frozen=True)
class SavedSearch:
    """One saved search: a Lucene query, the columns shown and the sort order."""

    id: str
    title: str
    query: str
    columns: tuple[str, ...]
    sort_order: str = "desc"
    view: str = DATA_VIEW_ID


SEARCHES = (
    SavedSearch(
        "pyobs-errors-by-service",
        "pyobs: errors by service",
        "log.level:(error OR critical)",
        ("service.name", "log.logger", "message", "error.type", "trace.id"),
    ),
    SavedSearch(
        "pyobs-one-trace",
        "pyobs: one trace (put the trace id in the query)",
        "trace.id:*",
        ("service.name", "log.level", "log.logger", "message", "span.id"),
        sort_order="asc",
    ),
    SavedSearch(
        "pyobs-slow-requests",
        "pyobs: slow requests (over 500 ms)",
        f'log.logger:"pyobs.access" AND event.duration:>={SLOW_NS}',
        ("service.name", "http.route", "http.response.status_code", "event.duration", "trace.id"),
    ),
    SavedSearch(
        "pyobs-access-log",
        "pyobs: access log",
        'log.logger:"pyobs.access"',
        (
            "service.name",
            "http.request.method",
            "url.path",
            "http.response.status_code",
            "event.duration",
            "client.ip",
        ),
    ),
    SavedSearch(
        "pyobs-rejected",
        "pyobs: rejected log events",
        "error.type:*",
        # document.* are the failure store's fields, the others the failure stream's.
        ("error.type", "error.message", "service.name", "event.id", "document.index"),
        view=FAILURES_VIEW_ID,
    ),
)


def _data_view(
    view_id: str, title: str, name: str, formats: dict[str, Any] | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"title": title, "name": name, "timeFieldName": "@timestamp"}
    if formats:
        attributes["fieldFormatMap"] = json.dumps(formats, sort_keys=True)
    return {"type": "index-pattern", "id": view_id, "attributes": attributes, "references": []}


def trace_link_formats() -> dict[str, Any]:
    """Kibana's field formats of the logs data view: trace.id as a link to the trace in Jaeger."""
    return {
        "trace.id": {
            "id": "url",
            "params": {
                "type": "a",
                "urlTemplate": JAEGER_TRACE_URL,
                "labelTemplate": "{{value}}",
                "openLinkInNewTab": True,
            },
        }
    }


def _search(search: SavedSearch) -> dict[str, Any]:
    source = {
        "query": {"query": search.query, "language": "lucene"},
        "filter": [],
        "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index",
    }
    return {
        "type": "search",
        "id": search.id,
        "attributes": {
            "title": search.title,
            "description": "",
            "columns": list(search.columns),
            "sort": [["@timestamp", search.sort_order]],
            "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(source)},
        },
        "references": [
            {
                "name": "kibanaSavedObjectMeta.searchSourceJSON.index",
                "type": "index-pattern",
                "id": search.view,
            }
        ],
    }


def _dashboard() -> dict[str, Any]:
    panels = []
    references = []
    for index, search in enumerate(SEARCHES):
        panel_index = str(index + 1)
        panels.append(
            {
                "type": "search",
                "panelIndex": panel_index,
                "gridData": {"x": 24 * (index % 2), "y": 15 * (index // 2), "w": 24, "h": 15,
                             "i": panel_index},
                "embeddableConfig": {},
                "panelRefName": f"panel_{panel_index}",
            }
        )  # fmt: skip
        references.append(
            {"name": f"{panel_index}:panel_{panel_index}", "type": "search", "id": search.id}
        )
    return {
        "type": "dashboard",
        "id": DASHBOARD_ID,
        "attributes": {
            "title": "pyobs: logs",
            "description": "Errors, slow requests, the access log and rejected events of pyobs.",
            "panelsJSON": json.dumps(panels),
            "optionsJSON": json.dumps({"useMargins": True, "hidePanelTitles": False}),
            "timeRestore": True,
            "timeFrom": "now-1h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 30000},
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps({"query": {"query": "", "language": "lucene"},
                                                "filter": []})
            },
        },
        "references": references,
    }  # fmt: skip


def saved_objects() -> list[dict[str, Any]]:
    """Every object, referenced ones first."""
    objects = [
        _data_view(DATA_VIEW_ID, DATA_STREAM_PATTERN, "pyobs logs", trace_link_formats()),
        _data_view(FAILURES_VIEW_ID, FAILURES_PATTERN, "pyobs rejected log events"),
        *(_search(s) for s in SEARCHES),
        _dashboard(),
    ]
    for obj in objects:
        obj["coreMigrationVersion"] = _CORE_MIGRATION
        obj["typeMigrationVersion"] = _TYPE_MIGRATION[obj["type"]]
    return objects


def render_ndjson() -> str:
    """The NDJSON text Kibana's import API takes."""
    return "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in saved_objects())


if __name__ == "__main__":  # pragma: no cover
    target = Path(__file__).resolve().parents[2] / NDJSON_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_ndjson(), encoding="utf-8")
    print(f"wrote {NDJSON_PATH}")
    sys.exit(0)
