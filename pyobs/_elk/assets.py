"""The Elasticsearch assets (index templates, ingest pipeline) built from one field table.

``python -m pyobs._elk.assets`` rewrites the JSON files under ``elk/``; a test fails when the
committed files differ from what this module builds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pyobs._ecs_fields import FIELD_TYPES as ECS_FIELD_TYPES
from pyobs._resources import repo_file

DATA_STREAM_PATTERN = "logs-pyobs-*"
DEFAULT_NAMESPACE = "default"
TEMPLATE_NAME = "logs-pyobs"
PIPELINE_NAME = "pyobs-logs"
FAILURE_INDEX = "pyobs-logs-failures"
FAILURE_TEMPLATE_NAME = "pyobs-logs-failures"
DEFAULT_RETENTION = "30d"
# Above the built-in `logs-*-*` template (priority 100) so ours wins for logs-pyobs-*.
TEMPLATE_PRIORITY = 200

# Every field pyobs emits or the pipeline adds, with its Elasticsearch type. The types are the
# ECS ones, except where ECS uses a type from a module a minimal Elasticsearch may lack:
# match_only_text -> text, wildcard -> keyword, constant_keyword -> keyword (same family, same
# queries). `http.route` is the OTel attribute, mapped as keyword.
FIELDS: dict[str, str] = {
    "@timestamp": "date",
    "message": "text",
    "tags": "keyword",
    "labels": "object",
    "ecs.version": "keyword",
    "log.level": "keyword",
    "log.logger": "keyword",
    "log.origin.file.name": "keyword",
    "log.origin.file.line": "long",
    "log.origin.function": "keyword",
    "service.name": "keyword",
    "service.version": "keyword",
    "service.environment": "keyword",
    "service.node.name": "keyword",
    "host.name": "keyword",
    "host.hostname": "keyword",
    "process.pid": "long",
    "process.thread.id": "long",
    "process.thread.name": "keyword",
    "trace.id": "keyword",
    "span.id": "keyword",
    "transaction.id": "keyword",
    "event.id": "keyword",
    "event.dataset": "keyword",
    "event.module": "keyword",
    "event.kind": "keyword",
    "event.outcome": "keyword",
    "event.duration": "long",
    "event.created": "date",
    "event.ingested": "date",
    "http.request.id": "keyword",
    "http.request.method": "keyword",
    "http.request.body.bytes": "long",
    "http.response.status_code": "long",
    "http.response.body.bytes": "long",
    "http.route": "keyword",
    "url.path": "keyword",
    "url.query": "keyword",
    "url.scheme": "keyword",
    "url.domain": "keyword",
    "url.full": "keyword",
    "url.original": "keyword",
    "client.ip": "ip",
    "client.address": "keyword",
    "client.port": "long",
    "user_agent.original": "keyword",
    "user_agent.name": "keyword",
    "user_agent.version": "keyword",
    "user_agent.device.name": "keyword",
    "user_agent.os.name": "keyword",
    "user_agent.os.version": "keyword",
    "user_agent.os.full": "keyword",
    "user_agent.os.family": "keyword",
    "user_agent.os.platform": "keyword",
    "user_agent.os.kernel": "keyword",
    "user_agent.os.type": "keyword",
    "error.type": "keyword",
    "error.message": "text",
    "error.stack_trace": "keyword",
    "error.id": "keyword",
    "error.code": "keyword",
    "data_stream.type": "keyword",
    "data_stream.dataset": "keyword",
    "data_stream.namespace": "keyword",
    # Not ECS: the application's extras that are neither ECS-typed nor scalar (CONTRACT §5).
    "pyobs.extra": "flattened",
}
# Fields outside ECS that pyobs emits, with their type.
NON_ECS_FIELDS = {"http.route": "keyword", "pyobs.extra": "flattened"}
# ECS types -> the type of the same family a minimal Elasticsearch has (mapper-extras and
# the wildcard/constant_keyword plugins may be missing; the queries stay the same).
TYPE_FAMILY = {
    "match_only_text": "text",
    "wildcard": "keyword",
    "constant_keyword": "keyword",
    "scaled_float": "float",
}
# Types where a malformed value can be skipped and the rest of the document kept. Never on
# @timestamp: a data stream refuses a template that allows it there.
_IGNORE_MALFORMED = {"long", "float", "date", "ip", "boolean", "geo_point"}
FAILURE_RETENTION = "30d"

# Long free text stays searchable as text; the keyword side keeps exact matches short.
_TEXT_SUBFIELD = {"user_agent.original", "error.stack_trace", "url.full", "url.original"}
_IGNORE_ABOVE = {"error.stack_trace": 8191, "url.full": 8191, "url.original": 8191}


def _leaf(name: str, es_type: str) -> dict[str, Any]:
    if es_type == "object":
        return {"type": "object"}
    leaf: dict[str, Any] = {"type": es_type}
    if es_type == "keyword":
        leaf["ignore_above"] = _IGNORE_ABOVE.get(name, 1024)
    elif es_type == "flattened":
        # Long leaves are kept in _source, not indexed, instead of failing the document.
        leaf["ignore_above"] = 1024
    elif es_type in _IGNORE_MALFORMED and name != "@timestamp":
        leaf["ignore_malformed"] = True
    if name in _TEXT_SUBFIELD:
        leaf["fields"] = {"text": {"type": "text"}}
    return leaf


def mapping_properties(fields: dict[str, str]) -> dict[str, Any]:
    """Nested `properties` for dotted field names."""
    root: dict[str, Any] = {}
    for name, es_type in sorted(fields.items()):
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = _leaf(name, es_type)
    return root


def ecs_dynamic_templates() -> list[dict[str, Any]]:
    """ECS fields pyobs does not map itself get their ECS type when a record first carries one.

    Strings need no template (they become keywords below); every other ECS type is listed by
    path, so `source.ip` is an ip and `event.start` a date, with malformed values skipped.
    """
    by_type: dict[str, list[str]] = {}
    for name, ecs_type in sorted(ECS_FIELD_TYPES.items()):
        es_type = TYPE_FAMILY.get(ecs_type, ecs_type)
        if name in FIELDS or es_type in {"keyword", "object", "nested", "flattened"}:
            continue
        by_type.setdefault(es_type, []).append(name)
    templates = []
    for es_type, names in sorted(by_type.items()):
        mapping: dict[str, Any] = {"type": es_type}
        if es_type in _IGNORE_MALFORMED:
            mapping["ignore_malformed"] = True
        templates.append({f"ecs_{es_type}": {"path_match": names, "mapping": mapping}})
    return templates


def index_template(retention: str = DEFAULT_RETENTION) -> dict[str, Any]:
    """Composable template for the `logs-pyobs-<namespace>` data streams."""
    return {
        "index_patterns": [DATA_STREAM_PATTERN],
        "priority": TEMPLATE_PRIORITY,
        "data_stream": {},
        "_meta": {"managed_by": "pyobs", "description": "ECS logs shipped by pyobs"},
        "template": {
            "settings": {
                "index": {
                    "codec": "best_compression",
                    # Too many distinct extras: the surplus stays in _source, unindexed,
                    # instead of the document being refused.
                    "mapping": {"total_fields": {"ignore_dynamic_beyond_limit": True}},
                }
            },
            "lifecycle": {"data_retention": retention},
            # Documents Elasticsearch still refuses are kept beside the data stream
            # (`logs-pyobs-*::failures`, Elasticsearch 8.19+), with their own retention.
            "data_stream_options": {
                "failure_store": {
                    "enabled": True,
                    "lifecycle": {"data_retention": FAILURE_RETENTION},
                }
            },
            "mappings": {
                "dynamic": True,
                "dynamic_templates": [
                    # labels.* are strings by contract: always keyword.
                    {
                        "labels_as_keyword": {
                            "path_match": "labels.*",
                            "mapping": {"type": "keyword", "ignore_above": 1024},
                        }
                    },
                    *ecs_dynamic_templates(),
                    # Other strings (ECS keyword fields passed through) become keywords.
                    {
                        "strings_as_keyword": {
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword", "ignore_above": 1024},
                        }
                    },
                ],
                "properties": mapping_properties(FIELDS),
            },
        },
    }


def failure_template(retention: str = FAILURE_RETENTION) -> dict[str, Any]:
    """Template for the failure data stream: events the pipeline or Elasticsearch refused.

    The ingest pipeline's on_failure branch, Logstash's dead-letter drain and the direct
    shipper write here, each with `error.type`/`error.message` and, where it has it, the
    refused event as JSON text in `event.original`. Only these few fields are indexed;
    everything else stays in `_source` unparsed, so an event that was refused for its shape
    cannot be refused again. A data stream with a lifecycle: kept `retention`, then deleted.
    """
    fields = {
        "@timestamp": "date",
        "event.ingested": "date",
        "event.kind": "keyword",
        "event.id": "keyword",
        "event.dataset": "keyword",
        "error.message": "text",
        "error.type": "keyword",
        "service.name": "keyword",
        "message": "text",
    }
    props = mapping_properties(fields)
    # ECS: the raw event is kept, not indexed.
    props["event"]["properties"]["original"] = {
        "type": "keyword",
        "index": False,
        "doc_values": False,
    }
    return {
        "index_patterns": [f"{FAILURE_INDEX}*"],
        "priority": TEMPLATE_PRIORITY,
        "data_stream": {},
        "_meta": {"managed_by": "pyobs", "description": "pyobs log events that were refused"},
        "template": {
            "lifecycle": {"data_retention": retention},
            "mappings": {"dynamic": False, "properties": props},
        },
    }


def failure_document(
    original: str | dict[str, Any],
    error_type: str,
    error_message: str,
    timestamp: str,
) -> dict[str, Any]:
    """A refused event as the failure data stream keeps it (the shape the dead-letter drain
    writes too): the reason, the ids to find it by, and the event itself as JSON text.

    ``original`` is the event (a dict or its JSON line); ``timestamp`` the time of the
    refusal in ISO 8601. Only strings are copied into indexed fields, so the document
    cannot be refused for its shape again.
    """
    text = original if isinstance(original, str) else json.dumps(original, default=str)
    try:
        event = original if isinstance(original, dict) else json.loads(original)
    except ValueError:
        event = {}
    if not isinstance(event, dict):
        event = {}
    doc: dict[str, Any] = {
        "@timestamp": timestamp,
        "event": {"kind": "pipeline_error", "dataset": "pyobs.rejected", "original": text},
        "error": {"type": error_type, "message": error_message},
    }
    event_id = event.get("event.id")
    if isinstance(event_id, str):
        doc["event"]["id"] = event_id
    service = event.get("service.name")
    if isinstance(service, str):
        doc["service"] = {"name": service}
    if isinstance(event.get("message"), str):
        doc["message"] = event["message"]
    return doc


_PIPELINE_READS = ("log.level", "trace.id", "span.id", "user_agent.original", "event.id")


def ingest_pipeline() -> dict[str, Any]:
    """The `pyobs-logs` ingest pipeline: normalise, de-duplicate, route failures."""
    return {
        "description": "pyobs (managed): normalise ECS logs, de-duplicate by event.id",
        "processors": [
            # Shippers send flat dotted keys ("log.level"); processors address objects, so
            # expand the ones they read (the mapping takes either form for the rest).
            *({"dot_expander": {"field": name}} for name in _PIPELINE_READS),
            {"set": {"field": "event.ingested", "value": "{{{_ingest.timestamp}}}"}},
            {
                "set": {
                    "description": "events without a timestamp get the ingest time",
                    "field": "@timestamp",
                    "value": "{{{_ingest.timestamp}}}",
                    "override": False,
                }
            },
            {
                "date": {
                    "field": "@timestamp",
                    "target_field": "@timestamp",
                    "formats": ["ISO8601", "UNIX_MS", "UNIX"],
                    "timezone": "UTC",
                }
            },
            {"lowercase": {"field": "log.level", "ignore_missing": True}},
            {"lowercase": {"field": "trace.id", "ignore_missing": True}},
            {"lowercase": {"field": "span.id", "ignore_missing": True}},
            {
                "gsub": {
                    "description": "a UUID-style trace id becomes the 32 hex digits W3C uses",
                    "field": "trace.id",
                    "pattern": "-",
                    "replacement": "",
                    "ignore_missing": True,
                }
            },
            {
                "user_agent": {
                    "field": "user_agent.original",
                    "target_field": "user_agent",
                    "ignore_missing": True,
                }
            },
            {
                "set": {
                    "description": "at-least-once delivery: a retried event keeps its _id",
                    "field": "_id",
                    "value": "{{{event.id}}}",
                    "if": "ctx.event?.id != null",
                }
            },
        ],
        "on_failure": [
            {"set": {"field": "event.kind", "value": "pipeline_error"}},
            # The failure data stream needs a valid @timestamp: the event's own may be what
            # failed, so it is kept in event.created and the failure time takes its place.
            {"set": {"field": "event.created", "value": "{{{@timestamp}}}"}},
            {"set": {"field": "@timestamp", "value": "{{{_ingest.timestamp}}}"}},
            {"set": {"field": "error.message", "value": "{{{_ingest.on_failure_message}}}"}},
            {
                "set": {
                    "field": "error.type",
                    "value": "{{{_ingest.on_failure_processor_type}}}",
                }
            },
            {"set": {"field": "event.ingested", "value": "{{{_ingest.timestamp}}}"}},
            {"set": {"field": "_index", "value": FAILURE_INDEX}},
        ],
    }


ASSET_FILES: dict[str, Any] = {
    "elk/index-template.json": index_template,
    "elk/failure-index-template.json": failure_template,
    "elk/ingest-pipeline.json": ingest_pipeline,
}


def render(builder: Any) -> str:
    """Stable JSON text for one asset."""
    return json.dumps(builder(), indent=2, sort_keys=False) + "\n"


def load(relative: str) -> dict[str, Any]:
    """Read one committed asset (checkout or wheel)."""
    data: dict[str, Any] = json.loads(repo_file(relative).read_text(encoding="utf-8"))
    return data


def write_all(root: Path) -> list[str]:
    """Write every asset under root; return the relative paths that changed."""
    changed = []
    for relative, builder in ASSET_FILES.items():
        path = root / relative
        text = render(builder)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(relative)
    return changed


if __name__ == "__main__":  # pragma: no cover
    repo = Path(__file__).resolve().parents[2]
    for name in write_all(repo):
        print(f"wrote {name}")
    sys.exit(0)
