"""Shared helpers for the log-path tests: real records from the example app, ES bulk indexing."""

from __future__ import annotations

import importlib.util
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from tests.elk.esnodes import http_json

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "pyobs-logs"


class Capture(logging.Handler):
    """Keeps the ECS dict of every record (what the shipper would send, minus event.id)."""

    def __init__(self) -> None:
        super().__init__()
        from pyobs._config import Config
        from pyobs.logs import ECSFormatter

        self.ecs = ECSFormatter(Config(service_name="capture"))
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.ecs.to_dict(record))


def example_flask_records() -> list[dict[str, Any]]:
    """ECS dicts pyobs writes while the Flask example serves every kind of request."""
    spec = importlib.util.spec_from_file_location(
        f"example_flask_{uuid.uuid4().hex}", REPO / "examples" / "flask" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    try:
        client = module.app.test_client()
        headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0"}
        client.get("/items/1", headers=headers, buffered=True)
        client.get("/items/999", headers=headers, buffered=True)
        client.post("/items", json={"name": "x"}, headers=headers, buffered=True)
        client.get("/boom", headers=headers, buffered=True)
        client.get("/stream", headers=headers, buffered=True)
    finally:
        root.removeHandler(capture)
    return capture.records


def with_event_ids(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the event.id the shipper adds."""
    return [{**r, "event.id": uuid.uuid4().hex} for r in records]


def run_pipeline(ingest_url: str, docs: list[dict[str, Any]], index: str) -> list[dict[str, Any]]:
    """Run the real ingest pipeline on the ingest node; return (index, id, source) per doc."""
    answer = http_json(
        "POST",
        f"{ingest_url}/_ingest/pipeline/{PIPELINE}/_simulate",
        {"docs": [{"_index": index, "_source": doc} for doc in docs]},
    )
    out = []
    for item in answer["docs"]:
        doc = item["doc"]
        out.append({"_index": doc["_index"], "_id": doc.get("_id"), "_source": doc["_source"]})
    return out


def bulk_create(es_url: str, docs: list[dict[str, Any]], refresh: bool = True) -> dict[str, int]:
    """Bulk `create` into Elasticsearch 8 as Logstash's data-stream output does.

    Returns counts: created, duplicates (409 on an existing _id), errors.
    """
    lines = []
    for doc in docs:
        action: dict[str, Any] = {"_index": doc["_index"]}
        if doc.get("_id") and doc["_id"] != "_id":
            action["_id"] = doc["_id"]
        lines.append(json.dumps({"create": action}))
        lines.append(json.dumps(doc["_source"]))
    query = "?refresh=wait_for" if refresh else ""
    answer = http_json("POST", f"{es_url}/_bulk{query}", "\n".join(lines) + "\n")
    counts = {"created": 0, "duplicates": 0, "errors": 0}
    for item in answer["items"]:
        status = item["create"]["status"]
        if status == 201:
            counts["created"] += 1
        elif status == 409:
            counts["duplicates"] += 1
        else:
            counts["errors"] += 1
    return counts


def install_pipeline(ingest_url: str) -> None:
    """Put the committed pyobs-logs pipeline on the ingest node."""
    body = json.loads((REPO / "elk" / "ingest-pipeline.json").read_text())
    http_json("PUT", f"{ingest_url}/_ingest/pipeline/{PIPELINE}", body)


def install_templates(es_url: str) -> None:
    """Put the committed index templates on the Elasticsearch 8 node."""
    for name, path in (
        ("logs-pyobs", "elk/index-template.json"),
        ("pyobs-logs-failures", "elk/failure-index-template.json"),
    ):
        http_json("PUT", f"{es_url}/_index_template/{name}", json.loads((REPO / path).read_text()))


class IndexingSink:
    """What Logstash's tcp/json_lines input + elasticsearch output do, for the tests.

    Each received batch runs through the real ingest pipeline (on the 7.10 ingest node) and is
    bulk-created into the data stream on the real Elasticsearch 8.19 node, the document id
    being the pipeline's (event.id). Counts what was created and what was a duplicate.
    """

    def __init__(self, es_url: str, ingest_url: str, index: str) -> None:
        self.es_url = es_url
        self.ingest_url = ingest_url
        self.index = index
        self.counts = {"created": 0, "duplicates": 0, "errors": 0}

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        counts = bulk_create(self.es_url, run_pipeline(self.ingest_url, batch, self.index), False)
        for key, value in counts.items():
            self.counts[key] += value

    def refresh(self) -> None:
        """Make everything indexed so far searchable."""
        http_json("POST", f"{self.es_url}/{self.index}/_refresh")
