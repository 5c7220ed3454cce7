"""Elasticsearch assets on real nodes: ECS mappings, the ingest pipeline, the Kibana objects."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pyobs._elk import assets, kibana
from tests.elk.esnodes import http_json
from tests.elk.helpers import (
    bulk_create,
    example_flask_records,
    install_pipeline,
    install_templates,
    run_pipeline,
    with_event_ids,
)

REPO = Path(__file__).resolve().parents[2]
ECS_CSV = REPO / "tests" / "data" / "ecs-8.17.0-fields.csv"
# ECS types and the type of the same family a minimal Elasticsearch has (see assets.FIELDS).
FAMILY = assets.TYPE_FAMILY


def _ecs_types() -> dict[str, str]:
    with ECS_CSV.open(newline="") as handle:
        return {row["Field"]: row["Type"] for row in csv.DictReader(handle)}


def test_committed_assets_match_the_code() -> None:
    """elk/*.json and the Kibana NDJSON are exactly what pyobs._elk builds (no hand drift)."""
    for relative, builder in assets.ASSET_FILES.items():
        assert (REPO / relative).read_text() == assets.render(builder), relative
    assert (REPO / kibana.NDJSON_PATH).read_text() == kibana.render_ndjson()


def test_field_types_are_the_ecs_types() -> None:
    """Every mapped field is an ECS field with the ECS type (or its family), bar http.route."""
    ecs = _ecs_types()
    assert assets.NON_ECS_FIELDS == {"http.route": "keyword", "pyobs.extra": "flattened"}
    for name, es_type in assets.FIELDS.items():
        if name in assets.NON_ECS_FIELDS:
            assert es_type == assets.NON_ECS_FIELDS[name]
            assert name not in ecs
            continue
        assert name in ecs, f"{name} is not an ECS field"
        assert FAMILY.get(ecs[name], ecs[name]) == es_type, name


def test_every_field_pyobs_emits_is_mapped() -> None:
    """Access, app and error records from the Flask example only carry explicitly mapped fields."""
    records = with_event_ids(example_flask_records())
    assert any(r.get("log.logger") == "pyobs.access" for r in records)
    assert any("error.stack_trace" in r for r in records)
    emitted = {key for record in records for key in record}
    assert emitted <= set(assets.FIELDS), sorted(emitted - set(assets.FIELDS))


def _mapping_types(es_url: str, index: str) -> dict[str, str]:
    caps = http_json("GET", f"{es_url}/{index}/_field_caps?fields=*")
    return {
        name: next(iter(types))
        for name, types in caps["fields"].items()
        if not name.startswith("_")
    }


@pytest.fixture
def es_with_sample(es_url: str, ingest_url: str) -> tuple[str, str, list[dict[str, Any]]]:
    """A fresh data stream holding the example's records, passed through the real pipeline."""
    install_templates(es_url)
    install_pipeline(ingest_url)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    index = f"logs-pyobs-{namespace}"
    docs = run_pipeline(ingest_url, with_event_ids(example_flask_records()), index)
    counts = bulk_create(es_url, docs)
    assert counts["errors"] == 0 and counts["created"] == len(docs)
    return es_url, index, docs


def test_real_mapping_has_the_ecs_types(es_with_sample: tuple[str, str, Any]) -> None:
    """In the real data stream, message is text, ids keyword, event.duration long, client.ip ip."""
    es_url, index, _ = es_with_sample
    types = _mapping_types(es_url, index)
    assert types["@timestamp"] == "date"
    assert types["message"] == "text"
    assert types["trace.id"] == types["span.id"] == types["event.id"] == "keyword"
    assert types["event.duration"] == "long"
    assert types["client.ip"] == "ip"
    assert types["http.route"] == "keyword"
    for name, es_type in types.items():
        if name in assets.FIELDS and assets.FIELDS[name] != "object":
            assert es_type == assets.FIELDS[name], name
    stream = http_json("GET", f"{es_url}/_index_template/{assets.TEMPLATE_NAME}")
    template = stream["index_templates"][0]["index_template"]
    assert template["priority"] > 100  # above the built-in logs-*-* template
    assert template["template"]["lifecycle"]["data_retention"] == assets.DEFAULT_RETENTION
    resolved = http_json("GET", f"{es_url}/_resolve/index/{index}")
    assert [d["name"] for d in resolved["data_streams"]] == [index]
    # The node took the failure store options and gave them to the new data stream.
    options = template["template"]["data_stream_options"]["failure_store"]
    assert options["enabled"] is True
    state = http_json("GET", f"{es_url}/_cluster/state/metadata?filter_path=metadata.data_stream")
    stream = state["metadata"]["data_stream"]["data_stream"][index]
    assert stream["options"]["failure_store"]["enabled"] is True


def test_kibana_objects_use_only_mapped_fields(es_with_sample: tuple[str, str, Any]) -> None:
    """Every field a saved search shows or queries exists in the real mapping of its data view."""
    es_url, index, _ = es_with_sample
    failures = _failure_sample(es_url)
    types_by_view = {
        kibana.DATA_VIEW_ID: _mapping_types(es_url, index),
        # document.*: the failure store's own fields (not made here; see _failure_sample).
        kibana.FAILURES_VIEW_ID: {
            **_mapping_types(es_url, failures),
            "document.index": "keyword",
        },
    }
    objects = kibana.saved_objects()
    views = {o["id"]: o for o in objects if o["type"] == "index-pattern"}
    assert views[kibana.DATA_VIEW_ID]["attributes"]["title"] == assets.DATA_STREAM_PATTERN
    assert views[kibana.FAILURES_VIEW_ID]["attributes"]["title"] == kibana.FAILURES_PATTERN
    for view_id, view in views.items():
        assert types_by_view[view_id][view["attributes"]["timeFieldName"]] == "date"
    for obj in objects:
        if obj["type"] != "search":
            continue
        (ref,) = obj["references"]
        types = types_by_view[ref["id"]]
        for column in obj["attributes"]["columns"]:
            assert column in types, f"{obj['id']}: {column}"
        source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        for field in {w.split(":")[0] for w in source["query"]["query"].split() if ":" in w}:
            assert field.strip("(") in types, f"{obj['id']}: {field}"
    refs = {r["id"] for o in objects for r in o["references"]}
    assert refs <= {o["id"] for o in objects}


def _failure_sample(es_url: str) -> str:
    """A failure data stream holding one refused event as the dead-letter drain writes it.

    Elasticsearch's own failure store (`::failures`) cannot be filled here: the test node is
    the integ-test distribution, which lacks the data-streams module that turns it on.
    """
    install_templates(es_url)
    name = f"{assets.FAILURE_INDEX}-t{uuid.uuid4().hex[:8]}"
    doc = {
        "@timestamp": "2026-11-29T10:00:00.000Z",
        "event": {"kind": "pipeline_error", "dataset": "pyobs.rejected", "id": "e-1",
                  "original": json.dumps({"client.ip": "unknown"})},
        "error": {"type": "dead_letter_queue", "message": "failed to parse field [client.ip]"},
        "service": {"name": "shop"},
        "message": "refused",
    }  # fmt: skip
    counts = bulk_create(es_url, [{"_index": name, "_id": None, "_source": doc}])
    assert counts["created"] == 1, counts
    return name


def test_rejected_search_finds_refused_events(es_url: str) -> None:
    """The "rejected log events" search runs on its data view's pattern (failure stream and
    failure stores together) and finds a refused event with its reason."""
    name = _failure_sample(es_url)
    (search,) = [s for s in kibana.SEARCHES if s.view == kibana.FAILURES_VIEW_ID]
    answer = http_json(
        "POST",
        f"{es_url}/{kibana.FAILURES_PATTERN}/_search",
        {"query": {"bool": {"filter": [
            {"query_string": {"query": search.query}}, {"term": {"_index": _backing(es_url, name)}},
        ]}}},
    )  # fmt: skip
    (hit,) = answer["hits"]["hits"]
    assert hit["_source"]["error"]["message"].startswith("failed to parse field")
    assert json.loads(hit["_source"]["event"]["original"]) == {"client.ip": "unknown"}
    stream = http_json("GET", f"{es_url}/_index_template/{assets.FAILURE_TEMPLATE_NAME}")
    template = stream["index_templates"][0]["index_template"]
    assert template["template"]["lifecycle"]["data_retention"] == assets.FAILURE_RETENTION


def _backing(es_url: str, stream: str) -> str:
    resolved = http_json("GET", f"{es_url}/_resolve/index/{stream}")
    (data_stream,) = resolved["data_streams"]
    return str(data_stream["backing_indices"][0])


def test_saved_search_queries_run_and_find_their_events(
    es_with_sample: tuple[str, str, Any],
) -> None:
    """Each saved search's query runs on the real Elasticsearch and finds what its title says."""
    es_url, index, docs = es_with_sample
    found: dict[str, list[dict[str, Any]]] = {}
    for search in kibana.SEARCHES:
        answer = http_json(
            "POST",
            f"{es_url}/{index}/_search",
            {
                "size": 100,
                "query": {"query_string": {"query": search.query, "analyze_wildcard": True}},
            },
        )
        found[search.id] = [hit["_source"] for hit in answer["hits"]["hits"]]
    assert found["pyobs-errors-by-service"]
    assert all(h["log"]["level"] in {"error", "critical"} for h in found["pyobs-errors-by-service"])
    access = [d for d in docs if d["_source"].get("log.logger") == "pyobs.access"]
    assert len(found["pyobs-access-log"]) == len(access) == 5
    assert len(found["pyobs-one-trace"]) == sum("trace" in d["_source"] for d in docs)
    assert found["pyobs-slow-requests"] == []  # nothing in the sample took 500 ms


def test_pipeline_normalises_and_deduplicates(ingest_url: str) -> None:
    """The real pipeline lowercases levels and ids, parses the user agent and sets _id=event.id."""
    install_pipeline(ingest_url)
    doc = {
        "@timestamp": "2026-11-28T09:03:43.123Z",
        "log.level": "WARNING",
        "message": "hello",
        "trace.id": "4BF92F35-77B3-4DA6-A3CE-929D0E0E4736",
        "span.id": "00F067AA0BA902B7",
        "event.id": "abc-1",
        "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0",
    }
    (out,) = run_pipeline(ingest_url, [doc], "logs-pyobs-default")
    source = out["_source"]
    assert out["_index"] == "logs-pyobs-default"
    assert out["_id"] == "abc-1"
    assert source["log"]["level"] == "warning"
    assert source["trace"]["id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert source["span"]["id"] == "00f067aa0ba902b7"
    assert source["user_agent"]["name"] == "Firefox"
    assert source["user_agent"]["os"]["name"] == "Linux"
    assert "ingested" in source["event"]


def test_pipeline_sends_broken_events_to_the_failure_index(es_url: str, ingest_url: str) -> None:
    """An event the pipeline cannot parse lands, with the reason, in the failure index."""
    install_pipeline(ingest_url)
    install_templates(es_url)
    marker = uuid.uuid4().hex
    docs = run_pipeline(
        ingest_url,
        [{"@timestamp": "yesterday-ish", "message": marker}, {"message": f"no time {marker}"}],
        "logs-pyobs-default",
    )
    assert docs[0]["_index"] == assets.FAILURE_INDEX
    assert docs[0]["_source"]["event"]["kind"] == "pipeline_error"
    assert docs[0]["_source"]["error"]["type"] == "date"
    assert docs[1]["_index"] == "logs-pyobs-default"  # a missing timestamp gets the ingest time
    counts = bulk_create(es_url, docs)
    assert counts == {"created": 2, "duplicates": 0, "errors": 0}
    answer = http_json(
        "POST",
        f"{es_url}/{assets.FAILURE_INDEX}/_search",
        {"query": {"match": {"message": marker}}},
    )
    assert answer["hits"]["total"]["value"] == 1


def test_duplicate_event_ids_are_stored_once(es_url: str, ingest_url: str) -> None:
    """The same event shipped twice (at-least-once) is one document; the repeat gets a 409."""
    install_pipeline(ingest_url)
    install_templates(es_url)
    index = f"logs-pyobs-d{uuid.uuid4().hex[:8]}"
    event = {"@timestamp": "2026-11-28T09:00:00.000Z", "message": "once", "event.id": "dup-1"}
    docs = run_pipeline(ingest_url, [event, dict(event)], index)
    assert bulk_create(es_url, docs) == {"created": 1, "duplicates": 1, "errors": 0}
    count = http_json("GET", f"{es_url}/{index}/_count")
    assert count["count"] == 1


def _bulk_items(es_url: str, index: str, sources: list[str]) -> list[dict[str, Any]]:
    """Create each JSON source in ``index`` with one _bulk; the per-item results."""
    lines = []
    for source in sources:
        lines += [json.dumps({"create": {"_index": index}}), source]
    answer = http_json("POST", f"{es_url}/_bulk?refresh=wait_for", "\n".join(lines) + "\n")
    return [item["create"] for item in answer["items"]]


def test_hostile_extras_are_never_rejected(es_url: str) -> None:
    """Every hostile record, as pyobs writes it, is indexed by the real node with our template."""
    import logging

    from pyobs._config import Config
    from pyobs.logs import ECSFormatter
    from tests.test_ecs import HOSTILE

    install_templates(es_url)
    index = f"logs-pyobs-h{uuid.uuid4().hex[:10]}"
    formatter = ECSFormatter(Config(service_name="hostile"))
    sources = []
    for extra in HOSTILE:
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "hostile", None, None)
        record.__dict__.update(extra)
        sources.append(formatter.format(record))
    items = _bulk_items(es_url, index, sources)
    assert [i.get("error") for i in items if i["status"] != 201] == []
    assert len(items) == len(HOSTILE)
    # Typed where ECS says so: the dynamic templates follow the ECS list.
    types = _mapping_types(es_url, index)
    assert types["event.start"] == "date"
    assert types["labels.order_id"] == types["labels.service"] == "keyword"
    assert types["pyobs.extra"] == "flattened"


def test_the_same_records_unsanitized_are_refused(es_url: str) -> None:
    """Without pyobs's checks the node refuses the issue's records: the test above can fail."""
    install_templates(es_url)
    index = f"logs-pyobs-r{uuid.uuid4().hex[:10]}"
    raw: list[dict[str, Any]] = [
        {"service": "billing"},  # a string where service.* is an object
        {"user": "bob"},
        {"user": {"id": 7}},  # an object after a string
        {"order_id": 5},
        {"order_id": "A-17"},  # a string after a number
    ]
    sources = [
        json.dumps({"@timestamp": "2026-11-29T10:00:00.000Z", "message": "raw", **r}) for r in raw
    ]
    statuses = [i["status"] for i in _bulk_items(es_url, index, sources)]
    assert statuses == [400, 201, 400, 201, 400]


def test_pipeline_takes_the_event_id_logstash_nests(ingest_url: str) -> None:
    """Logstash's filter turns pyobs's flat "event.id" into [event][id]: still the _id."""
    install_pipeline(ingest_url)
    doc = {
        "@timestamp": "2026-11-28T09:03:43.123Z",
        "log.level": "info",
        "message": "via logstash",
        "event": {"id": "nested-1"},
        "event.dataset": "pyobs.access",
    }
    (out,) = run_pipeline(ingest_url, [doc], "logs-pyobs-default")
    assert out["_index"] == "logs-pyobs-default"
    assert out["_id"] == "nested-1"
    assert out["_source"]["event"]["id"] == "nested-1"


def test_failure_document_is_kept_by_the_failure_stream(es_url: str) -> None:
    """What the direct shipper keeps for a refused event lands in the failure data stream,
    whatever the event held, and the event comes back whole from event.original."""
    install_templates(es_url)
    name = f"{assets.FAILURE_INDEX}-d{uuid.uuid4().hex[:8]}"
    refused: dict[str, Any] = {
        "event.id": "r-1",
        "service.name": "shop",
        "message": {"not": "a string"},  # the reason it was refused, say
        "client.ip": "unknown",
    }
    docs = [
        assets.failure_document(refused, "mapping", "bad", "2026-11-29T10:00:00Z"),
        assets.failure_document("{not json", "x", "unreadable line", "2026-11-29T10:00:01Z"),
    ]
    counts = bulk_create(es_url, [{"_index": name, "_id": None, "_source": d} for d in docs])
    assert counts == {"created": 2, "duplicates": 0, "errors": 0}
    answer = http_json("POST", f"{es_url}/{name}/_search", {"query": {"term": {"event.id": "r-1"}}})
    (hit,) = answer["hits"]["hits"]
    assert json.loads(hit["_source"]["event"]["original"]) == refused
    assert hit["_source"]["service"]["name"] == "shop"
    assert "message" not in hit["_source"]
